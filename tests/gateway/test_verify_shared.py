"""`pilegate verify` as a platform operator runs it: two instances splitting one gateway's
messages through an MQTT 5 shared subscription into one store, and the final `--report`."""

from __future__ import annotations

import subprocess
import sys

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric import ec
from e2e import wait_for

from pilecore.envelope import Chain
from pilegate.keys import DeviceKey
from piletools.receiver import KeyRegister, Receiver
from piletools.verify import Subscriber

N = 60


def publish_chain(broker, key, n, skip=()):
    chain = Chain("GW-S", "site-s", key.kid, key.sign_raw, 1)
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fake-gateway")
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    for i in range(n):
        p = chain.prepare("telemetry", {"i": i}, 1764150000 + i, "ntp")
        chain.commit(p)
        if i + 1 not in skip:
            c.publish("pilegate/v1/site-s/GW-S/telemetry", p.jws, qos=1).wait_for_publish(5)
    c.loop_stop()
    c.disconnect()


def report(store, tmp_path, keys_file):
    return subprocess.run(
        [sys.executable, "-m", "pilegate.cli", "verify", "--report", "--store", str(store), "--keys", str(keys_file)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_two_verifiers_share_the_work_and_the_store_accounts_for_all(broker, tmp_path):
    key = DeviceKey(ec.generate_private_key(ec.SECP256R1()))
    reg = KeyRegister()
    reg.add("GW-S", key.public_pem)
    store = tmp_path / "verify.db"
    subs = [
        Subscriber(
            Receiver(reg, store=store, from_first_seen=False),
            broker.url,
            "pilegate/v1/+/+/+",
            share="platform",
            client_id=f"verifier-{i}",
        ).start()
        for i in range(2)
    ]
    for s in subs:
        wait_for(s.subscribed.is_set, 10, "verifier subscribed")
    publish_chain(broker, key, N)
    wait_for(lambda: sum(s.receiver.account("GW-S").messages for s in subs) >= N, 20, "every message")
    for s in subs:
        s.stop()
    counts = [s.receiver.account("GW-S").messages for s in subs]
    assert sum(counts) == N and all(0 < c < N for c in counts), counts
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(f'[[key]]\ngateway = "GW-S"\npem = """\n{key.public_pem}"""\n')
    proc = report(store, tmp_path, keys_file)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"GW-S: OK: {N} messages (seq 1-{N})" in proc.stdout


def test_report_fails_on_a_gap(broker, tmp_path):
    key = DeviceKey(ec.generate_private_key(ec.SECP256R1()))
    reg = KeyRegister()
    reg.add("GW-S", key.public_pem)
    store = tmp_path / "verify.db"
    sub = Subscriber(Receiver(reg, store=store), broker.url, "pilegate/v1/+/+/+", client_id="verifier").start()
    wait_for(sub.subscribed.is_set, 10, "verifier subscribed")
    publish_chain(broker, key, 10, skip={4, 5})
    wait_for(lambda: sub.receiver.account("GW-S").messages >= 8, 20, "the messages")
    sub.stop()
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(f'[[key]]\ngateway = "GW-S"\npem = """\n{key.public_pem}"""\n')
    proc = report(store, tmp_path, keys_file)
    assert proc.returncode == 1
    assert "gaps: 4-5" in proc.stdout


def test_report_fails_on_a_bad_signature_seen_by_any_instance(broker, tmp_path):
    key = DeviceKey(ec.generate_private_key(ec.SECP256R1()))
    reg = KeyRegister()
    reg.add("GW-S", key.public_pem)
    store = tmp_path / "verify.db"
    sub = Subscriber(Receiver(reg, store=store), broker.url, "pilegate/v1/+/+/+", client_id="verifier").start()
    wait_for(sub.subscribed.is_set, 10, "verifier subscribed")
    publish_chain(broker, key, 3)
    forger = DeviceKey(ec.generate_private_key(ec.SECP256R1()))
    forged = Chain("GW-S", "site-s", key.kid, forger.sign_raw, 1).prepare("telemetry", {}, 1, "ntp").jws
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="forger")
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    c.publish("pilegate/v1/site-s/GW-S/telemetry", forged, qos=1).wait_for_publish(5)
    c.loop_stop()
    wait_for(lambda: sub.receiver.account("GW-S").bad_signatures == 1, 20, "the forgery")
    sub.stop()
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(f'[[key]]\ngateway = "GW-S"\npem = """\n{key.public_pem}"""\n')
    proc = report(store, tmp_path, keys_file)
    assert proc.returncode == 1 and "1 bad signatures" in proc.stdout
