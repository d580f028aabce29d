"""Downlink commands: signed by the platform, checked by the gateway before anything changes.

A command is a JWS compact serialization (ES256) signed with the platform's command key:

    header  {"alg":"ES256","kid":<hex SHA-256 of the platform key's SPKI DER>}
    payload {"v":1,"gw":<target gateway id>,"id":<unique id, 1-64 chars>,"iat":<Unix s>,
             "exp":<Unix s>,"cmd":<name>,"args":{...}}

`check()` returns (command, "") when every rule holds, else (None, reason).  A rejected
command changes no state; the caller answers every command, accepted or not, with a signed
`ack`.  Replay protection: an id is accepted once (remembered until its expiry), a command older
than `max_age_s` or already expired is refused, and `sync_time` must be newer than every command
accepted before (so an old one cannot turn the clock back).
"""

import json

from pilecore import ecdsa, envelope

COMMANDS = {
    "set_interval": ("interval_s",),
    "set_tariff": ("tariff",),
    "resend": ("from_seq", "to_seq"),
    "sync_time": ("t",),
    "reboot": (),
}
SKEW_S = 60  # tolerated clock difference between platform and gateway
MAX_REMEMBERED = 256
MAX_BYTES = 16384  # a command larger than this is refused before anything is parsed
MAX_DEPTH = 16  # JSON nesting deeper than this (header or payload) is refused before parsing


class ReplayGuard:
    """Remembers accepted command ids until they expire; persisted by the port."""

    def __init__(self, snapshot=None):
        snap = snapshot or {}
        self.seen = dict(snap.get("seen", {}))  # id -> exp
        self.high_iat = snap.get("high_iat", 0)

    def snapshot(self):
        return {"seen": dict(self.seen), "high_iat": self.high_iat}

    def remember(self, cmd_id, iat, exp, now):
        for k in list(self.seen):
            if self.seen[k] < now - SKEW_S:
                del self.seen[k]
        if len(self.seen) >= MAX_REMEMBERED:
            oldest = min(self.seen, key=lambda k: self.seen[k])
            del self.seen[oldest]
        self.seen[cmd_id] = exp
        if iat > self.high_iat:
            self.high_iat = iat


def json_depth(data):
    """The nesting depth of JSON text (bytes), counted without parsing: brackets inside strings
    do not count.  Recursive parsers (CPython's json, MicroPython's) must never see deep input."""
    depth = top = 0
    in_str = esc = False
    for b in data:
        if in_str:
            if esc:
                esc = False
            elif b == 0x5C:  # backslash
                esc = True
            elif b == 0x22:  # quote
                in_str = False
        elif b == 0x22:
            in_str = True
        elif b == 0x5B or b == 0x7B:  # [ {
            depth += 1
            if depth > top:
                top = depth
        elif b == 0x5D or b == 0x7D:  # ] }
            depth -= 1
    return top


def _decode_part(part, what):
    """The bytes of one base64url part, or ValueError saying why they cannot be read."""
    raw = envelope.b64url_decode(part)
    if json_depth(raw) > MAX_DEPTH:
        raise ValueError("malformed: %s nested deeper than %d" % (what, MAX_DEPTH))
    return raw


def check_bytes(payload, platform_pub, gw_id, now, guard, max_age_s=300):
    """check() of a command as it arrives (bytes): its size is limited before anything is
    decoded, and the nesting of its JSON before anything is parsed."""
    if len(payload) > MAX_BYTES:
        return None, "malformed: larger than %d bytes" % MAX_BYTES
    try:
        text = bytes(payload).decode()
    except UnicodeError:
        return None, "malformed: not a JWS compact serialization"
    return check(text, platform_pub, gw_id, now, guard, max_age_s)


def peek_id(payload):
    """The id of a rejected command if it can be read safely (for the ack), else None."""
    if len(payload) > MAX_BYTES:
        return None
    try:
        if isinstance(payload, (bytes, bytearray)):
            payload = bytes(payload).decode()
        body = json.loads(_decode_part(payload.split(".")[1], "payload"))
        cid = body.get("id")
        return cid if isinstance(cid, str) and len(cid) <= 64 else None
    except (ValueError, IndexError, AttributeError, TypeError, UnicodeError, RuntimeError):
        return None


