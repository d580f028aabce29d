"""pilecore.profile: the meter-profile validator and lookups, on small inline profiles.

Runs under pytest and on MicroPython (tests/mpy/run.mjs), so it builds its profiles from
literals instead of reading the TOML files (tests/gateway/test_profiles_data.py does that).
"""

from mpytest import raises

from pilecore import profile


def good_3p():
    """A complete, valid three-phase profile; every call returns a fresh copy."""
    return {
        "id": "acme-m3",
        "kind": "meter",
        "maker": "Acme",
        "model": "M3",
        "phases": 3,
        "source": "Acme M3 Modbus manual v1, table 4",
        "function": 4,
        "byte_order": "big",
        "word_order": "big",
        "max_block": 40,
        "min_gap_ms": 20,
        "response_ms": 60,
        "timeout_ms": 500,
        "quirks": ["none known"],
        "serial": {"baud": 9600, "parity": "N", "stopbits": 1},
        "values": {
            "energy_import": {
                "register": 0x0048,
                "type": "f32",
                "scale": 1.0,
                "unit": "kWh",
                "min": 0.0,
                "max": 9999999.0,
            },
            "power": {"register": 0x0034, "type": "f32", "scale": 1.0, "unit": "W", "min": -100000.0, "max": 100000.0},
            "voltage": {
                "register": [0x0000, 0x0002, 0x0004],
                "type": "f32",
                "scale": 1.0,
                "unit": "V",
                "min": 0.0,
                "max": 300.0,
            },
            "current": {
                "register": [0x0006, 0x0008, 0x000A],
                "type": "f32",
                "scale": 1.0,
                "unit": "A",
                "min": 0.0,
                "max": 100.0,
            },
            "frequency": {"register": 0x0046, "type": "f32", "scale": 1.0, "unit": "Hz", "min": 45.0, "max": 65.0},
            "power_factor": {"register": 0x003E, "type": "f32", "scale": 1.0, "unit": "", "min": -1.0, "max": 1.0},
        },
        "identity": {
            "kind": "serial",
            "register": 0xFC00,
            "type": "u32",
            "count": 2,
            "function": 3,
            "note": "factory serial number",
        },
    }


def good_1p():
    """A minimal valid single-phase profile: only the required values, address identity."""
    return {
        "id": "acme-m1",
        "kind": "meter",
        "maker": "Acme",
        "model": "M1",
        "phases": 1,
        "source": "Acme M1 manual",
        "function": 3,
        "byte_order": "big",
        "word_order": "little",
        "max_block": 4,
        "min_gap_ms": 0,
        "response_ms": 50,
        "timeout_ms": 400,
        "serial": {"baud": 2400, "parity": "E", "stopbits": 2},
        "values": {
            "energy_import": {
                "register": 0x5000,
                "type": "u64",
                "scale": 0.01,
                "unit": "kWh",
                "min": 0,
                "max": 10000000,
            },
            "power": {
                "register": 0x5B14,
                "type": "s32",
                "scale": 0.01,
                "unit": "W",
                "min": -20000,
                "max": 20000,
                "function": 3,
            },
        },
        "identity": {"kind": "address", "note": "bus address only"},
    }


def keys(errors):
    return [k for k, _ in errors]


def check_bad(mutate, expected_key, name="acme-m3", base=good_3p):
    """Apply `mutate` to a fresh valid profile; the validator must name `expected_key`."""
    p = base()
    mutate(p)
    errors = profile.validate_profile(p, name)
    assert expected_key in keys(errors), (expected_key, errors)
    for key, message in errors:
        assert isinstance(key, str) and isinstance(message, str) and message
    return errors


# ---- good profiles -------------------------------------------------------------------------


def test_valid_profiles_have_no_errors():
    assert profile.validate_profile(good_3p(), "acme-m3") == []
    assert profile.validate_profile(good_1p(), "acme-m1") == []


