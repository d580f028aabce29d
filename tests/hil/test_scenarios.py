"""The HIL scenario suite: every scenarios/*.toml on every --dut (docs/hil.md).

Collected by the rig's pytest plugin (piletools.rig.pytest_plugin, loaded in pyproject's
addopts): without options only the smoke scenarios run on `pi`; `make hil` runs all of them on
the simulated DUTs.  Each test writes its page under build/hil/ and fails with the checks that
failed and the page to read.
"""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.slow  # a broker, the simulated site and a gateway process per test


def test_scenario(hil_run: Any) -> None:
    _run, checks, page = hil_run
    failed = [c for c in checks if not c.ok]
    assert not failed, f"{len(failed)} check(s) failed (report: {page}):\n" + "\n".join(
        f"- {c.kind}: {c.name}\n    {c.detail}" for c in failed
    )
