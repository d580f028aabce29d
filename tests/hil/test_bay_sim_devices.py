"""Bay devices on a simulated bus, read by a plain pymodbus client: presence sensors see the
vehicles and show their faults, pile controllers follow the plug; inputs and plate reads follow
the bay."""

from __future__ import annotations

import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
from pymodbus.exceptions import ModbusIOException

from pilehil.baydevices import FakeInputs, PlateFeed, SimPileController, SimSensor
from pilehil.bays import BaySim, Vehicle
from pilehil.clock import ManualClock
from pilehil.probe import ReadError, client_for, read_registers
from pilehil.site import Site

ROOT = Path(__file__).resolve().parents[2]
T0 = 1000.0
QUICK = 0.3  # client timeout (s) where no reply is the expected outcome

# A sensor that reports presence itself (function 4, 1 = vehicle), and a distance sensor with a
# 32-bit register, 0.1 mm per count and its low word first: both test-only, not shipped.
PRESENCE = {
    "id": "test-presence",
    "kind": "presence",
    "measures": "presence",
    "function": 4,
    "register": 0x0200,
    "type": "u16",
    "present_values": [1],
    "response_ms": 10,
}
WIDE = {
    "id": "test-wide",
    "kind": "presence",
    "measures": "distance",
    "function": 4,
    "register": 0x0010,
    "type": "u32",
    "scale": 0.1,
    "min_mm": 20,
    "max_mm": 6000,
    "word_order": "little",
    "response_ms": 10,
}


def sensor_profile(name: str) -> dict:
    with (ROOT / "profiles" / "sensors" / f"{name}.toml").open("rb") as f:
        return tomllib.load(f)


@pytest.fixture
def rig():
    """One bay with a fuel car from 100 s to 700 s and four sensors on an rtu+tcp bus."""
    clock = ManualClock(T0)
    site = Site(clock=clock)
    site.add_bus("b", "rtu+tcp")
    bay = BaySim("B1", "P1", clock)
    bay.add_vehicle(Vehicle.fuel(100, 600, clearance_mm=200, height_mm=1500))
    r = SimpleNamespace(clock=clock, site=site, bay=bay)
    r.lidar = site.add_device("b", SimSensor(sensor_profile("benewake-tf02-i"), 31, bay))
    r.laser = site.add_device(
        "b", SimSensor(sensor_profile("dfrobot-sen0492"), 32, bay, mount="ceiling", empty_mm=2500, inset_s=30)
    )
    r.pres = site.add_device("b", SimSensor(PRESENCE, 33, bay))
    r.wide = site.add_device("b", SimSensor(WIDE, 34, bay))
    endpoint = site.start()["b"]
    r.client = client_for(endpoint, timeout=QUICK)
    yield r
    r.client.close()
    site.stop()


def at(r: SimpleNamespace, s: float) -> None:
    r.clock.set(T0 + s)


def read_all(r: SimpleNamespace) -> tuple[int, int, int, int]:
    """(lidar mm, laser mm, presence value, wide mm) as a master decodes them."""
    c = r.client
    lidar = read_registers(c, 3, 0x0000, 1, 31)[0] * 10
    laser = read_registers(c, 3, 0x0034, 1, 32)[0]
    pres = read_registers(c, 4, 0x0200, 1, 33)[0]
    lo, hi = read_registers(c, 4, 0x0010, 2, 34)
    return lidar, laser, pres, ((hi << 16) | lo) // 10


def test_sensors_read_the_empty_bay_and_the_vehicle(rig):
    at(rig, 50)
    assert read_all(rig) == (2800, 2500, 0, 2800)  # ceiling above; floor below
    at(rig, 110)  # the back sensor (inset 30 s) ...
    assert read_all(rig) == (200, 2500, 1, 200)  # ... does not see it yet
    at(rig, 150)
    assert read_all(rig) == (200, 1000, 1, 200)  # underbody; 2500 - 1500 roof
    at(rig, 699)
    assert read_all(rig) == (200, 2500, 1, 200)  # the back sensor lost it already
    at(rig, 700)
    assert read_all(rig) == (2800, 2500, 0, 2800)  # gone
    assert rig.laser.value(T0 + 129) == 2500 and rig.laser.value(T0 + 130) == 1000
    assert rig.laser.value(T0 + 669) == 1000 and rig.laser.value(T0 + 670) == 2500


def test_presence_sensor_absent_value_avoids_the_present_ones():
    bay = BaySim("B1", "P1", ManualClock(0.0))
    s = SimSensor(dict(PRESENCE, present_values=[0, 2]), 5, bay)
    assert (s.present_value, s.absent_value) == (0, 1)
    bay.add_vehicle(Vehicle.fuel(10, 100))
    assert s.raw(5) == 1 and s.raw(20) == 0