def test_optional_values_may_be_left_out():
    p = good_3p()
    for name in ("voltage", "current", "frequency", "power_factor"):
        del p["values"][name]
    del p["quirks"]
    assert profile.validate_profile(p, "acme-m3") == []


def test_integer_identity_count_may_be_omitted():
    p = good_3p()
    del p["identity"]["count"]
    del p["identity"]["function"]
    assert profile.validate_profile(p, "acme-m3") == []


def test_ascii_and_bcd_identities_take_a_count():
    for itype in ("ascii", "bcd"):
        p = good_3p()
        p["identity"]["type"] = itype
        p["identity"]["count"] = 8
        assert profile.validate_profile(p, "acme-m3") == []


# ---- top level -----------------------------------------------------------------------------


def test_not_a_table():
    errors = profile.validate_profile([1, 2], "x")
    assert len(errors) == 1 and errors[0][0] == ""


def test_id_must_match_file_name():
    errors = profile.validate_profile(good_3p(), "acme-m4")
    assert keys(errors) == ["id"]


def test_kind_must_be_meter():
    check_bad(lambda p: p.update(kind="bay-sensor"), "kind")


def test_unknown_top_level_key():
    check_bad(lambda p: p.update(baudrate=9600), "baudrate")


def test_text_fields_must_be_non_empty():
    check_bad(lambda p: p.update(source="  "), "source")
    check_bad(lambda p: p.update(maker=7), "maker")
    check_bad(lambda p: p.pop("model"), "model")


def test_phases_must_be_1_or_3():
    check_bad(lambda p: p.update(phases=2), "phases")
    check_bad(lambda p: p.update(phases=True), "phases")
    check_bad(lambda p: p.update(phases="3"), "phases")


def test_function_must_be_3_or_4():
    check_bad(lambda p: p.update(function=6), "function")
    check_bad(lambda p: p.pop("function"), "function")


def test_orders():
    check_bad(lambda p: p.update(byte_order="middle"), "byte_order")
    check_bad(lambda p: p.update(word_order="BIG"), "word_order")


def test_max_block_range():
    check_bad(lambda p: p.update(max_block=0), "max_block")
    check_bad(lambda p: p.update(max_block=126), "max_block")
    check_bad(lambda p: p.update(max_block=40.0), "max_block")
    p = good_3p()
    p["max_block"] = 125
    assert profile.validate_profile(p, "acme-m3") == []


def test_timing_ranges():
    check_bad(lambda p: p.update(min_gap_ms=-1), "min_gap_ms")
    check_bad(lambda p: p.update(response_ms=0), "response_ms")
    check_bad(lambda p: p.update(timeout_ms=5), "timeout_ms")
    check_bad(lambda p: p.update(timeout_ms=20000), "timeout_ms")
    check_bad(lambda p: p.update(timeout_ms=0.5), "timeout_ms")


def test_timeout_must_exceed_response():
    errors = check_bad(lambda p: p.update(response_ms=500, timeout_ms=500), "timeout_ms")
    assert "response_ms" in errors[0][1]


def test_quirks_must_be_strings():
    check_bad(lambda p: p.update(quirks="one"), "quirks")
    check_bad(lambda p: p.update(quirks=["ok", ""]), "quirks[1]")


def test_serial_settings():
    check_bad(lambda p: p.pop("serial"), "serial")
    check_bad(lambda p: p["serial"].update(baud=9601), "serial.baud")
    check_bad(lambda p: p["serial"].update(parity="X"), "serial.parity")
    check_bad(lambda p: p["serial"].update(stopbits=0), "serial.stopbits")
    check_bad(lambda p: p["serial"].update(databits=8), "serial.databits")


# ---- values --------------------------------------------------------------------------------


def test_required_values():
    check_bad(lambda p: p["values"].pop("energy_import"), "values.energy_import")
    check_bad(lambda p: p["values"].pop("power"), "values.power")
    check_bad(lambda p: p.pop("values"), "values")


