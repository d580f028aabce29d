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
