"""The wire: one simulated RS-485 bus between a Modbus master and the meters on it.

Every request the master sends passes through :meth:`Wire.transact` as a Modbus RTU frame
(a Modbus TCP front end converts MBAP to RTU first, as a TCP-to-RS-485 gateway does). The wire

* counts frames and bytes and accumulates the bus time they take (:class:`BusStats`),
* drops what a real bus would leave unanswered (bad request CRC, broadcast, an address no
  meter has, a meter with ``no_reply``, a cut cable),
* hands the rest to the backend (the pymodbus server that decodes and answers),
* applies byte-level faults to the reply (inverted CRC, late delivery),
* optionally paces replies in real time (``realtime=True``).

Timing model (per frame of ``n`` bytes, Modbus RTU, 8 data bits)::

    bits_per_char = 1 start + 8 data + (1 if parity != "N") + stopbits
    char_time     = bits_per_char / baud
    frame_time(n) = n * char_time + 3.5 * char_time          # frame + inter-frame gap
    transaction   = frame_time(request) + latency + frame_time(reply)

where latency is the meter's ``latency_ms`` (its profile's ``response_ms`` unless overridden)
plus any late-reply fault. A request with no reply adds only its own frame time: the master's
timeout is the master's business. All times are exact fractions of a second.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction

from pilecore import dlt645 as core_dlt645
from pilecore import modbus as core_modbus

from .meter import SimMeter

MAX_RTU_FRAME = 256

#: Malformed replies a rogue responder sends, each with a valid CRC (``BusDevice.set_rogue``):
#: function     the other read function code (FC 04 answering FC 03 and the reverse), registers
#:              all 0x1234 (decoded as f32 that is 5.7e-28; as a u32 serial 0x12341234)
#: unit         the right answer from another device address
#: byte_count   one register more than asked (byte count and data agree with each other)
#: short        one register fewer than asked
#: exception    exception 4 (server device failure) to every request
#: refuse       exception 2 (illegal data address) to every request: "no such register"
#: random       random bytes of random length
#: random_data  a well-formed header (address, function, byte count) over random registers
ROGUE_KINDS = ("function", "unit", "byte_count", "short", "exception", "refuse", "random", "random_data")


def rogue_reply(kind: str, request: bytes, reply: bytes, rng: random.Random) -> bytes:
    """``reply`` (the true answer to ``request``) rewritten as malformed ``kind``, CRC valid."""
    addr, fc = request[0], request[1]
    count = (request[4] << 8) | request[5]
    if kind == "random":
        return add_crc(bytes(rng.randrange(256) for _ in range(rng.randrange(2, 40))))
    if kind in ("exception", "refuse"):
        return add_crc(bytes((addr, fc | 0x80, 4 if kind == "exception" else 2)))
    if fc not in (3, 4):
        return reply  # only register reads are rewritten by the other kinds
    if kind == "unit":
        return add_crc(bytes(((addr % 247) + 1,)) + reply[1:-2])
    if kind == "random_data":
        return add_crc(bytes((addr, fc, 2 * count)) + bytes(rng.randrange(256) for _ in range(2 * count)))
    regs = {"function": count, "byte_count": count + 1, "short": count - 1}[kind]
    out_fc = 7 - fc if kind == "function" else fc
    return add_crc(bytes((addr, out_fc, 2 * regs)) + b"\x12\x34" * regs)


def crc16(data: bytes) -> int:
    """Modbus CRC-16 (poly 0xA001 reflected, init 0xFFFF): the core's implementation."""
    return core_modbus.crc16(data)


def add_crc(body: bytes) -> bytes:
    """``body`` followed by its CRC, low byte first (as RTU sends it)."""
    return body + crc16(body).to_bytes(2, "little")


def crc_ok(frame: bytes) -> bool:
    return len(frame) >= 4 and crc16(frame[:-2]) == int.from_bytes(frame[-2:], "little")


def is_dlt645_start(buf: bytes) -> bool | None:
    """Does ``buf`` start a DL/T 645 frame (FE preamble, or 68 with a second 68 at byte 7)?
    None while too few bytes have arrived to tell. A Modbus address is 1..247, never FE; a
    Modbus request to address 0x68 is told apart by its eighth byte."""
    if not buf:
        return None
    if buf[0] == 0xFE:
        return True
    if buf[0] != 0x68:
        return False
    if len(buf) < 8:
        return None
    return buf[7] == 0x68


