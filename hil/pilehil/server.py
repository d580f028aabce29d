"""Transports: the pymodbus server behind each bus, and the front ends masters connect to.

Per bus::

    master (gateway, test) ──> front end ──> Wire (timing, stats, faults) ──> backend
                                                                              (pymodbus RTU
                                                                              server on a pty)

* Backend: a pymodbus ``ModbusSerialServer`` (RTU framer) on the slave side of a private
  pseudo-terminal, one ``SimDevice`` per meter whose ``action`` hook fills the registers from
  the :class:`~pilehil.meter.SimMeter` at read time and returns injected exception codes.
  pymodbus decodes every request and encodes every reply.
* Front ends (what the master opens):

  - ``pty``: a second pseudo-terminal; the master opens its slave path (``/dev/pts/N``) with
    pyserial. RTU frames are copied between the two pty masters through the wire.
  - ``rtu+tcp``: a TCP listener carrying raw RTU frames, as a transparent RS-485-to-Ethernet
    converter does.
  - ``tcp``: a Modbus TCP (MBAP) listener that converts to RTU and back, as a Modbus TCP
    gateway in front of an RS-485 bus does: the unit id is the meter address; when the bus
    gives no valid reply (silence, bad CRC, cut cable) it answers exception 0x0B (gateway
    target failed to respond), or nothing if ``gateway_exceptions`` is False.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import termios
import tty
from collections.abc import Mapping

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer
from pymodbus.simulator import DataType, SimData, SimDevice

from .meter import SimMeter
from .wire import FrameSplitter, LineTiming, Wire, add_crc, crc_ok, frame_address

#: Registers of zeros served on each side of the mapped ones (the most one read can ask).
PAD = 125
#: Silence (s) after which a partial frame from the master is dropped. Real RTU uses 3.5
#: character times; ptys and sockets deliver in chunks, so this is looser.
SILENCE_S = 0.1
#: How long the wire waits for the pymodbus backend to answer (s); it answers in ~1 ms.
BACKEND_TIMEOUT_S = 2.0


#: termios speed constant -> baud, for the rates this platform names.
BAUD_CODES = {
    getattr(termios, f"B{b}"): b
    for b in (300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)
    if hasattr(termios, f"B{b}")
}
_CSIZE_BITS = {termios.CS5: 5, termios.CS6: 6, termios.CS7: 7, termios.CS8: 8}


class PtyPair:
    """A raw-mode pseudo-terminal: ``master`` fd (non-blocking) for us, ``path`` for the other
    side. We keep the slave fd open so the master never sees a hang-up while nobody has the
    path open. The line starts at ``timing``'s baud and stop bits (8 data bits, no parity:
    Linux ptys refuse PARENB), so a master that does not configure the port matches."""

    def __init__(self, timing: LineTiming | None = None) -> None:
        self.master, self.slave = os.openpty()
        try:
            tty.setraw(self.slave)
            if timing is not None:
                self._configure(timing)
            os.set_blocking(self.master, False)
            self.path = os.ttyname(self.slave)
        except BaseException:
            self.close()
            raise

    def _configure(self, timing: LineTiming) -> None:
        attrs = termios.tcgetattr(self.slave)
        code = next((c for c, b in BAUD_CODES.items() if b == timing.baud), None)
        if code is not None:
            attrs[4] = attrs[5] = code
        attrs[2] = (attrs[2] & ~termios.CSTOPB) | (termios.CSTOPB if timing.stopbits == 2 else 0)
        termios.tcsetattr(self.slave, termios.TCSANOW, attrs)

    def line_settings(self) -> tuple[int | None, int, int]:
        """``(baud or None if unknown, data bits, stop bits)`` the other side configured."""
        attrs = termios.tcgetattr(self.slave)
        return (
            BAUD_CODES.get(attrs[5]),
            _CSIZE_BITS.get(attrs[2] & termios.CSIZE, 8),
            2 if attrs[2] & termios.CSTOPB else 1,
        )

    def close(self) -> None:
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.master = self.slave = -1


def _span(device: SimMeter, function: int) -> tuple[int, int]:
    regs = [r for f, r in device.mapped if f == function]
    if not regs:
        return 0, 1
    return max(0, min(regs) - PAD), min(0x10000, max(regs) + 1 + PAD)


def _bit_blocks(device: SimMeter, function: int) -> list[SimData]:
    """Bit block for coils (1) or discrete inputs (2): the mapped bits +-``PAD``, or a
    placeholder when the device maps none (its action then answers exception 1)."""
    bits = [r for f, r in device.mapped if f == function]
    if not bits:
        return [SimData(0, values=0, datatype=DataType.BITS)]
    lo, hi = max(0, min(bits) - PAD), min(0x10000, max(bits) + 1 + PAD)
    return [SimData(lo, count=hi - lo, values=False, datatype=DataType.BITS)]


def _pack_bits(bits: list[int]) -> list[int]:
    """Bits (first = lowest address) into 16-bit words, bit 0 of each word first, as pymodbus's
    simulator stores coils and discrete inputs."""
    words = []
    for i in range(0, len(bits), 16):
        word = 0
        for k, bit in enumerate(bits[i : i + 16]):
            if bit:
                word |= 1 << k
        words.append(word)
    return words


def sim_device(meter: SimMeter) -> SimDevice:
    """A pymodbus ``SimDevice`` answering for ``meter`` (or any device with the same
    ``address``/``mapped``/``read`` interface): holding (3) and input (4) register blocks
    covering the mapped registers +-``PAD`` (reads beyond get exception 2 from pymodbus);
    coils (1) and discrete inputs (2) only where the device maps some (``read`` then returns
    0/1 per bit), exception 1 otherwise; writes refused (exception 2)."""
    bit_functions = {f for f, _ in meter.mapped if f in (1, 2)}

    async def action(
        function: int,
        start: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if set_values is not None and function in (5, 6, 15, 16, 22, 23):
            write = getattr(meter, "write", None)
            if write is None:
                return ExcCodes.ILLEGAL_ADDRESS  # measurement registers are read-only
            code = write(function, address, list(set_values))
            return None if code is None else ExcCodes(code)
        if function in (5, 15) and getattr(meter, "write", None) is not None:
            return None  # pymodbus calls again without values to build the echo: already written
        if function in (1, 2) and function in bit_functions:
            # pymodbus asks for whole 16-bit words: `count` words from the word holding
            # bit `address`; it picks the requested bits out of them afterwards.
            word = address // 16
            result = meter.read(function, word * 16, count * 16)
            if isinstance(result, int):
                return ExcCodes(result)
            offset = word - start
            registers[offset : offset + count] = _pack_bits(result)
            return None
        if function not in (3, 4):
            return ExcCodes.ILLEGAL_FUNCTION  # no coils, no discrete inputs
        result = meter.read(function, address, count)
        if isinstance(result, int):
            return ExcCodes(result)
        offset = address - start
        registers[offset : offset + count] = result
        return None

    blocks = []
    for function in (3, 4):
        lo, hi = _span(meter, function)
        blocks.append([SimData(lo, count=hi - lo, datatype=DataType.REGISTERS)])
    return SimDevice(
        meter.address, simdata=(_bit_blocks(meter, 1), _bit_blocks(meter, 2), blocks[0], blocks[1]), action=action
    )


class PymodbusBackend:
    """pymodbus RTU server for the devices (meters, sensors, pile controllers) of one bus,
    reached through a private pty."""

    def __init__(self, meters: Mapping[int | str, SimMeter], timing: LineTiming) -> None:
        self.meters = meters
        self.timing = timing
        self._pty: PtyPair | None = None
        self._server: ModbusSerialServer | None = None
        self._splitter = FrameSplitter(replies=True)
        self._waiter: asyncio.Future[bytes] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._pty = PtyPair()
        # DL/T 645 meters (string addresses) are answered by the wire itself, not pymodbus.
        devices = [sim_device(m) for m in self.meters.values() if isinstance(m.address, int)]
        # Parity stays "N": Linux ptys refuse PARENB (tcsetattr fails with EINVAL once the
        # port is already raw), and a pty carries bytes, not bits; the wire models parity.
        self._server = ModbusSerialServer(
            devices,
            framer=FramerType.RTU,
            port=self._pty.path,
            baudrate=self.timing.baud,
            parity="N",
            stopbits=self.timing.stopbits,
            ignore_missing_devices=True,
        )
        await self._server.serve_forever(background=True)
        loop.add_reader(self._pty.master, self._readable)

    def _readable(self) -> None:
        assert self._pty is not None
        try:
            data = os.read(self._pty.master, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        for frame in self._splitter.feed(data):
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(frame)

    async def exchange(self, request: bytes) -> bytes | None:
        """Send one RTU request to the server; its reply frame, or None on timeout."""
        assert self._pty is not None
        loop = asyncio.get_running_loop()
        self._splitter.flush()
        self._waiter = loop.create_future()
        os.write(self._pty.master, request)
        try:
            return await asyncio.wait_for(self._waiter, BACKEND_TIMEOUT_S)
        except TimeoutError:
            return None
        finally:
            self._waiter = None

    async def stop(self) -> None:
        if self._pty is not None and self._pty.master >= 0:
            asyncio.get_running_loop().remove_reader(self._pty.master)
        if self._server is not None:
            await self._server.shutdown()
            self._server = None
        if self._pty is not None:
            self._pty.close()
            self._pty = None


class PtyFrontend:
    """Masters open ``endpoint`` (a ``/dev/pts/N`` path) as a serial port.

    With ``check_line`` a master whose port is set to another baud rate, data size or stop
    bits than the bus gets what it would get on a real bus: silence (its frames count as
    ``line_errors`` and ``garbage_bytes``). Parity cannot be checked: ptys refuse it."""

    def __init__(self, wire: Wire, check_line: bool = True) -> None:
        self.wire = wire
        self.check_line = check_line
        self.endpoint = ""
        self._pty: PtyPair | None = None
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> str:
        self._pty = PtyPair(self.wire.timing)
        asyncio.get_running_loop().add_reader(self._pty.master, self._readable)
        self._task = asyncio.create_task(self._serve(), name=f"pilehil-pty-{self.wire.name}")
        self.endpoint = self._pty.path
        return self.endpoint

    def _readable(self) -> None:
        assert self._pty is not None
        try:
            data = os.read(self._pty.master, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        if data:
            self._queue.put_nowait(data)

    async def _serve(self) -> None:
        splitter = FrameSplitter()
        while True:
            try:
                data = await asyncio.wait_for(self._queue.get(), SILENCE_S if splitter.pending else None)
            except TimeoutError:
                self.wire.count(garbage_bytes=splitter.flush())
                continue
            self.wire.count(link_bytes=len(data))
            for frame in splitter.feed(data):
                if not self._line_matches(frame_address(frame)):
                    self.wire.count(line_errors=1, garbage_bytes=len(frame))
                    continue
                reply = await self.wire.transact(frame)
                if reply is not None and self._pty is not None:
                    self.wire.count(link_bytes=len(reply))
                    with contextlib.suppress(OSError):  # pty buffer full: the reply is lost
                        os.write(self._pty.master, reply)

    def _line_matches(self, address: int | str | None) -> bool:
        """Whether the device at ``address`` hears the master: same baud rate (the device's
        own ``baud`` if it has one, as a meter left at its factory rate, else the bus's),
        8 data bits and the bus's stop bits."""
        if not self.check_line or self._pty is None:
            return True
        baud, bits, stopbits = self._pty.line_settings()
        t = self.wire.timing
        device = self.wire.meters.get(address) if address is not None else None
        want = getattr(device, "baud", None) or t.baud
        return (baud is None or baud == want) and bits == 8 and stopbits == t.stopbits

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._pty is not None:
            asyncio.get_running_loop().remove_reader(self._pty.master)
            self._pty.close()
            self._pty = None


class _TcpFrontend:
    scheme = ""

    def __init__(self, wire: Wire, host: str = "127.0.0.1", port: int = 0) -> None:
        self.wire = wire
        self.host = host
        self.port = port
        self.endpoint = ""
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self.endpoint = f"{self.scheme}://{self.host}:{self.port}"
        return self.endpoint

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            await self._serve(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.CancelledError:
            # stop() cancels connections; finishing normally keeps asyncio's stream callback
            # from logging the cancellation as an error
            pass
        finally:
            self._conns.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._conns):
            task.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None


class RtuTcpFrontend(_TcpFrontend):
    """Raw RTU frames over TCP (transparent serial-to-Ethernet converter)."""

    scheme = "rtu+tcp"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        splitter = FrameSplitter()
        while True:
            try:
                data = await asyncio.wait_for(reader.read(4096), SILENCE_S if splitter.pending else None)
            except TimeoutError:
                self.wire.count(garbage_bytes=splitter.flush())
                continue
            if not data:
                return
            self.wire.count(link_bytes=len(data))
            for frame in splitter.feed(data):
                reply = await self.wire.transact(frame)
                if reply is not None:
                    self.wire.count(link_bytes=len(reply))
                    writer.write(reply)
                    await writer.drain()


class ModbusTcpFrontend(_TcpFrontend):
    """Modbus TCP (MBAP) front end of an RS-485 bus, like a Modbus TCP gateway."""

    scheme = "tcp"

    def __init__(self, wire: Wire, host: str = "127.0.0.1", port: int = 0, gateway_exceptions: bool = True) -> None:
        super().__init__(wire, host, port)
        self.gateway_exceptions = gateway_exceptions

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            header = await reader.readexactly(7)
            tid, pid, length, unit = struct.unpack(">HHHB", header)
            if pid != 0 or not 2 <= length <= 254:
                return  # not Modbus: drop the connection as gateways do
            pdu = await reader.readexactly(length - 1)
            self.wire.count(link_bytes=7 + len(pdu))
            reply = await self.wire.transact(add_crc(bytes([unit]) + pdu))
            if reply is not None and crc_ok(reply):
                out = reply[1:-2]
            elif self.gateway_exceptions and unit != 0:
                out = bytes([pdu[0] | 0x80, ExcCodes.GATEWAY_NO_RESPONSE])
            else:
                continue
            frame = struct.pack(">HHHB", tid, 0, len(out) + 1, unit) + out
            self.wire.count(link_bytes=len(frame))
            writer.write(frame)
            await writer.drain()


FRONTENDS = {"pty": PtyFrontend, "tcp": ModbusTcpFrontend, "rtu+tcp": RtuTcpFrontend}
