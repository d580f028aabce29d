"""The whole site's decisions in one object, shared by both ports.

`SiteCore` owns the meter guard (one pile, one meter), a charging-session tracker per pile
(billing records as OCMF), a bay state machine per monitored bay (occupancy and fees) and the
latest readings.  The port feeds it what it read, with the time; the core returns events and
queues billing records; the port signs, stores and publishes them, and persists `snapshot()`
whenever `version` changes.  No I/O and no clock here, as everywhere in pilecore.

Inputs (all times int Unix seconds):
    reading(now, pile, reading, faults, tsync)   a decoded meter reading (pilecore.planner)
    failure(now, pile, reason)                   a poll cycle that failed
    identity(now, pile, ident, error=None)       a meter identity read
    main_reading(now, reading)                   the site main meter
    bay_inputs(now, bay, raw_samples, raw_plug)  presence sensor values and plug value as read
    plate(now, camera, text, colour)             a plate-reader event
    tick(now)                                    once a second
Outputs:
    returned event lists, `take_billing()` (billing payloads), `telemetry(now)`, `interlocks()`.
"""

from pilecore import bays as _bays
from pilecore import dlt645, metering, modbus, ocmf, sessions
from pilecore import profile as _profile
from pilecore import tariff as _tariff

EVENT_RING = 64
MAIN = metering.MAIN_KEY  # the device key of the site main meter


def _energy_ratio(plan):
    """The product of the transformer ratios a plan's energy value is scaled by, as last read
    from the meter (1 when it has none; None while one is not known)."""
    spec = plan.profile.get("values", {}).get("energy_import") or {}
    ratio = 1
    for name in spec.get("ratios", ()):
        v = getattr(plan, "ratio_values", {}).get(name)
        if not v:
            return None
        ratio *= v
    return ratio


