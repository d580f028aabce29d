"""The gateway application, once for both ports: `SiteDriver` (sans-IO, in the manner of h11).

The ports (gateway/pilegate/runtime.py on the Pi, firmware/pilefw/app.py on the ESP32) keep
their transport loops, their outbox storage, their key storage and their drivers.  Everything
the gateway *decides* lives here: the bus schedules and what each reply means, identity checks,
interlocks, bay inputs, birth and telemetry composition, command checking and application
(one answer shape on both ports), the flush contract with the outbox, settings and the
state-save policy.  No I/O, no clock reads, no sleeps: the port passes the time in.

What the port feeds in (all `now` are Unix seconds as the port's clock says, `ms` a monotonic
millisecond count that never wraps):

    next_txn(bus, ms) -> Txn | None          the next Modbus transaction to perform on a bus
    txn_done(bus, txn, ms, now, code, payload, elapsed_ms)    its outcome (reply or timeout)
    second(now, ms, tsync)                   once a second: supervision, identity checks due,
                                             bay inputs, interlocks, telemetry when due,
                                             billing records, state saved by the policy
    started(now, epoch)                      the start: birth, then the gateway.started event
    command(payload, now, ms) -> ack         an MQTT command payload (bytes), answered at once
    emit(events)                             events from the port (the console's audit)
    plate(now, payload)                      a plate-reader message (bytes)
    outbox_dropped(now, [(seq, hash)])       telemetry the outbox thinned (take_dropped())
    seal(now, tsync, hist) -> [Prepared]     sign what waits to be stored ...
    stored(prepared, n, now, why=None)       ... and tell how many of them, from the first, the
                                             outbox stored; `why` says why it refused the rest

What the port is asked to do, through the `port` object it passes in (its hands):

    port.actuate(relay_name, on)             switch a board relay (coils are bus jobs)
    port.read_input(name) -> 0 | 1 | None    a board digital input
    port.set_clock(t) -> offset_s            the platform's `sync_time`
    port.resend(first, last) -> (resent, not_stored)   publish stored messages again, through
                                             the port's MQTT link
    port.save(name, obj)                     persist "core", "settings" or "replay"
    port.log(level, text)                    a log line

and by the answer of `reboot_due(ms, outbox depth)`: restart now.  The console reads the
driver's `meters`, `scheds`, `recent`, `storage` and settings; its jobs go through `request`.

The flush contract (docs/outbox.md "The gateway's side"): events, billing records and acks wait
in memory until the outbox stores them; what it refuses is kept (bounded: EVENTS_HELD, KEEP_HELD;
beyond that the oldest is given up, counted and reported by an event) and offered again at every
flush, so signing resumes by itself when storage accepts again.  Telemetry the outbox refuses is
not kept: the next interval's message carries newer readings; it is counted and the refusal is
declared by an `outbox.full` event (and `outbox.resumed` when storage accepts again).
"""

import json

from pilecore import baydevices, commands, dlt645, metering, modbus, planner, site
from pilecore.config import parse_mqtt_url  # noqa: F401  (the ports' one URL parser)
from pilecore.scheduler import PRIO_BACKGROUND, PRIO_INTERACTIVE, BusScheduler, char_time_us

MAIN = site.MAIN
REBOOT_GRACE_S = 5  # a reboot waits this long at most for the outbox to drain (its ack first)
SAVE_EVERY_S = 10  # core state is saved at most this often, except after billing or a tariff
EVENT_RING = 100  # recent events kept for the console
EVENTS_HELD = 200  # events kept in memory while the outbox refuses them
KEEP_HELD = 64  # billing records and acks kept in memory while the outbox refuses them
EVENTS_PER_MESSAGE = 32  # one event message stays far below an outbox segment
IDENTITY_HOLD_S = 60  # an identity check is not queued again while one runs
FIRST_TELEMETRY_S = 5  # the first telemetry after start comes this soon at most


