"""Site configuration rules, on both interpreters (inline data: no TOML on MicroPython)."""

from pilecore import config

BOARD = {
    "id": "b1",
    "name": "test board",
    "platform": "rpi",
    "flash_mb": 16384,
    "uart": [
        {"name": "usb0", "role": "rs485", "device": "/dev/ttyUSB0", "de_mode": "auto"},
        {"name": "serial0", "role": "console", "device": "/dev/serial0"},
    ],
    "relay": [{"name": "K1", "pin": 5}],
}
ESP_BOARD = {
    "id": "e1",
    "name": "esp",
    "platform": "esp32",
    "flash_mb": 4,
    "heap_kb": 110,
    "firmware_offset": 4096,
    "uart": [
        {"name": "uart2", "role": "rs485", "tx": 17, "rx": 16, "de": 4},
        {"name": "uart0", "role": "console", "tx": 1, "rx": 3},
    ],
}
PROFILES = {"m1": {"id": "m1"}, "m3": {"id": "m3"}}


def boards():
    b, p = config.validate_board(BOARD, "b1")
    assert p == [], p
    e, p = config.validate_board(ESP_BOARD, "e1")
    assert p == [], p
    return {"b1": b, "e1": e}


def site(**over):
    cfg = {
        "gateway": {"id": "GW-1", "site": "s1", "board": "b1"},
        "mqtt": {"url": "mqtts://broker.example:8883"},
        "bus": [{"name": "bus1", "port": "/dev/ttyUSB0"}],
        "pile": [
            {"id": "P01", "meter": {"bus": "bus1", "address": 1, "profile": "m1"}},
            {"id": "P02", "meter": {"bus": "bus1", "address": 2, "profile": "m3"}},
        ],
        "bay": [{"id": "B01", "pile": "P01"}],
    }
    for k in over:
        cfg[k] = over[k]
    return cfg


def check(cfg):
    compiled, problems = config.validate_site(cfg, boards(), PROFILES)
    return compiled, dict(problems), problems


def test_valid_site_compiles_with_defaults_and_embedded_data():
    compiled, d, problems = check(site())
    assert problems == []
    assert compiled["bus"][0]["baud"] == 9600 and compiled["bus"][0]["parity"] == "N"
    assert compiled["pile"][0]["interlock"] == "report"
    assert compiled["pile"][0]["meter"]["serial"] == ""
    assert compiled["mqtt"]["tls_verify"] is True and compiled["mqtt"]["allow_insecure"] is False
    assert compiled["board_def"]["id"] == "b1"
    assert sorted(compiled["profiles"]) == ["m1", "m3"]
    assert compiled["version"] == config.COMPILED_VERSION


def test_an_esp32_site_embeds_profiles_and_board_without_their_text():
    # the ESP32 loads the compiled JSON into its heap: documentation text is left out there
    documented = {
        "m1": {
            "id": "m1",
            "maker": "M",
            "source": "datasheet",
            "quirks": ["q"],
            "note": "n",
            "identity": {"kind": "serial", "note": "x"},
        },
        "m3": {"id": "m3", "source": "datasheet", "products": ["a"], "confidence": "tested"},
    }
    esp = site(gateway={"id": "GW-1", "site": "s1", "board": "e1"}, bus=[{"name": "bus1", "port": "uart2"}])
    b = boards()
    b["e1"] = dict(b["e1"], notes="wiring notes", heap_source="where the figure comes from")
    compiled, problems = config.validate_site(esp, b, documented)
    assert problems == [], problems
    assert compiled["profiles"]["m1"] == {"id": "m1", "maker": "M", "identity": {"kind": "serial"}}
    assert compiled["profiles"]["m3"] == {"id": "m3"}
    assert "notes" not in compiled["board_def"] and compiled["board_def"]["heap_kb"] == 110
    assert "heap_source" not in compiled["board_def"]
    assert documented["m1"]["quirks"] == ["q"]  # the loaded profiles are not changed
    pi, problems = config.validate_site(site(), b, documented)
    assert problems == [] and pi["profiles"]["m1"]["source"] == "datasheet"  # the Pi keeps it


def test_two_piles_on_one_meter_address():
    cfg = site()
    cfg["pile"][1]["meter"]["address"] = 1
    _, d, _ = check(cfg)
    msg = d["pile[P02].meter.address"]
    assert "already the meter of pile[P01]" in msg and "一桩一表" in msg


def test_two_piles_bound_to_one_serial():
    cfg = site()
    cfg["pile"][0]["meter"]["serial"] = "A123"
    cfg["pile"][1]["meter"]["serial"] = "A123"
    _, d, _ = check(cfg)
    assert "already bound to pile[P01]" in d["pile[P02].meter.serial"]


