"""Shared pytest setup: core test helpers importable as plain modules (as on MicroPython), and
the helpers in tests/helpers (simulated sites, fakes)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "core"))
sys.path.insert(0, str(ROOT / "tests" / "helpers"))
