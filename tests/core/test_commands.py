"""Downlink command checks: every bad command is refused with a reason (both interpreters)."""

from mpytest import new_key

from pilecore import commands, ecdsa, envelope

PD = new_key()
PPUB = ecdsa.public_key(PD)
PKID = envelope.key_id(ecdsa.spki_der(PPUB))
OTHER = new_key()
NOW = 1764150000


def signer(d):
    return lambda m: ecdsa.sig_raw(*ecdsa.sign(d, m))


def make(name="set_interval", args=None, cmd_id="c1", iat=NOW - 5, exp=NOW + 100, gw="GW-1", d=PD, kid=PKID):
    if args is None:
        args = {"interval_s": 60}
    return commands.make(gw, cmd_id, name, args, iat, exp, signer(d), kid)


def check(jws, guard=None, now=NOW):
    return commands.check(jws, PPUB, "GW-1", now, guard or commands.ReplayGuard(), 300)


def test_good_command_is_accepted_once():
    guard = commands.ReplayGuard()
    jws = make()
    cmd, why = check(jws, guard)
    assert why == "" and cmd["cmd"] == "set_interval" and cmd["args"] == {"interval_s": 60}
    cmd, why = check(jws, guard)
    assert cmd is None and why.startswith("replayed")
    # the guard survives a restart
    g2 = commands.ReplayGuard(guard.snapshot())
    assert check(jws, g2)[1].startswith("replayed")


def test_bad_commands_are_refused_with_reasons():
    cases = [
        (make(d=OTHER), "bad signature"),
        (make(kid="00" * 32), "unknown key id"),
        (make(gw="GW-2"), "wrong gateway"),
        (make(iat=NOW - 1000, exp=NOW - 900), "expired"),
        (make(iat=NOW - 290, exp=NOW + 2000), "too old"),
        (make(iat=NOW + 500, exp=NOW + 600), "issued in the future"),
        (make(name="format_disk", args={}), "unknown command"),
        (make(args={"interval_s": 0}), "bad arguments"),
        (make(args={"interval": 5}), "bad arguments"),
        (make(name="resend", args={"from_seq": 9, "to_seq": 3}), "bad arguments"),
        ("not.a.jws", "malformed"),
        ("garbage", "malformed"),
    ]
    for jws, reason in cases:
        cmd, why = check(jws)
        assert cmd is None and why.startswith(reason), (reason, why)


def test_unsigned_command_is_refused():
    head = envelope.b64url(b'{"alg":"none"}')
    body = envelope.b64url(b'{"v":1,"gw":"GW-1","id":"x","iat":1,"exp":2,"cmd":"reboot","args":{}}')
    cmd, why = check(head + "." + body + ".")
    assert cmd is None and why.startswith("unsigned")


def test_tampered_payload_is_refused():
    h, p, s = make().split(".")
    body = envelope.b64url_decode(p).replace(b"60", b"1")
    cmd, why = check(".".join((h, envelope.b64url(body), s)))
    assert cmd is None and why == "bad signature"


def test_old_sync_time_cannot_turn_the_clock_back():
    guard = commands.ReplayGuard()
    assert check(make(cmd_id="a", iat=NOW - 10), guard)[1] == ""
    old = make(name="sync_time", args={"t": NOW - 3600}, cmd_id="b", iat=NOW - 20)
    assert check(old, guard)[1].startswith("replayed")
    new = make(name="sync_time", args={"t": NOW}, cmd_id="c", iat=NOW - 1)
    assert check(new, guard)[1] == ""


def test_no_platform_key_disables_commands():
    cmd, why = commands.check(make(), None, "GW-1", NOW, commands.ReplayGuard())
    assert cmd is None and "disabled" in why
