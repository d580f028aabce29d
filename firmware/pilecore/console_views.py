"""What the console's read commands show, and the settings it may change: once, for both ports.

`ViewBackend` implements the console backend interface (pilecore.console) over a small
port-neutral interface, so each port's backend is a thin adapter that subclasses it and says
where its facts are.  The field names here are the contract of docs/console.md; the port parity
test (tests/gateway/test_console_parity.py) checks that both ports answer with exactly them.

What a port provides (attributes and methods of the subclass):

    cfg                  the compiled site configuration (dict)
    core                 the pilecore.site.SiteCore the port runs
    now()                wall-clock time, int Unix seconds
    port_status()        {"firmware", "platform", "uptime_s", "time_sync", "mem_free",
                          "mem_total", "kid", "config_hash", "epoch", "seq"}
    meter_state(pile)    the port's meter record (attributes bus, address, profile, identity,
                         reading, error, polls, failures) or None
    schedulers()         {bus name: pilecore.scheduler.Scheduler}
    link_status()        {"connected", "connects", "last_error", "last_publish_t", "outbox"}
    storage_status()     the SiteDriver's `storage` record: is the outbox refusing, since when,
                         why, and what was not stored or given up meanwhile
    oldest_unsent()      the oldest unacknowledged outbox record (seq, kind, topic, JWS bytes)
                         or None
    log_lines()          [{"t", "level", "msg"}], oldest first (level: debug|info|warning|error)
    recent_events()      the recent events, oldest first
    setting_values()     {key: value} for every key of SETTINGS
    apply_setting(key, value)   apply (and persist) a value already checked against SETTINGS
    interlocks_changed() drive relays/coils now after an override (the core decided what)
    keys(), selftest(), reboot(), factory_reset(), audit(event), mbread(d), scan(d),
    cancel(d), and on the ESP32 repl()     (as in docs/console.md)

Times are int Unix seconds here (the console shows them as ISO 8601 UTC in text); nothing in a
view is made up: a value the port does not have is None.
"""

from pilecore import envelope
from pilecore.console_cmds import LOG_LEVELS, filter_log
from pilecore.console_text import BAY_FIELDS, MQTT_FIELDS, STATUS_FIELDS

# key -> (kind, low, high, what it does); "level" is one of LOG_LEVELS.  The whitelist of
# docs/console.md: a key not here cannot be changed from the console.
SETTINGS = {
    "console.idle_logout_s": ("int", 30, 86400, "seconds without a command before a technician logs out"),
    "log.level": ("level", None, None, "the lowest level of log lines kept: debug, info, warning, error"),
    "metering.poll_s": ("int", 1, 3600, "seconds between polls of every meter"),
    "telemetry.interval_s": ("int", 1, 3600, "seconds between telemetry messages"),
}

STORAGE_FIELDS = ("full", "since", "reason", "telemetry_not_stored", "events_given_up", "keep_given_up")
METER_FIELDS = (
    "pile",
    "profile",
    "bus",
    "address",
    "serial",
    "identity",
    "state",
    "metered",
    "faults",
    "error",
    "t",
    "values",
    "polls",
    "failures",
    "stats",
)


def parse_setting(key, text):
    """(value, "") for a valid text value of a whitelisted key, else (None, why)."""
    spec = SETTINGS.get(key)
    if spec is None:
        return None, "not a setting (settable: %s)" % ", ".join(sorted(SETTINGS))
    kind, lo, hi = spec[0], spec[1], spec[2]
    if kind == "level":
        if text not in LOG_LEVELS:
            return None, "%s is one of %s" % (key, ", ".join(LOG_LEVELS))
        return text, ""
    if not text.isdigit() or not lo <= int(text) <= hi:
        return None, "%s must be a whole number from %d to %d" % (key, lo, hi)
    return int(text), ""


def record_time(record):
    """The `t` of a stored outbox record's payload (seq, kind, topic, JWS bytes), or None."""
    import json

    try:
        payload = envelope.split(record[3])[1]
        t = json.loads(payload).get("t")
    except Exception:  # a record we cannot read has no time to show, which is not an error here
        return None
    return t if isinstance(t, int) else None


def _pick(src, fields):
    out = {}
    for k in fields:
        out[k] = src.get(k)
    return out


