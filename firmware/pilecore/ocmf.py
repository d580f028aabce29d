"""OCMF billing records: one signed string per finished charging session.

OCMF (Open Charge Metering Format, S.A.F.E. e.V.) is what charging-record verifiers read:
    OCMF|<payload JSON>|<signature JSON>
The signature is ECDSA-secp256r1-SHA256 over the exact bytes of the payload section, as a DER
SEQUENCE {r, s} written in hex (the OCMF defaults for SE and SM, so they are left out).

What this is and is not: the signature is made by the gateway with its device key, over the
readings it took from the pile's own meter.  It proves that the record left this gateway
unchanged.  It is NOT the signature of a certified (calibration-law, Eichrecht/MID) meter: the
meter itself signs nothing, and the gateway is not a certified signature component.
docs/ocmf.md says so to every reader of the records.

Contracts:
  - `build(session, ctx, sign)` is deterministic: the same session, ctx and signer give the
    same string on CPython and MicroPython.  The payload is written by the small serialiser
    below (fixed key order, no spaces, ASCII only: other characters and "|" are \\u-escaped),
    never by json.dumps, and energy values are formatted from integer Wh, never from floats.
  - `sign` is any callable(bytes) -> DER signature bytes: `signer(d)` for pilecore.ecdsa, or
    on the Pi `lambda m: key.sign(m, ec.ECDSA(hashes.SHA256()))` with `cryptography`.  The
    DER it returns is checked (pilecore.ecdsa.parse_sig_der) before it is written.
  - `parse(text)` returns (payload dict, payload bytes, DER signature) and raises ValueError for
    anything that is not one OCMF string signed with ECDSA-secp256r1-SHA256 (hex, DER).
  - Every problem of a session is visible in the record (see `meter_status`): a flagged
    session is never written with status "G".

Payload written (keys in this order; optional ones only when ctx gives them):
  FV "1.0"; GI, GS, GV gateway identification, serial, firmware version; PG "T<counter>";
  MV, MM, MS, MF meter vendor, model, serial, firmware; IS, IL, IF, IT, ID user assignment
  (default: IS false, IL "NONE", IT "NONE": the gateway does not know who charged);
  CT, CI charge point identification; XP the pile id (vendor extension; OCMF reserves top-level
  keys starting with U..Z for vendors); XF the session's flags, only when there are any;
  RD [begin reading, end reading], each with TM, TX ("B"/"E"), RV, RI, RU "kWh", RT, EF, ST.
"""

import binascii
import json

from pilecore import civiltime, ecdsa

HEADER = "OCMF"
FORMAT_VERSION = "1.0"
SIGNATURE_ALGORITHM = "ECDSA-secp256r1-SHA256"
OBIS_IMPORT = "1-b:1.8.0"  # active energy import (+A), total, as OCMF's own example writes it
UNIT = "kWh"
CURRENT_TYPES = ("AC", "DC")
RESOLUTIONS_WH = (1, 10, 100, 1000)

# OCMF meter status letter for a session flag, most severe first: a reading gets the letter of
# the most severe flag it carries.  Flags not listed (and not time flags) give "E".
STATUS_BY_FLAG = (
    ("swapped", "X"),  # EXCHANGED: the serial no longer matches the bound meter
    ("energy_backwards", "M"),  # MANIPULATED: the energy register went backwards
    ("offline", "T"),  # TIMEOUT: the meter did not answer
    ("no_reading", "F"),  # READ_ERROR: no valid readout at begin or end
    ("unverified", "E"),  # OTHER_ERROR: the meter's identity was not confirmed
    ("unmetered", "E"),  # OTHER_ERROR: the port said unmetered without a reason
)
TIME_FLAGS = ("clock_backwards",)

_USER_KEYS = ("IS", "IL", "IF", "IT", "ID")


# ---------------------------------------------------------------------------------------------
# Deterministic JSON writer for the payload