def test_pile_without_meter():
    cfg = site()
    del cfg["pile"][1]["meter"]
    _, d, _ = check(cfg)
    assert d["pile[P02].meter"].startswith("missing")


def test_bay_naming_missing_pile():
    _, d, _ = check(site(bay=[{"id": "B09", "pile": "P09"}]))
    assert "P09" in d["bay[B09].pile"] and "not defined" in d["bay[B09].pile"]


def test_unknown_profile_bus_and_board():
    cfg = site()
    cfg["pile"][0]["meter"]["profile"] = "nosuch"
    cfg["pile"][1]["meter"]["bus"] = "bus9"
    cfg["gateway"]["board"] = "zz"
    _, d, problems = check(cfg)
    assert "unknown meter profile 'nosuch'" in d["pile[P01].meter.profile"]
    assert "m1, m3" in d["pile[P01].meter.profile"]
    assert "unknown bus 'bus9'" in d["pile[P02].meter.bus"]
    assert "unknown board 'zz'" in d["gateway.board"]


def test_every_problem_is_listed_not_only_the_first():
    cfg = site()
    cfg["pile"][0]["meter"]["address"] = 300
    cfg["bus"][0]["baud"] = 9601
    cfg["bus"][0]["parity"] = "X"
    cfg["gateway"]["id"] = "bad/id"
    cfg["pile"][1]["id"] = "P01"
    _, d, problems = check(cfg)
    assert "out of range" in d["pile[P01].meter.address"]
    assert "9601 is not allowed" in d["bus[bus1].baud"]
    assert '"X" is not allowed' in d["bus[bus1].parity"]
    assert "'/'" in d["gateway.id"]
    assert any(k.endswith(".id") and "duplicate pile id" in m for k, m in problems)
    assert len(problems) >= 5


def test_unknown_key_suggests_the_right_one():
    cfg = site()
    cfg["pile"][0]["meter"]["adress"] = 3
    _, d, _ = check(cfg)
    assert "did you mean 'address'" in d["pile[P01].meter.adress"]


def test_types_are_checked():
    cfg = site()
    cfg["pile"][0]["meter"]["address"] = "1"
    cfg["bus"][0]["timeout_ms"] = True
    _, d, _ = check(cfg)
    assert "whole number" in d["pile[P01].meter.address"]
    assert "whole number" in d["bus[bus1].timeout_ms"]


def test_items_without_id_are_named_by_position():
    cfg = site()
    cfg["pile"].append({"meter": {"bus": "bus1", "address": 9, "profile": "m1"}})
    _, d, _ = check(cfg)
    assert "pile[#3].id" in d


def test_plain_mqtt_needs_allow_insecure():
    _, d, _ = check(site(mqtt={"url": "mqtt://broker:1883"}))
    assert "allow_insecure" in d["mqtt.url"]
    _, d, problems = check(site(mqtt={"url": "mqtt://broker:1883", "allow_insecure": True}))
    assert problems == []
    _, d, _ = check(site(mqtt={"url": "mqtts://b:8883", "tls_verify": False}))
    assert "mqtt.tls_verify" in d


def test_tcp_ports_and_console_uart():
    _, d, problems = check(site(bus=[{"name": "bus1", "port": "rtu+tcp://10.0.0.5:4196"}]))
    assert problems == []
    _, d, _ = check(site(bus=[{"name": "bus1", "port": "tcp://10.0.0.5"}]))
    assert "host and a port" in d["bus[bus1].port"]
    _, d, _ = check(site(bus=[{"name": "bus1", "port": "serial0"}]))
    assert "console" in d["bus[bus1].port"]


def test_esp32_bus_must_be_an_rs485_uart():
    gw = {"id": "GW-1", "site": "s1", "board": "e1"}
    _, d, problems = check(site(gateway=gw, bus=[{"name": "bus1", "port": "uart2"}]))
    assert problems == []
    _, d, _ = check(site(gateway=gw, bus=[{"name": "bus1", "port": "/dev/ttyUSB0"}]))
    assert "uart2" in d["bus[bus1].port"]


def test_relay_interlock_needs_an_output():
    cfg = site()
    cfg["pile"][0]["interlock"] = "relay"
    _, d, _ = check(cfg)
    assert "neither" in d["pile[P01].interlock"]
    cfg["pile"][0]["relay"] = "K9"
    _, d, _ = check(cfg)
    assert "no relay output 'K9'" in d["pile[P01].relay"]
    cfg["pile"][0]["relay"] = "K1"
    _, d, problems = check(cfg)
    assert problems == []


