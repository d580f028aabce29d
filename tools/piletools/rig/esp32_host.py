"""Run the ESP32 App (firmware/pilefw) on CPython as a process: the rig's `esp32-cpython` DUT.

    python -m piletools.rig.esp32_host config.json --root DIR --uart 2=/dev/pts/5 --console /dev/pts/6

The firmware code runs unchanged; only the hardware that cannot exist here is replaced behind
the App's `hw` interface: UARTs are pyserial ports on the simulator's pseudo-terminals, pins
and the watchdog record values, umqtt.simple runs on CPython sockets (tests/helpers/
umqtt_compat.py, the pinned sdist from `make setup`), and time is the rig's shared site clock
(PILEGATE_HIL_CLOCK) for `time()` and `ticks_ms()` while the RTU master keeps real
milliseconds for its reply timeouts (as the real board does).  SIGTERM closes the App cleanly;
SIGKILL is the rig's power cut.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import serial

from pilehil.clock import ENV_VAR, SiteClock

ROOT = Path(__file__).resolve().parents[3]


class Uart:
    """machine.UART's stream methods on a pyserial port."""

    def __init__(self, path: str, baud: int, parity: str, stop: int) -> None:
        par = {"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD}[parity]
        self.port = serial.Serial(path, baudrate=baud, parity=par, stopbits=stop, timeout=0)

    def write(self, buf: bytes) -> int:
        return int(self.port.write(bytes(buf)) or 0)

    def flush(self) -> None:
        self.port.flush()

    def any(self) -> int:
        return int(self.port.in_waiting)

    def read(self, n: int | None = None) -> bytes | None:
        return self.port.read(n if n is not None else self.port.in_waiting) or None

    def readinto(self, buf: Any, nbytes: int | None = None) -> int | None:
        want = len(buf) if nbytes is None else nbytes
        data = self.port.read(min(want, self.port.in_waiting))
        if not data:
            return None
        buf[: len(data)] = data
        return len(data)

    def deinit(self) -> None:
        self.port.close()


class Pin:
    def __init__(self, n: int) -> None:
        self.id = n
        self._v = 0

    def value(self, v: int | None = None) -> int | None:
        if v is None:
            return self._v
        self._v = 1 if v else 0
        return None


class Dog:
    def feed(self) -> None:
        pass


class HostHw:
    """The App's `hw` on CPython with the rig's site clock (see pilefw.app)."""

    def __init__(self, root: str, uarts: dict[int, str], console: str | None, clock: SiteClock | None) -> None:
        from pilefw import ticks

        self.root = root
        self.uarts = uarts
        self.console_path = console
        self.gmtime = time.gmtime
        self.urandom = os.urandom
        self.clock = clock
        self.ticks_ms = (lambda: int(clock.mono() * 1000)) if clock else ticks.ticks_ms
        self.sleep_ms = ticks.sleep_ms
        self.resets = 0

    def time(self) -> float:
        return self.clock() if self.clock else time.time()

    def uart(self, uart_id: int, baud: int, parity: str, stop: int, tx: Any, rx: Any) -> Uart:
        return Uart(self.uarts[uart_id], baud, parity, stop)

    def pin(self, n: int, out: bool) -> Pin:
        return Pin(n)

    def wdt(self, timeout_ms: int) -> Dog:
        return Dog()

    def network_up(self) -> bool:
        return True

    def ntp_sync(self) -> bool:
        return True

    def mqtt_factory(self, mq: dict[str, Any], client_id: str, timeout_s: float) -> Any:
        sys.path.insert(0, str(ROOT / "tests" / "helpers"))
        import umqtt_compat  # type: ignore[import-not-found]

        from pilefw.mqtt import parse_url

        simple = umqtt_compat.load()
        if simple is None:
            raise SystemExit(umqtt_compat.missing_reason())
        tls, host, port = parse_url(mq["url"])
        if tls:
            raise SystemExit("the esp32-cpython DUT speaks plain MQTT to the rig's broker only")
        return lambda: simple.MQTTClient(client_id, host, port, keepalive=mq.get("keepalive_s", 30))

    def console_port(self, uart_def: dict[str, Any]) -> Uart | None:
        return Uart(self.console_path, 115200, "N", 1) if self.console_path else None

    def mem(self) -> None:
        return None

    def reset(self) -> None:
        self.resets += 1
        raise SystemExit(75)

    def repl(self) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="compiled site JSON (pilegate check --json)")
    p.add_argument("--root", required=True, help="the board's /data")
    p.add_argument("--uart", action="append", default=[], metavar="ID=PATH", help="machine.UART id -> device")
    p.add_argument("--console", help="the console UART's device (a pty)")
    args = p.parse_args(argv)
    from pilefw.app import App, ConfigError, load_config_file

    uarts = {int(k): v for k, _, v in (u.partition("=") for u in args.uart)}
    env = os.environ.get(ENV_VAR)
    clock = SiteClock.parse(env) if env else None
    try:
        cfg, digest = load_config_file(args.config)
        app = App(cfg, HostHw(args.root, uarts, args.console, clock), digest)
    except ConfigError as exc:
        print(f"esp32_host: {exc}", file=sys.stderr)
        return 2
    print(f"esp32_host: App started, epoch {app.epoch}, seq {app.chain.seq}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: setattr(app, "running", False))
    try:
        app.run()
    finally:
        app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
