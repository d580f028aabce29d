"""Devices under test for the HIL rig: one interface, four kinds (docs/hil.md).

Following pytest-embedded's split (a *DUT* with `expect` on its console, services chosen by
option) and labgrid's (a *power driver* with `on`/`off`/`cycle` commands, a *strategy* that
brings the board to a state), every DUT offers the same few operations to the runner:

    prepare(ctx)        write what the device needs (site file or compiled JSON, data dir)
    start()             boot it (process start; for a board: power on)
    stop() -> str       clean stop (SIGTERM; for a board: nothing), returns its log
    power_cut()         stop without warning (SIGKILL; for a board: the power driver's off)
    console()           a ConsoleLink to its technician console
    public_key()        the device key's PEM (to register with the reference verifier)

Kinds: `pi` (`pilegate run` as a process), `esp32-cpython` (the ESP32 App on CPython with the
fake `machine`, piletools.rig.esp32_host), `mpy` (the ESP32 App on the MicroPython VM: needs
the mpyapp harness; refuses clearly until it is there) and `serial:<port>` (a real board).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pty
import select
import shlex
import signal
import socket
import subprocess
import sys
import time
import tty
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomlkit

from pilehil.clock import ENV_VAR, SiteClock

ROOT = Path(__file__).resolve().parents[3]


class DutError(RuntimeError):
    """The device under test cannot be set up or used; the message says what to do."""


class DutUnavailable(DutError):
    """This kind of DUT cannot run in this tree or on this machine (reported as a skip)."""


@dataclass
class DutContext:
    """What the runner hands a DUT: where everything is."""

    site_src: Path  # the scenario's site file (bus ports still the real ones)
    endpoints: dict[str, str]  # sim bus name -> endpoint the DUT must use
    broker_url: str
    platform_key: Path
    workdir: Path
    clock: SiteClock
    data_dir: Path
    extra: dict[str, Any] = field(default_factory=dict)


class ConsoleLink:
    """A technician console over a file descriptor (pty master, socket, serial port).

    `send(line)` writes a line ending CR; `expect(text, timeout)` reads until `text` appears
    in the output since the last expect (pytest-embedded's `dut.expect`) and returns what was
    read; the whole session is kept in `transcript`."""

    def __init__(self, fd: int, closer: Any = None) -> None:
        self.fd = fd
        self._closer = closer
        self.transcript = ""
        self._pending = ""

    def _pump(self, wait: float) -> None:
        r, _, _ = select.select([self.fd], [], [], wait)
        if r:
            try:
                data = os.read(self.fd, 65536)
            except OSError:
                data = b""
            text = data.decode("utf-8", "replace")
            self.transcript += text
            self._pending += text

    def send(self, line: str) -> None:
        self.transcript += f"\n» {line}\n"
        os.write(self.fd, line.encode() + b"\r")

    def expect(self, text: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while text not in self._pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"console: {text!r} not seen within {timeout} s; got {self._pending[-400:]!r}")
            self._pump(min(left, 0.05))
        head, _, tail = self._pending.partition(text)
        self._pending = tail
        return head + text

    def command(self, line: str, prompt: str = "pilegate> ", timeout: float = 15.0) -> str:
        """Send one command and return its answer (up to the next prompt)."""
        self._pending = ""
        self.send(line)
        out = self.expect(prompt, timeout)
        return out[: -len(prompt)]

    def close(self) -> None:
        if self._closer is not None:
            self._closer()
            self._closer = None


def pty_pair() -> tuple[int, str, int]:
    """(master fd, slave path, slave fd) of a raw pseudo-terminal."""
    master, slave = pty.openpty()
    tty.setraw(slave)
    return master, os.ttyname(slave), slave


def _site_doc(ctx: DutContext) -> Any:
    """The scenario's site with the rig's endpoints, broker and platform key."""
    doc = tomlkit.parse(ctx.site_src.read_text(encoding="utf-8"))
    for bus in doc.get("bus", []):
        if bus["name"] in ctx.endpoints:
            bus["port"] = ctx.endpoints[bus["name"]]
            if ctx.endpoints[bus["name"]].startswith("/"):
                bus["parity"] = "N"  # a pseudo-terminal cannot carry parity
    doc["mqtt"]["url"] = ctx.broker_url
    doc["mqtt"]["allow_insecure"] = True
    doc.setdefault("signing", tomlkit.table())["platform_key"] = str(ctx.platform_key)
    doc["gateway"]["data_dir"] = str(ctx.data_dir)
    if "bays" in doc and any(b.get("camera") for b in doc.get("bay", [])):
        doc["bays"]["plate_broker"] = ctx.broker_url  # the cameras publish to the rig's broker
    return doc


def _compile_esp32_site(ctx: DutContext, doc: Any, who: str) -> Path:
    """An ESP32's site as it is flashed: no [console] section (the board's console is its UART),
    checked and compiled to config.json in the run's folder; DutError with the problems."""
    from pilegate import siteconfig

    if "console" in doc:
        del doc["console"]
    src = ctx.workdir / "dut-site.toml"
    src.write_text(tomlkit.dumps(doc))
    site, problems = siteconfig.load_site(src)
    if site is None:
        raise DutError(f"the site for {who} does not check:\n" + "\n".join(map(str, problems)))
    config = ctx.workdir / "config.json"
    config.write_bytes(site.json_bytes + b"\n")
    return config


