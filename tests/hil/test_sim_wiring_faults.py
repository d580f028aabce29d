"""The simulator's commissioning faults: switched loads behind enable coils, a meter at its own
baud rate, and two meters on one address."""

from __future__ import annotations

import pytest

from pilecore import modbus
from pilehil import ManualClock
from pilehil.baydevices import SimPileController
from pilehil.load import ConstantLoad, SwitchedLoad
from pilehil.site import Site
from pilehil.wire import superimpose
from piletools.rtulink import Line, RtuLink


def test_switched_load_integral_is_exact_and_additive():
    clock = ManualClock(0.0)
    load = SwitchedLoad(ConstantLoad(1000), clock)
    clock.advance(10)
    load.set(False)
    clock.advance(5)
    load.set(True)
    clock.advance(5)
    assert load.power_w(12_000) == 0 and load.power_w(16_000) == 1000
    assert load.energy_mj(0, 20_000) == 1000 * 15_000
    assert load.energy_mj(0, 12_000) + load.energy_mj(12_000, 20_000) == load.energy_mj(0, 20_000)


def test_superimposed_replies_fail_the_crc_unless_identical():
    a = modbus.frame(bytes([4, 3, 2, 0x12, 0x34]))
    b = modbus.frame(bytes([4, 3, 2, 0x56, 0x78]))
    assert superimpose(a, a) == a
    assert not modbus.crc_ok(superimpose(a, b))


@pytest.fixture
def site():
    clock = ManualClock(0.0)
    s = Site(clock=clock)
    s.add_bus("bus1", transport="pty", baud=9600)
    s.add_meter("bus1", 1, "eastron-sdm120", "1001")
    s.add_meter("bus1", 2, "eastron-sdm120", "1002", baud=2400)
    s.add_meter("bus1", 3, "eastron-sdm120", "1003")
    s.add_twin("bus1", 3, "eastron-sdm120", "1999")
    load = SwitchedLoad(ConstantLoad(7000, phases=1), clock)
    s.meter("bus1", 1).load = load
    ctrl = SimPileController(50, clock)
    ctrl.add_enable_coil(0, True, switch=load)
    s.add_device("bus1", ctrl)
    with s:
        s.start()
        yield s, load, ctrl


def test_meter_answers_only_at_its_own_baud_twins_garble_and_coils_switch(site):
    s, load, ctrl = site
    with RtuLink(s.endpoints["bus1"], timeout_s=0.3) as link:
        link.set_line(Line(9600))
        assert link.read(1, 3, 0xFC00, 2).registers == [0, 1001]
        assert link.read(2, 3, 0xFC00, 2).kind == "silent"
        assert link.read(3, 3, 0xFC00, 2).kind == "garbled"
        assert link.write_coil(50, 0, False).kind == "ok"
        assert not load.on and ctrl.enable[0] is False
        assert s.meter("bus1", 1).power_w == 0
        link.set_line(Line(2400))
        assert link.read(2, 3, 0xFC00, 2).registers == [0, 1002]
        assert link.read(1, 3, 0xFC00, 2).kind == "silent"
    stats = s.bus_stats("bus1")
    assert stats.collisions == 1 and stats.line_errors == 2
