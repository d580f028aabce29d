"""Simulated meter truth (pilehil.meter, pilehil.load): exact energy, consistent electrical
values, deterministic EV sessions, datastore-side faults, swap/reset/freeze."""

import math

import pytest

from pilehil.clock import ManualClock
from pilehil.load import MJ_PER_WH, ConstantLoad, EvSessions, parse_load
from pilehil.meter import SimMeter
from pilehil.registers import decode_identity, decode_value


def profile_1p():
    return {
        "id": "test-1p",
        "phases": 1,
        "function": 4,
        "byte_order": "big",
        "word_order": "big",
        "response_ms": 40,
        "values": {
            "energy_import": {"register": 0x0100, "type": "u32", "scale": 0.01, "unit": "kWh"},
            "power": {"register": 0x0010, "type": "s32", "scale": 1, "unit": "W"},
            "voltage": {"register": [0x0000], "type": "u16", "scale": 0.1, "unit": "V"},
            "current": {"register": [0x0001], "type": "u16", "scale": 0.01, "unit": "A"},
        },
        "identity": {"kind": "serial", "register": 0x4000, "type": "u32", "count": 2, "function": 3},
    }


def profile_3p():
    return {
        "id": "test-3p",
        "phases": 3,
        "function": 3,
        "byte_order": "big",
        "word_order": "little",
        "values": {
            "energy_import": {"register": 0x0040, "type": "f32", "scale": 1.0, "unit": "kWh"},
            "power": {"register": 0x0020, "type": "f32", "scale": 1.0, "unit": "W"},
            "voltage": {"register": [0x0000, 0x0002, 0x0004], "type": "f32", "scale": 1.0, "unit": "V"},
            "current": {"register": [0x0006, 0x0008, 0x000A], "type": "f32", "scale": 1.0, "unit": "A"},
            "frequency": {"register": 0x0030, "type": "f32", "scale": 1.0, "unit": "Hz"},
            "power_factor": {"register": 0x0032, "type": "f32", "scale": 1.0, "unit": ""},
        },
        "identity": {"kind": "serial", "register": 0x1000, "type": "ascii", "count": 4, "function": 3},
    }


