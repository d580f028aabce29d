"""The ESP32 application (firmware/pilefw/app.py) on CPython, end to end.

The firmware code runs unchanged; only what cannot exist here is replaced behind the `hw`
interface: `machine.UART`/`Pin` from tests/helpers/machine.py (the UART is a real pyserial port
on a pseudo-terminal: the meter simulator's bus, and a second pty for the console), a recording
watchdog, and umqtt.simple on CPython sockets (tests/helpers/umqtt_compat.py) talking to a real
mosquitto.  Every message is verified by the reference receiver (cryptography), so the ESP32's
pure-Python ES256 signatures are checked by an independent implementation.
"""

from __future__ import annotations

import json
import struct

import machine  # the fake, from tests/helpers
import pytest
import umqtt_compat
from e2e import Platform, compile_esp32_site, wait_for
from fwhw import FakeHw
from fwhw import FwTerminal as Terminal
from simsite import pile_block

from pilecore import pinhash
from pilefw.app import App, ConfigError, load_config_file
from pilehil import ConstantLoad

simple = umqtt_compat.require()


def esp32_site(s, tmp_path, broker, platform: Platform):
    """The simulated site's file, for an ESP32 board: bus on uart2, P1 interlocked on relay K1."""
    text = (tmp_path / "site.toml").read_text()
    text = text.replace('url = "mqtt://127.0.0.1:1883"', f'url = "{broker.url}"')
    text = text.replace("[metering]\n", "[metering]\npoll_s = 1\n")
    text = text.replace('id = "P1"\n', 'id = "P1"\ninterlock = "relay"\nrelay = "K1"\n')
    text += f'\n[telemetry]\ninterval_s = 2\n\n[signing]\nplatform_key = "{platform.key_file}"\n'
    return compile_esp32_site(text, tmp_path), tmp_path / "config.json"


@pytest.fixture
def rig(sim_site, broker, tmp_path):
    body = pile_block("P1", 1, "eastron-sdm120", serial="12345678") + pile_block("P2", 2, "chint-dtsu666")
    s = sim_site(body, loads={1: ConstantLoad(3500, 1), 2: ConstantLoad(9900, 3)})
    machine.UART_DEVICES[2] = s.sim.endpoints["bus1"]
    platform = Platform(tmp_path, broker)
    site, cfg_file = esp32_site(s, tmp_path, broker, platform)
    term = Terminal()
    yield s, platform, site, cfg_file, term
    if platform.sub is not None:
        platform.sub.stop()
    term.close()


