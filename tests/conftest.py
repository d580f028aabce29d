"""Shared pytest setup: core test helpers importable as plain modules (as on MicroPython), and
the helpers in tests/helpers (simulated sites, fakes)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "core"))
sys.path.insert(0, str(ROOT / "tests" / "helpers"))


# Tests that wait on real parts (a broker, simulated buses, gateway processes, ptys) are "slow":
# `make test-fast` leaves them out, `make test` (and CI) runs everything. A test is slow when it
# uses one of these fixtures or lives in one of these modules.
REAL_PART_FIXTURES = {"broker", "tls_broker", "sim_site"}
SLOW_MODULES = {
    "test_metering_sim.py",
    "test_telemetry_e2e.py",
    "test_chaos.py",
    "test_console_gateway.py",
    "test_console_pty.py",
    "test_fw_mqtt.py",
    "test_fw_app.py",
    "test_fw_rtu_master.py",
    "test_verify_shared.py",
    "test_sim_site.py",
    "test_sim_cli.py",
    "test_mpy_signatures.py",
}


def pytest_collection_modifyitems(config, items):
    import pytest

    for item in items:
        if item.path.name in SLOW_MODULES or REAL_PART_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
