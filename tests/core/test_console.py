"""The console interpreter (pilecore.console) on both interpreters, against a fake backend.

FakeBackend is also imported by the Pi console tests (tests/gateway/test_console_*.py) and may be
reused by integration tests: every method returns plain data, records what was asked of it,
and can be told to raise (`fail`) or to answer mbread/scan at once (`sync`).
"""

import binascii
import json
import random

from pilecore import console, ecdsa, pinhash
from pilecore.console import Console

PIN = "246810"
RECORD = pinhash.make_record(PIN, b"fixed-test-salt!", 2)


def fresh_private_pem():
    """A P-256 private key made now (no key material lives in this file), as PEM: what a
    buggy port might hand the console by mistake."""
    seed = bytes([random.getrandbits(8) for _ in range(48)])
    body = binascii.b2a_base64(ecdsa.private_key_bytes(ecdsa.private_key_from_seed(seed))).decode().strip()
    label = "EC " + "PRIVATE KEY"
    return "-----BEGIN %s-----\n%s\n-----END %s-----\n" % (label, body, label), body


class FakeBackend:
    """A gateway with two piles, one bay, one bus; see the module docstring."""

    def __init__(self, sync=False):
        self.sync = sync
        self.fail = {}  # method name -> exception to raise
        self.audits = []
        self.requests = []  # Deferreds handed over by mbread/scan
        self.cancelled = []
        self.calls = []
        self.settable = {
            "telemetry.interval_s": 30,
            "metering.poll_s": 5,
            "mqtt.password": "hunter2",
            "log.level": "info",
        }
        self.private_pem = None  # (pem, base64 body) to hand out by mistake, or None

    def _call(self, name):
        self.calls.append(name)
        exc = self.fail.get(name)
        if exc is not None:
            raise exc

    def status(self):
        self._call("status")
        return {
            "gateway": "LY-0001",
            "site": "luoyang-demo",
            "firmware": "0.1.0",
            "platform": "esp32",
            "board": "esp32-devkitc-max3485",
            "uptime_s": 93784,
            "time": 1764155815,
            "time_sync": "ntp",
            "mem_free": 81234,
            "mem_total": 111000,
            "config_hash": "ab12cd34",
            "kid": "5f3e9a",
            "epoch": 3,
            "seq": 4711,
            "storage": {
                "full": False,
                "since": None,
                "reason": None,
                "telemetry_not_stored": 0,
                "events_given_up": 0,
                "keep_given_up": 0,
            },
        }

    def piles(self):
        self._call("piles")
        return [
            {
                "id": "P01",
                "name": "east 1",
                "state": "charging",
                "power_w": 7012.5,
                "energy_wh": 123456,
                "t": 1764155800,
                "bus": "rs485-1",
                "address": 1,
                "serial": "DDSU-0001",
                "metered": True,
                "interlock": "auto",
                "faults": [],
            },
            {
                "id": "P02",
                "name": "east 2",
                "state": "idle",
                "power_w": 0.0,
                "energy_wh": 98,
                "t": 1764155500,
                "bus": "rs485-1",
                "address": 2,
                "serial": "DDSU-0002",
                "metered": False,
                "interlock": "on",
                "faults": ["meter.offline"],
            },
        ]

    def meter(self, pile):
        self._call("meter")
        if pile != "P01":
            return None
        return {
            "pile": "P01",
            "profile": "chint-ddsu666",
            "bus": "rs485-1",
            "address": 1,
            "serial": "DDSU-0001",
            "values": {"voltage_v": 229.8, "power_w": 7012.5, "energy_wh": 123456},
            "stats": {"polls": 1200, "timeouts": 3, "crc_errors": 0},
            "t": 1764155800,
        }

    def bays(self):
        self._call("bays")
        return [
            {"bay": "B01", "pile": "P01", "state": "charging", "plugged": True, "charging": True, "arrival": 1764150000}
        ]

    def bay(self, bay_id):
        self._call("bay")
        return self.bays()[0] if bay_id == "B01" else None

    def events(self, n):
        self._call("events")
        evs = [
            {"t": 1764155000 + i, "type": "meter.offline" if i % 2 else "pile.metered", "pile": "P02"}
            for i in range(200)
        ]
        return evs[-n:]

    def mqtt(self):
        self._call("mqtt")
        return {
            "broker": "mqtts://broker.example:8883",
            "connected": True,
            "last_publish_t": 1764155810,
            "outbox": 12,
            "oldest_unsent_t": 1764155700,
            "password": "s3cret",
        }

    def bus(self):
        self._call("bus")
        return {
            "rs485-1": {
                "requests": 100,
                "replies": 97,
                "timeouts": 3,
                "crc_errors": 0,
                "exceptions": 0,
                "other_errors": 0,
                "busy_ms": 5120,
                "queued_jobs": 0,
                "devices": {"P01": {"address": 1, "requests": 50, "replies": 50, "timeouts": 0}},
            }
        }

    def log(self, level=None):
        self._call("log")
        lines = [
            {"t": 1764155000, "level": "info", "msg": "started"},
            {"t": 1764155001, "level": "warning", "msg": "meter P02 silent"},
        ]
        return [ln for ln in lines if level is None or ln["level"] == level]

    def selftest(self):
        self._call("selftest")
        return [("flash", True, "ok"), ("rs485-1", False, "no answer from address 2")]

    def keys(self):
        self._call("keys")
        if self.private_pem:
            return {"kid": "k", "pem": self.private_pem[0]}
        return {"kid": "5f3e9a", "pem": "-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----\n"}

    def settings(self):
        self._call("settings")
        return dict(self.settable)

    def set_setting(self, key, value):
        self._call("set_setting")
        if key == "telemetry.interval_s" and not value.isdigit():
            return False, "interval_s must be a whole number of seconds"
        self.settable[key] = value
        return True, "applied"

    def interlock(self, pile, mode):
        self._call("interlock")
        if pile not in ("P01", "P02"):
            return False, "no pile %s" % pile
        return True, "pile %s interlock %s" % (pile, mode)

    def reboot(self):
        self._call("reboot")

    def factory_reset(self):
        self._call("factory_reset")

    def audit(self, event):
        self._call("audit")
        self.audits.append(event)

    def mbread(self, d):
        self._call("mbread")
        self.requests.append(d)
        if self.sync:
            d.complete({"values": [0x1234, 0xFFFF][: d.request[5]]})

    def scan(self, d):
        self._call("scan")
        self.requests.append(d)

    def cancel(self, d):
        self.cancelled.append(d.token)


