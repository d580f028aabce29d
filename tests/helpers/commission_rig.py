"""A simulated site for commissioning tests: one pty bus, meters, and piles whose loads run
through whichever meter the (possibly wrong) wiring says, each switched by an enable coil of
a simulated pile controller, so the tool's interlocks really stop a pile's load."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pilehil import ManualClock
from pilehil.baydevices import SimPileController
from pilehil.load import ConstantLoad, SwitchedLoad
from pilehil.site import Site
from pilehil.sitesim import SumLoad

CONTROLLER = 50
PILES = {  # pile -> (address, profile, serial the simulated meter holds)
    "P01": (1, "chint-ddsu666", "SIM00001"),
    "P02": (2, "chint-ddsu666", "SIM00002"),
    "P03": (3, "eastron-sdm120", "20260003"),
    "P04": (4, "eastron-sdm120", "20260004"),
}


DLT = ("P05", "000000000005", "chint-ddsu666-dlt645", "000000000005")  # pile, address, profile, meter number


def site_text(port: str, data_dir: Path, dlt: bool = False) -> str:
    """A site file for the rig: four piles on bus1, each interlocked by a coil; with `dlt` a
    fifth whose meter speaks DL/T 645 at its 12-digit address."""
    text = textwrap.dedent(f"""\
        # commissioning test site
        [gateway]
        id = "GW-C1"
        site = "commission-test"
        board = "rpi4-usb-rs485"
        data_dir = "{data_dir}"

        [mqtt]
        url = "mqtt://127.0.0.1:1883"
        allow_insecure = true

        [[bus]]
        name = "bus1"
        port = "{port}"   # the RS-485 adapter
        baud = 9600
        """)
    for i, (pid, (addr, prof, _)) in enumerate(PILES.items()):
        text += textwrap.dedent(f"""
            [[pile]]
            id = "{pid}"   # bay {i + 1}
            meter = {{ bus = "bus1", address = {addr}, profile = "{prof}", serial = "" }}
            interlock = "relay"
            coil = {{ bus = "bus1", address = {CONTROLLER}, coil = {i} }}
            """)
    if dlt:
        text += textwrap.dedent(f"""
            [[pile]]
            id = "{DLT[0]}"
            meter = {{ bus = "bus1", address = "{DLT[1]}", profile = "{DLT[2]}", serial = "" }}
            interlock = "relay"
            coil = {{ bus = "bus1", address = {CONTROLLER}, coil = 4 }}
            """)
    return text


@dataclass
class Rig:
    site: Site
    clock: ManualClock
    loads: dict[str, SwitchedLoad]
    controller: SimPileController
    meters: dict[int, Any] = field(default_factory=dict)

    @property
    def port(self) -> str:
        return self.site.endpoints["bus1"]


def build(
    wiring: dict[str, int] | None = None,
    missing: tuple[int, ...] = (),
    baud: dict[int, int] | None = None,
    twin: int | None = None,
    foreign: int | None = None,
    power_w: int = 7000,
    dlt: bool = False,
    dead_coil: str | None = None,
) -> Rig:
    """The rig, not started. `wiring`: pile -> meter address its load really runs through
    (default its own); `missing`: addresses with no meter; `baud`: address -> the meter's own
    baud rate; `twin`: an address where a second meter also answers; `foreign`: an address
    whose meter is a model no profile describes."""
    clock = ManualClock(0.0)
    site = Site(clock=clock)
    site.add_bus("bus1", transport="pty", baud=9600)
    loads = {pid: SwitchedLoad(ConstantLoad(power_w, phases=1), clock) for pid in PILES}
    wiring = {pid: PILES[pid][0] for pid in PILES} | (wiring or {})
    rig = Rig(site, clock, loads, SimPileController(CONTROLLER, clock))
    for addr, prof, serial in PILES.values():
        if addr in missing:
            continue
        through = [loads[p] for p, a in wiring.items() if a == addr]
        load = SumLoad(through, base_w=0) if through else ConstantLoad(0)
        profile: Any = foreign_profile() if addr == foreign else prof
        rig.meters[addr] = site.add_meter("bus1", addr, profile, serial, load=load, baud=(baud or {}).get(addr))
    if twin is not None:
        site.add_twin("bus1", twin, PILES_BY_ADDR[twin][1], "20269999", load=ConstantLoad(1500, phases=1))
    for i, pid in enumerate(PILES):  # `dead_coil`: that pile's coil is not wired to its contactor
        rig.controller.add_enable_coil(i, True, switch=None if pid == dead_coil else loads[pid])
    if dlt:  # a DL/T 645 meter set to the bus's line, its pile on coil 4
        loads[DLT[0]] = SwitchedLoad(ConstantLoad(power_w, phases=1), clock)
        site.add_meter("bus1", DLT[1], DLT[2], DLT[3], load=loads[DLT[0]], baud=9600)
        rig.controller.add_enable_coil(4, True, switch=loads[DLT[0]])
    site.add_device("bus1", rig.controller)
    return rig


PILES_BY_ADDR = {addr: (pid, prof) for pid, (addr, prof, _) in PILES.items()}


def foreign_profile() -> dict[str, Any]:
    """A meter of a model pilegate has no profile for: its registers are somewhere else."""
    from pilehil.registers import load_profile

    p = dict(load_profile("eastron-sdm120"))
    p["id"] = "acme-x1"
    p["values"] = {
        name: dict(spec, register=[0x3000 + 2 * k] if isinstance(spec["register"], list) else 0x3000 + 2 * k)
        for k, (name, spec) in enumerate(p["values"].items())
    }
    p["identity"] = {"kind": "address", "note": "none"}
    p.pop("recognize", None)
    return p
