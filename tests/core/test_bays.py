"""Bay state machine scenarios on an accelerated clock (plain ints), CPython and MicroPython."""

import json

from mpytest import raises

from pilecore.bays import (
    EVENT_TYPES,
    PHASES,
    BayMachine,
    DistanceFilter,
    default_params,
    make_params,
    nev_plate_format,
    param_spec,
    validate_params,
)
from pilecore.tariff import default_tariff

EV_W = 7000  # a 7 kW AC pile delivering


def machine(params=None, tariff="default", snapshot=None):
    if tariff == "default":
        tariff = default_tariff()
    return BayMachine("B1", "P1", params, tariff, snapshot)


def drive(m, t0, t1, samples, plug=None, power=0, dt=5, out=None):
    """Step `m` every dt seconds for t0 <= t < t1 with the same readings; collect outputs."""
    if out is None:
        out = []
    t = t0
    while t < t1:
        out.extend(m.step(t, samples, plug, power))
        t += dt
    return out


def types(outs):
    return [o["type"] for o in outs]


def of_type(outs, kind):
    return [o for o in outs if o["type"] == kind]


def only_record(outs):
    recs = of_type(outs, "occupancy")
    assert len(recs) == 1, types(outs)
    return recs[0]


def check_record(rec):
    total = 0
    for k in PHASES:
        assert isinstance(rec[k], int) and rec[k] >= 0, (k, rec[k])
        total += rec[k]
    assert total == rec["duration_s"] == rec["departure"] - rec["arrival"]
    assert json.loads(json.dumps(rec)) == rec


def fuel_stay(m, arrive=1000, stay=2400, out=None):
    """Empty bay until `arrive`, a car without plug for `stay` s, then empty for 200 s."""
    out = drive(m, 0, arrive, [False], out=out)
    drive(m, arrive, arrive + stay, [True], out=out)
    drive(m, arrive + stay, arrive + stay + 200, [False], out=out)
    return out


# ------------------------------------------------------------------ the main stories


def test_ev_plugs_charges_and_leaves_pays_nothing():
    m = machine()
    out = drive(m, 0, 1000, [False])
    drive(m, 1000, 1040, [True], out=out)  # arrives, walks to the pile
    drive(m, 1040, 4640, [True], power=EV_W, out=out)  # charges one hour
    drive(m, 4640, 4940, [True], out=out)  # unplugs, 5 min to drive off
    drive(m, 4940, 5200, [False], out=out)
    rec = only_record(out)
    check_record(rec)
    assert rec["classification"] == "ev_charging"
    assert rec["fee_fen"] == 0 and rec["billable_s"] == 0
    assert (rec["arrival"], rec["departure"]) == (1000, 4940)
    assert (rec["grace_s"], rec["charging_s"], rec["idle_s"]) == (40, 3600, 300)
    assert rec["evidence"]["charge_start_t"] == 1040
    assert rec["evidence"]["charge_end_t"] == 4640
    assert not [t for t in types(out) if t.startswith("bay.fuel")]
    assert types(out)[:2] == ["bay.arrived", "bay.charging"]
    assert m.state == "vacant"


def test_fuel_car_40_minutes_is_suspected_after_grace_and_pays_the_tariff():
    m = machine()
    out = fuel_stay(m)
    sus = of_type(out, "bay.fuel_suspected")
    assert len(sus) == 1 and sus[0]["t"] == 1000 + 900
    rec = only_record(out)
    check_record(rec)
    assert rec["classification"] == "fuel_car" and rec["confirmed"] is False
    assert (rec["grace_s"], rec["parked_s"]) == (900, 1500)
    # 40 min, 15 free, 25 min = 2 started 15-min blocks at 5 yuan.
    assert rec["billable_s"] == 2400
    assert rec["fee_fen"] == 1000
    assert rec["fee"]["parts"] == [{"from_min": 15, "blocks": 2, "price_fen": 500, "fen": 1000}]
    assert rec["tariff"] == {"id": "default", "version": 1}
    assert rec["evidence"]["suspected_t"] == 1900


