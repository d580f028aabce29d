"""Metering and bay inputs on the Pi: the core's planner, scheduler and site logic over pymodbus.

`Metering` owns one `BusPort` and one core `BusScheduler` per bus.  Each bus runs its own
asyncio loop (`run_bus`), so a slow bus never holds up another.  Meters, presence sensors and
pile controllers (plug state) are devices on those schedulers.  Poll results are decoded by the
device's plan and handed to the core `SiteCore`, which decides identity checks, events,
interlocks, sessions and bay occupancy.  Console raw reads, coil writes and scans are submitted
to the same schedulers and answered through futures.  Digital inputs (presence, contactor) come
from an `inputs` object with `read(name) -> 0 | 1 | None` (the Pi's GPIO reader, or a fake in
tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pilecore import baydevices, metering, modbus, planner, site
from pilecore.scheduler import PRIO_BACKGROUND, PRIO_INTERACTIVE, BusScheduler
from pilecore.site import SiteCore
from pilegate.serial_port import bus_port

log = logging.getLogger("pilegate.metering")
MAIN = site.MAIN

EventSink = Callable[[dict[str, Any]], None]


@dataclass
class Meter:
    key: str  # pile id, or "_main" for the site main meter
    bus: str
    address: int
    profile: dict[str, Any]
    plan: planner.MeterPlan
    reading: dict[str, Any] | None = None  # last accepted reading, with "t"
    error: str | None = None  # why the last poll failed, if it did
    identity: str | None = None
    polls: int = 0
    failures: int = 0
    faults: list[Any] = field(default_factory=list)


def char_us(bus: dict[str, Any]) -> int:
    from pilecore.scheduler import char_time_us

    return char_time_us(bus["baud"], bus["parity"], bus["stopbits"])


class Metering:
    """See the module docstring.  `clock` is monotonic seconds, `wall` Unix seconds."""

    def __init__(
        self,
        cfg: dict[str, Any],
        core: SiteCore | None = None,
        on_event: EventSink | None = None,
        relays: Any = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        poll_s: float | None = None,
        inputs: Any = None,
        tsync: Callable[[], str] = lambda: "none",
    ):
        self.cfg = cfg
        self.core = core or SiteCore(cfg, None, cfg["gateway"]["id"], "")
        self.guard = self.core.guard
        self.inputs = inputs
        self.tsync = tsync
        self.clock, self.wall = clock, wall
        self.on_event = on_event or (lambda ev: None)
        self.relays = relays
        self.poll_ms = int(1000 * (poll_s or cfg.get("metering", {}).get("poll_s", 10)))
        self.buses = {b["name"]: b for b in cfg["bus"]}
        self.ports = {name: bus_port(b, cfg) for name, b in self.buses.items()}
        self.scheds = {
            name: BusScheduler(name, b["baud"], b["parity"], b["stopbits"], b["timeout_ms"])
            for name, b in self.buses.items()
        }
        self.meters: dict[str, Meter] = {}
        for pile in cfg["pile"]:
            self._add_meter(pile["id"], pile["meter"])
        if cfg.get("main_meter"):
            self._add_meter(MAIN, cfg["main_meter"], names=["energy_import", "power"])
        self.raw: dict[str, tuple[int, Any]] = {}  # sensor/controller key -> (time, value)
        self._add_bay_devices()
        self.coils = {p["id"]: p["coil"] for p in cfg["pile"] if p.get("coil")}
        self.relay_of = {p["id"]: p.get("relay") for p in cfg["pile"]}
        self._futures: dict[tuple[str, int], asyncio.Future] = {}
        self._wake = {name: asyncio.Event() for name in self.buses}
        self.cycles_done: dict[str, int] = {k: 0 for k in self.meters}

    def _add_meter(self, key: str, m: dict[str, Any], names: list[str] | None = None) -> None:
        prof = self.cfg["profiles"][m["profile"]]
        bus = self.buses[m["bus"]]
        plan = planner.plan_for(prof, names, char_us=char_us(bus), ranges=m.get("ranges"))
        self.meters[key] = Meter(key, m["bus"], m["address"], prof, plan)
        self.scheds[m["bus"]].add_device(
            key,
            m["address"],
            plan,
            self.poll_ms,
            response_ms=prof.get("response_ms", 100),
            min_gap_ms=prof.get("min_gap_ms", 0),
            timeout_ms=prof.get("timeout_ms"),
        )

    def _add_bay_devices(self) -> None:
        """Presence sensors and pile controllers (plug state) as polled devices."""
        sensor_poll = min(self.poll_ms, 5000)
        for key, bus, addr, fc, reg, count, resp, gap, tmo in baydevices.devices(self.cfg, sensor_poll):
            self.scheds[bus].add_device(key, addr, planner.RawPlan(fc, reg, count), sensor_poll, resp, gap, tmo)

    def bay_step(self) -> None:
        """Hand every monitored bay its latest inputs (stale values become None)."""
        now = self.now_s()
        read = self.inputs.read if self.inputs else None
        for bay_id, samples, raw_plug in baydevices.gather(self.cfg, now, self.raw, read):
            self.emit(self.core.bay_inputs(now, bay_id, samples, raw_plug))

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def now_s(self) -> int:
        return int(self.wall())

    def emit(self, events: list[dict[str, Any]]) -> None:
        for ev in events:
            self.on_event(ev)

    # ------------------------------------------------------------ bus loops

    async def run_bus(self, name: str, stop: asyncio.Event) -> None:
        """Drive one bus until `stop` is set."""
        sched, port = self.scheds[name], self.ports[name]
        await port.connect()
        try:
            while not stop.is_set():
                txn = sched.next_txn(self.now_ms())
                if txn is None:
                    wait = min(sched.wake_in_ms(self.now_ms()), 200) / 1000
                    self._wake[name].clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake[name].wait(), timeout=max(wait, 0.001))
                    continue
                code, payload, elapsed = await port.perform(txn)
                for result in sched.complete(txn, self.now_ms(), code, payload, elapsed):
                    self._handle(name, result)
        finally:
            port.close()

    def _handle(self, bus: str, result: tuple) -> None:
        kind = result[0]
        if kind == "poll":
            self._poll_done(result[1], result[2])
        elif kind == "job":
            _, job, code, payload = result
            self._job_done(bus, job, code, payload)
        elif kind == "shrunk":
            m = self.meters[result[1]]
            log.info("meter %s: block refused, plan is now %s", result[1], m.plan.reads)
        elif kind == "exception":
            _, key, read, code = result
            self.emit(
                [
                    {
                        "type": "meter.exception",
                        "pile": key,
                        "t": self.now_s(),
                        "code": code,
                        "reason": modbus.exception_name(code),
                        "read": read,
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

    def _poll_done(self, key: str, res: dict[str, Any]) -> None:
        now = self.now_s()
        if "#" in key:  # a presence sensor or pile controller
            self.raw[key] = (now, baydevices.value(self.cfg, key, res["blocks"][0]) if res["ok"] else None)
            return
        m = self.meters[key]
        m.polls += 1
        self.cycles_done[key] = self.cycles_done.get(key, 0) + 1
        if not res["ok"]:
            m.failures += 1
        reading, m.error, events, m.faults = self.core.poll_done(now, key, res, m.plan, self.tsync())
        if reading is not None:
            m.reading = reading
        self.emit(events)

    def _job_done(self, bus: str, job: Any, code: int, payload: Any) -> None:
        fut = self._futures.pop((bus, job.id), None)
        tag = job.tag
        if isinstance(tag, tuple) and tag[0] == "identity":
            self._identity_done(tag[1], code, payload)
        elif isinstance(tag, tuple) and tag[0] == "coil" and code != modbus.OK:
            self.emit(self.core.interlock_failed(self.now_s(), tag[1], modbus.describe(code, payload)))
        if fut is not None and not fut.done():
            fut.set_result((code, payload))

    def _identity_done(self, pile: str, code: int, payload: Any) -> None:
        ident, events = self.core.identity_result(self.now_s(), pile, code, payload)
        if ident is not None:
            self.meters[pile].identity = ident
        self.emit(events)

    # ------------------------------------------------------------ supervision

    def tick(self) -> None:
        """Once a second: offline checks, identity checks due, interlocks to apply."""
        now = self.now_s()
        self.emit(self.core.tick(now))
        for pile in self.guard.identity_due(now):
            self._request_identity(pile, now)
        self.bay_step()
        self._apply_interlocks()

    def _request_identity(self, pile: str, now: int) -> None:
        m = self.meters[pile]
        read = metering.identity_read(m.profile.get("identity"))
        # Hold the check for a minute so it is not queued again while it runs.
        self.guard.piles[pile].identity_due_at = now + 60
        if read is None:
            return  # verified by its readings (see pilecore.metering)
        fc, reg, count = read
        self.scheds[m.bus].submit(m.address, fc, reg, count, PRIO_INTERACTIVE, tag=("identity", pile))
        self._wake[m.bus].set()

    def _apply_interlocks(self) -> None:
        changes, events = self.core.interlock_changes(self.now_s())
        self.emit(events)
        for pile, on in changes:
            if pile in self.coils:
                c = self.coils[pile]
                self.scheds[c["bus"]].submit(
                    c["address"], 5, c["coil"], 1, PRIO_INTERACTIVE, value=on, tag=("coil", pile)
                )
                self._wake[c["bus"]].set()
            elif self.relays is not None:
                self.relays.set(self.relay_of[pile], on)

    async def run(self, stop: asyncio.Event) -> None:
        """All bus loops plus the once-a-second supervisor, until `stop` is set."""
        tasks = [asyncio.create_task(self.run_bus(name, stop)) for name in self.buses]
        try:
            while not stop.is_set():
                self.tick()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1.0)
        finally:
            stop.set()
            for w in self._wake.values():
                w.set()
            await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------ one-off requests

    async def request(
        self,
        bus: str,
        address: int,
        function: int,
        register: int,
        count: int,
        prio: int = PRIO_INTERACTIVE,
        value: Any = None,
        tag: Any = None,
    ) -> tuple[int, Any]:
        """Queue a raw request on a running bus; wait for (code, payload)."""
        sched = self.scheds[bus]
        job_id = sched.submit(address, function, register, count, prio, value=value, tag=tag)
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._futures[(bus, job_id)] = fut
        self._wake[bus].set()
        return await fut

    async def scan(
        self, bus: str, first: int, last: int, progress: Callable[[int, int, Any], None] | None = None
    ) -> list[int]:
        """Probe addresses first..last with a 1-register read; return those that answer.

        Probes are background jobs: they only use bus time that polls leave free.
        """
        found = []
        for addr in range(first, last + 1):
            code, _ = await self.request(bus, addr, 3, 0, 1, PRIO_BACKGROUND, tag="scan")
            answered = code in (modbus.OK, modbus.E_EXCEPTION)
            if answered:
                found.append(addr)
            if progress:
                progress(addr, last, code)
        return found

    def snapshot(self) -> dict[str, Any]:
        return self.core.snapshot()


async def poll_once(cfg: dict[str, Any], timeout_s: float = 30.0) -> dict[str, Meter]:
    """Read every meter once (with identity) and return them; used by `pilegate read`."""
    svc = Metering(cfg, poll_s=3600)
    stop = asyncio.Event()
    for pile in svc.guard.order:
        svc._request_identity(pile, svc.now_s())
    tasks = [asyncio.create_task(svc.run_bus(name, stop)) for name in svc.buses]
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            pending = sum(s.pending_jobs() for s in svc.scheds.values())
            if (
                all(svc.cycles_done[k] >= 1 for k in svc.meters)
                and pending == 0
                and not any(s.busy for s in svc.scheds.values())
            ):
                break
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        for w in svc._wake.values():
            w.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    for key, m in svc.meters.items():
        if svc.cycles_done[key] == 0 and m.error is None:
            m.error = "no answer within the time allowed"
    return svc.meters
