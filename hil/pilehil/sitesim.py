"""A whole simulated site from a site configuration: `pilegate sim site.toml`.

Every `[[bus]]` becomes a simulated bus (a pseudo-terminal for serial ports, a local TCP port
for tcp:// and rtu+tcp://), every pile's meter a simulated meter of its profile, and the main
meter (if any) sees the sum of the piles plus a small site load.  A pile without a `[[bay]]`
draws seeded EV charging sessions (`EvSessions`); a pile with bays draws what the vehicles in
its bays draw (pilehil.bays), and every bay gets its Modbus presence sensors, pile-controller
plug registers, digital inputs and camera, all exposed as `site.bays` (a `SiteBays`).
`rewrite_site()` writes a copy of the site file whose bus ports point at the simulator, so
`pilegate read` and `pilegate run` can use it unchanged.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pilecore import bays as core_bays

from .baydevices import FakeInputs, PlateFeed, SimPileController, SimSensor
from .bays import BaySim, Scenario
from .clock import ScaledClock
from .load import DEFAULT_OPTIONS, ConstantLoad, EvSessions, Load
from .site import Site


class SumLoad:
    """The load seen by a site's main meter: every pile's load plus a constant base load."""

    def __init__(self, loads: list[Load], base_w: int = 400) -> None:
        self.loads = loads
        self.base = ConstantLoad(base_w, phases=3)

    def power_w(self, t_ms: int) -> int:
        return self.base.power_w(t_ms) + sum(ld.power_w(t_ms) for ld in self.loads)

    def phases_at(self, t_ms: int) -> int:
        return 3

    def energy_mj(self, t0_ms: int, t1_ms: int) -> int:
        return self.base.energy_mj(t0_ms, t1_ms) + sum(ld.energy_mj(t0_ms, t1_ms) for ld in self.loads)


@dataclass
class SiteBays:
    """The bay side of a simulated site (``site.bays`` after :func:`pilehil.sitesim.build`).

    ``bays`` by bay id; ``sensors`` and ``controllers`` by ``(bus, address)``; ``inputs`` the
    board's digital inputs; ``plates`` the cameras' reads."""

    bays: dict[str, BaySim]
    sensors: dict[tuple[str, int], SimSensor]
    controllers: dict[tuple[str, int], SimPileController]
    inputs: FakeInputs
    plates: PlateFeed

    def bay(self, bay_id: str) -> BaySim:
        try:
            return self.bays[bay_id]
        except KeyError:
            raise KeyError(f"no bay {bay_id!r}") from None

    def truth(self, until: float | None = None) -> list[dict[str, Any]]:
        """:meth:`BaySim.truth` of every bay, ordered by departure, then bay."""
        out = [r for b in self.bays.values() for r in b.truth(until)]
        out.sort(key=lambda r: (r["departure"], r["bay"]))
        return out


def transport_of(port: str) -> str:
    if port.startswith("rtu+tcp://"):
        return "rtu+tcp"
    if port.startswith("tcp://"):
        return "tcp"
    return "pty"


def serial_for(profile: dict[str, Any], n: int) -> str:
    """A serial number the profile's identity register can hold (numeric for integer types)."""
    ident = profile.get("identity") or {}
    if ident.get("kind") != "serial":
        return f"SIM{n:05d}"
    if ident.get("type") == "ascii":
        width = 2 * int(ident.get("count", 4))
        return f"SIM{n:0{max(1, width - 3)}d}"[:width]
    return str(20260000 + n)