def test_blue_plate_confirms_fuel_car_at_once():
    m = machine()
    out = drive(m, 0, 1000, [False])
    drive(m, 1000, 1030, [True], out=out)
    out.extend(m.plate(1030, "豫C12345", "blue"))
    drive(m, 1030, 3400, [True], out=out)
    drive(m, 3400, 3600, [False], out=out)
    conf = of_type(out, "bay.fuel_confirmed")
    assert len(conf) == 1 and conf[0]["t"] == 1030 and conf[0]["colour"] == "blue"
    assert not of_type(out, "bay.fuel_suspected")
    rec = only_record(out)
    check_record(rec)
    assert rec["classification"] == "fuel_car" and rec["confirmed"] is True
    assert rec["fee_fen"] == 1000
    assert rec["evidence"]["plates"] == [[1030, "豫C12345", "blue"]]
    assert rec["evidence"]["fuel_plate_t"] == 1030


def test_ev_overstay_pays_for_idle_time_beyond_the_overstay_grace():
    m = machine()
    out = drive(m, 0, 1000, [False])
    drive(m, 1000, 1060, [True], out=out)
    drive(m, 1060, 4660, [True], power=EV_W, out=out)
    drive(m, 4660, 7660, [True], power=0, out=out)  # full, left there 50 min
    drive(m, 7660, 7900, [False], out=out)
    ovr = of_type(out, "bay.overstay_started")
    assert len(ovr) == 1 and ovr[0]["t"] == 4660 + 900 and ovr[0]["charge_end"] == 4660
    rec = only_record(out)
    check_record(rec)
    assert rec["classification"] == "ev_overstay"
    assert rec["idle_s"] == 3000
    assert rec["billable_s"] == 3000 - 900
    # 2100 s billable: 15 min free, 20 min left = 2 started blocks.
    assert rec["fee_fen"] == 1000
    assert not [t for t in types(out) if t.startswith("bay.fuel")]


def test_ev_never_plugging_without_plate_is_a_suspected_fuel_car():
    rec = only_record(fuel_stay(machine()))
    assert rec["classification"] == "fuel_car" and rec["confirmed"] is False


def test_ev_never_plugging_with_green_plate_is_ev_parked():
    m = machine()
    out = drive(m, 0, 1000, [False])
    drive(m, 1000, 1100, [True], out=out)
    out.extend(m.plate(1100, "豫CD12345", "green"))
    drive(m, 1100, 3400, [True], out=out)
    drive(m, 3400, 3600, [False], out=out)
    assert not [t for t in types(out) if t.startswith("bay.fuel")]
    rec = only_record(out)
    check_record(rec)
    assert rec["classification"] == "ev_parked"
    # Billed only beyond the plug-in grace: 1500 s, 15 free, 1 started block.
    assert rec["billable_s"] == rec["parked_s"] == 1500
    assert rec["fee_fen"] == 500
    assert rec["evidence"]["nev_plate"] is True


def test_plugged_but_never_charging_is_ev_parked_with_modbus_plug():
    m = machine({"plug_source": "modbus"})
    out = drive(m, 0, 1000, [False], plug=False)
    drive(m, 1000, 1100, [True], plug=False, out=out)
    drive(m, 1100, 3400, [True], plug=True, out=out)  # plugged, no session starts
    drive(m, 3400, 3600, [False], plug=False, out=out)
    assert of_type(out, "bay.plugged")[0]["t"] == 1100
    assert of_type(out, "bay.unplugged")[0]["t"] == 3400
    rec = only_record(out)
    check_record(rec)
    assert rec["classification"] == "ev_parked"
    assert rec["evidence"]["plug_t"] == 1100
    assert rec["fee_fen"] == 500
    assert not of_type(out, "bay.fuel_suspected")


def test_short_stop_without_evidence_is_unknown_and_free():
    m = machine()
    rec = only_record(fuel_stay(m, stay=600))
    check_record(rec)
    assert rec["classification"] == "unknown" and rec["fee_fen"] == 0


