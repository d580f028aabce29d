"""Metering and bay inputs on the ESP32: the core scheduler and site logic over `pilefw.rtu`.

The synchronous twin of the Pi's `pilegate.metering_service`: one core `BusScheduler` and one
`RtuMaster` per RS-485 bus; meters, presence sensors and pile controllers (plug state) are
devices on those schedulers.  `step(now_ms)` performs at most ONE transaction per bus (each
bounded by its reply timeout), so the main loop stays responsive; `tick(now_s)` runs once a
second: offline checks, identity reads due, bay inputs, interlocks.  Every decision is the
core's (`SiteCore`); this module only moves bytes and hands results over.

Console raw reads and scans are scheduler jobs too: `request(bus, addr, fc, reg, count, prio,
done)` queues one and calls `done(code, payload)` when it completes; `Scan` probes a range
with background jobs, one at a time.

Interlocks: a pile in relay mode drives its board relay (`relays[name] = (Pin, active_high)`)
or a Modbus coil on its pile controller; the console's override sits in the guard
(`guard.overrides`).
"""

from pilecore import baydevices, metering, modbus, planner, site
from pilecore.scheduler import PRIO_BACKGROUND, PRIO_INTERACTIVE, BusScheduler, char_time_us

MAIN = site.MAIN


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
        self.polls = 0
        self.failures = 0
        self.faults = []


class Metering:
    """See the module docstring.

    cfg       the compiled site configuration
    core      pilecore.site.SiteCore
    masters   {bus name: RtuMaster}
    emit      called with each list of events
    now_s()   Unix seconds; ticks_ms() the monotonic clock; tsync() "ntp" | "platform" | "none"
    inputs    name -> 0 | 1 | None (board digital inputs), or None
    relays    {relay name: (Pin, active_high)}
    """

    def __init__(self, cfg, core, masters, emit, now_s, ticks_ms, tsync, inputs=None, relays=None, poll_s=None):
        self.cfg = cfg
        self.core = core
        self.guard = core.guard
        self.masters = masters
        self.emit = emit
        self.now_s = now_s
        self.ticks_ms = ticks_ms
        self.tsync = tsync
        self.inputs = inputs
        self.relays = relays or {}
        self.poll_ms = int(1000 * (poll_s or cfg.get("metering", {}).get("poll_s", 10)))
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
        self.raw = {}  # sensor/controller key -> (t, value)
        self._add_bay_devices()
        self.coils = {}
        self.relay_of = {}
        for p in cfg["pile"]:
            if p.get("coil"):
                self.coils[p["id"]] = p["coil"]
            if p.get("relay"):
                self.relay_of[p["id"]] = p["relay"]
        self._waiting = {}  # (bus, job id) -> done(code, payload)

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

    # ------------------------------------------------------------ the bus step

    def step(self, now_ms):
        """At most one transaction per bus; returns True when any bus did one."""
        did = False
        for name in self.scheds:
            sched = self.scheds[name]
            txn = sched.next_txn(now_ms)
            if txn is None:
                continue
            code, payload, elapsed = self.masters[name].transact(txn)
            for result in sched.complete(txn, self.ticks_ms(), code, payload, elapsed):
                self._handle(name, result)
            did = True
        return did

    def _handle(self, bus, result):
        kind = result[0]
        if kind == "poll":
            self._poll_done(result[1], result[2])
        elif kind == "job":
            self._job_done(bus, result[1], result[2], result[3])
        elif kind == "exception":
            self.emit(
                [
                    {
                        "type": "meter.exception",
                        "pile": result[1],
                        "t": self.now_s(),
                        "code": result[3],
                        "reason": modbus.exception_name(result[3]),
                        "read": result[2],
                    }
                ]
            )
        elif kind == "unsupported":
            self.emit(
                [
                    {
                        "type": "meter.fault",
                        "pile": result[1],
                        "t": self.now_s(),
                        "reason": "meter refuses values",
                        "values": [list(v) for v in result[2]],
                    }
                ]
            )

    def _poll_done(self, key, res):
        now = self.now_s()
        if "#" in key:
            self.raw[key] = (now, baydevices.value(self.cfg, key, res["blocks"][0]) if res["ok"] else None)
            return
        m = self.meters[key]
        m.polls += 1
        if not res["ok"]:
            m.failures += 1
        reading, m.error, events, m.faults = self.core.poll_done(now, key, res, m.plan, self.tsync())
        if reading is not None:
            m.reading = reading
        self.emit(events)

    def _job_done(self, bus, job, code, payload):
        done = self._waiting.pop((bus, job.id), None)
        tag = job.tag
        if isinstance(tag, tuple) and tag[0] == "identity":
            self._identity_done(tag[1], code, payload)
        elif isinstance(tag, tuple) and tag[0] == "coil" and code != modbus.OK:
            self.emit(self.core.interlock_failed(self.now_s(), tag[1], modbus.describe(code, payload)))
        if done is not None:
            done(code, payload)

    def _identity_done(self, pile, code, payload):
        ident, events = self.core.identity_result(self.now_s(), pile, code, payload)
        if ident is not None:
            self.meters[pile].identity = ident
        self.emit(events)

    # ------------------------------------------------------------ once a second

    def tick(self):
        now = self.now_s()
        self.emit(self.core.tick(now))
        for pile in self.guard.identity_due(now):
            self._request_identity(pile, now)
        self.bay_step(now)
        self.apply_interlocks()

    def _request_identity(self, pile, now):
        m = self.meters[pile]
        read = metering.identity_read(m.profile.get("identity"))
        self.guard.piles[pile].identity_due_at = now + 60  # not again while this one runs
        if read is None:
            return
        self.scheds[m.bus].submit(m.address, read[0], read[1], read[2], PRIO_INTERACTIVE, tag=("identity", pile))

    def bay_step(self, now):
        for bay_id, samples, raw_plug in baydevices.gather(self.cfg, now, self.raw, self.inputs):
            self.emit(self.core.bay_inputs(now, bay_id, samples, raw_plug))

    def apply_interlocks(self):
        """Drive every relay-mode pile's relay or coil to what the guard says (fail-safe)."""
        changes, events = self.core.interlock_changes(self.now_s())
        self.emit(events)
        for pile, on in changes:
            if pile in self.coils:
                c = self.coils[pile]
                self.scheds[c["bus"]].submit(
                    c["address"], 5, c["coil"], 1, PRIO_INTERACTIVE, value=on, tag=("coil", pile)
                )
            elif self.relay_of.get(pile) in self.relays:
                pin, active_high = self.relays[self.relay_of[pile]]
                pin.value(1 if on == active_high else 0)

    # ------------------------------------------------------------ one-off requests

    def request(self, bus, address, function, register, count, prio, done, tag=None):
        """Queue a raw request; `done(code, payload)` is called when it completes.  Returns the
        job id.  KeyError for an unknown bus."""
        sched = self.scheds[bus]
        job_id = sched.submit(address, function, register, count, prio, tag=tag)
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


class Scan:
    """Probe addresses first..last on a bus with background jobs, one at a time.

    progress(addr, answered) after each probe, finished(found) at the end."""

    def __init__(self, metering, bus, first, last, progress, finished):
        self.m = metering
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
        self.m.request(self.bus, self.addr, 3, 0, 1, PRIO_BACKGROUND, self._done, self.tag)

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
        self.m.cancel(self.bus, self.tag)
