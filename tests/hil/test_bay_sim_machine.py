"""The core bay state machine driven by the bay simulator: readings taken over Modbus from the
simulated sensors, pile controller and pile meter (through pymodbus), plates from the camera
feed, on an accelerated ManualClock; its occupancy records must match the simulator's truth."""

from __future__ import annotations

import tomllib
from pathlib import Path

from pilecore.bays import BayMachine, DistanceFilter
from pilecore.tariff import default_tariff
from pilehil.baydevices import PlateFeed, SimPileController, SimSensor
from pilehil.bays import BaySim, Scenario, Vehicle
from pilehil.clock import ManualClock
from pilehil.meter import SimMeter
from pilehil.probe import client_for, read_registers
from pilehil.registers import decode_value, load_profile
from pilehil.site import Site

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000.0
STEP = 15  # seconds between two gateway polls


def sensor_profile(name: str) -> dict:
    with (ROOT / "profiles" / "sensors" / f"{name}.toml").open("rb") as f:
        return tomllib.load(f)


def records(out: list[dict]) -> list[dict]:
    return [o for o in out if o["type"] == "occupancy"]


def match(recs: list[dict], truth: list[dict], slack: int) -> list[tuple[dict, dict]]:
    """Pair each record with the truth vehicle whose arrival and departure it reports."""
    pairs = []
    for t in truth:
        near = [
            r
            for r in recs
            if abs(r["arrival"] - t["arrival"]) <= slack and abs(r["departure"] - t["departure"]) <= slack
        ]
        assert len(near) == 1, (t, recs)
        pairs.append((near[0], t))
    return pairs


def test_machine_over_modbus_classifies_as_the_truth_says():
    clock = ManualClock(T0)
    meter_profile = load_profile("eastron-sdm120")
    lidar_p, laser_p = sensor_profile("benewake-tf02-i"), sensor_profile("dfrobot-sen0492")
    with Site(clock=clock) as site:
        site.add_bus("bus1", "tcp")
        meter = site.add_meter("bus1", 1, meter_profile, "10000001")
        bay = BaySim("B01", "P01", meter=meter, camera="cam-01", params={"plug_source": "modbus"})
        for v in (
            # an EV that charges an hour and leaves 6 min after the end
            Vehicle.ev(
                300,
                plug_after_s=120,
                charge_after_s=10,
                charge_s=3600,
                unplug_after_s=300,
                leave_after_s=60,
                plate="豫CD10001",
            ),
            # a fuel car that parks 40 minutes, its blue plate read by the camera
            Vehicle.fuel(5000, 2400, plate="豫C20002", colour="blue"),
            # an EV that parks 40 minutes and never plugs in; the camera misses its plate
            Vehicle.parked_ev(8000, 2400, plate="豫CD30003", plate_shown=False),
            # the same with its green plate read
            Vehicle.parked_ev(11000, 2400, plate="豫CF40004"),
        ):
            bay.add_vehicle(v)
        front = site.add_device("bus1", SimSensor(lidar_p, 31, bay, seed=1))
        back = site.add_device("bus1", SimSensor(laser_p, 32, bay, inset_s=20, seed=2))
        front.set_noise(jitter_mm=20)
        back.set_noise(jitter_mm=20)
        ctl = SimPileController(51, clock)
        ctl.add_connector(bay, 3, 0x0010, [1, 2])
        site.add_device("bus1", ctl)
        plates = PlateFeed(clock)
        plates.add_bay(bay)

        machine = BayMachine("B01", "P01", {"plug_source": "modbus"}, default_tariff())
        filters = [DistanceFilter(None, "B01", 0), DistanceFilter(None, "B01", 1)]
        client = client_for(site.start()["bus1"])
        out: list[dict] = []
        try:
            while clock() < T0 + 14_000:
                clock.advance(STEP)
                now = int(clock())
                mm = [
                    read_registers(client, 3, 0x0000, 1, 31)[0] * lidar_p["scale"],
                    read_registers(client, 3, 0x0034, 1, 32)[0] * laser_p["scale"],
                ]
                samples = []
                for f, d in zip(filters, mm, strict=True):
                    presence, events = f.feed(now, d)
                    samples.append(presence)
                    out += events
                plug = read_registers(client, 3, 0x0010, 1, 51)[0] in (1, 2)
                words = read_registers(client, 4, 0x000C, 2, 1)
                power = decode_value(meter_profile, "power", {(4, 0x000C): words[0], (4, 0x000D): words[1]})
                out += machine.step(now, samples, plug, power)
                for read in plates.poll(now):
                    out += machine.plate(read["t"], read["plate"], read["colour"])
        finally:
            client.close()

    truth = bay.truth()
    assert [t["expected"] for t in truth] == ["ev_charging", "fuel_car", "fuel_car", "ev_parked"]
    assert [t["confirmed"] for t in truth] == [False, True, False, False]
    recs = records(out)
    assert len(recs) == 4
    for rec, t in match(recs, truth, slack=STEP + 20):  # the back sensor sees the car 20 s late
        assert (rec["classification"], rec["confirmed"]) == (t["expected"], t["confirmed"]), t
        assert rec["unknown_s"] == 0 and rec["evidence"]["sensors"] == [0, 1]
    ev, fuel, hidden, green = recs
    assert abs(ev["evidence"]["plug_t"] - truth[0]["plug"]) <= STEP
    assert abs(ev["evidence"]["charge_start_t"] - truth[0]["charge_start"]) <= STEP
    assert abs(ev["evidence"]["charge_end_t"] - truth[0]["charge_end"]) <= STEP
    assert abs(ev["charging_s"] - (truth[0]["charge_end"] - truth[0]["charge_start"])) <= 2 * STEP
    # fees as in docs/bays.md: fuel car 40 min 1000 fen, EV with a green plate 40 min 500 fen
    assert [r["fee_fen"] for r in recs] == [0, 1000, 1000, 500]
    assert fuel["evidence"]["plates"][0][1:] == ["豫C20002", "blue"]
    assert hidden["evidence"]["plates"] == [] and hidden["evidence"]["suspected_t"] is not None
    assert green["evidence"]["nev_plate"] is True
    assert not [o for o in out if o["type"].startswith("sensor.")]  # jitter is not a fault


