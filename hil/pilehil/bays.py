"""Simulated parking bays: vehicles and their scenarios, on the site's clock (docs/simulator.md,
"Bay simulator"). The devices that watch a bay (sensors, pile controllers, inputs, cameras) are
in :mod:`pilehil.baydevices`.

A :class:`BaySim` is one bay in front of one pile. It holds a timeline of :class:`Vehicle` s
(added by hand or drawn lazily from a seeded :class:`Scenario`) and derives everything else
from it as a pure function of the clock:

* the pile meter's load (:class:`VehicleLoad`: exact energy integral, like the other loads),
* what each :class:`SimSensor` on the RS-485 bus reads (distance in mm, or a presence value),
* the plug state a :class:`SimPileController` serves in its connector register,
* the level of the board inputs in :class:`FakeInputs` (presence loops, contactor contacts),
* the plate reads of the bay's camera (:class:`PlateFeed`),
* and the truth a test compares the gateway with (:meth:`BaySim.truth`).

Time: a bay's *scenario time* is whole seconds since its origin ``t0`` (the clock reading when
the bay was created, or its pile meter's creation time, so that vehicle times and meter time
agree to the millisecond). :class:`Vehicle` times are scenario seconds; methods that take a
time ``t`` take the clock's own seconds (``None`` = now); truth records and plate reads carry
clock seconds.

Sensor geometry (what the numbers mean):

* ``mount="ground"`` (the default, matching pilecore.bays' default thresholds of 800/1200 mm):
  the sensor sits in the bay floor looking up. An empty bay reads ``empty_mm`` (the ceiling of a
  covered car park, 2800 mm by default); a vehicle reads its underbody clearance
  (``Vehicle.clearance_mm``, 130-260 mm in the scenario).
* ``mount="ceiling"``: the sensor hangs ``empty_mm`` above the floor looking down. An empty bay
  reads ``empty_mm``; a vehicle reads ``empty_mm - Vehicle.height_mm`` (e.g. 2500 - 1500 =
  1000 mm), which needs site thresholds (``occupied_below_mm``/``vacant_above_mm``).

Everything is deterministic for a given seed: noise comes from ``random.Random`` seeded with
the sensor's seed and the index of the sensor's measurement period, so it does not depend on
how often or from which thread the sensor is read.
"""

from __future__ import annotations

import bisect
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pilecore import bays as core_bays

from .clock import ScaledClock
from .load import DEFAULT_OPTIONS, MJ_PER_WH, PiecewiseLoad

#: Seconds of the 1-s staircase at the start and the end of a charge (as EvSessions).
RAMP_UP_S = 30
RAMP_DOWN_S = 5
#: Shortest charge a Vehicle may have (the two ramps and some plateau).
MIN_CHARGE_S = 60
_FOREVER_MS = 1 << 62
_PLATE_CHARS = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"


def _now(clock: Callable[[], float], t: float | None) -> float:
    return clock() if t is None else t


def _clock_number(x: float) -> int | float:
    """Clock seconds as an int when they are whole (ManualClock(1000.0) + 60 -> 1060)."""
    return int(x) if float(x).is_integer() else x


# --------------------------------------------------------------------------------- vehicles


