"""Every ESP32 board's RAM budget, enforced on real MicroPython (docs/esp32.md, "RAM budget").

The example ESP32 sites (8 and 16 piles, a bay each) run through the scripted day of
tools/piletools/mpy_budget.py on the MicroPython 1.27 WebAssembly VM against the simulator and
mosquitto, the live set measured after every main-loop pass.  A board that states it is
supported must fit `2 x peak live + TLS room <= heap_kb`; a board that does not fit must say
so (`unsupported`, with the measured reason).
"""

from __future__ import annotations

import pytest

from pilehil import mpyapp
from piletools import mpy_budget

pytestmark = pytest.mark.skipif(mpyapp.available() is not None, reason=str(mpyapp.available()))

SIZES = (8, 16)


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    root = tmp_path_factory.mktemp("ram")
    return {n: mpy_budget.measure(n, root / f"s{n}") for n in SIZES}


@pytest.mark.parametrize("board_id", sorted(mpy_budget.boards()))
def test_each_esp32_board_fits_its_heap_or_is_marked_unsupported(figures, board_id):
    board = mpy_budget.boards()[board_id]
    assert board.get("heap_kb"), f"{board_id}: an ESP32 board file must state heap_kb (and heap_source)"
    assert board.get("heap_source"), f"{board_id}: say where the heap_kb figure comes from"
    verdicts = {n: mpy_budget.verdict(board, f) for n, f in figures.items()}
    if board.get("unsupported"):
        # the mark must be true: the largest site does not fit this board's heap
        assert not verdicts[max(SIZES)][0], f"{board_id} is marked unsupported but fits: {verdicts}"
    else:
        for n, (fits, _, text) in verdicts.items():
            assert fits, f"{board_id} with {n} piles + {n} bays: {text}"


def test_the_scripted_day_really_ran(figures):
    for f in figures.values():
        assert f["vm"].startswith("1.27") and f["code"] == "mpy"
        assert f["outbox_in_outage"] >= 3  # telemetry was stored while the broker was away
        assert f["seq"] > 10 and f["passes"] > 100
        # the measurement sees the App: the live set grows with the site
        assert f["baseline"] < f["import"] < f["after_app"] <= f["peak_live"]
    assert figures[16]["after_app"] > figures[8]["after_app"]