def build(
    cfg: dict[str, Any],
    speed: float = 1.0,
    seed: int = 0,
    realtime: bool = False,
    clock: Any = None,
    *,
    bays: bool = True,
    scenario: bool = True,
    mount: str = "ground",
    empty_mm: int = 2800,
    jitter_mm: int = 10,
    gap_s: tuple[int, int] = (300, 3600),
) -> tuple[Site, dict[tuple[str, int], Any]]:
    """A Site for a compiled site config (not started) and its meters by (bus, address).

    With ``bays`` (default) the configured bays are simulated too and the site gets a
    ``site.bays`` attribute (:class:`SiteBays`; also :func:`bays_of`): piles with a
    bay draw what their bays' vehicles draw, from a seeded :class:`pilehil.bays.Scenario` per
    bay (``scenario=False``: no vehicles until a test adds them with ``BaySim.add_vehicle``).
    Modbus presence sensors use ``mount``/``empty_mm`` geometry and +-``jitter_mm`` noise.
    ``bays=False`` keeps the earlier behaviour: every pile draws ``EvSessions``, no bay devices.
    """
    site = Site(clock=clock or ScaledClock(speed))
    for bus in cfg["bus"]:
        site.add_bus(bus["name"], transport_of(bus["port"]), bus["baud"], bus["parity"], bus["stopbits"], realtime)
    bay_cfgs = list(cfg.get("bay", ())) if bays else []
    with_bays = {b["pile"] for b in bay_cfgs}
    meters = {}
    pile_meters = {}
    for n, pile in enumerate(cfg["pile"], start=1):
        m = pile["meter"]
        prof = cfg["profiles"][m["profile"]]
        load: Load | None = None
        if pile["id"] not in with_bays:
            load = EvSessions(
                seed=seed + zlib.crc32(pile["id"].encode()),
                phases=int(prof["phases"]),
                idle_s=(120, 900),
                session_s=(600, 3600),
            )
        serial = m.get("serial") or serial_for(prof, n)
        meter = site.add_meter(m["bus"], m["address"], prof, serial, load=load, energy_wh=1_000_000 + 37_123 * n)
        meters[(m["bus"], m["address"])] = meter
        pile_meters[pile["id"]] = meter
    if bays:
        site.bays = build_bays(
            site,
            cfg,
            pile_meters,
            seed=seed,
            scenario=scenario,
            mount=mount,
            gap_s=gap_s,
            empty_mm=empty_mm,
            jitter_mm=jitter_mm,
        )
    main = cfg.get("main_meter")
    if main:
        prof = cfg["profiles"][main["profile"]]
        serial = main.get("serial") or serial_for(prof, 999)
        loads = [pile_meters[p["id"]].load for p in cfg["pile"]]
        meters[(main["bus"], main["address"])] = site.add_meter(
            main["bus"], main["address"], prof, serial, load=SumLoad(loads), energy_wh=50_000_000
        )
    return site, meters


def bays_of(site: Site) -> SiteBays:
    """The bay simulation of a site built by :func:`build` (``site.bays``)."""
    if site.bays is None:
        raise ValueError("this site has no bay simulation (built with bays=False, or not by sitesim.build)")
    return site.bays


def power_options(pile: dict[str, Any], phases: int) -> tuple[tuple[int, int], ...]:
    """Charging (power W, phases) a pile can deliver: pilehil.load's options for the meter's
    phase count, up to the pile's ``max_power_kw``."""
    limit = int(float(pile.get("max_power_kw", 7.0)) * 1000)
    opts = tuple(o for o in DEFAULT_OPTIONS[3 if phases == 3 else 1] if o[0] <= limit)
    return opts or ((limit, 1),)