def test_unknown_value_name_and_key():
    check_bad(lambda p: p["values"].update(energy_export=p["values"]["energy_import"]), "values.energy_export")
    check_bad(lambda p: p["values"]["power"].update(offset=3), "values.power.offset")


def test_register_bounds():
    check_bad(lambda p: p["values"]["power"].update(register=-1), "values.power.register")
    check_bad(lambda p: p["values"]["power"].update(register=0x10000), "values.power.register")
    check_bad(lambda p: p["values"]["power"].update(register="0x34"), "values.power.register")
    check_bad(lambda p: p["values"]["power"].update(register=True), "values.power.register")
    # a two-register value may not start at the very last address
    check_bad(lambda p: p["values"]["power"].update(register=0xFFFF), "values.power.register")
    p = good_3p()
    p["values"]["power"]["register"] = 0xFFFE
    assert profile.validate_profile(p, "acme-m3") == []


def test_per_phase_register_lists():
    check_bad(lambda p: p["values"]["voltage"].update(register=0x0000), "values.voltage.register")
    check_bad(lambda p: p["values"]["current"].update(register=[0x0006, 0x0008]), "values.current.register")
    check_bad(lambda p: p["values"]["current"].update(register=[0x0006, 0x0008, 70000]), "values.current.register[2]")
    check_bad(lambda p: p["values"]["voltage"].update(register=[0x0000]), "values.voltage.register")


def test_single_phase_lists_one_register():
    p = good_1p()
    p["values"]["voltage"] = {"register": [0x5B00], "type": "u32", "scale": 0.1, "unit": "V", "min": 0.0, "max": 300.0}
    assert profile.validate_profile(p, "acme-m1") == []
    p["values"]["voltage"]["register"] = [0x5B00, 0x5B02, 0x5B04]
    assert "values.voltage.register" in keys(profile.validate_profile(p, "acme-m1"))


def test_totals_take_a_single_register():
    check_bad(lambda p: p["values"]["power"].update(register=[0x0034]), "values.power.register")


def test_value_type_known_and_fits_max_block():
    check_bad(lambda p: p["values"]["power"].update(type="f64"), "values.power.type")
    check_bad(lambda p: p["values"]["power"].update(type=None), "values.power.type")
    p = good_1p()
    p["max_block"] = 2  # the u64 energy (4 registers) can no longer be read in one request
    assert "values.energy_import.type" in keys(profile.validate_profile(p, "acme-m1"))


def test_scale_must_be_finite_and_non_zero():
    check_bad(lambda p: p["values"]["power"].update(scale=0), "values.power.scale")
    check_bad(lambda p: p["values"]["power"].update(scale="1"), "values.power.scale")
    check_bad(lambda p: p["values"]["power"].update(scale=float("inf")), "values.power.scale")
    check_bad(lambda p: p["values"]["power"].update(scale=float("nan")), "values.power.scale")
    p = good_3p()
    p["values"]["power"]["scale"] = -0.1  # a meter counting export as positive
    assert profile.validate_profile(p, "acme-m3") == []


def test_unit_must_be_canonical():
    check_bad(lambda p: p["values"]["power"].update(unit="kW"), "values.power.unit")
    check_bad(lambda p: p["values"]["energy_import"].update(unit="Wh"), "values.energy_import.unit")
    check_bad(lambda p: p["values"]["power_factor"].update(unit="%"), "values.power_factor.unit")
    check_bad(lambda p: p["values"]["frequency"].pop("unit"), "values.frequency.unit")


def test_range_min_below_max():
    check_bad(lambda p: p["values"]["voltage"].update(min=300.0), "values.voltage.max")
    check_bad(lambda p: p["values"]["voltage"].update(max="300"), "values.voltage.max")
    check_bad(lambda p: p["values"]["voltage"].pop("min"), "values.voltage.min")


def test_range_physics():
    check_bad(lambda p: p["values"]["energy_import"].update(min=-1.0), "values.energy_import.min")
    check_bad(lambda p: p["values"]["power_factor"].update(max=1.5), "values.power_factor.max")
    check_bad(lambda p: p["values"]["power_factor"].update(min=-2.0), "values.power_factor.min")


