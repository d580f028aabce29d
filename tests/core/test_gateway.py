"""The application core (pilecore.gateway.SiteDriver), on CPython and on MicroPython.

The driver runs against the ESP32's real flash outbox (pilefw.outbox, real files) for the flush
contract; the port's hands are a recorder.  Commands are real platform-signed JWS.
"""

import json
import os

try:
    from pilefw import outbox as obx
except ImportError:  # CPython from a checkout: only pilecore is installed, pilefw sits beside it
    import sys

    sys.path.append(__file__.rsplit("/", 3)[0] + "/firmware")
    from pilefw import outbox as obx

from mpytest import new_key, raises

from pilecore import commands, ecdsa, envelope, gateway
from pilecore.envelope import Chain
from pilecore.site import SiteCore

PD = new_key()
PPUB = ecdsa.public_key(PD)
PKID = envelope.key_id(ecdsa.spki_der(PPUB))
NOW = 1764150000
_dirs = [0]


def profile():
    return {
        "id": "m",
        "kind": "meter",
        "phases": 1,
        "function": 4,
        "byte_order": "big",
        "word_order": "big",
        "max_block": 40,
        "response_ms": 50,
        "timeout_ms": 500,
        "identity": {"kind": "serial", "register": 0xFC00, "type": "u32", "count": 2, "function": 3},
        "values": {
            "power": {"register": 0x0C, "type": "f32", "scale": 1.0, "unit": "W", "min": -20000, "max": 20000},
            "energy_import": {"register": 0x48, "type": "f32", "scale": 1.0, "unit": "kWh", "min": 0, "max": 9999999},
        },
    }


def cfg():
    return {
        "gateway": {"id": "GW-1", "site": "S1", "board": "b"},
        "bus": [{"name": "b", "baud": 9600, "parity": "N", "stopbits": 1, "timeout_ms": 200}],
        "pile": [
            {
                "id": "P1",
                "meter": {"bus": "b", "address": 1, "profile": "m", "serial": "11"},
                "interlock": "relay",
                "relay": "K1",
            },
            {"id": "P2", "meter": {"bus": "b", "address": 2, "profile": "m", "serial": "22"}},
        ],
        "profiles": {"m": profile()},
        "telemetry": {"interval_s": 10},
    }


class Hands:
    """The port's side, recorded."""

    def __init__(self):
        self.relays = []
        self.saved = {}
        self.logs = []
        self.resends = []

    def actuate(self, relay, on):
        self.relays.append((relay, on))

    def read_input(self, name):
        return None

    def set_clock(self, t):
        return t - NOW

    def resend(self, first, last):
        self.resends.append((first, last))
        return last - first, 1

    def save(self, name, obj):
        self.saved[name] = json.loads(json.dumps(obj))

    def log(self, level, text):
        self.logs.append((level, text))


def driver(hands=None, c=None):
    c = c or cfg()
    core = SiteCore(c, None, "GW-1", "0.1.0")
    chain = Chain("GW-1", "S1", "kid", lambda b: b"\x01" * 64, 1)
    ident = {"fw": "0.1.0", "platform": "test", "board": "b", "config_hash": "h", "kid": "kid", "pubkey": "pem"}
    return SiteDriver(c, core, chain, hands or Hands(), ident, platform_pub=PPUB)


SiteDriver = gateway.SiteDriver


def fresh(tag):
    _dirs[0] += 1
    try:
        import tempfile

        return "%s/%s%d" % (tempfile.mkdtemp(prefix="fwgateway-"), tag, _dirs[0])
    except ImportError:  # MicroPython: an in-memory /tmp
        pass
    try:
        os.mkdir("/tmp/fwgateway")
    except OSError:
        pass
    return "/tmp/fwgateway/%s%d" % (tag, _dirs[0])


