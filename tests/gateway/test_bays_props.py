"""Property tests of the bay state machine and the tariff (CPython, hypothesis).

Random sequences of readings and plate reads, on short parameters so that every debounce,
grace and health rule is reached within a few dozen steps.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pilecore.bays import EVENT_TYPES, PHASES, PLATE_COLOURS, PLUG_SOURCES, BayMachine
from pilecore.tariff import default_tariff, fee, validate_tariff

PARAMS = {
    "arrive_s": 10,
    "leave_s": 20,
    "grace_s": 120,
    "overstay_s": 60,
    "charge_debounce_s": 10,
    "hold_s": 30,
    "disagree_s": 20,
    "flap_window_s": 120,
    "flap_max": 4,
    "stuck_after_s": 3600,
    "stuck_sessions": 1,
    "plate_window_s": 30,
    "heartbeat_s": 100,
}
THRESHOLD = 300
TARIFF_V2 = dict(default_tariff(), version=2, price_fen=700, free_min=0)

PROPS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(PROPS, max_examples=50)


@st.composite
def scenarios(draw: Any) -> tuple[int, str, list[tuple]]:
    """(sensor count, plug source, actions); an action is ("step", t, samples, plug, power),
    ("plate", t, text, colour) or ("tariff", t)."""
    n = draw(st.integers(1, 2))
    mode = draw(st.sampled_from(PLUG_SOURCES))
    noisy = st.lists(st.sampled_from([True, False, None]), min_size=n, max_size=n)
    # Mostly a clear picture (every sensor tells the truth), sometimes noise or failures.
    samples = st.one_of(*[st.sampled_from([[True] * n, [False] * n])] * 4, noisy)
    plug = st.sampled_from([True, False, None])
    power = st.sampled_from([None, 0, 0, 50, 299, 300, 7000, 7000, 7000.5, float("nan")])
    # The same readings for a run of steps a few seconds apart ...
    step_op = st.tuples(st.just("step"), st.integers(1, 10), samples, plug, power, st.integers(1, 60))
    # ... or one step after a long silence (gateway down, power cut).
    gap_op = st.tuples(st.just("step"), st.sampled_from([40, 200, 5000]), samples, plug, power, st.just(1))
    plate_op = st.tuples(
        st.just("plate"),
        st.integers(0, 15),
        st.sampled_from(["豫C12345", "豫CD12345", "", "X1"]),
        st.sampled_from([*PLATE_COLOURS, "pink", None]),
    )
    tariff_op = st.tuples(st.just("tariff"), st.integers(0, 15))
    # The previous readings with only the plug, or only the power, changed.
    plug_op = st.tuples(st.just("plug"), st.integers(1, 10), plug, st.integers(1, 10))
    power_op = st.tuples(st.just("power"), st.integers(1, 10), power, st.integers(1, 10))
    # A whole visit: arrives, maybe a plate, maybe charges, stays idle, drives off.
    visit_op = st.tuples(
        st.just("visit"),
        st.integers(0, 40),
        st.one_of(st.just(0), st.integers(0, 60)),
        st.integers(0, 60),
        st.one_of(st.none(), st.sampled_from(["green", "blue", "yellow"])),
        plug,
        st.integers(5, 10),
        st.booleans(),
    )
    ops = draw(
        st.lists(
            st.one_of(step_op, step_op, step_op, gap_op, plate_op, tariff_op, plug_op, power_op, visit_op, visit_op),
            min_size=3,
            max_size=25,
        )
    )
    actions: list[tuple] = []
    t = 1000
    last = ([False] * n, None, 0)
    for op in ops:
        if op[0] in ("step", "plug", "power"):
            if op[0] == "step":
                _k, dt, samples, plug, power, repeat = op
            elif op[0] == "plug":
                _k, dt, plug, repeat = op
                samples, power = last[0], last[2]
            else:
                _k, dt, power, repeat = op
                samples, plug = last[0], last[1]
            last = (samples, plug, power)
            for _ in range(repeat):
                t += dt
                actions.append(("step", t, samples, plug, power))
        elif op[0] == "visit":
            _k, before, charge, idle, colour, plugged, leave, blip = op
            here, gone = [True] * n, [False] * n
            for i in range(before + charge + idle):
                t += 5
                if i == 2 and colour is not None:
                    actions.append(("plate", t, "豫C12345", colour))
                charging = before <= i < before + charge
                # blip: one reading of charging power, shorter than the debounce
                pw = 7000 if charging or (blip and i == 3) else 0
                actions.append(("step", t, here, plugged if charging else False, pw))
            for _ in range(leave):
                t += 5
                actions.append(("step", t, gone, False, 0))
        elif op[0] == "plate":
            t += op[1]
            actions.append(("plate", t, op[2], op[3]))
        else:
            t += op[1]
            actions.append(("tariff", t))
    return n, mode, actions


def new_machine(mode: str, tariff: dict | None = None, snap: dict | None = None) -> BayMachine:
    return BayMachine("B7", "P7", dict(PARAMS, plug_source=mode), default_tariff() if tariff is None else tariff, snap)


def act(m: BayMachine, a: tuple) -> list[dict]:
    if a[0] == "step":
        return m.step(a[1], a[2], a[3], a[4])
    if a[0] == "plate":
        return m.plate(a[1], a[2], a[3])
    m.set_tariff(TARIFF_V2)
    return []


def assert_plain(x: Any) -> None:
    """Only dict (str keys), list, str, int, bool, None: what json and MicroPython keep as is."""
    if isinstance(x, dict):
        for k, v in x.items():
            assert isinstance(k, str)
            assert_plain(v)
    elif isinstance(x, list):
        for v in x:
            assert_plain(v)
    else:
        assert x is None or isinstance(x, (str, int)), repr(x)


def check_record(rec: dict) -> None:
    assert sum(rec[k] for k in PHASES) == rec["duration_s"]
    assert rec["duration_s"] == rec["departure"] - rec["arrival"] >= 0
    assert all(rec[k] >= 0 for k in PHASES)
    assert 0 <= rec["billable_s"] <= rec["duration_s"] - rec["unknown_s"]
    tariff = TARIFF_V2 if rec["tariff"]["version"] == 2 else default_tariff()
    assert rec["fee_fen"] == fee(tariff, rec["classification"], rec["billable_s"])[0]
    assert 0 <= rec["fee_fen"] <= tariff["cap_fen"]
    if rec["classification"] in ("ev_charging", "unknown"):
        assert rec["fee_fen"] == 0
    if rec["confirmed"]:
        assert rec["classification"] == "fuel_car"


@PROPS
@given(scenarios())
def test_random_runs_keep_every_invariant(sc: tuple[int, str, list[tuple]]) -> None:
    _n, mode, actions = sc
    m = new_machine(mode)
    ev_seen = False  # EV evidence at some step of the occupancy in progress
    records = 0
    before = m.snapshot()
    version = m.version
    for a in actions:
        out = act(m, a)
        for o in out:
            assert_plain(o)
            assert o["bay"] == "B7" and isinstance(o["t"], int)
            assert o["type"] in EVENT_TYPES or o["type"] == "occupancy", o["type"]
            if o["type"] == "occupancy":
                records += 1
                check_record(o)
                if ev_seen:
                    assert o["classification"] != "fuel_car", (o, actions)
                ev_seen = False
        assert m.state in ("vacant", "arriving", "occupied", "charging", "idle", "leaving", "unknown")
        status = m.status()
        assert_plain(status)
        if status["arrival"] is not None and m.state != "leaving" and a[0] == "step":
            power = a[4]
            if m.state == "charging" or (power is not None and power >= THRESHOLD):
                ev_seen = True
        after = m.snapshot()
        assert_plain(after)
        if m.version == version:
            # The version counter is what ports persist on: an unchanged version must mean
            # an unchanged snapshot (the step time aside).
            assert dict(after, t=None) == dict(before, t=None), a
        before, version = after, m.version
    assert len(json.dumps(m.snapshot())) < 3000


@FEW
@given(scenarios(), st.data())
def test_resuming_from_a_snapshot_changes_nothing(sc: tuple, data: Any) -> None:
    _n, mode, actions = sc
    cut = data.draw(st.integers(0, len(actions)))
    whole = new_machine(mode)
    full_out = [act(whole, a) for a in actions]
    first = new_machine(mode)
    for a in actions[:cut]:
        act(first, a)
    saved = json.loads(json.dumps(first.snapshot()))
    # The port hands over the tariff in force now; the occupancy keeps its own.
    resumed = new_machine(mode, first.tariff, saved)
    rest = [act(resumed, a) for a in actions[cut:]]
    assert rest == full_out[cut:]
    assert resumed.snapshot() == whole.snapshot()


@FEW
@given(scenarios())
def test_restarting_before_every_action_changes_nothing(sc: tuple) -> None:
    _n, mode, actions = sc
    whole = new_machine(mode)
    m = new_machine(mode)
    for a in actions:
        m = new_machine(mode, m.tariff, json.loads(json.dumps(m.snapshot())))
        assert act(m, a) == act(whole, a), a
    assert m.snapshot() == whole.snapshot()


@st.composite
def tariffs(draw: Any) -> dict:
    free = draw(st.integers(0, 60))
    block = draw(st.integers(1, 60))
    afters = sorted(set(draw(st.lists(st.integers(1, 400), max_size=3))))
    steps = [{"after_min": a, "price_fen": draw(st.integers(0, 3000))} for a in afters]
    return {
        "id": "t",
        "version": 1,
        "currency": "CNY",
        "free_min": free,
        "block_min": block,
        "price_fen": draw(st.integers(0, 3000)),
        "steps": steps,
        "cap_fen": draw(st.integers(0, 20000)),
        "applies_to": ["fuel_car", "ev_overstay", "ev_parked"],
    }


def brute_force_fee(t: dict, seconds: int) -> int:
    """Price block by block, the slow obvious way."""
    over = seconds - t["free_min"] * 60
    if over <= 0:
        return 0
    total = 0
    start = t["free_min"]
    while over > 0:
        price = t["price_fen"]
        for s in t["steps"]:
            if s["after_min"] <= start:
                price = s["price_fen"]
        total += price
        start += t["block_min"]
        over -= t["block_min"] * 60
    cap = t["cap_fen"]
    return min(total, cap) if cap else total


@settings(max_examples=150, deadline=None)
@given(tariffs(), st.integers(0, 30000), st.integers(0, 5000))
def test_fee_matches_block_pricing_never_negative_capped_and_monotonic(t: dict, seconds: int, more: int) -> None:
    assert validate_tariff(t) == []
    f, bd = fee(t, "fuel_car", seconds)
    assert f == brute_force_fee(t, seconds) == bd["fen"]
    assert f >= 0
    if t["cap_fen"]:
        assert f <= t["cap_fen"]
    assert sum(p["fen"] for p in bd["parts"]) == bd["gross_fen"]
    assert sum(p["blocks"] for p in bd["parts"]) == bd["blocks"]
    if seconds <= t["free_min"] * 60:
        assert f == 0
    assert fee(t, "fuel_car", seconds + more)[0] >= f
