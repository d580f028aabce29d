"""Load profiles: the active power a pile draws over time, with an exact energy integral.

Time is integer milliseconds since the meter started (``t_ms >= 0``). Power is piecewise
constant with integer watts on integer-millisecond segments, so the energy integral
``energy_mj(t0, t1)`` (milli-joules = W·ms) is an exact integer and additive:
``energy_mj(a, b) + energy_mj(b, c) == energy_mj(a, c)``. Energy totals therefore never drift,
whatever the sampling pattern. Ramps are staircases of 1-second steps.

Every load says how many phases carry it (``phases_at``): 1 for a single-phase car, 3 for a
balanced three-phase charge; a meter maps that onto its own phases.
"""

from __future__ import annotations

import bisect
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

MJ_PER_WH = 3_600_000  # 1 Wh = 3600 J = 3.6e6 mJ


class Load(Protocol):
    """What a :class:`pilehil.meter.SimMeter` needs from a load profile."""

    def power_w(self, t_ms: int) -> int:
        """Total active power (W, >= 0) at ``t_ms``."""
        ...

    def phases_at(self, t_ms: int) -> int:
        """Phases carrying the load at ``t_ms``: 1 or 3."""
        ...

    def energy_mj(self, t0_ms: int, t1_ms: int) -> int:
        """Exact energy (W·ms) drawn during ``[t0_ms, t1_ms)``; 0 if ``t1_ms <= t0_ms``."""
        ...


class PiecewiseLoad:
    """Power as a list of segments ``[start_ms, next start)``, extended on demand.

    Subclasses append segments in :meth:`_extend`; a cumulative-energy table makes the
    integral O(log n). Thread-safe: the server thread and a test may ask at the same time."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._starts: list[int] = [0]
        self._powers: list[int] = [0]
        self._phases: list[int] = [1]
        self._cum: list[int] = [0]  # energy from 0 to each segment's start
        self._horizon = 0  # segments are final up to here (ms)

    def _append(self, start_ms: int, power_w: int, phases: int) -> None:
        if start_ms <= self._starts[-1]:
            if start_ms == self._starts[-1]:  # replaces an empty segment
                self._powers[-1], self._phases[-1] = power_w, phases
                return
            raise ValueError("segments must start in increasing order")
        self._cum.append(self._cum[-1] + self._powers[-1] * (start_ms - self._starts[-1]))
        self._starts.append(start_ms)
        self._powers.append(power_w)
        self._phases.append(phases)

    def _extend(self) -> None:
        """Append more segments and advance ``self._horizon``; the base class is idle forever."""
        self._horizon = 1 << 62

    def _index(self, t_ms: int) -> int:
        t_ms = max(t_ms, 0)
        with self._lock:
            while self._horizon <= t_ms:
                self._extend()
            return bisect.bisect_right(self._starts, t_ms) - 1

    def power_w(self, t_ms: int) -> int:
        with self._lock:
            return self._powers[self._index(t_ms)]

    def phases_at(self, t_ms: int) -> int:
        with self._lock:
            return self._phases[self._index(t_ms)]

    def energy_to(self, t_ms: int) -> int:
        """Energy (W·ms) from 0 to ``t_ms``."""
        t_ms = max(t_ms, 0)
        with self._lock:
            i = self._index(t_ms)
            return self._cum[i] + self._powers[i] * (t_ms - self._starts[i])

    def energy_mj(self, t0_ms: int, t1_ms: int) -> int:
        if t1_ms <= t0_ms:
            return 0
        return self.energy_to(t1_ms) - self.energy_to(t0_ms)


class ConstantLoad(PiecewiseLoad):
    """A constant draw of ``power_w`` watts on ``phases`` phases, forever."""

    def __init__(self, power_w: int, phases: int = 3) -> None:
        super().__init__()
        if power_w < 0 or int(power_w) != power_w:
            raise ValueError("power_w must be a non-negative integer")
        if phases not in (1, 3):
            raise ValueError("phases must be 1 or 3")
        self._powers[0] = int(power_w)
        self._phases[0] = phases
        self._horizon = 1 << 62

    def __repr__(self) -> str:
        return f"ConstantLoad({self._powers[0]}, phases={self._phases[0]})"


class SwitchedLoad:
    """A load behind a switch: ``base`` while on, 0 W while off (a pile's contactor, opened by
    an interlock relay or enable coil, or a test load the installer plugs in and out).

    Switching is recorded in the load's own milliseconds, ``round((clock() - t0) * 1000)``
    with ``t0`` the clock when the load was created: create it together with the meter it
    feeds (same clock, same instant) so both count time alike. The energy integral stays
    exact and additive: it is ``base``'s integral over the on-intervals."""

    def __init__(self, base: Load, clock: Callable[[], float], on: bool = True) -> None:
        self.base = base
        self.clock = clock
        self._t0 = clock()
        self._lock = threading.Lock()
        self._changes: list[tuple[int, bool]] = [(0, on)]  # (t_ms, on) in time order

    def __repr__(self) -> str:
        return f"SwitchedLoad({self.base!r}, on={self.on})"

    @property
    def on(self) -> bool:
        with self._lock:
            return self._changes[-1][1]

    def set(self, on: bool) -> None:
        """Close (``True``) or open the switch now."""
        t = max(0, round((self.clock() - self._t0) * 1000))
        with self._lock:
            if self._changes[-1][1] == bool(on):
                return
            if t < self._changes[-1][0]:
                raise ValueError("the clock went backwards")
            self._changes.append((t, bool(on)))

    def _on_at(self, t_ms: int) -> bool:
        with self._lock:
            i = bisect.bisect_right([c[0] for c in self._changes], t_ms) - 1
            return self._changes[max(i, 0)][1]

    def power_w(self, t_ms: int) -> int:
        return self.base.power_w(t_ms) if self._on_at(t_ms) else 0

    def phases_at(self, t_ms: int) -> int:
        return self.base.phases_at(t_ms)

    def energy_mj(self, t0_ms: int, t1_ms: int) -> int:
        if t1_ms <= t0_ms:
            return 0
        with self._lock:
            changes = list(self._changes)
        total = 0
        for k, (start, on) in enumerate(changes):
            end = changes[k + 1][0] if k + 1 < len(changes) else t1_ms
            a, b = max(start, t0_ms), min(end, t1_ms)
            if on and b > a:
                total += self.base.energy_mj(a, b)
        return total


