"""The shipped meter profiles (profiles/meters/*.toml) are valid, consistent, plain data.

Besides running the core validator, this test re-checks the structural rules with its own
code (so a validator bug cannot hide a broken profile), pins each meter's anchor registers to
the manufacturer documents named in docs/meters.md, and checks the raw TOML text for the
conventions the format asks for (hex register addresses, file name = id).
"""

from __future__ import annotations

import json
import re
import struct
import tomllib
from pathlib import Path
from typing import Any

import pytest

from pilecore import profile

ROOT = Path(__file__).resolve().parents[2]
METERS = ROOT / "profiles" / "meters"
ALL_FILES = sorted(METERS.glob("*.toml"))


def _protocol(path: Path) -> str:
    with path.open("rb") as f:
        return tomllib.load(f).get("protocol", "modbus")


# Register-map checks apply to Modbus profiles; DL/T 645 profiles name data items instead.
FILES = [p for p in ALL_FILES if _protocol(p) == "modbus"]
DLT_FILES = [p for p in ALL_FILES if _protocol(p) == "dlt645"]
WIDTH = {"u16": 1, "s16": 1, "u32": 2, "s32": 2, "f32": 2, "u64": 4, "s64": 4}

# (function, register, type, scale) of energy_import and power, as read from each meter's
# manufacturer document (see the profile's `source`). A profile edit that moves these must
# also update this table, on purpose.
ANCHORS = {
    "chint-ddsu666": {"energy_import": (3, 0x4000, "f32", 1.0), "power": (3, 0x2004, "f32", 1000.0)},
    "chint-dtsu666": {"energy_import": (3, 0x101E, "f32", 1.0), "power": (3, 0x2012, "f32", 0.1)},
    "eastron-sdm120": {"energy_import": (4, 0x0048, "f32", 1.0), "power": (4, 0x000C, "f32", 1.0)},
    "eastron-sdm630": {"energy_import": (4, 0x0048, "f32", 1.0), "power": (4, 0x0034, "f32", 1.0)},
    "abb-b23": {"energy_import": (3, 0x5000, "u64", 0.01), "power": (3, 0x5B14, "s32", 0.01)},
    "acrel-adl400": {"energy_import": (3, 0x000A, "u32", 0.01), "power": (3, 0x081A, "f32", 1000.0)},
    "carlo-gavazzi-em340": {"energy_import": (3, 0x0034, "s32", 0.1), "power": (3, 0x0028, "s32", 0.1)},
    "carlo-gavazzi-em24": {"energy_import": (3, 0x0034, "s32", 0.1), "power": (3, 0x0028, "s32", 0.1)},
    "schneider-iem3000": {"energy_import": (3, 0x0C83, "s64", 0.001), "power": (3, 0x0BF3, "f32", 1000.0)},
    "janitza-b23": {"energy_import": (3, 0x4A7C, "f32", 0.001), "power": (3, 0x4A52, "f32", 1.0)},
    "orno-or-we-516": {"energy_import": (3, 0x0108, "f32", 1.0), "power": (3, 0x001C, "f32", 1000.0)},
    "socomec-countis-e23": {"energy_import": (3, 0xC702, "u32", 0.01), "power": (3, 0xC568, "s32", 10.0)},
    "acrel-adw300": {"energy_import": (3, 0x003E, "u32", 0.01), "power": (3, 0x0024, "s32", 1.0)},
    "huawei-dtsu666-h": {"energy_import": (3, 0x0876, "f32", 1.0), "power": (3, 0x084E, "f32", 0.1)},
}
# (data identifier, bytes, decimals, scale) of energy_import and power of DL/T 645 profiles:
# the standard's appendix A items (forward active energy XXXXXX.XX kWh, active power XX.XXXX kW).
DLT_ANCHORS = {
    "chint-dtsu666-dlt645": {"energy_import": (0x00010000, 4, 2, 1.0), "power": (0x02030000, 3, 4, 1000.0)},
    "chint-ddsu666-dlt645": {"energy_import": (0x00010000, 4, 2, 1.0), "power": (0x02030000, 3, 4, 1000.0)},
    "acrel-ddsd1352-dlt645": {"energy_import": (0x00010000, 4, 2, 1.0), "power": (0x02030000, 3, 4, 1000.0)},
    "acrel-dtsd1352-dlt645": {"energy_import": (0x00010000, 4, 2, 1.0), "power": (0x02030000, 3, 4, 1000.0)},
}
# (register, type, function) of each serial-number identity, from the same documents.
SERIAL_IDENTITY = {
    "eastron-sdm120": (0xFC00, "u32", 3),
    "eastron-sdm630": (0xFC00, "u32", 3),
    "abb-b23": (0x8900, "u32", 3),
    "carlo-gavazzi-em340": (0x5000, "ascii", 3),
    "carlo-gavazzi-em24": (0x5000, "ascii", 3),
    "schneider-iem3000": (0x0081, "u32", 3),
    "orno-or-we-516": (0x0000, "u32", None),
}