def request_length(buf: bytes) -> int | None:
    """Length of the RTU (or DL/T 645) request at the start of ``buf``; None if more bytes
    are needed to know; 0 for a function whose length is unknown here (found by CRC instead)."""
    dlt = is_dlt645_start(buf)
    if dlt is None:
        return None
    if dlt:
        return core_dlt645.frame_length(buf) or None
    if len(buf) < 2:
        return None
    fc = buf[1]
    if fc in (1, 2, 3, 4, 5, 6, 8):
        return 8
    if fc in (7, 11, 12, 17):
        return 4
    if fc in (15, 16):
        return None if len(buf) < 7 else 9 + buf[6]
    if fc == 23:
        return None if len(buf) < 11 else 13 + buf[10]
    return 0


def reply_length(buf: bytes) -> int | None:
    """Like :func:`request_length` for a reply (exception replies are 5 bytes)."""
    if len(buf) < 2:
        return None
    fc = buf[1]
    if fc & 0x80:
        return 5
    if fc in (1, 2, 3, 4, 12, 17, 23):
        return None if len(buf) < 3 else 5 + buf[2]
    if fc in (5, 6, 8, 11, 15, 16):
        return 8
    if fc == 7:
        return 5
    return 0


def frame_address(frame: bytes) -> int | str | None:
    """The device a request frame is for: a Modbus address (int), a DL/T 645 address (12-digit
    string, or the wildcard), or None when the frame does not say."""
    if is_dlt645_start(frame):
        code, address, _, _ = core_dlt645.parse(frame)
        return address if code == core_modbus.OK else None
    return frame[0] if frame else None


def is_exception(reply: bytes) -> bool:
    """An exception (Modbus) or abnormal (DL/T 645, control bit 6) reply."""
    if is_dlt645_start(reply):
        i = 0
        while i < len(reply) and reply[i] == 0xFE:
            i += 1
        return len(reply) > i + 8 and bool(reply[i + 8] & 0x40)
    return len(reply) > 1 and bool(reply[1] & 0x80)


