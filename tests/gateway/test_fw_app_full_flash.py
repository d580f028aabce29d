"""Issue 9, defect #1: a full flash does not end the ESP32 App (scenarios/disk-full.toml).

The ESP32 App on CPython (fake `machine`) with its root on a real small tmpfs: when the flash
fills, a state save (core, settings, replay guard) is refused with ENOSPC; the App keeps the
object in memory, reports it in driver.storage["state_unsaved"], and stores it by itself once
space returns.  A flash that cannot take the start counter refuses the start with a clear
StartRefused instead of a traceback.
"""

from __future__ import annotations

import json

import machine  # the fake, from tests/helpers
import pytest
from e2e import Platform, compile_esp32_site, write_site
from fwhw import FakeHw
from simsite import pile_block
from smallfs import small_fs

from pilefw.app import App, StartRefused, load_config_file
from pilehil import ConstantLoad


def _esp32_config(sim_site, broker, tmp_path):
    s = sim_site(pile_block("P1", 1, "eastron-sdm120", serial="10000001"), loads={1: ConstantLoad(2000, 1)})
    platform = Platform(tmp_path, broker)
    compile_esp32_site(write_site(s, tmp_path, broker, platform).read_text(), tmp_path)
    machine.UART_DEVICES[2] = s.sim.endpoints["bus1"]
    return load_config_file(str(tmp_path / "config.json"))


def test_a_state_save_on_a_full_flash_is_held_and_stored_when_space_returns(sim_site, broker, tmp_path):
    cfg, digest = _esp32_config(sim_site, broker, tmp_path)
    with small_fs(tmp_path / "flash", 2048) as fs:
        app = App(cfg, FakeHw(fs.path), digest)
        settings = fs.path / "state" / "settings.json"
        fs.fill()
        assert app.save("settings", {"interval_s": 7, "poll_s": 1, "log_level": "info"}) is False
        assert app.driver.storage["state_unsaved"] == ["settings"]
        assert any(line["level"] == "error" and "settings not saved" in line["msg"] for line in app.logs)
        app._second(app.ms())  # the retry while still full (the core's save too): held, no exception
        assert "settings" in app.driver.storage["state_unsaved"]
        fs.free()
        app._second(app.ms())
        assert app.driver.storage["state_unsaved"] == []
        assert json.loads(settings.read_text())["interval_s"] == 7


def test_a_flash_that_cannot_store_the_start_counter_refuses_the_start(sim_site, broker, tmp_path):
    cfg, digest = _esp32_config(sim_site, broker, tmp_path)
    with small_fs(tmp_path / "flash", 2048) as fs:
        App(cfg, FakeHw(fs.path), digest)  # creates the key, outbox and state files
        fs.fill()
        with pytest.raises(StartRefused, match="start counter"):
            App(cfg, FakeHw(fs.path), digest)
