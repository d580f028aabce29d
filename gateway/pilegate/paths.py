"""Where pilegate finds its data files (boards, meter profiles) on the Pi and in a checkout."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def data_root() -> Path:
    """The folder holding boards/ and profiles/.

    PILEGATE_HOME wins; then a source checkout (the repository this package sits in, as with
    `make setup`'s editable install); then an installed copy under <prefix>/share/pilegate.
    """
    env = os.environ.get("PILEGATE_HOME")
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "boards").is_dir():
        return checkout
    return Path(sys.prefix) / "share" / "pilegate"


def boards_dir() -> Path:
    return data_root() / "boards"


def meter_profiles_dir() -> Path:
    return data_root() / "profiles" / "meters"


def sensor_profiles_dir() -> Path:
    return data_root() / "profiles" / "sensors"