@dataclass(frozen=True)
class Vehicle:
    """One vehicle's visit to a bay; every time is whole scenario seconds.

    ``arrive_s <= plug_s <= charge_start_s < charge_end_s <= unplug_s <= leave_s`` (the plug
    and charge times are None for a vehicle that does not plug or does not charge;
    ``unplug_s`` defaults to ``leave_s``). ``kind`` is the truth ("ev" or "fuel"); ``colour`` is
    what the camera reports (normally green for an EV, blue or yellow for a fuel car) and
    ``plate_shown`` whether it reads the plate at all, ``plate_delay_s`` after arrival (a
    vehicle with an empty ``plate`` is never read). While
    charging the car draws ``power_w`` on ``phases`` phases: a 30-s staircase up, a plateau
    varied each minute by up to ``jitter`` (seeded by ``seed``), a 5-s staircase down to 0 W at
    ``charge_end_s``. ``label`` names the scenario class (``ev_charge``, ``ev_overstay``,
    ``fuel``, ``ev_no_plug``) for reports.
    """

    arrive_s: int
    leave_s: int
    kind: str = "ev"
    plate: str = ""
    colour: str = "unknown"
    plate_shown: bool = True
    plate_delay_s: int = 5
    plug_s: int | None = None
    unplug_s: int | None = None
    charge_start_s: int | None = None
    charge_end_s: int | None = None
    power_w: int = 7000
    phases: int = 1
    clearance_mm: int = 180
    height_mm: int = 1500
    jitter: float = 0.01
    seed: int = 0
    label: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("ev", "fuel"):
            raise ValueError(f"kind must be 'ev' or 'fuel', got {self.kind!r}")
        if not self.arrive_s < self.leave_s:
            raise ValueError("a vehicle must arrive before it leaves")
        if self.plug_s is None:
            if self.unplug_s is not None or self.charge_start_s is not None:
                raise ValueError("unplug and charge times need a plug time")
        else:
            if self.kind == "fuel":
                raise ValueError("a fuel car cannot plug in")
            if self.unplug_s is None:
                object.__setattr__(self, "unplug_s", self.leave_s)
            if not self.arrive_s <= self.plug_s < self.unplug_s <= self.leave_s:  # type: ignore[operator]
                raise ValueError("need arrive_s <= plug_s < unplug_s <= leave_s")
        if (self.charge_start_s is None) != (self.charge_end_s is None):
            raise ValueError("charge_start_s and charge_end_s go together")
        if self.charge_start_s is not None:
            assert self.plug_s is not None and self.charge_end_s is not None
            if not self.plug_s <= self.charge_start_s < self.charge_end_s <= self.unplug_s:  # type: ignore[operator]
                raise ValueError("need plug_s <= charge_start_s < charge_end_s <= unplug_s")
            if self.charge_end_s - self.charge_start_s < MIN_CHARGE_S:
                raise ValueError(f"a charge lasts at least {MIN_CHARGE_S} s")
            if self.power_w <= 0 or self.phases not in (1, 3):
                raise ValueError("power_w must be > 0 and phases 1 or 3")

    @property
    def charges(self) -> bool:
        return self.charge_start_s is not None

    @property
    def plate_read(self) -> bool:
        """A camera watching the bay reads this vehicle's plate."""
        return self.plate_shown and bool(self.plate)

    def present(self, s: float, inset_s: float = 0) -> bool:
        """In the bay at scenario second ``s`` (seen ``inset_s`` later and left earlier)."""
        return self.arrive_s + inset_s <= s < self.leave_s - inset_s

    def plugged(self, s: float) -> bool:
        return self.plug_s is not None and self.plug_s <= s < self.unplug_s  # type: ignore[operator]

    def charging(self, s: float) -> bool:
        """Drawing power at ``s`` (the ramps included)."""
        return self.charge_start_s is not None and self.charge_start_s <= s < self.charge_end_s  # type: ignore[operator]

    @classmethod
    def ev(
        cls,
        arrive_s: int,
        *,
        plug_after_s: int = 120,
        charge_after_s: int = 10,
        charge_s: int = 3600,
        unplug_after_s: int = 300,
        leave_after_s: int = 60,
        **kw: Any,
    ) -> Vehicle:
        """An EV that plugs in, charges ``charge_s``, stays ``unplug_after_s`` after the end of
        the charge, unplugs and leaves ``leave_after_s`` later (green plate by default)."""
        plug = arrive_s + plug_after_s
        start = plug + charge_after_s
        end = start + charge_s
        unplug = end + unplug_after_s
        kw.setdefault("colour", "green")
        kw.setdefault("label", "ev_charge")
        return cls(
            arrive_s,
            unplug + leave_after_s,
            "ev",
            plug_s=plug,
            unplug_s=unplug,
            charge_start_s=start,
            charge_end_s=end,
            **kw,
        )

    @classmethod
    def parked_ev(cls, arrive_s: int, stay_s: int, *, plugged: bool = False, **kw: Any) -> Vehicle:
        """An EV that stays ``stay_s`` without charging (plugged in or not)."""
        kw.setdefault("colour", "green")
        kw.setdefault("label", "ev_no_plug" if not plugged else "ev_plugged")
        if plugged:
            return cls(arrive_s, arrive_s + stay_s, "ev", plug_s=arrive_s + min(60, stay_s - 1), **kw)
        return cls(arrive_s, arrive_s + stay_s, "ev", **kw)

    @classmethod
    def fuel(cls, arrive_s: int, stay_s: int, **kw: Any) -> Vehicle:
        """A fuel car that parks ``stay_s`` (blue plate by default)."""
        kw.setdefault("colour", "blue")
        kw.setdefault("label", "fuel")
        kw.setdefault("clearance_mm", 160)
        return cls(arrive_s, arrive_s + stay_s, "fuel", **kw)


