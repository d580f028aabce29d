"""Simulated bay devices: presence sensors and pile controllers on the RS-485 bus, the board's
digital inputs and the cameras' plate reads, each a pure function of its bay's vehicles
(:mod:`pilehil.bays`) and the clock. Sensor geometry and determinism: see :mod:`pilehil.bays`.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .bays import BaySim, Vehicle, _now
from .clock import ScaledClock
from .device import BusDevice, MeterFaults
from .registers import bytes_to_words

_TYPE_RANGE = {
    "u16": (0, 0xFFFF, 1),
    "s16": (-0x8000, 0x7FFF, 1),
    "u32": (0, 0xFFFFFFFF, 2),
    "s32": (-0x80000000, 0x7FFFFFFF, 2),
}


class SimSensor(BusDevice):
    """A presence sensor of ``profile`` (profiles/sensors/*.toml) at ``address``, watching
    ``bay`` (None: an empty bay forever).

    Distance sensors (``measures = "distance"``) serve ``round(mm / scale)`` in the profile's
    register, type and word order, clamped to the type's range (a real sensor saturates);
    presence sensors serve the first of ``present_values`` while a vehicle is there and a value
    outside them otherwise. Geometry (``mount``, ``empty_mm``) is in the module docstring;
    ``inset_s`` makes the sensor see a vehicle that much later and lose it that much earlier
    (a second sensor at the back of the bay). The sensor measures every ``period_ms``; noise
    and spikes are drawn per period from ``seed``.

    Faults: :meth:`set_noise` (jitter, spikes), :meth:`freeze` (stuck), :meth:`force_mm` /
    :meth:`force_raw` (fixed readings, e.g. out of range), :meth:`out_of_range`, and the wire
    faults of :class:`BusDevice` (no reply, late reply, bad CRC, exception codes).
    """

    def __init__(
        self,
        profile: Mapping[str, Any],
        address: int,
        bay: BaySim | None = None,
        clock: Callable[[], float] | None = None,
        *,
        mount: str = "ground",
        empty_mm: int = 2800,
        inset_s: float = 0,
        period_ms: int = 100,
        seed: int = 0,
        latency_ms: float | None = None,
    ) -> None:
        if mount not in ("ground", "ceiling"):
            raise ValueError("mount must be 'ground' or 'ceiling'")
        if clock is None and bay is not None:
            clock = bay.clock
        super().__init__(address, clock, profile.get("response_ms", 10) if latency_ms is None else latency_ms)
        self.profile = profile
        self.bay = bay
        self.mount = mount
        self.empty_mm = int(empty_mm)
        self.inset_s = inset_s
        self.period_ms = max(1, int(period_ms))
        self.seed = seed
        self.function = int(profile["function"])
        self.register = int(profile["register"])
        self.type = profile["type"]
        self.lo, self.hi, self.width = _TYPE_RANGE[self.type]
        self.distance = profile["measures"] == "distance"
        self.scale = float(profile.get("scale", 1.0))
        pv = list(profile.get("present_values") or [1])
        self.present_value = int(pv[0])
        self.absent_value = next(v for v in range(0, 0x10000) if v not in pv)
        self.jitter_mm = 0
        self.spike_prob = 0.0
        self.spike_mm: tuple[int, int] | None = None
        self._forced: int | None = None  # raw
        self._frozen: int | None = None  # raw
        self._t0 = bay.t0 if bay is not None else self.clock()
        self._mapped = frozenset((self.function, self.register + i) for i in range(self.width))

    def __repr__(self) -> str:
        return f"SimSensor({self.profile.get('id', '?')!r}, address={self.address})"

    @property
    def mapped(self) -> frozenset[tuple[int, int]]:
        return self._mapped

    # ---- truth -------------------------------------------------------------------------

    def vehicle(self, t: float | None = None) -> Vehicle | None:
        if self.bay is None:
            return None
        return self.bay.vehicle_at(t, self.inset_s)

    def true_mm(self, t: float | None = None) -> int:
        """The distance the geometry gives now (or at clock time ``t``), without faults."""
        v = self.vehicle(t)
        if v is None:
            return self.empty_mm
        if self.mount == "ground":
            return v.clearance_mm
        return max(0, self.empty_mm - v.height_mm)

    def _rng(self, t: float) -> random.Random:
        k = int((t - self._t0) * 1000) // self.period_ms
        return random.Random(f"{self.seed}:{self.address}:{k}")

    def reading_mm(self, t: float | None = None) -> int:
        """What a healthy distance sensor measures now: the truth with noise and spikes."""
        t = _now(self.clock, t)
        mm = self.true_mm(t)
        if self.jitter_mm or self.spike_prob:
            rng = self._rng(t)
            if self.spike_prob and rng.random() < self.spike_prob:
                lo, hi = self.spike_mm or (
                    int(self.profile.get("min_mm", 0)),
                    int(self.profile.get("max_mm", self.empty_mm)),
                )
                return rng.randint(lo, hi)
            if self.jitter_mm:
                mm += rng.randint(-self.jitter_mm, self.jitter_mm)
        return max(0, mm)

    def raw(self, t: float | None = None) -> int:
        """The register value served now (faults included)."""
        if self._forced is not None:
            return self._forced
        if self._frozen is not None:
            return self._frozen
        return self._live_raw(t)

    def _live_raw(self, t: float | None) -> int:
        t = _now(self.clock, t)
        if self.distance:
            return self._raw_of_mm(self.reading_mm(t))
        present = self.vehicle(t) is not None
        if self.spike_prob and self._rng(t).random() < self.spike_prob:
            present = not present
        return self.present_value if present else self.absent_value

    def _raw_of_mm(self, mm: float) -> int:
        return min(self.hi, max(self.lo, round(mm / self.scale)))

    def value(self, t: float | None = None) -> int | float:
        """The served value in its unit: mm for distance sensors (raw * scale), raw otherwise."""
        raw = self.raw(t)
        return raw * self.scale if self.distance else raw

    def image(self, t: float | None = None) -> dict[tuple[int, int], int]:
        raw = self.raw(t)
        data = raw.to_bytes(2 * self.width, "big", signed=self.lo < 0)
        words = bytes_to_words(data, self.profile.get("byte_order", "big"), self.profile.get("word_order", "big"))
        return {(self.function, self.register + i): w for i, w in enumerate(words)}

    def _serve(self, function: int, address: int, count: int) -> list[int] | int:
        image = self.image()
        return [image.get((function, r), 0) for r in range(address, address + count)]

    # ---- faults ------------------------------------------------------------------------

    def set_noise(self, jitter_mm: int = 0, spike_prob: float = 0.0, spike_mm: tuple[int, int] | None = None) -> None:
        """Each measurement is off by up to +-``jitter_mm`` (uniform); with probability
        ``spike_prob`` it is a stray reading anywhere in ``spike_mm`` (default: the profile's
        min_mm..max_mm). Presence sensors flip their value on a spike. 0 turns noise off."""
        if jitter_mm < 0 or not 0.0 <= spike_prob <= 1.0:
            raise ValueError("jitter_mm >= 0 and 0 <= spike_prob <= 1")
        self.jitter_mm = int(jitter_mm)
        self.spike_prob = spike_prob
        self.spike_mm = spike_mm

    def freeze(self, on: bool = True) -> None:
        """Stuck sensor: it keeps serving the value of this instant."""
        self._frozen = self._live_raw(None) if on else None

    @property
    def frozen(self) -> bool:
        return self._frozen is not None

    def force_raw(self, raw: int | None) -> None:
        """Serve this register value whatever happens (None: back to measuring)."""
        self._forced = None if raw is None else min(self.hi, max(self.lo, int(raw)))

    def force_mm(self, mm: float | None) -> None:
        """Serve this distance (converted with the profile's scale) whatever happens."""
        self.force_raw(None if mm is None else self._raw_of_mm(mm))

    def out_of_range(self, side: str | None = "high") -> None:
        """A reading outside the profile's ``[min_mm, max_mm]``: ``"high"`` (no echo: max_mm
        plus 10 %, at least +1 raw step), ``"low"`` (covered or dirty: 0), None to clear."""
        if side is None:
            self.force_raw(None)
        elif side == "high":
            hi = int(self.profile.get("max_mm", self.empty_mm))
            self.force_raw(max(self._raw_of_mm(hi * 1.1), self._raw_of_mm(hi) + 1))
        elif side == "low":
            self.force_raw(0)
        else:
            raise ValueError("side must be 'high', 'low' or None")

    def clear_faults(self) -> None:
        """Wire faults, exceptions, freezing and forced readings off (noise settings stay)."""
        self.faults = MeterFaults()
        self._frozen = None
        self._forced = None


class SimPileController(BusDevice):
    """A pile controller at ``address`` exposing the plug state of one or more connectors
    (``add_connector``), each tied to a bay.

    Register connectors (function 3 or 4) serve, per the bay's vehicle: ``idle`` when nothing
    is plugged (0, or the smallest value not in ``plugged_values`` when 0 is one of them),
    ``plugged_values[0]`` when plugged, and ``plugged_values[1]`` (if given) while the vehicle
    charges: so ``plugged_values = [1, 2]`` gives 0 idle / 1 plugged / 2 charging. Bit
    connectors (function 1 or 2) serve 1 when plugged (0 when ``plugged_values`` is ``[0]``).
    Other registers within reach read 0. :meth:`force` pins a connector's value (stuck)."""

    def __init__(self, address: int, clock: Callable[[], float] | None = None, *, latency_ms: float = 20.0) -> None:
        super().__init__(address, clock, latency_ms)
        self._connectors: dict[tuple[int, int], tuple[BaySim, tuple[int, ...]]] = {}
        self._forced: dict[tuple[int, int], int] = {}
        self.enable: dict[int, bool] = {}  # enable coils (the gateway's interlock)
        self.enable_log: list[tuple[float, int, bool]] = []
        self.switches: dict[int, Any] = {}  # coil -> what it switches (SwitchedLoad)

    def __repr__(self) -> str:
        return f"SimPileController(address={self.address}, connectors={sorted(self._connectors)})"

    def add_connector(
        self, bay: BaySim, function: int = 3, register: int = 0, plugged_values: Iterable[int] = (1,)
    ) -> None:
        if function not in (1, 2, 3, 4):
            raise ValueError("function must be 1, 2, 3 or 4")
        values = tuple(int(v) for v in plugged_values)
        if not values:
            raise ValueError("plugged_values must not be empty")
        key = (function, register)
        if key in self._connectors:
            raise ValueError(
                f"controller {self.address}: function {function} register "
                f"{register} already serves bay {self._connectors[key][0].bay_id}"
            )
        self._connectors[key] = (bay, values)

    def add_enable_coil(self, coil: int, on: bool = True, switch: Any = None) -> None:
        """A coil the gateway writes (function 5) to enable or disable charging: the
        interlock of `interlock = "relay"` piles with a `coil`. ``switch`` (e.g. a
        :class:`pilehil.load.SwitchedLoad` feeding the pile's meter) follows the coil:
        ``switch.set(on)`` on every write, so an opened interlock really stops the load."""
        self.enable[coil] = on
        if switch is not None:
            self.switches[coil] = switch
            switch.set(on)

    @property
    def mapped(self) -> frozenset[tuple[int, int]]:
        return frozenset(self._connectors) | frozenset((1, c) for c in self.enable)

    def write(self, function: int, address: int, values: list[Any]) -> int | None:
        """Function 5/15 on an enable coil; anything else: exception 2 (illegal address)."""
        if function not in (5, 15) or any(address + i not in self.enable for i in range(len(values))):
            return 2
        for i, v in enumerate(values):
            self.enable[address + i] = bool(v)
            self.enable_log.append((self.clock(), address + i, bool(v)))
            if address + i in self.switches:
                self.switches[address + i].set(bool(v))
        return None

    def value(self, function: int, register: int, t: float | None = None) -> int:
        """The value of a connector at clock time ``t`` (None = now)."""
        key = (function, register)
        if key in self._forced:
            return self._forced[key]
        bay, values = self._connectors[key]
        t = _now(self.clock, t)
        plugged = bay.plugged(t)
        if function in (1, 2):
            on = 1 if values != (0,) else 0
            return on if plugged else 1 - on
        if not plugged:
            return next(v for v in range(0, 0x10000) if v not in values)
        if len(values) > 1 and bay.charging(t):
            return values[1]
        return values[0]

    def force(self, function: int, register: int, value: int | None) -> None:
        """Pin a connector's value (a stuck controller); None releases it."""
        if (function, register) not in self._connectors:
            raise KeyError(f"no connector at function {function} register {register}")
        if value is None:
            self._forced.pop((function, register), None)
        else:
            self._forced[(function, register)] = int(value)

    def _serve(self, function: int, address: int, count: int) -> list[int] | int:
        t = self.clock()
        out = []
        for r in range(address, address + count):
            if (function, r) in self._connectors:
                out.append(self.value(function, r, t))
            elif function == 1 and r in self.enable:
                out.append(int(self.enable[r]))
            else:
                out.append(0)
        return out

    def clear_faults(self) -> None:
        self.faults = MeterFaults()
        self._forced.clear()


# --------------------------------------------------------------------------------- inputs


class FakeInputs:
    """The board's digital inputs, by name: the interface the gateway's GPIO reader implements.

    ``read(name) -> 0 | 1`` is the electrical level of the input (after the board's pull
    resistor), **not** its meaning: the port applies the bay's ``active = "high" | "low"``.
    An unknown name raises KeyError. Here a level is, in order of precedence: one pinned with
    :meth:`set` (a stuck input or a test's hand), the level of a bound signal (:meth:`bind`),
    or ``default`` (1: the boards pull their inputs up).
    """

    def __init__(self, clock: Callable[[], float] | None = None, names: Iterable[str] = (), default: int = 1) -> None:
        self.clock = clock if clock is not None else ScaledClock()
        self.default = 1 if default else 0
        self._names: set[str] = set(names)
        self._bound: dict[str, tuple[Callable[[float], bool], str]] = {}
        self._pinned: dict[str, int] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._names)

    def read(self, name: str) -> int:
        """The level of input ``name`` now: 0 or 1."""
        with self._lock:
            if name not in self._names:
                raise KeyError(f"no input {name!r}")
            if name in self._pinned:
                return self._pinned[name]
            bound = self._bound.get(name)
        if bound is None:
            return self.default
        signal, active = bound
        on = bool(signal(self.clock()))
        return int(on) if active == "high" else int(not on)

    def bind(self, name: str, signal: Callable[[float], bool], active: str = "high") -> None:
        """Input ``name`` follows ``signal(clock time) -> bool``: level 1 while it is true with
        ``active="high"``, level 0 while it is true with ``active="low"``."""
        if active not in ("high", "low"):
            raise ValueError("active must be 'high' or 'low'")
        with self._lock:
            if name in self._bound:
                raise ValueError(f"input {name!r} is already wired")
            self._names.add(name)
            self._bound[name] = (signal, active)

    def set(self, name: str, level: int) -> None:
        """Pin input ``name`` at ``level`` (0/1) until :meth:`release`."""
        with self._lock:
            self._names.add(name)
            self._pinned[name] = 1 if level else 0

    def release(self, name: str) -> None:
        with self._lock:
            self._pinned.pop(name, None)


# --------------------------------------------------------------------------------- plates


class PlateFeed:
    """Plate reads of the site's cameras as the dicts plate readers publish:
    ``{"camera", "plate", "colour", "t"}`` (``t``: whole clock seconds).

    :meth:`poll` returns, in time order, the reads that became due since the previous poll
    (up to clock time ``now``) and hands each to the listeners; publishing them to MQTT is the
    caller's job. :meth:`inject` adds a read of your own (a misread, a camera glitch)."""

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self.clock = clock if clock is not None else ScaledClock()
        self._bays: list[BaySim] = []
        self._injected: list[dict[str, Any]] = []
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        self._last: float | None = None
        self._lock = threading.Lock()

    def add_bay(self, bay: BaySim) -> None:
        """Feed the reads of ``bay``'s camera (a bay without a camera gives none)."""
        self._bays.append(bay)

    def add_listener(self, fn: Callable[[dict[str, Any]], None]) -> None:
        self._listeners.append(fn)

    def inject(self, camera: str, plate: str, colour: str, t: float | None = None) -> dict[str, Any]:
        read = {"camera": camera, "plate": plate, "colour": colour, "t": int(_now(self.clock, t))}
        with self._lock:
            self._injected.append(read)
        return read

    def reads(self, t_from: float, t_to: float) -> list[dict[str, Any]]:
        """Every read in ``(t_from, t_to]`` (clock seconds), in time order, without consuming."""
        out = [r for bay in self._bays for r in bay.plate_reads(t_from, t_to)]
        with self._lock:
            out += [r for r in self._injected if t_from < r["t"] <= t_to]
        out.sort(key=lambda r: (r["t"], r["camera"]))
        return out

    def poll(self, now: float | None = None) -> list[dict[str, Any]]:
        """Reads that became due since the last poll (the first poll starts at the earliest
        bay origin); each also goes to every listener."""
        now = _now(self.clock, now)
        with self._lock:
            start = self._last
            if start is None:
                start = min([b.t0 for b in self._bays] + [now]) - 1
            if now <= start:
                return []
            self._last = now
        out = self.reads(start, now)
        for read in out:
            for fn in self._listeners:
                fn(read)
        return out
