"""How the ESP32 application loads and checks its configuration (firmware/pilefw/app.py), on
both interpreters: the compiled JSON is validated again with its embedded board definition and
profiles, and every problem is reported with its key before anything touches the hardware.
Also the wall clock (pilefw.clock) and chain recovery from the outbox.
"""

import json

from mpytest import raises

from pilecore import config, envelope
from pilefw import app, clock, keystore

ESP_BOARD = {
    "id": "esp-test",
    "name": "esp",
    "platform": "esp32",
    "flash_mb": 4,
    "heap_kb": 110,
    "firmware_offset": 4096,
    "uart": [
        {"name": "uart2", "role": "rs485", "tx": 17, "rx": 16, "de": 4},
        {"name": "uart0", "role": "console", "tx": 1, "rx": 3},
    ],
    "relay": [{"name": "K1", "pin": 26}],
}
RPI_BOARD = {
    "id": "rpi-test",
    "name": "pi",
    "platform": "rpi",
    "flash_mb": 16384,
    "uart": [{"name": "usb0", "role": "rs485", "device": "/dev/ttyUSB0", "de_mode": "auto"}],
}
PROFILES = {"m1": {"id": "m1"}}
_n = [0]


def site(board="esp-test", port="uart2", relay=True):
    cfg = {
        "gateway": {"id": "GW-1", "site": "s1", "board": board},
        "mqtt": {"url": "mqtt://127.0.0.1:1883", "allow_insecure": True},
        "bus": [{"name": "bus1", "port": port}],
        "pile": [
            {"id": "P01", "meter": {"bus": "bus1", "address": 1, "profile": "m1"}, "interlock": "relay", "relay": "K1"},
            {"id": "P02", "meter": {"bus": "bus1", "address": 2, "profile": "m1"}},
        ],
    }
    if not relay:
        cfg["pile"][0]["interlock"] = "report"
        del cfg["pile"][0]["relay"]
    return cfg


def compiled(board=ESP_BOARD, **kw):
    """What `pilegate check --json` prints for the site."""
    out, problems = config.validate_site(site(board["id"], **kw), {board["id"]: board}, PROFILES)
    assert problems == [], problems
    return json.loads(json.dumps(out))


def test_a_compiled_site_validates_again_unchanged():
    cfg = compiled()
    again, problems = app.check_config(cfg)
    assert problems == []
    assert again["board_def"]["id"] == "esp-test" and again["pile"][0]["relay"] == "K1"
    assert again["bus"][0]["timeout_ms"] == cfg["bus"][0]["timeout_ms"]


def test_not_an_object_and_not_compiled():
    assert app.check_config([1, 2])[1][0][0] == "(file)"
    raw = site()  # the site file itself, not compiled
    _, problems = app.check_config(raw)
    keys = [k for k, _ in problems]
    assert "version" in keys and "board_def" in keys and "profiles" in keys


def test_every_site_problem_is_reported_with_its_key():
    cfg = compiled()
    cfg["pile"][1]["meter"]["address"] = 1  # two piles on one meter
    cfg["bus"][0]["port"] = "uart0"  # meters on the console UART
    cfg["pile"][0]["relay"] = "K9"  # a relay the board does not have
    _, problems = app.check_config(cfg)
    d = dict(problems)
    assert "pile[P02].meter.address" in d and "一桩一表" in d["pile[P02].meter.address"]
    assert "bus[bus1].port" in d and "console" in d["bus[bus1].port"]
    assert any(k.startswith("pile[P01].relay") for k in d)


def test_a_raspberry_pi_configuration_is_refused_on_the_esp32():
    cfg = compiled(RPI_BOARD, port="/dev/ttyUSB0", relay=False)
    _, problems = app.check_config(cfg)
    assert problems[0][0] == "gateway.board" and "ESP32" in problems[0][1]


def test_a_damaged_board_definition_is_reported():
    cfg = compiled()
    del cfg["board_def"]["uart"]
    _, problems = app.check_config(cfg)
    assert problems == [("board_def.uart", "missing: this key is required")]


def test_app_refuses_a_bad_configuration_before_touching_the_hardware():
    cfg = compiled()
    cfg["pile"][1]["meter"]["address"] = 1
    with raises(app.ConfigError, match="pile[P02].meter.address"):
        app.App(cfg, None)  # no hardware object at all: never reached


def tmpdir(tag):
    _n[0] += 1
    try:
        import tempfile

        return tempfile.mkdtemp(prefix="fwcfg-")
    except ImportError:
        path = "/tmp/fwcfg%d%s" % (_n[0], tag)
        keystore.makedirs(path)
        return path


def test_load_config_file_reports_missing_broken_and_returns_the_hash():
    d = tmpdir("c")
    with raises(app.ConfigError, match="cannot be read"):
        app.load_config_file(d + "/none.json")
    with open(d + "/bad.json", "w") as f:
        f.write("{not json")
    with raises(app.ConfigError, match="not valid JSON"):
        app.load_config_file(d + "/bad.json")
    from pilecore import jsonc

    text = jsonc.dumps(compiled())
    with open(d + "/config.json", "w") as f:
        f.write(text + "\n")
    cfg, digest = app.load_config_file(d + "/config.json")
    assert cfg["gateway"]["id"] == "GW-1"
    assert digest == envelope.sha256_hex(text.encode())  # the Pi's config_hash


def test_uart_ids_come_from_the_board_names():
    assert app.uart_id("uart2") == 2 and app.uart_id("uart0") == 0
    with raises(app.ConfigError):
        app.uart_id("serial")


def test_chain_recovery_from_the_newest_stored_message():
    class Box:
        def __init__(self, last):
            self._last = last

        def last(self):
            return self._last

    assert app.recover_chain(Box(None)) == (0, envelope.ZERO_HASH)
    jws = b"aGVhZA.cGF5bG9hZA.c2ln"
    assert app.recover_chain(Box((41, jws))) == (41, envelope.sha256_hex(b"aGVhZA.cGF5bG9hZA"))


def test_epoch_offset_and_tsync():
    assert clock.epoch_offset(lambda t: (2000, 1, 1, 0, 0, 0, 5, 1)) == 946684800
    assert clock.epoch_offset(lambda t: (1970, 1, 1, 0, 0, 0, 3, 1)) == 0
    t = [100]
    c = clock.WallClock(lambda: t[0], 946684800)
    assert c.now() == 946684900 and c.tsync == "none"
    assert c.set_platform(1764150000) == 1764150000 - 946684900 and c.tsync == "platform"
    t[0] = 110
    assert c.now() == 1764150010
    c.ntp_synced()
    assert c.tsync == "ntp" and c.now() == 946684910


def test_the_millisecond_count_does_not_wrap_with_the_ticks():
    period = 1 << 30  # the ESP32's ticks_ms() period

    def diff(a, b):  # MicroPython's ticks_diff
        return ((a - b + period // 2) & (period - 1)) - period // 2

    t = [period - 1500]
    ms = clock.MonotonicMs(lambda: t[0], diff)
    assert ms() == 0
    t[0] = period - 1  # just before the wrap
    assert ms() == 1499
    t[0] = 700  # after it
    assert ms() == 1499 + 1 + 700
    t[0] = 5000
    assert ms() == 2200 + 4300
