"""The console backend of the ESP32 gateway: what `pilecore.console` shows and changes.

Every answer is read from the running `App` (the same state the main loop uses); raw reads and
scans are queued on the bus schedulers as jobs, so they never talk over a poll.  Settings that a
technician may change: `telemetry.interval_s`, `metering.poll_s`, `log.level` (persisted).
Privileged actions (`interlock`, `reboot`, `factory-reset`, `repl`) are audited by the console
through `audit()`, which the gateway signs and publishes as an event.
"""

from pilecore import modbus
from pilecore.console import LOG_LEVELS
from pilecore.scheduler import PRIO_INTERACTIVE
from pilefw.metering import Scan

SETTINGS = ("telemetry.interval_s", "metering.poll_s", "log.level")


class ConsoleBackend:
    """See the module docstring."""

    def __init__(self, app):
        self.app = app
        self._scans = {}

    # ------------------------------------------------------------ read-only views

    def status(self):
        a = self.app
        mem = a.hw.mem()
        return {
            "gateway": a.gw,
            "site": a.site_id,
            "firmware": a.fw_version,
            "board": a.board["id"],
            "uptime_s": a.uptime_s(),
            "time": a.clock.now(),
            "time_sync": a.clock.tsync,
            "mem_free": mem[0] if mem else None,
            "mem_total": mem[1] if mem else None,
            "config_hash": a.config_hash,
            "kid": a.keys.kid,
            "epoch": a.epoch,
            "seq": a.chain.seq,
        }

    def _pile_row(self, p):
        a = self.app
        st = a.core.guard.status(p["id"])
        r = a.core.latest.get(p["id"]) or {}
        mode = a.core.guard.overrides.get(p["id"])
        if p.get("interlock", "report") != "relay":
            inter = "report"
        elif mode is None:
            inter = "auto (%s)" % ("on" if a.core.applied.get(p["id"]) else "off")
        else:
            inter = "on" if mode else "off"
        power = r.get("power_w")
        if st["offline"]:
            state = "offline"
        elif a.core.sessions[p["id"]].active:
            state = "charging"
        elif power is None:
            state = "unknown"
        else:
            state = "idle"
        return {
            "id": p["id"],
            "name": p.get("name", ""),
            "state": state,
            "power_w": power,
            "energy_wh": r.get("energy_wh"),
            "bus": p["meter"]["bus"],
            "address": p["meter"]["address"],
            "serial": st["serial"],
            "metered": st["metered"],
            "interlock": inter,
            "faults": st["reasons"],
        }

    def piles(self):
        return [self._pile_row(p) for p in self.app.cfg["pile"]]

    def meter(self, pile):
        a = self.app
        m = a.metering.meters.get(pile)
        if m is None or pile.startswith("_"):
            return None
        st = a.core.guard.status(pile)
        dev = a.metering.scheds[m.bus].device(pile)
        out = {
            "pile": pile,
            "profile": m.profile.get("id", ""),
            "bus": m.bus,
            "address": m.address,
            "serial": st["serial"],
            "identity": m.identity,
            "state": "offline" if st["offline"] else "online",
            "metered": st["metered"],
            "reasons": st["reasons"],
            "error": m.error,
            "values": dict(m.reading) if m.reading else {},
            "polls": m.polls,
            "failures": m.failures,
            "stats": dev.stats() if dev is not None else {},
        }
        for p in a.cfg["pile"]:
            if p["id"] == pile:
                out["profile"] = p["meter"]["profile"]
        if m.reading:
            out["t"] = m.reading.get("t")
            out["values"].pop("t", None)
        return out

    def bays(self):
        a = self.app
        now = a.clock.now()
        out = []
        for b in a.cfg.get("bay", ()):
            mach = a.core.bays.get(b["id"])
            if mach is None:
                out.append({"bay": b["id"], "pile": b["pile"], "state": "not monitored"})
            else:
                st = mach.status(now)
                out.append(
                    {
                        "bay": b["id"],
                        "pile": b["pile"],
                        "state": st.get("state"),
                        "plugged": st.get("plugged"),
                        "charging": st.get("charging"),
                        "arrival": st.get("arrival"),
                        "fee": st.get("fee"),
                    }
                )
        return out

    def bay(self, bay_id):
        a = self.app
        mach = a.core.bays.get(bay_id)
        if mach is not None:
            return mach.status(a.clock.now())
        for b in a.cfg.get("bay", ()):
            if b["id"] == bay_id:
                return {"bay": bay_id, "pile": b["pile"], "state": "not monitored"}
        return None

    def events(self, n):
        return self.app.recent[-n:]

    def mqtt(self):
        a = self.app
        link = a.link
        last = None
        if link.last_publish_ms is not None:
            last = a.clock.now() - (a.ms() - link.last_publish_ms) // 1000
        return {
            "broker": a.cfg["mqtt"]["url"],
            "connected": link.connected,
            "network": a.net_up,
            "last_publish_t": last,
            "outbox": a.outbox.depth(),
            "oldest_unsent_seq": a.outbox.oldest(),
            "seq": a.chain.seq,
            "connects": link.connects,
            "last_error": link.last_error,
        }

    def bus(self):
        return self.app.metering.bus_stats()

    def log(self, level=None):
        lines = self.app.logs
        if level is None:
            return list(lines)
        floor = LOG_LEVELS.index(level)
        return [ln for ln in lines if LOG_LEVELS.index(ln["level"]) >= floor]

    def selftest(self):
        a = self.app
        out = []
        try:
            a.state.save("selftest", {"t": a.clock.now()})
            ok = a.state.load("selftest", {}).get("t") is not None
            a.state.remove("selftest")
            out.append(("flash", ok, "state file written and read back" if ok else "read back failed"))
        except OSError as e:
            out.append(("flash", False, str(e)))
        probe = a.keys.sign_raw(b"selftest")
        out.append(("key", len(probe) == 64, "kid " + a.keys.kid[:16]))
        for name in a.metering.scheds:
            devs = a.metering.scheds[name].devices
            dead = [d.key for d in devs if d.replies == 0 and d.requests > 0]
            out.append(
                (
                    name,
                    not dead,
                    "no answer from " + ", ".join(dead)
                    if dead
                    else "%d device(s) answering" % len([d for d in devs if d.replies]),
                )
            )
        link = a.link
        out.append(("mqtt", link.connected, "connected" if link.connected else (link.last_error or "not connected")))
        return out

    def keys(self):
        return {"kid": self.app.keys.kid, "pem": self.app.keys.pem}

    # ------------------------------------------------------------ settings and actions

    def settings(self):
        a = self.app
        return {"telemetry.interval_s": a.interval_s, "metering.poll_s": a.poll_s, "log.level": a.log_level}

    def set_setting(self, key, value):
        a = self.app
        if key not in SETTINGS:
            return False, "not a setting (settable: %s)" % ", ".join(SETTINGS)
        if key == "log.level":
            if value not in LOG_LEVELS:
                return False, "log.level is one of %s" % ", ".join(LOG_LEVELS)
            a.log_level = value
        else:
            if not value.isdigit():
                return False, "%s must be a whole number of seconds" % key.split(".")[1]
            v = int(value)
            if not 1 <= v <= 3600:
                return False, "%s must be 1-3600" % key.split(".")[1]
            if key == "telemetry.interval_s":
                a.interval_s = v
            else:
                a.poll_s = v
                for sched in a.metering.scheds.values():
                    for dev in sched.devices:
                        if "#" not in dev.key:
                            dev.poll_ms = v * 1000
        a._save_settings()
        return True, "applied"

    def interlock(self, pile, mode):
        a = self.app
        if pile not in a.core.guard.piles:
            return False, "no pile %s" % pile
        if a.core.guard.interlock_mode.get(pile) != "relay":
            return False, "pile %s has no interlock (interlock = report)" % pile
        if mode == "auto":
            a.core.guard.overrides.pop(pile, None)
        else:
            a.core.guard.overrides[pile] = mode == "on"
        a.metering.apply_interlocks()
        return True, "pile %s interlock %s" % (pile, mode)

    def reboot(self):
        a = self.app
        a.link.close(a._state_msg("offline", "rebooting"))
        a.hw.reset()

    def factory_reset(self):
        self.app.factory_reset()

    def repl(self):
        self.app.hw.repl()
        self.app.running = False

    def audit(self, event):
        ev = dict(event)
        ev["t"] = self.app.clock.now()
        self.app.emit([ev])

    # ------------------------------------------------------------ deferred requests

    def mbread(self, d):
        _, bus, addr, fc, reg, count = d.request
        a = self.app
        if bus not in a.metering.scheds:
            raise ValueError("no bus %r (buses: %s)" % (bus, ", ".join(sorted(a.metering.scheds))))
        t0 = a.ms()

        def done(code, payload):
            if code == modbus.OK:
                vals = [int(v) for v in payload]
                d.complete({"values": vals, "elapsed_ms": a.ms() - t0})
            else:
                d.complete({"error": modbus.describe(code, payload)})

        a.metering.request(bus, addr, fc, reg, count, PRIO_INTERACTIVE, done, ("console", d.token))

    def scan(self, d):
        _, bus, first, last = d.request
        a = self.app
        if bus not in a.metering.scheds:
            raise ValueError("no bus %r (buses: %s)" % (bus, ", ".join(sorted(a.metering.scheds))))

        def finished(found):
            self._scans.pop(d.token, None)
            d.complete({"found": found})

        self._scans[d.token] = Scan(
            a.metering, bus, first, last, lambda addr, ok: d.progress({"addr": addr, "answered": ok}), finished
        )

    def cancel(self, d):
        scan = self._scans.pop(d.token, None)
        if scan is not None:
            scan.cancel()
        elif d.request[0] == "mbread":
            self.app.metering.cancel(d.request[1], ("console", d.token))
