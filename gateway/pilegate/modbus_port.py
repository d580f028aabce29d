"""The Pi's Modbus transport: pymodbus clients performing the core scheduler's transactions.

The gateway drives its Modbus TCP buses (`tcp://host:port`) with a `BusPort`; serial lines and
RTU-over-TCP converters get `pilegate.serial_port.RawBusPort` (`serial_port.bus_port`), because
an RTU frame has no transaction number and pymodbus cannot tell a late reply from the one it
waits for.  (`BusPort` still speaks serial RTU and `rtu+tcp://` when built directly, for tools.)
pymodbus does the framing and I/O; this module sets each request's timeout from the scheduler (adaptive,
per meter), and taps the raw bytes so that every reply is judged by the core's check against
its request (`modbus.check_reply`), exactly as on the ESP32, and a damaged reply counts as a CRC
error rather than a plain timeout.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException

from pilecore import modbus
from pilecore.scheduler import Txn

log = logging.getLogger("pilegate.modbus")
# pymodbus logs every missing reply at ERROR level; the scheduler accounts for them itself.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


class _Tap:
    """Collects the raw bytes received during one transaction."""

    def __init__(self) -> None:
        self.rx = bytearray()
        self.tx_bytes = 0
        self.rx_bytes = 0

    def __call__(self, sending: bool, data: bytes) -> bytes:
        if sending:
            self.tx_bytes += len(data)
        else:
            # pymodbus hands over its whole receive buffer each time; keep the latest view.
            self.rx = bytearray(data)
            self.rx_bytes += len(data)
        return data


def parse_port(port: str) -> tuple[str, str, int]:
    """("serial", device, 0) | ("tcp", host, port) | ("rtu+tcp", host, port)."""
    for scheme in ("rtu+tcp", "tcp"):
        prefix = scheme + "://"
        if port.startswith(prefix):
            host, _, num = port[len(prefix) :].rpartition(":")
            return scheme, host, int(num)
    return "serial", port, 0


class BusPort:
    """Performs transactions on one bus; see the module docstring."""

    def __init__(self, bus: dict[str, Any]):
        self.name = bus["name"]
        self.bus = bus
        self.kind, self.host, self.port = parse_port(bus["port"])
        self.tap = _Tap()
        timeout = bus.get("timeout_ms", 500) / 1000
        if self.kind == "serial":
            self.client: Any = AsyncModbusSerialClient(
                self.host,
                framer=FramerType.RTU,
                baudrate=bus.get("baud", 9600),
                bytesize=8,
                parity=bus.get("parity", "N"),
                stopbits=bus.get("stopbits", 1),
                timeout=timeout,
                retries=0,
                reconnect_delay=0.5,
                reconnect_delay_max=10,
                trace_packet=self.tap,
            )
        else:
            framer = FramerType.RTU if self.kind == "rtu+tcp" else FramerType.SOCKET
            self.client = AsyncModbusTcpClient(
                self.host,
                port=self.port,
                framer=framer,
                timeout=timeout,
                retries=0,
                reconnect_delay=0.5,
                reconnect_delay_max=10,
                trace_packet=self.tap,
            )
        self.connected = False

    async def connect(self) -> bool:
        """Open the port; False (and a log line) when it cannot be opened yet."""
        try:
            self.connected = bool(await self.client.connect())
        except (OSError, ModbusException) as exc:
            log.warning("bus %s: cannot open %s: %s", self.name, self.bus["port"], exc)
            self.connected = False
        return self.connected

    def close(self) -> None:
        self.client.close()
        self.connected = False

    async def perform(self, txn: Txn) -> tuple[int, Any, int]:
        """Do one transaction; return (core result code, payload, elapsed ms).

        pymodbus frames and decodes the reply, but does not check that it answers the request
        (it takes an FC 04 reply to an FC 03 request as data).  So the reply is judged by the
        core's `modbus.check_reply`, on the raw bytes pymodbus received, as the ESP32's RTU
        master judges its own: device address, function code, byte count, register count.
        A DL/T 645 transaction cannot go through pymodbus (a bus with a DL/T 645 meter gets a
        `pilegate.serial_port.RawBusPort`): it is refused as a wrong function, never sent.
        """
        if txn.protocol != "modbus":
            return modbus.E_FUNCTION, "this bus is driven by pymodbus, which cannot send DL/T 645 frames", 0
        if not self.connected and not await self.connect():
            return modbus.E_TIMEOUT, None, 0
        self.client.ctx.comm_params.timeout_connect = txn.timeout_ms / 1000
        self.tap.rx = bytearray()
        t0 = time.monotonic()
        answered = True
        try:
            await self._call(txn)
        except ConnectionException:
            self.connected = False
            return modbus.E_TIMEOUT, None, self._ms(t0)
        except (TimeoutError, ModbusException):
            answered = False  # nothing pymodbus could frame, or the wrong device id: judge below
        elapsed = self._ms(t0)
        code, payload = self._judge(txn, answered)
        return code, payload, elapsed

    def _judge(self, txn: Txn, answered: bool) -> tuple[int, Any]:
        """The core's verdict on the bytes received for `txn` (see `perform`)."""
        raw = bytes(self.tap.rx)
        if self.kind == "tcp":
            tid = getattr(self.client.ctx, "request_transaction_id", None)
            while tid is not None and len(raw) >= 9 and (raw[0] << 8 | raw[1]) != tid:
                raw = raw[6 + (raw[4] << 8 | raw[5]) :]  # a late answer to an earlier request
            if len(raw) < 9:
                return modbus.E_TIMEOUT, None  # nothing, or only late answers: this one got none
            code, payload = modbus.parse_tcp_reply(raw, txn.address, txn.function, txn.register, txn.count, txn.value)
            if code == modbus.E_SHORT:
                code = modbus.E_TIMEOUT
            return code, payload
        frm = modbus.find_rtu_frame(raw)
        if frm is None:
            # bytes that hold no valid frame are a damaged reply; no bytes at all, a timeout
            return (modbus.E_CRC if len(raw) >= 4 else modbus.E_TIMEOUT), None
        return txn.parse(frm)  # the core's check_reply, as on the ESP32

    async def _call(self, txn: Txn) -> Any:
        c, kw = self.client, {"device_id": txn.address}
        if txn.function == 3:
            return await c.read_holding_registers(txn.register, count=txn.count, **kw)
        if txn.function == 4:
            return await c.read_input_registers(txn.register, count=txn.count, **kw)
        if txn.function == 1:
            return await c.read_coils(txn.register, count=txn.count, **kw)
        if txn.function == 2:
            return await c.read_discrete_inputs(txn.register, count=txn.count, **kw)
        if txn.function == 5:
            return await c.write_coil(txn.register, bool(txn.value), **kw)
        raise ValueError(f"unsupported Modbus function {txn.function}")

    @staticmethod
    def _ms(t0: float) -> int:
        return int((time.monotonic() - t0) * 1000)