def test_machine_over_a_day_of_scenario_traffic():
    """24 h of seeded traffic (object-level reads, no bus): every stay gets its expected class."""
    clock = ManualClock(T0)
    meter = SimMeter(load_profile("chint-ddsu666"), 1, "1", clock=clock)
    params = {"plug_source": "modbus", "overstay_s": 900}
    bay = BaySim("B01", "P01", meter=meter, camera="cam-01", params=params, scenario=Scenario(21, overstay_s=900))
    sensor = SimSensor(sensor_profile("benewake-tf02-i"), 31, bay, seed=3)
    sensor.set_noise(jitter_mm=20)
    ctl = SimPileController(51, clock)
    ctl.add_connector(bay, 3, 0x0010, [1, 2])
    plates = PlateFeed(clock)
    plates.add_bay(bay)
    machine = BayMachine("B01", "P01", params, default_tariff())
    filt = DistanceFilter(None, "B01", 0)
    out: list[dict] = []
    while clock() < T0 + 86_400:
        clock.advance(STEP)
        now = int(clock())
        presence, events = filt.feed(now, sensor.value())
        out += events
        out += machine.step(now, [presence], ctl.value(3, 0x0010) in (1, 2), meter.power_w)
        for read in plates.poll(now):
            out += machine.plate(read["t"], read["plate"], read["colour"])
    truth = bay.truth(T0 + 86_400 - 120)  # stays the machine has had time to close
    recs = [r for r in records(out) if r["departure"] <= T0 + 86_400 - 120]
    assert len(truth) >= 12
    assert {t["label"] for t in truth} == {"ev_charge", "ev_overstay", "fuel", "ev_no_plug"}
    assert len(recs) == len(truth)
    for rec, t in match(recs, truth, slack=STEP):
        assert (rec["classification"], rec["confirmed"]) == (t["expected"], t["confirmed"]), t