def expected_classification(
    v: Vehicle, params: Mapping[str, Any] | None = None, camera: bool = False
) -> tuple[str | None, bool]:
    """``(classification, confirmed)`` that pilecore.bays must give ``v``'s stay under bay
    ``params`` (partial dict, defaults from pilecore.bays; ``plug_source`` included), with or
    without a ``camera``; ``(None, False)`` for a stay shorter than ``arrive_s`` (no record).

    The rules of docs/bays.md section 4 applied to the vehicle's true times. Exact except
    within a few seconds of a threshold (debounces, the charge ramps): the :class:`Scenario`
    keeps its vehicles minutes away from every threshold.
    """
    p = core_bays.make_params(dict(params or {}))
    stay = v.leave_s - v.arrive_s
    if stay < p["arrive_s"]:
        return None, False
    if v.charges and v.charge_end_s - v.charge_start_s > p["charge_debounce_s"]:  # type: ignore[operator]
        tail = v.leave_s - v.charge_end_s  # type: ignore[operator]
        return ("ev_overstay" if tail > p["overstay_s"] else "ev_charging"), False
    plate = camera and v.plate_read
    if v.charges:  # charging power seen, too short to count as a charge: still EV evidence
        return "ev_parked", False
    if v.plug_s is not None and p["plug_source"] in ("modbus", "input"):
        return "ev_parked", False
    if plate and (v.colour == "green" or core_bays.nev_plate_format(v.plate)):
        return "ev_parked", False
    if plate and v.colour in core_bays.FUEL_COLOURS:
        return "fuel_car", True
    if stay > p["grace_s"]:
        return "fuel_car", False
    return "unknown", False


# --------------------------------------------------------------------------------- scenario

#: Default share of each vehicle class in a Scenario.
DEFAULT_MIX = {"ev_charge": 0.4, "ev_overstay": 0.15, "fuel": 0.3, "ev_no_plug": 0.15}


