"""docs/meters.md's table and per-meter sections are generated from the profiles and current."""

from __future__ import annotations

import subprocess
import sys

import pytest

from piletools import meters_doc


def test_generated_part_is_current() -> None:
    page = meters_doc.DOC.read_text(encoding="utf-8")
    assert meters_doc.render(page) == page, "run: python -m piletools.meters_doc"


def test_every_profile_has_a_row_and_a_section() -> None:
    page = meters_doc.DOC.read_text(encoding="utf-8")
    profiles = meters_doc.load_profiles()
    assert len(profiles) >= 15
    for p in profiles:
        assert f"| `{p['id']}` |" in page
        assert f"— `{p['id']}`" in page


def test_a_stale_page_is_detected_and_prose_outside_the_markers_is_kept() -> None:
    page = meters_doc.DOC.read_text(encoding="utf-8")
    stale = page.replace("| 2400 8E1 |", "| 9600 8N1 |", 1)
    assert stale != page
    assert meters_doc.render(stale) == page
    with pytest.raises(ValueError, match="markers"):
        meters_doc.render("no markers here")


def test_check_command_exit_status() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "piletools.meters_doc", "--check"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
