"""OCMF billing records: exact bytes, signatures, statuses, parsing (CPython + MicroPython).

The golden strings below are the same on both interpreters: that is the determinism contract
(the signature is deterministic too, RFC 6979).
"""

import json

from mpytest import raises

from pilecore import ecdsa, ocmf
from pilecore.sessions import SessionTracker

SEED = b"pilegate ocmf test key seed, forty bytes or more"
CTX = {"GI": "pilegate ESP32", "GS": "PG-000123", "GV": "0.1.0", "PG": 42, "MV": "Acrel", "MM": "ADL400"}

GOLDEN_PAYLOAD = (
    '{"FV":"1.0","GI":"pilegate ESP32","GS":"PG-000123","GV":"0.1.0","PG":"T42","MV":"Acrel",'
    '"MM":"ADL400","MS":"2301-0457","IS":false,"IL":"NONE","IT":"NONE","XP":"P-07","RD":['
    '{"TM":"2026-11-26T11:16:55,000+0000 S","TX":"B","RV":2935.600,"RI":"1-b:1.8.0",'
    '"RU":"kWh","RT":"AC","ST":"G"},'
    '{"TM":"2026-11-26T15:16:55,000+0000 S","TX":"E","RV":2965.149,"RI":"1-b:1.8.0",'
    '"RU":"kWh","RT":"AC","ST":"G"}]}'
)
GOLDEN_SIGNATURE = (
    '{"SA":"ECDSA-secp256r1-SHA256","SD":"3045022100DB15C3253671316A847C00BCECA879DF0C3BB0B5D0'
    '58624D5D34A4986773797E022004521CF0AE4FEB03C7A8C4536196251A7D43AB1F78A3F4B9A8E7D95794C01118"}'
)

_key = []


def key():
    """(d, pub) of the test key, computed once (public_key costs a scalar multiplication)."""
    if not _key:
        d = ecdsa.private_key_from_seed(SEED)
        _key.append((d, ecdsa.public_key(d)))
    return _key[0]


def session(flags=None, start_flags=None, end_flags=None, start_wh=2935600, end_wh=2965149, pile="P-07", sync="S"):
    def rd(t, wh, fl):
        return {"t": t, "wh": wh, "sync": sync, "serial": "2301-0457", "flags": fl or []}

    flags = flags or []
    return {
        "pile": pile,
        "start": rd(1795691815, start_wh, start_flags),
        "end": rd(1795706215, end_wh, end_flags),
        "energy_wh": None if start_wh is None or end_wh is None else end_wh - start_wh,
        "meter_serial": "2301-0457",
        "reason": "unplugged",
        "started_by": "plug",
        "flags": flags,
        "metered": not flags,
    }


def readings(text):
    return ocmf.parse(text)[0]["RD"]


def test_payload_is_byte_exact():
    assert ocmf.payload(session(), CTX) == GOLDEN_PAYLOAD


def test_build_is_deterministic_and_signed():
    d, pub = key()
    text = ocmf.build(session(), CTX, ocmf.signer(d))
    assert text == "OCMF|" + GOLDEN_PAYLOAD + "|" + GOLDEN_SIGNATURE
    assert ocmf.build(session(), dict(CTX), ocmf.signer(d)) == text
    assert ocmf.verify(text, pub)
    body, data, der = ocmf.parse(text)
    assert data == GOLDEN_PAYLOAD.encode()
    r, s = ecdsa.parse_sig_der(der)
    assert ecdsa.verify(pub, data, r, s)


def test_payload_fields():
    body = json.loads(ocmf.payload(session(), CTX))
    assert body["FV"] == "1.0" and body["PG"] == "T42" and body["GS"] == "PG-000123"
    assert body["MS"] == "2301-0457" and body["IS"] is False and body["IT"] == "NONE"
    b, e = body["RD"]
    assert (b["TX"], e["TX"]) == ("B", "E")
    assert (b["RI"], b["RU"], b["RT"], b["ST"]) == ("1-b:1.8.0", "kWh", "AC", "G")
    assert "EF" not in b and "EF" not in e and "XF" not in body


def test_tampering_breaks_the_signature():
    d, pub = key()
    text = ocmf.build(session(), CTX, ocmf.signer(d))
    assert not ocmf.verify(text.replace('"RV":2965.149', '"RV":2995.149'), pub)
    assert not ocmf.verify(text.replace('"PG":"T42"', '"PG":"T43"'), pub)
    other = ecdsa.public_key(ecdsa.private_key_from_seed(b"x" * 40))
    assert not ocmf.verify(text, other)


