"""Vehicles and scenarios: seeded and lazy, exact charging energy on the pile meter, and a whole
simulated site built from a site file whose devices agree with the recorded truth."""

from __future__ import annotations

import itertools
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from pilecore.bays import nev_plate_format
from pilegate import siteconfig
from pilehil import sitesim
from pilehil.bays import BaySim, Scenario, Vehicle, expected_classification
from pilehil.clock import ManualClock
from pilehil.load import MJ_PER_WH
from pilehil.meter import SimMeter
from pilehil.registers import load_profile

T0 = 1000.0


def test_scenario_streams_are_seeded_and_keep_clear_of_thresholds():
    def stream(seed: int) -> list[Vehicle]:
        sc, out, t = Scenario(seed, overstay_s=900), [], 0
        for _ in range(300):
            out.append(sc.next_vehicle(t))
            t = out[-1].leave_s
        return out

    a, b = stream(3), stream(3)
    assert a == b
    assert stream(4)[:5] != a[:5]
    labels = Counter(v.label for v in a)
    assert set(labels) == {"ev_charge", "ev_overstay", "fuel", "ev_no_plug"}
    assert 90 <= labels["ev_charge"] <= 150 and 60 <= labels["fuel"] <= 120
    for prev, v in itertools.pairwise(a):
        assert prev.leave_s + 300 <= v.arrive_s <= prev.leave_s + 3600
    for v in a:
        if v.label == "ev_charge":
            assert v.leave_s - v.charge_end_s <= 900 - 300
        elif v.label == "ev_overstay":
            assert v.leave_s - v.charge_end_s >= 900 + 600
        else:
            assert not v.charges and v.plug_s is None
            assert 1200 <= v.leave_s - v.arrive_s <= 3600
        if v.kind == "ev":
            assert v.colour == "green" and nev_plate_format(v.plate) and v.plate.startswith("豫C")
        else:
            assert v.colour in ("blue", "yellow") and len(v.plate) == 7
        assert 130 <= v.clearance_mm <= 260
    shown = sum(v.plate_shown for v in a) / len(a)
    assert 0.8 <= shown <= 0.97


def test_expected_classification_follows_the_bay_rules():
    ev = Vehicle.ev(0, charge_s=3600, unplug_after_s=300, leave_after_s=60)
    late = Vehicle.ev(0, charge_s=3600, unplug_after_s=1500, leave_after_s=60)
    fuel = Vehicle.fuel(0, 2400, plate="豫C12345")
    quick = Vehicle.fuel(0, 600, plate="豫C12345")
    nev = Vehicle.parked_ev(0, 2400, plate="豫CD12345")
    plugged = Vehicle.parked_ev(0, 2400, plugged=True)
    hidden = Vehicle.parked_ev(0, 2400, plate="豫CD12345", plate_shown=False)
    blank = Vehicle.parked_ev(0, 2400)  # no plate to read
    yellow_nev = Vehicle.parked_ev(0, 2400, plate="豫CD12345", colour="yellow")
    blip = Vehicle.fuel(0, 10)
    assert expected_classification(ev) == ("ev_charging", False)
    assert expected_classification(late) == ("ev_overstay", False)
    assert expected_classification(late, {"overstay_s": 3600}) == ("ev_charging", False)
    assert expected_classification(fuel) == ("fuel_car", False)
    assert expected_classification(fuel, camera=True) == ("fuel_car", True)
    assert expected_classification(quick) == ("unknown", False)
    assert expected_classification(quick, camera=True) == ("fuel_car", True)
    assert expected_classification(nev) == ("fuel_car", False)  # no plate, no plug: suspect
    assert expected_classification(nev, camera=True) == ("ev_parked", False)
    assert expected_classification(hidden, camera=True) == ("fuel_car", False)
    assert expected_classification(blank, camera=True) == ("fuel_car", False)
    assert expected_classification(yellow_nev, camera=True) == ("ev_parked", False)  # 8 chars
    assert expected_classification(plugged) == ("fuel_car", False)  # plug unseen with "power"
    assert expected_classification(plugged, {"plug_source": "modbus"}) == ("ev_parked", False)
    assert expected_classification(blip) == (None, False)


