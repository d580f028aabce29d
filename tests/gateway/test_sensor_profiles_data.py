"""The shipped presence-sensor profiles (profiles/sensors/*.toml) are valid, plain data, pinned
to their makers' documents, and documented in docs/sensors.md.

Besides running the core validator, the anchor table below pins each sensor's distance
register to the manual named in its `source`, and the manuals' own example frames are checked
byte for byte (our CRC, their request and reply), so a profile edit that moves a register must
also change this file on purpose.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from pilecore import profile

ROOT = Path(__file__).resolve().parents[2]
SENSORS = ROOT / "profiles" / "sensors"
FILES = sorted(SENSORS.glob("*.toml"))

# (function, register, type, scale, min_mm, max_mm, factory address, baud) from each maker's
# document (see the profile's `source`).
ANCHORS = {
    "benewake-tf02-i": (3, 0x0000, "u16", 10.0, 100, 40000, 0x01, 115200),
    "dfrobot-sen0492": (3, 0x0034, "u16", 1.0, 40, 4000, 0x50, 115200),
}

# Example frames printed in the makers' documents: (request, reply or None, mm in the reply).
FRAMES = {
    "benewake-tf02-i": [("01 03 00 00 00 01 84 0A", None, None), ("01 03 00 00 00 02 C4 0B", None, None)],
    "dfrobot-sen0492": [("50 03 00 34 00 01 C8 45", "50 03 02 07 0B 06 7F", 1803)],
}


def load(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        return tomllib.load(f)


def ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


def crc16(data: bytes) -> int:
    """Modbus CRC-16 (reflected 0xA001, init 0xFFFF), written out here on purpose."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def test_every_expected_sensor_ships():
    assert set(ids(FILES)) == set(ANCHORS)
    assert len(FILES) >= 2


@pytest.mark.parametrize("path", FILES, ids=ids(FILES))
def test_profile_validates(path: Path):
    assert profile.validate_sensor_profile(load(path), path.stem) == []


@pytest.mark.parametrize("path", FILES, ids=ids(FILES))
def test_file_name_is_id(path: Path):
    p = load(path)
    assert p["id"] == path.stem and p["kind"] == "presence"
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)+", path.stem)


def test_the_validator_catches_a_broken_profile():
    p = load(FILES[0])
    broken = dict(p, register="0", scale=0)
    keys = {k for k, _ in profile.validate_sensor_profile(broken, FILES[0].stem)}
    assert {"register", "scale"} <= keys
    assert profile.validate_sensor_profile(p, "another-name")  # id must match the file


@pytest.mark.parametrize("path", FILES, ids=ids(FILES))
def test_register_is_written_in_hex(path: Path):
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if re.match(r"\s*register\s*=", ln)]
    assert len(lines) == 1
    assert re.fullmatch(r"0x[0-9A-F]{4}", lines[0].split("=", 1)[1].split("#", 1)[0].strip())


@pytest.mark.parametrize("path", FILES, ids=ids(FILES))
def test_anchor_registers_match_the_manuals(path: Path):
    p = load(path)
    function, register, vtype, scale, lo, hi, _address, baud = ANCHORS[path.stem]
    assert (p["function"], p["register"], p["type"]) == (function, register, vtype)
    assert p["measures"] == "distance" and p["scale"] == pytest.approx(scale)
    assert (p["min_mm"], p["max_mm"]) == (lo, hi)
    assert p["serial"]["baud"] == baud
    assert hi / scale <= 0xFFFF  # the whole range fits the register


@pytest.mark.parametrize("path", FILES, ids=ids(FILES))
def test_manual_example_frames(path: Path):
    """The request the manual prints is what a master sends for this profile (same address,
    function, register, CRC); its example reply decodes with the profile's scale."""
    p = load(path)
    address = ANCHORS[path.stem][6]
    for request, reply, mm in FRAMES[path.stem]:
        req = bytes.fromhex(request)
        assert crc16(req[:-2]).to_bytes(2, "little") == req[-2:]
        assert (req[0], req[1], int.from_bytes(req[2:4], "big")) == (address, p["function"], p["register"])
        assert 1 <= int.from_bytes(req[4:6], "big") <= p["max_block"]
        if reply is not None:
            rep = bytes.fromhex(reply)
            assert crc16(rep[:-2]).to_bytes(2, "little") == rep[-2:]
            raw = int.from_bytes(rep[3:5], "big")
            assert raw * p["scale"] == mm
            assert p["min_mm"] <= mm <= p["max_mm"]


@pytest.mark.parametrize("path", FILES, ids=ids(FILES))
def test_source_and_quirks_are_documented(path: Path):
    p = load(path)
    assert len(p["source"]) > 120 and p["maker"] in p["source"]
    assert len(p["quirks"]) >= 3
    assert p["response_ms"] < p["timeout_ms"]
    doc = (ROOT / "docs" / "sensors.md").read_text(encoding="utf-8")
    assert f"`{path.stem}`" in doc, "docs/sensors.md has a section for this sensor"


@pytest.mark.parametrize("path", FILES, ids=ids(FILES))
def test_plain_data_round_trips_through_json(path: Path):
    """The ESP32 receives sensor profiles inside the compiled site JSON: no TOML-only types."""
    p = load(path)
    assert json.loads(json.dumps(p)) == p