class ReplBackend(FakeBackend):
    def repl(self):
        self._call("repl")


def _con(backend=None, record=RECORD, **kw):
    return Console(backend or FakeBackend(), auth_record=record, **kw)


def _login(c, now=0):
    assert c.execute("login", now) == ""
    assert c.prompt() == "PIN: "
    out = c.execute(PIN, now)
    assert "logged in" in out, out
    assert c.prompt() == "pilegate# "


def _lines(text):
    return [ln for ln in text.split("\n") if ln]


# ---------------------------------------------------------------- help and read-only commands


def test_help_lists_every_command_and_marks_privileged_ones():
    c = _con()
    out = c.execute("help", 0)
    for name in console.command_names():
        assert name in out, name
    anyone, tech = out.split("Commands for a logged-in technician")
    assert "set [<key> <value>]" in tech and "factory-reset" in tech and "repl" in tech
    assert "mbread <bus>" in anyone and "interlock <pile>" not in anyone
    info = json.loads(c.execute("help --json", 0))
    names = [x["name"] for x in info["commands"]]
    assert sorted(names) == console.command_names()
    assert [x["privileged"] for x in info["commands"] if x["name"] == "reboot"] == [True]
    assert "who: logged-in technician" in c.execute("help set", 0)
    assert "who: anyone" in c.execute("help status", 0)
    assert json.loads(c.execute("help scan --json", 0))["usage"] == "scan <bus> [from-to]"
    assert c.execute("help nosuch", 0).startswith("error: no command 'nosuch'")


def test_status_text_is_aligned_and_json_is_one_object():
    c = _con()
    out = c.execute("status", 0)
    lines = _lines(out)
    assert lines[0].split() == ["gateway", "LY-0001"]
    col = lines[0].index("LY-0001")
    for ln in lines:
        assert ln[col - 2 : col] == "  " and ln[col] != " ", ln
    assert "uptime_s     1d 02:03:04" in out
    assert "2025-11-26T11:16:55Z" in out
    obj = json.loads(c.execute("status --json", 0))
    assert obj["gateway"] == "LY-0001" and obj["uptime_s"] == 93784
    assert c.execute("--json status", 0) == c.execute("status --json", 0)


def test_piles_table_columns_line_up():
    c = _con()
    lines = _lines(c.execute("piles", 0))
    assert lines[0].split()[:5] == ["id", "name", "state", "power_w", "energy_wh"]
    at = lines[0].index("state")
    assert lines[1][at : at + 8] == "charging" and lines[2][at : at + 4] == "idle"
    assert "7012.5" in lines[1] and "meter.offline" in lines[2]
    piles = json.loads(c.execute("piles --json", 0))["piles"]
    assert [p["id"] for p in piles] == ["P01", "P02"]


def test_meter_shows_values_and_statistics_or_names_the_piles():
    c = _con()
    out = c.execute("meter P01", 0)
    assert "values.voltage_v" in out and "229.8" in out and "stats.timeouts" in out
    assert json.loads(c.execute("meter P01 --json", 0))["stats"]["polls"] == 1200
    assert c.execute("meter P09", 0) == "error: no pile 'P09' (piles: P01, P02)\n"
    assert "usage: meter <pile>" in c.execute("meter", 0)
    assert json.loads(c.execute("meter P09 --json", 0))["error"].startswith("no pile")


def test_bays_and_bay():
    c = _con()
    assert "B01" in c.execute("bays", 0) and "charging" in c.execute("bays", 0)
    assert "2025-11-26T09:40:00Z" in c.execute("bay B01", 0)
    assert c.execute("bay B99", 0).startswith("error: no bay 'B99' (bays: B01)")
    assert json.loads(c.execute("bay B01 --json", 0))["pile"] == "P01"