# ------------------------------------------------------------------ evidence and conflicts


def test_blue_plate_while_charging_is_a_conflict_never_a_fuel_car():
    m = machine()
    out = drive(m, 0, 1000, [False])
    drive(m, 1000, 1030, [True], out=out)
    drive(m, 1030, 2000, [True], power=EV_W, out=out)
    out.extend(m.plate(2000, "豫C12345", "blue"))
    drive(m, 2000, 3000, [True], power=EV_W, out=out)
    drive(m, 3000, 3200, [False], out=out)
    conflict = of_type(out, "bay.plate_conflict")
    assert len(conflict) == 1 and conflict[0]["reason"] == "charging"
    assert not of_type(out, "bay.fuel_confirmed")
    rec = only_record(out)
    assert rec["classification"] == "ev_charging" and rec["fee_fen"] == 0
    assert rec["evidence"]["plate_conflict"] is True


def test_blue_plate_then_charging_retracts_the_fuel_confirmation():
    # Pre-2017 EVs carry blue plates: charging beats the plate colour.
    m = machine()
    out = drive(m, 0, 1000, [False])
    drive(m, 1000, 1030, [True], out=out)
    out.extend(m.plate(1030, "豫C12345", "blue"))
    drive(m, 1030, 1200, [True], out=out)
    drive(m, 1200, 3000, [True], power=EV_W, out=out)
    drive(m, 3000, 3200, [False], out=out)
    assert len(of_type(out, "bay.fuel_confirmed")) == 1
    conflict = of_type(out, "bay.plate_conflict")
    assert len(conflict) == 1 and conflict[0]["reason"] == "power"
    rec = only_record(out)
    assert rec["classification"] == "ev_charging" and rec["confirmed"] is False


def test_charging_power_during_the_arrival_debounce_is_ev_evidence():
    m = machine()
    out = drive(m, 0, 1000, [False])
    drive(m, 1000, 1010, [True], out=out)
    drive(m, 1010, 1015, [True], power=EV_W, out=out)  # 5 s of power, then nothing
    drive(m, 1015, 3400, [True], out=out)
    drive(m, 3400, 3600, [False], out=out)
    assert not of_type(out, "bay.charging") and not of_type(out, "bay.fuel_suspected")
    rec = only_record(out)
    assert rec["evidence"]["power_seen"] is True
    assert rec["classification"] == "ev_parked"


def test_nev_plate_layout_beats_a_blue_colour_read():
    assert nev_plate_format("豫CD12345") and nev_plate_format("豫C·D1234 5")
    assert not nev_plate_format("豫C12345")
    m = machine()
    out = drive(m, 0, 1000, [False])
    drive(m, 1000, 1030, [True], out=out)
    out.extend(m.plate(1030, "豫CD12345", "blue"))
    drive(m, 1030, 3400, [True], out=out)
    drive(m, 3400, 3600, [False], out=out)
    assert of_type(out, "bay.plate_conflict")[0]["reason"] == "nev_format"
    rec = only_record(out)
    assert rec["classification"] == "ev_parked"


def test_plate_read_before_the_arrival_is_confirmed_is_attached():
    m = machine()
    out = drive(m, 0, 995, [False])
    out.extend(m.plate(995, "豫C12345", "yellow"))
    drive(m, 995, 3400, [True], out=out)
    drive(m, 3400, 3600, [False], out=out)
    conf = of_type(out, "bay.fuel_confirmed")
    assert len(conf) == 1 and conf[0]["t"] == 995
    assert only_record(out)["confirmed"] is True


def test_stale_plate_is_not_attached_to_a_later_arrival():
    m = machine()
    out = drive(m, 0, 100, [False])
    out.extend(m.plate(100, "豫C12345", "blue"))
    drive(m, 100, 1000, [False], out=out)
    drive(m, 1000, 3400, [True], out=out)
    drive(m, 3400, 3600, [False], out=out)
    assert not of_type(out, "bay.fuel_confirmed")
    assert only_record(out)["confirmed"] is False
    assert only_record(out)["evidence"]["plates"] == []


