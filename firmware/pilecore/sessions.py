"""Charging sessions of one pile, and the meter readings that bill them.

`SessionTracker` turns the stream of a pile's readings into finished sessions: each one
carries the pile's own meter reading at its begin and at its end, which is what a billing
record (OCMF, see pilecore.ocmf) signs.  No I/O, no clock: the port calls `step` with the time.

When a session starts and ends:
  - With a plug state (plug True/False): a session starts when the plug connects (False or
    unknown -> True) and ends when it disconnects (True -> False).  While plugged, power does
    not end a session: a car may pause charging and resume.
  - Without one (plug None on that step): power decides.  A session starts once power has been
    at or above start_power_w for start_after_s, and ends once it has been below stop_power_w
    for stop_after_s (hysteresis: stop_power_w <= start_power_w).  A step with power None
    neither confirms nor breaks a debounce window.  Plug False always ends a session and keeps
    a new one from starting.
  - The debounce windows must be watched: a gap between steps longer than max_gap_s, or a clock
    that steps backwards, restarts them.

Which readings:
  - Begin: for a plug start, the reading of that step.  For a power start, the last reading
    taken before power was first seen above start_power_w (it includes all of the charge),
    if it is at most max_gap_s older than that step; else the reading of that step.  If the
    step had no valid reading (energy_wh None), the freshest one within max_gap_s; failing
    that, the first valid reading afterwards, and the session is flagged "no_reading".
  - End: the reading of the step that ends the session; else the latest reading of the session
    if it is at most max_gap_s old; else the latest one of any age, flagged "no_reading".
  - A reading is {"t", "wh", "sync", "serial", "flags"}: int Unix seconds, int Wh (None only
    for a session that never had a valid reading), the OCMF time-sync letter (see
    pilecore.civiltime.sync_status), the meter serial the port read (or None) and the
    unmetered reasons of that step.

Honesty (never a clean record for a dirty session): every step takes `unmetered` (False/None,
True, a reason string or a list of them: the reasons of pilecore.metering, e.g. "unverified",
"offline", "swapped", "energy_backwards").  Every reason seen from the begin reading to the end
reading lands in the session's "flags", together with what the tracker sees itself:
  swapped           the meter serial changed during the session
  energy_backwards  a reading was lower than the one before it in the session
  no_reading        the begin or end reading could not be taken when the session began/ended
  clock_backwards   the clock stepped back during the session (times are not trustworthy)
  unmetered         the port said unmetered without a reason (unmetered=True)
A session is "metered" only when no flag other than clock_backwards was raised.

Finished session (returned by `step` when a session ends):
  {"pile", "start": reading, "end": reading, "energy_wh": end.wh - start.wh (None when either
   is None), "meter_serial": first serial seen in the session, "reason": "unplugged" | "power",
   "started_by": "plug" | "power", "flags": [...], "metered": bool}

Persistence: `snapshot()` is a small JSON-safe dict; SessionTracker(pile, params, snapshot)
continues where it left off, so a session in progress across a power cut ends with its true
begin reading.  `version` grows whenever the snapshot changed in a way that matters (session
begun/ended, flags, debounce windows, plug state); the port persists on change.  The latest
readings are not counted as such changes: a stale copy of them is harmless.
"""

from pilecore import jsonc
from pilecore import params as _params

SNAPSHOT_VERSION = 1
END_REASONS = ("unplugged", "power")
START_REASONS = ("plug", "power")
TIME_FLAGS = ("clock_backwards",)


