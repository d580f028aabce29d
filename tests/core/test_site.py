"""SiteCore: readings become sessions and OCMF billing records; bay inputs become occupancy
records; telemetry never invents a value; state survives a restart (both interpreters)."""

import json

from mpytest import new_key

from pilecore import ecdsa, metering, ocmf, tariff
from pilecore.site import SiteCore

D = new_key()
PUB = ecdsa.public_key(D)


def prof():
    return {
        "id": "m",
        "maker": "Eastron",
        "model": "SDM120",
        "phases": 1,
        "identity": {"kind": "serial", "register": 0xFC00, "type": "u32", "count": 2, "function": 3},
        "values": {"energy_import": {"scale": 1.0}},
    }


def cfg(with_bay=True):
    c = {
        "gateway": {"id": "GW-1"},
        "pile": [
            {
                "id": "P1",
                "meter": {"bus": "b", "address": 1, "profile": "m", "serial": ""},
                "max_power_kw": 7.0,
                "interlock": "report",
            }
        ],
        "profiles": {"m": prof()},
        "sensor_profiles": {"us": {"measures": "distance", "type": "u16", "scale": 1.0}},
        "bays": {"arrive_s": 10, "leave_s": 20, "grace_s": 300},
    }
    if with_bay:
        c["bay"] = [
            {
                "id": "B1",
                "pile": "P1",
                "presence": [
                    {"type": "modbus", "bus": "b", "address": 31, "profile": "us"},
                    {"type": "input", "input": "DI1", "active": "low"},
                ],
                "plug": {"source": "input", "input": "DI2", "active": "high"},
            }
        ]
    return c


def core(c=None, state=None):
    return SiteCore(c or cfg(), ocmf.signer(D), "GW-1", "0.1.0", state)


def types(evs):
    return [e["type"] for e in evs]


def bind(sc, t, serial):
    """Bind a serial as a first read does: read twice, BIND_CONFIRM_S apart, the second at t."""
    sc.identity(t - metering.BIND_CONFIRM_S, "P1", serial)
    return sc.identity(t, "P1", serial)


def charge(sc, t0, minutes, kw=7.0, wh0=1000000, plug_bay=True):
    """An EV arrives, plugs, charges `minutes` and leaves; returns the time after it left."""
    t = t0
    wh = wh0
    for _ in range(30):  # arrives (sensor 400 mm, input active low -> 0)
        sc.bay_inputs(t, "B1", [400, 0], 0)
        sc.reading(t, "P1", {"energy_wh": wh, "power_w": 0.0}, (), "ntp")
        t += 1
    for _ in range(minutes * 6):  # plugged and charging, a reading every 10 s
        sc.bay_inputs(t, "B1", [400, 0], 1)
        sc.reading(t, "P1", {"energy_wh": wh, "power_w": kw * 1000}, (), "ntp")
        wh += int(kw * 1000 * 10 / 3600)
        t += 10
    for _ in range(40):  # unplugs and leaves
        sc.bay_inputs(t, "B1", [2500, 1], 0)
        sc.reading(t, "P1", {"energy_wh": wh, "power_w": 0.0}, (), "ntp")
        t += 1
    return t, wh


def test_a_charging_session_becomes_a_verifiable_ocmf_record_and_no_fee():
    sc = core()
    bind(sc, 999, "12345678")
    t, wh = charge(sc, 1000, 30)
    bills = sc.take_billing()
    kinds = [b["type"] for b in bills]
    assert kinds == ["session", "occupancy"], kinds
    session = bills[0]
    assert session["pile"] == "P1" and session["session"]["metered"]
    assert session["session"]["energy_wh"] == wh - 1000000
    assert ocmf.verify(session["ocmf"], PUB)
    payload, _, _ = ocmf.parse(session["ocmf"])
    assert payload["MS"] == "12345678" and payload["PG"] == "T1"
    occ = bills[1]
    assert occ["classification"] == "ev_charging" and occ["fee_fen"] == 0
    assert sc.take_billing() == []


def test_pagination_and_state_survive_a_restart():
    sc = core()
    bind(sc, 999, "12345678")
    t, wh = charge(sc, 1000, 10)
    sc.take_billing()
    snap = json.loads(json.dumps(sc.snapshot()))
    sc2 = core(state=snap)
    sc2.identity(t, "P1", "12345678")
    charge(sc2, t + 100, 10, wh0=wh)
    payload, _, _ = ocmf.parse(sc2.take_billing()[0]["ocmf"])
    assert payload["PG"] == "T2"