class SiteCore:
    """See the module docstring."""

    def __init__(self, cfg, sign_der, gw_serial, fw_version, state=None):
        st = state or {}
        self.cfg = cfg
        self.sign_der = sign_der
        self.gw_serial = gw_serial
        self.fw_version = fw_version
        self.guard = metering.SiteGuard(cfg, st.get("metering"))
        self.pg = st.get("pg", 0)
        self.tariff = st.get("tariff") or cfg.get("tariff") or _tariff.default_tariff()
        sparams = sessions.make_params(cfg.get("sessions")) if cfg.get("sessions") else None
        snaps = st.get("sessions", {})
        self.sessions = {}
        for pile in cfg["pile"]:
            self.sessions[pile["id"]] = sessions.SessionTracker(pile["id"], sparams, snaps.get(pile["id"]))
        self.latest = {}
        self.applied = {}  # pile -> interlock state last driven by the port
        self.main = None
        self.billing = []
        self.energy_ratio = {}  # pile -> transformer ratio (PT x CT) its energy is scaled by
        self.recent = []
        self.version = 0
        self.bays = {}
        self.bay_cfg = {}
        self.filters = {}
        self.plug_state = {}
        self._init_bays(cfg, st.get("bays", {}))

    def _init_bays(self, cfg, snaps):
        base = {}
        spec = _bays.param_spec()
        for name in spec:
            if name in cfg.get("bays", {}):
                base[name] = cfg["bays"][name]
        for bay in cfg.get("bay", ()):
            self.bay_cfg[bay["id"]] = bay
            if not bay.get("presence"):
                continue  # listed only: nothing to judge occupancy from
            params = dict(base)
            params["plug_source"] = (bay.get("plug") or {}).get("source", "power")
            params = _bays.make_params(params)
            self.bays[bay["id"]] = _bays.BayMachine(bay["id"], bay["pile"], params, self.tariff, snaps.get(bay["id"]))
            filters = []
            for k, sensor in enumerate(bay["presence"]):
                prof = cfg.get("sensor_profiles", {}).get(sensor.get("profile"))
                if sensor["type"] == "modbus" and prof and prof.get("measures") == "distance":
                    filters.append(_bays.DistanceFilter(params, bay["id"], k))
                else:
                    filters.append(None)
            self.filters[bay["id"]] = filters

    # ------------------------------------------------------------ bookkeeping

    def _note(self, events):
        if events:
            self.version += 1
            for ev in events:
                self.recent.append(ev)
            if len(self.recent) > EVENT_RING:
                del self.recent[: len(self.recent) - EVENT_RING]
        return events

    def snapshot(self):
        return {
            "metering": self.guard.snapshot(),
            "pg": self.pg,
            "tariff": self.tariff,
            "sessions": dict([(p, t.snapshot()) for p, t in self.sessions.items()]),
            "bays": dict([(b, m.snapshot()) for b, m in self.bays.items()]),
        }

    def take_billing(self):
        out, self.billing = self.billing, []
        return out

    # ------------------------------------------------------------ meters

    def reading(self, now, pile, reading, faults=(), tsync="none"):
        events, accepted = self.guard.reading(now, pile, reading, faults)
        if accepted:
            r = dict(reading)
            r["t"] = now
            self.latest[pile] = r
            self._session_step(now, pile, r, tsync)
        return self._note(events)

    def poll_done(self, now, key, res, plan, tsync="none"):
        """A finished poll cycle of a meter (a pile id, or MAIN), as the bus scheduler reports it.

        Returns (reading or None, error text or None, events, faults): the reading (with "t")
        only when the guard accepted it; a failed cycle gives its Modbus error; faults and
        rejections give their reasons.
        """
        if not res["ok"]:
            error = modbus.RESULT_NAMES[res["code"]] if res["code"] is not None else "failed"
            return None, error, ([] if key == MAIN else self.failure(now, key, error)), []
        reading, faults = plan.decode(res["blocks"])
        ratio = _energy_ratio(plan)
        if ratio is not None and "energy_import" in plan.profile.get("values", {}):
            # the main-meter balance allows for each meter's step (pilecore.metering._balance)
            step = _profile.energy_step_wh(plan.profile, ratio)
            self.guard.set_energy_step(metering.MAIN_KEY if key == MAIN else key, step)
        if key == MAIN:
            events = self.main_reading(now, reading)
            return self.main, None, events, faults
        if ratio is not None:
            self.energy_ratio[key] = ratio  # the PT x CT the energy was scaled by, for billing
        before = self.latest.get(key)
        events = self.reading(now, key, reading, faults, tsync)
        if self.latest.get(key) is before:
            why = "; ".join(["%s: %s" % (n, w) for n, w in faults]) if faults else "see events"
            return None, "reading rejected (%s)" % why, events, faults
        error = "; ".join(["%s: %s" % (n, w) for n, w in faults]) if faults else None
        return self.latest[key], error, events, faults

    def failure(self, now, pile, reason):
        return self._note(self.guard.failure(now, pile, reason))

    def identity(self, now, pile, ident, error=None):
        return self._note(self.guard.identity(now, pile, ident, error))

    def identity_result(self, now, pile, code, regs):
        """The answer to an identity read of a pile's meter: (identity or None, events)."""
        prof = self.guard.piles[pile].profile
        if code != modbus.OK:
            proto = dlt645 if prof.get("protocol") == "dlt645" else modbus
            return None, self.identity(now, pile, None, proto.describe(code, regs))
        try:
            ident = metering.decode_identity(prof.get("identity", {}), regs)
        except ValueError as exc:
            return None, self.identity(now, pile, None, str(exc))
        return ident, self.identity(now, pile, ident)

    def identity_requests(self, now, hold_s):
        """Piles whose identity check is due now; each is held for `hold_s` so it is not asked
        again while the read runs (its answer, identity_result, sets the next date)."""
        due = self.guard.identity_due(now)
        for pile in due:
            self.guard.piles[pile].identity_due_at = now + hold_s
        return due

    def main_reading(self, now, reading):
        r = dict(reading)
        r["t"] = now
        self.main = r
        return self._note(self.guard.main_reading(now, reading.get("energy_wh")))

    def _session_step(self, now, pile, r, tsync):
        g = self.guard.piles[pile]
        reasons = list(g.reasons)
        if reasons == ["unverified"]:
            return  # just started: the identity check comes within seconds, wait for it
        tracker = self.sessions[pile]
        before = tracker.version
        done = tracker.step(
            now,
            r.get("energy_wh"),
            r.get("power_w"),
            self.plug_state.get(pile),
            unmetered=reasons or False,
            sync=tsync == "ntp" or tsync == "platform",
            serial=g.bound,
        )
        if tracker.version != before:
            self.version += 1
        if done is not None:
            self._bill_session(now, pile, done)

    def _bill_session(self, now, pile, session):
        m = None
        for p in self.cfg["pile"]:
            if p["id"] == pile:
                m = p["meter"]
        prof = self.cfg["profiles"][m["profile"]]
        # RV at the meter's resolution, derived from what its energy register really delivers
        # (type, scale, decimals): a kWh float is not a 1 kWh resolution (issue 9, defect #8)
        step = _profile.energy_step_wh(prof, self.energy_ratio.get(pile, 1))
        resolution = ocmf.resolution_for_step(step)
        self.pg += 1
        ctx = {
            "GS": self.gw_serial,
            "GI": "pilegate",
            "GV": self.fw_version,
            "PG": self.pg,
            "MV": prof.get("maker", ""),
            "MM": prof.get("model", ""),
            "MS": session.get("meter_serial") or m.get("serial") or "",
            "resolution_wh": resolution,
            "RT": "AC",
            "CI": pile,
        }
        try:
            text = ocmf.build(session, ctx, self.sign_der)
        except ValueError as exc:
            self._note([{"type": "billing.failed", "pile": pile, "t": now, "reason": str(exc)}])
            return
        self.billing.append({"type": "session", "pile": pile, "ocmf": text, "session": session})
        self.version += 1

    # ------------------------------------------------------------ bays

    def bay_inputs(self, now, bay_id, raw_samples, raw_plug=None):
        """Raw values as read: per presence sensor mm / register value / input level (or None),
        and the plug register value or input level (or None).  Returns events and records;
        occupancy records are also queued for billing."""
        bay = self.bay_cfg[bay_id]
        machine = self.bays.get(bay_id)
        plug = self._plug_value(bay, raw_plug)
        if plug is not None:
            self.plug_state[bay["pile"]] = plug
            self.guard.charging(bay["pile"], plug)
        if machine is None:
            return []
        samples = []
        out = []
        for k, sensor in enumerate(bay["presence"]):
            raw = raw_samples[k] if k < len(raw_samples) else None
            f = self.filters[bay_id][k]
            if f is not None:
                value, evs = f.feed(now, raw)
                out += evs
            elif raw is None:
                value = None
            elif sensor["type"] == "input":
                value = (raw == 1) == (sensor.get("active", "high") == "high")
            else:
                prof = self.cfg["sensor_profiles"][sensor["profile"]]
                value = raw in prof.get("present_values", [1])
            samples.append(value)
        # the machine judges the reading's age against the bay's hold_s (issue 9, defect #9)
        last = self.latest.get(bay["pile"]) or {}
        out += machine.step(now, samples, plug, last.get("power_w"), last.get("t"))
        return self._bay_outputs(out)

    def plate(self, now, camera, text, colour):
        out = []
        for bay_id, bay in self.bay_cfg.items():
            if bay.get("camera") == camera and bay_id in self.bays:
                out += self.bays[bay_id].plate(now, text, colour)
        return self._bay_outputs(out)

    def _bay_outputs(self, items):
        events = []
        for item in items:
            if item.get("type") == "occupancy":
                self.billing.append(item)
                self.version += 1
            else:
                events.append(item)
        return self._note(events)

    @staticmethod
    def _plug_value(bay, raw):
        plug = bay.get("plug") or {}
        src = plug.get("source", "power")
        if raw is None or src == "power":
            return None
        if src == "input":
            return (raw == 1) == (plug.get("active", "high") == "high")
        return raw in plug.get("plugged_values", [1])

    def set_tariff(self, t):
        problems = _tariff.validate_tariff(t)
        if problems:
            return "; ".join(["%s: %s" % (k, m) for k, m in problems])
        self.tariff = t
        for machine in self.bays.values():
            machine.set_tariff(t)
        self.version += 1
        return ""

    # ------------------------------------------------------------ time and outputs

    def tick(self, now):
        return self._note(self.guard.tick(now))

    def interlocks(self):
        return self.guard.interlocks()

    def interlock_changes(self, now):
        """([(pile, on)] to drive now, events): only what differs from what was last driven.
        The port switches the relay or coil; when that fails it calls interlock_failed, and the
        change is tried again on the next call."""
        changes, events = [], []
        wanted = self.guard.interlocks()
        for pile in wanted:
            on = wanted[pile]
            if self.applied.get(pile) == on:
                continue
            self.applied[pile] = on
            changes.append((pile, on))
            events.append(
                {
                    "type": "interlock.on" if on else "interlock.off",
                    "pile": pile,
                    "t": now,
                    "reasons": list(self.guard.piles[pile].reasons),
                }
            )
        return changes, self._note(events)

    def interlock_failed(self, now, pile, reason):
        self.applied.pop(pile, None)
        return self._note([{"type": "interlock.failed", "pile": pile, "t": now, "reason": reason}])

    def bays_version(self):
        v = 0
        for m in self.bays.values():
            v += m.version
        return v

    def telemetry(self, now, since, interval_s):
        """The content of one telemetry message: every pile (and bay), never a made-up value."""
        piles = []
        for p in self.cfg["pile"]:
            st = self.guard.status(p["id"])
            item = {"pile": p["id"], "serial": st["serial"], "metered": st["metered"]}
            if not st["metered"]:
                item["reasons"] = st["reasons"]
            r = self.latest.get(p["id"])
            if r is None:
                item["stale"] = True
            else:
                for k in r:
                    item[k] = r[k]
                if r["t"] <= since:
                    item["stale"] = True
            if self.sessions[p["id"]].active:
                item["session"] = True
            piles.append(item)
        data = {"interval_s": interval_s, "piles": piles}
        if self.main is not None:
            data["main"] = self.main
        if self.bays:
            data["bays"] = [self.bays[b].status(now) for b in sorted(self.bays)]
        return data