def test_value_function_override():
    check_bad(lambda p: p["values"]["power"].update(function=5), "values.power.function")
    p = good_3p()
    p["values"]["power"]["function"] = 3
    assert profile.validate_profile(p, "acme-m3") == []


def test_overlapping_values_are_rejected():
    errors = check_bad(lambda p: p["values"]["power"].update(register=0x0047), "values.power.register")
    assert "overlap" in errors[0][1]
    # the same addresses in the other function space do not collide
    p = good_3p()
    p["values"]["power"]["register"] = 0x0048
    p["values"]["power"]["function"] = 3
    assert profile.validate_profile(p, "acme-m3") == []


def test_per_phase_registers_may_not_overlap_each_other():
    check_bad(lambda p: p["values"]["voltage"].update(register=[0x0000, 0x0001, 0x0004]), "values.voltage.register[1]")


# ---- identity ------------------------------------------------------------------------------


def test_identity_required():
    check_bad(lambda p: p.pop("identity"), "identity")


def test_identity_kind():
    check_bad(lambda p: p["identity"].update(kind="qr"), "identity.kind")


def test_identity_note_required():
    check_bad(lambda p: p["identity"].pop("note"), "identity.note")
    check_bad(lambda p: p["identity"].pop("note"), "identity.note", name="acme-m1", base=good_1p)


def test_address_identity_has_no_register():
    check_bad(lambda p: p["identity"].update(register=0x0006), "identity.register", name="acme-m1", base=good_1p)
    check_bad(lambda p: p["identity"].update(type="u16"), "identity.type", name="acme-m1", base=good_1p)


def test_serial_identity_fields():
    check_bad(lambda p: p["identity"].pop("register"), "identity.register")
    check_bad(lambda p: p["identity"].update(register=0x1FFFF), "identity.register")
    check_bad(lambda p: p["identity"].update(type="f32"), "identity.type")
    check_bad(lambda p: p["identity"].update(count=1), "identity.count")
    check_bad(lambda p: p["identity"].update(function=16), "identity.function")
    check_bad(lambda p: p["identity"].update(serial=True), "identity.serial")


def test_blob_identity_needs_count_within_max_block():
    def ascii_without_count(p):
        p["identity"]["type"] = "ascii"
        del p["identity"]["count"]

    check_bad(ascii_without_count, "identity.count")

    def ascii_too_long(p):
        p["identity"]["type"] = "ascii"
        p["identity"]["count"] = 41

    check_bad(ascii_too_long, "identity.count")


def test_identity_may_not_overlap_a_value():
    def collide(p):
        p["identity"]["register"] = 0x0049
        p["identity"]["function"] = 4

    check_bad(collide, "identity.register")


def test_all_errors_reported_at_once():
    p = good_3p()
    p["phases"] = 2
    p["values"]["power"]["unit"] = "kW"
    p["serial"]["parity"] = "Z"
    found = keys(profile.validate_profile(p, "acme-m3"))
    for key in ("phases", "values.power.unit", "serial.parity"):
        assert key in found


# ---- helpers -------------------------------------------------------------------------------


def test_value_names_fixed_order():
    assert tuple(profile.value_names()) == ("energy_import", "power", "voltage", "current", "frequency", "power_factor")


def test_canonical_units_and_per_phase():
    assert profile.canonical_unit("energy_import") == "kWh"
    assert profile.canonical_unit("power_factor") == ""
    assert profile.is_per_phase("voltage") and profile.is_per_phase("current")
    assert not profile.is_per_phase("power")
    with raises(KeyError):
        profile.canonical_unit("temperature")


def test_type_width():
    expected = {"u16": 1, "s16": 1, "u32": 2, "s32": 2, "f32": 2, "u64": 4, "s64": 4}
    for vtype, width in expected.items():
        assert profile.type_width(vtype) == width
    for bad in ("f64", "ascii", "", None, ["u16"]):
        with raises(ValueError):
            profile.type_width(bad)


