"""What every simulated bus device shares: an address, a reply latency, and one fault API.

:class:`BusDevice` is the base of the simulated meters (:mod:`pilehil.meter`), presence sensors
and pile controllers (:mod:`pilehil.baydevices`). Its faults live in :class:`MeterFaults`: the
datastore side (injected exception codes) is applied by :meth:`BusDevice.read`, the wire side
(no reply, late reply, corrupted CRC) by :mod:`pilehil.wire`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .clock import ScaledClock

#: Modbus exception codes a fault may return (the ones pymodbus 3.16 can send).
EXCEPTION_CODES = (1, 2, 3, 4, 5, 6, 7, 8, 10, 11)


@dataclass(frozen=True)
class ExceptionFault:
    """Answer exception ``code`` to reads touching registers ``start..end`` (inclusive; None =
    unbounded) with ``function`` (None = 3 and 4)."""

    code: int
    start: int | None = None
    end: int | None = None
    function: int | None = None

    def matches(self, function: int, address: int, count: int) -> bool:
        if self.function is not None and self.function != function:
            return False
        lo = 0 if self.start is None else self.start
        hi = 0xFFFF if self.end is None else self.end
        return address <= hi and address + count - 1 >= lo


@dataclass
class MeterFaults:
    """Run-time faults of one meter; all off by default. Read by the server thread, written by
    tests through the :class:`BusDevice` methods."""

    no_reply: bool = False  # the meter ignores every request
    extra_delay_ms: int = 0  # every reply leaves this much later (real time)
    corrupt_crc: bool = False  # replies go out with both CRC bytes inverted
    exceptions: list[ExceptionFault] = field(default_factory=list)
    block_limit: int | None = None  # reads of more registers get block_limit_code
    block_limit_code: int = 2
    frozen: bool = False  # registers stop updating
    rogue: str | None = None  # Modbus replies rewritten as one malformed kind (wire.ROGUE_KINDS)
    rogue_seed: int = 0

    def active(self) -> list[str]:
        """Names of the faults that are on (for logs and reports)."""
        out = [n for n in ("no_reply", "corrupt_crc", "frozen") if getattr(self, n)]
        if self.rogue:
            out.append(f"rogue:{self.rogue}")
        if self.extra_delay_ms:
            out.append(f"late+{self.extra_delay_ms}ms")
        out += [f"exception{e.code}" for e in self.exceptions]
        if self.block_limit is not None:
            out.append(f"block>{self.block_limit}:exc{self.block_limit_code}")
        return out


def _check_code(code: int) -> int:
    if code not in EXCEPTION_CODES:
        raise ValueError(f"exception code {code} not one of {EXCEPTION_CODES}")
    return code


class BusDevice:
    """What the simulated bus needs from any device on it (meters, sensors, pile controllers): an
    ``address``, a reply ``latency_ms`` for the timing model, wire faults (``faults.no_reply``,
    ``extra_delay_ms``, ``corrupt_crc``), ``mapped`` (function, register-or-bit) pairs and
    ``read``. Injected exception codes answer reads before anything else; a subclass serves the
    rest in ``_serve``. The fault methods below are the one fault API of every device."""

    def __init__(self, address: int, clock: Callable[[], float] | None, latency_ms: float) -> None:
        self._check_address(address)
        self.address = address
        self.clock = clock if clock is not None else ScaledClock()
        self.latency_ms = float(latency_ms)
        self.faults = MeterFaults()

    def _check_address(self, address: object) -> None:
        """Modbus: 1..247 (a DL/T 645 meter, pilehil.dlt645.SimDltMeter, overrides this)."""
        if not isinstance(address, int) or not 1 <= address <= 247:
            raise ValueError(f"device address {address} outside 1..247")

    @property
    def mapped(self) -> frozenset[tuple[int, int]]:
        raise NotImplementedError

    def read(self, function: int, address: int, count: int) -> list[int] | int:
        for exc in list(self.faults.exceptions):
            if exc.matches(function, address, count):
                return exc.code
        return self._serve(function, address, count)

    def _serve(self, function: int, address: int, count: int) -> list[int] | int:
        raise NotImplementedError

    def set_no_reply(self, on: bool = True) -> None:
        """The device stops (or resumes) answering: masters time out."""
        self.faults.no_reply = on

    def set_late_reply(self, extra_ms: int) -> None:
        """Every reply leaves ``extra_ms`` real milliseconds late (0 clears)."""
        self.faults.extra_delay_ms = max(0, int(extra_ms))

    def set_corrupt_crc(self, on: bool = True) -> None:
        """Replies go out with a wrong CRC (both bytes inverted)."""
        self.faults.corrupt_crc = on

    def set_rogue(self, kind: str | None, seed: int = 0) -> None:
        """Every Modbus reply goes out rewritten as one malformed kind, with a valid CRC (a rogue
        or confused responder at this address): one of ``wire.ROGUE_KINDS``; None clears.
        ``seed`` makes the random kinds repeatable."""
        from .wire import ROGUE_KINDS

        if kind is not None and kind not in ROGUE_KINDS:
            raise ValueError(f"rogue kind {kind!r} not one of {ROGUE_KINDS}")
        self.faults.rogue_seed = seed
        self.faults.rogue = kind

    def add_exception(
        self, code: int, start: int | None = None, end: int | None = None, function: int | None = None
    ) -> ExceptionFault:
        """Reads touching ``start..end`` (None = all) with ``function`` get exception ``code``."""
        fault = ExceptionFault(_check_code(code), start, end, function)
        self.faults.exceptions = [*self.faults.exceptions, fault]
        return fault

    def clear_exceptions(self) -> None:
        self.faults.exceptions = []
