"""The console backend of the ESP32 gateway: a thin adapter from the running `App` to the core.

What the console shows and may change is decided once, for both ports, by
`pilecore.console_views.ViewBackend`; this adapter only says where the ESP32's facts are
(the port-neutral interface documented there) and carries out what only the board can do:
self tests, reboot, factory reset, the REPL, and raw reads and scans queued on the bus
schedulers as jobs (so they never talk over a poll).  Settings persist in the state file,
except console.idle_logout_s, which holds until the next restart (docs/console.md).
"""

from pilecore import modbus
from pilecore.console_views import ViewBackend, filter_log
from pilecore.scheduler import PRIO_INTERACTIVE
from pilefw.metering import Scan


class ConsoleBackend(ViewBackend):
    """See the module docstring."""

    def __init__(self, app):
        self.app = app
        self.cfg = app.cfg
        self.core = app.core
        self._scans = {}

    # ------------------------------------------------------------ the port-neutral interface

    def now(self):
        return self.app.clock.now()

    def port_status(self):
        a = self.app
        mem = a.hw.mem()
        return {
            "firmware": a.fw_version,
            "platform": a.board.get("platform", "esp32"),
            "uptime_s": a.uptime_s(),
            "time_sync": a.clock.tsync,
            "mem_free": mem[0] if mem else None,
            "mem_total": mem[1] if mem else None,
            "kid": a.keys.kid,
            "config_hash": a.config_hash,
            "epoch": a.epoch,
            "seq": a.chain.seq,
        }

    def storage_status(self):
        return self.app.driver.storage

    def meter_state(self, pile):
        return self.app.metering.meters.get(pile)

    def schedulers(self):
        return self.app.metering.scheds

    def link_status(self):
        a = self.app
        link = a.link
        last = None
        if link.last_publish_ms is not None:
            last = a.clock.now() - (a.ms() - link.last_publish_ms) // 1000
        return {
            "connected": link.connected,
            "connects": link.connects,
            "last_error": link.last_error,
            "last_publish_t": last,
            "outbox": a.outbox.depth(),
        }

    def oldest_unsent(self):
        seq = self.app.outbox.oldest()
        return self.app.outbox.get(seq) if seq is not None else None

    def log_lines(self):
        return filter_log(self.app.logs, self.app.log_level)

    def recent_events(self):
        return self.app.recent

    def setting_values(self):
        a = self.app
        return {
            "console.idle_logout_s": a.auth.idle_logout_s,
            "log.level": a.log_level,
            "metering.poll_s": a.poll_s,
            "telemetry.interval_s": a.interval_s,
        }

    def apply_setting(self, key, value):
        a = self.app
        if key == "telemetry.interval_s":
            a.interval_s = value
        elif key == "metering.poll_s":
            a.poll_s = value
            self.set_meter_poll_s(value)
        elif key == "log.level":
            a.log_level = value
        elif key == "console.idle_logout_s":
            a.auth.idle_logout_s = value
            return
        a._save_settings()

    def interlocks_changed(self):
        self.app.driver.apply_interlocks(self.app.clock.now())

    # ------------------------------------------------------------ what only the board does

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