class FrameSplitter:
    """Cut an RTU byte stream into frames by their structure (ptys and TCP have no
    inter-character timing to go by). Frames with a bad CRC are still returned: the wire
    counts them. :meth:`flush` drops a partial frame after the caller saw silence."""

    def __init__(self, replies: bool = False) -> None:
        self._length = reply_length if replies else request_length
        self._buf = b""

    @property
    def pending(self) -> bool:
        return bool(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        frames = []
        while self._buf:
            n = self._length(self._buf)
            if n == 0:
                n = next((k for k in range(4, len(self._buf) + 1) if crc_ok(self._buf[:k])), None)
            if n is None or n > len(self._buf):
                if len(self._buf) > MAX_RTU_FRAME:
                    self._buf = b""  # garbage that never became a frame
                break
            frames.append(self._buf[:n])
            self._buf = self._buf[n:]
        return frames

    def flush(self) -> int:
        """Discard a partial frame; returns how many bytes were dropped."""
        n, self._buf = len(self._buf), b""
        return n


@dataclass(frozen=True)
class LineTiming:
    """Character timing of an RS-485 line (8 data bits)."""

    baud: int = 9600
    parity: str = "N"
    stopbits: int = 1

    def __post_init__(self) -> None:
        if self.parity not in ("N", "E", "O"):
            raise ValueError("parity must be N, E or O")
        if self.stopbits not in (1, 2) or self.baud <= 0:
            raise ValueError("stopbits must be 1 or 2 and baud > 0")

    @property
    def bits_per_char(self) -> int:
        return 1 + 8 + (0 if self.parity == "N" else 1) + self.stopbits

    @property
    def char_time(self) -> Fraction:
        return Fraction(self.bits_per_char, self.baud)

    @property
    def gap(self) -> Fraction:
        """The 3.5-character silence that ends a frame."""
        return self.char_time * Fraction(7, 2)

    def frame_time(self, nbytes: int) -> Fraction:
        """Bus time of a frame of ``nbytes`` including its trailing gap (seconds)."""
        return nbytes * self.char_time + self.gap


@dataclass
class BusStats:
    """Counters of one bus since start (or the last reset).

    ``bytes`` and ``wire_time`` are those of the RS-485 line (RTU frames, also behind a Modbus
    TCP front end); ``link_bytes`` are the bytes the master's own link carried (MBAP for
    ``tcp``, the same as ``bytes`` for ``pty`` and ``rtu+tcp``)."""

    requests: int = 0  # request frames put on the line by the master
    replies: int = 0  # reply frames put on the line by meters
    bytes: int = 0  # bytes of those frames
    wire_time: Fraction = Fraction(0)  # seconds of bus time (see module doc)
    unanswered: int = 0  # requests that got no reply frame
    bad_requests: int = 0  # requests with a bad CRC (ignored by every meter)
    exceptions: int = 0  # exception replies
    corrupted: int = 0  # replies sent with a corrupted CRC
    late: int = 0  # replies delayed by a late-reply fault
    garbage_bytes: int = 0  # bytes dropped as partial frames or sent at wrong settings
    line_errors: int = 0  # frames from a master whose pty is set to other line settings
    link_bytes: int = 0  # bytes on the master's link, both directions
    collisions: int = 0  # replies superimposed with a twin's (two devices on one address)

    @property
    def frames(self) -> int:
        return self.requests + self.replies

    @property
    def wire_time_s(self) -> float:
        return float(self.wire_time)

    def as_dict(self) -> dict[str, int | float]:
        d: dict[str, int | float] = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["wire_time"] = self.wire_time_s
        d["frames"] = self.frames
        return d


Exchange = Callable[[bytes], Awaitable[bytes | None]]


def _ms(value: float) -> Fraction:
    return Fraction(repr(float(value))) / 1000


class Wire:
    """One bus: meters by address, a backend that answers RTU requests, timing and faults.

    ``exchange(request) -> reply | None`` is the backend (the pymodbus server); it is only
    called for requests a meter on this bus would answer. Must be used from one event loop.
    """

    def __init__(
        self,
        name: str,
        timing: LineTiming,
        meters: Mapping[int | str, SimMeter],
        exchange: Exchange,
        realtime: bool = False,
    ) -> None:
        self.name = name
        self.timing = timing
        self.meters = meters
        self.exchange = exchange
        self.realtime = realtime
        self.cut = False
        #: Second devices answering at an address already taken (Site.add_twin): both reply at
        #: once and the master receives the superimposed bytes.
        self.twins: dict[int, SimMeter] = {}
        self._stats = BusStats()
        self._stats_lock = threading.Lock()
        self._bus_lock: asyncio.Lock | None = None
        self._bus_free = 0.0  # loop time when the line is next idle (realtime pacing)

    def attach_loop(self) -> None:
        """Forget loop-bound state (call when serving from a new event loop)."""
        self._bus_lock = None
        self._bus_free = 0.0

    def stats(self) -> BusStats:
        """A consistent snapshot of the counters."""
        with self._stats_lock:
            return dataclasses.replace(self._stats)

    def reset_stats(self) -> None:
        with self._stats_lock:
            self._stats = BusStats()

    def count(self, **increments: int) -> None:
        """Add to counters (used by front ends for link bytes and garbage)."""
        with self._stats_lock:
            for key, n in increments.items():
                setattr(self._stats, key, getattr(self._stats, key) + n)

    async def transact(self, request: bytes) -> bytes | None:
        """Put ``request`` on the bus; returns the reply frame as the master would receive it
        (possibly corrupted), or None when nothing answers. Transactions are serialised: the
        bus is half-duplex."""
        if self._bus_lock is None:
            self._bus_lock = asyncio.Lock()
        async with self._bus_lock:
            return await self._transact(request)

    async def _transact(self, request: bytes) -> bytes | None:
        loop = asyncio.get_running_loop()
        start = max(loop.time(), self._bus_free)
        t_request = self.timing.frame_time(len(request))
        with self._stats_lock:
            s = self._stats
            s.requests += 1
            s.bytes += len(request)
            s.wire_time += t_request
        meter, reply = await self._answer(request)
        if meter is None or reply is None:
            self.count(unanswered=1)
            if self.realtime:
                self._bus_free = start + float(t_request)
                await asyncio.sleep(max(0.0, self._bus_free - loop.time()))
            return None
        extra = meter.faults.extra_delay_ms
        if meter.faults.rogue and not is_dlt645_start(request):
            rng = random.Random(f"{meter.faults.rogue_seed}:{self._stats.requests}")
            reply = rogue_reply(meter.faults.rogue, request, reply, rng)
        if meter.faults.corrupt_crc:
            reply = reply[:-2] + bytes(b ^ 0xFF for b in reply[-2:])
        t_reply = _ms(meter.latency_ms + extra) + self.timing.frame_time(len(reply))
        with self._stats_lock:
            s = self._stats
            s.replies += 1
            s.bytes += len(reply)
            s.wire_time += t_reply
            s.exceptions += is_exception(reply)
            s.corrupted += meter.faults.corrupt_crc
            s.late += bool(extra)
        if self.realtime:
            # the reply's last byte arrives one gap before the line is free again
            deliver_at = start + float(t_request + t_reply - self.timing.gap)
            self._bus_free = deliver_at + float(self.timing.gap)
            await asyncio.sleep(max(0.0, deliver_at - loop.time()))
        elif extra:
            await asyncio.sleep(extra / 1000)
        return reply

    async def _answer(self, request: bytes) -> tuple[SimMeter | None, bytes | None]:
        if is_dlt645_start(request):
            return self._answer_dlt645(request)
        if not crc_ok(request):
            self.count(bad_requests=1)
            return None, None
        meter = self.meters.get(request[0])
        if self.cut or meter is None or meter.faults.no_reply:
            return None, None  # also broadcast (address 0): meters never answer it
        reply = await self.exchange(request)
        twin = self.twins.get(request[0])
        if twin is not None and reply is not None:
            reply = superimpose(reply, twin_reply(twin, request))
            self.count(collisions=1)
        return meter, reply

    def _answer_dlt645(self, request: bytes) -> tuple[SimMeter | None, bytes | None]:
        """DL/T 645 frames are answered by the simulated DL/T 645 meters themselves (no
        pymodbus). A broadcast address read that two meters answer collides: garbage, no reply."""
        code, address, _, _ = core_dlt645.parse(request)
        if code != core_modbus.OK:
            self.count(bad_requests=1)
            return None, None
        if self.cut:
            return None, None
        if address == core_dlt645.WILDCARD:
            candidates = [m for m in self.meters.values() if hasattr(m, "answer") and not m.faults.no_reply]
        else:
            m = self.meters.get(address)
            candidates = [m] if m is not None and hasattr(m, "answer") and not m.faults.no_reply else []
        replies = [(m, m.answer(request)) for m in candidates]
        replies = [(m, r) for m, r in replies if r is not None]
        if len(replies) != 1:
            if len(replies) > 1:
                self.count(garbage_bytes=sum(len(r) for _, r in replies))
            return None, None
        return replies[0]


def twin_reply(device: SimMeter, request: bytes) -> bytes:
    """What a second device at the same address sends for a read request (function 3/4):
    its registers, or its exception; other functions: exception 1."""
    addr, fn = request[0], request[1]
    if fn not in (3, 4) or len(request) < 8:
        return core_modbus.frame(bytes([addr, fn | 0x80, 1]))
    start = (request[2] << 8) | request[3]
    count = (request[4] << 8) | request[5]
    regs = device.read(fn, start, count)
    if isinstance(regs, int):
        return core_modbus.frame(bytes([addr, fn | 0x80, regs]))
    body = bytes([addr, fn, 2 * count]) + b"".join(int(r).to_bytes(2, "big") for r in regs)
    return core_modbus.frame(body)


def superimpose(a: bytes, b: bytes) -> bytes:
    """Two RS-485 drivers talking at once: a wired-AND of their bytes (a 0 bit wins over the
    idle-high line); the longer reply's tail arrives alone. Identical replies stay intact,
    different ones fail the CRC, as on a real bus."""
    n = max(len(a), len(b))
    a, b = a.ljust(n, b"\xff"), b.ljust(n, b"\xff")
    return bytes(x & y for x, y in zip(a, b, strict=True))