def test_noise_is_bounded_visible_and_deterministic(rig):
    rig.laser.set_noise(jitter_mm=50)
    seen = set()
    for _ in range(40):
        rig.clock.advance(0.1)  # one measurement period each
        mm = read_registers(rig.client, 3, 0x0034, 1, 32)[0]
        assert 2450 <= mm <= 2550
        assert rig.laser.value() == mm  # same period, same value
        seen.add(mm)
    assert len(seen) > 10
    twin = SimSensor(sensor_profile("dfrobot-sen0492"), 32, rig.bay, mount="ceiling", empty_mm=2500, inset_s=30)
    twin.set_noise(jitter_mm=50)
    assert twin.value() == rig.laser.value()  # a function of seed and time only
    other = SimSensor(sensor_profile("dfrobot-sen0492"), 32, rig.bay, mount="ceiling", empty_mm=2500, seed=9)
    other.set_noise(jitter_mm=50)
    assert [other.value(T0 + k) for k in range(20)] != [twin.value(T0 + k) for k in range(20)]


def test_spikes_are_stray_readings_at_the_given_rate(rig):
    rig.laser.set_noise(spike_prob=0.2, spike_mm=(300, 600))
    values = [rig.laser.value(T0 + 0.1 * k) for k in range(500)]
    spikes = [v for v in values if v != 2500]
    assert 60 <= len(spikes) <= 140
    assert all(300 <= v <= 600 for v in spikes)
    rig.pres.set_noise(spike_prob=1.0)  # a presence sensor flips
    at(rig, 50)
    assert read_registers(rig.client, 4, 0x0200, 1, 33) == [1]
    rig.laser.set_noise(0)
    assert {rig.laser.value(T0 + 0.1 * k) for k in range(50)} == {2500}


def test_a_stuck_sensor_keeps_its_value(rig):
    at(rig, 50)
    rig.lidar.freeze()
    at(rig, 150)  # the car is there ...
    assert read_registers(rig.client, 3, 0, 1, 31) == [280]  # ... the sensor still says floor
    assert rig.lidar.frozen and rig.lidar.true_mm() == 200
    rig.lidar.freeze(False)
    assert read_registers(rig.client, 3, 0, 1, 31) == [20]


def test_out_of_range_readings(rig):
    prof = rig.lidar.profile
    rig.lidar.out_of_range("high")  # no echo
    assert read_registers(rig.client, 3, 0, 1, 31)[0] * 10 > prof["max_mm"]
    rig.lidar.out_of_range("low")  # covered
    assert read_registers(rig.client, 3, 0, 1, 31)[0] * 10 < prof["min_mm"]
    rig.lidar.force_mm(45000)  # TF02's "weak signal" distance
    assert read_registers(rig.client, 3, 0, 1, 31) == [4500]
    rig.lidar.out_of_range(None)
    assert read_registers(rig.client, 3, 0, 1, 31) == [280]
    rig.wide.force_mm(1e9)  # saturates at the type's maximum
    assert read_registers(rig.client, 4, 0x0010, 2, 34) == [0xFFFF, 0xFFFF]


def test_no_reply_and_exception_codes(rig):
    rig.laser.set_no_reply()
    with pytest.raises(ModbusIOException):
        read_registers(rig.client, 3, 0x0034, 1, 32)
    rig.laser.set_no_reply(False)
    rig.laser.add_exception(4)  # slave device failure
    with pytest.raises(ReadError) as e:
        read_registers(rig.client, 3, 0x0034, 1, 32)
    assert e.value.code == 4
    rig.laser.clear_faults()
    assert read_registers(rig.client, 3, 0x0034, 1, 32) == [2500]
    rr = rig.client.read_coils(0, count=1, device_id=32)  # no coils on a sensor
    assert rr.isError() and rr.exception_code == 1
    stats = rig.site.bus_stats("b")
    assert stats.unanswered == 1 and stats.exceptions >= 1


def test_pile_controller_follows_the_plug():
    clock = ManualClock(T0)
    bay = BaySim("B1", "P1", clock)
    # arrives 100, plugs 220, charges 230..830, unplugs 1130, leaves 1190
    bay.add_vehicle(
        Vehicle.ev(100, plug_after_s=120, charge_after_s=10, charge_s=600, unplug_after_s=300, leave_after_s=60)
    )
    ctl = SimPileController(51, clock)
    ctl.add_connector(bay, 3, 0x0010, [1, 2])
    ctl.add_connector(bay, 4, 0x0020, [0, 5])  # 0 means plugged: idle reads 1
    ctl.add_connector(bay, 1, 0x0005)  # a coil
    with pytest.raises(ValueError):
        ctl.add_connector(bay, 3, 0x0010)
    with Site(clock=clock) as site:
        site.add_bus("b", "tcp")
        site.add_device("b", ctl)
        c = client_for(site.start()["b"])
        try:
            seen = []
            for s in (50, 150, 225, 500, 900, 1150, 1300):
                clock.set(T0 + s)
                coils = c.read_coils(0, count=8, device_id=51)
                assert not coils.isError()
                seen.append(
                    (
                        read_registers(c, 3, 0x0010, 1, 51)[0],
                        read_registers(c, 4, 0x0020, 1, 51)[0],
                        int(coils.bits[5]),
                        int(coils.bits[4]),
                    )
                )
            assert seen == [
                (0, 1, 0, 0),
                (0, 1, 0, 0),
                (1, 0, 1, 0),
                (2, 5, 1, 0),
                (1, 0, 1, 0),
                (0, 1, 0, 0),
                (0, 1, 0, 0),
            ]
            assert read_registers(c, 3, 0x000E, 4, 51) == [0, 0, 0, 0]  # neighbours read 0
            clock.set(T0 + 1400)
            ctl.force(3, 0x0010, 1)  # stuck at "plugged"
            assert read_registers(c, 3, 0x0010, 1, 51) == [1]
            ctl.force(3, 0x0010, None)
            assert read_registers(c, 3, 0x0010, 1, 51) == [0]
            rr = c.read_discrete_inputs(0, count=1, device_id=51)  # none mapped
            assert rr.isError() and rr.exception_code == 1
        finally:
            c.close()


