"""The `hw` interface of the ESP32 app (firmware/pilefw/app.py) on CPython, and a terminal.

Only what cannot exist here is replaced: `machine.UART`/`Pin` come from tests/helpers/machine.py
(a UART is a real pyserial port on a pseudo-terminal), the watchdog records its feeds, and
umqtt.simple runs on CPython sockets (tests/helpers/umqtt_compat.py) against a real mosquitto.
Shared by tests/gateway/test_fw_app.py and test_console_parity.py.
"""

from __future__ import annotations

import os
import select
import time

import machine  # the fake, from tests/helpers
import umqtt_compat

from pilefw import ticks
from pilefw.mqtt import parse_url

simple = umqtt_compat.require()


class Watchdog:
    def __init__(self, timeout_ms: int) -> None:
        self.timeout_ms = timeout_ms
        self.feeds = 0

    def feed(self) -> None:
        self.feeds += 1


class FakeHw:
    """The `hw` interface of pilefw.app on CPython (see pilefw.hw.DeviceHw for the device)."""

    def __init__(self, root, console_path: str | None = None) -> None:
        self.root = str(root)
        self.gmtime = time.gmtime
        self.ticks_ms = ticks.ticks_ms
        self.sleep_ms = ticks.sleep_ms
        self.urandom = os.urandom
        self.console_path = console_path
        self.resets = 0
        self.dog: Watchdog | None = None
        self.ntp_ok = True

    def time(self) -> float:
        return time.time()

    def uart(self, uart_id, baud, parity, stop, tx, rx):
        return machine.UART(
            uart_id, baudrate=baud, bits=8, parity={"N": None, "E": 0, "O": 1}[parity], stop=stop, tx=tx, rx=rx
        )

    def pin(self, n, out):
        return machine.Pin(n, machine.Pin.OUT if out else machine.Pin.IN)

    def wdt(self, timeout_ms):
        self.dog = Watchdog(timeout_ms)
        return self.dog

    def network_up(self) -> bool:
        return True

    def ntp_sync(self) -> bool:
        return self.ntp_ok

    def mqtt_factory(self, mq, client_id, timeout_s):
        tls, host, port = parse_url(mq["url"])
        assert not tls
        return lambda: simple.MQTTClient(client_id, host, port)

    def console_port(self, uart_def):
        if self.console_path is None:
            return None
        machine.UART_DEVICES[0] = self.console_path
        return machine.UART(0, baudrate=115200, tx=uart_def.get("tx"), rx=uart_def.get("rx"))

    def mem(self):
        return None

    def reset(self) -> None:
        self.resets += 1

    def repl(self) -> None:
        pass


class FwTerminal:
    """The technician's end of the console pty."""

    def __init__(self) -> None:
        self.master, slave = os.openpty()
        self.path = os.ttyname(slave)
        self.slave = slave
        self.out = b""

    def send(self, text: bytes) -> None:
        os.write(self.master, text)

    def read(self) -> bytes:
        while select.select([self.master], [], [], 0)[0]:
            self.out += os.read(self.master, 4096)
        return self.out

    def close(self) -> None:
        os.close(self.master)
        os.close(self.slave)