def test_unknown_plate_colour_is_kept_as_evidence_only():
    m = machine()
    out = drive(m, 0, 1000, [False])
    drive(m, 1000, 1030, [True], out=out)
    out.extend(m.plate(1030, "X", "purple"))
    assert of_type(out, "bay.plate")[0]["colour"] == "unknown"
    drive(m, 1030, 1200, [True], out=out)
    drive(m, 1200, 1400, [False], out=out)
    assert only_record(out)["classification"] == "unknown"


# ------------------------------------------------------------------ debounce and noise


def test_departure_is_backdated_to_the_first_absence():
    m = machine()
    out = fuel_stay(m, stay=2400)
    rec = only_record(out)
    left = of_type(out, "bay.left")[0]
    assert rec["departure"] == left["t"] == 3400
    # It was decided leave_s later, so the machine had to wait before saying so.
    assert default_params()["leave_s"] == 45


def test_passer_by_and_short_blips_are_absorbed_by_the_debounce():
    m = machine()
    out = drive(m, 0, 1000, [False])
    drive(m, 1000, 1010, [True], out=out)  # a pedestrian crosses the bay
    drive(m, 1010, 2000, [False], out=out)
    assert not of_type(out, "bay.arrived")
    drive(m, 2000, 2100, [True], out=out)
    drive(m, 2100, 3000, [True], power=EV_W, out=out)
    drive(m, 3000, 3030, [False], power=EV_W, out=out)  # sensor drops out for 30 s
    drive(m, 3030, 4000, [True], power=EV_W, out=out)
    drive(m, 4000, 4100, [False], out=out)
    assert len(of_type(out, "bay.arrived")) == 1
    rec = only_record(out)
    check_record(rec)
    assert rec["arrival"] == 2000 and rec["departure"] == 4000
    assert rec["charging_s"] == 1900


def test_charging_dip_shorter_than_the_debounce_is_ignored():
    m = machine()
    out = drive(m, 0, 1000, [False])
    drive(m, 1000, 1050, [True], out=out)
    drive(m, 1050, 2000, [True], power=EV_W, out=out)
    drive(m, 2000, 2020, [True], power=40, out=out)  # the car pauses 20 s
    drive(m, 2020, 3000, [True], power=EV_W, out=out)
    drive(m, 3000, 3200, [False], out=out)
    assert types(out).count("bay.charging") == 1
    assert types(out).count("bay.charge_stopped") == 1
    rec = only_record(out)
    assert rec["charging_s"] == 3000 - 1050 and rec["idle_s"] == 0


def test_flapping_sensor_makes_the_bay_unknown_until_it_settles():
    m = machine()
    out = drive(m, 0, 1000, [False])
    t = 1000
    v = True
    while t < 1200:  # toggles every 5 s
        out.extend(m.step(t, [v], None, 0))
        v = not v
        t += 5
    flap = of_type(out, "sensor.flapping")
    assert len(flap) == 1 and flap[0]["sensor"] == 0 and flap[0]["changes"] == 13
    assert m.state == "unknown" and m.status()["sensors"] == ["flapping"]
    assert of_type(out, "bay.unknown")[0]["reason"] == "sensors"
    assert not of_type(out, "bay.arrived")
    drive(m, 1200, 2000, [False], out=out)  # quiet for the window
    rec = of_type(out, "sensor.recovered")
    assert len(rec) == 1 and rec[0]["fault"] == "flapping"
    assert rec[0]["t"] == 1195 + 600
    assert m.state == "vacant"
    assert not of_type(out, "occupancy")