def test_events_count_is_validated_and_bounded():
    b = FakeBackend()
    c = _con(b)
    assert len(_lines(c.execute("events", 0))) == 10
    assert len(_lines(c.execute("events 3", 0))) == 3
    assert len(json.loads(c.execute("events 100 --json", 0))["events"]) == 100
    for bad in ("events 0", "events 101", "events x", "events 1 2"):
        assert c.execute(bad, 0).startswith("error:"), bad
    assert "meter.offline" in c.execute("events 1", 0)


def test_mqtt_bus_log_selftest():
    c = _con()
    m = c.execute("mqtt", 0)
    assert "outbox" in m and "12" in m and "s3cret" not in m and "****" in m
    assert json.loads(c.execute("mqtt --json", 0))["password"] == "****"
    bus = c.execute("bus", 0)
    assert "rs485-1" in bus and "rs485-1 devices:" in bus and "P01" in bus
    assert json.loads(c.execute("bus --json", 0))["buses"]["rs485-1"]["timeouts"] == 3
    assert len(_lines(c.execute("log", 0))) == 2
    assert "meter P02 silent" in c.execute("log warning", 0)
    assert "started" not in c.execute("log warning", 0)
    assert c.execute("log loud", 0).startswith("error: level is one of")
    st = c.execute("selftest", 0)
    assert "PASS    flash    ok" in st and "FAIL    rs485-1  no answer" in st and "1 of 2 checks FAILED" in st
    obj = json.loads(c.execute("selftest --json", 0))
    assert obj["ok"] is False and obj["checks"][1]["detail"] == "no answer from address 2"


def test_keys_shows_public_key_only():
    b = FakeBackend()
    c = _con(b)
    out = c.execute("keys", 0)
    assert out.startswith("kid  5f3e9a\n-----BEGIN PUBLIC KEY-----")
    b.private_pem = fresh_private_pem()
    out = c.execute("keys", 0)
    assert "PRIVATE" not in out and "refused" in out
    assert b.private_pem[1] not in out and b.private_pem[1] not in c.execute("keys --json", 0)


def test_unknown_command_and_mistyped_pin_are_not_repeated():
    c = _con()
    assert c.execute("stats", 0) == "error: unknown command 'stats': type help\n"
    assert PIN not in c.execute(PIN, 0)
    assert json.loads(c.execute("nope --json", 0))["error"].startswith("unknown command")
    assert c.execute("", 0) == "" and c.execute("   ", 0) == ""
    assert c.execute("STATUS", 0) == c.execute("status", 0)


def test_backend_exception_becomes_one_error_line():
    b = FakeBackend()
    c = _con(b)
    b.fail["status"] = RuntimeError("flash read failed")
    assert c.execute("status", 0) == "error: status failed: flash read failed\n"
    assert json.loads(c.execute("status --json", 0)) == {"error": "status failed: flash read failed"}
    b.fail["piles"] = KeyError()
    assert c.execute("piles", 0).startswith("error: piles failed: KeyError")
    b.fail["audit"] = OSError("outbox full")
    _login(c)
    out = c.execute("reboot", 0)
    assert "warning: the audit event could not be recorded: outbox full" in out


def test_device_text_cannot_steer_the_terminal():
    b = FakeBackend()
    b.piles = lambda: [{"id": "P\x1b[2J01", "state": "ok\r\x07"}]
    c = _con(b)
    out = c.feed(b"piles\r", 0)
    assert b"\x1b" not in out and b"\x07" not in out
    assert b"P?[2J01" in out


# ---------------------------------------------------------------- line discipline


def test_crlf_counts_once_and_cr_or_lf_alone_end_a_line():
    b = FakeBackend()
    c = _con(b)
    c.feed(b"whoami\r\nwhoami\rwhoami\n\n", 0)
    assert b.calls == []  # whoami asks nothing of the backend
    out = c.feed(b"events 1\r\n", 0)
    assert out.count(b"pilegate> ") == 1
    out = c.feed(b"\r\n\r\n", 0)
    assert out == b"pilegate> pilegate> "


def test_byte_at_a_time_gives_the_same_output_as_one_chunk():
    a = _con()
    b = _con()
    data = b"statx\x7fus\r\nhelp bay\r\n\x1b[Apiles\r\n"
    whole = a.feed(data, 0)
    parts = b"".join([b.feed(data[i : i + 1], 0) for i in range(len(data))])
    assert whole == parts
    assert b"gateway" in whole and b"who: anyone" in whole and b"P01" in whole


def test_echo_backspace_and_utf8_editing():
    c = _con(echo=True)
    assert c.feed(b"stx", 0) == b"stx"
    assert c.feed(b"\x08", 0) == b"\x08 \x08"
    out = c.feed(b"atus\r", 0)
    assert out.startswith(b"atus\r\n") and b"LY-0001" in out and out.endswith(b"pilegate> ")
    # a multi-byte character is erased whole by one backspace
    c.feed("meter 东".encode("utf-8"), 0)
    c.feed(b"\x7f", 0)
    out = c.feed(b"P01\r", 0)
    assert b"values.power_w" in out
    assert c.feed(b"\x7f\x7f", 0) == b""  # nothing to erase: nothing echoed