def store(d, ob, now):
    """What the ESP32 port's flush does: one put per message, stopping at the first refusal."""
    d.outbox_dropped(now, ob.take_dropped())
    prepared = d.seal(now, "ntp", False)
    n = 0
    why = None
    for p in prepared:
        try:
            ok = ob.put(p.seq, p.kind, "t/" + p.kind, p.jws.encode())
        except obx.OutboxFull as e:
            ok, why = False, str(e)
        if not ok:
            break
        n += 1
    d.stored(prepared, n, now, why)
    return n


def body(jws):
    return json.loads(envelope.b64url_decode(jws.split(b".")[1]))


def signed(name, args, cmd_id="c1", iat=NOW - 5, exp=NOW + 100):
    sign = lambda m: ecdsa.sig_raw(*ecdsa.sign(PD, m))  # noqa: E731
    return commands.make("GW-1", cmd_id, name, args, iat, exp, sign, PKID).encode()


def deep(n):
    return b"[" * n + b"]" * n


def test_the_flush_keeps_billing_and_events_while_the_outbox_refuses_and_resumes_by_itself():
    ob = obx.Outbox(fresh("full"), max_bytes=16 * 1024, segment_bytes=8 * 1024)
    d = driver()
    d.started(NOW, 1)
    assert store(d, ob, NOW) == 1  # birth
    d.second(NOW, 0, "ntp")  # gateway.started
    assert store(d, ob, NOW) == 1
    # fill the outbox with events nobody acks (the broker is away)
    t = NOW
    while not d.storage["full"]:
        t += 1
        d.emit([{"type": "test.filler", "t": t, "pad": "x" * 100}])
        store(d, ob, t)
    assert d.events and d.events[-1]["type"] == "outbox.full"  # declared, and kept itself
    held = len(d.events)
    # a billing record and an ack arrive while full: kept in memory, in order, not dropped
    d.core.billing.append({"type": "session", "pile": "P1", "ocmf": "OCMF|{}|{}"})
    d.second(t + 1, 1000, "ntp")
    d.command(signed("set_interval", {"interval_s": 20}), t + 1, 1000)
    head = d.chain.seq
    assert store(d, ob, t + 1) == 0 and d.chain.seq == head  # the chain did not move
    assert [k for k, _ in d.keep] == ["billing", "ack"] and len(d.events) >= held
    # a refused telemetry message is counted, not kept (the next one carries newer readings)
    d.telemetry_due = d.telemetry(t + 2)
    store(d, ob, t + 2)
    assert d.telemetry_due is None and d.storage["telemetry_not_stored"] >= 1
    assert any(level == "error" and "outbox refuses" in text for level, text in d.port.logs)
    # the platform acks everything: the next flush stores what waited, and says so
    for rec in ob.pending(1000):
        ob.ack(rec[0])
    n = store(d, ob, t + 3)
    assert n >= 3 and not d.keep and d.storage["full"] is False
    assert [ev["type"] for ev in d.events] == ["outbox.resumed"]  # told with the next flush
    kinds = []
    types = []
    seq = head
    for rec in ob.pending(1000):
        b = body(rec[3])
        assert b["seq"] == seq + 1  # no seq skipped, none reused
        seq = b["seq"]
        kinds.append(rec[1])
        if rec[1] == "event":
            types += [ev["type"] for ev in b["data"]["events"]]
    assert "billing" in kinds and "ack" in kinds and "outbox.full" in types
    d.second(t + 4, 2000, "ntp")
    store(d, ob, t + 4)
    resumed = [ev for ev in d.recent if ev["type"] == "outbox.resumed"]
    assert resumed and resumed[0]["telemetry_not_stored"] >= 1 and resumed[0]["keep_given_up"] == 0
    ob.close()