def test_value_registers_per_phase_and_total():
    p = good_3p()
    assert profile.value_registers(p, "voltage") == [(4, 0x0000, "f32"), (4, 0x0002, "f32"), (4, 0x0004, "f32")]
    assert profile.value_registers(p, "energy_import") == [(4, 0x0048, "f32")]


def test_value_registers_function_override_and_absent_value():
    p = good_1p()
    assert profile.value_registers(p, "power") == [(3, 0x5B14, "s32")]
    p["function"] = 4
    assert profile.value_registers(p, "power") == [(3, 0x5B14, "s32")]  # explicit override
    assert profile.value_registers(p, "energy_import") == [(4, 0x5000, "u64")]
    assert profile.value_registers(p, "frequency") == []
    with raises(KeyError):
        profile.value_registers(p, "temperature")


def test_recognize_recipe_is_checked():
    p = good_3p()
    p["recognize"] = {
        "checks": [
            {"value": "voltage", "min": 90.0, "max": 290.0},
            {"value": "voltage", "phase": 2, "min": 90.0},
            {"register": 0xFC02, "function": 3, "type": "u16", "equals": 0x70, "what": "meter code"},
        ],
        "note": "three phase voltages and a model code",
    }
    assert profile.validate_profile(p, "acme-m3") == []
    p["recognize"] = {
        "checks": [
            {"value": "pressure", "min": 1.0},
            {"value": "voltage"},
            {"value": "voltage", "phase": 4, "max": 1.0},
            {"register": 0x10, "type": "u16"},
            {"register": 0x10, "type": "q8", "equals": 1, "what": "x"},
            {"value": "frequency", "min": 45.0, "colour": "red"},
        ],
        "note": "",
    }
    got = keys(profile.validate_profile(p, "acme-m3"))
    for k in (
        "recognize.note",
        "recognize.checks[0].value",
        "recognize.checks[1]",
        "recognize.checks[2].phase",
        "recognize.checks[3]",
        "recognize.checks[3].what",
        "recognize.checks[4].type",
        "recognize.checks[5].colour",
    ):
        assert k in got, (k, got)
    p["recognize"] = {"checks": [], "note": "x"}
    assert "recognize.checks" in keys(profile.validate_profile(p, "acme-m3"))


def _energy(**spec):
    base = {"scale": 1.0, "unit": "kWh"}
    for k in spec:
        base[k] = spec[k]
    return {"values": {"energy_import": base}}


def test_energy_step_is_derived_from_what_the_register_delivers():
    # issue 9 defect #8: the billing resolution comes from the profile data, for every profile
    assert profile.energy_step_wh(_energy(type="f32")) == 1  # a float: as fine as Wh decoding
    assert profile.energy_step_wh(_energy(type="f32", decimals=2)) == 10  # the maker says 0.01 kWh
    assert profile.energy_step_wh(_energy(type="u32", scale=0.01)) == 10
    assert profile.energy_step_wh(_energy(type="u32", scale=0.1)) == 100
    assert profile.energy_step_wh(_energy(type="u64", scale=0.001)) == 1
    assert profile.energy_step_wh(_energy(type="u32", scale=1.0)) == 1000
    assert profile.energy_step_wh(_energy(type="u32", scale=0.01), ratio=40) == 400
    dlt = _energy(di=0x00010000, bytes=4, decimals=2)
    dlt["protocol"] = "dlt645"
    assert profile.energy_step_wh(dlt) == 10


def test_decimals_only_for_a_float_energy():
    errs = []
    profile._check_value("energy_import", {"type": "u32", "decimals": 2}, "values.energy_import", 1, 125, errs)
    assert ("values.energy_import.decimals", "only for an f32 value (an integer's step is its scale)") in errs
    errs = []
    profile._check_value("energy_import", {"type": "f32", "decimals": 9}, "values.energy_import", 1, 125, errs)
    assert any(e[0] == "values.energy_import.decimals" for e in errs)