def test_fake_inputs_give_levels_not_meanings():
    clock = ManualClock(T0)
    bay = BaySim("B1", "P1", clock)
    bay.add_vehicle(Vehicle.ev(100, plug_after_s=60, charge_s=600))
    inputs = FakeInputs(clock, names=["DI1", "DI2", "DI3"])
    inputs.bind("DI1", bay.present, "low")  # loop detector pulls low
    inputs.bind("DI2", bay.plugged, "high")  # contactor auxiliary contact
    with pytest.raises(ValueError):
        inputs.bind("DI1", bay.present)
    assert [inputs.read(n) for n in ("DI1", "DI2", "DI3")] == [1, 0, 1]
    clock.set(T0 + 120)
    assert [inputs.read(n) for n in ("DI1", "DI2", "DI3")] == [0, 0, 1]
    clock.set(T0 + 200)
    assert [inputs.read(n) for n in ("DI1", "DI2", "DI3")] == [0, 1, 1]
    inputs.set("DI1", 1)  # stuck open
    assert inputs.read("DI1") == 1
    inputs.release("DI1")
    assert inputs.read("DI1") == 0
    with pytest.raises(KeyError):
        inputs.read("DI9")
    assert inputs.names() == ["DI1", "DI2", "DI3"]


def test_plate_feed_delivers_each_read_once_in_order():
    clock = ManualClock(T0)
    cam = BaySim("B1", "P1", clock, camera="cam-01")
    blind = BaySim("B2", "P2", clock)  # no camera
    cam.add_vehicle(Vehicle.fuel(100, 600, plate="豫C12345", plate_delay_s=4))
    cam.add_vehicle(Vehicle.ev(1000, plate="豫CD12345", plate_delay_s=6))
    cam.add_vehicle(Vehicle.fuel(9000, 600, plate="豫CXXXXX", plate_shown=False))
    blind.add_vehicle(Vehicle.fuel(50, 600, plate="豫C99999"))
    feed = PlateFeed(clock)
    feed.add_bay(cam)
    feed.add_bay(blind)
    heard = []
    feed.add_listener(heard.append)
    assert feed.poll() == []
    clock.set(T0 + 104)
    assert feed.poll() == [{"camera": "cam-01", "plate": "豫C12345", "colour": "blue", "t": 1104}]
    assert feed.poll() == []
    feed.inject("cam-01", "豫C12345", "yellow", t=T0 + 500)  # a misread, later
    clock.set(T0 + 20000)
    reads = feed.poll()
    assert [(r["t"], r["plate"], r["colour"]) for r in reads] == [
        (1500, "豫C12345", "yellow"),
        (2006, "豫CD12345", "green"),
    ]
    assert heard == [{"camera": "cam-01", "plate": "豫C12345", "colour": "blue", "t": 1104}, *reads]
    assert feed.reads(T0, T0 + 20000) == heard


def test_vehicles_are_checked():
    with pytest.raises(ValueError):
        Vehicle(100, 100)
    with pytest.raises(ValueError):
        Vehicle(0, 100, "fuel", plug_s=10)
    with pytest.raises(ValueError):
        Vehicle(0, 100, plug_s=10, charge_start_s=20, charge_end_s=50)  # a 30-s charge
    with pytest.raises(ValueError):
        Vehicle(0, 1000, plug_s=10, unplug_s=5)
    with pytest.raises(ValueError):
        Vehicle(0, 100, "truck")
    v = Vehicle(0, 1000, plug_s=10)
    assert v.unplug_s == 1000 and not v.charges
    bay = BaySim("B1", "P1", ManualClock(0.0))
    bay.add_vehicle(Vehicle.fuel(100, 600))
    with pytest.raises(ValueError):  # overlaps the first
        bay.add_vehicle(Vehicle.fuel(600, 600))
    bay.present(800)  # the timeline is read up to 800 s
    with pytest.raises(ValueError):  # cannot change what was seen
        bay.add_vehicle(Vehicle.fuel(750, 600))
    bay.add_vehicle(Vehicle.fuel(800, 600))
