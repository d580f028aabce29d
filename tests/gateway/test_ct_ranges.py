"""A CT-connected site main meter: its primary powers exceed the profile's direct-connection
ranges; the site file's per-meter `ranges` make them readings instead of faults (issue 14)."""

from __future__ import annotations

import asyncio

from simsite import pile_block

from pilegate.metering_service import Metering
from pilehil import ConstantLoad


def _main_reading(s):
    async def go():
        svc = Metering(s.cfg, poll_s=3600)
        stop = asyncio.Event()
        task = asyncio.create_task(svc.run_bus("bus1", stop))
        for _ in range(500):
            if svc.cycles_done.get("_main", 0) >= 1:
                break
            await asyncio.sleep(0.01)
        stop.set()
        svc.wake()
        await task
        return svc.meters["_main"]

    return asyncio.run(go())


def _site(sim_site, ranges: str):
    body = pile_block("P1", 1, "eastron-sdm120") + (
        f'\n[main_meter]\nbus = "bus1"\naddress = 9\nprofile = "eastron-sdm630"\n{ranges}'
    )
    s = sim_site(body)
    s.meter(9).load = ConstantLoad(150_000, 3)  # 150 kW through 250/5 A transformers
    return s


def test_without_an_override_the_primary_power_is_a_fault(sim_site):
    m = _main_reading(_site(sim_site, ""))
    assert m.faults and m.faults[0][0] == "power"
    assert m.reading is None or "power_w" not in m.reading


def test_the_site_files_ranges_make_it_a_reading(sim_site):
    m = _main_reading(_site(sim_site, "ranges = { power = [-300000.0, 300000.0], current = [0.0, 500.0] }\n"))
    assert m.faults == []
    assert abs(m.reading["power_w"] - 150_000) < 1