def test_stuck_sensor_is_found_by_charging_sessions():
    m = machine({"stuck_after_s": 3600})
    out = drive(m, 0, 600, [False], dt=30)
    for start in (600, 2400):  # two sessions, the sensor never moves
        drive(m, start, start + 1200, [False], power=EV_W, dt=30, out=out)
        drive(m, start + 1200, start + 1800, [False], power=0, dt=30, out=out)
    drive(m, 4200, 4500, [False], dt=30, out=out)
    stuck = of_type(out, "sensor.stuck")
    assert len(stuck) == 1
    assert stuck[0]["t"] == 3600 and stuck[0]["sessions"] == 2 and stuck[0]["value"] is False
    assert m.state == "unknown"
    out = drive(m, 4500, 4600, [True], dt=30)  # it moves again
    assert of_type(out, "sensor.recovered")[0]["fault"] == "stuck"
    assert m.status()["sensors"] == [None]


def test_unchanged_sensor_without_sessions_is_not_stuck():
    m = machine({"stuck_after_s": 3600})
    out = drive(m, 0, 10000, [False], dt=30)
    assert not of_type(out, "sensor.stuck") and m.state == "vacant"


def test_two_sensors_that_disagree_make_the_bay_unknown_and_unbilled():
    m = machine()
    out = drive(m, 0, 1000, [False, False])
    drive(m, 1000, 2000, [True, True], out=out)
    drive(m, 2000, 2600, [True, False], out=out)  # sensor 1 disagrees for 10 min
    drive(m, 2600, 3400, [True, True], out=out)
    drive(m, 3400, 3600, [False, False], out=out)
    dis = of_type(out, "sensor.disagree")
    assert len(dis) == 1 and dis[0]["t"] == 2120 and dis[0]["values"] == [True, False]
    assert of_type(out, "bay.unknown")[0]["reason"] == "disagree"
    rec = only_record(out)
    check_record(rec)
    assert rec["unknown_s"] == 2600 - 2120
    assert rec["billable_s"] == 2400 - 480
    assert rec["evidence"]["faults"] == ["disagree"]
    assert rec["evidence"]["sensors"] == [0, 1]
    # 1920 s billable: 15 free, 17 min = 2 blocks.
    assert rec["fee_fen"] == 1000


def test_short_disagreement_keeps_the_belief():
    m = machine()
    out = drive(m, 0, 1000, [False, False])
    drive(m, 1000, 1060, [True, False], out=out)  # a car reversing in
    drive(m, 1060, 1200, [True, True], out=out)
    assert not of_type(out, "sensor.disagree")
    assert of_type(out, "bay.arrived")[0]["t"] == 1060


def test_one_faulty_sensor_of_two_leaves_the_other_in_charge():
    m = machine()
    out = drive(m, 0, 1000, [False, False])
    drive(m, 1000, 2000, [True, None], out=out)
    miss = of_type(out, "sensor.missing")
    assert len(miss) == 1 and miss[0]["sensor"] == 1 and miss[0]["t"] == 1060
    # Until hold_s has passed sensor 1 keeps its last reading (empty), so the two disagree
    # and the belief holds; then sensor 1 is out and sensor 0 alone decides.
    assert of_type(out, "bay.arrived")[0]["t"] == 1060
    assert m.state == "occupied"
    assert not of_type(out, "sensor.disagree")


def test_missing_readings_are_bridged_then_unknown():
    m = machine()
    out = drive(m, 0, 1000, [False])
    drive(m, 1000, 1050, [None], out=out)  # < hold_s: bridged
    assert m.state == "vacant" and not of_type(out, "bay.unknown")
    drive(m, 1050, 1200, [None], out=out)
    miss = of_type(out, "sensor.missing")
    assert len(miss) == 1 and miss[0]["t"] == 1060 and miss[0]["since"] == 1000
    assert m.state == "unknown"
    drive(m, 1200, 1300, [False], out=out)
    assert m.state == "vacant"
    assert of_type(out, "sensor.recovered")[0]["fault"] == "missing"


def test_pile_offline_during_a_stay_is_unknown_and_not_billed():
    m = machine()
    out = drive(m, 0, 1000, [False])
    drive(m, 1000, 2000, [True], out=out)
    drive(m, 2000, 3000, [True], power=None, out=out)  # meter lost for 1000 s
    drive(m, 3000, 3400, [True], out=out)
    drive(m, 3400, 3600, [False], out=out)
    unk = of_type(out, "bay.unknown")
    assert len(unk) == 1 and unk[0]["reason"] == "pile" and unk[0]["t"] == 2060
    rec = only_record(out)
    check_record(rec)
    assert rec["unknown_s"] == 3000 - 2060
    assert rec["billable_s"] == 2400 - 940 and rec["fee_fen"] == 500