def test_control_characters_dropped_and_escape_sequences_swallowed():
    c = _con()
    out = c.feed(b"\x00w\x01h\x02o\x04am\x07i\t\x1b[1;5C\x1bOA\r", 0)
    assert b"anonymous" in out
    # an ESC followed by a newline does not eat the newline
    assert b"anonymous" in c.feed(b"whoami\x1b\r", 0)


def test_ctrl_c_clears_the_line():
    b = FakeBackend()
    c = _con(b, echo=True)
    c.feed(b"reboot", 0)
    out = c.feed(b"\x03", 0)
    assert out == b"^C\r\npilegate> "
    assert b"anonymous" in c.feed(b"whoami\r", 0)
    assert "reboot" not in [a["cmd"] for a in b.audits]


def test_overlong_line_is_discarded_with_one_message():
    b = FakeBackend()
    c = _con(b, max_line=16, echo=True)
    out = c.feed(b"status" + b"x" * 30, 0)
    assert out == b"status" + b"x" * 10  # echo stops where the line is discarded
    assert c.pending_len() <= 16
    out = c.feed(b"y" * 1000 + b"\rstatus\r", 0)
    assert out.count(b"line longer than 16 bytes") == 1
    assert b"LY-0001" in out  # the next line is a fresh one
    assert b.calls.count("status") == 1  # the discarded line never ran
    assert len(c.feed(b"x" * 16 + b"\r", 0).split(b"line longer")) == 1  # 16 bytes is allowed


def test_invalid_utf8_is_refused_not_fatal():
    c = _con()
    out = c.feed(b"st\xffatus\r", 0)
    assert b"not valid UTF-8" in out and out.endswith(b"pilegate> ")
    out = c.feed(b"\xc3\r\xe4\xb8\r\xf0\x28\x8c\x28\r", 0)
    assert out.count(b"not valid UTF-8") == 3


def test_feed_never_raises_on_garbage():
    c = _con(echo=True)
    seed = 12345
    data = bytearray()
    for _ in range(5000):
        seed = (seed * 1103515245 + 12345) & 0x7FFFFFFF
        data.append((seed >> 16) & 0xFF)
    for i in range(0, len(data), 37):
        c.feed(bytes(data[i : i + 37]), i)
        c.poll(i)
        assert c.pending_len() <= c.max_line
    assert b"LY-0001" in c.feed(b"\x03\rstatus\r", 99999)


def test_str_input_is_accepted():
    assert b"anonymous" in _con().feed("whoami\n", 0)


# ---------------------------------------------------------------- login and privileges


def test_privileged_commands_need_login_and_are_audited_when_refused():
    b = FakeBackend()
    c = _con(b)
    for cmd in ("set", "interlock P01 on", "reboot", "factory-reset", "repl"):
        out = c.execute(cmd, 5)
        assert "needs a technician login" in out, cmd
    assert [a["cmd"] for a in b.audits] == ["set", "interlock", "reboot", "factory-reset", "repl"]
    for a in b.audits:
        assert a["result"] == "refused" and a["who"] == "anonymous" and a["t"] == 5
    assert b.audits[1]["args"] == ["P01", "on"]
    assert "reboot" not in b.calls


def test_without_a_provisioned_pin_privileged_commands_explain_how():
    b = FakeBackend()
    c = _con(b, record=None)
    assert "no technician PIN has been provisioned" in c.execute("reboot", 0)
    assert "provision" in c.execute("login", 0)
    assert c.prompt() == "pilegate> "


def test_login_with_the_right_pin():
    b = FakeBackend()
    c = _con(b, echo=True)
    out = c.feed(b"login\r", 0)
    assert out.endswith(b"PIN: ")
    out = c.feed(PIN.encode() + b"\r", 1)
    assert PIN.encode() not in out  # never echoed
    assert out.endswith(b"pilegate# ")
    assert b.audits[-1]["cmd"] == "login" and b.audits[-1]["result"] == "ok"
    assert b.audits[-1]["who"] == "technician"
    for a in b.audits:
        assert PIN not in repr(a)
    assert "technician (logged in)" in c.execute("whoami", 2)
    assert json.loads(c.execute("whoami --json", 2))["idle_logout_in_s"] == 600
    assert c.execute("login", 3) == "already logged in\n"
    assert c.execute("logout", 4) == "logged out\n"
    assert c.prompt() == "pilegate> "
    assert b.audits[-1]["cmd"] == "logout" and b.audits[-1]["who"] == "technician"


