"""Signed envelope and hash chain (both interpreters); keys from the core signer."""

import json

from mpytest import new_key, raises

from pilecore import ecdsa, envelope, jsonc

D = new_key()
PUB = ecdsa.public_key(D)
KID = envelope.key_id(ecdsa.spki_der(PUB))


def sign_raw(msg):
    r, s = ecdsa.sign(D, msg)
    return ecdsa.sig_raw(r, s)


def verify(jws):
    header, payload, sig, signing_input = envelope.split(jws)
    r, s = ecdsa.parse_sig_raw(sig)
    return header, json.loads(payload), ecdsa.verify(PUB, signing_input, r, s), signing_input


def chain(**kw):
    return envelope.Chain(
        "GW-1", "site-1", KID, sign_raw, kw.get("epoch", 1), kw.get("seq", 0), kw.get("head", envelope.ZERO_HASH)
    )


def test_jsonc_is_compact_sorted_and_utf8():
    assert jsonc.dumps({"b": [1, 2.5, None, True], "a": '中\n"x\\'}) == '{"a":"中\\n\\"x\\\\","b":[1,2.5,null,true]}'
    assert jsonc.dumps({"c": {"z": 1, "a": False}}) == '{"c":{"a":false,"z":1}}'
    assert jsonc.dumps("\x01") == '"\\u0001"'
    with raises(ValueError):
        jsonc.dumps(float("nan"))
    with raises(ValueError):
        jsonc._enc({1: 2}, [])  # keys must be strings (the portable encoder checks)
    assert json.loads(jsonc.dumps({"k": [1, "é", 3.25]})) == {"k": [1, "é", 3.25]}


def test_b64url_round_trip_and_rejects_other_alphabets():
    for data in (b"", b"\xff", b"\xff\xfe", b"\x00\x01\x02\x03", bytes(range(256))):
        enc = envelope.b64url(data)
        assert "=" not in enc and "+" not in enc and "/" not in enc
        assert envelope.b64url_decode(enc) == data
    with raises(ValueError):
        envelope.b64url_decode("ab+c")
    with raises(ValueError):
        envelope.b64url_decode("abcde")


def test_message_is_a_verifiable_jws_with_the_documented_fields():
    c = chain()
    p = c.prepare("telemetry", {"piles": []}, 1700000000, "ntp")
    header, body, ok, signing_input = verify(p.jws)
    assert ok
    assert header == {"alg": "ES256", "kid": KID, "typ": "pilegate+jws"}
    assert body == {
        "v": 1,
        "gw": "GW-1",
        "site": "site-1",
        "epoch": 1,
        "seq": 1,
        "prev": envelope.ZERO_HASH,
        "t": 1700000000,
        "tsync": "ntp",
        "kind": "telemetry",
        "data": {"piles": []},
    }
    assert p.hash == envelope.sha256_hex(signing_input)


def test_chain_links_each_message_to_the_previous():
    c = chain()
    hashes = []
    for i in range(3):
        p = c.prepare("event", {"i": i}, 1000 + i, "none", hist=(i == 2))
        c.commit(p)
        _, body, ok, si = verify(p.jws)
        assert ok and body["seq"] == i + 1
        assert body["prev"] == (hashes[-1] if hashes else envelope.ZERO_HASH)
        assert body.get("hist", False) is (i == 2)
        hashes.append(envelope.sha256_hex(si))
    assert c.seq == 3 and c.head == hashes[-1]


def test_prepare_without_commit_consumes_nothing():
    c = chain(seq=41, head="ab" * 32)
    p1 = c.prepare("telemetry", {}, 1, "ntp")
    p2 = c.prepare("telemetry", {}, 1, "ntp")
    assert p1.seq == p2.seq == 42 and c.seq == 41
    c.commit(p2)
    with raises(ValueError, match="out of order"):
        c.commit(p1)


def test_tampering_breaks_the_signature():
    p = chain().prepare("billing", {"wh": 100}, 1, "ntp")
    h, payload_b64, sig = p.jws.split(".")
    forged = envelope.b64url(envelope.b64url_decode(payload_b64).replace(b'"wh":100', b'"wh":900'))
    assert not verify(".".join((h, forged, sig)))[2]


def test_unchained_state_message_has_no_seq():
    jws = chain(epoch=7).unchained("state", {"state": "offline"}, 5, "none")
    _, body, ok, _ = verify(jws)
    assert ok and "seq" not in body and "prev" not in body and body["epoch"] == 7


def test_split_rejects_malformed():
    with raises(ValueError):
        envelope.split("a.b")
    with raises(ValueError):
        envelope.split("!!.e30.AA")
    with raises(ValueError):
        chain().prepare("cmd", {}, 1, "ntp")


def test_a_pre_serialised_body_gives_the_same_bytes():
    data = {"piles": [{"pile": "P1", "energy_wh": 5, "power_w": 7012.5}], "interval_s": 30}
    a = chain().prepare("telemetry", data, 1700000000, "ntp")
    b = chain().prepare("telemetry", jsonc.Raw(jsonc.dumps(data)), 1700000000, "ntp")
    assert a.payload == b.payload and a.jws == b.jws
