"""Parking bays: presence filtering, sensor health, the bay state machine, occupancy records.

The gateway is the witness for the city's rule that fuel cars occupying EV charging bays pay by
the time they stay.  For each bay it tells whether a vehicle is there, whether it is charging,
how long it has blocked the bay, and it never accuses an EV that is charging.

Contract (docs/bays.md has the full story):
  - No I/O, no clock: every call takes `now` as int Unix seconds.  Times in outputs are ints.
  - `BayMachine.step(now, presence_samples, plug, power_w)` and `BayMachine.plate(now, text,
    colour)` return a list of plain dicts: events ({"type", "bay", "t", ...}) and, when a
    vehicle has left, one occupancy record ({"type": "occupancy", ...}).
  - `BayMachine.snapshot()` is a small JSON-safe dict; a machine built from it continues
    exactly as the original would.  `BayMachine.version` grows whenever the snapshot changed in
    a way that matters (and at least every heartbeat_s), so a port persists on version change.
  - Unknown is reported as unknown: a period when presence or the pile's state cannot be told is
    counted in unknown_s and never billed.

Presence samples are True (vehicle), False (empty) or None (no valid reading).  Distance
sensors go through DistanceFilter first; digital inputs arrive as booleans.
"""

from pilecore import jsonc
from pilecore import params as _params
from pilecore.tariff import CLASSIFICATIONS, fee, tariff_ref, validate_tariff

STATES = ("vacant", "arriving", "occupied", "charging", "idle", "leaving", "unknown")
PLATE_COLOURS = ("green", "blue", "yellow", "white", "black", "unknown")
FUEL_COLOURS = ("blue", "yellow", "black")
PLUG_SOURCES = ("modbus", "input", "power")
PHASES = ("grace_s", "parked_s", "charging_s", "idle_s", "unknown_s")
UNKNOWN_REASONS = ("sensors", "disagree", "pile", "gap")
EVENT_TYPES = (
    "bay.arrived",
    "bay.left",
    "bay.plugged",
    "bay.unplugged",
    "bay.charging",
    "bay.charge_stopped",
    "bay.plate",
    "bay.fuel_confirmed",
    "bay.fuel_suspected",
    "bay.fuel_suspicion_withdrawn",
    "bay.plate_conflict",
    "bay.overstay_started",
    "bay.unknown",
    "bay.known",
    "sensor.missing",
    "sensor.stuck",
    "sensor.flapping",
    "sensor.disagree",
    "sensor.out_of_range",
    "sensor.recovered",
    "clock.backwards",
)
RECORD_TYPE = "occupancy"
SNAPSHOT_VERSION = 1

# Index of each phase in an occupancy's duration list (same order as PHASES).
_GRACE = 0
_PARKED = 1
_CHARGING = 2
_IDLE = 3
_UNKNOWN = 4

# Fields of one sensor's health record (a list, so that it serialises as it is).
_VAL = 0  # last valid sample (True/False) or None before the first
_CHG = 1  # time the value last changed (or was first seen)
_BAD = 2  # time of the first None in the current run of Nones, else None
_MISS = 3  # True once the Nones have lasted hold_s ("sensor.missing" raised)
_FAULT = 4  # None, "stuck" or "flapping"
_SESS = 5  # charging sessions started since the value last changed (stuck evidence)
_FLAPS = 6  # times of the latest changes (at most flap_max + 1)

_MAX_PLATES = 4
_MAX_FAULTS = 4
_MAX_SESS = 1000


def param_spec():
    """{name: (default, min, max, unit, doc)} for every bay parameter.

    The single source of truth for the site-config schema.  plug_source is a string with no
    range (min and max are None); its choices are PLUG_SOURCES.  Reasons for each default are
    in docs/bays.md.
    """
    return {
        "arrive_s": (20, 1, 600, "s", "presence must hold this long before a vehicle counts as arrived"),
        "leave_s": (45, 1, 900, "s", "absence must hold this long before the vehicle counts as gone"),
        "grace_s": (
            900,
            0,
            7200,
            "s",
            "time after arrival to plug in and start charging before a car without "
            "EV evidence is suspected to be a fuel car",
        ),
        "overstay_s": (900, 0, 14400, "s", "idle time allowed after charging ends before the EV overstays"),
        "charge_threshold_w": (300, 1, 100000, "W", "pile power at or above this means a vehicle is charging"),
        "charge_debounce_s": (
            30,
            0,
            600,
            "s",
            "power must stay on the other side of the threshold this long before charging starts or stops",
        ),
        "plug_source": (
            "power",
            None,
            None,
            "",
            "where the plug state comes from: modbus (pile register), input "
            "(contactor aux contact) or power (inferred from charging)",
        ),
        "hold_s": (
            60,
            10,
            3600,
            "s",
            "a missing reading keeps its last value this long before it counts as "
            "unknown; also the longest gap between steps that is bridged",
        ),
        "disagree_s": (120, 0, 3600, "s", "sensors of one bay may disagree this long before the bay is unknown"),
        "flap_window_s": (600, 60, 86400, "s", "window in which sensor changes are counted"),
        "flap_max": (12, 2, 100, "changes", "more changes than this within flap_window_s mean the sensor is flapping"),
        "stuck_after_s": (
            172800,
            3600,
            2592000,
            "s",
            "a sensor that has not changed for this long while charging sessions started is stuck",
        ),
        "stuck_sessions": (
            2,
            1,
            100,
            "sessions",
            "charging sessions that must start while a sensor is unchanged before it is declared stuck",
        ),
        "plate_window_s": (120, 0, 3600, "s", "a plate read before the arrival is confirmed is kept this long"),
        "heartbeat_s": (
            300,
            10,
            86400,
            "s",
            "version grows at least this often so persisted snapshots bound what a power cut can lose",
        ),
        "occupied_below_mm": (800, 10, 20000, "mm", "distance sensors: a reading below this means a vehicle"),
        "vacant_above_mm": (1200, 10, 20000, "mm", "distance sensors: a reading above this means empty"),
        "min_mm": (20, 0, 20000, "mm", "distance sensors: readings below this are faults (blind zone, covered)"),
        "max_mm": (6000, 1, 65535, "mm", "distance sensors: readings above this are faults"),
    }


