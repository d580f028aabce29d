"""A whole simulated site from a site configuration: `pilegate sim site.toml`.

Every `[[bus]]` becomes a simulated bus (a pseudo-terminal for serial ports, a local TCP port
for tcp:// and rtu+tcp://), every pile's meter a simulated meter of its profile with seeded EV
charging sessions, and the main meter (if any) sees the sum of the piles plus a small site
load.  `rewrite_site()` writes a copy of the site file whose bus ports point at the simulator,
so `pilegate read` and `pilegate run` can use it unchanged.
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path
from typing import Any

from .clock import ScaledClock
from .load import ConstantLoad, EvSessions, Load
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


def build(cfg: dict[str, Any], speed: float = 1.0, seed: int = 0, realtime: bool = False,
          clock: Any = None) -> tuple[Site, dict[tuple[str, int], Any]]:
    """A Site for a compiled site config (not started) and its meters by (bus, address)."""
    site = Site(clock=clock or ScaledClock(speed))
    for bus in cfg["bus"]:
        site.add_bus(bus["name"], transport_of(bus["port"]), bus["baud"], bus["parity"], bus["stopbits"],
                     realtime)
    meters = {}
    loads: list[Load] = []
    for n, pile in enumerate(cfg["pile"], start=1):
        m = pile["meter"]
        prof = cfg["profiles"][m["profile"]]
        phases = int(prof["phases"])
        load = EvSessions(seed=seed + zlib.crc32(pile["id"].encode()), phases=phases,
                          idle_s=(120, 900), session_s=(600, 3600))
        loads.append(load)
        serial = m.get("serial") or serial_for(prof, n)
        meters[(m["bus"], m["address"])] = site.add_meter(m["bus"], m["address"], prof, serial, load=load,
                                                         energy_wh=1_000_000 + 37_123 * n)
    main = cfg.get("main_meter")
    if main:
        prof = cfg["profiles"][main["profile"]]
        serial = main.get("serial") or serial_for(prof, 999)
        meters[(main["bus"], main["address"])] = site.add_meter(
            main["bus"], main["address"], prof, serial, load=SumLoad(loads), energy_wh=50_000_000)
    return site, meters


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