class Dut:
    kind = "?"
    platform = "?"
    max_speed = 1.0  # the fastest site clock this DUT follows (1.0: real time only)
    simulated = True
    bus_transport = "pty"  # how the simulated bus reaches it: "pty" or "rtu+tcp"
    flash_on_host = True  # its data dir is a host directory (can be filled; survives a power cut)

    def __init__(self) -> None:
        self.ctx: DutContext | None = None
        self.starts = 0

    def prepare(self, ctx: DutContext) -> None:
        self.ctx = ctx

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> str:
        raise NotImplementedError

    def power_cut(self) -> None:
        raise NotImplementedError

    def console(self) -> ConsoleLink:
        raise NotImplementedError

    def public_key(self) -> str:
        link = self.console()
        try:
            out = link.command("keys")
        finally:
            link.close()
        out = out.replace("\r\n", "\n")
        if "-----BEGIN PUBLIC KEY-----" not in out:
            raise DutError(f"the console's `keys` did not show a public key: {out[-300:]!r}")
        return out[out.index("-----BEGIN") : out.index("-----END PUBLIC KEY-----") + 24] + "\n"

    def log(self) -> str:
        return ""

    def alive(self) -> bool:
        return True


class ProcessDut(Dut):
    """A gateway as a local process on the shared site clock; its output goes to a log file."""

    def __init__(self) -> None:
        super().__init__()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        assert self.ctx is not None
        env = dict(os.environ, **{ENV_VAR: self.ctx.clock.env(), "PYTHONUNBUFFERED": "1"})
        self.log_path = self.ctx.workdir / "dut.log"
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start {self.starts + 1} =====\n".encode())
            log.flush()
            # its own process group: a power cut takes its children (the mpy DUT's Node VM) too
            self.proc = subprocess.Popen(
                self.argv(), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True
            )
        self.starts += 1

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> str:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.power_cut()
        if self.proc is not None:  # whatever it started (its group) ends with it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc = None
        return self.log()

    def power_cut(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # no handler runs, nothing is flushed
            self.proc.wait(5)
        self.proc = None

    def log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")


class PiDut(ProcessDut):
    """`pilegate run` as a process (the Raspberry Pi port)."""

    kind = "pi"
    platform = "rpi"
    # RTU frames over TCP, as through an RS-485-to-Ethernet converter: a pseudo-terminal's path
    # can be reopened by any stray process that once had that pty number (pymodbus reconnects
    # by path), and a second master on the bus would corrupt the run
    bus_transport = "rtu+tcp"
    max_speed = 60.0  # above this the simulated bus (pymodbus in the rig's process) falls behind

    def prepare(self, ctx: DutContext) -> None:
        super().prepare(ctx)
        doc = _site_doc(ctx)
        doc.setdefault("console", tomlkit.table())["socket"] = str(ctx.workdir / "console" / "console.sock")
        if "serial_port" in doc["console"]:
            del doc["console"]["serial_port"]
        self.site_path = ctx.workdir / "dut-site.toml"
        self.site_path.write_text(tomlkit.dumps(doc))
        out = subprocess.run(
            [sys.executable, "-m", "pilegate.cli", "check", str(self.site_path)], capture_output=True, text=True
        )
        if out.returncode != 0:
            raise DutError(f"the site for the pi DUT does not check:\n{out.stdout}{out.stderr}")

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "pilegate.cli", "run", str(self.site_path)]

    def public_key(self) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "pilegate.cli", "keys", str(self.site_path)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return out[out.index("-----BEGIN") : out.index("-----END PUBLIC KEY-----") + 24]

    def console(self) -> ConsoleLink:
        assert self.ctx is not None
        path = str(self.ctx.workdir / "console" / "console.sock")
        deadline = time.monotonic() + 20
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                break
            except OSError:
                s.close()
                if time.monotonic() > deadline:
                    raise DutError(f"the console socket {path} does not answer") from None
                time.sleep(0.05)
        link = ConsoleLink(s.fileno(), s.close)
        link.expect("pilegate> ", 10)
        return link


