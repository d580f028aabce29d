"""`pilegate flash` up to the serial port: the esptool calls it makes (a fake chip behind the
Esptool seam, the only fake: an ESP32 cannot exist here), the first-boot console on a real pty,
and what it does when the port is missing, busy, or the chip is the wrong one."""

from __future__ import annotations

import json
import os
import select
import threading
from pathlib import Path

import esp32fw
import pytest
import serial

from piletools import esp32image as e
from piletools import flash

KID = "ab" * 32
PEM = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----"


class FakeChip:
    def __init__(self, name: str) -> None:
        self.CHIP_NAME = name


class FakeEsptool(flash.Esptool):
    """Records every call; holds the written flash; `console` starts when the chip is reset."""

    def __init__(self, chip: str = "ESP32", flash_mb: int = 4, on_reset=None) -> None:
        self.chip = chip
        self.flash_mb = flash_mb
        self.calls: list[tuple] = []
        self.flash = b""
        self.on_reset = on_reset

    def detect_chip(self, port, baud):
        self.calls.append(("detect_chip", port, baud))
        return FakeChip(self.chip)

    def run_stub(self, esp):
        self.calls.append(("run_stub",))
        return esp

    def attach_flash(self, esp):
        self.calls.append(("attach_flash",))

    def flash_size(self, esp):
        self.calls.append(("flash_size",))
        return self.flash_mb * 2**20

    def write_flash(self, esp, image):
        self.calls.append(("write_flash", len(image)))
        self.flash = image

    def verify_flash(self, esp, image):
        self.calls.append(("verify_flash", len(image)))
        if self.flash != image:
            raise RuntimeError("Verification failed")

    def reset(self, esp):
        self.calls.append(("reset",))
        if self.on_reset:
            self.on_reset()

    def close(self, esp):
        self.calls.append(("close",))


class BoardConsole:
    """The board's UART0 behind a pty: a prompt after each line, the key for `keys`."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        self.path = os.ttyname(self.slave)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.booted = threading.Event()

    def _serve(self) -> None:
        line = b""
        while not self.stop.is_set():
            if not self.booted.is_set() or not select.select([self.master], [], [], 0.05)[0]:
                self.stop.wait(0.01)
                continue
            line += os.read(self.master, 1024)
            while b"\r" in line:
                cmd, _, line = line.partition(b"\r")
                if cmd.strip() == b"keys":
                    os.write(self.master, f"kid  {KID}\r\n{PEM}\r\n".replace("\n", "\r\n").encode())
                os.write(self.master, b"pilegate> ")

    def __enter__(self) -> BoardConsole:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def image(tmp_path) -> Path:
    fw = esp32fw.firmware()
    parts = e.read_firmware(fw, 0x1000)
    region = e.fs_region(parts, 4 * 2**20)
    fs = e.build_littlefs({"/config.json": json.dumps({"gateway": {"id": "LY-0009"}}).encode()}, region)
    path = tmp_path / "site-LY-0009.bin"
    path.write_bytes(e.merge("esp32", 0x1000, fw, region, fs))
    return path


def args(image: Path, port: str, production: bool = False):
    from pilegate import cli

    parser, _ = cli.build_parser()
    argv = ["flash", str(image), "--port", port, "--boot-timeout", "20"]
    return parser.parse_args(argv + (["--production"] if production else []))


def test_flash_writes_verifies_resets_and_prints_the_new_key(image, capsys):
    with BoardConsole() as board:
        tool = FakeEsptool(on_reset=board.booted.set)
        assert flash.main(args(image, board.path), tool=tool) == 0
    assert [c[0] for c in tool.calls] == [
        "detect_chip",
        "run_stub",
        "attach_flash",
        "flash_size",
        "write_flash",
        "verify_flash",
        "reset",
        "close",
    ]
    assert tool.calls[0] == ("detect_chip", board.path, 460800)
    assert tool.flash == image.read_bytes()
    out = capsys.readouterr().out
    assert "chip ESP32 (board esp32-devkitc-max3485): OK" in out
    assert f'[[key]]\ngateway = "LY-0009"\nkid = "{KID}"\npem = """\n{PEM}\n"""' in out


def test_wrong_chip_writes_nothing(image, capsys):
    with BoardConsole() as board:
        tool = FakeEsptool(chip="ESP32-S3")
        assert flash.main(args(image, board.path), tool=tool) == 1
    assert [c[0] for c in tool.calls] == ["detect_chip", "close"]
    err = capsys.readouterr().err
    assert "the chip is an ESP32-S3, but board esp32-devkitc-max3485 has an ESP32" in err
    assert "nothing was written" in err


def test_missing_port(image, capsys):
    tool = FakeEsptool()
    assert flash.main(args(image, "/dev/ttyUSB-pilegate-none"), tool=tool) == 1
    assert "no such port; is the board plugged in?" in capsys.readouterr().err
    assert tool.calls == []


def test_busy_port(image, capsys):
    with BoardConsole() as board:
        holder = serial.Serial(board.path, 115200, exclusive=True)
        try:
            tool = FakeEsptool()
            assert flash.main(args(image, board.path), tool=tool) == 1
        finally:
            holder.close()
    assert "the port is busy: another program has it open" in capsys.readouterr().err
    assert tool.calls == []


def test_no_chip_answers(image, capsys):
    class Silent(FakeEsptool):
        def detect_chip(self, port, baud):
            raise RuntimeError("Failed to connect to Espressif device: No serial data received.")

    with BoardConsole() as board:
        assert flash.main(args(image, board.path), tool=Silent()) == 1
    err = capsys.readouterr().err
    assert "no ESP chip answered (Failed to connect" in err and "Hold BOOT, tap EN" in err


def test_a_board_that_never_boots_is_reported_after_the_deadline(image, capsys):
    with BoardConsole() as board:  # never "booted": the console stays silent
        tool = FakeEsptool()
        a = args(image, board.path)
        a.boot_timeout = 0.5
        assert flash.main(a, tool=tool) == 1
    err = capsys.readouterr().err
    assert "the board was written and verified, but the console prompt did not show within 0.5 s" in err


def test_production_needs_the_typed_confirmation(image, capsys):
    tool = FakeEsptool()
    assert flash.main(args(image, "/dev/null", production=True), tool=tool, ask=lambda _: "yes") == 1
    out = capsys.readouterr().out
    assert "Flash encryption" in out and "Secure boot v2" in out and "espefuse" in out
    assert "stopped: nothing was written or burned" in out
    assert tool.calls == []
    with BoardConsole() as board:
        tool = FakeEsptool(on_reset=board.booted.set)
        code = flash.main(
            args(image, board.path, production=True), tool=tool, ask=lambda _: "BURN esp32-devkitc-max3485"
        )
    assert code == 0 and ("write_flash", len(image.read_bytes())) in tool.calls
    assert "now run the espefuse commands" in capsys.readouterr().out