def test_pin_prompt_can_be_cancelled_and_times_out():
    c = _con(echo=True)
    c.feed(b"login\r", 0)
    out = c.feed(b"12\x03", 0)
    assert b"login cancelled" in out and out.endswith(b"pilegate> ")
    c.feed(b"login\r", 0)
    assert c.execute("", 1) == "login cancelled\n"
    c.feed(b"login\r", 10)
    assert c.poll(10 + console.PIN_TIMEOUT_S - 1) == b""
    out = c.poll(10 + console.PIN_TIMEOUT_S)
    assert b"login cancelled: no answer" in out and out.endswith(b"pilegate> ")
    assert c.auth.failures == 0


def test_wrong_pins_lock_out_with_growing_capped_delay():
    b = FakeBackend()
    auth = console.AuthState(RECORD, lockout_base_s=5, lockout_max_s=30)
    c = Console(b, auth=auth)
    t = 100
    delays = []
    for _ in range(5):
        c.execute("login", t)
        out = c.execute("000000", t)
        assert out.startswith("wrong PIN"), out
        d = auth.wait_s(t)
        delays.append(d)
        out = c.execute("login", t + d - 1)
        assert "try again in 1 s" in out, out
        t += d
    assert delays == [5, 10, 20, 30, 30]
    assert [a["result"] for a in b.audits] == ["failed"] * 5
    c.execute("login", t)
    assert "logged in" in c.execute(PIN, t)
    assert auth.failures == 0 and auth.wait_s(t) == 0


def test_lockout_survives_a_new_session_sharing_the_auth_state():
    auth = console.AuthState(RECORD)
    first = Console(FakeBackend(), auth=auth, origin="socket uid=1000")
    first.execute("login", 0)
    first.execute("111111", 0)
    first.close(0)
    second = Console(FakeBackend(), auth=auth, origin="socket uid=1000")  # reconnected
    assert "try again in 4 s" in second.execute("login", 1)
    # and a session that was already at the PIN prompt cannot guess in parallel
    third = Console(FakeBackend(), auth=auth)
    fourth = Console(FakeBackend(), auth=auth)
    third.execute("login", 10)
    fourth.execute("login", 10)
    assert third.execute("222222", 10).startswith("wrong PIN")
    assert fourth.execute(PIN, 10).startswith("error: login locked")
    assert auth.snapshot() == {"failures": 2}


def test_malformed_pin_record_is_reported_as_such():
    b = FakeBackend()
    c = _con(b, record="pbkdf2-sha256$2$zz$00")
    c.execute("login", 0)
    out = c.execute(PIN, 0)
    assert "malformed" in out and c.prompt() == "pilegate> "
    assert b.audits[-1]["result"] == "failed"


def test_idle_session_logs_out_through_poll():
    b = FakeBackend()
    c = _con(b, idle_logout_s=60, echo=True)
    c.greeting(0)
    _login(c, 0)
    assert c.poll(30) == b""
    c.execute("status", 30)  # a command is activity
    assert c.poll(89) == b""
    c.feed(b"sta", 89)  # typing without a command is not
    out = c.poll(90)
    assert b"idle for 60 s: logged out" in out
    assert out.startswith(b"\r\n") and out.endswith(b"pilegate> sta")
    assert b.audits[-1]["cmd"] == "logout" and b.audits[-1]["result"] == "idle"
    assert "needs a technician login" in c.execute("reboot", 91)


def test_idle_logout_also_applies_before_a_late_command():
    c = _con(idle_logout_s=60)
    _login(c, 0)
    out = c.execute("reboot", 61)
    assert out.startswith("idle for 60 s: logged out\n")
    assert "needs a technician login" in out


def test_new_pin_record_logs_out_every_session():
    auth = console.AuthState(RECORD)
    c = Console(FakeBackend(), auth=auth)
    _login(c)
    auth.set_record(pinhash.make_record("13579", b"another-salt", 2))
    assert c.prompt() == "pilegate> "
    assert "PIN changed" in c.execute("whoami", 1)


# ---------------------------------------------------------------- privileged commands


def test_set_lists_and_changes_whitelisted_settings_with_secrets_masked():
    b = FakeBackend()
    c = _con(b)
    _login(c)
    listing = c.execute("set", 1)
    assert "telemetry.interval_s  30" in listing and "hunter2" not in listing and "****" in listing
    assert c.execute("set telemetry.interval_s 60", 2) == "telemetry.interval_s = 60  (applied)\n"
    assert b.settable["telemetry.interval_s"] == "60"
    assert b.audits[-1]["args"] == ["telemetry.interval_s", "60"] and b.audits[-1]["result"] == "ok"
    out = c.execute("set mqtt.password correct horse", 3)
    assert "correct" not in out and "mqtt.password = ****" in out
    assert b.settable["mqtt.password"] == "correct horse"
    assert b.audits[-1]["args"] == ["mqtt.password", "****"]
    assert "correct" not in repr(b.audits)
    out = c.execute("set telemetry.interval_s soon", 4)
    assert out == "error: refused: interval_s must be a whole number of seconds\n"
    assert b.audits[-1]["result"] == "refused"
    assert "not a setting the console may change" in c.execute("set gateway.id X", 5)
    assert "usage: set" in c.execute("set log.level", 6)
    obj = json.loads(c.execute("set log.level debug --json", 7))
    assert obj == {"ok": True, "key": "log.level", "value": "debug", "message": "applied"}