def test_energy_is_exact_integer_wh_whatever_the_sampling():
    clock = ManualClock(1000.0)
    a = SimMeter(profile_1p(), 1, "1", load=ConstantLoad(7000, phases=1), clock=clock)
    b = SimMeter(profile_1p(), 2, "2", load=ConstantLoad(7000, phases=1), clock=clock)
    for _ in range(3600):  # a is read every second, b only at the end
        clock.advance(1.0)
        assert a.energy_wh == 7000 * (a.t_ms // 1000) // 3600
    assert a.energy_wh == b.energy_wh == 7000
    assert b.delivered_mj == 7000 * 3_600_000


def test_energy_counts_whole_wh_only():
    clock = ManualClock()
    m = SimMeter(profile_1p(), 1, "1", load=ConstantLoad(1, phases=1), clock=clock, energy_wh=500)
    clock.advance(3599.999)
    assert m.energy_wh == 500
    clock.advance(0.001)
    assert m.energy_wh == 501


def test_electrical_values_are_consistent_with_power():
    clock = ManualClock()
    m = SimMeter(profile_3p(), 1, "SN1", load=ConstantLoad(11000, phases=3), clock=clock)
    v = m.values()
    assert v["power"] == 11000
    assert sum(u * i * v["power_factor"] for u, i in zip(v["voltage"], v["current"], strict=True)) == pytest.approx(
        11000
    )
    assert all(200 < u < 240 for u in v["voltage"]) and len(set(v["voltage"])) == 3
    one = SimMeter(profile_3p(), 2, "SN2", load=ConstantLoad(7000, phases=1), clock=clock)
    v = one.values()
    assert v["current"][1] == v["current"][2] == 0.0 and v["current"][0] > 30
    idle = SimMeter(profile_3p(), 3, "SN3", clock=clock).values()
    assert idle["power"] == 0 and idle["current"] == [0.0, 0.0, 0.0]


def test_image_decodes_to_truth():
    clock = ManualClock()
    m = SimMeter(profile_3p(), 1, "SN-42", load=ConstantLoad(22000), clock=clock, energy_wh=123_456)
    clock.advance(1800)
    image = m.image()
    p = profile_3p()
    assert decode_value(p, "energy_import", image) == pytest.approx(134.456, abs=1e-3)
    assert decode_value(p, "power", image) == 22000.0
    assert decode_value(p, "voltage", image) == pytest.approx(m.voltage, rel=1e-6)
    assert decode_identity(p, image) == "SN-42"


def test_ev_sessions_are_deterministic_and_exact():
    a, b, c = EvSessions(seed=7), EvSessions(seed=7), EvSessions(seed=8)
    day = 24 * 3600 * 1000
    assert a.energy_mj(0, day) == b.energy_mj(0, day) != c.energy_mj(0, day)
    assert [s.plug_ms for s in a.sessions_until(day)] == [s.plug_ms for s in b.sessions_until(day)]
    # additive: splitting the interval anywhere gives the same integer
    assert a.energy_mj(0, 12_345_678) + a.energy_mj(12_345_678, day) == a.energy_mj(0, day)
    sessions = a.sessions_until(day)
    assert len(sessions) >= 3
    for s in sessions:
        assert (s.power_w, s.phases) in a.options
        assert a.power_w(s.plug_ms - 1) == 0  # idle before plug-in
        assert 0 < a.power_w(s.plug_ms) < s.power_w  # ramp starts low
        mid = s.plug_ms + 600_000
        assert abs(a.power_w(mid) - s.power_w) <= s.power_w * 0.01 + 1
        assert a.power_w(s.unplug_ms) == 0
        assert a.energy_mj(s.plug_ms, s.unplug_ms) == s.energy_mj > 0


def test_ev_sessions_on_single_phase_meter_are_single_phase():
    load = EvSessions(seed=1, phases=1)
    assert all(ph == 1 for _, ph in load.options)


def test_parse_load():
    assert parse_load("idle").power_w(5) == 0
    assert parse_load("constant:3700").power_w(0) == 3700
    assert parse_load("constant:3700:1").phases_at(0) == 1
    assert isinstance(parse_load("ev:3", seed=10), EvSessions)
    assert parse_load("ev:3", seed=10).seed == 13
    with pytest.raises(ValueError):
        parse_load("solar")


def test_datastore_faults_in_order():
    clock = ManualClock()
    m = SimMeter(profile_1p(), 1, "1", load=ConstantLoad(100), clock=clock)
    assert m.read(4, 0x0100, 2) == [0, 0]
    assert m.read(4, 0x00FF, 4)[0] == 0 and m.read(4, 0x00FF, 4)[3] == 0  # unmapped: zeros
    m.set_block_limit(3, code=3)
    assert m.read(4, 0x0100, 4) == 3
    assert m.read(4, 0x0100, 3) != 3
    m.add_exception(4, start=0x0101, end=0x0101)
    assert m.read(4, 0x0100, 2) == 4  # touches 0x0101
    assert m.read(4, 0x0102, 1) == [0]  # does not
    assert m.read(4, 0x0100, 9) == 4  # injected exceptions come before the limit
    m.clear_faults()
    assert isinstance(m.read(4, 0x0100, 9), list)
    m.unmapped = "exception"
    assert m.read(4, 0x00FF, 3) == 2
    assert isinstance(m.read(4, 0x0100, 2), list)
    with pytest.raises(ValueError):
        m.add_exception(9)


def test_swap_reset_freeze():
    clock = ManualClock()
    m = SimMeter(profile_1p(), 1, "111", load=ConstantLoad(3600, phases=1), clock=clock, energy_wh=1000)
    clock.advance(3600)
    assert m.energy_wh == 4600
    m.reset_energy()
    assert m.energy_wh == 0
    clock.advance(1800)
    assert m.energy_wh == 1800
    m.swap("222", energy_wh=50)
    assert m.serial == "222" and m.energy_wh == 50
    assert decode_identity(profile_1p(), m.image()) == "222"
    assert m.delivered_wh == 3600 + 1800  # the pile's truth is unaffected
    m.freeze()
    frozen = m.image()
    clock.advance(3600)
    assert m.image() == frozen and m.energy_wh == 3650
    m.freeze(False)
    assert decode_value(profile_1p(), "energy_import", m.image()) == 3.65


def test_time_is_milliseconds_from_creation():
    clock = ManualClock(1_700_000_000.0)
    m = SimMeter(profile_1p(), 1, "1", load=ConstantLoad(1000, phases=1), clock=clock)
    clock.advance(0.0004)
    assert m.t_ms == 0
    clock.advance(0.0011)
    assert m.t_ms == 2
    assert m.delivered_mj == 2000 and MJ_PER_WH == 3_600_000
    assert not math.isnan(m.values()["current"][0])