def test_a_suspicion_is_withdrawn_by_an_event_when_the_ev_starts_charging_late():
    # issue 9 defect #9: suspected after the grace time, then it charges: the platform that
    # acted on bay.fuel_suspected is told the suspicion no longer stands, once
    m = machine()
    out = drive(m, 0, 1000, [False])
    drive(m, 1000, 2000, [True], out=out)  # parked past the 900 s grace, no plug
    drive(m, 2000, 3000, [True], power=EV_W, out=out)  # then charges
    drive(m, 3000, 3100, [True], out=out)
    drive(m, 3100, 3400, [False], out=out)
    sus = of_type(out, "bay.fuel_suspected")
    wd = of_type(out, "bay.fuel_suspicion_withdrawn")
    assert len(sus) == 1 and len(wd) == 1, types(out)
    assert wd[0]["reason"] == "power" and wd[0]["suspected_t"] == sus[0]["t"] == 1900
    assert wd[0]["t"] == 2000 and wd[0]["bay"] == "B1"
    assert types(out).index("bay.fuel_suspected") < types(out).index("bay.fuel_suspicion_withdrawn")
    rec = only_record(out)
    assert rec["classification"] == "ev_charging" and rec["fee_fen"] == 0
    assert "bay.fuel_suspicion_withdrawn" in EVENT_TYPES


def test_a_suspicion_is_withdrawn_by_a_green_plate_and_never_without_evidence():
    m = machine()
    out = drive(m, 0, 1000, [False])
    drive(m, 1000, 2000, [True], out=out)
    out += m.plate(2000, "沪AD12345", "green")
    drive(m, 2000, 2100, [True], out=out)
    drive(m, 2100, 2400, [False], out=out)
    wd = of_type(out, "bay.fuel_suspicion_withdrawn")
    assert len(wd) == 1 and wd[0]["reason"] == "green"
    assert only_record(out)["classification"] == "ev_parked"
    plain = fuel_stay(machine())  # a fuel car that just leaves: the suspicion stands
    assert not of_type(plain, "bay.fuel_suspicion_withdrawn")


def test_a_silent_meter_is_missing_hold_s_after_its_last_reading():
    # issue 9 defect #9: the age of the power reading counts, not the time it was last passed
    m = machine(make_params({"hold_s": 20}))
    out = drive(m, 0, 1000, [False])
    t = 1000
    while t < 1300:  # charging, the meter read every 10 s
        out += m.step(t, [True], None, EV_W, t - t % 10)
        t += 1
    while t < 1400:  # the meter goes silent after its reading at 1290; its power is passed on
        out += m.step(t, [True], None, EV_W, 1290)
        t += 1
    unk = of_type(out, "bay.unknown")
    assert len(unk) == 1 and unk[0]["reason"] == "pile" and unk[0]["t"] == 1290 + 20, unk


# ------------------------------------------------------------------ restarts and time


def ev_overstay_story(m, t0, t1, out):
    """The EV overstay scenario, only the steps with t0 <= t < t1."""
    plan = [
        (0, 1000, [False], 0),
        (1000, 1060, [True], 0),
        (1060, 4660, [True], EV_W),
        (4660, 7660, [True], 0),
        (7660, 7900, [False], 0),
    ]
    for a, b, s, pw in plan:
        lo = a if a > t0 else t0
        hi = b if b < t1 else t1
        if lo < hi:
            drive(m, lo, hi, s, power=pw, out=out)
    return out