class _Obj:
    """A JSON object with its keys in the given order: a list of (key, value) pairs."""

    def __init__(self, pairs):
        self.pairs = pairs


class _Num:
    """A JSON number written exactly as the given text."""

    def __init__(self, text):
        self.text = text


def _str(s, out):
    out.append('"')
    for ch in s:
        c = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif c < 0x20 or c > 0x7E or ch == "|":
            # Plain ASCII keeps the payload bytes identical everywhere; "|" separates sections.
            if c > 0xFFFF:
                c -= 0x10000
                out.append("\\u%04x\\u%04x" % (0xD800 + (c >> 10), 0xDC00 + (c & 0x3FF)))
            else:
                out.append("\\u%04x" % c)
        else:
            out.append(ch)
    out.append('"')


def _enc(v, out):
    if v is True:
        out.append("true")
    elif v is False:
        out.append("false")
    elif isinstance(v, str):
        _str(v, out)
    elif isinstance(v, _Num):
        out.append(v.text)
    elif isinstance(v, int):
        out.append("%d" % v)
    elif isinstance(v, _Obj):
        out.append("{")
        for i in range(len(v.pairs)):
            if i:
                out.append(",")
            k, x = v.pairs[i]
            _str(k, out)
            out.append(":")
            _enc(x, out)
        out.append("}")
    elif isinstance(v, (list, tuple)):
        out.append("[")
        for i in range(len(v)):
            if i:
                out.append(",")
            _enc(v[i], out)
        out.append("]")
    else:
        raise ValueError("cannot write %r into an OCMF payload" % (v,))


def _dumps(v):
    out = []
    _enc(v, out)
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# Values


def resolution_for_step(step_wh):
    """The coarsest OCMF resolution (1000, 100, 10 or 1 Wh: RV's decimals) that writes every
    multiple of a meter's energy step exactly: the largest power of ten dividing the step.
    A 10 Wh step gives 10 (two decimals); 400 Wh (a CT ratio of 40 on 10 Wh) gives 100; a step
    that is not a whole number of Wh gives 1.  So RV is written at the meter's resolution and a
    short session never rounds to nothing (issue 9, defect #8)."""
    if not isinstance(step_wh, int) or isinstance(step_wh, bool) or step_wh < 1:
        return 1
    for r in (1000, 100, 10):
        if step_wh % r == 0:
            return r
    return 1


def kwh(wh, resolution_wh=1):
    """Energy register `wh` (int Wh) as kWh text with the decimals of the meter's resolution.

    resolution_wh 1 -> 3 decimals ("2935.600"), 10 -> 2, 100 -> 1, 1000 -> 0 ("2935").  The
    value is truncated to the resolution, as a register display is.  Integer arithmetic only.
    """
    if not isinstance(wh, int) or isinstance(wh, bool) or wh < 0:
        raise ValueError("energy must be a non-negative int (Wh), got %r" % (wh,))
    if resolution_wh not in RESOLUTIONS_WH:
        raise ValueError("resolution_wh must be one of 1, 10, 100, 1000, got %r" % (resolution_wh,))
    decimals = (3, 2, 1, 0)[RESOLUTIONS_WH.index(resolution_wh)]
    whole = wh // 1000
    if decimals == 0:
        return "%d" % whole
    frac = "%03d" % (wh % 1000)
    return "%d.%s" % (whole, frac[:decimals])


def meter_status(flags):
    """OCMF meter status (ST) for a list of session flags: "G" when no meter flag is set."""
    worst = None
    for f in flags:
        if f in TIME_FLAGS:
            continue
        rank = len(STATUS_BY_FLAG)
        for i in range(len(STATUS_BY_FLAG)):
            if STATUS_BY_FLAG[i][0] == f:
                rank = i
                break
        if worst is None or rank < worst:
            worst = rank
    if worst is None:
        return "G"
    if worst == len(STATUS_BY_FLAG):
        return "E"
    return STATUS_BY_FLAG[worst][1]


