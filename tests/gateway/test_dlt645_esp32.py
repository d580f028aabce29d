"""A mixed bus (one DL/T 645 meter, two Modbus meters) read end to end by the ESP32 application
on CPython: firmware/pilefw/app.py unchanged, its RTU master on a real pseudo-terminal to the
simulator (tests/helpers/machine.py's UART), telemetry verified by the reference receiver."""

from __future__ import annotations

import machine  # the fake, from tests/helpers
import pytest
import umqtt_compat
from e2e import Platform, compile_esp32_site, wait_for
from fwhw import FakeHw
from simsite import pile_block

from pilefw.app import App, load_config_file
from pilehil import ConstantLoad

simple = umqtt_compat.require()
DLT_ADDR = "000012345678"


def test_the_esp32_reads_a_mixed_dlt645_and_modbus_bus(sim_site, broker, tmp_path):
    body = (
        f'\n[[pile]]\nid = "P1"\nmeter = {{ bus = "bus1", address = "{DLT_ADDR}", '
        'profile = "chint-dtsu666-dlt645", serial = "20260001" }\n'
        + pile_block("P2", 2, "eastron-sdm120", serial="12345678")
        + pile_block("P3", 3, "chint-dtsu666")
    )
    s = sim_site(body, loads={2: ConstantLoad(3500, 1), 3: ConstantLoad(9900, 3)})
    s.meter(DLT_ADDR).load = ConstantLoad(11040, 3)
    machine.UART_DEVICES[2] = s.sim.endpoints["bus1"]
    platform = Platform(tmp_path, broker)
    text = (tmp_path / "site.toml").read_text()
    text = text.replace('url = "mqtt://127.0.0.1:1883"', f'url = "{broker.url}"')
    text = text.replace("[metering]\n", "[metering]\npoll_s = 1\n")
    text += f'\n[telemetry]\ninterval_s = 2\n\n[signing]\nplatform_key = "{platform.key_file}"\n'
    compile_esp32_site(text, tmp_path)
    cfg, digest = load_config_file(str(tmp_path / "config.json"))
    (tmp_path / "data").mkdir()
    app = App(cfg, FakeHw(tmp_path / "data"), digest)
    try:
        platform.listen(app.keys.pem)
        acct = platform.account

        def all_read() -> bool:
            a = acct()
            piles = a.last_telemetry["data"]["piles"] if a and a.last_telemetry else []
            return len(piles) == 3 and all("energy_wh" in p for p in piles)

        wait_for(all_read, 30, "telemetry with all three meters", step=0.005, tick=app.step)
        piles = {p["pile"]: p for p in acct().last_telemetry["data"]["piles"]}
        dlt = s.meter(DLT_ADDR)
        # the DL/T 645 meter: energy in its 0.01 kWh steps (truncated), power in 0.1 W steps
        assert dlt.energy_wh - 10 < piles["P1"]["energy_wh"] <= dlt.energy_wh
        assert piles["P1"]["power_w"] == pytest.approx(11040, abs=0.1)
        assert len(piles["P1"]["voltage_v"]) == 3 and len(piles["P1"]["current_a"]) == 3
        assert piles["P2"]["power_w"] == pytest.approx(3500, abs=2)
        assert piles["P2"]["energy_wh"] == s.meter(2).energy_wh
        assert piles["P3"]["power_w"] == pytest.approx(9900, abs=2)
        # the DL/T 645 meter's number is read and matches the commissioned one
        wait_for(lambda: app.core.guard.status("P1")["metered"], 15, "P1 verified", step=0.005, tick=app.step)
        stats = s.sim.bus_stats("bus1")
        assert stats.bad_requests == 0 and stats.garbage_bytes == 0
    finally:
        app.close()
        if platform.sub is not None:
            platform.sub.stop()