def default_params():
    """The default value of every parameter in param_spec()."""
    return _params.defaults(param_spec())


def validate_params(params):
    """Problems of a (possibly partial) parameter dict as a list of (key, message).

    Missing keys take their defaults; the cross-checks apply to the merged values.
    """
    probs, merged = _params.check(params, param_spec(), "bay", {"plug_source": PLUG_SOURCES})
    if probs and probs[0][0] == "":
        return probs
    if merged["occupied_below_mm"] > merged["vacant_above_mm"]:
        probs.append(("occupied_below_mm", "must not exceed vacant_above_mm (%d)" % merged["vacant_above_mm"]))
    if merged["min_mm"] >= merged["max_mm"]:
        probs.append(("min_mm", "must be below max_mm (%d)" % merged["max_mm"]))
    return probs


def make_params(params=None):
    """Defaults overlaid with `params`; raises ValueError listing every problem."""
    return _params.make(params, param_spec(), validate_params, "bay")


def _event(kind, bay, t, **extra):
    ev = {"type": kind, "bay": bay, "t": t}
    ev.update(extra)
    return ev


def nev_plate_format(text):
    """True when `text` has the 8-character layout issued only to new-energy vehicles.

    Ordinary Chinese plates have 7 characters (province, letter, 5); NEV plates have 8
    (province, letter, 6).  Separators (space, dot, middle dot, hyphen) are ignored.
    """
    n = 0
    for ch in text:
        if ch not in " .-·•":
            n += 1
    return n == 8


class DistanceFilter:
    """Distance reading (mm) of an ultrasonic/radar sensor -> presence True/False/None.

    Occupied when distance < occupied_below_mm, vacant when > vacant_above_mm, the previous
    value in between (hysteresis; the very first in-between reading is decided by the
    midpoint).  A reading outside [min_mm, max_mm] is no reading: None, and one
    "sensor.out_of_range" event per fault episode ("sensor.recovered" when readings are back
    in range).  A failed read (mm None) gives None and no event: BayMachine's hold rule decides
    when missing readings become unknown.
    """

    def __init__(self, params=None, bay=None, sensor=0):
        p = make_params(params)
        self.below = p["occupied_below_mm"]
        self.above = p["vacant_above_mm"]
        self.lo = p["min_mm"]
        self.hi = p["max_mm"]
        self.bay = bay
        self.sensor = sensor
        self.value = None
        self.fault = False

    def feed(self, now, mm):
        """-> (presence, events) for one reading taken at `now`."""
        if mm is None:
            return None, []
        events = []
        if mm < self.lo or mm > self.hi:
            if not self.fault:
                self.fault = True
                events.append(
                    _event(
                        "sensor.out_of_range",
                        self.bay,
                        int(now),
                        sensor=self.sensor,
                        mm=int(mm),
                        min_mm=self.lo,
                        max_mm=self.hi,
                    )
                )
            return None, events
        if self.fault:
            self.fault = False
            events.append(_event("sensor.recovered", self.bay, int(now), sensor=self.sensor, fault="out_of_range"))
        if mm < self.below:
            v = True
        elif mm > self.above:
            v = False
        elif self.value is None:
            v = mm * 2 < self.below + self.above
        else:
            v = self.value
        self.value = v
        return v, events


