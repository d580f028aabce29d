"""A fake `machine` module for running the ESP32 port's code on CPython.

Only hardware that cannot exist here is faked, behind the same interface the real MicroPython
module has: `UART` talks to a real serial device (a pseudo-terminal of the meter simulator)
through pyserial, and `Pin` records every value written so tests can check the RS-485
direction pin's timing relative to the UART traffic.
"""

from __future__ import annotations

import serial

# Tests map UART ids to device paths before the firmware opens them.
UART_DEVICES: dict[int, str] = {}
EVENTS: list[tuple[str, object]] = []  # ("pin", (id, value)) / ("write", n) / ("flush", None)


class Pin:
    OUT = 1
    IN = 0
    PULL_UP = 2
    PULL_DOWN = 3

    def __init__(self, pin_id: int, mode: int = -1, pull: int | None = None, value: int | None = None):
        self.id = pin_id
        self._value = 0 if value is None else value
        self.history: list[int] = []

    def value(self, v: int | None = None) -> int | None:
        if v is None:
            return self._value
        self._value = 1 if v else 0
        self.history.append(self._value)
        EVENTS.append(("pin", (self.id, self._value)))
        return None

    def on(self) -> None:
        self.value(1)

    def off(self) -> None:
        self.value(0)


class UART:
    def __init__(
        self,
        uart_id: int,
        baudrate: int = 9600,
        bits: int = 8,
        parity: int | None = None,
        stop: int = 1,
        tx: int | None = None,
        rx: int | None = None,
        timeout: int = 0,
        timeout_char: int = 0,
        rxbuf: int = 256,
    ):
        par = {None: serial.PARITY_NONE, 0: serial.PARITY_EVEN, 1: serial.PARITY_ODD}[parity]
        self.port = serial.Serial(
            UART_DEVICES[uart_id], baudrate=baudrate, bytesize=bits, parity=par, stopbits=stop, timeout=0
        )

    def write(self, buf) -> int:
        n = self.port.write(bytes(buf))
        EVENTS.append(("write", n))
        return n

    def flush(self) -> None:
        self.port.flush()
        EVENTS.append(("flush", None))

    def any(self) -> int:
        return self.port.in_waiting

    def read(self, n: int | None = None) -> bytes | None:
        data = self.port.read(n if n is not None else self.port.in_waiting)
        return data or None

    def readinto(self, buf, nbytes: int | None = None) -> int | None:
        want = len(buf) if nbytes is None else nbytes
        data = self.port.read(min(want, self.port.in_waiting))
        if not data:
            return None
        buf[: len(data)] = data
        return len(data)

    def deinit(self) -> None:
        self.port.close()
