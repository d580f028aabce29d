"""Charging sessions from readings: plug and power rules, debounce, restarts, honesty flags."""

import json

from mpytest import raises

from pilecore import sessions
from pilecore.sessions import SessionTracker

T0 = 1795691815  # 2026-11-26T11:16:55Z
SERIAL = "MTR-0001"


def feed(tr, steps, serial=SERIAL, sync=True):
    """Step tr through (dt, energy_wh, power_w, plug[, unmetered]) tuples; dt is seconds after
    T0.  Returns the finished sessions."""
    done = []
    for st in steps:
        dt, wh, pw, plug = st[0], st[1], st[2], st[3]
        um = st[4] if len(st) > 4 else False
        out = tr.step(T0 + dt, wh, power_w=pw, plug=plug, unmetered=um, sync=sync, serial=serial)
        if out is not None:
            done.append(out)
    return done


def reading(dt, wh, flags=None, sync="S", serial=SERIAL):
    return {"t": T0 + dt, "wh": wh, "sync": sync, "serial": serial, "flags": flags or []}


# ---------------------------------------------------------------------------- plug


def test_plug_session_begins_and_ends_on_the_plug():
    tr = SessionTracker("P1")
    done = feed(
        tr,
        [
            (0, 1000, 0.0, False),
            (10, 1000, 0.0, True),  # plugged in: begin reading here
            (20, 1200, 7000.0, True),
            (4000, 8800, 7000.0, True),
            (4010, 8900, 0.0, True),  # charge finished, still plugged: session goes on
            (9000, 8905, 0.0, True),
            (9010, 8905, 0.0, False),  # unplugged: end reading here
            (9020, 8905, 0.0, False),
        ],
    )
    assert len(done) == 1
    s = done[0]
    assert s["pile"] == "P1"
    assert s["start"] == reading(10, 1000)
    assert s["end"] == reading(9010, 8905)
    assert s["energy_wh"] == 7905
    assert s["meter_serial"] == SERIAL
    assert (s["reason"], s["started_by"]) == ("unplugged", "plug")
    assert s["flags"] == [] and s["metered"] is True
    assert not tr.active


def test_plug_needs_an_edge_and_false_blocks_power_starts():
    tr = SessionTracker("P1")
    # Unplugged: power (the pile's own electronics, a test load) never starts a session.
    done = feed(tr, [(0, 0, 5000.0, False), (100, 10, 5000.0, False), (1000, 20, 5000.0, False)])
    assert done == [] and not tr.active
    # A pile seen plugged at the first step counts as a connect.
    tr2 = SessionTracker("P2")
    feed(tr2, [(0, 50, 0.0, True)])
    assert tr2.active and tr2.current()["start"]["wh"] == 50


def test_sessions_follow_one_another():
    tr = SessionTracker("P1")
    done = feed(
        tr,
        [
            (0, 100, 0.0, True),
            (60, 300, 0.0, False),
            (120, 300, 0.0, True),
            (180, 700, 0.0, False),
        ],
    )
    assert [(s["start"]["wh"], s["end"]["wh"], s["energy_wh"]) for s in done] == [(100, 300, 200), (300, 700, 400)]


# ---------------------------------------------------------------------------- power


def test_power_session_debounced_start_bills_from_the_reading_before_the_rise():
    tr = SessionTracker("P1", {"start_power_w": 300, "start_after_s": 30, "stop_power_w": 100, "stop_after_s": 120})
    done = feed(
        tr,
        [
            (0, 5000, 0.0, None),
            (10, 5000, 50.0, None),
            (20, 5001, 400.0, None),  # spike shorter than start_after_s: no session
            (30, 5002, 20.0, None),
            (40, 5002, 0.0, None),  # baseline: last reading before the real rise
            (50, 5010, 7000.0, None),  # run starts
            (70, 5050, None, None),  # power unknown: neither confirms nor breaks the run
        ],
    )
    assert done == [] and not tr.active
    feed(tr, [(80, 5090, 7000.0, None)])  # 30 s after the rise: session starts
    assert tr.active
    cur = tr.current()
    assert cur["started_by"] == "power" and cur["t0"] == T0 + 80
    assert cur["start"] == reading(40, 5002)