class Meter:
    """A polled meter (pile id, or MAIN) and what was last learned from it."""

    def __init__(self, key, bus, address, profile, plan):
        self.key = key
        self.bus = bus
        self.address = address
        self.profile = profile
        self.plan = plan
        self.reading = None
        self.error = None
        self.identity = None
        self.identity_error = None  # why the last identity read failed, if it did
        self.polls = 0
        self.failures = 0
        self.faults = []


class SiteDriver:
    """See the module docstring.

    cfg        the compiled site configuration
    core       pilecore.site.SiteCore (restored from the port's saved "core" state)
    chain      pilecore.envelope.Chain (recovered from the outbox by the port)
    port       the port's hands (see the module docstring)
    ident      {"fw", "platform", "board", "config_hash", "kid", "pubkey"} for `birth`
    settings   the saved "settings" ({"interval_s", "poll_s", "log_level"}), or None
    replay     the saved "replay" guard snapshot, or None
    platform_pub   the platform's command key (x, y), or None: commands are refused
    save_every_s   the state-save period (flash wear on the ESP32; 0 saves every change)
    """

    def __init__(
        self, cfg, core, chain, port, ident, settings=None, replay=None, platform_pub=None, save_every_s=SAVE_EVERY_S
    ):
        self.cfg = cfg
        self.core = core
        self.guard = core.guard
        self.chain = chain
        self.port = port
        self.ident = ident
        st = settings or {}
        tele = cfg.get("telemetry", {})
        self.interval_s = st.get("interval_s") or tele.get("interval_s", 30)
        self.poll_s = st.get("poll_s") or cfg.get("metering", {}).get("poll_s", 10)
        self.log_level = st.get("log_level", "info")
        self.replay = commands.ReplayGuard(replay)
        self.platform_pub = platform_pub
        self.max_cmd_age = cfg.get("signing", {}).get("command_max_age_s", 300)
        self.save_every_s = save_every_s
        self._saved = None
        self._saved_at = None
        self.tsync = "none"  # how the port's clock is known: "ntp" | "platform" | "none"
        # what waits for the outbox
        self.events = []  # events not yet stored (never reassigned: ports may hold it)
        self.birth_due = None  # the birth data until it is stored
        self._start_event = None
        self.keep = []  # (kind, data) of billing records and acks not yet stored
        self._sealing = []  # the (kind, data) of the last seal, until `stored`
        self.telemetry_due = None  # the telemetry data waiting for the next seal, or None
        self.recent = []  # the last EVENT_RING events, for the console
        self.sink = None  # when set, events go to sink(event) instead of the outbox (tools)
        self.storage = {
            "full": False,
            "since": None,
            "reason": None,
            "telemetry_not_stored": 0,
            "events_given_up": 0,
            "keep_given_up": 0,
        }
        self._given_up = []  # summaries of billing/acks given up, reported when storage is back
        # telemetry schedule and reboot
        self.last_telemetry_t = 0
        self.next_telemetry_ms = None
        self.reboot_at_ms = None
        self._reboot_ack = None  # the reboot ack, until it is stored
        # metering
        self.poll_ms = int(1000 * self.poll_s)
        self.buses = {}
        self.scheds = {}
        for b in cfg["bus"]:
            self.buses[b["name"]] = b
            self.scheds[b["name"]] = BusScheduler(b["name"], b["baud"], b["parity"], b["stopbits"], b["timeout_ms"])
        self.meters = {}
        for pile in cfg["pile"]:
            self._add_meter(pile["id"], pile["meter"])
        if cfg.get("main_meter"):
            self._add_meter(MAIN, cfg["main_meter"], ["energy_import", "power"])
        self.raw = {}  # bay device key -> (t, value)
        self._add_bay_devices()
        self.coils = {}
        self.relay_of = {}
        for p in cfg["pile"]:
            if p.get("coil"):
                self.coils[p["id"]] = p["coil"]
            if p.get("relay"):
                self.relay_of[p["id"]] = p["relay"]
        self._waiting = {}  # (bus, job id) -> done(code, payload)

    # ------------------------------------------------------------ metering set-up

    def _add_meter(self, key, m, names=None):
        prof = self.cfg["profiles"][m["profile"]]
        bus = self.buses[m["bus"]]
        char_us = char_time_us(bus["baud"], bus["parity"], bus["stopbits"])
        plan = planner.plan_for(prof, names, char_us=char_us, ranges=m.get("ranges"))
        self.meters[key] = Meter(key, m["bus"], m["address"], prof, plan)
        self.scheds[m["bus"]].add_device(
            key,
            m["address"],
            plan,
            self.poll_ms,
            prof.get("response_ms", 100),
            prof.get("min_gap_ms", 0),
            prof.get("timeout_ms"),
        )

    def _add_bay_devices(self):
        sensor_poll = min(self.poll_ms, 5000)
        for key, bus, addr, fc, reg, count, resp, gap, tmo in baydevices.devices(self.cfg, sensor_poll):
            self.scheds[bus].add_device(key, addr, planner.RawPlan(fc, reg, count), sensor_poll, resp, gap, tmo)

    # ------------------------------------------------------------ events

    def emit(self, events):
        """Queue events for the next event message (also the console's audit events)."""
        for ev in events:
            if self.sink is not None:
                self.sink(ev)
            else:
                self.events.append(ev)
            self.recent.append(ev)
        if len(self.recent) > EVENT_RING:
            del self.recent[: len(self.recent) - EVENT_RING]
        over = len(self.events) - EVENTS_HELD
        if over > 0:  # bounded while the outbox refuses: give up the oldest, count it
            del self.events[:over]
            self.storage["events_given_up"] += over

    # ------------------------------------------------------------ the buses

    def next_txn(self, bus, ms):
        """The next transaction to perform on `bus`, or None (see wake_in_ms)."""
        return self.scheds[bus].next_txn(ms)

    def wake_in_ms(self, bus, ms):
        return self.scheds[bus].wake_in_ms(ms)

    def txn_done(self, bus, txn, ms, now, code, payload, elapsed_ms):
        """The outcome of a transaction from next_txn: a reply (code OK) or a failure."""
        for result in self.scheds[bus].complete(txn, ms, code, payload, elapsed_ms):
            self._handle(bus, result, now)

    def _handle(self, bus, result, now):
        kind = result[0]
        if kind == "poll":
            self._poll_done(result[1], result[2], now)
        elif kind == "job":
            self._job_done(bus, result[1], result[2], result[3], now)
        elif kind == "shrunk":
            self.port.log(
                "info", "meter %s: block refused, plan is now %s" % (result[1], self.meters[result[1]].plan.reads)
            )
        elif kind == "exception":
            m = self.meters.get(result[1])
            dlt = m is not None and getattr(m.plan, "protocol", "modbus") == "dlt645"
            ev = {
                "type": "meter.exception",
                "pile": result[1],
                "t": now,
                "code": result[3],
                # a DL/T 645 abnormal reply carries an error byte, not a Modbus exception code
                "reason": dlt645.error_text(result[3]) if dlt else modbus.exception_name(result[3]),
                "read": result[2],
            }
            self.emit([ev])
        elif kind == "unsupported":
            ev = {
                "type": "meter.fault",
                "pile": result[1],
                "t": now,
                "reason": "meter refuses values",
                "values": [list(v) for v in result[2]],
            }
            self.emit([ev])

    def _poll_done(self, key, res, now):
        m = self.meters.get(key)
        if m is None:  # a presence sensor or a pile controller's plug register
            self.raw[key] = (now, baydevices.value(self.cfg, key, res["blocks"][0]) if res["ok"] else None)
            return
        m.polls += 1
        if not res["ok"]:
            m.failures += 1
        reading, m.error, events, m.faults = self.core.poll_done(now, key, res, m.plan, self.tsync)
        if reading is not None:
            m.reading = reading
        self.emit(events)

    def _job_done(self, bus, job, code, payload, now):
        done = self._waiting.pop((bus, job.id), None)
        tag = job.tag
        if isinstance(tag, tuple) and tag[0] == "identity":
            ident, events = self.core.identity_result(now, tag[1], code, payload)
            m = self.meters[tag[1]]
            m.identity_error = None
            if ident is not None:
                m.identity = ident
            else:  # `pilegate read` shows why (issue 9, defect #7)
                m.identity_error = "failed"
                for ev in events:
                    if ev["type"] == "meter.identity_failed":
                        m.identity_error = ev["reason"]
            self.emit(events)
        elif isinstance(tag, tuple) and tag[0] == "coil" and code != modbus.OK:
            self.emit(self.core.interlock_failed(now, tag[1], modbus.describe(code, payload)))
        if done is not None:
            done(code, payload)

    def request(self, bus, address, function, register, count, prio, done=None, tag=None, value=None):
        """Queue a one-off request (console read, write, scan probe); `done(code, payload)` is
        called when it completes.  Returns the job id; KeyError for an unknown bus."""
        job_id = self.scheds[bus].submit(address, function, register, count, prio, value=value, tag=tag)
        if done is not None:
            self._waiting[(bus, job_id)] = done
        return job_id

    def cancel(self, bus, tag):
        sched = self.scheds.get(bus)
        if sched is not None:
            sched.cancel_jobs(tag)

    def bus_stats(self):
        out = {}
        for name in self.scheds:
            out[name] = self.scheds[name].snapshot()
        return out

    def request_identities(self, now):
        """Queue an identity read of every pile whose check is due (and hold it while it runs)."""
        for pile in self.core.identity_requests(now, IDENTITY_HOLD_S):
            self.request_identity(pile)

    def request_identity(self, pile):
        """Queue an identity read of a pile's meter (if its profile has one: else the meter is
        verified by its readings, see pilecore.metering)."""
        m = self.meters[pile]
        read = metering.identity_read(m.profile.get("identity"))
        if read is not None:
            self.request(m.bus, m.address, read[0], read[1], read[2], PRIO_INTERACTIVE, tag=("identity", pile))

    # ------------------------------------------------------------ interlocks

    def apply_interlocks(self, now):
        """Drive every relay-mode pile's relay or coil to what the guard says (fail-safe)."""
        changes, events = self.core.interlock_changes(now)
        self.emit(events)
        for pile, on in changes:
            c = self.coils.get(pile)
            if c is not None:
                self.request(c["bus"], c["address"], 5, c["coil"], 1, PRIO_INTERACTIVE, tag=("coil", pile), value=on)
            elif pile in self.relay_of:
                self.port.actuate(self.relay_of[pile], on)

    def set_override(self, now, pile, mode):
        """The console's interlock override: mode "on", "off" or "auto"; acts at once.
        Returns (ok, message) as SiteGuard.override."""
        ok, msg = self.guard.override(pile, mode)
        if ok:
            self.apply_interlocks(now)
        return ok, msg

    # ------------------------------------------------------------ once a second

    def second(self, now, ms, tsync):
        """Supervision, identity checks due, bay inputs, interlocks; telemetry when due;
        billing records taken from the core; state saved by the policy.  `tsync` says how the
        port's clock is known now ("ntp" | "platform" | "none")."""
        self.tsync = tsync
        if self._start_event is not None:
            self.emit([self._start_event])
            self._start_event = None
        self.supervise(now)
        if self.next_telemetry_ms is None:
            self.next_telemetry_ms = ms + 1000 * min(self.interval_s, FIRST_TELEMETRY_S)
        if ms >= self.next_telemetry_ms:
            self.telemetry_due = self.telemetry(now)
            self.last_telemetry_t = now
            self.next_telemetry_ms += self.interval_s * 1000
            if ms >= self.next_telemetry_ms:  # fell behind: do not try to catch up
                self.next_telemetry_ms = ms + self.interval_s * 1000
        billing = self.core.take_billing()
        for record in billing:
            self.keep.append(("billing", record))
        self._bound_keep()
        self.save_state(now, bool(billing))

    def supervise(self, now):
        """The metering part of a second: the guard's supervision, identity checks due, bay
        inputs, interlocks."""
        self.emit(self.core.tick(now))
        self.request_identities(now)
        for bay_id, samples, raw_plug in baydevices.gather(self.cfg, now, self.raw, self.port.read_input):
            self.emit(self.core.bay_inputs(now, bay_id, samples, raw_plug))
        self.apply_interlocks(now)

    def set_interval(self, interval_s):
        """The telemetry interval (command or console), persisted."""
        self.interval_s = interval_s
        self.save_settings()

    def set_poll_s(self, poll_s):
        """The meters' poll period setting (the console), persisted; the port's console backend
        moves the schedulers' devices to it."""
        self.poll_s = poll_s
        self.poll_ms = int(1000 * poll_s)
        self.save_settings()

    def set_log_level(self, level):
        self.log_level = level
        self.save_settings()

    # ------------------------------------------------------------ content

    def birth(self):
        cfg = self.cfg
        piles = []
        for p in cfg["pile"]:
            piles.append(
                {
                    "pile": p["id"],
                    "bus": p["meter"]["bus"],
                    "address": p["meter"]["address"],
                    "profile": p["meter"]["profile"],
                    "serial": self.guard.piles[p["id"]].bound,
                    "interlock": p.get("interlock", "report"),
                }
            )
        bays = [{"bay": b["id"], "pile": b["pile"]} for b in cfg.get("bay", ())]
        i = self.ident
        return {
            "fw": i["fw"],
            "platform": i["platform"],
            "board": cfg["gateway"]["board"],
            "config_hash": i["config_hash"],
            "kid": i["kid"],
            "pubkey": i["pubkey"],
            "interval_s": self.interval_s,
            "piles": piles,
            "bays": bays,
        }

    def telemetry(self, now):
        data = self.core.telemetry(now, self.last_telemetry_t, self.interval_s)
        for item in data["piles"]:
            err = self.meters[item["pile"]].error
            if err:
                item["error"] = err
        return data

    def started(self, now, epoch):
        """The start of the gateway: the `birth` message now (the port seals it before
        anything else), the `gateway.started` event with the first second's events."""
        i = self.ident
        self._start_event = {
            "type": "gateway.started",
            "t": now,
            "epoch": epoch,
            "fw": i["fw"],
            "config_hash": i["config_hash"],
        }
        self.birth_due = self.birth()

    def state_message(self, now, tsync, state, reason=None):
        """The signed, unchained `state` message (online, or the will / a clean stop)."""
        data = {"state": state, "since": now}
        if reason:
            data["reason"] = reason
        return self.chain.unchained("state", data, now, tsync)

    def plate(self, now, payload):
        """One plate read from the cameras' broker: {"camera", "plate", "colour", "t"?}.
        Returns "" or why the message was not usable (the port logs it)."""
        try:
            if len(payload) > 1024:
                raise ValueError("longer than 1024 bytes")
            msg = json.loads(payload)
            camera, plate, colour = msg["camera"], msg["plate"], msg["colour"]
            for v in (camera, plate, colour):
                if not isinstance(v, str):
                    raise ValueError("camera, plate and colour must be strings")
        except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as e:
            return "plate reader sent an unusable message (%s)" % e
        t = msg.get("t")
        if not isinstance(t, int) or isinstance(t, bool):
            t = now
        self.emit(self.core.plate(min(t, now), camera, plate, colour))
        return ""

    # ------------------------------------------------------------ the flush contract

    def outbox_dropped(self, now, dropped):
        """Telemetry the outbox thinned: declared lost by an `outbox.dropped` event."""
        if dropped:
            self.emit([{"type": "outbox.dropped", "t": now, "dropped": [{"seq": s, "hash": h} for s, h in dropped]}])

    def seal(self, now, tsync, hist):
        """Sign everything that waits, in this order: birth, events, billing records and acks,
        telemetry.  The chain does not advance until `stored` says what the outbox took."""
        self.tsync = tsync
        items = []
        if self.birth_due is not None:
            items.append(("birth", self.birth_due))
            self.birth_due = None
        for k in range(0, len(self.events), EVENTS_PER_MESSAGE):
            items.append(("event", {"events": self.events[k : k + EVENTS_PER_MESSAGE]}))
        del self.events[:]
        items += self.keep
        self.keep = []
        if self.telemetry_due is not None:
            items.append(("telemetry", self.telemetry_due))
            self.telemetry_due = None
        self._sealing = items
        if not items:
            return []
        return self.chain.prepare_many(items, now, tsync, hist)

    def stored(self, prepared, n, now, why=None):
        """The outbox stored prepared[:n] (the last seal); the chain advances by exactly those.
        The rest is kept (events, birth, billing, acks; bounded) or, for telemetry, counted as
        not stored.  `why` is the outbox's reason for refusing the rest."""
        items, self._sealing = self._sealing, []
        self.chain.commit_many(prepared[:n])
        st = self.storage
        for item in items[:n]:
            if item[1] is self._reboot_ack:
                self._reboot_ack = None
        back_events = []
        back_keep = []
        for kind, data in items[n:]:
            if kind == "birth":
                self.birth_due = data
            elif kind == "event":
                back_events += data["events"]
            elif kind == "telemetry":
                st["telemetry_not_stored"] += 1
            else:
                back_keep.append((kind, data))
        if n < len(items):
            if not st["full"]:
                st["full"] = True
                st["since"] = now
                st["reason"] = why or "outbox full"
                self.port.log("error", "outbox refuses messages (%s): events and billing wait in memory" % st["reason"])
                back_events.append({"type": "outbox.full", "t": now, "reason": st["reason"]})
            self.events[:0] = back_events
            self.keep[:0] = back_keep
            over = len(self.events) - EVENTS_HELD
            if over > 0:
                del self.events[:over]
                st["events_given_up"] += over
            self._bound_keep()
        elif st["full"] and n:
            self.port.log("info", "outbox accepts messages again")
            ev = {
                "type": "outbox.resumed",
                "t": now,
                "since": st["since"],
                "telemetry_not_stored": st["telemetry_not_stored"],
                "events_given_up": st["events_given_up"],
                "keep_given_up": st["keep_given_up"],
            }
            if self._given_up:
                ev["given_up"] = self._given_up
                self._given_up = []
            st["full"] = False
            st["since"] = st["reason"] = None
            self.emit([ev])

    def _bound_keep(self):
        over = len(self.keep) - KEEP_HELD
        if over <= 0:
            return
        for kind, data in self.keep[:over]:
            self.storage["keep_given_up"] += 1
            summary = {"kind": kind}
            for key in ("type", "pile", "cmd_id", "bay"):
                if isinstance(data, dict) and key in data:
                    summary[key] = data[key]
            self._given_up.append(summary)
            self.port.log("error", "outbox refuses messages: %s given up after %d held" % (kind, KEEP_HELD))
        del self.keep[:over]
        del self._given_up[: max(0, len(self._given_up) - KEEP_HELD)]

    # ------------------------------------------------------------ persistence

    def save_state(self, now, at_once=False):
        """Persist the core's state when it changed: at once after billing or a tariff, else at
        most every save_every_s (flash wear)."""
        version = (self.core.version, self.core.bays_version())
        if version == self._saved:
            return
        if not at_once and self._saved_at is not None and now - self._saved_at < self.save_every_s:
            return
        self.port.save("core", self.core.snapshot())
        self._saved = version
        self._saved_at = now

    def settings(self):
        return {"interval_s": self.interval_s, "poll_s": self.poll_s, "log_level": self.log_level}

    def save_settings(self):
        self.port.save("settings", self.settings())

    # ------------------------------------------------------------ commands

    def command(self, payload, now, ms):
        """Check and apply one command (bytes from the `cmd` topic); the signed ack is queued
        for the next seal and returned.  Every command gets one, whatever it holds."""
        cmd, why = commands.check_bytes(
            payload, self.platform_pub, self.cfg["gateway"]["id"], now, self.replay, self.max_cmd_age
        )
        if cmd is None:
            ack = {"cmd_id": commands.peek_id(payload), "ok": False, "reason": why}
            self.emit([{"type": "command.rejected", "t": now, "reason": why}])
        else:
            self.port.save("replay", self.replay.snapshot())  # executed once, even if it fails
            name = cmd["cmd"]
            result, why = self._apply(name, cmd["args"], now)
            if why:
                ack = {"cmd_id": cmd["id"], "cmd": name, "ok": False, "reason": why}
            else:
                ack = {"cmd_id": cmd["id"], "cmd": name, "ok": True, "result": result}
                if name == "reboot":
                    self.reboot_at_ms = ms + REBOOT_GRACE_S * 1000
                    self._reboot_ack = ack
        self.keep.append(("ack", ack))
        self._bound_keep()
        return ack

    def _apply(self, name, args, now):
        """(result, "") or (None, why the verified command cannot be applied)."""
        if name == "set_interval":
            self.set_interval(args["interval_s"])
            return {"interval_s": self.interval_s}, ""
        if name == "sync_time":
            offset = self.port.set_clock(args["t"])
            self.tsync = "platform"
            return {"offset_s": offset}, ""
        if name == "resend":
            resent, missing = self.port.resend(args["from_seq"], args["to_seq"])
            return {"resent": resent, "not_stored": missing}, ""
        if name == "set_tariff":
            why = self.core.set_tariff(args["tariff"])
            if why:
                return None, "tariff refused: %s" % why
            self.save_state(now, True)
            return {"tariff": args["tariff"].get("id"), "version": args["tariff"].get("version")}, ""
        if name == "reboot":
            return {"rebooting_in_s": REBOOT_GRACE_S}, ""
        return {}, ""

    def reboot_due(self, ms, depth):
        """True (once) when an accepted reboot should happen now: its ack is stored and the
        outbox has drained, or REBOOT_GRACE_S has passed since the command."""
        if self.reboot_at_ms is None or (self._reboot_ack is not None and ms < self.reboot_at_ms):
            return False
        if depth == 0 or ms >= self.reboot_at_ms:
            self.reboot_at_ms = None
            return True
        return False

    def set_tsync(self, tsync):
        """How the port's clock is known now ("ntp" | "platform" | "none")."""
        self.tsync = tsync


class Scan:
    """Probe addresses first..last on a bus with background jobs, one at a time.

    progress(addr, answered) after each probe, finished(found) at the end."""

    def __init__(self, driver, bus, first, last, progress, finished):
        self.d = driver
        self.bus = bus
        self.addr = first
        self.last = last
        self.progress = progress
        self.finished = finished
        self.found = []
        self.cancelled = False
        self.tag = ("scan", id(self))
        self._next()

    def _next(self):
        self.d.request(self.bus, self.addr, 3, 0, 1, PRIO_BACKGROUND, self._done, self.tag)

    def _done(self, code, payload):
        if self.cancelled:
            return
        answered = code in (modbus.OK, modbus.E_EXCEPTION)
        if answered:
            self.found.append(self.addr)
        self.progress(self.addr, answered)
        if self.addr >= self.last:
            self.finished(self.found)
            return
        self.addr += 1
        self._next()

    def cancel(self):
        self.cancelled = True
        self.d.cancel(self.bus, self.tag)
