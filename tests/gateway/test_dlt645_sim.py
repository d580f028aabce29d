"""DL/T 645 meters and Modbus meters on one simulated bus, read through the Pi's gateway path.

The simulator serves DL/T 645-2007 frames (pilehil.dlt645) on the same pseudo-terminal as the
pymodbus meters; the gateway drives such a bus with its raw-frame port (pilegate.serial_port)
and the core scheduler, so both protocols share one line and one schedule.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

from polling import read_once
from simsite import pile_block

from pilecore import dlt645, modbus
from pilecore.scheduler import BusScheduler, Txn
from pilegate.serial_port import RawBusPort
from pilehil import ConstantLoad

DLT_ADDR = "000012345678"


def dlt_block(pid: str, address: str, profile: str) -> str:
    return f"""
[[pile]]
id = "{pid}"
meter = {{ bus = "bus1", address = "{address}", profile = "{profile}", serial = "" }}
"""


def close(a: float, b: float, tol: float) -> bool:
    return abs(a - b) <= tol


def test_mixed_bus_one_dlt645_two_modbus_meters(sim_site):
    body = (
        dlt_block("P1", DLT_ADDR, "chint-dtsu666-dlt645")
        + pile_block("P2", 2, "eastron-sdm120")
        + pile_block("P3", 3, "chint-dtsu666")
    )
    s = sim_site(body, loads={2: ConstantLoad(3000, 1), 3: ConstantLoad(9000, 3)})
    s.meter(DLT_ADDR).load = ConstantLoad(11040, 3)
    s.clock.advance(3600)
    meters = read_once(s.cfg)
    for pid in ("P1", "P2", "P3"):
        assert meters[pid].error is None, (pid, meters[pid].error)
    truth = s.meter(DLT_ADDR)
    r = meters["P1"].reading
    # energy in the item's 0.01 kWh steps, truncated as the meter's register is
    assert truth.energy_wh - 10 < r["energy_wh"] <= truth.energy_wh
    assert close(r["power_w"], 11040, 0.1)
    for got, want in zip(r["voltage_v"], truth.voltage, strict=True):
        assert close(got, want, 0.06)
    for got, want in zip(r["current_a"], truth.current, strict=True):
        assert close(got, want, 0.0006)
    assert close(r["frequency_hz"], 50.0, 0.005) and close(r["power_factor"], 0.99, 0.0006)
    assert meters["P1"].identity == truth.serial
    assert meters["P2"].identity == s.meter(2).serial
    assert close(meters["P3"].reading["power_w"], 9000, 1)
    stats = s.sim.bus_stats("bus1")
    assert stats.bad_requests == 0 and stats.line_errors == 0


def _transact(endpoint: str, txn: Txn) -> tuple[int, object, int]:
    async def go() -> tuple[int, object, int]:
        port = RawBusPort({"name": "bus1", "port": endpoint, "baud": 9600, "parity": "N", "stopbits": 1})
        try:
            return await port.perform(txn)
        finally:
            port.close()

    return asyncio.run(go())


def test_broadcast_address_read_finds_the_only_meter(sim_site):
    s = sim_site(dlt_block("P1", DLT_ADDR, "chint-ddsu666-dlt645"))
    sched = BusScheduler("bus1")
    sched.submit(dlt645.WILDCARD, dlt645.C_READ_ADDRESS, 0, 0)
    txn = sched.next_txn(0)
    code, address, _ = _transact(s.sim.endpoints["bus1"], txn)
    assert (code, address) == (modbus.OK, DLT_ADDR)


def test_broadcast_address_read_collides_with_two_meters(sim_site):
    s = sim_site(
        dlt_block("P1", DLT_ADDR, "chint-ddsu666-dlt645") + dlt_block("P2", "000012345679", "chint-ddsu666-dlt645")
    )
    txn = Txn("job", None, dlt645.WILDCARD, dlt645.C_READ_ADDRESS, 0, 0, 300, protocol="dlt645")
    code, _, _ = _transact(s.sim.endpoints["bus1"], txn)
    assert code == modbus.E_TIMEOUT  # two answers on one line are garbage: the installer is told to isolate


def test_abnormal_answer_no_such_data_marks_the_value_unsupported(sim_site):
    s = sim_site(dlt_block("P1", DLT_ADDR, "chint-dtsu666-dlt645"))
    s.meter(DLT_ADDR).add_exception(dlt645.ERR_NO_DATA, start=dlt645.DI_FREQUENCY, end=dlt645.DI_FREQUENCY)
    meters = read_once(s.cfg)
    m = meters["P1"]
    assert "frequency_hz" not in m.reading and "energy_wh" in m.reading
    assert ("frequency", 0) in m.plan.unsupported


def test_refused_block_read_falls_back_to_one_item_per_phase(sim_site):
    s = sim_site(dlt_block("P1", DLT_ADDR, "chint-dtsu666-dlt645"))
    s.meter(DLT_ADDR).add_exception(dlt645.ERR_OTHER, start=0x0201FF00, end=0x0201FF00)
    s.meter(DLT_ADDR).load = ConstantLoad(6000, 3)
    meters = read_once(s.cfg)
    m = meters["P1"]
    assert m.error is None, m.error
    assert len(m.reading["voltage_v"]) == 3 and all(v > 200 for v in m.reading["voltage_v"])
    assert [0x11, 0x0201FF00, 6] not in m.plan.reads and [0x11, 0x02010100, 2] in m.plan.reads


def test_pilegate_read_json_on_a_mixed_bus(sim_site):
    """`pilegate read` (the installer's first look) reads the DL/T 645 and Modbus meters alike."""
    body = dlt_block("P1", DLT_ADDR, "chint-ddsu666-dlt645") + pile_block("P2", 2, "eastron-sdm120")
    s = sim_site(body, loads={2: ConstantLoad(3000, 1)})
    s.meter(DLT_ADDR).load = ConstantLoad(2000, 1)
    s.clock.advance(600)
    proc = subprocess.run(
        [sys.executable, "-m", "pilegate.cli", "read", str(s.path), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    rows = {r["pile"]: r for r in json.loads(proc.stdout)}
    assert rows["P1"]["address"] == DLT_ADDR and rows["P1"]["error"] is None
    assert rows["P1"]["power_w"] == 2000.0 and rows["P1"]["serial"] == s.meter(DLT_ADDR).serial
    assert rows["P2"]["power_w"] == 3000.0 and rows["P2"]["error"] is None


def test_an_abnormal_reply_is_reported_in_dl_t_645_terms(sim_site):
    """A meter that answers an item with "other error" (not "no such data") keeps it in the plan
    and raises meter.exception naming the DL/T 645 error, not a Modbus exception."""
    from pilegate.metering_service import Metering

    s = sim_site(dlt_block("P1", DLT_ADDR, "chint-ddsu666-dlt645"))
    s.meter(DLT_ADDR).add_exception(dlt645.ERR_OTHER, start=dlt645.DI_FREQUENCY, end=dlt645.DI_FREQUENCY)
    events: list[dict] = []

    async def go():
        svc = Metering(s.cfg, on_event=events.append, poll_s=3600)
        stop = asyncio.Event()
        task = asyncio.create_task(svc.run_bus("bus1", stop))
        for _ in range(1000):
            if any(e["type"] == "meter.exception" for e in events):
                break
            await asyncio.sleep(0.01)
        stop.set()
        svc.wake()
        await task
        return svc

    svc = asyncio.run(go())
    exc = [e for e in events if e["type"] == "meter.exception"]
    assert exc and exc[0]["code"] == dlt645.ERR_OTHER and exc[0]["reason"] == "other error"
    assert exc[0]["read"] == [0x11, dlt645.DI_FREQUENCY, 2]
    assert svc.meters["P1"].plan.unsupported == []


def test_a_dlt645_job_on_a_modbus_only_bus_is_refused_not_sent(sim_site):
    from pilegate.modbus_port import BusPort

    s = sim_site(pile_block("P1", 2, "eastron-sdm120"))
    txn = Txn("job", None, dlt645.WILDCARD, dlt645.C_READ_ADDRESS, 0, 0, 300, protocol="dlt645")

    async def go():
        port = BusPort({"name": "bus1", "port": s.sim.endpoints["bus1"], "baud": 9600})
        try:
            return await port.perform(txn)
        finally:
            port.close()

    code, why, _ = asyncio.run(go())
    assert code == modbus.E_FUNCTION and "DL/T 645" in why
    assert s.sim.bus_stats("bus1").requests == 0


def test_a_dlt645_meter_left_at_its_factory_2400_baud_does_not_answer_a_9600_bus(sim_site):
    """The field's first mixed-bus trap: the DL/T 645 meter still at 2400 8E1 on a 9600 bus.
    It hears nothing (a pty checks the baud rate), the Modbus meters keep being read."""
    body = dlt_block("P1", DLT_ADDR, "chint-dtsu666-dlt645") + pile_block("P2", 2, "eastron-sdm120")
    s = sim_site(body)
    s.meter(DLT_ADDR).baud = 2400
    meters = read_once(s.cfg, tries=1)
    assert meters["P1"].error is not None and meters["P1"].reading is None
    assert meters["P2"].error is None
    assert s.sim.bus_stats("bus1").line_errors > 0