def test_power_session_ends_after_stop_debounce_with_hysteresis():
    p = {"start_power_w": 300, "start_after_s": 0, "stop_power_w": 100, "stop_after_s": 120, "max_gap_s": 600}
    tr = SessionTracker("P1", p)
    done = feed(
        tr,
        [
            (0, 1000, 3000.0, None),  # start_after_s 0: starts at once, from this reading
            (60, 1050, 200.0, None),  # between the thresholds: still charging
            (120, 1060, 50.0, None),  # below stop: window opens
            (200, 1061, 40.0, None),  # 80 s: not yet
            (210, 1070, 2000.0, None),  # resumes: window closed
            (300, 1120, 10.0, None),  # below again
            (400, 1121, None, None),  # unknown power does not end the session
            (419, 1121, 0.0, None),  # 119 s
        ],
    )
    assert done == [] and tr.active
    done = feed(tr, [(420, 1121, 0.0, None)])  # 120 s below stop_power_w
    assert len(done) == 1
    s = done[0]
    assert s["start"] == reading(0, 1000) and s["end"] == reading(420, 1121)
    assert (s["reason"], s["started_by"], s["energy_wh"]) == ("power", "power", 121)
    assert s["metered"] is True


def test_plug_rules_while_known_power_rules_while_unknown():
    p = {"start_power_w": 300, "start_after_s": 0, "stop_power_w": 100, "stop_after_s": 60}
    tr = SessionTracker("P1", p)
    done = feed(
        tr,
        [
            (0, 0, 2000.0, None),  # power start
            (10, 10, 0.0, True),  # plug state appears: plugged, power 0 does not end it
            (500, 10, 0.0, True),
            (510, 10, 0.0, None),  # plug unknown again: power rule, window opens
            (569, 10, 0.0, None),
        ],
    )
    assert done == [] and tr.active
    done = feed(tr, [(570, 10, 0.0, None)])
    assert len(done) == 1 and done[0]["reason"] == "power"
    # Plug False ends a power-started session at once.
    feed(tr, [(600, 10, 2000.0, None)])
    assert tr.active
    done = feed(tr, [(605, 12, 2000.0, False)])
    assert len(done) == 1 and done[0]["reason"] == "unplugged"


def test_a_gap_restarts_the_debounce():
    p = {"start_power_w": 300, "start_after_s": 60, "stop_power_w": 100, "stop_after_s": 60, "max_gap_s": 30}
    tr = SessionTracker("P1", p)
    feed(
        tr, [(0, 0, 1000.0, None), (20, 5, 1000.0, None), (200, 60, 1000.0, None)]
    )  # 180 s unobserved: the run starts again here
    assert not tr.active
    feed(tr, [(220, 70, 1000.0, None), (240, 80, 1000.0, None)])
    assert not tr.active
    feed(tr, [(260, 90, 1000.0, None)])
    assert tr.active
    # The begin reading is the one taken when the run restarted (the older one is too old).
    assert tr.current()["start"]["wh"] == 60


# ---------------------------------------------------------------------------- restarts


def test_restart_mid_session_keeps_the_begin_reading():
    tr = SessionTracker("P1")
    feed(tr, [(0, 2000, 0.0, False), (10, 2000, 0.0, True)])
    v = tr.version
    snap = json.loads(json.dumps(tr.snapshot()))  # what the port writes to flash
    feed(tr, [(20, 2100, 7000.0, True), (30, 2200, 7000.0, True)])
    assert tr.version == v  # readings alone do not need a save
    # Power cut.  The gateway comes back 2 hours later; the car has been unplugged meanwhile.
    tr2 = SessionTracker("P1", None, snap)
    assert tr2.active
    done = feed(tr2, [(7210, 9000, 0.0, False)])
    assert len(done) == 1
    s = done[0]
    assert s["start"] == reading(10, 2000)
    assert s["end"] == reading(7210, 9000)
    assert s["energy_wh"] == 7000 and s["reason"] == "unplugged"


