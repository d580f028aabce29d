"""The ESP32 App's plate reader on real MicroPython (the 1.27 WebAssembly VM), and what it costs.

The App runs on the VM harness (hil/pilehil/mpyapp.py, tests/mpy/app_harness.mjs): both MQTT
clients -- the main link to the platform's broker and the plate reader to the cameras' broker --
are TCP connections through the harness's socket bridge, to two real mosquittos.  A camera
publishes reads; they must come out as signed `bay.plate` events.  The heap the plate client
holds (its module's code, the reader, its umqtt client and socket) is measured by dropping it
and collecting: it is paid only when `[bays] plate_broker` is set (docs/esp32.md, RAM budget).
"""

from __future__ import annotations

import json

import paho.mqtt.client as mqtt
import pytest
from e2e import Platform, compile_esp32_site, wait_for
from simsite import pile_block

from pilehil import ConstantLoad, mpyapp
from pilehil.broker import Broker

pytestmark = pytest.mark.skipif(mpyapp.available() is not None, reason=str(mpyapp.available()))


def esp32_config(s, tmp_path, broker, cameras, platform: Platform) -> bytes:
    text = s.path.read_text()
    text = text.replace('url = "mqtt://127.0.0.1:1883"', f'url = "{broker.url}"')
    text += f'\n[telemetry]\ninterval_s = 5\n\n[signing]\nplatform_key = "{platform.key_file}"\n'
    text += f'\n[bays]\nplate_broker = "{cameras.url}"\n'
    text += '\n[[bay]]\nid = "B1"\npile = "P1"\npresence = [{ type = "input", input = "DI1" }]\ncamera = "cam-01"\n'
    return compile_esp32_site(text, tmp_path, "esp32-wrover-e-max3485").json_bytes


def test_plates_reach_the_app_on_micropython_through_a_second_bridged_connection(sim_site, broker, tmp_path):
    s = sim_site(pile_block("P1", 1, "eastron-sdm120"), loads={1: ConstantLoad(0, 1)})
    platform = Platform(tmp_path, broker)
    cameras = Broker(tmp_path / "cameras").start()
    dut = mpyapp.MpyApp(tmp_path / "mpy")
    cam = None
    try:
        cfg = esp32_config(s, tmp_path, broker, cameras, platform)
        files = {str(platform.key_file): platform.key_file.read_bytes()}
        booted = dut.start(cfg, uarts={2: "pty:" + s.sim.endpoints["bus1"]}, files=files)
        platform.listen(booted["pem"])
        up = "_gw.plates.connected and _gw.link.connected"
        wait_for(lambda: dut.step(20, until=up)["until"], 120, "both MQTT links on the VM", step=0.001)
        cam = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="cam-01")
        cam.connect("127.0.0.1", cameras.port)
        cam.loop_start()
        cam.publish("pilegate/local/plates", b"{garbled", qos=1).wait_for_publish(5)
        read = {"camera": "cam-01", "plate": "豫CD12345", "colour": "green"}
        cam.publish("pilegate/local/plates", json.dumps(read).encode(), qos=1).wait_for_publish(5)

        def plate_events() -> list[dict]:
            return [e for e in platform.events() if e.get("type") == "bay.plate"]

        wait_for(plate_events, 120, "the bay.plate event", step=0.001, tick=lambda: dut.step(20))
        ev = plate_events()[0]
        assert (ev["bay"], ev["text"], ev["colour"]) == ("B1", "豫CD12345", "green")
        logs = dut.value("[r['msg'] for r in _gw.logs if r['level'] == 'warning']")
        assert any(m.startswith("plate reader sent an unusable message") for m in logs), logs
        assert dut.value("_gw.plates.received") == 2
        # the heap the plate client holds: dropped and collected, the live set shrinks by it
        with_plates = dut.measure()["live"]
        drop = "_gw.plates.close()\n_gw.plates = None\nimport sys\ndel sys.modules['pilefw.plates']\n"
        dut.exec(drop + "delattr(sys.modules['pilefw'], 'plates')\n")
        without = dut.measure()["live"]
        cost = with_plates - without
        print(f"plate client: {cost} bytes of heap ({with_plates} -> {without})")
        assert 0 < cost < 8 * 1024, cost  # docs/esp32.md states the figure
        dut.exec("_gw.close()")
        text, clean = platform.receiver.report()
        assert clean, text
    finally:
        if cam is not None:
            cam.loop_stop()
            cam.disconnect()
        dut.close()
        cameras.stop()
        if platform.sub is not None:
            platform.sub.stop()
