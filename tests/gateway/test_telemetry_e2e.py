"""End to end: `pilegate run` against simulated meters and a real mosquitto (plain and TLS).

Every message is checked by the reference receiver (cryptography only, following
docs/telemetry.md); billing records are checked with pyocmf; commands are signed with a
platform key made here, and bad ones (unsigned, wrong key, replayed, expired, tampered) are
refused with a signed ack.
"""

from __future__ import annotations

import time

import pyocmf
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from e2e import (
    OneSession,
    Platform,
    billing,
    device_pem,
    spki_hex,
    start_gateway,
    stop,
    stored_last,
    wait_for,
    write_site,
)
from simsite import pile_block

from pilecore import envelope
from pilegate.keys import DeviceKey
from pilehil import ConstantLoad


def test_signed_telemetry_commands_and_billing_over_plain_mqtt(sim_site, broker, tmp_path):
    body = pile_block("P1", 1, "eastron-sdm120", serial="12345678") + pile_block("P2", 2, "chint-dtsu666")
    s = sim_site(body, loads={1: OneSession(3, 13), 2: ConstantLoad(11000, 3)})
    platform = Platform(tmp_path, broker)
    site_path = write_site(s, tmp_path, broker, platform, "\n[sessions]\nstart_after_s = 0\nstop_after_s = 0\n")
    data = tmp_path / "data"
    pem = device_pem(site_path, data)
    assert (data / "device-key.pem").stat().st_mode & 0o777 == 0o600
    assert "PRIVATE" not in pem
    platform.listen(pem)
    gw = start_gateway(site_path, data)
    try:
        acct = lambda: platform.account()  # noqa: E731
        wait_for(
            lambda: (
                acct()
                and acct().last_telemetry
                and all("energy_wh" in p for p in acct().last_telemetry["data"]["piles"])
            ),
            30,
            "telemetry with readings",
        )
        # a car charges on pile 1 for ten seconds (the simulator's clock now runs at real
        # speed, so energy rises as fast as a real 7 kW charge): a billing record follows
        wait_for(lambda: any(b for b in billing(platform)), 40, "a billing record", tick=lambda: s.clock.advance(0.05))
        # commands: one good, and every kind of bad one
        platform.send(platform.command("c-good", "set_interval", {"interval_s": 2}))
        stranger = DeviceKey(ec.generate_private_key(ec.SECP256R1()))
        platform.send(platform.command("c-wrongkey", "reboot", {}, key=stranger))
        platform.send(platform.command("c-good", "set_interval", {"interval_s": 3}))  # replayed id
        platform.send(platform.command("c-old", "reboot", {}, iat=int(time.time()) - 900, exp=int(time.time()) - 800))
        h, p, sig = platform.command("c-tamper", "set_interval", {"interval_s": 5}).split(".")
        platform.send(
            ".".join((h, envelope.b64url(envelope.b64url_decode(p).replace(b'"interval_s":5', b'"interval_s":9')), sig))
        )
        platform.send(envelope.b64url(b'{"alg":"none"}') + "." + envelope.b64url(b'{"v":1}') + ".")
        wait_for(lambda: len(platform.acks) >= 6, 20, "six acks")
    finally:
        out = stop(gw)
    # everything the gateway had acknowledged by the broker reaches the platform
    acked = stored_last(data)[0]
    wait_for(
        lambda: platform.account().high >= acked and not platform.account().gaps(), 20, f"seq 1-{acked} at the receiver"
    )
    platform.sub.stop()
    acks: dict = {}
    for a in platform.acks:
        acks.setdefault(a.get("cmd_id"), a)  # the first answer per id
    assert acks["c-good"]["ok"] and acks["c-good"]["result"] == {"interval_s": 2}
    reasons = [a["reason"] for a in platform.acks if not a["ok"]]
    assert any(r.startswith("unknown key id") for r in reasons)
    assert any(r.startswith("replayed") for r in reasons)
    assert any(r.startswith("expired") for r in reasons)
    assert any(r == "bad signature" for r in reasons)
    assert any(r.startswith("unsigned") for r in reasons)
    text, clean = platform.receiver.report()
    assert clean, text
    a = platform.account()
    assert a.messages > 5 and a.bad_signatures == 0 and not a.gaps()
    # readings are what the simulator served
    p2 = next(p for p in a.last_telemetry["data"]["piles"] if p["pile"] == "P2")
    assert p2["power_w"] == pytest.approx(11000, abs=2) and p2["metered"]
    # the billing record verifies with pyocmf and the device key
    rec = billing(platform)[0]
    o = pyocmf.OCMF.from_string(rec["ocmf"], strict=True)
    assert o.verify_signature(spki_hex(pem)) is True
    assert rec["session"]["metered"] and rec["session"]["energy_wh"] > 0
    assert "Traceback" not in out and "PRIVATE KEY" not in out


def test_tls_is_verified_and_never_falls_back(sim_site, tls_broker, tmp_path):
    s = sim_site(pile_block("P1", 1, "eastron-sdm120", serial="12345678"), loads={1: ConstantLoad(3000, 1)})
    platform = Platform(tmp_path, tls_broker)
    site_path = write_site(s, tmp_path, tls_broker, platform)
    data = tmp_path / "data"
    platform.listen(device_pem(site_path, data))
    gw = start_gateway(site_path, data)
    try:
        wait_for(lambda: platform.account() and platform.account().messages >= 3, 30, "messages over TLS")
    finally:
        stop(gw)
    platform.sub.stop()
    assert platform.receiver.report()[1]
    # the same gateway with a CA that did not sign the broker: no connection, no plain fallback
    other_ca = tmp_path / "other-ca.pem"
    from pilehil.broker import make_pki

    other_ca.write_bytes(make_pki(tmp_path / "other").ca.read_bytes())
    bad = site_path.read_text().replace(str(tls_broker.pki.ca), str(other_ca))
    bad_path = tmp_path / "bad-site.toml"
    bad_path.write_text(bad)
    first_run_high = platform.account().high
    platform.listen(device_pem(site_path, data))
    log = tmp_path / "bad-gateway.log"
    gw = start_gateway(bad_path, data, log=log)
    wait_for(lambda: "certificate verify failed" in log.read_text(), 30, "the TLS refusal in the gateway log")
    stop(gw)
    platform.sub.stop()
    # only the retained birth of the first run arrives; nothing new crossed without TLS
    assert platform.account().high <= first_run_high
