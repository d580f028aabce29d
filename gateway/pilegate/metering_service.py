"""The Pi's buses: the bytes of the core's metering (pilecore.gateway.SiteDriver) over pymodbus.

`Metering` owns one `BusPort` per bus and runs each bus in its own asyncio loop (`run_bus`), so
a slow bus never holds up another.  Which transaction comes next and what its reply means is
the driver's (one copy for both ports); this module only performs transactions and hands the
outcome back.  Console raw reads, coil writes and scans are driver jobs answered through
futures.

Run inside the gateway, it is given the gateway's driver.  Run on its own (`pilegate read`,
benchmarks, tests), it makes a driver whose events go to `on_event`, with itself as the hands:
relays through `relays.set(name, on)`, digital inputs through `inputs.read(name)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from pilecore import site
from pilecore.envelope import Chain
from pilecore.gateway import Meter, SiteDriver
from pilecore.scheduler import PRIO_BACKGROUND, PRIO_INTERACTIVE
from pilecore.site import SiteCore
from pilegate.serial_port import bus_port

log = logging.getLogger("pilegate.metering")
MAIN = site.MAIN
__all__ = ["MAIN", "Meter", "Metering", "poll_once"]

EventSink = Callable[[dict[str, Any]], None]


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
        driver: SiteDriver | None = None,
    ):
        self.cfg = cfg
        self.clock, self.wall = clock, wall
        self.tsync = tsync
        self.relays = relays
        self.inputs = inputs
        if driver is None:
            core = core or SiteCore(cfg, None, cfg["gateway"]["id"], "")
            chain = Chain(cfg["gateway"]["id"], cfg["gateway"]["site"], "", lambda b: b"", 0)
            ident = {"fw": "", "platform": "rpi", "board": "", "config_hash": "", "kid": "", "pubkey": ""}
            settings = {"poll_s": poll_s} if poll_s else None
            driver = SiteDriver(cfg, core, chain, self, ident, settings)
            driver.sink = on_event or (lambda ev: None)
        self.driver = driver
        self.core = driver.core
        self.guard = driver.guard
        self.meters: dict[str, Meter] = driver.meters
        self.scheds = driver.scheds
        self.buses = driver.buses
        self.ports = {name: bus_port(b, cfg) for name, b in self.buses.items()}
        self.raw = driver.raw
        self._futures: dict[tuple[str, int], asyncio.Future[tuple[int, Any]]] = {}
        self._wake = {name: asyncio.Event() for name in self.buses}
        self.on_step: Callable[[str], None] | None = None  # test hook: called at every bus pass

    # ------------------------------------------------------------ the hands (standalone)

    def actuate(self, relay: str, on: bool) -> None:
        if self.relays is not None:
            self.relays.set(relay, on)

    def read_input(self, name: str) -> int | None:
        return self.inputs.read(name) if self.inputs is not None else None

    def set_clock(self, t: int) -> int:
        raise RuntimeError("no clock to set outside the gateway")

    def resend(self, first: int, last: int) -> tuple[int, int]:
        raise RuntimeError("no outbox outside the gateway")

    def save(self, name: str, obj: Any) -> None:
        """Nothing is persisted outside the gateway."""

    def log(self, level: str, text: str) -> None:
        log.log(logging.getLevelName(level.upper()), "%s", text)

    # ------------------------------------------------------------ time

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def now_s(self) -> int:
        return int(self.wall())

    @property
    def poll_ms(self) -> int:
        """The meters' configured poll period."""
        return int(self.driver.poll_ms)

    @property
    def cycles_done(self) -> dict[str, int]:
        """Poll cycles each meter finished (ok or not)."""
        return {k: m.polls for k, m in self.meters.items()}

    def wake(self) -> None:
        """New jobs may be queued: every bus loop looks at once."""
        for w in self._wake.values():
            w.set()

    # ------------------------------------------------------------ bus loops

    async def run_bus(self, name: str, stop: asyncio.Event) -> None:
        """Drive one bus until `stop` is set."""
        port = self.ports[name]
        d = self.driver
        await port.connect()
        try:
            while not stop.is_set():
                if self.on_step is not None:
                    self.on_step("bus:" + name)
                txn = d.next_txn(name, self.now_ms())
                if txn is None:
                    wait = min(d.wake_in_ms(name, self.now_ms()), 200) / 1000
                    self._wake[name].clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake[name].wait(), timeout=max(wait, 0.001))
                    continue
                code, payload, elapsed = await port.perform(txn)
                d.txn_done(name, txn, self.now_ms(), self.now_s(), code, payload, elapsed)
        finally:
            port.close()

    def tick(self) -> None:
        """Once a second (standalone): supervision, identity checks, bay inputs, interlocks."""
        self.driver.set_tsync(self.tsync())
        self.driver.supervise(self.now_s())
        self.wake()

    async def run(self, stop: asyncio.Event) -> None:
        """All bus loops plus the once-a-second supervisor, until `stop` is set (standalone)."""
        tasks = [asyncio.create_task(self.run_bus(name, stop)) for name in self.buses]
        try:
            while not stop.is_set():
                self.tick()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1.0)
        finally:
            stop.set()
            self.wake()
            await asyncio.gather(*tasks)

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
        fut: asyncio.Future[tuple[int, Any]] = asyncio.get_running_loop().create_future()

        def done(code: int, payload: Any) -> None:
            if not fut.done():
                fut.set_result((code, payload))

        self.driver.request(bus, address, function, register, count, prio, done, tag, value)
        self._wake[bus].set()
        return await fut

    async def scan(
        self, bus: str, first: int, last: int, progress: Callable[[int, int, Any], None] | None = None
    ) -> list[int]:
        """Probe addresses first..last with a 1-register read; return those that answer.

        Probes are background jobs: they only use bus time that polls leave free.
        """
        from pilecore import modbus

        found = []
        for addr in range(first, last + 1):
            code, _ = await self.request(bus, addr, 3, 0, 1, PRIO_BACKGROUND, tag="scan")
            if code in (modbus.OK, modbus.E_EXCEPTION):
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
        svc.driver.request_identity(pile)
    tasks = [asyncio.create_task(svc.run_bus(name, stop)) for name in svc.buses]
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            pending = sum(s.pending_jobs() for s in svc.scheds.values())
            if (
                all(n >= 1 for n in svc.cycles_done.values())
                and pending == 0
                and not any(s.busy for s in svc.scheds.values())
            ):
                break
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        svc.wake()
        await asyncio.gather(*tasks)
    for m in svc.meters.values():
        if m.polls == 0 and m.error is None:
            m.error = "no answer within the time allowed"
    return svc.meters