def test_meter_bindings_are_refused_with_the_commissioning_explanation():
    b = FakeBackend()
    b.settable["pile.P01.meter.address"] = 1  # even if a backend wrongly offered it
    c = _con(b)
    _login(c)
    for key in ("pile.P01.meter.address", "pile.P01.meter.serial", "meter.P01", "pile.P01.address", "bindings.P01"):
        out = c.execute("set %s 7" % key, 1)
        assert "commissioning" in out and out.startswith("error:"), key
        assert b.audits[-1]["result"] == "refused"
    assert "set_setting" not in b.calls


def test_interlock_override_is_audited():
    b = FakeBackend()
    c = _con(b)
    _login(c)
    assert c.execute("interlock P02 off", 1) == "interlock P02 off: pile P02 interlock off\n"
    assert b.audits[-1]["cmd"] == "interlock" and b.audits[-1]["args"] == ["P02", "off"]
    assert b.audits[-1]["result"] == "ok" and b.audits[-1]["who"] == "technician"
    assert c.execute("interlock P09 on", 2) == "error: refused: no pile P09\n"
    assert b.audits[-1]["result"] == "refused"
    assert "usage: interlock" in c.execute("interlock P01 maybe", 3)
    b.fail["interlock"] = RuntimeError("coil write failed")
    assert "coil write failed" in c.execute("interlock P01 on", 4)
    assert b.audits[-1]["result"] == "failed"


def test_reboot_happens_after_the_answer_was_sent():
    b = FakeBackend()
    c = _con(b)
    _login(c)
    assert "rebooting in 1 s" in c.execute("reboot", 10)
    assert "reboot" not in b.calls
    c.poll(10)
    assert "reboot" not in b.calls
    c.poll(11)
    assert b.calls.count("reboot") == 1
    c.poll(12)
    assert b.calls.count("reboot") == 1
    assert b.audits[-1]["cmd"] == "reboot" and b.audits[-1]["result"] == "ok"


def test_factory_reset_needs_the_exact_confirmation():
    b = FakeBackend()
    c = _con(b, echo=True)
    _login(c)
    out = c.feed(b"factory-reset\r", 1)
    assert out.endswith(b"Type 'factory-reset LY-0001' to confirm: ")
    out = c.feed(b"factory-reset LY-0002\r", 2)
    assert b"cancelled" in out and b.audits[-1]["result"] == "cancelled"
    c.poll(10)
    assert "factory_reset" not in b.calls
    c.feed(b"factory-reset\r", 11)
    out = c.feed(b"factory-reset LY-0001\r", 12)
    assert b"confirmed" in out
    c.poll(13)
    assert b.calls.count("factory_reset") == 1
    assert c.auth.record is None and c.prompt() == "pilegate> "
    assert "no technician PIN has been provisioned" in c.execute("reboot", 14)
    assert [a["result"] for a in b.audits if a["cmd"] == "factory-reset"] == ["cancelled", "ok"]


def test_factory_reset_cancelled_by_ctrl_c():
    b = FakeBackend()
    c = _con(b, echo=True)
    _login(c)
    c.feed(b"factory-reset\r", 1)
    out = c.feed(b"fact\x03", 2)
    assert b"factory reset cancelled" in out
    assert c.prompt() == "pilegate# "


def test_repl_only_where_the_port_has_one():
    b = FakeBackend()
    c = _con(b)
    _login(c)
    assert "no REPL on this port" in c.execute("repl", 1)
    r = ReplBackend()
    c = _con(r)
    _login(c)
    assert "MicroPython REPL" in c.execute("repl", 1)
    c.poll(2)
    assert r.calls.count("repl") == 1 and r.audits[-1]["cmd"] == "repl"


def test_failing_action_is_reported_and_audited():
    b = FakeBackend()
    b.fail["reboot"] = OSError("watchdog busy")
    c = _con(b)
    _login(c)
    c.execute("reboot", 0)
    out = c.poll(1)
    assert b"error: reboot failed: watchdog busy" in out
    assert b.audits[-1]["result"] == "failed"


# ---------------------------------------------------------------- deferred requests


def test_mbread_arguments_are_validated_before_the_port_sees_them():
    b = FakeBackend()
    c = _con(b)
    for bad in (
        "mbread",
        "mbread rs485-1 1 3 0",
        "mbread rs485-1 0 3 0 1",
        "mbread rs485-1 248 3 0 1",
        "mbread rs485-1 1 5 0 1",
        "mbread rs485-1 1 3 0 126",
        "mbread rs485-1 1 3 65535 2",
        "mbread rs485-1 1 3 x 1",
        "mbread rs485-1 1 3 -1 1",
    ):
        out = c.execute(bad, 0)
        assert out.startswith("error:") and "usage: mbread" in out, bad
    assert b.requests == []
    c.execute("mbread rs485-1 1 1 0 2000", 0)
    assert b.requests[0].request == ("mbread", "rs485-1", 1, 1, 0, 2000)


