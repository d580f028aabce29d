"""The ESP32 App's plate reader ([bays] plate_broker, firmware/pilefw/plates.py) on CPython.

The firmware runs unchanged with umqtt.simple on CPython sockets (tests/helpers/umqtt_compat.py)
against two real mosquittos: the platform's broker and the cameras' local broker, to which a
paho client publishes as a plate camera would.  Every message the App sends is verified by the
reference receiver; the plate reads must arrive as signed `bay.plate` events, exactly as on the
Pi (docs/bays.md, docs/config.md [bays]).
"""

from __future__ import annotations

import json
import sys

import machine  # the fake, from tests/helpers
import paho.mqtt.client as mqtt
import pytest
import umqtt_compat
from e2e import Platform, compile_esp32_site, wait_for
from fwhw import FakeHw
from simsite import pile_block

from pilefw.app import App, ConfigError, load_config_file
from pilehil import ConstantLoad
from pilehil.broker import Broker, free_port

simple = umqtt_compat.require()
TOPIC = "site/cams/+/plates"


def esp32_site(s, tmp_path, broker, platform: Platform, bays: str):
    """The simulated site's file for an ESP32 board, with one bay watched by camera cam-01."""
    text = (tmp_path / "site.toml").read_text()
    text = text.replace('url = "mqtt://127.0.0.1:1883"', f'url = "{broker.url}"')
    text += f'\n[telemetry]\ninterval_s = 2\n\n[signing]\nplatform_key = "{platform.key_file}"\n'
    text += bays
    text += '\n[[bay]]\nid = "B1"\npile = "P1"\npresence = [{ type = "input", input = "DI1" }]\ncamera = "cam-01"\n'
    compile_esp32_site(text, tmp_path)
    return tmp_path / "config.json"


@pytest.fixture
def cameras(tmp_path):
    """The cameras' local broker (not the platform's)."""
    b = Broker(tmp_path / "cameras").start()
    yield b
    b.stop()


@pytest.fixture
def site(sim_site, broker, tmp_path):
    s = sim_site(pile_block("P1", 1, "eastron-sdm120"), loads={1: ConstantLoad(0, 1)})
    machine.UART_DEVICES[2] = s.sim.endpoints["bus1"]
    platform = Platform(tmp_path, broker)
    yield s, platform
    if platform.sub is not None:
        platform.sub.stop()