def test_a_fuel_car_pays_and_telemetry_reports_it_live():
    sc = core()
    bind(sc, 999, "12345678")
    t = 1000
    for _ in range(40 * 60 // 5):  # 40 minutes, never plugged, no power
        sc.bay_inputs(t, "B1", [500, 0], 0)
        sc.reading(t, "P1", {"energy_wh": 1000, "power_w": 0.0}, (), "ntp")
        t += 5
    data = sc.telemetry(t, 0, 30)
    assert data["bays"][0]["state"] in ("occupied", "idle")
    for _ in range(40):
        sc.bay_inputs(t, "B1", [2500, 1], 0)
        t += 1
    occ = [b for b in sc.take_billing() if b["type"] == "occupancy"][0]
    assert occ["classification"] == "fuel_car"
    fen, _ = tariff.fee(tariff.default_tariff(), "fuel_car", occ["billable_s"])
    assert occ["fee_fen"] == fen and fen > 0
    assert "bay.fuel_suspected" in types(sc.recent)


def test_telemetry_marks_stale_and_unmetered_and_invents_nothing():
    sc = core(cfg(with_bay=False))
    data = sc.telemetry(1000, 0, 30)
    p = data["piles"][0]
    assert p["stale"] and not p["metered"] and p["reasons"] == ["unverified"]
    assert "energy_wh" not in p and "power_w" not in p
    bind(sc, 1000, "1")
    sc.reading(1001, "P1", {"energy_wh": 5, "power_w": 10.0}, (), "ntp")
    p = sc.telemetry(1002, 1000, 30)["piles"][0]
    assert p["metered"] and p["energy_wh"] == 5 and "stale" not in p
    p = sc.telemetry(1100, 1050, 30)["piles"][0]
    assert p["stale"] and p["t"] == 1001


def test_a_bad_tariff_is_refused_and_a_good_one_applies():
    sc = core()
    assert sc.set_tariff({"id": "x"}) != ""
    t = tariff.default_tariff()
    t["id"], t["version"] = "new", 2
    assert sc.set_tariff(t) == "" and sc.tariff["id"] == "new"


def test_identity_answers_and_interlock_changes_are_judged_once_for_both_ports():
    c = cfg(with_bay=False)
    c["pile"][0]["interlock"] = "relay"
    sc = core(c)
    changes, events = sc.interlock_changes(1000)
    assert changes == [("P1", False)] and types(events) == ["interlock.off"]
    assert sc.interlock_changes(1001) == ([], [])  # nothing new to drive
    assert sc.identity_result(1002 - metering.BIND_CONFIRM_S, "P1", 0, [0x0001, 0xE240])[1] == []
    ident, events = sc.identity_result(1002, "P1", 0, [0x0001, 0xE240])
    assert ident == "123456" and "meter.verified" in types(events)
    changes, events = sc.interlock_changes(1003)
    assert changes == [("P1", True)]
    assert types(sc.interlock_failed(1004, "P1", "timeout")) == ["interlock.failed"]
    assert sc.interlock_changes(1005)[0] == [("P1", True)]  # a failed write is driven again
    ident, events = sc.identity_result(1006, "P1", 7, None)
    assert ident is None and events[0]["type"] == "meter.identity_failed" and events[0]["reason"] == "timeout"


def test_bay_power_goes_stale_after_the_bays_hold_s_not_a_fixed_minute():
    # issue 9 defect #9: a silent meter kept a bay "charging" for 60 s + hold_s
    c = cfg()
    c["bays"]["hold_s"] = 20
    sc = core(c)
    bind(sc, 999, "12345678")
    t, wh = 1000, 1000000
    events = []
    for _ in range(30):  # arrives
        events += sc.bay_inputs(t, "B1", [400, 0], 0)
        events += sc.reading(t, "P1", {"energy_wh": wh, "power_w": 0.0}, (), "ntp")
        t += 1
    for i in range(300):  # plugged and charging, a reading every 10 s
        if i % 10 == 0:
            events += sc.reading(t, "P1", {"energy_wh": wh, "power_w": 7000.0}, (), "ntp")
            last = t
            wh += 19
        events += sc.bay_inputs(t, "B1", [400, 0], 1)
        t += 1
    assert sc.bays["B1"].state == "charging"
    for _ in range(100):  # the meter goes silent
        events += sc.bay_inputs(t, "B1", [400, 0], 1)
        t += 1
    unk = [e for e in events if e["type"] == "bay.unknown"]
    assert len(unk) == 1 and unk[0]["reason"] == "pile", unk
    assert unk[0]["t"] == last + 20, (unk, last)  # hold_s after the last reading, not 60 + hold_s