class Scenario:
    """A seeded stream of vehicles for one bay.

    Classes (``mix`` gives their weights, :data:`DEFAULT_MIX` by default):

    * ``ev_charge``: an EV plugs in 1-5 min after arrival, starts charging 5-60 s later,
      charges 20-120 min, unplugs 1 min to ``overstay_s`` - 10 min after the end, leaves
      0.5-3 min later: its idle tail stays well under ``overstay_s``.
    * ``ev_overstay``: the same, but it leaves ``overstay_s`` + 10-60 min after the end.
    * ``fuel``: a fuel car (blue plate, 15 % yellow) parks 20-60 min.
    * ``ev_no_plug``: an EV (green plate) parks 20-60 min and never plugs in.

    Arrivals follow the previous departure by ``gap_s`` (uniform, whole seconds). The camera
    reads a plate with probability ``plate_prob``, 2-15 s after arrival. Power and phases come
    from ``power_options`` (default: those of pilehil.load for the meter's phase count).
    ``next_vehicle(after_s)`` draws the next one; the same seed always gives the same stream.
    """

    def __init__(
        self,
        seed: int = 0,
        *,
        mix: Mapping[str, float] | None = None,
        gap_s: tuple[int, int] = (300, 3600),
        power_options: Sequence[tuple[int, int]] | None = None,
        phases: int = 1,
        plate_prob: float = 0.9,
        overstay_s: int = 900,
        province: str = "豫C",
    ) -> None:
        self.seed = seed
        self.mix = dict(mix or DEFAULT_MIX)
        unknown = set(self.mix) - set(DEFAULT_MIX)
        if unknown or not any(w > 0 for w in self.mix.values()):
            raise ValueError(f"mix: known classes are {sorted(DEFAULT_MIX)}, with a weight > 0")
        self.gap_s = gap_s
        self.power_options = tuple(power_options or DEFAULT_OPTIONS[3 if phases == 3 else 1])
        self.plate_prob = plate_prob
        self.overstay_s = overstay_s
        self.province = province
        self._rng = random.Random(seed)

    def _plate(self, nev: bool) -> str:
        rng = self._rng
        tail = "".join(rng.choice(_PLATE_CHARS) for _ in range(5))
        return self.province + (rng.choice("DF") + tail if nev else tail)

    def next_vehicle(self, after_s: int) -> Vehicle:
        """The next vehicle, arriving after scenario second ``after_s``."""
        rng = self._rng
        names = sorted(self.mix)
        label = rng.choices(names, weights=[self.mix[n] for n in names])[0]
        arrive = after_s + rng.randint(*self.gap_s)
        common: dict[str, Any] = {
            "plate_shown": rng.random() < self.plate_prob,
            "plate_delay_s": rng.randint(2, 15),
            "clearance_mm": rng.randint(130, 260),
            "height_mm": rng.randint(1420, 1850),
            "seed": rng.getrandbits(32),
            "label": label,
        }
        if label == "fuel":
            colour = "yellow" if rng.random() < 0.15 else "blue"
            return Vehicle(arrive, arrive + rng.randint(1200, 3600), "fuel", self._plate(False), colour, **common)
        plate = self._plate(True)
        if label == "ev_no_plug":
            return Vehicle(arrive, arrive + rng.randint(1200, 3600), "ev", plate, "green", **common)
        power, phases = rng.choice(self.power_options)
        plug = arrive + rng.randint(60, 300)
        start = plug + rng.randint(5, 60)
        end = start + rng.randint(1200, 7200)
        if label == "ev_charge":
            unplug = end + rng.randint(60, max(60, self.overstay_s - 600))
            leave = unplug + rng.randint(30, 180)
        else:
            leave = end + self.overstay_s + rng.randint(600, 3600)
            unplug = leave - rng.randint(30, 120)
        return Vehicle(
            arrive,
            leave,
            "ev",
            plate,
            "green",
            plug_s=plug,
            unplug_s=unplug,
            charge_start_s=start,
            charge_end_s=end,
            power_w=power,
            phases=phases,
            **common,
        )


# --------------------------------------------------------------------------------- the bay


class VehicleLoad(PiecewiseLoad):
    """The power a bay's vehicles draw from its pile, in the pile meter's milliseconds.

    Segments are appended as vehicles are added (or drawn from the bay's scenario, on demand,
    whenever a time is asked for), so the integral stays exact and additive like every load of
    pilehil.load. Power holds 0 W after the last vehicle."""

    def __init__(self, bay: BaySim) -> None:
        super().__init__()
        self._bay = bay
        self._lock = bay._lock
        self._horizon = _FOREVER_MS

    def _index(self, t_ms: int) -> int:
        self._bay._ensure_ms(t_ms)
        return super()._index(t_ms)


