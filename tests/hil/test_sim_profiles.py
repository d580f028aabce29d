"""Every real meter profile (profiles/meters/*.toml) served by the simulator and read back by
a plain pymodbus client: values and serial round-trip through the encoder and the wire."""

from pathlib import Path

import pytest

from pilehil.clock import ManualClock
from pilehil.load import ConstantLoad
from pilehil.probe import client_for, read_profile_values, read_registers
from pilehil.registers import (
    decode_identity,
    decode_value,
    encode_identity,
    identity_span,
    load_profile,
    spec_function,
)
from pilehil.site import Site

PROFILE_DIR = Path(__file__).resolve().parents[2] / "profiles" / "meters"
# Modbus profiles only: DL/T 645 profiles are served by pilehil.dlt645 and read back through
# the gateway in tests/gateway/test_dlt645_sim.py.
PROFILE_FILES = [p for p in sorted(PROFILE_DIR.glob("*.toml")) if load_profile(p).get("protocol", "modbus") == "modbus"]
SERIAL = "12345678"


def tolerance(spec):
    """What the register type can carry: half a raw step for integers, f32 precision."""
    if spec["type"] == "f32":
        return {"rel": 1e-6, "abs": 1e-6}
    return {"abs": abs(spec["scale"]) / 2 + 1e-9}


def test_there_are_profiles():
    assert PROFILE_FILES, f"no meter profiles in {PROFILE_DIR}"


@pytest.mark.parametrize("path", PROFILE_FILES, ids=lambda p: p.stem)
@pytest.mark.parametrize("transport", ["pty", "tcp"])
def test_profile_round_trip_through_pymodbus(path, transport):
    profile = load_profile(path)
    assert profile["id"] == path.stem
    clock = ManualClock(0.0)
    power = 7000 if profile["phases"] == 1 else 11000
    with Site(clock=clock) as site:
        site.add_bus("b", transport)
        meter = site.add_meter("b", 7, profile, SERIAL, load=ConstantLoad(power), energy_wh=123_456)
        client = client_for(site.start()["b"], timeout=2.0)
        try:
            clock.advance(5 * 3600 + 0.5)
            truth = meter.values()
            read = read_profile_values(client, profile, 7)
            # the largest block the profile allows, from its first value register, answers
            fn = profile["function"]
            first = min(r for (f, r) in meter.mapped if f == fn)
            block = read_registers(client, fn, first, min(profile["max_block"], 125), 7)
        finally:
            client.close()
    image = meter.image()
    for name, spec in profile["values"].items():
        if name not in truth:
            continue
        expected = truth[name]
        assert read[name] == pytest.approx(expected, **tolerance(spec)), name
        assert read[name] == decode_value(profile, name, image)
        lo, hi = spec["min"], spec["max"]
        values = read[name] if isinstance(read[name], list) else [read[name]]
        assert all(lo <= v <= hi for v in values), f"{name} {values} outside [{lo}, {hi}]"
    expected_wh = 123_456 + power * 36_001 // 7_200  # power x 5 h 0.5 s, whole Wh
    assert meter.energy_wh == expected_wh
    assert read["energy_import"] == pytest.approx(expected_wh / 1000, **tolerance(profile["values"]["energy_import"]))
    assert block == [image.get((fn, first + i), 0) for i in range(len(block))]
    if identity_span(profile) is None:
        assert read["serial"] is None
    else:
        assert read["serial"] == SERIAL
        assert decode_identity(profile, encode_identity(profile, SERIAL)) == SERIAL


@pytest.mark.parametrize("path", PROFILE_FILES, ids=lambda p: p.stem)
def test_profile_values_use_known_functions(path):
    profile = load_profile(path)
    for spec in profile["values"].values():
        assert spec_function(profile, spec) in (3, 4)
