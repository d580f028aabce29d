"""The ESP32 application on real MicroPython (the official 1.27 WebAssembly VM), end to end.

The same firmware as tests/gateway/test_fw_app.py, but run by MicroPython, not CPython: the App
is compiled with mpy-cross and driven one main-loop pass at a time by tests/mpy/app_harness.mjs
(hil/pilehil/mpyapp.py), its UART bridged to the meter simulator's pseudo-terminal, its console
to a TCP line, and umqtt.simple's socket to a real mosquitto.  Every message is verified by
the reference receiver (cryptography).
"""

from __future__ import annotations

import json

import pytest
from e2e import Platform, compile_esp32_site, wait_for
from simsite import pile_block

from pilecore import pinhash
from pilehil import ConstantLoad, mpyapp
from piletools import mpy_budget

pytestmark = pytest.mark.skipif(mpyapp.available() is not None, reason=str(mpyapp.available()))


def esp32_config(s, tmp_path, broker, platform: Platform) -> bytes:
    """The simulated site compiled for an ESP32 board (what `pilegate check --json` prints)."""
    text = s.path.read_text()
    text = text.replace('url = "mqtt://127.0.0.1:1883"', f'url = "{broker.url}"')
    text = text.replace("[metering]\n", "[metering]\npoll_s = 1\n")
    text = text.replace('id = "P1"\n', 'id = "P1"\ninterlock = "relay"\nrelay = "K1"\n')
    text += f'\n[telemetry]\ninterval_s = 2\n\n[signing]\nplatform_key = "{platform.key_file}"\n'
    return compile_esp32_site(text, tmp_path).json_bytes


@pytest.fixture
def rig(sim_site, broker, tmp_path):
    body = pile_block("P1", 1, "eastron-sdm120", serial="12345678") + pile_block("P2", 2, "chint-dtsu666")
    s = sim_site(body, loads={1: ConstantLoad(3500, 1), 2: ConstantLoad(9900, 3)})
    platform = Platform(tmp_path, broker)
    cfg = esp32_config(s, tmp_path, broker, platform)
    term = mpy_budget.ConsoleLine()
    dut = mpyapp.MpyApp(tmp_path / "mpy")
    yield s, platform, cfg, term, dut
    dut.close()
    if platform.sub is not None:
        platform.sub.stop()
    term.close()


def test_the_esp32_app_runs_on_micropython_against_the_simulator_and_mosquitto(rig):
    s, platform, cfg, term, dut = rig
    files = {
        "/data/console.pin": pinhash.make_record("482916", b"saltsalt", 1000).encode(),
        str(platform.key_file): platform.key_file.read_bytes(),
    }
    booted = dut.start(cfg, uarts={2: "pty:" + s.sim.endpoints["bus1"]}, console=term.endpoint, files=files)
    assert dut.version.startswith("1.27")
    assert booted["epoch"] == 1 and booted["seq"] == 1
    platform.listen(booted["pem"])
    acct = platform.account

    def telemetry_with_readings() -> bool:
        a = acct()
        return bool(a and a.last_telemetry and all("energy_wh" in p for p in a.last_telemetry["data"]["piles"]))

    wait_for(telemetry_with_readings, 90, "telemetry with readings", step=0.001, tick=lambda: dut.step(20))
    piles = {p["pile"]: p for p in acct().last_telemetry["data"]["piles"]}
    assert piles["P1"]["power_w"] == pytest.approx(3500, abs=2)
    assert piles["P2"]["power_w"] == pytest.approx(9900, abs=2) and len(piles["P2"]["voltage_v"]) == 3
    assert piles["P1"]["energy_wh"] == s.meter(1).energy_wh
    # the relay of the verified pile is on (fail-safe off before)
    metered = "_gw.core.guard.status('P1')['metered']"
    wait_for(lambda: dut.step(50, until=metered)["until"], 90, "P1 metered", step=0.001)
    dut.step(2)
    assert dut.value("[_hw.pins[26].v, _hw.pins[26].writes > 1]") == [1, True]
    # a signed command and a replayed one
    platform.send(platform.command("c-1", "set_interval", {"interval_s": 3}))
    platform.send(platform.command("c-1", "set_interval", {"interval_s": 9}))
    wait_for(lambda: len(platform.acks) >= 2, 90, "two acks", step=0.001, tick=lambda: dut.step(20))
    assert platform.acks[0] == {"cmd_id": "c-1", "cmd": "set_interval", "ok": True, "result": {"interval_s": 3}}
    assert platform.acks[1]["ok"] is False and platform.acks[1]["reason"].startswith("replayed")
    # the console on its line
    wait_for(lambda: b"pilegate> " in term.read(), 90, "the prompt", step=0.001, tick=lambda: dut.step(5))
    term.send(b"status\r")
    wait_for(lambda: b"config_hash" in term.read(), 90, "the status", step=0.001, tick=lambda: dut.step(5))
    term.send(b"login\r")
    wait_for(lambda: b"PIN: " in term.read(), 90, "the PIN prompt", step=0.001, tick=lambda: dut.step(5))
    term.send(b"482916\r")
    wait_for(lambda: b"logged in as" in term.read(), 90, "the login", step=0.001, tick=lambda: dut.step(5))
    term.send(b"set telemetry.interval_s 4\r")
    wait_for(lambda: b"(applied)" in term.read(), 90, "the setting", step=0.001, tick=lambda: dut.step(5))
    assert dut.value("_gw.interval_s") == 4
    # restart over the same flash: the chain continues
    drained = "_gw.outbox.depth() == 0"
    wait_for(lambda: dut.step(50, until=drained)["until"], 90, "the backlog drained", step=0.001)
    dut.exec("_gw.close()")
    last = dut.value("_gw.chain.seq")
    again = dut.boot()
    assert again["epoch"] == 2 and again["seq"] == last + 1 and again["kid"] == booted["kid"]
    wait_for(lambda: acct().high >= last + 3, 90, "the second run", step=0.001, tick=lambda: dut.step(20))
    dut.exec("_gw.close()")
    high = dut.value("_gw.chain.seq")
    wait_for(lambda: acct().high == high and not acct().gaps(), 90, "the last messages")
    text, clean = platform.receiver.report()
    assert clean, text
    a = acct()
    assert a.bad_signatures == 0 and not a.gaps() and not a.broken_links and a.replays == 0
    assert json.loads(json.dumps(a.messages)) >= last + 3