class ViewBackend:
    """The console backend, less what only a port knows (see the module docstring)."""

    # ------------------------------------------------------------ read-only views

    def status(self):
        info = self.port_status()
        gw = self.cfg["gateway"]
        out = _pick(info, STATUS_FIELDS)
        out["gateway"] = gw["id"]
        out["site"] = gw["site"]
        out["board"] = gw["board"]
        out["time"] = self.now()
        out["storage"] = _pick(self.storage_status(), STORAGE_FIELDS)
        return out

    def piles(self):
        return [self._pile_row(p) for p in self.cfg["pile"]]

    def _pile_row(self, p):
        core = self.core
        pid = p["id"]
        st = core.guard.status(pid)
        r = core.latest.get(pid) or {}
        power = r.get("power_w")
        if st["offline"]:
            state = "offline"
        elif core.sessions[pid].active:
            state = "charging"
        elif power is None:
            state = "unknown"
        else:
            state = "idle"
        return {
            "id": pid,
            "name": p.get("name", ""),
            "state": state,
            "power_w": power,
            "energy_wh": r.get("energy_wh"),
            "t": r.get("t"),
            "bus": p["meter"]["bus"],
            "address": p["meter"]["address"],
            "serial": st["serial"],
            "metered": st["metered"],
            "interlock": self._interlock(p),
            "faults": st["reasons"],
        }

    def _interlock(self, p):
        """report | auto (on) | auto (off) | on | off (a technician's override)."""
        if p.get("interlock", "report") != "relay":
            return "report"
        mode = self.core.guard.overrides.get(p["id"])
        if mode is None:
            return "auto (%s)" % ("on" if self.core.applied.get(p["id"]) else "off")
        return "on" if mode else "off"

    def meter(self, pile):
        pcfg = None
        for p in self.cfg["pile"]:
            if p["id"] == pile:
                pcfg = p
        m = self.meter_state(pile) if pcfg is not None else None
        if m is None:
            return None
        st = self.core.guard.status(pile)
        reading = dict(m.reading) if m.reading else {}
        t = reading.pop("t", None)
        dev = self.schedulers()[m.bus].device(pile) if m.bus in self.schedulers() else None
        return {
            "pile": pile,
            "profile": pcfg["meter"]["profile"],
            "bus": m.bus,
            "address": m.address,
            "serial": st["serial"],
            "identity": m.identity,
            "state": "offline" if st["offline"] else "online",
            "metered": st["metered"],
            "faults": st["reasons"],
            "error": m.error,
            "t": t,
            "values": reading,
            "polls": m.polls,
            "failures": m.failures,
            "stats": dev.stats() if dev is not None else {},
        }

    def bays(self):
        now = self.now()
        out = []
        for b in self.cfg.get("bay", ()):
            mach = self.core.bays.get(b["id"])
            st = mach.status(now) if mach is not None else {"state": "unmonitored"}
            row = _pick(st, BAY_FIELDS)
            row["bay"] = b["id"]
            row["pile"] = b["pile"]
            out.append(row)
        return out

    def bay(self, bay_id):
        for b in self.cfg.get("bay", ()):
            if b["id"] == bay_id:
                mach = self.core.bays.get(bay_id)
                if mach is None:
                    return {"bay": bay_id, "pile": b["pile"], "state": "unmonitored"}
                return mach.status(self.now())
        return None

    def events(self, n):
        evs = list(self.recent_events())
        return evs[-n:] if n > 0 else []

    def mqtt(self):
        out = _pick(self.link_status(), MQTT_FIELDS)
        out["broker"] = self.cfg["mqtt"]["url"]
        out["seq"] = self.port_status().get("seq")
        rec = self.oldest_unsent()
        out["oldest_unsent_seq"] = rec[0] if rec else None
        out["oldest_unsent_t"] = record_time(rec) if rec else None
        return out

    def bus(self):
        scheds = self.schedulers()
        out = {}
        for name in scheds:
            out[name] = scheds[name].snapshot()
        return out

    def log(self, level=None):
        return filter_log(self.log_lines(), level)

    # ------------------------------------------------------------ settings and interlocks

    def settings(self):
        vals = self.setting_values()
        out = {}
        for k in SETTINGS:
            out[k] = vals.get(k)
        return out

    def set_setting(self, key, value):
        v, why = parse_setting(key, value)
        if why:
            return False, why
        self.apply_setting(key, v)
        return True, "applied"

    def set_meter_poll_s(self, poll_s):
        """Every pile meter polled every poll_s seconds from its next cycle (metering.poll_s)."""
        scheds = self.schedulers()
        for p in self.cfg["pile"]:
            bus = p["meter"]["bus"]
            if bus in scheds:
                scheds[bus].set_poll_ms(p["id"], poll_s * 1000)

    def interlock(self, pile, mode):
        ok, msg = self.core.guard.override(pile, mode)
        if ok:
            self.interlocks_changed()
        return ok, msg
