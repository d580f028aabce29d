"""One gateway, two ports: the Pi and the ESP32 publish the same payloads and acks.

One scenario runs against `pilegate run` (the Pi) and then against the ESP32 `App` on CPython
(fake `machine`, real pseudo-terminal bus, real mosquitto), over the same simulated meters:
start, both piles metered, every documented command plus rejected ones (replayed, forged,
addressed elsewhere, unsigned and 100,000 levels deep, nested too deep within the size limit),
a broker outage, and a reboot.  Every message is verified by the reference receiver, and the
two ports' birth, telemetry, events and acks are compared field by field, apart from the fields
docs/telemetry.md ("Port differences") says differ: the platform and board, the config hash,
the device key, times, and `sync_time`'s offset.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import machine  # the fake, from tests/helpers
import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric import ec
from e2e import Platform, compile_esp32_site, device_pem, start_gateway, stop, wait_for, write_site
from fwhw import FakeHw
from simsite import pile_block

from pilecore import envelope, tariff
from pilefw.app import App, load_config_file
from pilegate.keys import DeviceKey
from pilegate.runtime import EXIT_REBOOT
from pilehil import ConstantLoad
from piletools.receiver import KeyRegister, Receiver
from piletools.verify import Subscriber

BIRTH_PORT_FIELDS = {"platform", "board", "config_hash", "kid", "pubkey"}
DEEP = "W1tb" * 33334  # base64url of 100,002 '['


class Recorder(Platform):
    """The platform side, keeping every accepted message's body in arrival order."""

    def listen(self, device_pem: str) -> None:
        reg = KeyRegister()
        reg.add(self.gw, device_pem)
        self.receiver = Receiver(reg)
        self.bodies: list[dict[str, Any]] = []

        def on_verdict(v: Any) -> None:
            if v.status == "accepted":
                self.bodies.append(v.body)
                if v.kind == "ack":
                    self.acks.append(v.body["data"])
                if v.kind == "event":
                    self.event_log.extend(v.body["data"].get("events", []))

        self.sub = Subscriber(self.receiver, self.broker.url, "pilegate/v1/+/+/+", on_verdict=on_verdict).start()
        wait_for(self.sub.subscribed.is_set, 10, "the verifier's subscription")

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [b for b in self.bodies if b["kind"] == kind]