def test_optional_context_fields():
    ctx = dict(CTX)
    ctx.update(
        {
            "MF": "1.02",
            "RT": "DC",
            "CI": "CN*ABC*E0001*1",
            "IS": True,
            "IL": "TRUSTED",
            "IF": ["OCPP_RS_TLS"],
            "IT": "CENTRAL",
            "ID": "ORDER-7781",
            "MS": "OVERRIDE",
        }
    )
    text = ocmf.payload(session(), ctx)
    assert (
        '"MS":"OVERRIDE","MF":"1.02","IS":true,"IL":"TRUSTED","IF":["OCPP_RS_TLS"],'
        '"IT":"CENTRAL","ID":"ORDER-7781","CT":"EVSEID","CI":"CN*ABC*E0001*1","XP":"P-07"' in text
    )
    assert json.loads(text)["RD"][0]["RT"] == "DC"
    ctx["CT"] = "CBIDC"
    assert '"CT":"CBIDC"' in ocmf.payload(session(), ctx)
    minimal = {"GS": "G1", "PG": 0}
    body = json.loads(ocmf.payload(session(), minimal))
    assert "GI" not in body and "MV" not in body and body["PG"] == "T0"


def test_kwh_text_from_integer_wh():
    assert ocmf.kwh(2935600) == "2935.600"
    assert ocmf.kwh(0) == "0.000"
    assert ocmf.kwh(7) == "0.007"
    assert ocmf.kwh(2965149, 10) == "2965.14"  # truncated to the meter's resolution
    assert ocmf.kwh(2965149, 100) == "2965.1"
    assert ocmf.kwh(2965149, 1000) == "2965"
    assert ocmf.kwh(123456789012345) == "123456789012.345"
    for bad in (-1, 1.5, "1", True, None):
        with raises(ValueError):
            ocmf.kwh(bad)
    with raises(ValueError):
        ocmf.kwh(1, 5)
    ctx = dict(CTX)
    ctx["resolution_wh"] = 10
    assert '"RV":2935.60,' in ocmf.payload(session(), ctx)


def test_meter_status_and_error_flags():
    assert ocmf.meter_status([]) == "G"
    assert ocmf.meter_status(["clock_backwards"]) == "G"
    assert ocmf.meter_status(["unverified"]) == "E"
    assert ocmf.meter_status(["offline"]) == "T"
    assert ocmf.meter_status(["unverified", "offline", "swapped"]) == "X"
    assert ocmf.meter_status(["no_reading", "energy_backwards"]) == "M"
    assert ocmf.meter_status(["something_new"]) == "E"
    assert ocmf.error_flags([]) == ""
    assert ocmf.error_flags(["offline"]) == "E"
    assert ocmf.error_flags(["clock_backwards"]) == "t"
    assert ocmf.error_flags(["offline", "clock_backwards"]) == "Et"


def test_flagged_session_is_never_clean():
    d, pub = key()
    s = session(flags=["offline", "unverified"])
    body = json.loads(ocmf.payload(s, CTX))
    b, e = body["RD"]
    assert b["ST"] == "G" and "EF" not in b  # the begin reading itself was fine
    assert e["ST"] == "T" and e["EF"] == "E"  # the session's energy is not usable
    assert body["XF"] == ["offline", "unverified"]
    # A problem at the begin reading shows there too.
    s = session(flags=["swapped"], start_flags=["swapped"])
    b, e = json.loads(ocmf.payload(s, CTX))["RD"]
    assert (b["ST"], b["EF"], e["ST"], e["EF"]) == ("X", "E", "X", "E")
    # Time trouble marks time, not energy.
    b, e = json.loads(ocmf.payload(session(flags=["clock_backwards"]), CTX))["RD"]
    assert (e["ST"], e["EF"]) == ("G", "t")


def test_reading_without_value_is_an_error_event():
    b, e = json.loads(ocmf.payload(session(flags=["no_reading"], start_wh=None), CTX))["RD"]
    for k in ("RV", "RI", "RU", "RT"):
        assert k not in b
    assert (b["ST"], b["EF"]) == ("F", "E")
    assert e["RV"] == 2965.149 and e["ST"] == "F"