def test_mbread_result_arrives_through_poll_and_prompt_waits_for_it():
    b = FakeBackend()
    c = _con(b, echo=True)
    out = c.feed(b"mbread rs485-1 1 3 0x10 2\r", 0)
    assert b"mbread on bus rs485-1, address 1: queued" in out and not out.endswith(b"pilegate> ")
    d = b.requests[0]
    assert d.request == ("mbread", "rs485-1", 1, 3, 16, 2) and d.kind == "mbread"
    assert c.poll(1) == b""
    assert d.complete({"values": [0x1234, 0xFFFE], "elapsed_ms": 42})
    out = c.poll(2)
    assert b"elapsed_ms=42" in out and b"0x1234" in out and b"65534" in out and b"-2" in out
    assert out.endswith(b"pilegate> ")
    assert not d.complete({"values": []})  # a second answer is ignored
    assert c.poll(3) == b""


def test_mbread_json_and_error_results():
    b = FakeBackend()
    c = _con(b)
    assert c.execute("mbread rs485-1 7 4 0 1 --json", 0) == ""
    c.complete(b.requests[0].token, {"error": "timeout"})
    obj = json.loads(c.poll(1).decode().strip().split("\r\n")[0])
    assert obj == {"bus": "rs485-1", "addr": 7, "fc": 4, "reg": 0, "count": 1, "error": "timeout"}
    c.execute("mbread rs485-1 7 2 0 3", 2)
    b.requests[1].complete({"values": [True, False, 1]})
    out = c.poll(3).decode()
    assert "input  value" in out and "1      0" in out


def test_synchronous_backend_answers_within_the_command():
    b = FakeBackend(sync=True)
    c = _con(b, echo=True)
    out = c.feed(b"mbread rs485-1 1 3 0 2\r", 0)
    assert b"0x1234" in out and out.endswith(b"pilegate> ")
    assert c.poll(1) == b""


def test_scan_progress_and_result():
    b = FakeBackend()
    c = _con(b)
    c.feed(b"scan rs485-1 1-40\r", 0)
    d = b.requests[0]
    assert d.request == ("scan", "rs485-1", 1, 40)
    for addr in range(1, 41):
        d.progress({"addr": addr, "answered": addr in (2, 17)})
    out = c.poll(1).decode()
    assert "address 2 answered" in out and "address 17 answered" in out
    assert "scanned up to 16, 1 found" in out and "scanned up to 40, 2 found" in out
    assert not out.endswith("pilegate> ")
    d.complete({"found": [2, 17]})
    out = c.poll(2).decode()
    assert "scan rs485-1 1-40: 2 device(s) answered: 2, 17" in out and out.endswith("pilegate> ")
    assert "usage: scan" in c.execute("scan rs485-1 40-1", 3)
    assert "usage: scan" in c.execute("scan rs485-1 1-300", 3)
    c.execute("scan rs485-1 --json", 4)
    d = b.requests[1]
    d.progress({"addr": 1, "answered": True})
    d.progress("free text is ignored in JSON mode")
    assert c.poll(5) == b""
    d.complete({})
    obj = json.loads(c.poll(6).decode().split("\r\n")[0])
    assert obj == {"bus": "rs485-1", "from": 1, "to": 247, "found": [1]}


def test_ctrl_c_cancels_a_running_scan():
    b = FakeBackend()
    c = _con(b, echo=True)
    c.feed(b"scan rs485-1\r", 0)
    d = b.requests[0]
    out = c.feed(b"\x03", 1)
    assert b"scan cancelled" in out and out.endswith(b"pilegate> ")
    assert d.cancelled and b.cancelled == [d.token]
    assert not d.progress({"addr": 5, "answered": True})
    assert not d.complete({"found": [5]})
    assert c.poll(2) == b""


def test_one_request_at_a_time_and_other_commands_still_work():
    b = FakeBackend()
    c = _con(b)
    c.execute("scan rs485-1", 0)
    assert "busy: a scan is running" in c.execute("mbread rs485-1 1 3 0 1", 1)
    assert "LY-0001" in c.execute("status", 1)
    assert len(b.requests) == 1


def test_abandoned_requests_time_out():
    b = FakeBackend()
    c = _con(b, echo=True)
    c.feed(b"mbread rs485-1 1 3 0 1\r", 0)
    d = b.requests[0]
    assert c.poll(console.MBREAD_TIMEOUT_S - 1) == b""
    out = c.poll(console.MBREAD_TIMEOUT_S)
    assert b"gave no answer in time" in out and out.endswith(b"pilegate> ")
    assert d.cancelled and not d.complete({"values": [1]})
    # a scan stays alive while it reports progress
    c.feed(b"scan rs485-1\r", 100)
    d = b.requests[1]
    for t in range(100, 200, 20):
        d.progress({"addr": 1, "answered": False})
        c.poll(t)
    assert not d.cancelled
    assert b"gave no answer" in c.poll(200 + console.SCAN_IDLE_S)