def test_charging_draws_exact_energy_from_the_pile_meter():
    clock = ManualClock(T0)
    meter = SimMeter(load_profile("eastron-sdm120"), 1, "10000001", clock=clock)
    bay = BaySim("B1", "P1", meter=meter)
    assert meter.load is bay.load and bay.clock is clock and bay.t0 == T0
    v = bay.add_vehicle(Vehicle.ev(100, plug_after_s=60, charge_after_s=10, charge_s=1800, power_w=7000, seed=5))
    # power second by second, integrated independently: segments start on whole seconds
    watts = [meter.load.power_w(1000 * s) for s in range(0, v.leave_s + 100)]
    assert watts[v.charge_start_s - 1] == 0 and 0 < watts[v.charge_start_s] < 300
    assert all(6930 <= w <= 7070 for w in watts[v.charge_start_s + 30 : v.charge_end_s - 4])
    assert watts[v.charge_end_s - 1] == 1400 and watts[v.charge_end_s] == 0
    clock.set(T0 + v.leave_s + 100)
    assert meter.delivered_mj == 1000 * sum(watts)
    [truth] = bay.truth()
    assert truth["energy_mj"] == 1000 * sum(watts) and truth["energy_wh"] == meter.delivered_wh
    assert meter.energy_wh == meter.delivered_wh  # register total started at 0
    assert (truth["arrival"], truth["charge_start"], truth["charge_end"], truth["departure"]) == (
        1100,
        1170,
        2970,
        int(T0) + v.leave_s,
    )
    assert truth["expected"] == "ev_charging"


def test_a_lazy_scenario_does_not_depend_on_how_it_is_read():
    fine, coarse = (BaySim("B1", "P1", ManualClock(T0), scenario=Scenario(11)) for _ in range(2))
    for s in range(0, 36_000, 7):
        fine.present(T0 + s)
        fine.load.power_w(s * 1000)
    end = T0 + 36_000
    assert fine.truth(end) == coarse.truth(end)
    assert fine.load.energy_mj(0, 36_000_000) == coarse.load.energy_mj(0, 36_000_000)
    assert len(fine.truth(end)) >= 5


SITE = """
[gateway]
id = "GW-T1"
site = "test-site"
board = "rpi4-usb-rs485"

[mqtt]
url = "mqtt://127.0.0.1:1883"
allow_insecure = true

[[bus]]
name = "bus1"
port = "/dev/ttyUSB0"

[[bus]]
name = "bus2"
port = "tcp://10.0.0.5:502"

[main_meter]
bus = "bus2"
address = 100
profile = "acrel-adl400"

[[pile]]
id = "P01"
meter = { bus = "bus1", address = 1, profile = "eastron-sdm120", serial = "" }

[[pile]]
id = "P02"
meter = { bus = "bus1", address = 2, profile = "chint-dtsu666", serial = "" }
max_power_kw = 22.0

[[pile]]
id = "P03"
meter = { bus = "bus2", address = 3, profile = "chint-ddsu666", serial = "" }

[[pile]]
id = "P04"
meter = { bus = "bus2", address = 4, profile = "chint-ddsu666", serial = "" }

[bays]
overstay_s = 1200

[[bay]]
id = "B01"
pile = "P01"
presence = [ { type = "modbus", bus = "bus1", address = 31, profile = "benewake-tf02-i" },
             { type = "input", input = "DI1", active = "low" } ]
plug = { source = "modbus", bus = "bus1", address = 51, function = 3, register = 0x0010, plugged_values = [1, 2] }
camera = "cam-01"

[[bay]]
id = "B02"
pile = "P02"
presence = [ { type = "modbus", bus = "bus1", address = 32, profile = "dfrobot-sen0492" } ]
plug = { source = "input", input = "DI2", active = "high" }

[[bay]]
id = "B03"
pile = "P03"
presence = [ { type = "modbus", bus = "bus2", address = 33, profile = "dfrobot-sen0492" } ]
plug = { source = "modbus", bus = "bus2", address = 51, function = 3, register = 0x0010, plugged_values = [1, 2] }
camera = "cam-03"

[[bay]]
id = "B04"
pile = "P03"
presence = [ { type = "input", input = "DI3" } ]
plug = { source = "modbus", bus = "bus2", address = 51, function = 3, register = 0x0011 }
"""


@pytest.fixture
def sim_cfg(tmp_path: Path):
    src = tmp_path / "site.toml"
    src.write_text(textwrap.dedent(SITE))
    site, problems = siteconfig.load_site(src)
    assert site is not None, "\n".join(map(str, problems))
    return site.config


def test_site_bays_from_a_site_file(sim_cfg):
    clock = ManualClock(T0)
    site, meters = sitesim.build(sim_cfg, clock=clock, seed=7)
    sb = sitesim.bays_of(site)
    assert set(sb.bays) == {"B01", "B02", "B03", "B04"}
    assert set(sb.sensors) == {("bus1", 31), ("bus1", 32), ("bus2", 33)}
    assert set(sb.controllers) == {("bus1", 51), ("bus2", 51)}  # B03 and B04 share one
    assert site.device("bus2", 51) is sb.controllers[("bus2", 51)]
    assert sb.controllers[("bus2", 51)].mapped == {(3, 0x0010), (3, 0x0011)}
    assert meters[("bus1", 1)].load is sb.bay("B01").load
    assert meters[("bus2", 4)].load.__class__.__name__ == "EvSessions"  # a pile without a bay
    p03 = meters[("bus2", 3)].load  # two bays, one meter
    assert [ld for ld in p03.loads] == [sb.bay("B03").load, sb.bay("B04").load]
    assert sb.bay("B01").params["plug_source"] == "modbus"
    assert sb.bay("B01").params["overstay_s"] == 1200
    assert sb.bay("B02").params["plug_source"] == "input"
    assert (sb.bay("B01").camera, sb.bay("B02").camera) == ("cam-01", None)
    old, _ = sitesim.build(sim_cfg, clock=clock, bays=False)
    assert old.bays is None and old.device("bus1", 1).load.__class__.__name__ == "EvSessions"
    with pytest.raises(ValueError):
        sitesim.bays_of(old)


