"""A raw Modbus RTU master for the installer tools: every frame seen as bytes, every outcome
named (answer, exception, CRC error or garbled bytes, silence), at any line setting.

`pilegate commission` scans a bus with it: pymodbus hides a garbled reply behind a timeout,
but two meters on one address show exactly as garbled replies, and the installer needs to hear
that.  Framing, CRC and register decoding are the core's (pilecore.modbus); this module only
moves bytes through pyserial, which opens serial ports, pseudo-terminals and `socket://`
(an RS-485-to-Ethernet converter carrying RTU frames).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pilecore import modbus

PARITY_NAMES = {"N": "none", "E": "even", "O": "odd"}


@dataclass(frozen=True)
class Line:
    """Line settings of an RS-485 bus: baud rate, parity, stop bits (8 data bits)."""

    baud: int
    parity: str = "N"
    stopbits: int = 1

    def __str__(self) -> str:
        return f"{self.baud} 8{self.parity}{self.stopbits}"

    @classmethod
    def parse(cls, text: str) -> Line:
        """'9600', '9600N1', '9600 8E1', '2400:E:1' -> Line; ValueError with the accepted forms."""
        m = re.fullmatch(r"\s*(\d+)[\s:]*(?:8?)([NEO]?)[\s:]*([12]?)\s*", text.upper())
        if not m or int(m.group(1)) <= 0:
            raise ValueError(f"line setting {text!r}: write it as 9600N1, '9600 8E1' or 2400:E:1")
        return cls(int(m.group(1)), m.group(2) or "N", int(m.group(3) or 1))


#: The line settings meters ship with, in the order the scan tries them.
FACTORY_LINES = (
    Line(9600, "N", 1),
    Line(9600, "E", 1),
    Line(2400, "N", 1),  # Eastron's factory setting
    Line(2400, "E", 1),
    Line(4800, "N", 1),
    Line(19200, "N", 1),
)


@dataclass
class LinkStats:
    """What the master saw on the bus (the commissioning record keeps it)."""

    requests: int = 0
    answers: int = 0
    exceptions: int = 0
    timeouts: int = 0
    crc_errors: int = 0  # replies whose CRC or structure failed: noise, wrong line, collisions
    bytes_out: int = 0
    bytes_in: int = 0
    link_errors: int = 0  # the port itself failed and was reopened

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class Outcome:
    """The result of one request: `kind` is "ok", "exception", "garbled" or "silent"."""

    kind: str
    registers: list[int] = field(default_factory=list)
    code: int = 0  # exception code
    raw: bytes = b""
    data: bytes = b""  # DL/T 645: the item's value bytes, lowest first

    @property
    def answered(self) -> bool:
        return self.kind in ("ok", "exception")


def _whole_reply(buf: bytes) -> bool:
    """A complete reply with a good CRC: exception (5 bytes), register read (5 + byte count)
    or coil write echo (8 bytes).  A garbled reply never completes: it is read to silence."""
    if len(buf) < 5:
        return False
    if buf[1] & 0x80:
        n = 5
    elif buf[1] in (3, 4):
        n = 5 + buf[2]
    elif buf[1] in (5, 6, 15, 16):
        n = 8
    else:
        return False
    return len(buf) == n and modbus.crc_ok(buf)


class LinkError(Exception):
    """The port cannot be opened or set up; the message says what and what to do."""


class RtuLink:
    """One RS-485 port (pyserial URL or device path), reconfigurable between line settings."""

    def __init__(
        self,
        port: str,
        timeout_s: float = 0.3,
        opener: Callable[..., Any] | None = None,
        patient_timeout_s: float = 2.0,
    ) -> None:
        self.port = port
        self.timeout_s = timeout_s  # a scan probe: most addresses are empty, so be brief
        # A device that has answered before and falls silent is more likely slow (a busy
        # converter, a loaded host) than gone: reads marked patient wait this long.
        self.patient_timeout_s = max(timeout_s, patient_timeout_s)
        self.stats = LinkStats()
        self.line: Line | None = None
        self.last_error = ""
        self._opener = opener
        self._ser: Any = None

    def __enter__(self) -> RtuLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._ser is not None:
            self._ser.close()
            self._ser = None

    def set_line(self, line: Line) -> None:
        """Open the port at `line` (or change it); LinkError if the port refuses."""
        import serial

        if self.line == line and self._ser is not None:
            return
        try:
            if self._ser is None:
                opener = self._opener or serial.serial_for_url
                self._ser = opener(
                    self.port, baudrate=line.baud, parity=line.parity, stopbits=line.stopbits, bytesize=8, timeout=0
                )
            else:
                self._ser.baudrate = line.baud
                self._ser.parity = line.parity
                self._ser.stopbits = line.stopbits
        except FileNotFoundError:
            raise LinkError(f"{self.port}: no such port; is the RS-485 adapter plugged in? (ls /dev/ttyUSB*)") from None
        except (OSError, ValueError, serial.SerialException) as exc:
            text = str(exc)
            if "Permission denied" in text or "Errno 13" in text:
                raise LinkError(
                    f"{self.port}: permission denied; add yourself to the dialout group "
                    "(sudo usermod -aG dialout $USER, then log in again)"
                ) from None
            if "busy" in text.lower() or "Errno 16" in text:
                raise LinkError(
                    f"{self.port}: the port is busy; stop the program using it (e.g. the gateway)"
                ) from None
            raise LinkError(f"{self.port}: cannot use line setting {line}: {text}") from None
        self.line = line

    def _char_s(self) -> float:
        line = self.line or Line(9600)
        return (10 + (line.parity != "N") + (line.stopbits - 1)) / line.baud

    def exchange(
        self, request: bytes, complete: Callable[[bytes], bool] | None = None, timeout_s: float | None = None
    ) -> bytes:
        """Send one frame; return the bytes that came back: as soon as `complete(bytes)` says
        a whole valid reply is in, else everything until the line goes quiet."""
        ser = self._ser
        if ser is None:
            raise LinkError("set_line() first")
        import serial

        try:
            return self._exchange(ser, request, complete, self.timeout_s if timeout_s is None else timeout_s)
        except (OSError, serial.SerialException) as exc:
            # the adapter hiccuped (unplugged for a moment, a pty reset): reopen once, no answer
            self.close()
            line, self.line = self.line, None
            if line is not None:
                self.set_line(line)
            self.stats.link_errors += 1
            self.last_error = str(exc)
            return b""

    def _exchange(self, ser: Any, request: bytes, complete: Callable[[bytes], bool] | None, timeout_s: float) -> bytes:
        ser.reset_input_buffer()
        ser.write(request)
        self.stats.requests += 1
        self.stats.bytes_out += len(request)
        quiet = max(0.02, 4 * self._char_s())
        deadline = time.monotonic() + timeout_s + len(request) * self._char_s()
        buf = bytearray()
        last = None
        while True:
            chunk = ser.read(256)
            now = time.monotonic()
            if chunk:
                buf += chunk
                last = now
                if complete is not None and complete(bytes(buf)):
                    break
                continue
            # Without a frame check, silence ends the reply.  With one, an incomplete reply may
            # still be arriving in pieces (a USB adapter's latency timer, a loaded host): wait
            # up to the timeout again from the last byte; only a garbled reply waits that long.
            if last is not None and now - last >= (quiet if complete is None else max(quiet, timeout_s)):
                break
            if last is None and now >= deadline:
                break
            time.sleep(0.001)
        self.stats.bytes_in += len(buf)
        return bytes(buf)

    def read(
        self, address: int, function: int, register: int, count: int, retries: int = 0, patient: bool = False
    ) -> Outcome:
        """Read `count` registers; the outcome says what the bus did.  `retries` asks again
        after silence (a busy converter or a slow meter), never after an answer; `patient`
        waits `patient_timeout_s` (for a device that answered before)."""
        timeout = self.patient_timeout_s if patient else self.timeout_s
        res = self._read_once(address, function, register, count, timeout)
        # A patient read also asks again after garbled bytes: a reply to an earlier request that
        # came after its timeout looks garbled too.  Two devices on one address garble every time.
        while retries > 0 and (res.kind == "silent" or (patient and res.kind == "garbled")):
            retries -= 1
            if res.kind == "garbled":
                self.drain()
            res = self._read_once(address, function, register, count, timeout)
        return res

    def drain(self, quiet_s: float = 0.05) -> int:
        """Read and drop whatever is still arriving until the line has been quiet `quiet_s`."""
        ser = self._ser
        if ser is None:
            return 0
        dropped, last = 0, time.monotonic()
        while time.monotonic() - last < quiet_s:
            chunk = ser.read(256)
            if chunk:
                dropped += len(chunk)
                last = time.monotonic()
            else:
                time.sleep(0.002)
        return dropped

    def _read_once(self, address: int, function: int, register: int, count: int, timeout_s: float) -> Outcome:
        raw = self.exchange(modbus.read_request(address, function, register, count), _whole_reply, timeout_s)
        if not raw:
            self.stats.timeouts += 1
            return Outcome("silent")
        code, detail = modbus.parse_read_response(raw, address, function, count)
        if code == modbus.OK:
            self.stats.answers += 1
            return Outcome("ok", registers=detail, raw=raw)
        if code == modbus.E_EXCEPTION:
            self.stats.exceptions += 1
            return Outcome("exception", code=detail, raw=raw)
        self.stats.crc_errors += 1
        return Outcome("garbled", raw=raw)

    def dlt_read(self, address: str, di: int, nbytes: int | None = None, retries: int = 1) -> Outcome:
        """Read DL/T 645-2007 data item `di` from the meter at 12-digit `address` (patiently:
        the meter's address comes from the site file, so it is expected to answer)."""
        from pilecore import dlt645

        def whole(buf: bytes) -> bool:
            n = dlt645.frame_length(buf)
            return bool(n) and len(buf) >= n

        raw = b""
        for _ in range(retries + 1):
            raw = self.exchange(dlt645.read_request(address, di), whole, self.patient_timeout_s)
            if raw:
                break
        if not raw:
            self.stats.timeouts += 1
            return Outcome("silent")
        code, value = dlt645.parse_read_response(raw, address, di, nbytes)
        if code == modbus.OK:
            self.stats.answers += 1
            return Outcome("ok", raw=raw, data=bytes(value))
        if code == modbus.E_EXCEPTION:
            self.stats.exceptions += 1
            return Outcome("exception", code=int(value), raw=raw)
        self.stats.crc_errors += 1
        return Outcome("garbled", raw=raw)

    def dlt_read_address(self) -> Outcome:
        """DL/T 645-2007 broadcast address read (address AA x 6, control 0x13): every DL/T 645
        meter on the line answers with its own address, so only a meter ALONE answers cleanly.
        "ok" (data = the 12 ASCII digits), "silent" (no DL/T 645 meter at this line) or
        "garbled" (replies that do not parse: more than one meter answered at once)."""
        from pilecore import dlt645

        def whole(buf: bytes) -> bool:
            n = dlt645.frame_length(buf)
            return bool(n) and len(buf) >= n

        raw = self.exchange(dlt645.read_address_frame(), whole, self.patient_timeout_s)
        if not raw:
            self.stats.timeouts += 1
            return Outcome("silent")
        code, address = dlt645.parse_address_response(raw)
        if code == modbus.OK and address:
            self.stats.answers += 1
            return Outcome("ok", raw=raw, data=address.encode())
        self.stats.crc_errors += 1
        return Outcome("garbled", raw=raw)

    def write_coil(self, address: int, coil: int, on: bool, retries: int = 1) -> Outcome:
        """Function 5 (idempotent, so safe to repeat after silence); "ok" when echoed."""
        raw = self.exchange(modbus.write_coil_request(address, coil, on), _whole_reply, self.patient_timeout_s)
        while not raw and retries > 0:
            retries -= 1
            raw = self.exchange(modbus.write_coil_request(address, coil, on), _whole_reply, self.patient_timeout_s)
        if not raw:
            self.stats.timeouts += 1
            return Outcome("silent")
        code, detail = modbus.parse_write_coil_response(raw, address, coil, on)
        if code == modbus.OK:
            self.stats.answers += 1
            return Outcome("ok", raw=raw)
        if code == modbus.E_EXCEPTION:
            self.stats.exceptions += 1
            return Outcome("exception", code=detail, raw=raw)
        self.stats.crc_errors += 1
        return Outcome("garbled", raw=raw)