def test_backend_refusing_a_request_frees_the_slot():
    b = FakeBackend()
    b.fail["mbread"] = ValueError("unknown bus 'rs485-9'")
    c = _con(b)
    assert c.execute("mbread rs485-9 1 3 0 1", 0) == "error: mbread failed: unknown bus 'rs485-9'\n"
    del b.fail["mbread"]
    c.execute("mbread rs485-1 1 3 0 1", 1)
    assert len(b.requests) == 1


def test_wakeup_is_called_when_output_waits():
    b = FakeBackend()
    c = _con(b)
    woken = []
    c.wakeup = lambda: woken.append(1)
    c.execute("scan rs485-1 1-2", 0)
    b.requests[0].progress({"addr": 1, "answered": True})
    b.requests[0].complete({"found": [1]})
    assert len(woken) == 2


def test_close_logs_out_and_abandons_the_request():
    b = FakeBackend()
    c = _con(b)
    _login(c)
    c.execute("scan rs485-1", 1)
    c.close(2)
    assert b.cancelled == [b.requests[0].token]
    assert b.audits[-1]["cmd"] == "logout" and b.audits[-1]["result"] == "closed"


# ---------------------------------------------------------------- bounded output


def test_progress_queue_is_bounded():
    b = FakeBackend()
    c = _con(b, max_queue=200)
    c.execute("scan rs485-1", 0)
    d = b.requests[0]
    for addr in range(1, 248):
        d.progress({"addr": addr, "answered": True})
    assert c._queued <= 200
    out = c.poll(1).decode()
    assert "progress line(s) dropped" in out
    d.complete({"found": list(range(1, 248))})
    assert "247 device(s) answered" in c.poll(2).decode()


def test_command_output_and_feed_output_are_bounded():
    c = _con(max_output=300)
    out = c.execute("help", 0)
    assert len(out) < 400 and "output truncated" in out
    assert json.loads(c.execute("help --json", 0))["error"].startswith("answer too large")
    out = c.feed(b"status\r" * 50, 0)
    assert len(out) < 1000
    assert b"line(s) skipped" in out and out.endswith(b"pilegate> ")


def test_skipped_lines_never_become_a_pin():
    b = FakeBackend()
    c = _con(b, max_output=100)
    c.feed(b"help\rlogin\r" + PIN.encode() + b"\r", 0)
    assert c.prompt() == "pilegate> " and not c.logged_in()


def test_greeting_names_the_gateway():
    out = _con().greeting(0)
    assert out.startswith(b"pilegate console on gateway LY-0001.") and out.endswith(b"pilegate> ")
    b = FakeBackend()
    b.fail["status"] = RuntimeError("x")
    assert _con(b).greeting(0).endswith(b"pilegate> ")


def test_auth_state_delays():
    a = console.AuthState(RECORD, lockout_base_s=5, lockout_max_s=900)
    got = []
    for _ in range(12):
        got.append(a.failed(0))
    assert got == [5, 10, 20, 40, 80, 160, 320, 640, 900, 900, 900, 900]
    assert a.wait_s(0) == 900 and a.wait_s(899.5) == 1 and a.wait_s(900) == 0
    a.succeeded()
    assert a.wait_s(0) == 0 and a.failures == 0


# ---------------------------------------------------------------- issue 9 #6: the console's contract


class LevelIgnoringBackend(FakeBackend):
    """A port that hands over every log line whatever level was asked (as the Pi once did)."""

    def log(self, level=None):
        self._call("log")
        return [
            {"t": 1764155000, "level": "debug", "msg": "tick"},
            {"t": 1764155001, "level": "info", "msg": "started"},
            {"t": 1764155002, "level": "error", "msg": "bus down"},
        ]


def test_log_filters_by_level_whatever_the_port_returns_and_needs_no_login():
    b = LevelIgnoringBackend()
    c = _con(b)
    out = c.execute("log error", 0)
    assert "bus down" in out and "started" not in out and "tick" not in out, out
    assert "started" in c.execute("log info", 0) and "tick" not in c.execute("log info", 0)
    assert "set_setting" not in b.calls and b.audits == []  # reading only: nothing changed


class EchoingBackend(FakeBackend):
    def set_setting(self, key, value):
        self._call("set_setting")
        return True, "%s = %s" % (key, value)


def test_set_names_the_key_and_value_once():
    c = _con(EchoingBackend())
    _login(c)
    assert c.execute("set telemetry.interval_s 7", 0) == "telemetry.interval_s = 7  (applied)\n"


def test_a_terminal_attached_later_gets_the_banner_on_its_first_key():
    c = _con(greet_on_input=True)
    c.greeting(0)  # sent at start, to nobody
    out = c.feed(b"\r", 1)
    assert out == c.greeting(1), out  # Enter alone: the banner and prompt, nothing else
    c = _con(greet_on_input=True)
    out = c.feed(b"whoami\r", 1)
    assert out.startswith(b"pilegate console on gateway LY-0001.") and b"anonymous (read-only)" in out
    assert c.feed(b"\r", 2) == b"pilegate> "  # once per session
    assert _con().feed(b"\r", 1) == b"pilegate> "  # sockets: the greeting was seen