def test_held_messages_are_bounded_and_what_is_given_up_is_counted_and_reported():
    d = driver()
    for k in range(gateway.KEEP_HELD + 3):
        d.keep.append(("billing", {"type": "session", "pile": "P1", "n": k}))
    d._bound_keep()
    assert len(d.keep) == gateway.KEEP_HELD and d.keep[0][1]["n"] == 3
    assert d.storage["keep_given_up"] == 3 and [g["kind"] for g in d._given_up] == ["billing"] * 3
    d.emit([{"type": "x", "t": NOW}] * (gateway.EVENTS_HELD + 5))
    assert len(d.events) == gateway.EVENTS_HELD and d.storage["events_given_up"] == 5


def test_events_travel_in_messages_of_bounded_size():
    d = driver()
    d.emit([{"type": "x", "t": NOW, "k": k} for k in range(gateway.EVENTS_PER_MESSAGE * 2 + 1)])
    prepared = d.seal(NOW, "ntp", False)
    assert [p.kind for p in prepared] == ["event"] * 3
    d.stored(prepared, 3, NOW)
    assert d.chain.seq == 3 and not d.events


def test_deeply_nested_or_oversized_commands_are_answered_not_parsed():
    d = driver()
    head = envelope.b64url(('{"alg":"ES256","kid":"%s"}' % PKID).encode())
    arrays = "W1tb" * 33334  # base64url of 100,002 '[' (not encoded here: too big for the VM)
    cases = [
        arrays + ".e30.AAAA",  # a 100,000-deep header, unsigned
        head + "." + arrays + ".AAAA",  # a 100,000-deep payload, unsigned
        head + "." + envelope.b64url(deep(3000)) + ".AAAA",  # deep but small, unsigned
        head + "." + envelope.b64url(deep(20)) + ".AAAA",  # over the depth limit, small
    ]
    for text in cases:
        cmd, why = commands.check_bytes(text.encode(), PPUB, "GW-1", NOW, commands.ReplayGuard())
        assert cmd is None and why.startswith("malformed"), why
        ack = d.command(text.encode(), NOW, 0)
        assert ack["ok"] is False and ack["reason"] == why and ack["cmd_id"] is None
    # a validly signed payload nested too deep
    payload = '{"v":1,"gw":"GW-1","id":"deep","iat":%d,"exp":%d,"cmd":"set_interval","args":{"x":%s}}' % (
        NOW - 5,
        NOW + 100,
        deep(5000).decode(),
    )
    payload = payload.encode()
    jws = envelope.sign_compact(head, payload, lambda m: ecdsa.sig_raw(*ecdsa.sign(PD, m)))[0].encode()
    ack = d.command(jws, NOW, 0)
    assert ack == {"cmd_id": None, "ok": False, "reason": "malformed: payload nested deeper than 16"}
    big = b"a" * (commands.MAX_BYTES + 1)
    assert d.command(big, NOW, 0)["reason"] == "malformed: larger than %d bytes" % commands.MAX_BYTES
    assert commands.json_depth(b'{"a":"[[[[[[","b":[1,[2]]}') == 3  # brackets in strings do not count
    assert [k for k, _ in d.keep] == ["ack"] * 6
    assert [ev["type"] for ev in d.events] == ["command.rejected"] * 6


def test_every_command_has_one_answer_shape_and_resend_goes_through_the_ports_link():
    hands = Hands()
    d = driver(hands)
    ack = d.command(signed("resend", {"from_seq": 3, "to_seq": 9}, "r1"), NOW, 0)
    assert ack == {"cmd_id": "r1", "cmd": "resend", "ok": True, "result": {"resent": 6, "not_stored": 1}}
    assert hands.resends == [(3, 9)] and hands.saved["replay"]["seen"] == {"r1": NOW + 100}
    ack = d.command(signed("set_interval", {"interval_s": 7}, "i1"), NOW, 0)
    assert ack["result"] == {"interval_s": 7} and hands.saved["settings"]["interval_s"] == 7
    ack = d.command(signed("sync_time", {"t": NOW + 30}, "s1", iat=NOW), NOW, 0)
    assert ack["result"] == {"offset_s": 30} and d.tsync == "platform"
    ack = d.command(signed("set_tariff", {"tariff": {"id": "bad"}}, "t1"), NOW, 0)
    assert ack["ok"] is False and ack["reason"].startswith("tariff refused")
    ack = d.command(signed("resend", {"from_seq": 3, "to_seq": 9}, "r1"), NOW, 0)
    assert ack["ok"] is False and ack["reason"].startswith("replayed")