def test_site_scenario_devices_agree_with_the_truth(sim_cfg):
    """Twelve simulated hours in 30-s steps: every device tells the same story as the truth."""
    clock = ManualClock(T0)
    site, meters = sitesim.build(sim_cfg, clock=clock, seed=7, jitter_mm=0)
    sb = sitesim.bays_of(site)
    b01, b02, b03, b04 = (sb.bay(b) for b in ("B01", "B02", "B03", "B04"))
    main = meters[("bus2", 100)]
    reads = []
    for _ in range(12 * 120):
        clock.advance(30)
        t = clock()
        v1, v2 = b01.vehicle_at(), b02.vehicle_at()
        assert sb.sensors[("bus1", 31)].value() == 10 * round((v1.clearance_mm if v1 else 2800) / 10)  # cm
        assert sb.sensors[("bus1", 32)].value() == (v2.clearance_mm if v2 else 2800)
        assert sb.inputs.read("DI1") == (0 if v1 else 1)
        assert sb.inputs.read("DI2") == int(b02.plugged())
        assert sb.inputs.read("DI3") == int(b04.present())
        plug = sb.controllers[("bus1", 51)].value(3, 0x0010)
        assert plug == (2 if b01.charging() else 1 if b01.plugged() else 0)
        assert sb.controllers[("bus2", 51)].value(3, 0x0011) == int(b04.plugged())
        p1 = meters[("bus1", 1)].power_w
        assert (p1 > 0) == b01.charging()
        assert meters[("bus2", 3)].power_w == b03.load.power_w(b03.load_ms()) + b04.load.power_w(b04.load_ms())
        assert main.power_w == 400 + sum(
            meters[(b, a)].power_w for b, a in (("bus1", 1), ("bus1", 2), ("bus2", 3), ("bus2", 4))
        )
        reads += sb.plates.poll()
        assert clock() == t
    truth = sb.truth()
    assert truth == sorted(truth, key=lambda r: (r["departure"], r["bay"]))
    assert len(truth) >= 20
    assert {r["label"] for r in truth} == {"ev_charge", "ev_overstay", "fuel", "ev_no_plug"}
    for r in truth:
        assert T0 < r["arrival"] < r["departure"] <= clock()
        assert r["expected"] is not None
        if r["label"] in ("ev_charge", "ev_overstay"):
            assert r["expected"] == r["label"].replace("ev_charge", "ev_charging")
            assert r["arrival"] <= r["plug"] <= r["charge_start"] < r["charge_end"] <= r["unplug"]
            assert r["energy_wh"] > 1000
        else:
            assert r["energy_mj"] == 0 and r["plug"] is None
        if r["bay"] == "B01" and r["label"] == "fuel":  # camera + modbus plug
            assert r["expected"] == "fuel_car" and r["confirmed"] == r["plate_read"]
        if r["bay"] == "B02" and r["label"] == "ev_no_plug":  # no camera: suspected
            assert (r["expected"], r["confirmed"]) == ("fuel_car", False)
    # every plate read the cameras delivered belongs to a vehicle of the truth (or one still
    # parked), at its arrival + delay, and none came from the bays without a camera
    cams = {"cam-01": "B01", "cam-03": "B03"}
    by_plate = {(r["bay"], r["plate"]): r for r in truth}
    assert reads and {r["camera"] for r in reads} == set(cams)
    for read in reads:
        rec = by_plate.get((cams[read["camera"]], read["plate"]))
        if rec is not None:
            assert rec["plate_read"] and rec["arrival"] + 2 <= read["t"] <= rec["arrival"] + 15
    # the energy of the whole stream is on the meter, to the milli-joule
    end_ms = b01.load_ms()
    assert meters[("bus1", 1)].delivered_mj == b01.load.energy_mj(0, end_ms)
    done = sum(r["energy_mj"] for r in truth if r["bay"] == "B01")
    current = b01.vehicle_at()
    extra = 0 if current is None else b01.load.energy_mj(current.arrive_s * 1000, end_ms)
    assert meters[("bus1", 1)].delivered_mj == done + extra
    assert meters[("bus1", 1)].delivered_wh > 0 and MJ_PER_WH == 3_600_000