def load(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        return tomllib.load(f)


def ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


def test_every_expected_meter_ships() -> None:
    assert set(ids(FILES)) == set(ANCHORS)
    assert set(ids(DLT_FILES)) == set(DLT_ANCHORS)
    assert len(ALL_FILES) >= 15, "issue 14 asks for fifteen or more meter profiles"


@pytest.mark.parametrize("path", ALL_FILES, ids=ids(ALL_FILES))
def test_profile_validates(path: Path) -> None:
    assert profile.validate_profile(load(path), path.stem) == []


@pytest.mark.parametrize("path", ALL_FILES, ids=ids(ALL_FILES))
def test_profile_states_its_confidence(path: Path) -> None:
    assert load(path).get("confidence") in ("high", "medium", "low")


@pytest.mark.parametrize("path", DLT_FILES, ids=ids(DLT_FILES))
def test_dlt645_anchor_items_are_the_standards(path: Path) -> None:
    p = load(path)
    for name, (di, nbytes, decimals, scale) in DLT_ANCHORS[path.stem].items():
        spec = p["values"][name]
        assert (spec["di"], spec["bytes"], spec["decimals"]) == (di, nbytes, decimals), name
        assert spec["scale"] == pytest.approx(scale), name
    assert (p["serial"]["baud"], p["serial"]["parity"]) == (2400, "E")  # the standard's default
    assert "function" not in p and "max_block" not in p


@pytest.mark.parametrize("path", ALL_FILES, ids=ids(ALL_FILES))
def test_file_name_is_id(path: Path) -> None:
    assert load(path)["id"] == path.stem
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)+", path.stem)


@pytest.mark.parametrize("path", FILES, ids=ids(FILES))
def test_registers_are_written_in_hex(path: Path) -> None:
    """The format asks for wire addresses in hex, which also keeps "30073"-style numbers out."""
    text = path.read_text(encoding="utf-8")
    lines = [ln for ln in text.splitlines() if re.match(r"\s*register\s*=", ln)]
    assert lines
    for line in lines:
        rhs = line.split("=", 1)[1].split("#", 1)[0]
        numbers = re.findall(r"[0-9A-Za-z_]+", rhs)
        assert numbers, line
        for number in numbers:
            assert re.fullmatch(r"0x[0-9A-F]{4}", number), line


def spans(p: dict[str, Any]) -> list[tuple[int, int, int, str]]:
    """(function, first, last, what) for every value register and a serial identity."""
    out = []
    for name, spec in p["values"].items():
        regs = spec["register"] if isinstance(spec["register"], list) else [spec["register"]]
        width = WIDTH[spec["type"]]
        for i, reg in enumerate(regs):
            out.append((spec.get("function", p["function"]), reg, reg + width - 1, f"{name}[{i}]"))
    for name, spec in p.get("ratios", {}).items():
        reg = spec["register"]
        out.append((spec.get("function", p["function"]), reg, reg + WIDTH[spec["type"]] - 1, f"ratio {name}"))
    ident = p["identity"]
    if ident["kind"] == "serial":
        width = WIDTH.get(ident["type"], ident.get("count"))
        out.append((ident.get("function", p["function"]), ident["register"], ident["register"] + width - 1, "identity"))
    return out


@pytest.mark.parametrize("path", FILES, ids=ids(FILES))
def test_no_two_entries_share_a_register(path: Path) -> None:
    entries = spans(load(path))
    for i, (fa, a0, a1, wa) in enumerate(entries):
        for fb, b0, b1, wb in entries[i + 1 :]:
            assert fa != fb or a1 < b0 or b1 < a0, f"{wa} and {wb} overlap"


@pytest.mark.parametrize("path", FILES, ids=ids(FILES))
def test_every_entry_fits_one_read(path: Path) -> None:
    p = load(path)
    assert 1 <= p["max_block"] <= 125
    for _function, first, last, what in spans(p):
        assert last - first + 1 <= p["max_block"], what
        assert 0 <= first <= last <= 0xFFFF, what


@pytest.mark.parametrize("path", FILES, ids=ids(FILES))
def test_per_phase_values_list_one_register_per_phase(path: Path) -> None:
    p = load(path)
    for name in ("voltage", "current"):
        if name in p["values"]:
            assert len(p["values"][name]["register"]) == p["phases"], name
            assert len(profile.value_registers(p, name)) == p["phases"]


