"""`pilegate flash IMAGE --port /dev/ttyUSB0`: write an image made by `pilegate image` to a board.

esptool is used as a library (esptool.cmds), never as a shell string: detect the chip and check
it against the board file, load the flasher stub, check the flash size, write (esptool's own
progress bar), verify by reading back (verify_flash), reset; then wait on the console (UART0,
the same USB port) for the first boot and ask the board for its new key (`keys`), and print the
key id and public key for the platform's key register.

`--production` first shows the plan for flash encryption and secure boot (the eFuses espefuse
would burn) and asks for a typed confirmation; it is never the default.  docs/esp32.md says why
the device key needs it.  This tool prints the plan and the espefuse commands; it does not burn
eFuses itself (irreversible: one typo bricks the board), the installer runs them after reading.

Everything that talks to the chip goes through `Esptool` (a thin seam over esptool.cmds), so
tests put a fake chip behind the same interface: the only fake, for hardware that cannot exist here.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: esptool's CHIP_NAME per board `platform`.
CHIP_NAMES = {"esp32": "ESP32", "esp32s3": "ESP32-S3", "esp32c3": "ESP32-C3", "esp32s2": "ESP32-S2"}


class FlashError(Exception):
    """Flashing cannot go on; the message says what happened and what to do."""


class Esptool:
    """The calls `pilegate flash` makes, one method each, straight to esptool.cmds."""

    def detect_chip(self, port: str, baud: int) -> Any:
        from esptool.cmds import detect_chip

        return detect_chip(port=port, baud=baud, connect_mode="default-reset")

    def run_stub(self, esp: Any) -> Any:
        from esptool.cmds import run_stub

        return run_stub(esp)

    def attach_flash(self, esp: Any) -> None:
        from esptool.cmds import attach_flash

        attach_flash(esp)

    def flash_size(self, esp: Any) -> int | None:
        from esptool.cmds import detect_flash_size, flash_size_bytes

        size = detect_flash_size(esp)
        return flash_size_bytes(size) if size else None

    def write_flash(self, esp: Any, image: bytes) -> None:
        from esptool.cmds import write_flash

        write_flash(esp, [(0, image)], flash_size="keep", flash_mode="keep", flash_freq="keep")

    def verify_flash(self, esp: Any, image: bytes) -> None:
        from esptool.cmds import verify_flash

        verify_flash(esp, [(0, image)], flash_size="keep", flash_mode="keep", flash_freq="keep")

    def reset(self, esp: Any) -> None:
        from esptool.cmds import reset_chip

        reset_chip(esp, "hard-reset")

    def close(self, esp: Any) -> None:
        port = getattr(esp, "_port", None)
        if port is not None:
            port.close()


def check_port(port: str, opener: Callable[..., Any] | None = None) -> None:
    """The port exists and nobody else holds it (pyserial's exclusive lock); FlashError if not."""
    import serial

    try:
        ser = (opener or serial.Serial)(port, 115200, exclusive=True, timeout=0)
    except FileNotFoundError:
        raise FlashError(f"{port}: no such port; is the board plugged in? (ls /dev/ttyUSB* /dev/ttyACM*)") from None
    except (OSError, serial.SerialException) as exc:
        text = str(exc)
        if "No such file" in text or "Errno 2" in text:
            raise FlashError(f"{port}: no such port; is the board plugged in? (ls /dev/ttyUSB* /dev/ttyACM*)") from None
        if "Permission denied" in text or "Errno 13" in text:
            raise FlashError(f"{port}: permission denied; add yourself to the dialout group") from None
        if "lock" in text.lower() or "busy" in text.lower() or "Errno 11" in text or "Errno 16" in text:
            raise FlashError(
                f"{port}: the port is busy: another program has it open (a console, screen, mpremote, "
                "the gateway); close it and try again"
            ) from None
        raise FlashError(f"{port}: cannot open: {text}") from None
    ser.close()


def production_plan(chip: str, port: str) -> str:
    """Flash encryption and secure boot (v2) for the chip, as espefuse commands with reasons."""
    return f"""Production plan for {chip} on {port} (irreversible; read docs/esp32.md first):

  1. Flash encryption, release mode: the flash (MicroPython, /config.json, /data/device.key)
     is encrypted with a key that never leaves the chip; the USB port can no longer read it.
       espefuse --port {port} burn-key BLOCK_KEY0 flash_encryption_key.bin XTS_AES_128_KEY
       espefuse --port {port} burn-efuse SPI_BOOT_CRYPT_CNT 7
  2. Secure boot v2: the ROM boots only a bootloader signed with your key (RSA-3072); a
     replaced firmware that would read the key does not run.
       espefuse --port {port} burn-key-digest BLOCK_KEY1 secure_boot_signing_key.pem SECURE_BOOT_DIGEST0
       espefuse --port {port} burn-efuse SECURE_BOOT_EN 1
  3. Close the doors: no JTAG, no ROM download mode reading flash.
       espefuse --port {port} burn-efuse DIS_PAD_JTAG 1 DIS_USB_JTAG 1
       espefuse --port {port} burn-efuse ENABLE_SECURITY_DOWNLOAD 1

  The eFuse names above are those of the ESP32-S3/C3 family; the original ESP32 uses
  FLASH_CRYPT_CNT, ABS_DONE_1 and JTAG_DISABLE instead (espefuse --chip esp32 summary lists
  them). The images must then be built and signed for secure boot (espsecure sign-data).
"""


def wait_for_keys(
    port: str, timeout_s: float, opener: Callable[..., Any] | None = None, clock: Callable[[], float] = time.monotonic
) -> tuple[str, str]:
    """After the reset: wait for the console prompt, ask `keys`, return (kid, public key PEM)."""
    import serial

    ser = (opener or serial.Serial)(port, 115200, timeout=0.2)
    try:
        deadline = clock() + timeout_s
        buf = b""
        asked = False
        next_nudge = 0.0
        while clock() < deadline:
            if not asked and clock() >= next_nudge:
                ser.write(b"\r")  # the console shows its prompt after a line
                next_nudge = clock() + 2.0
            buf += ser.read(4096)
            if not asked and b"pilegate> " in buf:
                buf = b""
                ser.write(b"keys\r")
                asked = True
            m = re.search(rb"kid\s+([0-9a-f]{64}).*?(-----BEGIN PUBLIC KEY-----.*?-----END PUBLIC KEY-----)", buf, re.S)
            if asked and m:
                pem = m.group(2).decode().replace("\r\n", "\n") + "\n"
                return m.group(1).decode(), pem
    finally:
        ser.close()
    what = "its key" if asked else "the console prompt"
    raise FlashError(
        f"{port}: the board was written and verified, but {what} did not show within {timeout_s:g} s. "
        "Open the console (pilegate console --port ...) and type keys; a board that prints "
        "'is not usable' has a bad /config.json"
    )


def flash(
    image_path: Path,
    port: str,
    board: dict[str, Any],
    tool: Esptool,
    baud: int = 460800,
    boot_timeout_s: float = 60.0,
    out: Any = None,
    port_opener: Callable[..., Any] | None = None,
) -> tuple[str, str]:
    """Write, verify, reset, wait for the key. Returns (kid, pem). FlashError on any failure."""
    out = out or sys.stdout
    image = image_path.read_bytes()
    want = CHIP_NAMES.get(str(board.get("platform")), str(board.get("platform")).upper())
    check_port(port, port_opener)
    print(f"connecting to {port} ...", file=out, flush=True)
    try:
        esp = tool.detect_chip(port, baud)
    except Exception as exc:  # esptool's FatalError and serial errors: told in words
        raise FlashError(
            f"{port}: no ESP chip answered ({exc}). Hold BOOT, tap EN (reset), release BOOT, and try again"
        ) from None
    try:
        chip = str(esp.CHIP_NAME)
        if chip != want:
            raise FlashError(
                f"{port}: the chip is an {chip}, but board {board['id']} has an {want}: wrong board file or "
                "wrong board plugged in; nothing was written"
            )
        print(f"chip {chip} (board {board['id']}): OK", file=out, flush=True)
        esp = tool.run_stub(esp)
        tool.attach_flash(esp)
        size = tool.flash_size(esp)
        need = int(board.get("flash_mb", 4)) * 2**20
        if size is not None and size < need:
            raise FlashError(
                f"{port}: the chip has {size // 2**20} MiB of flash, board {board['id']} says {need // 2**20}"
            )
        if len(image) > need:
            raise FlashError(f"{image_path}: {len(image)} bytes do not fit the board's {need // 2**20} MiB flash")
        print(f"writing {len(image):,} bytes at 0x0", file=out, flush=True)
        tool.write_flash(esp, image)
        print("verifying (reading back) ...", file=out, flush=True)
        tool.verify_flash(esp, image)
        print("verified; resetting the board", file=out, flush=True)
        tool.reset(esp)
    except FlashError:
        raise
    except Exception as exc:
        raise FlashError(f"{port}: esptool failed: {exc}") from None
    finally:
        tool.close(esp)
    print("waiting for the first boot (the device key is generated on the board) ...", file=out, flush=True)
    return wait_for_keys(port, boot_timeout_s, port_opener)


def gateway_of(image: bytes, board: dict[str, Any]) -> str | None:
    """The gateway id in the image's /config.json (None if the image holds none)."""
    import json

    from piletools import esp32image

    try:
        parts = esp32image.read_firmware(image[int(board["firmware_offset"]) :], int(board["firmware_offset"]))
        region = esp32image.fs_region(parts, int(board["flash_mb"]) * 2**20)
        with esp32image.read_littlefs(image, region).open("/config.json", "rb") as f:
            return str(json.loads(f.read())["gateway"]["id"])
    except Exception:  # best effort: an image made elsewhere may differ; the key still prints
        return None


def main(args: Any, tool: Esptool | None = None, ask: Callable[[str], str] = input) -> int:
    from pilegate import siteconfig

    boards, _ = siteconfig.load_boards()
    board = boards.get(args.board)
    if board is None or not str(board.get("platform", "")).startswith("esp32"):
        known = ", ".join(sorted(b for b, d in boards.items() if str(d.get("platform", "")).startswith("esp32")))
        print(f"pilegate flash: --board {args.board}: not an ESP32 board file (ESP32 boards: {known})", file=sys.stderr)
        return 2
    if not Path(args.image).is_file():
        print(f"pilegate flash: {args.image}: no such image; make one with 'pilegate image'", file=sys.stderr)
        return 2
    if args.production:
        want = CHIP_NAMES.get(str(board.get("platform")), str(board.get("platform")))
        print(production_plan(want, args.port))
        typed = ask(f"Type BURN {board['id']} to go on with a production board, anything else stops: ")
        if typed.strip() != f"BURN {board['id']}":
            print("stopped: nothing was written or burned")
            return 1
    try:
        kid, pem = flash(Path(args.image), args.port, board, tool or Esptool(), args.baud, args.boot_timeout)
    except FlashError as exc:
        print(f"pilegate flash: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"pilegate flash: {exc}", file=sys.stderr)
        return 2
    gw = gateway_of(Path(args.image).read_bytes(), board) or "<gateway id>"
    print("the board is up. Register its key with the platform (a [[key]] entry for the key register):")
    print(f'[[key]]\ngateway = "{gw}"\nkid = "{kid}"\npem = """\n{pem}"""')
    if args.production:
        print("now run the espefuse commands of the plan above, in order (they are irreversible)")
    return 0
