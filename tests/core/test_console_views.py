"""The console views (pilecore.console_views), on both interpreters: the field names of
docs/console.md, built once from the port-neutral interface over a real SiteCore and a real
bus scheduler; settings checked in the core; `log` only reads."""

from mpytest import new_key

from pilecore import console_text, console_views, ocmf
from pilecore.console import AuthState, Console
from pilecore.console_views import ViewBackend
from pilecore.scheduler import BusScheduler
from pilecore.site import SiteCore

D = new_key()
NOW = 1764155815


def cfg():
    return {
        "gateway": {"id": "LY-0001", "site": "luoyang-demo", "board": "esp32-devkitc-max3485"},
        "mqtt": {"url": "mqtts://broker.example:8883"},
        "pile": [
            {"id": "P01", "name": "east 1", "meter": {"bus": "rs485-1", "address": 1, "profile": "m", "serial": ""}},
            {
                "id": "P02",
                "name": "east 2",
                "interlock": "relay",
                "meter": {"bus": "rs485-1", "address": 2, "profile": "m", "serial": ""},
            },
        ],
        "profiles": {"m": {"id": "m", "values": {"energy_import": {"scale": 1.0}}}},
        "bay": [{"id": "B01", "pile": "P01"}],
    }


class Meter:
    """A port's meter record, as both ports keep one."""

    def __init__(self, bus, address):
        self.bus = bus
        self.address = address
        self.profile = {"id": "m"}
        self.identity = "DDSU-0001"
        self.reading = {"t": NOW - 15, "energy_wh": 123456, "power_w": 7012.5}
        self.error = None
        self.polls = 1200
        self.failures = 3


class Port(ViewBackend):
    """The port-neutral interface, as a port adapter provides it."""

    def __init__(self):
        self.cfg = cfg()
        self.core = SiteCore(self.cfg, ocmf.signer(D), "LY-0001", "0.1.0")
        self.sched = BusScheduler("rs485-1")
        self.sched.add_device("P01", 1, None, 5000)
        self.sched.add_device("P02", 2, None, 5000)
        self.meters = {"P01": Meter("rs485-1", 1), "P02": Meter("rs485-1", 2)}
        self.values = {"console.idle_logout_s": 600, "log.level": "info", "metering.poll_s": 5}
        self.values["telemetry.interval_s"] = 30
        self.applied = []
        self.audits = []
        self.driven = 0
        self.lines = [
            {"t": NOW - 3, "level": "debug", "msg": "tick"},
            {"t": NOW - 2, "level": "info", "msg": "started"},
            {"t": NOW - 1, "level": "error", "msg": "meter P02 silent"},
        ]

    def now(self):
        return NOW

    def port_status(self):
        return {
            "firmware": "0.1.0",
            "platform": "esp32",
            "uptime_s": 93784,
            "time_sync": "ntp",
            "mem_free": 81234,
            "mem_total": 111000,
            "kid": "5f3e9a",
            "config_hash": "ab12cd34",
            "epoch": 3,
            "seq": 42,
            "extra": "not shown",
        }

    def meter_state(self, pile):
        return self.meters.get(pile)

    def storage_status(self):
        return {"full": True, "since": NOW - 60, "reason": "disk full", "telemetry_not_stored": 2, "x": 1}

    def schedulers(self):
        return {"rs485-1": self.sched}

    def link_status(self):
        return {"connected": True, "connects": 2, "last_error": None, "last_publish_t": NOW - 5, "outbox": 12}

    def oldest_unsent(self):
        return None

    def log_lines(self):
        return self.lines

    def recent_events(self):
        return [{"t": NOW - i, "type": "meter.offline", "pile": "P02"} for i in range(5)]

    def setting_values(self):
        return dict(self.values)

    def apply_setting(self, key, value):
        self.applied.append((key, value))
        self.values[key] = value

    def interlocks_changed(self):
        self.driven += 1

    def audit(self, event):
        self.audits.append(event)


def test_status_has_exactly_the_documented_fields_with_int_times():
    st = Port().status()
    assert sorted(st) == sorted(console_views.STATUS_FIELDS)
    assert st["gateway"] == "LY-0001" and st["time"] == NOW and st["time_sync"] == "ntp"
    assert st["mem_free"] == 81234 and "extra" not in st
    assert st["storage"] == {
        "full": True,
        "since": NOW - 60,
        "reason": "disk full",
        "telemetry_not_stored": 2,
        "events_given_up": None,
        "keep_given_up": None,
    }
    out = Console(Port()).execute("status", NOW)
    assert "storage      FULL since 2025-11-26T11:15:55Z: disk full; 2 telemetry not stored\n" in out, out