def error_flags(flags):
    """OCMF error flags (EF) for a list of session flags: "E" energy, "t" time, or ""."""
    energy = False
    time = False
    for f in flags:
        if f in TIME_FLAGS:
            time = True
        else:
            energy = True
    return ("E" if energy else "") + ("t" if time else "")


def _text(ctx, key, required=False):
    v = ctx.get(key)
    if v is None:
        if required:
            raise ValueError("OCMF context needs %s" % key)
        return None
    if not isinstance(v, str) or not v:
        raise ValueError("OCMF context %s must be a non-empty string, got %r" % (key, v))
    return v


def _reading(rd, tx, flags, res, rt):
    pairs = [("TM", civiltime.ocmf_time(rd["t"], rd["sync"])), ("TX", tx)]
    if rd["wh"] is not None:
        pairs.append(("RV", _Num(kwh(rd["wh"], res))))
        pairs.append(("RI", OBIS_IMPORT))
        pairs.append(("RU", UNIT))
        pairs.append(("RT", rt))
    else:
        # OCMF allows RV, RI, RU and RT to be left out of a reading that only reports an error.
        flags = flags + ["no_reading"]
    ef = error_flags(flags)
    if ef:
        pairs.append(("EF", ef))
    pairs.append(("ST", meter_status(flags)))
    return _Obj(pairs)


def payload(session, ctx):
    """The payload section (str) of the OCMF record of a finished session; see build()."""
    if not isinstance(ctx, dict):
        raise ValueError("OCMF context must be a dict")
    pg = ctx.get("PG")
    if not isinstance(pg, int) or isinstance(pg, bool) or pg < 0:
        raise ValueError("OCMF context PG must be the non-negative int counter, got %r" % (pg,))
    rt = ctx.get("RT", "AC")
    if rt not in CURRENT_TYPES:
        raise ValueError("OCMF context RT must be AC or DC, got %r" % (rt,))
    res = ctx.get("resolution_wh", 1)
    ms = _text(ctx, "MS") or session.get("meter_serial")
    if not ms:
        raise ValueError("OCMF needs the meter serial (ctx MS or the session's meter_serial)")
    pairs = [("FV", FORMAT_VERSION)]
    for key in ("GI", "GS", "GV"):
        v = _text(ctx, key, key == "GS")
        if v is not None:
            pairs.append((key, v))
    pairs.append(("PG", "T%d" % pg))
    for key in ("MV", "MM"):
        v = _text(ctx, key)
        if v is not None:
            pairs.append((key, v))
    pairs.append(("MS", ms))
    v = _text(ctx, "MF")
    if v is not None:
        pairs.append(("MF", v))
    user = {"IS": False, "IL": "NONE", "IT": "NONE"}
    for key in _USER_KEYS:
        if key in ctx:
            user[key] = ctx[key]
    if not isinstance(user["IS"], bool):
        raise ValueError("OCMF context IS must be a bool")
    if "IF" in user:
        fl = user["IF"]
        if not isinstance(fl, (list, tuple)) or len(fl) > 4:
            raise ValueError("OCMF context IF must be a list of at most 4 strings")
        for x in fl:
            if not isinstance(x, str):
                raise ValueError("OCMF context IF must be a list of at most 4 strings")
    for key in ("IL", "IT", "ID"):
        if key in user and not isinstance(user[key], str):
            raise ValueError("OCMF context %s must be a string" % key)
    for key in _USER_KEYS:
        if key in user:
            pairs.append((key, user[key]))
    ci = _text(ctx, "CI")
    if ci is not None:
        pairs.append(("CT", _text(ctx, "CT") or "EVSEID"))
        pairs.append(("CI", ci))
    pairs.append(("XP", "%s" % session["pile"]))
    flags = list(session.get("flags") or [])
    if flags:
        pairs.append(("XF", flags))
    start = session["start"]
    end = session["end"]
    begin_flags = list(start.get("flags") or [])
    end_flags = flags + [f for f in (end.get("flags") or []) if f not in flags]
    pairs.append(("RD", [_reading(start, "B", begin_flags, res, rt), _reading(end, "E", end_flags, res, rt)]))
    return _dumps(_Obj(pairs))


