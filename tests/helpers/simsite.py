"""Test helpers: a simulated site built from a site file (used by gateway tests and benchmarks)."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pilegate import siteconfig
from pilehil import ManualClock, sitesim

BASE_SITE = """
[gateway]
id = "GW-T1"
site = "test-site"
board = "rpi4-usb-rs485"

[mqtt]
url = "mqtt://127.0.0.1:1883"
allow_insecure = true

[metering]
offline_after_s = 30
verify_serial_s = 600

[[bus]]
name = "bus1"
port = "/dev/ttyUSB0"
baud = 9600
"""


def pile_block(pid: str, address: int, profile: str, extra: str = "", serial: str = "") -> str:
    """A pile with its meter on bus1; `serial` commissioned (the simulator's meter gets it), or
    empty: learned by reading it twice (docs/metering.md)."""
    return (
        textwrap.dedent(f"""
        [[pile]]
        id = "{pid}"
        meter = {{ bus = "bus1", address = {address}, profile = "{profile}", serial = "{serial}" }}
        """)
        + extra
    )


@dataclass
class SimSite:
    sim: Any
    meters: dict[tuple[str, int], Any]
    clock: ManualClock
    path: Path
    site: siteconfig.Site

    @property
    def cfg(self) -> dict[str, Any]:
        return self.site.config

    def meter(self, address: int, bus: str = "bus1") -> Any:
        return self.meters[(bus, address)]


def make_sim_site(
    tmp_path: Path,
    body: str,
    base: str = BASE_SITE,
    loads: dict[int, Any] | None = None,
    clock: ManualClock | None = None,
) -> SimSite:
    """Write a site file, simulate it, and return the simulator and the site pointing at it."""
    src = tmp_path / "site.toml"
    src.write_text(base + body)
    site, problems = siteconfig.load_site(src)
    assert site is not None, "\n".join(map(str, problems))
    clock = clock or ManualClock(1000.0)
    sim, meters = sitesim.build(site.config, clock=clock)
    for address, load in (loads or {}).items():
        meters[("bus1", address)].load = load
    sim.start()
    dst = tmp_path / "sim-site.toml"
    sitesim.write_site(src, dst, sim, site.config)
    site2, problems = siteconfig.load_site(dst)
    assert site2 is not None, "\n".join(map(str, problems))
    return SimSite(sim, meters, clock, dst, site2)
