"""Clocks for the simulated site: a callable returning seconds (float).

Simulated meters never read the system clock themselves; a site is given one clock and every
meter's values are a function of it. Tests use :class:`ManualClock` and move time by hand;
the CLI uses :class:`ScaledClock` to run a site faster than real time.
"""

from __future__ import annotations

import threading
import time


class ManualClock:
    """A clock that only moves when told to. Thread-safe; starts at ``start`` seconds."""

    def __init__(self, start: float = 0.0) -> None:
        self._t = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._t

    def advance(self, seconds: float) -> float:
        """Move forward by ``seconds`` (>= 0); returns the new time."""
        if seconds < 0:
            raise ValueError("a ManualClock only moves forward")
        with self._lock:
            self._t += seconds
            return self._t

    def set(self, t: float) -> None:
        """Jump to ``t`` (not earlier than now)."""
        with self._lock:
            if t < self._t:
                raise ValueError("a ManualClock only moves forward")
            self._t = t


class ScaledClock:
    """Real (monotonic) time since creation times ``speed``, plus ``start`` seconds."""

    def __init__(self, speed: float = 1.0, start: float = 0.0) -> None:
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.speed = speed
        self.start = start
        self._t0 = time.monotonic()

    def __call__(self) -> float:
        return self.start + (time.monotonic() - self._t0) * self.speed


ENV_VAR = "PILEGATE_HIL_CLOCK"


class SiteClock:
    """Site time shared by processes: ``start + (CLOCK_MONOTONIC - t0) * speed`` seconds.

    The HIL rig runs the simulated site, the gateway under test and the runner on one clock
    without any message passing: CLOCK_MONOTONIC is one clock for every process of a host, so
    each process given the same (start, speed, t0) computes the same site time.  ``env()`` is the
    form handed to a gateway process in ``PILEGATE_HIL_CLOCK`` ("start=..,speed=..,t0=..";
    docs/hil.md); ``mono()`` is the accelerated monotonic time for schedulers (seconds).
    """

    def __init__(self, start: float, speed: float = 1.0, t0: float | None = None) -> None:
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.start = float(start)
        self.speed = float(speed)
        self.t0 = time.monotonic() if t0 is None else float(t0)

    def __call__(self) -> float:
        return self.start + (time.monotonic() - self.t0) * self.speed

    def mono(self) -> float:
        """Accelerated monotonic seconds (0 at t0)."""
        return (time.monotonic() - self.t0) * self.speed

    def real_at(self, site_t: float) -> float:
        """The CLOCK_MONOTONIC instant at which site time reaches ``site_t``."""
        return self.t0 + (site_t - self.start) / self.speed

    def env(self) -> str:
        return f"start={self.start!r},speed={self.speed!r},t0={self.t0!r}"

    @classmethod
    def parse(cls, text: str) -> SiteClock:
        """The inverse of env(); ValueError naming what is wrong."""
        fields: dict[str, float] = {}
        for part in text.split(","):
            key, sep, value = part.partition("=")
            if not sep or key.strip() not in ("start", "speed", "t0"):
                raise ValueError(f"{ENV_VAR}: {part!r} is not start=, speed= or t0=")
            fields[key.strip()] = float(value)
        missing = {"start", "speed", "t0"} - set(fields)
        if missing:
            raise ValueError(f"{ENV_VAR}: missing {', '.join(sorted(missing))}")
        return cls(fields["start"], fields["speed"], fields["t0"])
