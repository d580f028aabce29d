"""Shared pytest setup: core test helpers importable as plain modules, as on MicroPython."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "core"))