def param_spec():
    """{name: (default, min, max, unit, doc)} for every session parameter.

    The single source of truth for the site-config schema; reasons for each default are in
    docs/ocmf.md.
    """
    return {
        "start_power_w": (
            300,
            1,
            1000000,
            "W",
            "without a plug state, power at or above this for start_after_s starts a session",
        ),
        "start_after_s": (
            30,
            0,
            3600,
            "s",
            "how long power must stay at or above start_power_w before a session starts",
        ),
        "stop_power_w": (
            100,
            1,
            1000000,
            "W",
            "without a plug state, power below this for stop_after_s ends a session (must not exceed start_power_w)",
        ),
        "stop_after_s": (
            300,
            0,
            86400,
            "s",
            "how long power must stay below stop_power_w before the session ends; "
            "long enough that a car pausing its charge stays one session",
        ),
        "max_gap_s": (
            90,
            1,
            3600,
            "s",
            "a reading older than this is not taken as a begin or end reading, and a "
            "gap between steps longer than this restarts the debounce windows",
        ),
    }


def default_params():
    """The default value of every parameter in param_spec()."""
    return _params.defaults(param_spec())


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def validate_params(params):
    """Problems of a (possibly partial) parameter dict as a list of (key, message).

    Missing keys take their defaults; the cross-checks apply to the merged values.
    """
    probs, merged = _params.check(params, param_spec(), "session")
    if probs and probs[0][0] == "":
        return probs
    if merged["stop_power_w"] > merged["start_power_w"]:
        probs.append(("stop_power_w", "must not exceed start_power_w (%d)" % merged["start_power_w"]))
    return probs


def make_params(params=None):
    """Defaults overlaid with `params`; raises ValueError listing every problem."""
    return _params.make(params, param_spec(), validate_params, "session")


def _flags(unmetered):
    """The list of reason strings of a step's `unmetered` argument."""
    if unmetered is None or unmetered is False:
        return []
    if unmetered is True:
        return ["unmetered"]
    if isinstance(unmetered, str):
        return [unmetered]
    if isinstance(unmetered, (list, tuple)):
        out = []
        for r in unmetered:
            if not isinstance(r, str):
                raise ValueError("unmetered reasons must be strings, got %r" % (r,))
            if r not in out:
                out.append(r)
        return out
    raise ValueError("unmetered must be a bool, a reason or a list of reasons, got %r" % (unmetered,))


def _sync(sync):
    if sync is True:
        return "S"
    if sync is False or sync is None:
        return "U"
    if sync in ("S", "U", "I", "R"):
        return sync
    raise ValueError("sync must be a bool or one of S, U, I, R, got %r" % (sync,))