def test_reboot_waits_for_its_ack_then_the_backlog_or_the_grace():
    d = driver()
    ack = d.command(signed("reboot", {}, "b1"), NOW, 1000)
    assert ack["result"] == {"rebooting_in_s": gateway.REBOOT_GRACE_S}
    assert not d.reboot_due(1000, 0)  # the ack is not stored yet
    prepared = d.seal(NOW, "ntp", False)
    d.stored(prepared, len(prepared), NOW)
    assert not d.reboot_due(1500, 3)  # stored, not yet published: wait
    assert d.reboot_due(1500, 0)  # published: reboot now
    assert not d.reboot_due(1600, 0)  # once
    d.command(signed("reboot", {}, "b2"), NOW, 2000)
    prepared = d.seal(NOW, "ntp", False)
    d.stored(prepared, len(prepared), NOW)
    assert not d.reboot_due(2000 + gateway.REBOOT_GRACE_S * 1000 - 1, 3)
    assert d.reboot_due(2000 + gateway.REBOOT_GRACE_S * 1000, 3)  # the backlog did not drain in time


def test_an_override_acts_at_once_and_only_on_relay_piles():
    hands = Hands()
    d = driver(hands)
    d.apply_interlocks(NOW)
    assert hands.relays == [("K1", False)]  # fail-safe: off until verified
    assert d.set_override(NOW, "P1", "on")[0] is True
    assert hands.relays[-1] == ("K1", True)  # in the same call, on both ports
    ok, why = d.set_override(NOW, "P2", "on")
    assert not ok and "report" in why
    assert d.set_override(NOW, "P1", "auto")[0] and hands.relays[-1] == ("K1", False)


def test_birth_is_composed_once_and_telemetry_comes_when_due():
    d = driver()
    d.started(NOW, 4)
    b = d.birth_due
    assert b["platform"] == "test" and [p["serial"] for p in b["piles"]] == ["11", "22"]
    assert b["interval_s"] == 10 and b["piles"][0]["interlock"] == "relay"
    d.second(NOW, 0, "ntp")
    assert d.telemetry_due is None and d.events[0]["type"] == "gateway.started"
    d.second(NOW + 5, 5000, "ntp")
    tele = d.telemetry_due
    assert tele["interval_s"] == 10 and [p["pile"] for p in tele["piles"]] == ["P1", "P2"]
    assert all(p["stale"] and not p["metered"] for p in tele["piles"])  # nothing read: nothing made up
    prepared = d.seal(NOW + 5, "ntp", False)
    assert [p.kind for p in prepared] == ["birth", "event", "telemetry"]


def test_mqtt_urls_are_parsed_the_same_on_both_ports():
    p = gateway.parse_mqtt_url
    assert p("mqtts://broker.example") == (True, "broker.example", 8883)
    assert p("mqtt://10.0.0.2:1884/x") == (False, "10.0.0.2", 1884)
    assert p("mqtt://[::1]") == (False, "::1", 1883)
    assert p("mqtts://[fd00::5]:8884") == (True, "fd00::5", 8884)
    for bad in ("http://x", "mqtt://", "mqtt://[::1", "mqtt://::1", "mqtt://h:99999", "mqtt://h:x"):
        with raises(ValueError):
            p(bad)
    # and the site file's check agrees with the ports: a bracketed IPv6 host is a host
    from pilecore import config

    for url, ok in (("mqtt://[::1]", True), ("mqtts://[fd00::5]:8884", True), ("mqtt://::1", False)):
        problems = []
        config._check_mqtt({"url": url, "allow_insecure": True}, problems)
        assert (problems == []) == ok, (url, problems)
