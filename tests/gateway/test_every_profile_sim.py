"""Every shipped meter profile (Modbus and DL/T 645) read end to end through the Pi gateway's
path against the simulator: the simulator serves the truth as the profile maps it, the gateway's
planner, scheduler, port and decoder must give the truth back (issue 14: each of the 15+
profiles read end to end)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from polling import read_once
from simsite import pile_block

from pilehil import ConstantLoad

ROOT = Path(__file__).resolve().parents[2]
PROFILES = {
    p.stem: tomllib.loads(p.read_text(encoding="utf-8")) for p in sorted((ROOT / "profiles/meters").glob("*.toml"))
}
DLT_ADDRESS = "000020261234"


def _block(pid: str, prof: dict) -> tuple[str, object]:
    if prof.get("protocol") == "dlt645":
        meter = f'{{ bus = "bus1", address = "{DLT_ADDRESS}", profile = "{prof["id"]}" }}'
        body = f'\n[[pile]]\nid = "{pid}"\nmeter = {meter}\n'
        return body, DLT_ADDRESS
    return pile_block(pid, 7, prof["id"]), 7


def _step(prof: dict, name: str) -> float:
    """What one raw step of a value is worth in its unit (0 for floats: exact to the float)."""
    spec = prof["values"][name]
    if prof.get("protocol") == "dlt645":
        return spec.get("scale", 1) / 10 ** spec["decimals"]
    if spec["type"] == "f32":
        return 0.0
    return abs(spec["scale"])


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_profile_reads_the_truth_through_the_gateway(sim_site, name):
    prof = PROFILES[name]
    phases = prof["phases"]
    body, address = _block("P1", prof)
    s = sim_site(body)
    truth = s.meter(address)
    truth.load = ConstantLoad(6900 if phases == 1 else 11040, phases)
    s.clock.advance(3600)
    meters = read_once(s.cfg)
    m = meters["P1"]
    assert m.error is None, m.error
    r = m.reading
    values = prof["values"]
    # energy: within one step of the register (the simulator rounds like the meter's counter)
    step_wh = _step(prof, "energy_import") * 1000
    assert abs(r["energy_wh"] - truth.energy_wh) <= max(1, step_wh), (r["energy_wh"], truth.energy_wh)
    assert abs(r["power_w"] - truth.power_w) <= max(0.5, _step(prof, "power")), (r["power_w"], truth.power_w)
    if "voltage" in values:
        assert len(r["voltage_v"]) == phases
        for got, want in zip(r["voltage_v"], truth.voltage, strict=True):
            assert abs(got - want) <= max(0.01, _step(prof, "voltage")), (got, want)
    if "current" in values:
        assert len(r["current_a"]) == phases
        for got, want in zip(r["current_a"], truth.current, strict=True):
            assert abs(got - want) <= max(0.001, _step(prof, "current")), (got, want)
    if "frequency" in values:
        assert abs(r["frequency_hz"] - 50.0) <= max(0.001, _step(prof, "frequency"))
    if "power_factor" in values:
        assert abs(r["power_factor"] - 0.99) <= max(0.001, _step(prof, "power_factor"))
    if prof["identity"]["kind"] == "serial":
        assert m.identity == truth.serial