def test_piles_have_a_state_column_and_the_meter_of_each_pile():
    p = Port()
    rows = p.piles()
    assert [r["id"] for r in rows] == ["P01", "P02"]
    for r in rows:
        assert sorted(r) == sorted(console_text.PILE_FIELDS)
        assert r["state"] in ("charging", "idle", "offline", "unknown")
    assert rows[0]["interlock"] == "report" and rows[1]["interlock"] == "auto (off)"
    assert rows[0]["bus"] == "rs485-1" and rows[1]["address"] == 2


def test_meter_view_and_an_unknown_pile():
    p = Port()
    m = p.meter("P01")
    assert sorted(m) == sorted(console_views.METER_FIELDS)
    assert m["t"] == NOW - 15 and m["values"] == {"energy_wh": 123456, "power_w": 7012.5}
    assert m["profile"] == "m" and m["stats"]["address"] == 1
    assert p.meter("P09") is None
    out = Console(p).execute("meter P09", NOW)
    assert out == "error: no pile 'P09' (piles: P01, P02)\n", out


def test_bays_mqtt_and_bus():
    p = Port()
    rows = p.bays()
    assert rows == [
        {
            "bay": "B01",
            "pile": "P01",
            "state": "unmonitored",
            "plugged": None,
            "charging": None,
            "arrival": None,
            "classification": None,
            "fee_fen": None,
        }
    ]
    assert p.bay("B01")["state"] == "unmonitored" and p.bay("B09") is None
    m = p.mqtt()
    assert sorted(m) == sorted(console_text.MQTT_FIELDS)
    assert m["broker"] == "mqtts://broker.example:8883" and m["seq"] == 42 and m["oldest_unsent_t"] is None
    assert p.bus()["rs485-1"]["devices"]["P02"]["address"] == 2


def test_text_output_shows_times_as_iso_utc():
    p = Port()
    p.core.reading(NOW - 15, "P01", {"t": NOW - 15, "energy_wh": 123456, "power_w": 7012.5})
    out = Console(p).execute("piles", NOW)
    assert "2025-11-26T11:16:40Z" in out and str(NOW - 15) not in out, out
    out = Console(Port()).execute("mqtt", NOW)
    assert "last_publish_t" in out and "2025-11-26T11:16:50Z" in out, out


def test_log_only_reads_and_filters_by_level():
    p = Port()
    c = Console(p)
    out = c.execute("log error", NOW)
    assert "meter P02 silent" in out and "started" not in out and "tick" not in out
    assert p.applied == [] and p.values["log.level"] == "info"
    out = c.execute("log warning --json", NOW)
    assert '"msg":"meter P02 silent"' in out and "started" not in out


def test_settings_are_checked_in_the_core_and_answered_once():
    p = Port()
    assert sorted(p.settings()) == sorted(console_views.SETTINGS)
    assert p.set_setting("telemetry.interval_s", "7") == (True, "applied")
    assert p.applied == [("telemetry.interval_s", 7)]
    ok, why = p.set_setting("telemetry.interval_s", "soon")
    assert not ok and "whole number from 1 to 3600" in why
    ok, why = p.set_setting("log.level", "loud")
    assert not ok and "debug, info, warning, error" in why
    ok, why = p.set_setting("mqtt.url", "x")
    assert not ok and "not a setting" in why
    assert p.set_setting("metering.poll_s", "9") == (True, "applied")
    p.set_meter_poll_s(9)
    assert p.sched.device("P01").poll_ms == 9000 and p.sched.device("P02").poll_ms == 9000


def test_interlock_override_goes_through_the_core_and_is_driven_at_once():
    p = Port()
    ok, msg = p.interlock("P02", "off")
    assert ok and p.core.guard.interlocks()["P02"] is False and p.driven == 1
    assert p.piles()[1]["interlock"] == "off"
    ok, msg = p.interlock("P01", "off")
    assert not ok and "report" in msg and p.driven == 1
    ok, msg = p.interlock("P09", "on")
    assert not ok and "P01, P02" in msg
    assert p.interlock("P02", "auto")[0] and "P02" not in p.core.guard.overrides


def test_idle_logout_setting_reaches_every_session_and_new_ones():
    from test_console import PIN, RECORD

    p = Port()
    auth = AuthState(RECORD)
    a = Console(p, auth=auth, idle_logout_s=600)
    b = Console(p, auth=auth, idle_logout_s=600)
    for c in (a, b):
        c.execute("login", NOW)
        c.execute(PIN, NOW)
    assert a.execute("set console.idle_logout_s 40", NOW) == "console.idle_logout_s = 40  (applied)\n"
    assert '"idle_logout_in_s":40' in b.execute("whoami --json", NOW)
    c = Console(p, auth=auth, idle_logout_s=600)  # a new session: the port passes the site value
    assert c.idle_logout_s == 40
    assert "console.idle_logout_s  40" in a.execute("set", NOW)
    assert b"idle for 40 s: logged out" in b.poll(NOW + 40)