class BayMachine:
    """State machine of one EV charging bay; see the module docstring and docs/bays.md.

    BayMachine(bay_id, pile_id, params, tariff, snapshot=None): params is a (partial) dict
    checked by validate_params (None = defaults); tariff is the tariff in force now (validated;
    None = no tariff, nothing is ever due); snapshot resumes a machine saved by snapshot().  The
    current tariff is never taken from a snapshot: an occupancy in progress keeps the tariff
    that was in force at its arrival, which the snapshot carries.
    """

    def __init__(self, bay_id, pile_id, params=None, tariff=None, snapshot=None):
        self.bay = bay_id
        self.pile = pile_id
        self.p = make_params(params)
        self.tariff = None
        if tariff is not None:
            self.set_tariff(tariff)
        self.version = 0
        self._vt = None  # step time of the last version bump (heartbeat)
        self.t = None  # latest time seen by step()
        self.state = "vacant"
        self.pres = False  # debounced belief: a vehicle is in the bay
        self.cand = None  # presence value waiting out its debounce, or None
        self.cand_t = None
        self.sens = []
        self.dis_t = None  # sensors of the bay disagree since
        self.dis_on = False  # "sensor.disagree" raised
        self.pw = None  # debounced: power >= threshold (None before the first reading)
        self.pw_t = None  # time pw last changed (backdated to the start of its debounce)
        self.pw_cand = None
        self.pw_cand_t = None
        self.pw_bad = None
        self.pw_miss = False
        self.pw_hi = None  # last raw charging-power reading while arriving
        self.plug = None
        self.plug_bad = None
        self.plug_miss = False
        self.unk = None  # reason the bay is unknown, or None
        self.unk_t = None
        self.occ = None  # occupancy in progress
        self.pend = None  # plate read before arrival: [t, text, colour]
        self._why = None
        if snapshot is not None:
            self._load(snapshot)

    # ----------------------------------------------------------------- public API

    def set_tariff(self, tariff):
        """Make `tariff` the one in force for arrivals from now on (ValueError if invalid)."""
        if tariff is not None:
            probs = validate_tariff(tariff)
            if probs:
                raise ValueError("bad tariff: " + "; ".join("%s: %s" % kv for kv in probs))
            tariff = jsonc.copy(tariff)
        self.tariff = tariff

    def step(self, now, samples, plug=None, power_w=None, power_t=None):
        """Feed one set of readings taken at `now`; returns the events and records it caused.

        samples: list with one entry per presence sensor (always the same order): True, False
        or None.  plug: True/False/None from the pile register or contactor contact (ignored
        when plug_source is "power").  power_w: the pile meter's power in W, or None.
        power_t: when the meter reading that gave power_w was taken (None: at `now`).  The last
        reading bridges a silent meter for hold_s after it was taken, not after `now`; from
        then on there is no power, missing since that reading (docs/bays.md, section 5).
        """
        out = []
        now = self._clock(now, out)
        p = self.p
        if self.t is not None and now - self.t > p["hold_s"]:
            self._gap(self.t + p["hold_s"], out)
        self.t = now
        self._sense(now, samples, out)
        f = self._fuse(now, out)
        silent_since = None
        if power_w is not None and power_t is not None and power_t < now and now - power_t >= p["hold_s"]:
            power_w, silent_since = None, power_t  # the meter has been silent for hold_s
        self._power(now, power_w, out, silent_since)
        self._plug(now, plug, out)
        self._presence(now, f, out)
        self._evidence(now, power_w, out)
        self._deadlines(now, out)
        self._settle(now)
        return out

    def plate(self, now, text, colour):
        """A plate read by a camera at `now`; colour is one of PLATE_COLOURS.

        Blue, yellow and black confirm a fuel car at once, unless the vehicle shows EV
        evidence (charging, plug, power, a green read, an 8-character NEV plate): then the
        contradiction is recorded ("bay.plate_conflict") and the vehicle is not a fuel car.
        """
        out = []
        # Camera reads arrive asynchronously and may be slightly older than the last step:
        # they are filed at the latest known time, without a clock.backwards event.
        now = int(now)
        if self.t is not None and now < self.t:
            now = self.t
        text = "" if text is None else str(text)[:16]
        colour = str(colour).lower() if colour is not None else "unknown"
        if colour not in PLATE_COLOURS:
            colour = "unknown"
        out.append(_event("bay.plate", self.bay, now, text=text, colour=colour))
        if self.occ is None:
            self.pend = [now, text, colour]
            self._bump()
        else:
            self._add_plate(self.occ, now, text, colour, out)
        return out

    def snapshot(self):
        """Everything needed to resume, as a small JSON-safe dict (a copy)."""
        return {
            "v": SNAPSHOT_VERSION,
            "bay": self.bay,
            "pile": self.pile,
            "t": self.t,
            "state": self.state,
            "pres": self.pres,
            "cand": self.cand,
            "cand_t": self.cand_t,
            "sens": jsonc.copy(self.sens),
            "dis": [self.dis_t, self.dis_on],
            "pw": [self.pw, self.pw_t, self.pw_cand, self.pw_cand_t, self.pw_bad, self.pw_miss, self.pw_hi],
            "plug": [self.plug, self.plug_bad, self.plug_miss],
            "unk": [self.unk, self.unk_t],
            "occ": jsonc.copy(self.occ),
            "pend": jsonc.copy(self.pend),
        }

    def status(self, now=None):
        """Live view for telemetry and the console; fee and classification are provisional."""
        if now is None or (self.t is not None and now < self.t):
            now = self.t
        st = {
            "bay": self.bay,
            "pile": self.pile,
            "t": now,
            "state": self.state,
            "unknown_reason": self.unk,
            "sensors": [self._sensor_fault(s) for s in self.sens],
            "plugged": self._plugged(),
            "charging": self._charging(),
            "arrival": None,
        }
        occ = self.occ
        if occ is not None and now is not None:
            end = self.cand_t if self.cand is False else now
            d = list(occ["d"])
            tail = occ["tail"] + self._spread(occ, d, occ["acc"], end)
            cls, confirmed = self._classify(occ, d, tail)
            billable = self._billable(cls, d, tail)
            fen, _bd = fee(occ["tariff"], cls, billable)
            st.update(
                {
                    "arrival": occ["arrival"],
                    "elapsed_s": end - occ["arrival"],
                    "classification": cls,
                    "confirmed": confirmed,
                    "billable_s": billable,
                    "fee_fen": fen,
                    "tariff": tariff_ref(occ["tariff"]),
                }
            )
        return st

    # ----------------------------------------------------------------- bookkeeping

    def _bump(self):
        self.version += 1
        self._vt = self.t

    def _clock(self, now, out):
        now = int(now)
        if self.t is not None and now < self.t:
            # A clock that steps back (NTP correction, RTC reset) must not make durations
            # negative: keep the latest time and say so.
            out.append(_event("clock.backwards", self.bay, self.t, now=now))
            return self.t
        return now

    def _settle(self, now):
        st = self._derive_state()
        if st != self.state:
            self.state = st
            self._bump()
        if self._vt is None or now - self._vt >= self.p["heartbeat_s"]:
            self._bump()

    def _derive_state(self):
        if self.unk is not None:
            return "unknown"
        occ = self.occ
        if occ is None:
            return "arriving" if self.cand is True else "vacant"
        if self.cand is False:
            return "leaving"
        if occ["chg"]:
            return "charging"
        if occ["charged"]:
            return "idle"
        return "occupied"

    def _charging(self):
        if self.pw is None or self.pw_miss:
            return None
        return self.pw

    def _plugged(self):
        if self.p["plug_source"] == "power":
            return self._charging()
        if self.plug_miss:
            return None
        return self.plug

    @staticmethod
    def _sensor_fault(s):
        if s[_FAULT] is not None:
            return s[_FAULT]
        if s[_MISS]:
            return "missing"
        return None

    # ----------------------------------------------------------------- sensors

    def _sense(self, now, samples, out):
        p = self.p
        if len(samples) != len(self.sens):
            # Sensor list changed (new config): start their health records afresh.
            self.sens = [[None, now, None, False, None, 0, []] for _ in samples]
            self.dis_t = None
            self.dis_on = False
            self._bump()
        for i in range(len(samples)):
            s = self.sens[i]
            v = samples[i]
            if v is None:
                if s[_BAD] is None:
                    s[_BAD] = now
                    self._bump()
                if not s[_MISS] and now - s[_BAD] >= p["hold_s"]:
                    s[_MISS] = True
                    self._bump()
                    out.append(_event("sensor.missing", self.bay, now, sensor=i, since=s[_BAD]))
            else:
                v = bool(v)
                if s[_BAD] is not None:
                    s[_BAD] = None
                    self._bump()
                if s[_MISS]:
                    s[_MISS] = False
                    self._bump()
                    out.append(_event("sensor.recovered", self.bay, now, sensor=i, fault="missing"))
                if s[_VAL] is None:
                    s[_VAL] = v
                    s[_CHG] = now
                    self._bump()
                elif v != s[_VAL]:
                    s[_VAL] = v
                    s[_CHG] = now
                    s[_SESS] = 0
                    flaps = s[_FLAPS]
                    flaps.append(now)
                    while len(flaps) > p["flap_max"] + 1:
                        flaps.pop(0)
                    self._bump()
                    if s[_FAULT] == "stuck":
                        s[_FAULT] = None
                        out.append(_event("sensor.recovered", self.bay, now, sensor=i, fault="stuck"))
            self._health(now, i, s, out)

    def _health(self, now, i, s, out):
        p = self.p
        recent = 0
        for t in s[_FLAPS]:
            if t > now - p["flap_window_s"]:
                recent += 1
        if s[_FAULT] != "flapping" and recent > p["flap_max"]:
            s[_FAULT] = "flapping"
            self._bump()
            out.append(_event("sensor.flapping", self.bay, now, sensor=i, changes=recent, window_s=p["flap_window_s"]))
        elif s[_FAULT] == "flapping" and recent == 0:
            s[_FAULT] = None
            self._bump()
            out.append(_event("sensor.recovered", self.bay, now, sensor=i, fault="flapping"))
        if (
            s[_FAULT] is None
            and s[_VAL] is not None
            and not s[_MISS]
            and now - s[_CHG] >= p["stuck_after_s"]
            and s[_SESS] >= p["stuck_sessions"]
        ):
            s[_FAULT] = "stuck"
            self._bump()
            out.append(_event("sensor.stuck", self.bay, now, sensor=i, value=s[_VAL], since=s[_CHG], sessions=s[_SESS]))

    def _fuse(self, now, out):
        """Presence of the bay from its healthy sensors: True, False or None (unknown).

        Healthy sensors must agree.  A short disagreement (a car half in the bay) keeps the
        current belief; one longer than disagree_s makes the bay unknown.
        """
        agree = None
        n = 0
        split = False
        for s in self.sens:
            if s[_MISS] or s[_FAULT] is not None or s[_VAL] is None:
                continue
            n += 1
            if agree is None:
                agree = s[_VAL]
            elif s[_VAL] != agree:
                split = True
        if n == 0:
            self._why = "sensors"
            return None
        if not split:
            if self.dis_t is not None:
                self.dis_t = None
                self._bump()
            if self.dis_on:
                self.dis_on = False
                self._bump()
                out.append(_event("sensor.recovered", self.bay, now, sensor=None, fault="disagree"))
            return agree
        if self.dis_t is None:
            self.dis_t = now
            self._bump()
        if now - self.dis_t >= self.p["disagree_s"]:
            if not self.dis_on:
                self.dis_on = True
                self._bump()
                out.append(
                    _event(
                        "sensor.disagree",
                        self.bay,
                        now,
                        sensor=None,
                        values=[s[_VAL] for s in self.sens],
                        since=self.dis_t,
                    )
                )
            self._why = "disagree"
            return None
        return self.pres

    # ----------------------------------------------------------------- pile

    def _power(self, now, power_w, out, silent_since=None):
        p = self.p
        if power_w is not None and power_w != power_w:
            power_w = None  # NaN from a bad decode is no reading
        if power_w is None:
            if self.pw_bad is None:
                self.pw_bad = now if silent_since is None else silent_since
                self._bump()
            if not self.pw_miss and now - self.pw_bad >= p["hold_s"]:
                self.pw_miss = True
                self._bump()
            return
        raw = power_w >= p["charge_threshold_w"]
        if self.pw_bad is not None:
            self.pw_bad = None
            self._bump()
        if self.pw is None or self.pw_miss:
            # First reading, or the first after the meter was lost: take it as it is.
            if self.pw_miss:
                self.pw_miss = False
                self._bump()
            if self.pw_cand is not None:
                self.pw_cand = None
                self._bump()
            if raw != self.pw:
                self._set_pw(raw, now, out)
            return
        if raw == self.pw:
            if self.pw_cand is not None:
                self.pw_cand = None
                self._bump()
            return
        if self.pw_cand != raw:
            self.pw_cand = raw
            self.pw_cand_t = now
            self._bump()
        if now - self.pw_cand_t >= p["charge_debounce_s"]:
            self.pw_cand = None
            self._set_pw(raw, self.pw_cand_t, out)

    def _set_pw(self, v, t, out):
        was = self.pw
        self.pw = v
        self.pw_t = t
        self._bump()
        if v:
            # A charging session started: evidence for the stuck-sensor check.
            for s in self.sens:
                if s[_SESS] < _MAX_SESS:
                    s[_SESS] += 1
            out.append(_event("bay.charging", self.bay, t))
        elif was:
            out.append(_event("bay.charge_stopped", self.bay, t))

    def _plug(self, now, plug, out):
        if self.p["plug_source"] == "power":
            return
        if plug is None:
            if self.plug_bad is None:
                self.plug_bad = now
                self._bump()
            if not self.plug_miss and now - self.plug_bad >= self.p["hold_s"]:
                self.plug_miss = True
                self._bump()
            return
        v = bool(plug)
        if self.plug_bad is not None:
            self.plug_bad = None
            self._bump()
        if self.plug_miss:
            self.plug_miss = False
            self._bump()
        if v != self.plug:
            was = self.plug
            self.plug = v
            self._bump()
            if v:
                out.append(_event("bay.plugged", self.bay, now))
            elif was:
                out.append(_event("bay.unplugged", self.bay, now))

    # ----------------------------------------------------------------- presence

    def _presence(self, now, f, out):
        p = self.p
        if f is None:
            if self.unk is None:
                self._enter_unknown(self._why, now, out)
            elif self.unk != self._why:
                self.unk = self._why
                self._bump()
            return
        if self.unk is not None:
            if self.occ is not None and self._charging() is None:
                if self.unk != "pile":
                    self.unk = "pile"
                    self._bump()
                return
            self._leave_unknown(now, out)
        if f == self.pres:
            if self.cand is not None:
                # A blip absorbed by the debounce; pile changes deferred while the vehicle
                # seemed to leave are applied below, backdated to when they happened.
                self.cand = None
                self._bump()
        else:
            if self.cand != f:
                self.cand = f
                self.cand_t = now
                self._bump()
            if now - self.cand_t >= (p["arrive_s"] if f else p["leave_s"]):
                if f:
                    self._arrive(self.cand_t, out)
                else:
                    self._depart(self.cand_t, out)
        if self.occ is not None and self.cand is not False:
            if self._charging() is None:
                if self.unk is None:
                    self._enter_unknown("pile", now, out)
            else:
                self._apply_ctx(now, out)

    def _gap(self, g, out):
        # No step for longer than hold_s (gateway down, power cut): what happened from g to now
        # is unknown.  Debounces restart: nothing seen before the gap confirms anything after.
        if self.cand is not None or self.pw_cand is not None:
            self.cand = None
            self.pw_cand = None
            self._bump()
        if self.unk is None:
            self._enter_unknown("gap", g, out)

    def _enter_unknown(self, reason, t, out):
        self.unk = reason
        self.unk_t = t
        self.cand = None
        self._bump()
        out.append(_event("bay.unknown", self.bay, t, reason=reason))
        occ = self.occ
        if occ is not None:
            faults = occ["faults"]
            if reason not in faults and len(faults) < _MAX_FAULTS:
                faults.append(reason)
            self._apply_ctx(t, out)

    def _leave_unknown(self, now, out):
        out.append(_event("bay.known", self.bay, now, reason=self.unk, since=self.unk_t))
        self.unk = None
        self.cand = None
        self._bump()
        if self.occ is not None and self._charging() is not None:
            self._apply_ctx(now, out)

    def _arrive(self, a, out):
        self.pres = True
        self.cand = None
        chg = self._charging()
        self.occ = {
            "arrival": a,
            "acc": a,  # durations are accounted up to here
            "unk": False,  # accounting context: unknown ...
            "chg": False,  # ... or charging
            "charged": False,  # charging seen in this occupancy (idle after it)
            "d": [0, 0, 0, 0, 0],  # PHASES
            "tail": 0,  # idle seconds since charging last stopped
            "plug_t": None,
            "power_seen": (self.pw_cand is True or chg is True or (self.pw_hi is not None and self.pw_hi >= a)),
            "c0": None,
            "c1": None,
            "plates": [],
            "nev": False,  # NEV plate evidence (green, or the 8-character layout)
            "fuel": None,
            "conflict": False,
            "sus": None,
            "wd": None,  # when the fuel suspicion was withdrawn
            "ovr": None,
            "seen": 0,
            "faults": [],
            "tariff": jsonc.copy(self.tariff),
        }
        self._bump()
        out.append(_event("bay.arrived", self.bay, a))
        pend = self.pend
        if pend is not None:
            self.pend = None
            if pend[0] >= a - self.p["plate_window_s"]:
                self._add_plate(self.occ, pend[0], pend[1], pend[2], out)
        if chg is None:
            self._enter_unknown("pile", a, out)

    def _depart(self, left, out):
        occ = self.occ
        # A pile change that happened before the vehicle left still belongs to this stay.
        if self._charging() is not None and self.pw_t is not None and self.pw_t <= left:
            self._apply_ctx(left, out)
        self._account(left)
        rec = self._record(occ, left)
        out.append(
            _event(
                "bay.left",
                self.bay,
                left,
                arrival=rec["arrival"],
                classification=rec["classification"],
                fee_fen=rec["fee_fen"],
            )
        )
        out.append(rec)
        self.occ = None
        self.pres = False
        self.cand = None
        self._bump()

    # ----------------------------------------------------------------- accounting

    def _apply_ctx(self, now, out):
        """Bring the occupancy's accounting context in line with what is known at `now`.

        Context changes are backdated to when they happened (the start of the unknown period,
        the start of the power debounce) but never before the accounting mark.
        """
        occ = self.occ
        want_unk = self.unk is not None
        if want_unk != occ["unk"]:
            t = self.unk_t if want_unk else now
            self._account(min(max(t, occ["acc"]), now))
            occ["unk"] = want_unk
            self._bump()
        chg = self._charging()
        if want_unk or chg is None:
            return
        want = chg is True
        if want == occ["chg"]:
            return
        t = min(max(self.pw_t, occ["acc"]), now)
        self._account(t)
        occ["chg"] = want
        if want:
            occ["charged"] = True
            if occ["c0"] is None:
                occ["c0"] = t
            occ["tail"] = 0
            occ["ovr"] = None
            self._ev_evidence(occ, "charging", t, out)
        else:
            occ["c1"] = t
        self._bump()

    def _spread(self, occ, d, t0, t1):
        """Add the seconds (t0, t1] to durations `d` under the occupancy's context.

        Returns the idle seconds added (for the overstay tail)."""
        dt = t1 - t0
        if dt <= 0:
            return 0
        if occ["unk"]:
            d[_UNKNOWN] += dt
        elif occ["chg"]:
            d[_CHARGING] += dt
        elif occ["charged"]:
            d[_IDLE] += dt
            return dt
        else:
            deadline = occ["arrival"] + self.p["grace_s"]
            g = 0
            if t0 < deadline:
                g = (t1 if t1 < deadline else deadline) - t0
            d[_GRACE] += g
            d[_PARKED] += dt - g
        return 0

    def _account(self, t):
        occ = self.occ
        if t <= occ["acc"]:
            return
        occ["tail"] += self._spread(occ, occ["d"], occ["acc"], t)
        occ["acc"] = t
        self._bump()

    # ----------------------------------------------------------------- evidence

    def _withdraw(self, occ, reason, t, out):
        # EV evidence after a fuel suspicion: the platform acted on the suspicion, so it is
        # told, once, that it no longer stands (the record will not be a fuel car).
        if occ["sus"] is not None and occ.get("wd") is None:
            occ["wd"] = t
            self._bump()
            out.append(_event("bay.fuel_suspicion_withdrawn", self.bay, t, reason=reason, suspected_t=occ["sus"]))

    def _ev_evidence(self, occ, reason, t, out):
        self._withdraw(occ, reason, t, out)
        # EV evidence arrived: a plate that confirmed a fuel car was wrong.
        if occ["fuel"] is not None and not occ["conflict"]:
            occ["conflict"] = True
            self._bump()
            out.append(
                _event("bay.plate_conflict", self.bay, t, reason=reason, text=occ["fuel"][1], colour=occ["fuel"][2])
            )

    def _evidence(self, now, power_w, out):
        occ = self.occ
        high = power_w is not None and power_w == power_w and power_w >= self.p["charge_threshold_w"]
        if occ is None:
            if high and self.cand is True:
                # Charging power while the arrival is being confirmed belongs to the stay.
                self.pw_hi = now
                self._bump()
            return
        if self.cand is False:
            return
        if self._plugged() is True and occ["plug_t"] is None:
            t = now
            if self.p["plug_source"] == "power":
                # Inferred from charging: it began when the power debounce began.
                t = min(max(self.pw_t, occ["arrival"]), now)
            occ["plug_t"] = t
            self._bump()
            self._ev_evidence(occ, "plugged", t, out)
        if high and not occ["power_seen"]:
            occ["power_seen"] = True
            self._bump()
            self._ev_evidence(occ, "power", now, out)
        if self._charging() is True and occ["unk"] and (not occ["charged"] or occ["tail"]):
            # Charging seen while presence is unknown: still protects the driver.
            occ["charged"] = True
            occ["tail"] = 0
            occ["ovr"] = None
            if occ["c0"] is None:
                occ["c0"] = now
            self._bump()
            self._ev_evidence(occ, "charging", now, out)
        seen = occ["seen"]
        for i in range(len(self.sens)):
            s = self.sens[i]
            if s[_VAL] is True and not s[_MISS] and s[_FAULT] is None:
                seen |= 1 << i
        if seen != occ["seen"]:
            occ["seen"] = seen
            self._bump()

    @staticmethod
    def _has_ev_evidence(occ):
        return occ["charged"] or occ["power_seen"] or occ["plug_t"] is not None or occ["nev"]

    def _add_plate(self, occ, t, text, colour, out):
        plates = occ["plates"]
        plates.append([t, text, colour])
        while len(plates) > _MAX_PLATES:
            plates.pop(0)
        self._bump()
        if colour == "green":
            occ["nev"] = True
            self._ev_evidence(occ, "green", t, out)
            return
        if colour not in FUEL_COLOURS:
            return
        why = None
        if nev_plate_format(text):
            # A big NEV's yellow-green plate, or a misread colour: the layout says NEV.
            why = "nev_format"
            occ["nev"] = True
            self._withdraw(occ, why, t, out)
        elif self._charging() is True or occ["charged"]:
            why = "charging"
        elif occ["plug_t"] is not None:
            why = "plugged"
        elif occ["power_seen"]:
            why = "power"
        elif occ["nev"]:
            why = "nev_plate"
        if why is not None:
            occ["conflict"] = True
            out.append(_event("bay.plate_conflict", self.bay, t, reason=why, text=text, colour=colour))
        elif occ["fuel"] is None:
            occ["fuel"] = [t, text, colour]
            out.append(_event("bay.fuel_confirmed", self.bay, t, text=text, colour=colour))

    def _deadlines(self, now, out):
        occ = self.occ
        if occ is None or self.cand is False or occ["unk"] or occ["chg"]:
            return
        acc = occ["acc"]
        if not occ["charged"]:
            if occ["sus"] is not None or occ["fuel"] is not None or self.pw_cand is True or self._has_ev_evidence(occ):
                return
            deadline = occ["arrival"] + self.p["grace_s"]
            start = deadline if deadline > acc else acc
            if occ["d"][_PARKED] == 0 and now <= start:
                return
            t = start if occ["d"][_PARKED] == 0 else now
            occ["sus"] = t
            self._bump()
            out.append(_event("bay.fuel_suspected", self.bay, t, arrival=occ["arrival"]))
        elif occ["ovr"] is None:
            limit = self.p["overstay_s"]
            tail = occ["tail"] + (now - acc)
            if tail > limit:
                t = acc + limit - occ["tail"] if occ["tail"] < limit else acc
                occ["ovr"] = t
                self._bump()
                out.append(_event("bay.overstay_started", self.bay, t, charge_end=occ["c1"]))

    # ----------------------------------------------------------------- records

    def _classify(self, occ, d, tail):
        """(classification, confirmed) from the evidence; EV evidence always wins."""
        if occ["charged"]:
            if tail > self.p["overstay_s"]:
                return "ev_overstay", False
            return "ev_charging", False
        if self._has_ev_evidence(occ):
            return "ev_parked", False
        if occ["fuel"] is not None:
            return "fuel_car", True
        if d[_PARKED] > 0:
            return "fuel_car", False
        return "unknown", False

    def _billable(self, cls, d, tail):
        if cls == "fuel_car":
            return d[_GRACE] + d[_PARKED]
        if cls == "ev_parked":
            return d[_PARKED]
        if cls == "ev_overstay":
            return tail - self.p["overstay_s"]
        return 0

    def _record(self, occ, left):
        d = occ["d"]
        cls, confirmed = self._classify(occ, d, occ["tail"])
        billable = self._billable(cls, d, occ["tail"])
        fen, bd = fee(occ["tariff"], cls, billable)
        seen = []
        for i in range(len(self.sens)):
            if occ["seen"] & (1 << i):
                seen.append(i)
        a = occ["arrival"]
        rec = {
            "type": RECORD_TYPE,
            "bay": self.bay,
            "pile": self.pile,
            "t": left,
            "arrival": a,
            "departure": left,
            "duration_s": left - a,
            "classification": cls,
            "confirmed": confirmed,
            "billable_s": billable,
            "fee_fen": fen,
            "fee": bd,
            "tariff": tariff_ref(occ["tariff"]),
            "evidence": {
                "sensors": seen,
                "sensor_count": len(self.sens),
                "faults": list(occ["faults"]),
                "plug_source": self.p["plug_source"],
                "plug_t": occ["plug_t"],
                "power_seen": occ["power_seen"],
                "charge_start_t": occ["c0"],
                "charge_end_t": occ["c1"],
                "plates": jsonc.copy(occ["plates"]),
                "nev_plate": occ["nev"],
                "fuel_plate_t": occ["fuel"][0] if occ["fuel"] is not None else None,
                "plate_conflict": occ["conflict"],
                "suspected_t": occ["sus"],
                "overstay_t": occ["ovr"],
            },
        }
        for i in range(len(PHASES)):
            rec[PHASES[i]] = d[i]
        return rec

    # ----------------------------------------------------------------- snapshot

    def _load(self, snap):
        if not isinstance(snap, dict) or snap.get("v") != SNAPSHOT_VERSION:
            raise ValueError("unsupported bay snapshot (want v=%d)" % SNAPSHOT_VERSION)
        if snap.get("bay") != self.bay:
            raise ValueError("snapshot is for bay %r, not %r" % (snap.get("bay"), self.bay))
        self.t = snap["t"]
        self._vt = self.t
        self.state = snap["state"]
        self.pres = snap["pres"]
        self.cand = snap["cand"]
        self.cand_t = snap["cand_t"]
        self.sens = jsonc.copy(snap["sens"])
        self.dis_t, self.dis_on = snap["dis"]
        (self.pw, self.pw_t, self.pw_cand, self.pw_cand_t, self.pw_bad, self.pw_miss, self.pw_hi) = snap["pw"]
        self.plug, self.plug_bad, self.plug_miss = snap["plug"]
        self.unk, self.unk_t = snap["unk"]
        self.occ = jsonc.copy(snap["occ"])
        self.pend = jsonc.copy(snap["pend"])


__all__ = [
    "CLASSIFICATIONS",
    "EVENT_TYPES",
    "FUEL_COLOURS",
    "PHASES",
    "PLATE_COLOURS",
    "PLUG_SOURCES",
    "RECORD_TYPE",
    "STATES",
    "UNKNOWN_REASONS",
    "BayMachine",
    "DistanceFilter",
    "default_params",
    "make_params",
    "nev_plate_format",
    "param_spec",
    "validate_params",
]