def test_unsynchronised_clock_is_written_as_such():
    b, e = json.loads(ocmf.payload(session(sync="U"), CTX))["RD"]
    assert b["TM"].endswith(" U") and e["TM"].endswith(" U")


def test_strings_are_escaped_to_ascii_without_pipes():
    s = session(pile='桩|7 "A"\\\n')
    text = ocmf.payload(s, CTX)
    assert "|" not in text
    for ch in text:
        assert 0x20 <= ord(ch) <= 0x7E
    assert '"XP":"\\u6869\\u007c7 \\"A\\"\\\\\\u000a"' in text
    assert json.loads(text)["XP"] == s["pile"]
    assert '"\\ud83d\\udd0c"' in ocmf.payload(session(pile="\U0001f50c"), CTX)


def test_bad_context_and_signer_are_refused():
    for change in (
        {"GS": None},
        {"GS": ""},
        {"PG": None},
        {"PG": -1},
        {"PG": "T1"},
        {"PG": True},
        {"RT": "XX"},
        {"IS": "yes"},
        {"IF": "RFID_PLAIN"},
        {"GI": 5},
        {"resolution_wh": 3},
        {"IF": ["A", "B", "C", "D", "E"]},
        {"IF": [1]},
        {"ID": 1234},
        {"IT": None},
    ):
        ctx = dict(CTX)
        ctx.update(change)
        with raises(ValueError):
            ocmf.payload(session(), ctx)
    s = session()
    s["meter_serial"] = None
    with raises(ValueError, match="serial"):
        ocmf.payload(s, CTX)
    with raises(ValueError):
        ocmf.build(session(), CTX, lambda m: "not bytes")
    with raises(ValueError):
        ocmf.build(session(), CTX, lambda m: b"\x30\x02\x02\x00")


def test_parse_rejects_what_is_not_ours():
    good_sig = GOLDEN_SIGNATURE
    for text in (
        "",
        "OCMF|{}",
        "OCMX|{}|" + good_sig,
        "OCMF|{}|" + good_sig + "|KEY",
        "OCMF|[]|" + good_sig,
        "OCMF|{bad json|" + good_sig,
        'OCMF|{}|{"SA":"ECDSA-brainpool256r1-SHA256","SD":"00"}',
        'OCMF|{}|{"SE":"base64","SD":"00"}',
        'OCMF|{}|{"SM":"text/plain","SD":"00"}',
        'OCMF|{}|{"SD":"zz"}',
        'OCMF|{}|{"SD":"abc"}',
        "OCMF|{}|{}",
    ):
        with raises(ValueError):
            ocmf.parse(text)
    body, data, der = ocmf.parse(b'OCMF|{"PG":"T1"}|{"SD":"3006020101020101"}\n')
    assert body == {"PG": "T1"} and data == b'{"PG":"T1"}' and der == b"\x30\x06\x02\x01\x01\x02\x01\x01"


def test_tracker_to_record_end_to_end():
    d, pub = key()
    tr = SessionTracker("P-07")
    tr.step(1795691815, 2935600, plug=True, sync=True, serial="2301-0457")
    tr.step(1795695415, 2950000, plug=True, sync=True, serial="2301-0457", unmetered="offline")
    done = tr.step(1795706215, 2965149, plug=False, sync=True, serial="2301-0457")
    text = ocmf.build(done, CTX, ocmf.signer(d))
    assert ocmf.verify(text, pub)
    b, e = readings(text)
    assert (b["RV"], b["ST"]) == (2935.6, "G")
    assert (e["RV"], e["ST"], e["EF"]) == (2965.149, "T", "E")


def test_resolution_is_the_coarsest_power_of_ten_that_writes_every_step_exactly():
    # issue 9 defect #8: a kWh float is not a 1 kWh resolution
    assert ocmf.resolution_for_step(1) == 1
    assert ocmf.resolution_for_step(10) == 10
    assert ocmf.resolution_for_step(100) == 100
    assert ocmf.resolution_for_step(1000) == 1000
    assert ocmf.resolution_for_step(400) == 100  # 10 Wh times a CT ratio of 40
    assert ocmf.resolution_for_step(25) == 1
    assert ocmf.resolution_for_step(2.5) == 1
    assert ocmf.kwh(110117, ocmf.resolution_for_step(1)) == "110.117"