def test_a_memory_error_in_the_main_loop_restarts_cleanly_keeping_the_outbox_and_the_chain(rig):
    import paho.mqtt.client as mqtt

    s, platform, cfg, term, dut = rig
    booted = dut.start(cfg, uarts={2: "pty:" + s.sim.endpoints["bus1"]}, console=term.endpoint)
    platform.listen(booted["pem"])
    acct = platform.account
    wait_for(lambda: acct() and acct().high >= 3, 90, "the first messages", step=0.001, tick=lambda: dut.step(20))
    # the broker goes away: what is signed now waits in the outbox
    dut.exec("_gw.link.close(None)\n_hw.net_ok = False")
    dut.step(5)
    dut.advance(5_000)
    dut.step(20)
    waiting = dut.value("_gw.outbox.depth()")
    assert waiting >= 1
    dut.exec("_hw.net_ok = True")
    # a MemoryError in a pass of the real main loop (App.run) on MicroPython
    dut.exec(
        "_n = [0]\n"
        "def _hook(where):\n"
        "    _n[0] += 1\n"
        "    if _n[0] == 3:\n"
        "        raise MemoryError('memory allocation failed, allocating 8192 bytes')\n"
        "_gw.on_step = _hook\n"
        "_gw.run()\n"
    )
    assert dut.value("[_hw.resets, _gw.running]") == [1, False]
    oom = dut.value("_gw.state.load('oom')")
    assert oom["count"] == 1 and "8192" in oom["error"]
    wait_for(lambda: b"out of memory" in term.read(), 90, "the console notice")
    # the retained state says why the gateway went away
    got: list[bytes] = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    sub.on_message = lambda c, u, m: got.append(m.payload)
    sub.connect("127.0.0.1", platform.broker.port)
    sub.subscribe(f"{platform.prefix}/state", 1)
    sub.loop_start()
    try:
        wait_for(lambda: got, 90, "the retained state")
    finally:
        sub.loop_stop()
        sub.disconnect()
    body = json.loads(envelope_payload(got[-1]))
    assert body["data"]["state"] == "offline" and body["data"]["reason"] == "out of memory"
    # the restart (what the reset does): same key, next epoch, the chain continues
    last = dut.value("_gw.chain.seq")
    again = dut.boot()
    assert again["epoch"] == 2 and again["seq"] > last and again["kid"] == booted["kid"]
    wait_for(
        lambda: any(e.get("type") == "gateway.out_of_memory" for e in platform.events()),
        90,
        "the out-of-memory event",
        step=0.001,
        tick=lambda: dut.step(20),
    )
    ev = next(e for e in platform.events() if e["type"] == "gateway.out_of_memory")
    assert ev["count"] == 1 and ev["t"] == oom["t"]
    wait_for(lambda: acct().high >= again["seq"] and not acct().gaps(), 90, "no gap", tick=lambda: dut.step(20))
    a = acct()
    assert a.bad_signatures == 0 and not a.broken_links and a.messages >= last  # nothing lost


def envelope_payload(jws: bytes) -> bytes:
    """The JSON body of a compact JWS (the state message is signed but outside the chain)."""
    import base64

    part = jws.split(b".")[1]
    return base64.urlsafe_b64decode(part + b"=" * (-len(part) % 4))