class Esp32CpythonDut(ProcessDut):
    """The ESP32 App on CPython: firmware code unchanged, `machine` faked (piletools.rig.esp32_host)."""

    kind = "esp32-cpython"
    platform = "esp32"
    board = "esp32-wrover-e-max3485"  # a supported ESP32 board (docs/esp32.md: the devkitc's RAM is too small)
    max_speed = 30.0  # pure-Python ES256 per message: keep the site clock within reach

    def prepare(self, ctx: DutContext) -> None:
        super().prepare(ctx)

        doc = _site_doc(ctx)
        doc["gateway"]["board"] = self.board
        self.uarts: dict[int, str] = {}
        names = ["uart2"]
        for i, bus in enumerate(doc.get("bus", [])):
            if i >= len(names):
                raise DutError("the esp32 DUT has one RS-485 UART: a scenario site for it has one [[bus]]")
            self.uarts[2] = str(bus["port"])
            bus["port"] = names[i]
        self.config = _compile_esp32_site(ctx, doc, "the esp32 DUT")
        self.master, self.console_path, self._slave = pty_pair()
        ctx.data_dir.mkdir(parents=True, exist_ok=True)

    def argv(self) -> list[str]:
        assert self.ctx is not None
        argv = [sys.executable, "-m", "piletools.rig.esp32_host", str(self.config), "--root", str(self.ctx.data_dir)]
        for uid, path in self.uarts.items():
            argv += ["--uart", f"{uid}={path}"]
        return [*argv, "--console", self.console_path]

    def console(self) -> ConsoleLink:
        link = ConsoleLink(self.master)
        link.send("")
        link.expect("pilegate> ", 20)
        return link

    def stop(self) -> str:
        out = super().stop()
        for name in ("master", "_slave"):
            fd = getattr(self, name, None)
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, name, None)
        return out


class MpyDut(Esp32CpythonDut):
    """The ESP32 App on the MicroPython WebAssembly VM (the mpyapp harness, issue 11).

    Same site JSON, UART and console as esp32-cpython; the launcher is the harness's.  Until
    the harness is in the tree this DUT refuses with the reason instead of pretending."""

    kind = "mpy"
    max_speed = 60.0  # measured: every scenario keeps up at 60x with an idle nap per pass (docs/hil.md)
    # flash_on_host: the harness mounts the data dir into the VM as the App's /data (mpy_host)

    def prepare(self, ctx: DutContext) -> None:
        if all(importlib.util.find_spec(m) is None for m in ("pilehil.mpyapp", "piletools.mpyapp")):
            raise DutUnavailable(
                "the mpy DUT needs the MicroPython App harness (pilehil.mpyapp and tests/mpy/app_harness.mjs, "
                "issue 11), which is not in this tree yet"
            )
        super().prepare(ctx)

    def argv(self) -> list[str]:
        assert self.ctx is not None
        vm = ["--workdir", str(self.ctx.workdir / "vm")]  # the compiled firmware, off the flash
        return [sys.executable, "-m", "piletools.rig.mpy_host", *super().argv()[3:], *vm]


@dataclass
class RigFile:
    """A bench's description (labgrid's resources/drivers in one small TOML file, docs/hil.md)."""

    console: str
    bus: str
    baud: int = 115200
    power_on: str = ""  # a command that switches the board's supply on (labgrid ExternalPowerDriver cmd_on)
    power_off: str = ""
    flash: str = ""  # a command run once per scenario: {config} is the compiled site JSON
    boot_s: float = 10.0
    board: str = "esp32-wrover-e-max3485"  # the board file the compiled site names

    @classmethod
    def load(cls, path: Path) -> RigFile:
        import tomllib

        data = tomllib.loads(path.read_text())
        rig = data.get("rig", data)
        unknown = set(rig) - {"console", "bus", "baud", "power_on", "power_off", "flash", "boot_s", "board"}
        if unknown:
            raise DutError(f"{path}: unknown key(s) {', '.join(sorted(unknown))} in [rig]")
        return cls(**rig)


