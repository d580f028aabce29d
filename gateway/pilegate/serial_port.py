"""The Pi's raw-frame bus port: one owner of a serial line that carries Modbus RTU and DL/T 645.

pymodbus frames Modbus only; a DL/T 645 meter on the same RS-485 line needs frames pymodbus
cannot send, and two libraries must never own one serial port.  So a bus with any DL/T 645
meter is driven by `RawBusPort`: pyserial moves the bytes, the core transaction builds the
request frame and checks the reply (`Txn.request`, `Txn.reply_needed`, `Txn.parse`, the same
code the ESP32's RTU master runs), for both protocols.  Buses with Modbus meters only keep
`pilegate.modbus_port.BusPort` (pymodbus).  See docs/metering.md, "Two protocols on one bus".

Quiet-time rules are the ESP32's: before each request the line must have been silent for 3.5
character times (1.75 ms above 19200 baud); stale bytes (a late reply) are discarded; the
reply is read until the frame is complete or the transaction's timeout expires.  Serial I/O
runs in a worker thread so the asyncio loop of the other buses never blocks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import serial

from pilecore import modbus, profile
from pilecore.scheduler import Txn
from pilegate.modbus_port import BusPort, parse_port

log = logging.getLogger("pilegate.serial")


def frame_gap_s(baud: int, parity: str = "N", stopbits: int = 1) -> float:
    """3.5 character times, or the Modbus spec's fixed 1.75 ms above 19200 baud."""
    if baud > 19200:
        return 0.00175
    bits = 1 + 8 + (0 if parity == "N" else 1) + stopbits
    return 3.5 * bits / baud


class RawBusPort:
    """Performs transactions of either protocol on a serial line (or `rtu+tcp://`)."""

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
        ser.reset_input_buffer()  # a late answer to an earlier request
        request = txn.request()
        t0 = time.monotonic()
        ser.write(request)
        ser.flush()
        self.tx_bytes += len(request)
        buf = bytearray()
        deadline = t0 + txn.timeout_ms / 1000
        while True:
            need = txn.reply_needed(buf, len(buf))
            if need and len(buf) >= need:
                break
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
            return modbus.E_TIMEOUT, None, elapsed
        code, payload = txn.parse(bytes(buf))
        if code == modbus.E_SHORT:
            code = modbus.E_CRC if len(buf) >= 4 else modbus.E_TIMEOUT
        return code, payload, elapsed


def speaks_dlt645(cfg: dict[str, Any], bus_name: str) -> bool:
    """True when a pile meter or the main meter on `bus_name` is a DL/T 645 meter."""
    meters = [p["meter"] for p in cfg.get("pile", ())]
    if cfg.get("main_meter"):
        meters.append(cfg["main_meter"])
    return any(m["bus"] == bus_name and profile.protocol(cfg["profiles"][m["profile"]]) == "dlt645" for m in meters)


def bus_port(bus: dict[str, Any], cfg: dict[str, Any]) -> BusPort | RawBusPort:
    """The port for one bus: raw frames when it carries DL/T 645, pymodbus otherwise."""
    if speaks_dlt645(cfg, bus["name"]):
        return RawBusPort(bus)
    return BusPort(bus)