def test_resumed_tracker_behaves_like_the_original():
    steps = [
        (0, 0, 0.0, None),
        (10, 0, 900.0, None),
        (30, 20, 900.0, None),
        (50, 40, 900.0, None),
        (100, 90, 0.0, None),
        (500, 95, 0.0, None),
        (600, 95, 0.0, None),
    ]
    p = {"start_after_s": 20, "stop_after_s": 300, "max_gap_s": 600}
    a = SessionTracker("P1", p)
    ref = feed(a, steps)
    assert len(ref) == 1
    for cut in range(1, len(steps)):
        b = SessionTracker("P1", p)
        got = feed(b, steps[:cut])
        c = SessionTracker("P1", p, json.loads(json.dumps(b.snapshot())))
        got += feed(c, steps[cut:])
        assert got == ref, cut


def test_snapshot_must_match_the_pile_and_version():
    snap = SessionTracker("P1").snapshot()
    with raises(ValueError):
        SessionTracker("P2", None, snap)
    snap["v"] = 99
    with raises(ValueError):
        SessionTracker("P1", None, snap)


def test_version_grows_on_changes_that_matter():
    tr = SessionTracker("P1")
    feed(tr, [(0, 0, 0.0, False)])
    v0 = tr.version
    feed(tr, [(10, 0, 0.0, False)])
    assert tr.version == v0
    feed(tr, [(20, 0, 0.0, True)])
    v1 = tr.version
    assert v1 > v0
    feed(tr, [(30, 5, 0.0, True, "offline")])
    v2 = tr.version
    assert v2 > v1
    feed(tr, [(40, 9, 0.0, False)])
    assert tr.version > v2


# ---------------------------------------------------------------------------- honesty


def test_unmetered_step_flags_the_session():
    tr = SessionTracker("P1")
    done = feed(
        tr,
        [
            (0, 0, 0.0, False, ["unverified"]),  # before the session: does not taint it
            (10, 100, 0.0, True),
            (20, 200, 7000.0, True, ["offline"]),
            (30, 300, 7000.0, True, ["offline", "unverified"]),
            (40, 400, 7000.0, True),
            (50, 500, 0.0, False),
            (60, 500, 0.0, True),  # next session is clean again
            (70, 600, 0.0, False),
        ],
    )
    assert len(done) == 2
    assert done[0]["flags"] == ["offline", "unverified"]
    assert done[0]["metered"] is False
    assert done[0]["energy_wh"] == 400  # the readings are kept as they are
    assert done[1]["flags"] == [] and done[1]["metered"] is True


def test_unmetered_at_begin_and_end_is_on_those_readings():
    tr = SessionTracker("P1")
    done = feed(tr, [(0, 100, 0.0, True, True), (10, 150, 0.0, False, "swapped")])
    s = done[0]
    assert s["start"]["flags"] == ["unmetered"] and s["end"]["flags"] == ["swapped"]
    assert s["flags"] == ["unmetered", "swapped"] and s["metered"] is False


def test_unmetered_during_the_debounce_run_counts():
    p = {"start_power_w": 300, "start_after_s": 20, "stop_power_w": 100, "stop_after_s": 60}
    tr = SessionTracker("P1", p)
    feed(tr, [(0, 0, 0.0, None), (10, 5, 1000.0, None, "offline"), (30, 20, 1000.0, None)])
    assert tr.active and tr.current()["flags"] == ["offline"]


def test_tracker_sees_a_swapped_meter_and_a_register_going_back():
    tr = SessionTracker("P1")
    tr.step(T0, 100, plug=True, sync=True, serial="A")
    tr.step(T0 + 10, 200, plug=True, sync=True, serial="B")
    s = tr.step(T0 + 20, 150, plug=False, sync=True, serial="B")
    assert s["flags"] == ["swapped", "energy_backwards"]
    assert s["meter_serial"] == "A" and s["end"]["serial"] == "B"
    assert s["metered"] is False