class BusBridge:
    """Copies bytes both ways between the simulator's pty and the bench's USB-RS485 adapter, so
    the simulated meters answer on the real RS-485 pair (half-duplex: the adapter's own
    direction control handles the line)."""

    def __init__(self, sim_path: str, device: str, baud: int = 9600) -> None:
        import termios
        import threading

        self.fds = []
        for path in (sim_path, device):
            fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            if os.isatty(fd):
                tty.setraw(fd)
                attrs = termios.tcgetattr(fd)
                speed = getattr(termios, f"B{baud}", termios.B9600)
                attrs[4] = attrs[5] = speed
                termios.tcsetattr(fd, termios.TCSANOW, attrs)
            self.fds.append(fd)
        self.bytes = [0, 0]  # sim -> device, device -> sim
        self._stop = False
        self.thread = threading.Thread(target=self._pump, name="hil-bus-bridge", daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        a, b = self.fds
        while not self._stop:
            try:
                ready, _, _ = select.select([a, b], [], [], 0.05)
                for fd in ready:
                    data = os.read(fd, 4096)
                    self.bytes[0 if fd == a else 1] += len(data)  # counted before it can arrive
                    os.write(b if fd == a else a, data)
            except OSError:
                if self._stop:
                    return
                time.sleep(0.01)

    def close(self) -> None:
        self._stop = True
        self.thread.join(2)
        for fd in self.fds:
            os.close(fd)


class SerialDut(Dut):
    """A real ESP32 board: console on a USB serial port, meters on a USB-RS485 adapter that the
    rig's simulated site serves (the runner bridges the simulator's bus to `bus`), power through
    a power driver command.  Runs in real time (max_speed 1)."""

    kind = "serial"
    platform = "esp32"
    max_speed = 1.0
    simulated = False

    def __init__(self, console_port: str, bus: str | None = None, rig: RigFile | None = None) -> None:
        super().__init__()
        self.rig = rig or RigFile(console=console_port, bus=bus or "")
        self.rig.console = console_port or self.rig.console
        if bus:
            self.rig.bus = bus
        if not self.rig.bus:
            raise DutError("a serial DUT needs --bus (the USB-RS485 adapter wired to the board's RS-485 port)")
        self.fd: int | None = None
        self.bridge: BusBridge | None = None
        self.power_log: list[str] = []

    def _run(self, what: str, cmd: str, **fmt: str) -> None:
        if not cmd:
            self.power_log.append(f"{what}: no command configured")
            return
        line = cmd.format(**fmt)
        self.power_log.append(f"{what}: {line}")
        res = subprocess.run(shlex.split(line), capture_output=True, text=True, timeout=300)
        if res.returncode != 0:
            raise DutError(f"{what} command failed ({res.returncode}): {line}\n{res.stdout}{res.stderr}")

    def prepare(self, ctx: DutContext) -> None:
        super().prepare(ctx)

        doc = _site_doc(ctx)
        doc["gateway"]["board"] = self.rig.board
        for bus in doc.get("bus", []):
            bus["port"] = "uart2"
        self.config = _compile_esp32_site(ctx, doc, "the board")
        sim_bus = next(iter(ctx.endpoints.values()))
        if not sim_bus.startswith("/"):
            raise DutError("a serial DUT needs the scenario site's bus on a pseudo-terminal (a serial port)")
        self.bridge = BusBridge(sim_bus, self.rig.bus, int(doc["bus"][0].get("baud", 9600)))
        self._run("flash", self.rig.flash, config=str(self.config), port=self.rig.console)

    def _open(self) -> int:
        if self.fd is None:
            import termios

            try:
                fd = os.open(self.rig.console, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            except OSError as exc:
                raise DutError(f"the board's console {self.rig.console} cannot be opened: {exc}") from None
            if os.isatty(fd):
                tty.setraw(fd)
                attrs = termios.tcgetattr(fd)
                speed = getattr(termios, f"B{self.rig.baud}", termios.B115200)
                attrs[4] = attrs[5] = speed
                termios.tcsetattr(fd, termios.TCSANOW, attrs)
            self.fd = fd
        return self.fd

    def start(self) -> None:
        self._run("power on", self.rig.power_on)
        self._open()
        self.starts += 1

    def stop(self) -> str:
        if self.bridge is not None:
            self.bridge.close()
            self.bridge = None
        self.close()
        return "\n".join(self.power_log)

    def power_cut(self) -> None:
        self._run("power off", self.rig.power_off)

    def console(self) -> ConsoleLink:
        link = ConsoleLink(self._open())
        link.send("")
        link.expect("pilegate> ", self.rig.boot_s)
        return link

    def log(self) -> str:
        return "\n".join(self.power_log)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def make_dut(spec: str, bus: str | None = None, rig: Path | None = None) -> Dut:
    """A DUT from the --dut option: pi | esp32-cpython | mpy | serial:<console port>."""
    if spec == "pi":
        return PiDut()
    if spec == "esp32-cpython":
        return Esp32CpythonDut()
    if spec == "mpy":
        return MpyDut()
    if spec.startswith("serial:") or spec == "serial":
        rig_file = RigFile.load(rig) if rig else None
        return SerialDut(spec.partition(":")[2], bus, rig_file)
    raise DutError(f"--dut {spec!r}: use pi, mpy, esp32-cpython or serial:/dev/ttyUSB0")
