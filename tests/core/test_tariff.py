"""Occupancy fees: free time, started blocks, stepped prices, cap, validation."""

import json

from mpytest import raises

from pilecore.tariff import BILLABLE_CLASSES, default_tariff, fee, validate_tariff

MIN = 60


def flat(**over):
    """15 free minutes, 5 yuan per started 15 minutes, no steps, no cap."""
    t = {
        "id": "flat",
        "version": 1,
        "currency": "CNY",
        "free_min": 15,
        "block_min": 15,
        "price_fen": 500,
        "applies_to": ["fuel_car", "ev_overstay", "ev_parked"],
    }
    t.update(over)
    return t


def fen(t, seconds, cls="fuel_car"):
    return fee(t, cls, seconds)[0]


def test_default_tariff_is_valid():
    assert validate_tariff(default_tariff()) == []
    assert validate_tariff(flat()) == []


def test_free_time_costs_nothing():
    t = flat()
    assert fen(t, 0) == 0
    assert fen(t, 15 * MIN) == 0
    assert fen(t, 15 * MIN + 1) == 500


def test_every_started_block_is_charged():
    t = flat()
    assert fen(t, 30 * MIN) == 500
    assert fen(t, 30 * MIN + 1) == 1000
    assert fen(t, 40 * MIN) == 1000
    assert fen(t, 24 * 60 * MIN) == 500 * 95  # a day: 1425 min / 15


def test_no_free_time_bills_from_the_first_second():
    t = flat(free_min=0, block_min=60, price_fen=300)
    assert fen(t, 1) == 300
    assert fen(t, 60 * MIN) == 300
    assert fen(t, 60 * MIN + 1) == 600


def test_steps_price_blocks_by_their_start_minute():
    t = default_tariff()  # 500, 1000 from minute 60, cap 5000
    f, bd = fee(t, "fuel_car", 2 * 60 * MIN)
    # Blocks start at minutes 15, 30, 45 (500 each), 60, 75, 90, 105 (1000 each) = 5500.
    assert bd["parts"] == [
        {"from_min": 15, "blocks": 3, "price_fen": 500, "fen": 1500},
        {"from_min": 60, "blocks": 4, "price_fen": 1000, "fen": 4000},
    ]
    assert bd["gross_fen"] == 5500 and bd["blocks"] == 7
    assert f == 5000 and bd["capped"] is True and bd["fen"] == 5000
    assert fen(t, 60 * MIN) == 1500
    assert fen(t, 60 * MIN + 1) == 2500


def test_step_not_on_a_block_boundary_starts_at_the_next_block():
    t = flat(steps=[{"after_min": 50, "price_fen": 900}])
    _f, bd = fee(t, "fuel_car", 90 * MIN)
    assert [(p["from_min"], p["blocks"], p["price_fen"]) for p in bd["parts"]] == [(15, 3, 500), (60, 2, 900)]


def test_step_inside_the_free_time_applies_from_the_first_block():
    t = flat(steps=[{"after_min": 5, "price_fen": 700}, {"after_min": 45, "price_fen": 900}])
    _f, bd = fee(t, "fuel_car", 60 * MIN)
    assert [(p["from_min"], p["blocks"], p["price_fen"]) for p in bd["parts"]] == [(15, 2, 700), (45, 1, 900)]
    assert bd["fen"] == 2300


def test_cap_limits_one_occupancy_and_zero_means_no_cap():
    assert fen(flat(cap_fen=2000), 10 * 60 * MIN) == 2000
    assert fen(flat(cap_fen=0), 10 * 60 * MIN) == 500 * 39
    assert fen(flat(), 10 * 60 * MIN) == 500 * 39


def test_only_listed_classifications_pay():
    t = flat(applies_to=["fuel_car"])
    assert fen(t, 3600, "fuel_car") == 1500
    assert fen(t, 3600, "ev_overstay") == 0
    assert fen(t, 3600, "ev_charging") == 0
    assert fen(t, 3600, "unknown") == 0


def test_no_tariff_means_nothing_due():
    f, bd = fee(None, "fuel_car", 99999)
    assert f == 0 and bd["tariff"] is None and bd["fen"] == 0


def test_breakdown_is_json_and_money_is_int():
    f, bd = fee(default_tariff(), "ev_parked", 4000)
    assert isinstance(f, int) and not isinstance(f, bool)
    assert json.loads(json.dumps(bd)) == bd
    assert bd["tariff"] == "default" and bd["version"] == 1 and bd["billable_s"] == 4000


def test_bad_billable_seconds_are_refused():
    with raises(ValueError, match="billable_s"):
        fee(flat(), "fuel_car", -1)
    with raises(ValueError, match="billable_s"):
        fee(flat(), "fuel_car", 12.5)


def problems(t):
    return dict(validate_tariff(t))


def test_validation_lists_missing_and_unknown_keys():
    p = problems({"id": "x", "free_mins": 15})
    assert p["free_mins"].startswith("unknown key")
    for k in ("version", "currency", "free_min", "block_min", "price_fen", "applies_to"):
        assert p[k] == "missing", k
    assert validate_tariff([1, 2])[0][0] == ""


def test_validation_refuses_floats_bools_and_out_of_range_money():
    p = problems(flat(price_fen=5.0, version=True, block_min=0, cap_fen=-1, free_min=-5))
    assert "integer" in p["price_fen"]
    assert "integer" in p["version"]
    assert "between 1 and 1440" in p["block_min"]
    assert "between 0" in p["cap_fen"] and "between 0" in p["free_min"]
    assert "between" in problems(flat(price_fen=10**9))["price_fen"]


def test_validation_checks_id_and_currency():
    assert "non-empty" in problems(flat(id=""))["id"]
    assert "ISO 4217" in problems(flat(currency="yuan"))["currency"]
    assert "ISO 4217" in problems(flat(currency="cny"))["currency"]


def test_validation_checks_steps():
    p = problems(
        flat(
            steps=[
                {"after_min": 60, "price_fen": 1000},
                {"after_min": 60, "price_fen": 2000},
                {"after_min": 90},
                {"after_min": 120, "price_fen": 100, "extra": 1},
                "cheap",
            ]
        )
    )
    assert "greater than the previous" in p["steps.1.after_min"]
    assert "both" in p["steps.2"]
    assert p["steps.3.extra"].startswith("unknown key")
    assert "table" in p["steps.4"]
    assert "list" in problems(flat(steps={"after_min": 1}))["steps"]
    assert "between 1" in problems(flat(steps=[{"after_min": 0, "price_fen": 1}]))["steps.0.after_min"]


def test_validation_checks_who_pays():
    p = problems(flat(applies_to=["fuel_car", "fuel_car", "ev_charging", "unknown", "bus"]))
    assert "twice" in p["applies_to.1"]
    assert "never billed" in p["applies_to.2"] and "charging" in p["applies_to.2"]
    assert "never billed" in p["applies_to.3"] and "guessed" in p["applies_to.3"]
    assert "not one of" in p["applies_to.4"]
    assert "list" in problems(flat(applies_to="fuel_car"))["applies_to"]
    assert BILLABLE_CLASSES == ("fuel_car", "ev_overstay", "ev_parked")
