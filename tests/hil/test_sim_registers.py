"""Register encoding of the meter simulator (pilehil.registers): types, orders, scale,
per-phase lists, identity encodings, unmapped registers."""

import struct
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pilehil.registers import (
    decode_identity,
    decode_value,
    encode_identity,
    encode_value,
    mapped_registers,
    raw_to_words,
    to_raw,
    words_to_raw,
)


def profile(**over):
    """A minimal 1-phase profile; keyword arguments replace top-level keys."""
    p = {
        "id": "test-1p",
        "phases": 1,
        "function": 4,
        "byte_order": "big",
        "word_order": "big",
        "values": {
            "energy_import": {"register": 0x0100, "type": "u32", "scale": 0.01, "unit": "kWh"},
            "power": {"register": 0x0010, "type": "s32", "scale": 1, "unit": "W"},
            "voltage": {"register": [0x0000], "type": "u16", "scale": 0.1, "unit": "V"},
            "current": {"register": [0x0001], "type": "u16", "scale": 0.01, "unit": "A"},
            "frequency": {"register": 0x0002, "type": "u16", "scale": 0.01, "unit": "Hz"},
            "power_factor": {"register": 0x0003, "type": "s16", "scale": 0.001, "unit": ""},
        },
        "identity": {"kind": "serial", "register": 0x4000, "type": "u32", "count": 2, "function": 3},
    }
    p.update(over)
    return p


def test_u32_big_big_scaled():
    # 1234.56 kWh at 0.01 kWh per unit = 123456 = 0x0001E240
    assert encode_value(profile(), "energy_import", 1234.56) == {(4, 0x0100): 0x0001, (4, 0x0101): 0xE240}


def test_word_order_little_puts_low_word_first():
    p = profile(word_order="little")
    assert encode_value(p, "energy_import", Fraction(123456, 100)) == {(4, 0x0100): 0xE240, (4, 0x0101): 0x0001}


def test_byte_order_little_swaps_bytes_in_each_register():
    p = profile(byte_order="little")
    assert encode_value(p, "energy_import", 1234.56) == {(4, 0x0100): 0x0100, (4, 0x0101): 0x40E2}


def test_signed_types_are_twos_complement():
    assert encode_value(profile(), "power", -2) == {(4, 0x0010): 0xFFFF, (4, 0x0011): 0xFFFE}
    assert encode_value(profile(), "power_factor", -0.5) == {(4, 0x0003): 0xFE0C}  # -500


def test_f32_and_u64_s64():
    p = profile()
    p["values"]["power"] = {"register": 0x20, "type": "f32", "scale": 1, "unit": "W"}
    p["values"]["energy_import"] = {"register": 0x30, "type": "s64", "scale": 0.001, "unit": "kWh"}
    hi, lo = struct.unpack(">HH", struct.pack(">f", 7000.5))
    assert encode_value(p, "power", 7000.5) == {(4, 0x20): hi, (4, 0x21): lo}
    assert encode_value(p, "energy_import", Fraction(0x0102030405, 1000)) == {
        (4, 0x30): 0x0000,
        (4, 0x31): 0x0001,
        (4, 0x32): 0x0203,
        (4, 0x33): 0x0405,
    }
    assert raw_to_words(0x0102030405060708, "u64", "big", "little") == [0x0708, 0x0506, 0x0304, 0x0102]


def test_scale_uses_exact_decimals_and_rounds_half_to_even():
    assert to_raw(12.345, 0.01, "u32") == 1234  # 1234.5 -> even
    assert to_raw(12.355, 0.01, "u32") == 1236  # 1235.5 -> even
    assert to_raw(0.29, 0.01, "u16") == 29  # 0.29/0.01 is 28.999999999999996 in floats
    assert to_raw(Fraction(1, 3), 1, "f32") == pytest.approx(1 / 3)


def test_raw_out_of_range_is_an_error():
    with pytest.raises(ValueError):
        encode_value(profile(), "voltage", [7000.0])  # 70000 > u16
    with pytest.raises(ValueError):
        encode_value(profile(), "energy_import", -1)


def test_per_phase_registers():
    p = profile(phases=3)
    p["values"]["voltage"] = {"register": [0x0000, 0x0002, 0x0004], "type": "u16", "scale": 0.1, "unit": "V"}
    image = encode_value(p, "voltage", [230.0, 231.5, 229.9])
    assert image == {(4, 0): 2300, (4, 2): 2315, (4, 4): 2299}
    assert decode_value(p, "voltage", image) == pytest.approx([230.0, 231.5, 229.9])
    with pytest.raises(ValueError):
        encode_value(p, "voltage", [230.0, 231.0])


def test_value_function_override():
    p = profile()
    p["values"]["frequency"]["function"] = 3
    assert encode_value(p, "frequency", 50.0) == {(3, 0x0002): 5000}


def test_identity_integer_ascii_bcd():
    assert encode_identity(profile(), "305419896") == {(3, 0x4000): 0x1234, (3, 0x4001): 0x5678}
    p = profile(identity={"kind": "serial", "register": 0x10, "type": "ascii", "count": 3, "function": 3})
    assert encode_identity(p, "AB1") == {(3, 0x10): 0x4142, (3, 0x11): 0x3100, (3, 0x12): 0}
    assert decode_identity(p, encode_identity(p, "AB1")) == "AB1"
    p = profile(identity={"kind": "serial", "register": 0x10, "type": "bcd", "count": 2, "function": 4})
    assert encode_identity(p, "123456") == {(4, 0x10): 0x0012, (4, 0x11): 0x3456}
    assert decode_identity(p, encode_identity(p, "123456")) == "123456"
    with pytest.raises(ValueError):
        encode_identity(p, "123456789")  # 9 digits in 2 registers


def test_identity_kind_address_has_no_registers():
    p = profile(identity={"kind": "address", "note": "no serial register"})
    assert encode_identity(p, "whatever") == {}
    assert decode_identity(p, {}) is None


def test_mapped_registers_cover_values_and_identity():
    mapped = mapped_registers(profile())
    assert (4, 0x0100) in mapped and (4, 0x0101) in mapped and (4, 0x0102) not in mapped
    assert (3, 0x4000) in mapped and (3, 0x4001) in mapped and (4, 0x4000) not in mapped
    assert len(mapped) == 2 + 2 + 1 + 1 + 1 + 1 + 2


TYPES = {
    "u16": (0, 2**16 - 1),
    "s16": (-(2**15), 2**15 - 1),
    "u32": (0, 2**32 - 1),
    "s32": (-(2**31), 2**31 - 1),
    "u64": (0, 2**64 - 1),
    "s64": (-(2**63), 2**63 - 1),
}


@given(
    st.sampled_from(sorted(TYPES)), st.data(), st.sampled_from(["big", "little"]), st.sampled_from(["big", "little"])
)
def test_integer_round_trip(type_, data, byte_order, word_order):
    lo, hi = TYPES[type_]
    raw = data.draw(st.integers(lo, hi))
    words = raw_to_words(raw, type_, byte_order, word_order)
    assert all(0 <= w <= 0xFFFF for w in words)
    assert words_to_raw(words, type_, byte_order, word_order) == raw


@given(
    st.floats(width=32, allow_nan=False, allow_infinity=False),
    st.sampled_from(["big", "little"]),
    st.sampled_from(["big", "little"]),
)
def test_f32_round_trip(value, byte_order, word_order):
    assert words_to_raw(raw_to_words(value, "f32", byte_order, word_order), "f32", byte_order, word_order) == value