def check(jws, platform_pub, gw_id, now, guard, max_age_s=300):
    """Verify a command; see the module docstring.  `platform_pub` is an (x, y) point."""
    if platform_pub is None:
        return None, "no platform key configured: commands are disabled"
    if len(jws) > MAX_BYTES:
        return None, "malformed: larger than %d bytes" % MAX_BYTES
    parts = jws.split(".")
    try:
        if len(parts) != 3:
            raise ValueError("not 3 parts")
        _decode_part(parts[0], "header")
        _decode_part(parts[1], "payload")
    except (ValueError, UnicodeError) as e:
        why = str(e)
        return None, why if why.startswith("malformed") else "malformed: not a JWS compact serialization"
    try:
        header, payload, sig, signing_input = envelope.split(jws)
    except (ValueError, UnicodeError):
        return None, "malformed: not a JWS compact serialization"
    if header.get("alg") != "ES256":
        return None, "unsigned or wrong algorithm: only ES256 is accepted"
    kid = envelope.key_id(ecdsa.spki_der(platform_pub))
    if header.get("kid") != kid:
        return None, "unknown key id: not signed by the configured platform key"
    if len(sig) != 64:
        return None, "bad signature: ES256 signatures are 64 bytes"
    r, s = ecdsa.parse_sig_raw(sig)
    if not ecdsa.verify(platform_pub, signing_input, r, s):
        return None, "bad signature"
    try:
        cmd = json.loads(payload)
    except ValueError:
        return None, "malformed: payload is not JSON"
    why = _fields_problem(cmd, gw_id)
    if why:
        return None, why
    if cmd["exp"] < now - SKEW_S:
        return None, "expired at %d" % cmd["exp"]
    if cmd["iat"] > now + SKEW_S:
        return None, "issued in the future (iat %d, gateway time %d)" % (cmd["iat"], now)
    if now - cmd["iat"] > max_age_s or cmd["exp"] - cmd["iat"] > max_age_s:
        return None, "too old: commands are valid for at most %d s" % max_age_s
    if cmd["id"] in guard.seen:
        return None, "replayed: command id %r was already executed" % cmd["id"]
    if cmd["cmd"] == "sync_time" and cmd["iat"] <= guard.high_iat:
        return None, "replayed: sync_time older than an executed command"
    why = _args_problem(cmd["cmd"], cmd["args"])
    if why:
        return None, why
    guard.remember(cmd["id"], cmd["iat"], cmd["exp"], now)
    return cmd, ""


def _fields_problem(cmd, gw_id):
    if not isinstance(cmd, dict) or cmd.get("v") != 1:
        return "malformed: payload must be an object with v = 1"
    for key, typ in (("gw", str), ("id", str), ("cmd", str), ("iat", int), ("exp", int), ("args", dict)):
        if not isinstance(cmd.get(key), typ) or isinstance(cmd.get(key), bool):
            return "malformed: %r missing or of the wrong type" % key
    if cmd["gw"] != gw_id:
        return "wrong gateway: addressed to %r" % cmd["gw"]
    if not 1 <= len(cmd["id"]) <= 64:
        return "malformed: id must be 1-64 characters"
    if cmd["cmd"] not in COMMANDS:
        return "unknown command %r" % cmd["cmd"]
    return ""


def _args_problem(name, args):
    for key in COMMANDS[name]:
        if key not in args:
            return "bad arguments: %s needs %r" % (name, key)
    for key in args:
        if key not in COMMANDS[name]:
            return "bad arguments: %s takes no %r" % (name, key)
    if name == "set_interval":
        v = args["interval_s"]
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 3600:
            return "bad arguments: interval_s must be a whole number 1-3600"
    if name == "resend":
        a, b = args["from_seq"], args["to_seq"]
        if not (isinstance(a, int) and isinstance(b, int)) or a < 1 or b < a or b - a >= 10000:
            return "bad arguments: need 1 <= from_seq <= to_seq, at most 10000 messages"
    if name == "sync_time" and (not isinstance(args["t"], int) or args["t"] < 1577836800):
        return "bad arguments: t must be Unix seconds after 2020-01-01"
    if name == "set_tariff" and not isinstance(args["tariff"], dict):
        return "bad arguments: tariff must be an object"
    return ""


def make(gw, cmd_id, name, args, iat, exp, sign_raw, kid):
    """Build a signed command (used by the platform-side tools and by tests)."""
    from pilecore import jsonc

    body = {"v": 1, "gw": gw, "id": cmd_id, "iat": iat, "exp": exp, "cmd": name, "args": args}
    head = envelope.b64url(jsonc.dumps({"alg": "ES256", "kid": kid}).encode())
    return envelope.sign_compact(head, jsonc.dumps(body).encode(), sign_raw)[0]