def build_bays(
    site: Site,
    cfg: dict[str, Any],
    pile_meters: dict[str, Any],
    *,
    seed: int = 0,
    scenario: bool = True,
    mount: str = "ground",
    empty_mm: int = 2800,
    jitter_mm: int = 10,
    gap_s: tuple[int, int] = (300, 3600),
) -> SiteBays:
    """Simulate every `[[bay]]` of ``cfg`` on ``site`` (not started): a :class:`BaySim` per bay
    driving its pile's meter, a :class:`SimSensor` per Modbus presence sensor, a
    :class:`SimPileController` per plug controller address (one connector per bay), the
    board's inputs wired to presence and plug signals, and a plate feed for the cameras."""
    params_base = {k: v for k, v in (cfg.get("bays") or {}).items() if k not in ("plate_topic", "plate_broker")}
    board_inputs = [i["name"] for i in (cfg.get("board_def") or {}).get("input", ())]
    inputs = FakeInputs(site.clock, names=board_inputs)
    plates = PlateFeed(site.clock)
    sims: dict[str, BaySim] = {}
    sensors: dict[tuple[str, int], SimSensor] = {}
    controllers: dict[tuple[str, int], SimPileController] = {}
    piles = {p["id"]: p for p in cfg["pile"]}
    by_pile: dict[str, list[dict[str, Any]]] = {}
    for b in cfg.get("bay", ()):
        by_pile.setdefault(b["pile"], []).append(b)
    for pile_id, group in by_pile.items():
        meter = pile_meters[pile_id]
        for b in group:
            plug = b.get("plug") or {"source": "power"}
            params = dict(params_base, plug_source=plug["source"])
            sc = None
            if scenario:
                sc = Scenario(
                    seed + zlib.crc32(b["id"].encode()),
                    phases=meter.phases,
                    gap_s=gap_s,
                    power_options=power_options(piles[pile_id], meter.phases),
                    overstay_s=core_bays.make_params(params)["overstay_s"],
                )
            bay = BaySim(
                b["id"],
                pile_id,
                site.clock,
                meter=meter,
                drive_meter=len(group) == 1,
                camera=b.get("camera"),
                params=params,
                scenario=sc,
            )
            sims[b["id"]] = bay
            plates.add_bay(bay)
            for k, pr in enumerate(b.get("presence", ())):
                if pr["type"] == "input":
                    inputs.bind(pr["input"], bay.present, pr.get("active", "high"))
                    continue
                sensor = SimSensor(
                    cfg["sensor_profiles"][pr["profile"]],
                    pr["address"],
                    bay,
                    mount=mount,
                    empty_mm=empty_mm,
                    seed=seed + zlib.crc32(f"{b['id']}/{k}".encode()),
                )
                sensor.set_noise(jitter_mm)
                _add_device(site, pr["bus"], sensor, f"bay[{b['id']}].presence[{k + 1}]")
                sensors[(pr["bus"], pr["address"])] = sensor
            if plug["source"] == "input":
                inputs.bind(plug["input"], bay.plugged, plug.get("active", "high"))
            elif plug["source"] == "modbus":
                key = (plug["bus"], plug["address"])
                if key not in controllers:
                    controllers[key] = _add_device(
                        site, plug["bus"], SimPileController(plug["address"], site.clock), f"bay[{b['id']}].plug"
                    )
                controllers[key].add_connector(
                    bay, plug.get("function", 3), plug["register"], plug.get("plugged_values", [1])
                )
        if len(group) > 1:  # one meter behind several connectors: it sees their sum
            meter.load = SumLoad([sims[b["id"]].load for b in group], base_w=0)
    for pile in cfg["pile"]:  # enable coils the gateway switches (interlock = "relay")
        coil = pile.get("coil")
        if coil:
            key = (coil["bus"], coil["address"])
            if key not in controllers:
                controllers[key] = _add_device(
                    site, coil["bus"], SimPileController(coil["address"], site.clock), f"pile[{pile['id']}].coil"
                )
            controllers[key].add_enable_coil(coil["coil"])
    return SiteBays(sims, sensors, controllers, inputs, plates)


def _add_device(site: Site, bus: str, device: Any, where: str) -> Any:
    try:
        return site.add_device(bus, device)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def rewrite_site(text: str, endpoints: dict[str, str], transports: dict[str, str]) -> str:
    """The site file with each bus's `port` pointing at the simulator.

    Pseudo-terminals cannot carry parity on Linux, so a pty bus is written with parity "N"
    (the simulator still times the wire with the configured parity).
    """
    lines = text.splitlines()
    out: list[str] = []
    in_bus = False
    block: list[str] = []

    def flush() -> None:
        name = None
        for ln in block:
            m = re.match(r'^\s*name\s*=\s*"([^"]+)"', ln)
            if m:
                name = m.group(1)
        for ln in block:
            if name in endpoints and re.match(r"^\s*port\s*=", ln):
                ln = f'port = "{endpoints[name]}"   # simulated ({transports[name]})'
            elif name in endpoints and transports[name] == "pty" and re.match(r"^\s*parity\s*=", ln):
                ln = 'parity = "N"   # a pseudo-terminal cannot carry parity'
            out.append(ln)
        block.clear()

    for ln in lines:
        header = re.match(r"^\s*\[", ln)
        if header:
            if in_bus:
                flush()
            in_bus = ln.strip() == "[[bus]]"
        (block if in_bus else out).append(ln)
    if in_bus:
        flush()
    return "\n".join(out) + "\n"


def write_site(src: Path, dst: Path, site: Site, cfg: dict[str, Any]) -> None:
    transports = {b["name"]: transport_of(b["port"]) for b in cfg["bus"]}
    dst.write_text(rewrite_site(src.read_text(), site.endpoints, transports))