class Camera:
    """A plate camera: publishes its reads to the cameras' broker (QoS 1, as a camera would)."""

    def __init__(self, broker: Broker) -> None:
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="cam-01")
        self.c.connect("127.0.0.1", broker.port)
        self.c.loop_start()

    def publish(self, payload: bytes, topic: str = "site/cams/cam-01/plates") -> None:
        self.c.publish(topic, payload, qos=1).wait_for_publish(5)

    def stop(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def plate_events(platform: Platform) -> list[dict]:
    return [e for e in platform.events() if e.get("type") == "bay.plate"]


def warnings(app: App) -> list[str]:
    return [r["msg"] for r in app.logs if r["level"] == "warning"]


def test_plate_reads_from_the_cameras_broker_become_signed_bay_plate_events(site, broker, cameras, tmp_path):
    s, platform = site
    bays = f'\n[bays]\nplate_broker = "{cameras.url}"\nplate_topic = "{TOPIC}"\n'
    cfg, digest = load_config_file(str(esp32_site(s, tmp_path, broker, platform, bays)))
    app = App(cfg, FakeHw(tmp_path / "data"), digest)
    platform.listen(app.keys.pem)
    wait_for(lambda: app.plates.connected and app.link.connected, 20, "both MQTT links", step=0.005, tick=app.step)
    assert "plate broker connected" in [r["msg"] for r in app.logs]
    cam = Camera(cameras)
    try:
        now = int(app.clock.now())
        # garbage first: a warning in the log, nothing else
        cam.publish(b"\xff not json")
        cam.publish(json.dumps({"camera": "cam-01", "plate": 7, "colour": "green"}).encode())
        read = {"camera": "cam-01", "plate": "豫CD12345", "colour": "green", "t": now - 3}
        cam.publish(json.dumps(read).encode())
        wait_for(lambda: plate_events(platform), 20, "the bay.plate event", step=0.005, tick=app.step)
        ev = plate_events(platform)[0]
        assert (ev["bay"], ev["text"], ev["colour"]) == ("B1", "豫CD12345", "green")
        assert now - 3 <= ev["t"] <= app.clock.now()  # the read's own time, or the bay's latest (bays.md)
        bad = [w for w in warnings(app) if w.startswith("plate reader sent an unusable message")]
        assert len(bad) == 2 and "must be strings" in bad[1], bad
        assert app.plates.received == 3
        # a read from the future is dated now, by the App's clock, as on the Pi
        cam.publish(json.dumps({"camera": "cam-01", "plate": "豫A99999", "colour": "blue", "t": now + 9999}).encode())
        wait_for(lambda: len(plate_events(platform)) == 2, 20, "the second read", step=0.005, tick=app.step)
        assert now <= plate_events(platform)[1]["t"] <= int(app.clock.now())
        # a packet too large for the ESP32's RAM is refused unread: the connection is closed
        # and made again after the backoff, and reads go on
        cam.publish(b"x" * 5000)
        wait_for(lambda: app.plates.failures == 1, 20, "the refused packet", step=0.005, tick=app.step)
        assert "refused unread" in app.plates.last_error
        assert any(w.startswith("plate broker not reachable") for w in warnings(app))
        wait_for(lambda: app.plates.connects == 2, 20, "the reconnect", step=0.005, tick=app.step)
        cam.publish(json.dumps({"camera": "cam-01", "plate": "豫CD54321", "colour": "green"}).encode())
        wait_for(lambda: len(plate_events(platform)) == 3, 20, "the read after it", step=0.005, tick=app.step)
        assert plate_events(platform)[2]["text"] == "豫CD54321"
    finally:
        cam.stop()
    # the cameras' broker goes away: the gateway carries on, and reconnects when it returns
    cameras.stop()
    wait_for(lambda: not app.plates.connected, 60, "the lost plate broker", step=0.005, tick=app.step)
    sent = app.link.published
    wait_for(lambda: app.link.published > sent + 1, 20, "telemetry meanwhile", step=0.005, tick=app.step)
    cameras.start()
    wait_for(lambda: app.plates.connected, 60, "the plate broker again", step=0.005, tick=app.step)
    app.close()
    assert not app.plates.connected
    text, clean = platform.receiver.report()
    assert clean, text


def test_an_unreachable_plate_broker_is_a_warning_and_the_gateway_carries_on(site, broker, tmp_path):
    s, platform = site
    bays = f'\n[bays]\nplate_broker = "mqtt://127.0.0.1:{free_port()}"\n'
    cfg, digest = load_config_file(str(esp32_site(s, tmp_path, broker, platform, bays)))
    app = App(cfg, FakeHw(tmp_path / "data"), digest)
    platform.listen(app.keys.pem)
    wait_for(lambda: app.plates.failures >= 2, 30, "two refused connects", step=0.005, tick=app.step)
    assert app.link.connected and not app.plates.connected
    d = app.plates.delays
    assert 500 <= d[0] <= 1000 and 1000 <= d[1] <= 2000  # the backoff doubles
    assert [w for w in warnings(app) if w.startswith("plate broker not reachable")] == [
        "plate broker not reachable (retrying): " + app.plates.last_error
    ]  # once, not at every attempt
    app.close()


def test_without_a_plate_broker_there_is_no_plate_client(site, broker, tmp_path):
    s, platform = site
    cfg, digest = load_config_file(str(esp32_site(s, tmp_path, broker, platform, "")))
    sys.modules.pop("pilefw.plates", None)
    app = App(cfg, FakeHw(tmp_path / "data"), digest)
    assert app.plates is None and "pilefw.plates" not in sys.modules  # no RAM paid for it
    app.close()


def test_a_plate_broker_that_is_not_an_mqtt_url_is_refused_with_the_key(site, broker, tmp_path):
    s, platform = site
    cfg_file = esp32_site(s, tmp_path, broker, platform, "")
    cfg = json.loads(cfg_file.read_bytes())
    cfg.setdefault("bays", {})["plate_broker"] = "http://192.168.1.5"
    with pytest.raises(ConfigError) as e:
        App(cfg, FakeHw(tmp_path / "bad"))
    assert [k for k, _ in e.value.problems] == ["bays.plate_broker"]
    assert "mqtt://" in e.value.problems[0][1]