class SessionTracker:
    """Charging sessions of one pile; see the module docstring.

    SessionTracker(pile_id, params=None, snapshot=None): params is a (partial) dict checked by
    validate_params (None = defaults); snapshot resumes a tracker saved by snapshot() (its pile
    must match; ValueError otherwise).
    """

    def __init__(self, pile_id, params=None, snapshot=None):
        self.pile = pile_id
        self.p = make_params(params)
        self.version = 0
        self.t = None  # latest step time
        self.plug = None  # latest known plug state (None steps do not change it)
        self.prev = None  # latest valid reading (before the current step)
        self.run_t = None  # power at or above start_power_w since (session not active)
        self.run_rd = None  # begin reading candidate of that run
        self.run_fl = []  # unmetered reasons seen during that run
        self.low_t = None  # power below stop_power_w since (session active)
        self.sess = None  # session in progress
        if snapshot is not None:
            self._load(snapshot)

    # ----------------------------------------------------------------- public

    @property
    def active(self):
        """True while a session is in progress."""
        return self.sess is not None

    def current(self):
        """The session in progress as {"started_by", "t0", "start", "flags", "meter_serial"}
        (a copy; "start" may still lack its reading, see no_reading), or None."""
        s = self.sess
        if s is None:
            return None
        return {
            "started_by": s["why"],
            "t0": s["t0"],
            "start": jsonc.copy(s["start"]),
            "flags": list(s["flags"]),
            "meter_serial": s["serial"],
        }

    def step(self, now, energy_wh, power_w=None, plug=None, unmetered=False, sync=None, serial=None):
        """Feed one reading; return the finished session dict when this step ends one, else None.

        now: int Unix seconds.  energy_wh: the meter's import energy register in Wh (int), or
        None when this step has no valid reading.  power_w: active power (W) or None.
        plug: True/False, or None when the pile's plug state is unknown or not available.
        unmetered: False/None, True, a reason or a list of reasons (see the module docstring).
        sync: time-sync state of the port's clock: True ("S"), False/None ("U") or a letter
        S/U/I/R.  serial: the meter serial the port knows for this pile, or None.
        """
        now = int(now)
        if energy_wh is not None and (not _is_int(energy_wh) or energy_wh < 0):
            raise ValueError("energy_wh must be a non-negative int or None, got %r" % (energy_wh,))
        if plug is not None and plug is not True and plug is not False:
            raise ValueError("plug must be True, False or None, got %r" % (plug,))
        flags = _flags(unmetered)
        sync = _sync(sync)
        rd = None
        if energy_wh is not None:
            rd = {"t": now, "wh": energy_wh, "sync": sync, "serial": serial, "flags": flags}
        p = self.p
        if self.t is not None and (now < self.t or now - self.t > p["max_gap_s"]):
            # Debounce windows must be watched from end to end: after a gap or a clock step
            # they start again.
            if now < self.t and self.sess is not None:
                self._flag("clock_backwards")
            self._reset_run()
            self._set_low(None)
        self.t = now
        done = None
        if self.sess is not None:
            self._observe(rd, flags)
            why = self._end_reason(now, power_w, plug)
            if why is not None:
                done = self._finish(now, rd, why, sync, serial, flags)
        else:
            why, begin, earlier = self._start_reason(now, rd, power_w, plug, flags)
            if why is not None:
                self._begin(now, why, begin, rd, sync, serial, flags)
                for f in earlier:
                    self._flag(f)
        if plug is not None and plug != self.plug:
            self.plug = plug
            self.version += 1
        if rd is not None:
            self.prev = rd
        return done

    def snapshot(self):
        """Everything needed to resume, as a small JSON-safe dict (a copy)."""
        return {
            "v": SNAPSHOT_VERSION,
            "pile": self.pile,
            "t": self.t,
            "plug": self.plug,
            "prev": jsonc.copy(self.prev),
            "run": [self.run_t, jsonc.copy(self.run_rd), list(self.run_fl)],
            "low_t": self.low_t,
            "sess": jsonc.copy(self.sess),
        }

    # ----------------------------------------------------------------- internals

    def _load(self, snap):
        if not isinstance(snap, dict) or snap.get("v") != SNAPSHOT_VERSION:
            raise ValueError("not a session snapshot of version %d" % SNAPSHOT_VERSION)
        if snap.get("pile") != self.pile:
            raise ValueError("snapshot is for pile %r, not %r" % (snap.get("pile"), self.pile))
        self.t = snap["t"]
        self.plug = snap["plug"]
        self.prev = jsonc.copy(snap["prev"])
        self.run_t = snap["run"][0]
        self.run_rd = jsonc.copy(snap["run"][1])
        self.run_fl = list(snap["run"][2])
        self.low_t = snap["low_t"]
        self.sess = jsonc.copy(snap["sess"])

    def _fresh(self, rd, now):
        """rd if it is a reading taken at most max_gap_s before now (not after it), else None."""
        if rd is not None and 0 <= now - rd["t"] <= self.p["max_gap_s"]:
            return rd
        return None

    def _reset_run(self):
        if self.run_t is not None or self.run_rd is not None or self.run_fl:
            self.run_t = None
            self.run_rd = None
            self.run_fl = []
            self.version += 1

    def _set_low(self, t):
        if self.low_t != t:
            self.low_t = t
            self.version += 1

    def _flag(self, f):
        fl = self.sess["flags"]
        if f not in fl:
            fl.append(f)
            self.version += 1

    def _start_reason(self, now, rd, power_w, plug, flags):
        """(why, begin reading or None, earlier reasons) when a session starts at this step,
        else (None, None, None).  The earlier reasons are those of the debounce run."""
        if plug is False:
            self._reset_run()
            return None, None, None
        if plug is True and self.plug is not True:
            self._reset_run()
            return "plug", rd or self._fresh(self.prev, now), []
        if power_w is None:
            return None, None, None
        p = self.p
        if power_w < p["start_power_w"]:
            self._reset_run()
            return None, None, None
        if self.run_t is None:
            # The last reading before power rose holds none of this charge: bill from it.
            self.run_t = now
            self.run_rd = self._fresh(self.prev, now) or rd
            self.version += 1
        for f in flags:
            if f not in self.run_fl:
                self.run_fl.append(f)
                self.version += 1
        if now - self.run_t >= p["start_after_s"]:
            begin = self.run_rd or rd or self._fresh(self.prev, now)
            earlier = self.run_fl
            self._reset_run()
            return "power", begin, earlier
        return None, None, None

    def _begin(self, now, why, begin, rd, sync, serial, flags):
        pending = begin is None
        if pending:
            # No reading to begin with: keep a placeholder, filled by the next valid reading.
            begin = {"t": now, "wh": None, "sync": sync, "serial": serial, "flags": flags}
        self.sess = {
            "t0": now,
            "why": why,
            "start": jsonc.copy(begin),
            "last": None,
            "serial": begin["serial"],
            "flags": [],
        }
        self.version += 1
        self._set_low(None)
        if pending:
            self._flag("no_reading")
        else:
            self.sess["last"] = jsonc.copy(begin)
            for f in begin["flags"]:
                self._flag(f)
        if rd is not begin:
            self._observe(rd, flags)

    def _observe(self, rd, flags):
        """Account one step of the session in progress: its flags and its reading."""
        s = self.sess
        for f in flags:
            self._flag(f)
        if rd is None:
            return
        if rd["serial"] is not None:
            if s["serial"] is None:
                s["serial"] = rd["serial"]
                self.version += 1
            elif rd["serial"] != s["serial"]:
                self._flag("swapped")
        if s["start"]["wh"] is None:
            s["start"] = jsonc.copy(rd)
            s["last"] = jsonc.copy(rd)
            self.version += 1
            return
        last = s["last"]
        if last is not None and rd["wh"] < last["wh"]:
            self._flag("energy_backwards")
        s["last"] = jsonc.copy(rd)

    def _end_reason(self, now, power_w, plug):
        if plug is False:
            return "unplugged"
        if plug is True:
            self._set_low(None)
            return None
        if power_w is None:
            return None
        if power_w >= self.p["stop_power_w"]:
            self._set_low(None)
            return None
        if self.low_t is None:
            self._set_low(now)
        if now - self.low_t >= self.p["stop_after_s"]:
            return "power"
        return None

    def _finish(self, now, rd, why, sync, serial, flags):
        s = self.sess
        end = rd or self._fresh(s["last"], now)
        if end is None:
            self._flag("no_reading")
            end = s["last"]
            if end is None:
                end = {"t": now, "wh": None, "sync": sync, "serial": serial, "flags": flags}
        start = s["start"]
        energy = None
        if start["wh"] is not None and end["wh"] is not None:
            energy = end["wh"] - start["wh"]
        metered = True
        for f in s["flags"]:
            if f not in TIME_FLAGS:
                metered = False
        done = {
            "pile": self.pile,
            "start": jsonc.copy(start),
            "end": jsonc.copy(end),
            "energy_wh": energy,
            "meter_serial": s["serial"],
            "reason": why,
            "started_by": s["why"],
            "flags": list(s["flags"]),
            "metered": metered,
        }
        self.sess = None
        self._set_low(None)
        self._reset_run()
        self.version += 1
        return done