def _signature_section(der):
    return '{"SA":"%s","SD":"%s"}' % (SIGNATURE_ALGORITHM, binascii.hexlify(der).decode().upper())


def build(session, ctx, sign):
    """The OCMF string of a finished session (a dict from pilecore.sessions).

    ctx: GS (gateway serial, required), PG (int pagination counter, required: the caller
    persists it and adds 1 per record), GI, GV, MV, MM, MF (optional strings), MS (meter
    serial; default the session's meter_serial), RT ("AC" default or "DC"), resolution_wh
    (1 default, 10, 100 or 1000), CI and CT (charge point id, CT default "EVSEID"), IS, IL,
    IF, IT, ID (user assignment, when the port knows who charged).
    sign: callable(bytes) -> DER signature of those bytes (ECDSA P-256, SHA-256).
    ValueError for a bad ctx or a signer that does not return a DER signature.
    """
    body = payload(session, ctx)
    der = sign(body.encode())
    if not isinstance(der, (bytes, bytearray)):
        raise ValueError("sign must return DER signature bytes, got %r" % (type(der),))
    der = bytes(der)
    ecdsa.parse_sig_der(der)  # raises ValueError unless it is one DER SEQUENCE {r, s}
    return HEADER + "|" + body + "|" + _signature_section(der)


def signer(d):
    """A `sign` callable for build() from a pilecore.ecdsa private key d."""

    def sign(msg):
        r, s = ecdsa.sign(d, msg)
        return ecdsa.sig_der(r, s)

    return sign


def parse(text):
    """(payload dict, payload bytes, DER signature bytes) of an OCMF string.

    The payload bytes are exactly those that were signed.  ValueError unless the text is
    "OCMF|{payload}|{signature}" with JSON objects, SA absent or ECDSA-secp256r1-SHA256, SE
    absent or "hex", SM absent or "application/x-der", and SD valid hex.
    """
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode()
    if not isinstance(text, str):
        raise ValueError("OCMF text must be str or bytes")
    parts = text.strip().split("|")
    if len(parts) != 3 or parts[0] != HEADER:
        raise ValueError("not an OCMF string OCMF|payload|signature")
    try:
        body = json.loads(parts[1])
        sig = json.loads(parts[2])
    except ValueError:
        raise ValueError("OCMF sections are not valid JSON")
    if not isinstance(body, dict) or not isinstance(sig, dict):
        raise ValueError("OCMF payload and signature sections must be JSON objects")
    if sig.get("SA", SIGNATURE_ALGORITHM) != SIGNATURE_ALGORITHM:
        raise ValueError("unsupported OCMF signature algorithm %r" % (sig.get("SA"),))
    if sig.get("SE", "hex") != "hex":
        raise ValueError("unsupported OCMF signature encoding %r" % (sig.get("SE"),))
    if sig.get("SM", "application/x-der") != "application/x-der":
        raise ValueError("unsupported OCMF signature mime type %r" % (sig.get("SM"),))
    sd = sig.get("SD")
    if not isinstance(sd, str) or not sd or len(sd) % 2:
        raise ValueError("OCMF signature data SD must be hex")
    try:
        der = binascii.unhexlify(sd)
    except Exception:  # binascii.Error on CPython, ValueError on MicroPython
        raise ValueError("OCMF signature data SD must be hex")
    return body, parts[1].encode(), der


def verify(text, pub):
    """True when the OCMF string carries a valid signature of its payload under public key pub
    ((x, y) as pilecore.ecdsa uses).  ValueError when the text is not OCMF (see parse)."""
    _body, data, der = parse(text)
    try:
        r, s = ecdsa.parse_sig_der(der)
    except ValueError:
        return False
    return ecdsa.verify(pub, data, r, s)