class BaySim:
    """One simulated bay in front of pile ``pile_id``, on ``clock`` (default: the meter's
    clock, else real time).

    ``meter`` (a SimMeter) is the pile's meter: the bay's :class:`VehicleLoad` becomes its load
    (unless ``drive_meter`` is False, e.g. for two bays sharing a pile: sum the loads yourself)
    and the bay's origin becomes the meter's, so scenario seconds are meter seconds. ``params``
    (partial pilecore.bays parameters, ``plug_source`` included) and ``camera`` only shape the
    truth's expected classification and the plate feed. ``scenario`` draws vehicles on demand;
    :meth:`add_vehicle` adds them by hand (after the last one, and not in the part of the
    timeline already read).
    """

    def __init__(
        self,
        bay_id: str,
        pile_id: str,
        clock: Callable[[], float] | None = None,
        *,
        meter: Any = None,
        drive_meter: bool = True,
        camera: str | None = None,
        params: Mapping[str, Any] | None = None,
        scenario: Scenario | None = None,
    ) -> None:
        self.bay_id = bay_id
        self.pile_id = pile_id
        if clock is None:
            clock = meter.clock if meter is not None else ScaledClock()
        self.clock = clock
        self.camera = camera
        self.params = core_bays.make_params(dict(params or {}))
        self.scenario = scenario
        self.meter = meter
        self._lock = threading.RLock()
        # The meter's own origin, so that vehicle seconds and meter milliseconds line up exactly.
        self.t0: float = meter._t0 if meter is not None else clock()
        self._vehicles: list[Vehicle] = []
        self._arrivals: list[int] = []
        self._read_ms = 0  # latest time anything was derived for (history is fixed)
        self._gen_s = 0  # the scenario has decided everything before this second
        self.load = VehicleLoad(self)
        if meter is not None and drive_meter:
            meter.load = self.load

    def __repr__(self) -> str:
        return f"BaySim({self.bay_id!r}, pile={self.pile_id!r}, vehicles={len(self._vehicles)})"

    # ---- time --------------------------------------------------------------------------

    def scenario_s(self, t: float | None = None) -> float:
        """Scenario seconds at clock time ``t`` (None = now)."""
        return _now(self.clock, t) - self.t0

    def clock_time(self, s: float) -> int | float:
        """Clock seconds at scenario second ``s``."""
        return _clock_number(self.t0 + s)

    def load_ms(self, t: float | None = None) -> int:
        """The load's (and the pile meter's) milliseconds at clock time ``t`` (None = now)."""
        return max(0, round(self.scenario_s(t) * 1000))

    def _ensure_ms(self, t_ms: int) -> None:
        with self._lock:
            if t_ms > self._read_ms:
                self._read_ms = t_ms
            while self.scenario is not None and self._gen_s * 1000 <= t_ms:
                last = self._vehicles[-1].leave_s if self._vehicles else self._gen_s
                self._append(self.scenario.next_vehicle(max(last, self._gen_s)))

    def _at(self, t: float | None) -> float:
        s = self.scenario_s(t)
        self._ensure_ms(max(0, int(s * 1000)))
        return s

    # ---- vehicles ----------------------------------------------------------------------

    def add_vehicle(self, v: Vehicle) -> Vehicle:
        """Add ``v`` to the timeline. It must arrive after the last vehicle has left and after
        the latest time already read (what masters saw cannot change)."""
        with self._lock:
            if self._vehicles and v.arrive_s < self._vehicles[-1].leave_s:
                raise ValueError(
                    f"{self.bay_id}: vehicle arriving at {v.arrive_s} s overlaps the one "
                    f"leaving at {self._vehicles[-1].leave_s} s"
                )
            if v.arrive_s * 1000 < self._read_ms:
                raise ValueError(
                    f"{self.bay_id}: arrival {v.arrive_s} s is in the past "
                    f"(already read up to {self._read_ms / 1000:.3f} s)"
                )
            self._append(v)
        return v

    def _append(self, v: Vehicle) -> None:
        self._vehicles.append(v)
        self._arrivals.append(v.arrive_s)
        self._gen_s = max(self._gen_s, v.leave_s)
        if v.charges:
            self._append_charge(v)

    def _append_charge(self, v: Vehicle) -> None:
        load = self.load
        t = v.charge_start_s * 1000  # type: ignore[operator]
        end = v.charge_end_s * 1000  # type: ignore[operator]
        p, ph = v.power_w, v.phases
        for k in range(1, RAMP_UP_S + 1):
            load._append(t, p * k // RAMP_UP_S, ph)
            t += 1000
        plateau_end = end - 1000 * (RAMP_DOWN_S - 1)
        rng = random.Random(v.seed)
        while t < plateau_end:
            load._append(t, round(p * (1.0 + rng.uniform(-v.jitter, v.jitter))), ph)
            t = min(t + 60_000, plateau_end)
        for k in range(RAMP_DOWN_S - 1, 0, -1):
            load._append(t, p * k // RAMP_DOWN_S, ph)
            t += 1000
        load._append(end, 0, 1)

    @property
    def vehicles(self) -> list[Vehicle]:
        """The vehicles of the timeline decided so far (a scenario draws more as time goes)."""
        with self._lock:
            return list(self._vehicles)

    def vehicle_at(self, t: float | None = None, inset_s: float = 0) -> Vehicle | None:
        """The vehicle in the bay at clock time ``t`` (None = now), or None. With ``inset_s`` a
        sensor sees it that much later and loses it that much earlier (a sensor at the back of
        the bay)."""
        s = self._at(t)
        with self._lock:
            i = bisect.bisect_right(self._arrivals, s) - 1
            if i >= 0 and self._vehicles[i].present(s, inset_s):
                return self._vehicles[i]
        return None

    def present(self, t: float | None = None) -> bool:
        return self.vehicle_at(t) is not None

    def plugged(self, t: float | None = None) -> bool:
        """A vehicle is plugged into the pile at clock time ``t`` (None = now)."""
        t = _now(self.clock, t)
        v = self.vehicle_at(t)
        return v is not None and v.plugged(self.scenario_s(t))

    def charging(self, t: float | None = None) -> bool:
        """The vehicle draws charging power at ``t`` (ramps included)."""
        t = _now(self.clock, t)
        v = self.vehicle_at(t)
        return v is not None and v.charging(self.scenario_s(t))

    # ---- camera and truth --------------------------------------------------------------

    def plate_reads(self, t_from: float, t_to: float) -> list[dict[str, Any]]:
        """The camera's reads in ``(t_from, t_to]`` (clock seconds): ``{"camera", "plate",
        "colour", "t"}`` with ``t`` in whole clock seconds. Empty without a camera."""
        if self.camera is None:
            return []
        s_to = self._at(t_to)
        s_from = self.scenario_s(t_from)
        out = []
        with self._lock:
            for v in self._vehicles:
                s = v.arrive_s + v.plate_delay_s
                if v.plate_read and s_from < s <= s_to and s < v.leave_s:
                    out.append({"camera": self.camera, "plate": v.plate, "colour": v.colour, "t": int(self.t0 + s)})
        return out

    def truth(self, until: float | None = None) -> list[dict[str, Any]]:
        """What really happened: one record per vehicle that has left by clock time ``until``
        (None = now), in order. Times are clock seconds (None where it did not happen);
        ``expected`` is the classification pilecore.bays must give (None: too short a stay
        for a record), ``confirmed`` whether it must be plate-confirmed, ``energy_wh`` /
        ``energy_mj`` the exact energy the vehicle drew."""
        s = self._at(until)
        out = []
        with self._lock:
            done = [v for v in self._vehicles if v.leave_s <= s]

        def at(x: int | None) -> int | float | None:
            return None if x is None else self.clock_time(x)

        for v in done:
            cls, confirmed = expected_classification(v, self.params, self.camera is not None)
            mj = self.load.energy_mj(v.arrive_s * 1000, v.leave_s * 1000)
            out.append(
                {
                    "bay": self.bay_id,
                    "pile": self.pile_id,
                    "kind": v.kind,
                    "label": v.label,
                    "plate": v.plate,
                    "colour": v.colour,
                    "plate_read": self.camera is not None and v.plate_read,
                    "arrival": at(v.arrive_s),
                    "departure": at(v.leave_s),
                    "duration_s": v.leave_s - v.arrive_s,
                    "plug": at(v.plug_s),
                    "unplug": at(v.unplug_s),
                    "charge_start": at(v.charge_start_s),
                    "charge_end": at(v.charge_end_s),
                    "energy_wh": mj // MJ_PER_WH,
                    "energy_mj": mj,
                    "expected": cls,
                    "confirmed": confirmed,
                }
            )
        return out