def test_main_meter_must_be_separate():
    mm = {"bus": "bus1", "address": 2, "profile": "m3"}
    _, d, _ = check(site(main_meter=mm))
    assert "separate meter" in d["main_meter.address"]


def test_board_validation():
    bad = dict(ESP_BOARD)
    bad["uart"] = [{"name": "uart2", "role": "rs485", "tx": 17, "rx": 16}]
    del bad["firmware_offset"]
    del bad["heap_kb"]
    _, problems = config.validate_board(bad, "other")
    d = dict(problems)
    assert "must match" in d["id"]
    assert "firmware_offset" in d
    assert "heap for Python" in d["heap_kb"]  # the RAM budget needs it (docs/esp32.md)
    assert "DE/RE" in d["uart[uart2].de"]


def test_parameter_rules_between_keys():
    _, d, _ = check(
        site(
            bays={"occupied_below_mm": 2000, "vacant_above_mm": 1000},
            sessions={"start_power_w": 100, "stop_power_w": 500},
        )
    )
    assert any(k.startswith("bays.") for k in d), d
    assert any(k.startswith("sessions.") for k in d), d


def test_bad_tariff_is_reported_under_tariff():
    _, d, _ = check(site(tariff={"id": "t", "version": 1, "currency": "CNY", "free_min": -5}))
    assert any(k.startswith("tariff") for k in d), d


def test_nan_is_refused_wherever_a_number_is_read():
    # NaN compares false with both bounds, so a range check alone let it through (issue 9 #5).
    nan = float("nan")
    _, d, _ = check(site(metering={"idle_power_w": nan}))
    assert "nan is not a number" in d["metering.idle_power_w"], d
    cfg = site(main_meter={"bus": "bus1", "address": 9, "profile": "m1", "tolerance_pct": nan})
    _, d, _ = check(cfg)
    assert "nan is not a number" in d["main_meter.tolerance_pct"], d
    _, d, _ = check(site(metering={"idle_power_w": float("inf")}))
    assert "out of range" in d["metering.idle_power_w"], d


def test_mqtt_prefix_must_be_a_topic_without_wildcards_or_empty_levels():
    for bad, why in (
        ("pilegate/#", "wildcard"),
        ("pilegate/+/v1", "wildcard"),
        ("", "empty"),
        ("pile\x00gate", "control character"),
        ("pilegate//v1", "empty level"),
        ("/pilegate", "empty level"),
        ("pilegate/v1/", "empty level"),
    ):
        _, d, _ = check(site(mqtt={"url": "mqtts://b.example", "prefix": bad}))
        assert why in d.get("mqtt.prefix", ""), (bad, d)
    compiled, d, _ = check(site(mqtt={"url": "mqtts://b.example", "prefix": "city/pilegate/v1"}))
    assert d == {} and compiled["mqtt"]["prefix"] == "city/pilegate/v1"


def test_plate_topic_may_be_a_filter_but_a_well_formed_one():
    compiled, d, _ = check(site(bays={"plate_topic": "local/+/plates"}))
    assert d == {}, d
    for bad in ("local/pl+tes", "local/#/x", "local//x", ""):
        _, d, _ = check(site(bays={"plate_topic": bad}))
        assert "bays.plate_topic" in d, (bad, d)


def test_the_plate_broker_is_a_plain_mqtt_url_on_both_ports():
    compiled, d, _ = check(site(bays={"plate_broker": "mqtt://192.168.1.5:1883"}))
    assert d == {}, d
    for bad, why in (("mqtts://192.168.1.5:8883", "mqtts:// is not supported"), ("http://192.168.1.5", "mqtt://")):
        _, d, _ = check(site(bays={"plate_broker": bad}))
        assert why in d.get("bays.plate_broker", ""), (bad, d)


def test_topic_problem_names_the_rule():
    assert config.topic_problem("a/b") == ""
    assert "wildcard" in config.topic_problem("a/#")
    assert config.topic_problem("a/#", filter_ok=True) == ""
    assert "at most" in config.topic_problem("x" * 300)


def test_a_sensor_without_its_type_is_a_problem_not_a_crash():
    # Found by tests/fuzz/test_fuzz_config.py: the cross checks read sensor["type"].
    cfg = site()
    cfg["bay"] = [{"id": "B01", "pile": "P01", "presence": [{}]}]
    compiled, d, _ = check(cfg)
    assert compiled is None and "missing" in d["bay[B01].presence[#1].type"], d