def clear_retained(broker: Any, prefix: str) -> None:
    """Forget the first port's retained birth and state, so the second starts from nothing."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    for topic in ("birth", "state"):
        c.publish(f"{prefix}/{topic}", b"", qos=1, retain=True).wait_for_publish(5)
    c.loop_stop()
    c.disconnect()


def scenario(
    platform: Recorder,
    broker: Any,
    tick: Callable[[], None],
    rebooted: Callable[[], bool],
    hold: Callable[[bool], None],
) -> None:
    """The same steps for both ports; `tick` runs the gateway a little (ESP32) or waits (Pi);
    hold(True) pauses it while the broker comes back, until the verifier has subscribed again
    (the test broker keeps no sessions: what it gets before that would be lost to the test)."""

    def until(pred: Callable[[], bool], what: str, timeout: float = 30) -> None:
        wait_for(pred, timeout, what, step=0.005, tick=tick)

    def metered() -> bool:
        a = platform.account()
        t = a and a.last_telemetry
        return bool(t and all(p["metered"] and "energy_wh" in p for p in t["data"]["piles"]))

    until(metered, "telemetry with both piles metered")
    other = DeviceKey(ec.generate_private_key(ec.SECP256R1()))
    now = int(time.time())
    kid = platform.key.kid
    head = envelope.b64url(json.dumps({"alg": "ES256", "kid": kid}).encode())
    sends = [
        platform.command("p-1", "set_interval", {"interval_s": 2}),
        platform.command("p-2", "sync_time", {"t": now}, iat=now + 2),
        platform.command("p-3", "set_tariff", {"tariff": tariff.default_tariff()}),
        platform.command("p-4", "set_tariff", {"tariff": {"id": "bad"}}),
        platform.command("p-5", "resend", {"from_seq": 1, "to_seq": 2}),
        platform.command("p-6", "resend", {"from_seq": 90000, "to_seq": 90001}),
        platform.command("p-1", "set_interval", {"interval_s": 9}),  # replayed id
        platform.command("p-7", "set_interval", {"interval_s": 3}, key=other),  # forged
        commands_to("GW-ELSEWHERE", platform, "p-8"),
        DEEP + ".e30.AAAA",  # 100,000 levels deep in the header of an unsigned command
        head + "." + envelope.b64url(b"[" * 3000 + b"]" * 3000) + ".AAAA",  # deep within the size limit
        signed_deep(platform, head, now),  # validly signed, nested too deep
    ]
    for n, jws in enumerate(sends, start=1):
        platform.send(jws)
        until(lambda n=n: len(platform.acks) >= n, f"ack {n}")
    # a broker outage: what is signed meanwhile is stored, then published as history
    high = platform.account().high
    broker.stop()
    t0 = time.monotonic()
    until(lambda: time.monotonic() - t0 > 4, "time without a broker", timeout=10)
    hold(True)
    broker.start()
    wait_for(platform.sub.subscribed.is_set, 20, "the verifier to subscribe again")
    hold(False)
    until(lambda: any(b.get("hist") and b["kind"] == "telemetry" for b in platform.bodies), "history", 60)
    until(lambda: platform.account().high > high + 2 and not platform.account().gaps(), "the backlog", 60)
    platform.send(platform.command("p-9", "reboot", {}))
    until(lambda: len(platform.acks) == len(sends) + 1, "the reboot's ack")
    until(rebooted, "the reboot", 20)


def signed_deep(platform: Recorder, head: str, now: int) -> str:
    nested = "[" * 2000 + "]" * 2000
    fields = f'"v":1,"gw":"GW-T1","id":"p-deep","iat":{now - 1},"exp":{now + 60},"cmd":"set_interval"'
    body = "{" + fields + ',"args":{"x":' + nested + "}}"
    return envelope.sign_compact(head, body.encode(), platform.key.sign_raw)[0]


def commands_to(gw: str, platform: Recorder, cmd_id: str) -> str:
    from pilecore import commands

    now = int(time.time())
    return commands.make(
        gw, cmd_id, "set_interval", {"interval_s": 5}, now - 1, now + 60, platform.key.sign_raw, platform.key.kid
    )


def run_pi(s: Any, broker: Any, tmp_path: Path) -> Recorder:
    platform = Recorder(tmp_path / "pi", broker)
    site_path = write_site(s, tmp_path / "pi", broker, platform)
    data = tmp_path / "pi" / "data"
    data.mkdir()
    platform.listen(device_pem(site_path, data))
    gw = start_gateway(site_path, data, log=tmp_path / "pi" / "gateway.log")
    try:

        def hold(on: bool) -> None:
            os.kill(gw.pid, signal.SIGSTOP if on else signal.SIGCONT)

        scenario(platform, broker, lambda: None, lambda: gw.poll() is not None, hold)
        assert gw.wait(10) == EXIT_REBOOT
    finally:
        if gw.poll() is None:
            os.kill(gw.pid, signal.SIGCONT)  # in case the scenario failed while it was held
            stop(gw)
    platform.sub.stop()
    return platform


def run_esp32(s: Any, broker: Any, tmp_path: Path) -> Recorder:
    platform = Recorder(tmp_path / "esp", broker)
    text = write_site(s, tmp_path / "esp", broker, platform).read_text()
    text += "\n[telemetry]\ninterval_s = 1\n"  # as `pilegate run --interval 1` for the Pi
    text = text.replace("[metering]\n", "[metering]\npoll_s = 1\n")  # the Pi runs with --poll 0.5
    compile_esp32_site(text, tmp_path / "esp")
    cfg, digest = load_config_file(str(tmp_path / "esp" / "config.json"))
    machine.UART_DEVICES[2] = s.sim.endpoints["bus1"]
    data = tmp_path / "esp" / "data"
    data.mkdir()
    hw = FakeHw(data)
    app = App(cfg, hw, digest)
    platform.listen(app.keys.pem)
    try:
        scenario(platform, broker, app.step, lambda: hw.resets == 1, lambda on: None)
    finally:
        app.close()
    platform.sub.stop()
    return platform


def comparable_ack(ack: dict[str, Any]) -> dict[str, Any]:
    out = dict(ack)
    if isinstance(out.get("result"), dict) and "offset_s" in out["result"]:
        assert isinstance(out["result"]["offset_s"], int)
        out["result"] = {"offset_s": "<int>"}
    return out


def readings(telemetry: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: v for k, v in p.items() if k != "t"} for p in telemetry["data"]["piles"]]


def test_the_pi_and_the_esp32_publish_the_same_payloads_and_acks(sim_site, broker, tmp_path):
    s = sim_site(
        pile_block("P1", 1, "eastron-sdm120", serial="10000001")
        + pile_block("P2", 2, "eastron-sdm120", serial="10000002"),
        loads={1: ConstantLoad(3000, 1), 2: ConstantLoad(5000, 1)},
    )
    for sub in ("pi", "esp"):
        (tmp_path / sub).mkdir()
    pi = run_pi(s, broker, tmp_path)
    clear_retained(broker, pi.prefix)
    esp = run_esp32(s, broker, tmp_path)
    for p in (pi, esp):
        a = p.account()
        assert a.bad_signatures == 0 and not a.broken_links and a.replays == 0 and not a.gaps()
    # acks: the same answer to every command, in the same order
    assert [comparable_ack(a) for a in pi.acks] == [comparable_ack(a) for a in esp.acks]
    assert pi.acks[4] == {"cmd_id": "p-5", "cmd": "resend", "ok": True, "result": {"resent": 2, "not_stored": 0}}
    assert pi.acks[-1]["result"] == {"rebooting_in_s": 5}
    assert [a["ok"] for a in pi.acks] == [True, True, True, False, True, True] + [False] * 6 + [True]
    assert pi.acks[-2] == {"cmd_id": None, "ok": False, "reason": "malformed: payload nested deeper than 16"}
    # birth: the same apart from what names the port and the device
    (pb,), (eb,) = pi.of("birth")[:1], esp.of("birth")[:1]
    assert pb["data"]["platform"] == "rpi" and eb["data"]["platform"] == "esp32"
    strip = lambda d: {k: v for k, v in d.items() if k not in BIRTH_PORT_FIELDS}  # noqa: E731
    assert strip(pb["data"]) == strip(eb["data"])
    # telemetry: the same readings, fields and flags (only times differ)
    fresh = lambda b: all(p["metered"] and not p.get("stale") for p in b["data"]["piles"])  # noqa: E731
    pt = [b for b in pi.of("telemetry") if not b.get("hist") and fresh(b)]
    et = [b for b in esp.of("telemetry") if not b.get("hist") and fresh(b)]
    assert readings(pt[-1]) == readings(et[-1])
    assert pi.of("telemetry")[-1]["data"]["interval_s"] == esp.of("telemetry")[-1]["data"]["interval_s"] == 2
    assert any(b.get("hist") for b in pi.of("telemetry")) and any(b.get("hist") for b in esp.of("telemetry"))
    # events: the same kinds, and the same rejection reasons
    noise = {"meter.comm_error", "meter.comm_restored"}
    assert {e["type"] for e in pi.event_log} - noise == {e["type"] for e in esp.event_log} - noise
    reasons = lambda p: [e["reason"] for e in p.event_log if e["type"] == "command.rejected"]  # noqa: E731
    assert reasons(pi) == reasons(esp) and len(reasons(pi)) == 6
    # the envelope: the same kinds in the chain, every message signed alike
    assert {b["kind"] for b in pi.bodies} == {b["kind"] for b in esp.bodies}
