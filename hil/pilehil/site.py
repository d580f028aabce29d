"""A simulated site: buses of meters served from a background event loop.

Synchronous API for tests and tools::

    clock = ManualClock()
    with Site(clock=clock) as site:
        site.add_bus("bus1", transport="pty", baud=9600)
        site.add_meter("bus1", 1, profile, "10000001", load=ConstantLoad(7000, phases=1))
        endpoints = site.start()        # {"bus1": "/dev/pts/7"}
        ...                             # masters read meters; clock.advance(3600)
        site.meter("bus1", 1).set_no_reply()
        site.bus_stats("bus1").bytes
    # stopped: threads joined, ptys and sockets closed

All servers of a site share one asyncio loop in one daemon thread; ``start`` and ``stop``
block until that loop has done the work (a few milliseconds per bus).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

from .clock import ScaledClock
from .dlt645 import SimDltMeter, is_dlt645
from .load import Load
from .meter import SimMeter
from .registers import load_profile
from .server import FRONTENDS, ModbusTcpFrontend, PtyFrontend, PymodbusBackend
from .wire import BusStats, LineTiming, Wire

T = TypeVar("T")
TRANSPORTS = tuple(FRONTENDS)
CALL_TIMEOUT_S = 15.0


class LoopThread:
    """An asyncio event loop running in a daemon thread, driven from synchronous code."""

    def __init__(self, name: str = "pilehil") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start(self) -> None:
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = CALL_TIMEOUT_S) -> T:
        """Run ``coro`` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        """Cancel every task left, stop the loop, join the thread, close the loop."""
        if self._thread.is_alive():
            self.call(self._cancel_all())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(CALL_TIMEOUT_S)
        if not self.loop.is_closed():
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
            self.loop.close()

    @staticmethod
    async def _cancel_all() -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Bus:
    """One simulated RS-485 bus: its meters (``meters``), every device answering on it
    (``devices``: the meters and the devices added with :meth:`Site.add_device`), its wire and
    (once started) its endpoint."""

    def __init__(
        self,
        name: str,
        transport: str,
        timing: LineTiming,
        realtime: bool,
        host: str,
        port: int,
        gateway_exceptions: bool,
        check_line: bool,
    ) -> None:
        if transport not in FRONTENDS:
            raise ValueError(f"transport {transport!r} not one of {TRANSPORTS}")
        self.name = name
        self.transport = transport
        self.timing = timing
        self.host = host
        self.port = port
        self.gateway_exceptions = gateway_exceptions
        self.check_line = check_line
        self.meters: dict[int | str, SimMeter] = {}
        # Every device that answers on the bus, by address: the meters and any other device
        # added with Site.add_device (presence sensors, pile controllers: pilehil.bays).
        self.devices: dict[int | str, Any] = {}
        self.backend = PymodbusBackend(self.devices, timing)
        self.wire = Wire(name, timing, self.devices, self.backend.exchange, realtime)
        self.frontend: Any = None
        self.endpoint: str | None = None

    def __repr__(self) -> str:
        return f"Bus({self.name!r}, {self.transport}, {self.endpoint or 'stopped'})"

    @property
    def baud(self) -> int:
        return self.timing.baud

    @property
    def parity(self) -> str:
        return self.timing.parity

    @property
    def stopbits(self) -> int:
        return self.timing.stopbits

    @property
    def serial_url(self) -> str | None:
        """What a pyserial-based master (``ModbusSerialClient(port=...)``) opens: the pty
        path, or ``socket://host:port`` for ``rtu+tcp`` (pyserial's socket handler accepts any
        baud/parity, which makes it the way to test even/odd-parity configurations: Linux ptys
        refuse parity). None for ``tcp`` and before start."""
        if self.endpoint is None or self.transport == "tcp":
            return None
        if self.transport == "rtu+tcp":
            return "socket://" + self.endpoint.partition("://")[2]
        return self.endpoint

    def stats(self) -> BusStats:
        return self.wire.stats()

    def reset_stats(self) -> None:
        self.wire.reset_stats()

    def cut(self, on: bool = True) -> None:
        """Cable cut: every meter on the bus falls silent (``on=False`` repairs it)."""
        self.wire.cut = on

    @property
    def is_cut(self) -> bool:
        return self.wire.cut

    async def start(self) -> str:
        self.wire.attach_loop()
        await self.backend.start()
        if self.transport == "pty":
            self.frontend = PtyFrontend(self.wire, self.check_line)
        elif self.transport == "tcp":
            self.frontend = ModbusTcpFrontend(self.wire, self.host, self.port, self.gateway_exceptions)
        else:
            self.frontend = FRONTENDS[self.transport](self.wire, self.host, self.port)
        self.endpoint = await self.frontend.start()
        return self.endpoint

    async def stop(self) -> None:
        if self.frontend is not None:
            await self.frontend.stop()
            self.frontend = None
        await self.backend.stop()
        self.endpoint = None