def test_the_esp32_app_meters_signs_publishes_answers_commands_and_continues_after_restart(rig, tmp_path):
    s, platform, site, cfg_file, term = rig
    cfg, digest = load_config_file(str(cfg_file))
    assert digest == site.config_hash  # the same config hash the Pi reports
    hw = FakeHw(tmp_path / "data", term.path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "console.pin").write_text(pinhash.make_record("482916", b"saltsalt", 1000))
    app = App(cfg, hw, digest)
    key_file = tmp_path / "data" / "device.key"
    assert key_file.stat().st_size == 32 and key_file.stat().st_mode & 0o777 == 0o600
    assert "PRIVATE" not in app.keys.pem and app.keys.kid[:16] in repr(app.keys)
    assert app.epoch == 1 and app.chain.seq == 1  # the birth is stored before anything is sent
    platform.listen(app.keys.pem)
    acct = platform.account

    def telemetry_with_readings() -> bool:
        a = acct()
        return bool(a and a.last_telemetry and all("energy_wh" in p for p in a.last_telemetry["data"]["piles"]))

    wait_for(telemetry_with_readings, 20, "telemetry with readings", step=0.005, tick=app.step)
    piles = {p["pile"]: p for p in acct().last_telemetry["data"]["piles"]}
    assert piles["P1"]["power_w"] == pytest.approx(3500, abs=2)
    assert piles["P2"]["power_w"] == pytest.approx(9900, abs=2) and len(piles["P2"]["voltage_v"]) == 3
    assert piles["P1"]["energy_wh"] == s.meter(1).energy_wh  # the simulator's clock stands still
    assert piles["P2"]["energy_wh"] == s.meter(2).energy_wh
    assert acct().last_telemetry["tsync"] == "ntp"
    # the pile with a relay is switched on once its meter is verified (fail-safe off before)
    wait_for(lambda: app.core.guard.status("P1")["metered"], 10, "P1 metered", step=0.005, tick=app.step)
    app.step()
    pin, active_high = app.metering.relays["K1"]
    assert active_high and pin.id == 26 and pin.history[0] == 0 and pin.value() == 1
    # a signed command, and a forged one
    platform.send(platform.command("c-1", "set_interval", {"interval_s": 3}))
    platform.send(platform.command("c-1", "set_interval", {"interval_s": 9}))  # replayed id
    wait_for(lambda: len(platform.acks) >= 2, 15, "two acks", step=0.005, tick=app.step)
    assert platform.acks[0] == {"cmd_id": "c-1", "cmd": "set_interval", "ok": True, "result": {"interval_s": 3}}
    assert platform.acks[1]["ok"] is False and platform.acks[1]["reason"].startswith("replayed")
    assert app.interval_s == 3
    # the console on the pty answers like a terminal would see it
    wait_for(lambda: b"pilegate> " in term.read(), 5, "the console prompt", step=0.005, tick=app.step)
    term.send(b"status\r")
    wait_for(lambda: b"config_hash" in term.read(), 5, "the status answer", step=0.005, tick=app.step)
    out = term.read().decode()
    assert "GW-T1" in out and app.keys.kid in out and "esp32-devkitc-max3485" in out
    term.send(b"piles --json\r")
    wait_for(lambda: b'{"piles":' in term.read(), 5, "the piles answer", step=0.005, tick=app.step)
    line = next(ln for ln in term.read().decode().splitlines() if ln.startswith('{"piles":'))
    rows = {r["id"]: r for r in json.loads(line)["piles"]}
    assert rows["P1"]["bus"] == "bus1" and rows["P2"]["address"] == 2 and rows["P1"]["metered"] is True
    assert rows["P2"]["power_w"] == pytest.approx(9900, abs=2)
    # a technician logs in and changes a setting: applied, persisted and audited
    term.send(b"login\r")
    wait_for(lambda: b"PIN: " in term.read(), 5, "the PIN prompt", step=0.005, tick=app.step)
    term.send(b"482916\r")
    wait_for(lambda: b"logged in as technician" in term.read(), 10, "the login", step=0.005, tick=app.step)
    term.send(b"set telemetry.interval_s 4\r")
    wait_for(lambda: b"(applied)" in term.read(), 5, "the setting", step=0.005, tick=app.step)
    assert app.interval_s == 4 and app.state.load("settings")["interval_s"] == 4
    assert b"482916" not in term.read()  # the PIN is never echoed
    audits = [ev for ev in app.recent if ev.get("type") == "console.audit"]
    assert [a["cmd"] for a in audits] == ["login", "set"] and audits[1]["result"] == "ok"
    term.send(b"mbread bus1 1 4 0x0c 2 --json\r")  # a raw read through the scheduler
    wait_for(lambda: b'"values":' in term.read(), 10, "the mbread answer", step=0.005, tick=app.step)
    line = next(ln for ln in term.read().decode().splitlines() if '"values":' in ln)
    hi, lo = json.loads(line)["values"]
    assert struct.unpack(">f", struct.pack(">HH", hi, lo))[0] == pytest.approx(3500, abs=2)  # P1's power
    assert hw.dog is not None and hw.dog.feeds > 50 and hw.dog.timeout_ms == 60000
    # restart: a new App over the same flash continues the chain (epoch 2, next seq)
    wait_for(lambda: app.outbox.depth() == 0, 10, "the backlog to drain", step=0.005, tick=app.step)
    app.close()
    last_seq = app.chain.seq
    app2 = App(cfg, FakeHw(tmp_path / "data"), digest)
    assert app2.epoch == 2 and app2.chain.seq == last_seq + 1 and app2.keys.kid == app.keys.kid
    assert app2.interval_s == 4  # the console's setting survived
    wait_for(lambda: acct().high >= last_seq + 3, 20, "messages of the second run", step=0.005, tick=app2.step)
    app2.close()
    wait_for(lambda: acct().high == app2.chain.seq and not acct().gaps(), 10, "the last messages")
    text, clean = platform.receiver.report()
    assert clean, text
    a = acct()
    assert a.bad_signatures == 0 and not a.gaps() and not a.broken_links and a.replays == 0
    assert a.messages >= last_seq + 3


def test_a_bad_configuration_is_refused_with_every_problem(rig, tmp_path):
    _, _, _, cfg_file, _ = rig
    cfg = json.loads(cfg_file.read_bytes())
    cfg["pile"][1]["meter"]["address"] = 1  # two piles on one meter
    cfg["bus"][0]["port"] = "uart0"  # meters on the console UART
    with pytest.raises(ConfigError) as e:
        App(cfg, FakeHw(tmp_path / "bad"))
    keys = [k for k, _ in e.value.problems]
    assert any(k.startswith("bus[bus1].port") for k in keys)
    assert any("pile[P2]" in k for k in keys)
    assert not (tmp_path / "bad" / "device.key").exists()  # nothing was generated for it