def test_restart_mid_occupancy_gives_the_same_record_and_fee():
    whole = ev_overstay_story(machine(), 0, 8000, [])
    for cut in (1020, 2500, 4670, 6000, 7670):  # arriving, charging, idle, leaving
        m = machine()
        first = ev_overstay_story(m, 0, cut, [])
        saved = json.dumps(m.snapshot())
        m2 = machine(snapshot=json.loads(saved))
        rest = ev_overstay_story(m2, cut, 8000, [])
        assert first + rest == whole, cut
        assert m2.snapshot() == ev_overstay_machine_final()
    assert only_record(whole)["fee_fen"] == 1000


def ev_overstay_machine_final():
    m = machine()
    ev_overstay_story(m, 0, 8000, [])
    return m.snapshot()


def test_power_cut_mid_stay_counts_as_unknown():
    m = machine()
    out = drive(m, 0, 1000, [False])
    drive(m, 1000, 2000, [True], out=out)
    saved = json.loads(json.dumps(m.snapshot()))  # last persisted state at 1995
    m2 = machine(snapshot=saved)
    drive(m2, 5600, 6000, [True], out=out)  # back an hour later
    drive(m2, 6000, 6200, [False], out=out)
    gap = [e for e in of_type(out, "bay.unknown") if e["reason"] == "gap"]
    assert len(gap) == 1 and gap[0]["t"] == 1995 + 60
    assert of_type(out, "bay.known")[0]["t"] == 5600
    rec = only_record(out)
    check_record(rec)
    assert rec["unknown_s"] == 5600 - 2055
    assert rec["evidence"]["faults"] == ["gap"]
    assert rec["billable_s"] == 5000 - rec["unknown_s"]


def test_version_grows_on_changes_and_at_the_heartbeat_only():
    m = machine()
    drive(m, 0, 1000, [False])
    v = m.version
    m.step(1000, [True], None, 0)
    assert m.version > v  # arriving
    drive(m, 1005, 1025, [True])  # arrival confirmed at 1020
    v = m.version
    drive(m, 1025, 1320, [True])
    assert m.version == v  # nothing happened
    m.step(1320, [True], None, 0)
    assert m.version == v + 1  # heartbeat (300 s)


def test_clock_going_backwards_is_clamped_and_reported():
    m = machine()
    out = drive(m, 0, 1000, [False])
    drive(m, 1000, 2000, [True], out=out)
    back = m.step(1500, [True], None, 0)
    assert back[0]["type"] == "clock.backwards" and back[0]["now"] == 1500
    assert back[0]["t"] == 1995
    drive(m, 2000, 3400, [True], out=out)
    drive(m, 3400, 3600, [False], out=out)
    check_record(only_record(out))


def test_snapshot_is_small_json_and_checked_on_resume():
    m = machine()
    drive(m, 0, 1000, [False])
    drive(m, 1000, 2000, [True])
    m.plate(1500, "豫C12345", "blue")
    text = json.dumps(m.snapshot())
    assert len(text) < 1500, len(text)
    with raises(ValueError, match="bay"):
        BayMachine("B2", "P1", None, default_tariff(), json.loads(text))
    bad = json.loads(text)
    bad["v"] = 99
    with raises(ValueError, match="snapshot"):
        machine(snapshot=bad)


def test_tariff_change_applies_to_later_arrivals_only():
    m = machine()
    out = drive(m, 0, 1000, [False])
    drive(m, 1000, 2000, [True], out=out)
    dear = default_tariff()
    dear["version"] = 2
    dear["price_fen"] = 800
    m.set_tariff(dear)
    drive(m, 2000, 3400, [True], out=out)
    drive(m, 3400, 3600, [False], out=out)
    rec = only_record(out)
    assert rec["tariff"]["version"] == 1 and rec["fee_fen"] == 1000
    out = fuel_stay(m, arrive=4000)
    rec = only_record(out)
    assert rec["tariff"]["version"] == 2 and rec["fee_fen"] == 1600
    with raises(ValueError, match="price_fen"):
        m.set_tariff(
            {
                "id": "x",
                "version": 1,
                "currency": "CNY",
                "free_min": 0,
                "block_min": 15,
                "price_fen": 5.5,
                "applies_to": ["fuel_car"],
            }
        )


