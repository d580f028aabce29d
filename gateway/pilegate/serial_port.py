"""The Pi's RTU master: one owner of a serial line (or an `rtu+tcp://` converter) that carries
Modbus RTU and DL/T 645.

pymodbus frames Modbus only, and its client cannot tell a late reply from the reply it waits
for: an RTU frame carries no transaction number, and pymodbus neither discards input left over
from a timed-out request before the next one nor remembers that a reply is still due (its
maintainers: only a long enough timeout avoids it).  A late reply to a read of register 0x12
then became the reading of 0x13 of the same device.  So every RTU bus is driven by
`RawBusPort`: pyserial moves the bytes, the core transaction builds the request frame and
checks the reply (`Txn.request`, `Txn.reply_needed`, `Txn.parse`, the same code the ESP32's RTU
master runs), for both protocols, and the core's `scheduler.LateReplies` says which request a
frame answers.  Modbus TCP buses (`tcp://`) keep `pilegate.modbus_port.BusPort` (pymodbus),
whose transaction id tells a late reply apart.  See docs/metering.md, "Ports".

Quiet-time rules are the ESP32's: before each request the line must have been silent for 3.5
character times (1.75 ms above 19200 baud); input left over (a late reply) is read and
discarded; the reply is read until the frame is complete or the transaction's timeout expires,
and a complete frame that is an earlier request's late reply is discarded while the wait goes
on.  Serial I/O runs in a worker thread so the asyncio loop of the other buses never blocks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import serial

from pilecore import modbus, profile
from pilecore.scheduler import LateReplies, Txn
from pilegate.modbus_port import BusPort, parse_port

log = logging.getLogger("pilegate.serial")


def frame_gap_s(baud: int, parity: str = "N", stopbits: int = 1) -> float:
    """3.5 character times, or the Modbus spec's fixed 1.75 ms above 19200 baud."""
    if baud > 19200:
        return 0.00175
    bits = 1 + 8 + (0 if parity == "N" else 1) + stopbits
    return 3.5 * bits / baud


class RawBusPort:
    """Performs transactions of either protocol on a serial line (or `rtu+tcp://`).

    `perform` returns the core's result codes; besides the parser's, E_TIMEOUT (nothing came)
    and E_LATE (only an earlier request's late reply came in time).  `stale_bytes` counts the
    input discarded before requests, `late.late` the late replies recognised."""

    def __init__(self, bus: dict[str, Any]):
        self.name = bus["name"]
        self.bus = bus
        self.kind, self.host, self.port = parse_port(bus["port"])
        if self.kind == "tcp":
            raise ValueError(f"bus {self.name}: Modbus TCP cannot carry DL/T 645 frames")
        self.url = bus["port"] if self.kind == "serial" else f"socket://{self.host}:{self.port}"
        self.baud = bus.get("baud", 9600)
        self.parity = bus.get("parity", "N")
        self.stopbits = bus.get("stopbits", 1)
        self.gap_s = frame_gap_s(self.baud, self.parity, self.stopbits)
        self.ser: Any = None
        self.connected = False
        self.last_rx = 0.0
        self.tx_bytes = 0
        self.rx_bytes = 0
        self.stale_bytes = 0  # bytes discarded before a request (late replies)
        self.late = LateReplies()

    async def connect(self) -> bool:
        """Open the line; False (and a log line) when it cannot be opened yet."""
        try:
            self.ser = await asyncio.to_thread(
                serial.serial_for_url,
                self.url,
                baudrate=self.baud,
                bytesize=8,
                parity=self.parity,
                stopbits=self.stopbits,
                timeout=0.01,
            )
            self.connected = True
        except (OSError, ValueError, serial.SerialException) as exc:
            log.warning("bus %s: cannot open %s: %s", self.name, self.bus["port"], exc)
            self.connected = False
        return self.connected

    def close(self) -> None:
        if self.ser is not None:
            self.ser.close()
            self.ser = None
        self.connected = False

    async def perform(self, txn: Txn) -> tuple[int, Any, int]:
        """Do one transaction; return (core result code, payload, elapsed ms)."""
        if not self.connected and not await self.connect():
            return modbus.E_TIMEOUT, None, 0
        try:
            return await asyncio.to_thread(self._transact, txn)
        except (OSError, serial.SerialException) as exc:
            log.warning("bus %s: line error: %s", self.name, exc)
            self.close()
            return modbus.E_TIMEOUT, None, 0

    def _transact(self, txn: Txn) -> tuple[int, Any, int]:
        ser = self.ser
        wait = self.gap_s - (time.monotonic() - self.last_rx)
        if wait > 0:
            time.sleep(wait)  # the line's quiet time before a request (worker thread)
        stale = self._drain()  # late answers to earlier requests: never this request's reply
        self.late.before_send(_ms(), modbus.late_replies_in(stale))
        request = txn.request()
        t0 = time.monotonic()
        ser.write(request)
        ser.flush()
        self.late.sent(txn, request)
        self.tx_bytes += len(request)
        buf = bytearray()
        discarded = 0
        deadline = t0 + txn.timeout_ms / 1000
        while True:
            need = txn.reply_needed(buf, len(buf))
            if need and len(buf) >= need:
                if self.late.claim(txn, request, bytes(buf[:need])):
                    break
                discarded += 1  # an earlier request's late reply: keep waiting for ours
                self.rx_bytes += need
                del buf[:need]
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ser.timeout = min(left, 0.05)
            chunk = ser.read((need - len(buf)) if need else 1)
            if chunk:
                buf += chunk
        self.last_rx = time.monotonic()
        self.rx_bytes += len(buf)
        elapsed = int((self.last_rx - t0) * 1000)
        if not buf:
            if discarded:
                return modbus.E_LATE, None, elapsed
            self.late.timed_out(txn, _ms())
            return modbus.E_TIMEOUT, None, elapsed
        code, payload = txn.parse(bytes(buf))
        if code == modbus.E_SHORT:
            code = modbus.E_CRC if len(buf) >= 4 else (modbus.E_LATE if discarded else modbus.E_TIMEOUT)
        return code, payload, elapsed

    def _drain(self) -> bytes:
        """Read and return whatever waits in the input (a late reply), without blocking."""
        ser = self.ser
        ser.timeout = 0
        stale = bytearray()
        for _ in range(64):  # bounded: a line that never stops talking is not drained forever
            chunk = ser.read(4096)
            if not chunk:
                break
            stale += chunk
        self.rx_bytes += len(stale)
        self.stale_bytes += len(stale)
        return bytes(stale)


def _ms() -> int:
    return int(time.monotonic() * 1000)


def speaks_dlt645(cfg: dict[str, Any], bus_name: str) -> bool:
    """True when a pile meter or the main meter on `bus_name` is a DL/T 645 meter."""
    meters = [p["meter"] for p in cfg.get("pile", ())]
    if cfg.get("main_meter"):
        meters.append(cfg["main_meter"])
    return any(m["bus"] == bus_name and profile.protocol(cfg["profiles"][m["profile"]]) == "dlt645" for m in meters)


def bus_port(bus: dict[str, Any], cfg: dict[str, Any]) -> BusPort | RawBusPort:
    """The port for one bus: the raw-frame port on a serial line or an `rtu+tcp://` converter
    (RTU has no transaction number: only a master that owns the bytes can tell a late reply
    from the reply it waits for), pymodbus for Modbus TCP (whose transaction id does)."""
    if parse_port(bus["port"])[0] == "tcp":
        return BusPort(bus)
    return RawBusPort(bus)