class Site:
    """Buses and meters sharing one ``clock`` (a callable returning seconds; default real
    time). Add buses and meters, then :meth:`start`; :meth:`stop` (or leaving a ``with``
    block) tears everything down. A stopped site can be started again."""

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self.clock = clock if clock is not None else ScaledClock()
        self._buses: dict[str, Bus] = {}
        self._runner: LoopThread | None = None
        #: The bay simulation (:class:`pilehil.sitesim.SiteBays`) when the site was built by
        #: :func:`pilehil.sitesim.build`; None otherwise.
        self.bays: Any = None

    def __enter__(self) -> Site:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Site({list(self._buses.values())})"

    @property
    def running(self) -> bool:
        return self._runner is not None

    def _not_running(self) -> None:
        if self.running:
            raise RuntimeError("stop the site before adding buses or meters")

    def add_bus(
        self,
        name: str,
        transport: str = "pty",
        baud: int = 9600,
        parity: str = "N",
        stopbits: int = 1,
        realtime: bool = False,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        gateway_exceptions: bool = True,
        check_line: bool = True,
    ) -> Bus:
        """Declare a bus. ``transport``: ``"pty"`` (Modbus RTU on a pseudo-terminal),
        ``"tcp"`` (Modbus TCP gateway) or ``"rtu+tcp"`` (RTU frames over TCP). ``baud``,
        ``parity``, ``stopbits`` set the timing model (and the pty's line settings);
        ``realtime`` paces replies to the modelled bus time. ``host``/``port`` (0 = any free
        port) apply to TCP transports; ``gateway_exceptions`` makes the ``tcp`` front end
        answer exception 0x0B when the bus gives no valid reply. With ``check_line`` a pty
        master whose port is set to another baud rate or stop bits than the bus gets no
        replies, as on a real bus (parity cannot be set on a pty and is not checked)."""
        self._not_running()
        if name in self._buses:
            raise ValueError(f"bus {name!r} already exists")
        bus = Bus(
            name,
            transport,
            LineTiming(baud, parity.upper(), stopbits),
            realtime,
            host,
            port,
            gateway_exceptions,
            check_line,
        )
        self._buses[name] = bus
        return bus

    def add_meter(
        self,
        bus: str,
        address: int | str,
        profile: Mapping[str, Any] | str | Path,
        serial: str,
        load: Load | None = None,
        **options: Any,
    ) -> SimMeter:
        """Put a meter on ``bus`` at ``address`` (1..247 for Modbus, a 12-digit string for a
        DL/T 645 profile: a :class:`pilehil.dlt645.SimDltMeter`). ``profile`` is a profile
        dict, a TOML path or a profile id; ``options`` go to :class:`SimMeter` (``energy_wh``, ``latency_ms``,
        ``unmapped``, ``voltage_v``, ``frequency_hz``, ``power_factor``)."""
        self._not_running()
        b = self.bus(bus)
        if address in b.devices:
            raise ValueError(f"bus {bus!r} already has a device at address {address}")
        prof = profile if isinstance(profile, Mapping) else load_profile(profile)
        cls = SimDltMeter if is_dlt645(prof) else SimMeter
        meter = cls(prof, address, serial, load=load, clock=self.clock, **options)
        b.meters[address] = meter
        b.devices[address] = meter
        return meter

    def add_twin(
        self,
        bus: str,
        address: int,
        profile: Mapping[str, Any] | str | Path,
        serial: str,
        load: Load | None = None,
        **options: Any,
    ) -> SimMeter:
        """A second meter at an ``address`` another meter already uses (an addressing mistake):
        both answer every request at once and the master receives their superimposed bytes
        (a wired-AND), a CRC error unless the two replies happen to be identical."""
        self._not_running()
        b = self.bus(bus)
        if address not in b.meters:
            raise ValueError(f"bus {bus!r} has no meter at address {address} to collide with")
        if address in b.wire.twins:
            raise ValueError(f"bus {bus!r} already has a twin at address {address}")
        prof = profile if isinstance(profile, Mapping) else load_profile(profile)
        meter = SimMeter(prof, address, serial, load=load, clock=self.clock, **options)
        b.wire.twins[address] = meter
        return meter

    def add_device(self, bus: str, device: Any) -> Any:
        """Put another Modbus device on ``bus`` at ``device.address``: anything with the
        interface the wire and the server use (``address``, ``latency_ms``, ``faults`` with
        ``no_reply``/``extra_delay_ms``/``corrupt_crc``, ``mapped`` and ``read``), e.g. a
        :class:`pilehil.baydevices.SimSensor` or :class:`pilehil.baydevices.SimPileController`."""
        self._not_running()
        b = self.bus(bus)
        if not 1 <= device.address <= 247:
            raise ValueError(f"device address {device.address} outside 1..247")
        if device.address in b.devices:
            raise ValueError(f"bus {bus!r} already has a device at address {device.address}")
        b.devices[device.address] = device
        return device

    def start(self) -> dict[str, str]:
        """Start every bus; returns ``{bus name: endpoint}`` (a ``/dev/pts/N`` path,
        ``tcp://127.0.0.1:PORT`` or ``rtu+tcp://127.0.0.1:PORT``)."""
        if self._runner is None:
            runner = LoopThread()
            runner.start()
            self._runner = runner
            try:
                runner.call(self._start_all())
            except BaseException:
                self.stop()
                raise
        return self.endpoints

    async def _start_all(self) -> None:
        for bus in self._buses.values():
            await bus.start()

    async def _stop_all(self) -> None:
        for bus in self._buses.values():
            await bus.stop()

    def stop(self) -> None:
        """Stop every bus and the loop thread; closes all ptys and sockets. Idempotent."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        try:
            if runner.loop.is_running():
                runner.call(self._stop_all())
        finally:
            runner.stop()

    @property
    def endpoints(self) -> dict[str, str]:
        return {name: b.endpoint for name, b in self._buses.items() if b.endpoint}

    @property
    def buses(self) -> dict[str, Bus]:
        return dict(self._buses)

    def bus(self, name: str) -> Bus:
        try:
            return self._buses[name]
        except KeyError:
            raise KeyError(f"no bus {name!r}") from None

    def meter(self, bus: str, address: int) -> SimMeter:
        try:
            return self.bus(bus).meters[address]
        except KeyError:
            raise KeyError(f"no meter at {bus}:{address}") from None

    def meters(self) -> list[tuple[str, SimMeter]]:
        """Every ``(bus name, meter)``."""
        return [(n, m) for n, b in self._buses.items() for m in b.meters.values()]

    def device(self, bus: str, address: int) -> Any:
        """The device (meter or other) at ``bus``:``address``."""
        try:
            return self.bus(bus).devices[address]
        except KeyError:
            raise KeyError(f"no device at {bus}:{address}") from None

    def devices(self) -> list[tuple[str, Any]]:
        """Every ``(bus name, device)``, meters included."""
        return [(n, d) for n, b in self._buses.items() for d in b.devices.values()]

    def bus_stats(self, bus: str) -> BusStats:
        """Snapshot of a bus's counters (requests, replies, frames, bytes, wire_time_s...)."""
        return self.bus(bus).stats()

    def reset_stats(self, bus: str | None = None) -> None:
        for b in [self.bus(bus)] if bus else self._buses.values():
            b.reset_stats()

    def cut_cable(self, bus: str, cut: bool = True) -> None:
        """All devices on ``bus`` silent (``cut=False`` repairs)."""
        self.bus(bus).cut(cut)
