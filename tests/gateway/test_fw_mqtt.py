"""The ESP32's MQTT adapter (firmware/pilefw/mqtt.py) with micropython-lib's umqtt.simple,
run on CPython against a real mosquitto.

umqtt.simple 1.3.4 is fetched by `make setup` into build/deps/umqtt/ and runs unchanged; only
MicroPython's module names (usocket, ustruct, ubinascii) are mapped onto CPython's real sockets
(tests/helpers/umqtt_compat.py).  The test drives `Link.step(now_ms)` as the firmware's main
loop does, with its own millisecond clock for the reconnect schedule.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import paho.mqtt.client as mqtt
import pytest
import umqtt_compat
from e2e import wait_for

from pilecore import ecdsa, envelope
from pilecore.envelope import Chain
from pilefw.mqtt import Link
from pilefw.outbox import Outbox

simple = umqtt_compat.require()
PREFIX = "pilegate/v1/test-site/GW-T1"


class Listener:
    """A paho subscriber on the broker: what the platform would receive."""

    def __init__(self, broker, topic: str = PREFIX + "/#") -> None:
        self.msgs: list[tuple[str, bytes, bool]] = []
        self.subscribed = threading.Event()  # set on SUBACK, cleared on disconnect
        self.lock = threading.Lock()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"listener-{id(self) & 0xFFFF:x}")
        c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(topic, qos=1)
        c.on_subscribe = lambda *a: self.subscribed.set()
        c.on_disconnect = lambda *a: self.subscribed.clear()
        c.on_message = self._on_message
        c.reconnect_delay_set(1, 1)
        c.connect_async("127.0.0.1", broker.port)
        c.loop_start()
        self.client = c
        wait_for(self.subscribed.is_set, 10, "the listener to subscribe")

    def _on_message(self, client, userdata, msg) -> None:
        with self.lock:
            self.msgs.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def payloads(self, kind: str) -> list[bytes]:
        with self.lock:
            return [p for t, p, _ in self.msgs if t == f"{PREFIX}/{kind}"]

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Device:
    """Key and chain for the state messages (unchained JWS, as the gateway signs them)."""

    def __init__(self) -> None:
        self.d = ecdsa.private_key_from_seed(os.urandom(48))
        pub = ecdsa.public_key(self.d)
        self.chain = Chain("GW-T1", "test-site", envelope.key_id(ecdsa.spki_der(pub)), self.sign, 1)

    def sign(self, msg: bytes) -> bytes:
        return ecdsa.sig_raw(*ecdsa.sign(self.d, msg))

    def state(self, state: str, reason: str | None = None) -> str:
        data = {"state": state, "since": 1764150000}
        if reason:
            data["reason"] = reason
        return self.chain.unchained("state", data, 1764150000, "none")


def make_link(broker, outbox, commands=None, timeout_ms=1000, **kw) -> Link:
    dev = Device()
    return Link(
        lambda: simple.MQTTClient("GW-T1", "127.0.0.1", broker.port),
        outbox,
        PREFIX,
        will=lambda: dev.state("offline", "connection lost"),
        online=lambda: dev.state("online"),
        on_command=(commands.append if commands is not None else None),
        timeout_ms=timeout_ms,
        backoff_min_ms=200,
        backoff_max_ms=2000,
        **kw,
    )


def fill(outbox: Outbox, n: int, first: int = 1) -> None:
    for seq in range(first, first + n):
        kind = "event" if seq % 5 == 0 else "telemetry"
        outbox.put(seq, kind, f"{PREFIX}/{kind}", b"msg-%d" % seq)


def seqs_seen(listener: Listener) -> list[int]:
    with listener.lock:
        return [int(p.split(b"-")[1]) for t, p, _ in listener.msgs if p.startswith(b"msg-")]


def body(jws: bytes) -> dict:
    import json

    return json.loads(envelope.b64url_decode(jws.split(b".")[1]))


def run_until(link: Link, pred, now: list[int], timeout_s: float = 10.0, step_ms: int = 50) -> None:
    def tick() -> None:
        now[0] += step_ms
        link.step(now[0])

    wait_for(pred, timeout_s, "the link", step=0.005, tick=tick)


def test_backlog_goes_out_in_order_with_qos1_and_is_acked_after_the_puback(broker, tmp_path):
    listener = Listener(broker)
    ob = Outbox(str(tmp_path / "ob"))
    fill(ob, 12)
    link = make_link(broker, ob)
    now = [0]
    link.step(now[0])  # connect: will, online, subscribe
    assert link.connected and link.connects == 1
    link.step(now[0])  # one bounded step: `batch` records, no more
    assert ob.depth() == 12 - link.batch
    run_until(link, lambda: ob.depth() == 0, now)
    wait_for(lambda: len(seqs_seen(listener)) >= 12, 5, "every message at the listener")
    assert seqs_seen(listener) == list(range(1, 13))  # oldest first, each once
    online = listener.payloads("state")
    assert online and body(online[-1])["data"]["state"] == "online" and "seq" not in body(online[-1])
    # a broker that stops answering: the next publish is written but its PUBACK never comes,
    # so the record must stay unacked and the link must give up within its timeout
    fill(ob, 1, first=13)
    os.kill(broker.proc.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        now[0] += 50
        link.step(now[0])
        assert time.monotonic() - t0 < 3
        assert not link.connected and "timed out" in link.last_error
        assert ob.depth() == 1 and ob.pending(1)[0][0] == 13
    finally:
        os.kill(broker.proc.pid, signal.SIGCONT)
    run_until(link, lambda: ob.depth() == 0, now)
    wait_for(lambda: 13 in seqs_seen(listener), 5, "the message whose PUBACK was lost")
    listener.stop()
    link.close()


def test_broker_restart_mid_drain_loses_nothing_and_resubscribes(broker, tmp_path):
    listener = Listener(broker)
    ob = Outbox(str(tmp_path / "ob"))
    fill(ob, 30)
    cmds: list[bytes] = []
    link = make_link(broker, ob, cmds)
    now = [0]
    link.step(now[0])
    link.step(now[0])
    link.step(now[0])
    assert 0 < ob.depth() < 30  # mid-drain
    broker.stop()
    now[0] += 50
    link.step(now[0])  # the publish fails: link down, backoff
    assert not link.connected and link.failures == 1
    depth = ob.depth()
    for _ in range(3):  # reconnects refused while the broker is away
        now[0] = link.next_try_ms
        link.step(now[0])
    assert not link.connected and link.failures == 4 and ob.depth() == depth
    broker.start()
    wait_for(listener.subscribed.is_set, 10, "the listener to come back")
    now[0] = link.next_try_ms
    run_until(link, lambda: ob.depth() == 0, now)
    assert link.connects == 2 and link.failures == 0
    wait_for(lambda: set(seqs_seen(listener)) >= set(range(1, 31)), 5, "every seq at the listener")
    firsts = list(dict.fromkeys(seqs_seen(listener)))  # duplicates (QoS 1) aside
    assert firsts == list(range(1, 31))  # oldest first, across the restart
    # the subscription came back with the reconnect: a command sent now arrives
    sender = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    sender.connect("127.0.0.1", broker.port)
    sender.loop_start()
    sender.publish(f"{PREFIX}/cmd", b"after-restart", qos=1).wait_for_publish(5)
    run_until(link, lambda: cmds == [b"after-restart"], now)
    sender.loop_stop()
    sender.disconnect()
    listener.stop()
    link.close()


def test_will_is_published_retained_when_the_connection_is_cut(broker, tmp_path):
    ob = Outbox(str(tmp_path / "ob"))
    early = Listener(broker, f"{PREFIX}/state")
    link = make_link(broker, ob)
    link.step(0)
    assert link.connected
    wait_for(lambda: early.payloads("state"), 5, "the online state")
    assert body(early.payloads("state")[-1])["data"]["state"] == "online"

    def offline(listener: Listener) -> list[tuple[dict, bool]]:
        with listener.lock:
            return [(body(p), r) for t, p, r in listener.msgs if body(p)["data"]["state"] == "offline"]

    # the device vanishes (power cut): its socket closes without an MQTT DISCONNECT
    link.sock.raw.close()
    wait_for(lambda: offline(early), 10, "the will")
    will, _ = offline(early)[-1]
    assert will["data"]["reason"] == "connection lost" and will["kind"] == "state"
    assert "seq" not in will and "prev" not in will  # outside the chain
    late = Listener(broker, f"{PREFIX}/state")  # a platform that connects afterwards
    wait_for(lambda: offline(late), 5, "the retained offline state")
    assert offline(late)[0] == (will, True)  # delivered as the retained message
    early.stop()
    late.stop()


def test_reconnect_backoff_grows_with_jitter_against_a_refusing_port(broker, tmp_path):
    ob = Outbox(str(tmp_path / "ob"))
    broker.stop()  # nothing listens: every connect is refused
    draws = iter([b"\x00\x00", b"\xff\xff", b"\x00\x00", b"\x80\x00", b"\xff\xff", b"\xff\xff"])
    link = make_link(broker, ob, rand=lambda n: next(draws))
    now = 0
    for _ in range(6):
        link.step(now)
        assert not link.connected
        now = link.next_try_ms
    # d = 200, 400, 800, 1600, 2000 (cap), 2000; jitter picks from [d/2, d]
    assert link.delays == [100, 400, 400, 1200, 2000, 2000]
    assert "ConnectionRefusedError" in link.last_error


@pytest.fixture(autouse=True)
def _no_stopped_broker(broker):
    yield
    if broker.proc is not None:
        os.kill(broker.proc.pid, signal.SIGCONT)
