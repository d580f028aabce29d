"""Energy at the finest resolution the meter has (issue 14): the Acrel ADL400 reads its 0.01 kWh
secondary-side total times the PT and CT ratios it holds, through the gateway, against the
simulator; a short session bills in 10 Wh steps, not the primary table's 100 Wh."""

from __future__ import annotations

from polling import read_once
from simsite import pile_block

from pilecore import ocmf
from pilehil import ConstantLoad


def _read(s):
    meters = read_once(s.cfg)
    m = meters["P1"]
    assert m.error is None, m.error
    return m


def test_a_20_minute_7_kw_charge_bills_2_33_kwh_not_2_3(sim_site):
    s = sim_site(pile_block("P1", 7, "acrel-adl400"), loads={7: ConstantLoad(7000, 3)})
    truth = s.meter(7)
    first = _read(s)
    start_wh = first.reading["energy_wh"]
    s.clock.advance(20 * 60)
    last = _read(s)
    end_wh = last.reading["energy_wh"]
    # the register holds the truth in 0.01 kWh steps (the simulator rounds like a meter's counter)
    assert abs(end_wh - truth.energy_wh) <= 5 and end_wh % 10 == 0
    assert last.plan.energy_step_wh() == 10
    billed = end_wh - start_wh
    assert 2320 <= billed <= 2340, billed  # 7 kW x 1/3 h = 2333 Wh
    assert billed % 10 == 0 and billed % 100 != 0  # finer than the 0.1 kWh table could say
    # the billing record writes it at that resolution: 2 decimals
    assert ocmf.kwh(billed, last.plan.energy_step_wh()) == "%.2f" % (billed / 1000)


def test_ct_ratio_is_read_from_the_meter_and_applied(sim_site):
    s = sim_site(pile_block("P1", 7, "acrel-adl400"), loads={7: ConstantLoad(7000, 3)})
    meter = s.meter(7)
    meter.ratios["ct"] = 20  # a 100/5 A current transformer
    s.clock.advance(3600)
    m = _read(s)
    assert abs(m.reading["energy_wh"] - meter.energy_wh) <= 100  # half a 200 Wh step
    assert m.reading["energy_wh"] % 200 == 0
    assert m.plan.energy_step_wh() == 200
    assert m.plan.ratio_values == {"pt": 1, "ct": 20}


def test_a_ratio_of_zero_is_a_fault_never_a_reading(sim_site):
    s = sim_site(pile_block("P1", 7, "acrel-adl400"))
    s.meter(7).ratios["pt"] = 0
    meters = read_once(s.cfg)
    m = meters["P1"]
    assert m.reading is None or "energy_wh" not in m.reading
    assert ("energy_import", "transformer ratio pt unreadable or 0") in m.faults