def test_no_tariff_means_no_fee_but_still_a_classification():
    m = machine(tariff=None)
    rec = only_record(fuel_stay(m))
    assert rec["classification"] == "fuel_car"
    assert rec["fee_fen"] == 0 and rec["tariff"] == {"id": None, "version": None}


def test_status_gives_a_provisional_view():
    m = machine()
    drive(m, 0, 1000, [False])
    drive(m, 1000, 3400, [True])
    st = m.status(3400)
    assert st["state"] == "occupied" and st["arrival"] == 1000
    assert st["classification"] == "fuel_car" and st["fee_fen"] == 1000
    assert st["elapsed_s"] == 2400
    assert json.loads(json.dumps(st)) == st


def test_every_output_is_plain_json_with_known_types():
    m = machine({"plug_source": "modbus"})
    out = fuel_stay(m)
    out.extend(m.plate(4000, "豫C12345", "blue"))
    drive(m, 4000, 4100, [None], plug=None, power=None, out=out)
    for o in out:
        assert o["type"] in EVENT_TYPES or o["type"] == "occupancy", o["type"]
        assert o["bay"] == "B1" and isinstance(o["t"], int)
        assert json.loads(json.dumps(o)) == o


# ------------------------------------------------------------------ distance filter, params


def test_distance_filter_thresholds_and_hysteresis():
    f = DistanceFilter(None, bay="B1", sensor=0)
    assert f.feed(0, 950) == (True, [])  # first in-band reading: midpoint
    assert f.feed(1, 300) == (True, [])
    assert f.feed(2, 1100) == (True, [])  # in band: keeps occupied
    assert f.feed(3, 1300) == (False, [])
    assert f.feed(4, 900) == (False, [])  # in band: keeps vacant
    assert f.feed(5, 799) == (True, [])
    assert f.feed(6, None) == (None, [])
    assert DistanceFilter().feed(0, 1100) == (False, [])


def test_distance_filter_out_of_range_reports_once_and_recovers():
    f = DistanceFilter({"min_mm": 30, "max_mm": 4000}, bay="B1", sensor=1)
    v, ev = f.feed(10, 5)
    assert v is None and len(ev) == 1
    assert ev[0] == {
        "type": "sensor.out_of_range",
        "bay": "B1",
        "t": 10,
        "sensor": 1,
        "mm": 5,
        "min_mm": 30,
        "max_mm": 4000,
    }
    assert f.feed(11, 9000) == (None, [])
    v, ev = f.feed(12, 2500)
    assert v is False and ev[0]["type"] == "sensor.recovered"
    assert ev[0]["fault"] == "out_of_range"


def test_params_spec_is_the_single_source_of_defaults():
    spec = param_spec()
    d = default_params()
    assert sorted(spec) == sorted(d)
    for k in spec:
        default, lo, hi, unit, doc = spec[k]
        assert d[k] == default and isinstance(doc, str) and doc
        if k != "plug_source":
            assert lo <= default <= hi, k
    assert d["arrive_s"] == 20 and d["leave_s"] == 45 and d["grace_s"] == 900
    assert d["overstay_s"] == 900 and d["stuck_after_s"] == 2 * 86400
    assert validate_params(d) == []


def test_params_validation_names_every_problem():
    probs = dict(validate_params({"arrive_s": 0, "leave_s": "45", "bogus": 1, "plug_source": "wifi", "grace_s": True}))
    assert "between 1 and 600" in probs["arrive_s"]
    assert "integer" in probs["leave_s"] and "integer" in probs["grace_s"]
    assert probs["bogus"] == "unknown parameter"
    assert "modbus" in probs["plug_source"]
    probs = dict(validate_params({"occupied_below_mm": 1500, "min_mm": 7000}))
    assert "vacant_above_mm" in probs["occupied_below_mm"]
    assert "max_mm" in probs["min_mm"]
    with raises(ValueError, match="arrive_s"):
        make_params({"arrive_s": -1})
    assert make_params({"grace_s": 600})["grace_s"] == 600
