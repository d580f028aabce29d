"""Receiver rules (docs/telemetry.md section 5) against messages made by the real chain code."""

from __future__ import annotations

import base64
import hashlib
import json

from cryptography.hazmat.primitives.asymmetric import ec

from pilecore.envelope import Chain
from pilegate.keys import DeviceKey
from piletools.receiver import KeyRegister, Receiver

PREFIX = "pilegate/v1"


def device():
    key = DeviceKey(ec.generate_private_key(ec.SECP256R1()))
    reg = KeyRegister()
    reg.add("GW-1", key.public_pem)
    return key, reg


def messages(key, n, kinds=("telemetry",)):
    chain = Chain("GW-1", "S1", key.kid, key.sign_raw, 1)
    out = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        p = chain.prepare(kind, {"i": i}, 1000 + i, "ntp")
        chain.commit(p)
        out.append((f"{PREFIX}/S1/GW-1/{kind}", p.jws.encode()))
    return chain, out


def test_in_order_stream_is_clean():
    key, reg = device()
    rx = Receiver(reg, PREFIX)
    _, msgs = messages(key, 5, ("birth", "telemetry", "event", "billing", "ack"))
    assert [rx.accept(t, m).status for t, m in msgs] == ["accepted"] * 5
    text, clean = rx.report()
    assert clean and "5 messages (seq 1-5)" in text


def test_duplicates_gaps_and_late_arrivals():
    key, reg = device()
    rx = Receiver(reg, PREFIX)
    _, msgs = messages(key, 6)
    for i in (0, 1, 1, 4, 5):  # seq 3 and 4 missing, seq 2 twice
        rx.accept(*msgs[i])
    a = rx.accounts["GW-1"]
    assert a.duplicates == 1 and a.gaps() == [(3, 4)]
    assert not rx.report()[1]
    rx.accept(*msgs[3])
    rx.accept(*msgs[2])  # backlog drains; chain checked both sides
    assert a.gaps() == [] and a.broken_links == [] and rx.report()[1]


def test_replay_with_a_used_seq_is_an_alarm():
    key, reg = device()
    rx = Receiver(reg, PREFIX)
    _, msgs = messages(key, 2)
    rx.accept(*msgs[0])
    other = Chain("GW-1", "S1", key.kid, key.sign_raw, 9)  # e.g. restored old storage
    p = other.prepare("telemetry", {"forged": True}, 5, "ntp")
    v = rx.accept(f"{PREFIX}/S1/GW-1/telemetry", p.jws.encode())
    assert v.status == "replay" and rx.accounts["GW-1"].replays == 1
    assert not rx.report()[1]


def test_tampered_payload_and_wrong_key_are_bad_signatures():
    key, reg = device()
    rx = Receiver(reg, PREFIX)
    _, msgs = messages(key, 1)
    topic, jws = msgs[0]
    h, p, s = jws.decode().split(".")
    body = json.loads(base64.urlsafe_b64decode(p + "=="))
    body["data"] = {"i": 999}
    p2 = base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("=")
    assert rx.accept(topic, f"{h}.{p2}.{s}".encode()).status == "bad_signature"
    stranger = DeviceKey(ec.generate_private_key(ec.SECP256R1()))
    _, msgs2 = messages(stranger, 1)
    assert rx.accept(*msgs2[0]).status == "bad_signature"
    assert rx.accept(topic, b"not a jws").status == "malformed"
    assert rx.accounts["GW-1"].bad_signatures == 2


def test_message_on_the_wrong_topic_is_rejected():
    key, reg = device()
    rx = Receiver(reg, PREFIX)
    _, msgs = messages(key, 1)
    assert rx.accept(f"{PREFIX}/S1/GW-1/billing", msgs[0][1]).status == "misrouted"


def test_broken_chain_link_is_reported():
    key, reg = device()
    rx = Receiver(reg, PREFIX)
    chain = Chain("GW-1", "S1", key.kid, key.sign_raw, 1)
    p1 = chain.prepare("telemetry", {}, 1, "ntp")
    chain.commit(p1)
    chain.head = "ab" * 32  # a gateway that lost its chain head
    p2 = chain.prepare("telemetry", {}, 2, "ntp")
    rx.accept(f"{PREFIX}/S1/GW-1/telemetry", p1.jws.encode())
    v = rx.accept(f"{PREFIX}/S1/GW-1/telemetry", p2.jws.encode())
    assert v.problems == ["chain broken at seq 2"]
    assert not rx.report()[1]


def test_declared_loss_closes_the_gap_and_keeps_the_chain_checkable():
    key, reg = device()
    rx = Receiver(reg, PREFIX)
    chain, msgs = messages(key, 3)
    dropped_hash = hashlib.sha256(msgs[1][1].rsplit(b".", 1)[0]).hexdigest()
    p = chain.prepare(
        "event", {"events": [{"type": "outbox.dropped", "dropped": [{"seq": 2, "hash": dropped_hash}]}]}, 10, "ntp"
    )
    chain.commit(p)
    for i in (0, 2):
        rx.accept(*msgs[i])
    rx.accept(f"{PREFIX}/S1/GW-1/event", p.jws.encode())
    a = rx.accounts["GW-1"]
    assert a.gaps() == [] and a.declared_lost == {2} and a.broken_links == []
    text, clean = rx.report()
    assert clean and "1 declared lost" in text