@pytest.mark.parametrize("path", ALL_FILES, ids=ids(ALL_FILES))
def test_ranges_fit_a_pile_meter(path: Path) -> None:
    """Sane ranges, independent of the validator: what a real pile meter can show."""
    v = load(path)["values"]
    phases = load(path)["phases"]
    assert v["energy_import"]["min"] == 0
    assert v["energy_import"]["max"] <= 1e8
    if "voltage" in v:
        assert v["voltage"]["min"] >= 0 and 230 < v["voltage"]["max"] <= 300
        if phases == 1:
            # a single-phase meter runs on the line it measures: a reply saying 0 V (or
            # 5.7e-28 V, issue 9 defect #3) while it answers is never true
            assert v["voltage"]["min"] >= 100
    if "frequency" in v:
        assert v["frequency"]["min"] >= 45 and v["frequency"]["max"] <= 65
    if "power_factor" in v:
        assert v["power_factor"]["min"] == -1 and v["power_factor"]["max"] == 1
    if "current" in v:
        assert v["current"]["min"] == 0 and 32 <= v["current"]["max"] <= 125
        # the power range must not exceed what the current range allows at 300 V
        assert v["power"]["max"] <= phases * 300 * v["current"]["max"]
    assert v["power"]["min"] < 0 < v["power"]["max"]


@pytest.mark.parametrize("path", FILES, ids=ids(FILES))
def test_anchor_registers_match_the_manuals(path: Path) -> None:
    p = load(path)
    for name, (function, register, vtype, scale) in ANCHORS[path.stem].items():
        assert profile.value_registers(p, name) == [(function, register, vtype)], name
        assert p["values"][name]["scale"] == pytest.approx(scale), name


@pytest.mark.parametrize("path", FILES, ids=ids(FILES))
def test_identity(path: Path) -> None:
    ident = load(path)["identity"]
    if path.stem in SERIAL_IDENTITY:
        assert ident["kind"] == "serial"
        assert (ident["register"], ident["type"], ident.get("function")) == SERIAL_IDENTITY[path.stem]
    else:
        assert ident == {"kind": "address", "note": ident["note"]}
    assert len(ident["note"]) > 40  # says what it can and cannot catch


@pytest.mark.parametrize("path", ALL_FILES, ids=ids(ALL_FILES))
def test_source_and_quirks_are_documented(path: Path) -> None:
    p = load(path)
    assert len(p["source"]) > 80
    assert p["quirks"], "every shipped profile records its known quirks"
    doc = (ROOT / "docs" / "meters.md").read_text(encoding="utf-8")
    assert f"`{path.stem}`" in doc, "docs/meters.md has a section for this meter"


@pytest.mark.parametrize("path", ALL_FILES, ids=ids(ALL_FILES))
def test_plain_data_round_trips_through_json(path: Path) -> None:
    """The ESP32 receives profiles inside the compiled site JSON: no TOML-only types."""
    p = load(path)
    assert json.loads(json.dumps(p)) == p


def decode(raw: bytes, vtype: str) -> float:
    fmt = {"u16": ">H", "s16": ">h", "u32": ">I", "s32": ">i", "f32": ">f", "u64": ">Q", "s64": ">q"}[vtype]
    return struct.unpack(fmt, raw)[0]


# A typical raw reply per meter (bytes on the wire for the value) and what it must mean.
EXAMPLES = [
    # Tasmota's captured DDSU666 reply: 43 66 33 34 is 230.2 V.
    ("chint-ddsu666", "voltage", bytes.fromhex("43663334"), 230.2),
    # DTSU666 floats carry 0.1 V: 2300.0 is 230.0 V.
    ("chint-dtsu666", "voltage", struct.pack(">f", 2300.0), 230.0),
    # DDSU666 power is a float in kW.
    ("chint-ddsu666", "power", struct.pack(">f", 7.2), 7200.0),
    # ABB energy: u64 count of 0.01 kWh.
    ("abb-b23", "energy_import", (123456789).to_bytes(8, "big"), 1234567.89),
    # ABB power is signed 0.01 W: -1500 W export.
    ("abb-b23", "power", (-150000).to_bytes(4, "big", signed=True), -1500.0),
    # Acrel ADL400 energy: unsigned 32-bit count of 0.01 kWh (secondary side, times PT x CT).
    ("acrel-adl400", "energy_import", (123456).to_bytes(4, "big"), 1234.56),
]


@pytest.mark.parametrize(("meter", "name", "raw", "expected"), EXAMPLES)
def test_scales_turn_raw_replies_into_canonical_units(meter: str, name: str, raw: bytes, expected: float) -> None:
    p = load(METERS / f"{meter}.toml")
    spec = p["values"][name]
    assert len(raw) == 2 * WIDTH[spec["type"]]
    value = decode(raw, spec["type"]) * spec["scale"]
    assert value == pytest.approx(expected, rel=1e-6)
    assert spec["min"] <= value <= spec["max"]


def test_every_shipped_meter_profile_has_a_recognize_recipe():
    from pilegate import siteconfig

    profiles, problems = siteconfig.load_profiles()
    assert problems == []
    for pid in ("abb-b23", "acrel-adl400", "chint-ddsu666", "chint-dtsu666", "eastron-sdm120", "eastron-sdm630"):
        assert profiles[pid]["recognize"]["checks"], pid