def idle() -> ConstantLoad:
    """No load: 0 W forever."""
    return ConstantLoad(0)


@dataclass(frozen=True)
class Session:
    """One charging session of :class:`EvSessions` (times in ms since meter start)."""

    plug_ms: int  # ramp-up starts
    unplug_ms: int  # ramp-down finished, power back to 0
    power_w: int  # plateau power before jitter
    phases: int
    energy_mj: int  # exact energy of the whole session


#: Charging options (power W, phases) by meter phase count.
DEFAULT_OPTIONS = {
    1: ((3700, 1), (7000, 1)),
    3: ((7000, 1), (11000, 3), (22000, 3)),
}


class EvSessions(PiecewiseLoad):
    """Deterministic, seeded EV charging sessions separated by idle gaps.

    Each cycle: idle for a random time in ``idle_s``; a car plugs in and the power ramps up in
    1-second steps over ``ramp_up_s``; it charges at a power drawn from ``options`` (each
    minute varied by up to ``jitter`` relative, as a car's charger does) for a random time in
    ``session_s``; the power ramps down over ``ramp_down_s``; the car leaves. The same seed and
    parameters always give the same sessions (``random.Random(seed)``)."""

    def __init__(
        self,
        seed: int = 0,
        phases: int = 3,
        options: tuple[tuple[int, int], ...] | None = None,
        idle_s: tuple[int, int] = (600, 3600),
        session_s: tuple[int, int] = (1200, 7200),
        ramp_up_s: int = 30,
        ramp_down_s: int = 5,
        jitter: float = 0.01,
    ) -> None:
        super().__init__()
        self.seed = seed
        self.options = tuple(options or DEFAULT_OPTIONS[3 if phases == 3 else 1])
        self.idle_s = idle_s
        self.session_s = session_s
        self.ramp_up_s = max(int(ramp_up_s), 1)
        self.ramp_down_s = max(int(ramp_down_s), 1)
        self.jitter = jitter
        self.sessions: list[Session] = []
        self._rng = random.Random(seed)
        self._t = 0

    def __repr__(self) -> str:
        return f"EvSessions(seed={self.seed}, options={self.options})"

    def _extend(self) -> None:
        """Generate one idle gap and one session."""
        rng = self._rng
        t = self._t
        self._append(t, 0, 1)
        t += 1000 * rng.randint(*self.idle_s)
        power, phases = rng.choice(self.options)
        plug = t
        e0 = self.energy_to_known(t)
        for k in range(1, self.ramp_up_s + 1):
            self._append(t, power * k // self.ramp_up_s, phases)
            t += 1000
        plateau_end = t + 1000 * rng.randint(*self.session_s)
        while t < plateau_end:
            wobble = 1.0 + rng.uniform(-self.jitter, self.jitter)
            self._append(t, round(power * wobble), phases)
            t = min(t + 60_000, plateau_end)
        for k in range(self.ramp_down_s - 1, 0, -1):
            self._append(t, power * k // self.ramp_down_s, phases)
            t += 1000
        self._append(t, 0, 1)
        self._t = t
        self._horizon = t
        self.sessions.append(Session(plug, t, power, phases, self.energy_to_known(t) - e0))

    def energy_to_known(self, t_ms: int) -> int:
        """Energy to ``t_ms`` using only segments already generated (no extension)."""
        i = bisect.bisect_right(self._starts, t_ms) - 1
        return self._cum[i] + self._powers[i] * (t_ms - self._starts[i])

    def sessions_until(self, t_ms: int) -> list[Session]:
        """Sessions that started before ``t_ms`` (generates as needed)."""
        with self._lock:
            self._index(t_ms)
            return [s for s in self.sessions if s.plug_ms < t_ms]


def parse_load(text: str, seed: int = 0, phases: int = 3) -> Load:
    """Load from a CLI word: ``idle``, ``constant:W`` (or ``constant:W:1`` for one phase),
    ``ev`` or ``ev:SEED`` (seed added to ``seed``)."""
    kind, _, rest = text.partition(":")
    if kind == "idle" and not rest:
        return idle()
    if kind == "constant" and rest:
        watts, _, ph = rest.partition(":")
        return ConstantLoad(int(watts), int(ph) if ph else phases)
    if kind == "ev":
        return EvSessions(seed=seed + (int(rest) if rest else 0), phases=phases)
    raise ValueError(f"unknown load {text!r}: use idle, constant:W[:PHASES] or ev[:SEED]")