def test_missing_begin_reading_is_taken_late_and_flagged():
    tr = SessionTracker("P1")
    done = feed(tr, [(0, None, 0.0, True), (10, None, 0.0, True), (20, 300, 0.0, True), (30, 400, 0.0, False)])
    s = done[0]
    assert s["start"] == reading(20, 300)
    assert s["flags"] == ["no_reading"] and s["metered"] is False


def test_missing_reading_at_a_step_uses_a_fresh_one_unflagged():
    tr = SessionTracker("P1", {"max_gap_s": 30})
    done = feed(tr, [(0, 100, 0.0, False), (10, None, 0.0, True), (20, 150, 0.0, True), (40, None, 0.0, False)])
    s = done[0]
    assert s["start"] == reading(0, 100)  # 10 s old: fresh enough
    assert s["end"] == reading(20, 150)  # 20 s old: fresh enough
    assert s["flags"] == [] and s["energy_wh"] == 50


def test_stale_end_reading_is_flagged():
    tr = SessionTracker("P1", {"max_gap_s": 30})
    done = feed(tr, [(0, 100, 0.0, True), (10, 150, 0.0, True), (20, None, 0.0, True), (60, None, 0.0, False)])
    s = done[0]
    assert s["end"] == reading(10, 150)
    assert s["flags"] == ["no_reading"]


def test_session_without_any_reading_has_none_energy():
    tr = SessionTracker("P1")
    done = feed(tr, [(0, None, 0.0, True), (10, None, 0.0, False)])
    s = done[0]
    assert s["start"]["wh"] is None and s["end"]["wh"] is None and s["energy_wh"] is None
    assert s["flags"] == ["no_reading"] and s["metered"] is False


def test_clock_stepping_back_is_flagged_but_not_unmetered():
    tr = SessionTracker("P1")
    done = feed(tr, [(1000, 100, 0.0, True), (1010, 120, 0.0, True), (500, 130, 0.0, True), (510, 140, 0.0, False)])
    s = done[0]
    assert s["flags"] == ["clock_backwards"] and s["metered"] is True
    assert s["end"]["t"] < s["start"]["t"]


def test_sync_letters_are_kept_per_reading():
    tr = SessionTracker("P1")
    tr.step(T0, 1, plug=True, sync=False)
    s = tr.step(T0 + 5, 2, plug=False, sync="S")
    assert s["start"]["sync"] == "U" and s["end"]["sync"] == "S"
    with raises(ValueError):
        tr.step(T0 + 6, 2, plug=False, sync="Q")


def test_bad_step_arguments():
    tr = SessionTracker("P1")
    for kw in ({"energy_wh": -1}, {"energy_wh": 1.5}, {"energy_wh": True}):
        with raises(ValueError):
            tr.step(T0, kw["energy_wh"])
    with raises(ValueError):
        tr.step(T0, 1, plug=1)
    with raises(ValueError):
        tr.step(T0, 1, unmetered=5)


# ---------------------------------------------------------------------------- parameters


def test_param_spec_shape_and_defaults():
    spec = sessions.param_spec()
    d = sessions.default_params()
    assert sorted(spec) == sorted(d)
    for k in spec:
        default, lo, hi, unit, doc = spec[k]
        assert lo <= default <= hi, k
        assert unit and doc
    assert sessions.validate_params({}) == []
    assert sessions.validate_params(d) == []


def test_validate_params_reports_every_problem():
    probs = sessions.validate_params({"start_power_w": 0, "stop_after_s": "5", "nope": 1})
    keys = sorted(k for k, _m in probs)
    assert keys == ["nope", "start_power_w", "stop_after_s"]
    probs = sessions.validate_params({"start_power_w": 200, "stop_power_w": 500})
    assert [k for k, _m in probs] == ["stop_power_w"]
    assert sessions.validate_params([]) != []
    with raises(ValueError, match="start_power_w"):
        SessionTracker("P1", {"start_power_w": -3})
