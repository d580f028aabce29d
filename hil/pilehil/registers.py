"""Register images: canonical meter values encoded into 16-bit registers as a profile says.

A *register image* maps ``(function, register)`` to a 16-bit word, where ``function`` is the
Modbus read function that reaches the register (3 = holding, 4 = input) and ``register`` is the
0-based protocol address. Profiles are the plain dicts of docs/meters.md ("Profile format reference"),
one TOML file per meter model in profiles/meters/, as `pilecore.profile` loads them.

Conversion rules (the contract with the gateway's decoder):

* ``raw = value / scale``; integer types round to the nearest integer (ties to even), computed
  on exact fractions so that e.g. 12.345 kWh at scale 0.01 is never off by one from float error;
  ``f32`` keeps the quotient as a float (then IEEE-754 single precision rounding applies).
* A value wider than one register is split into big-endian bytes, grouped into words; with
  ``word_order = "little"`` the words are stored least significant first; with
  ``byte_order = "little"`` the two bytes inside every register are swapped.
* Per-phase values (voltage, current) have a list of registers, one per phase, L1 first.
* A raw value outside the type's range raises ``ValueError``: a profile/scale mismatch is a
  bug to fix, not something to wrap silently.
"""

from __future__ import annotations

import struct
import tomllib
from collections.abc import Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

from pilecore import modbus as core_modbus
from pilecore import profile as core_profile

Profile = Mapping[str, Any]
RegisterImage = dict[tuple[int, int], int]
Number = int | float | Fraction

#: Canonical value names and their units, and the per-phase ones: the core's definitions.
CANONICAL_UNITS: dict[str, str] = {name: core_profile.canonical_unit(name) for name in core_profile.value_names()}
PER_PHASE = tuple(name for name in core_profile.value_names() if core_profile.is_per_phase(name))

#: Registers spanned by each value type (the core decoder's table).
TYPE_WIDTH: dict[str, int] = dict(core_modbus.TYPE_WIDTH)

#: Folder holding the repository's meter profiles (profiles/meters/<id>.toml).
PROFILES_DIR = Path(__file__).resolve().parents[2] / "profiles" / "meters"


def load_profile(path_or_id: str | Path) -> dict[str, Any]:
    """Read a meter profile TOML file; a bare id (``"eastron-sdm120"``) is looked up in
    profiles/meters/. Raises ``FileNotFoundError`` when neither exists."""
    path = Path(path_or_id)
    if not path.is_file():
        candidate = PROFILES_DIR / f"{path_or_id}.toml"
        if not candidate.is_file():
            raise FileNotFoundError(f"no meter profile file or id {str(path_or_id)!r}")
        path = candidate
    with path.open("rb") as f:
        return tomllib.load(f)


def _check_orders(byte_order: str, word_order: str) -> None:
    if byte_order not in ("big", "little") or word_order not in ("big", "little"):
        raise ValueError(f"byte_order/word_order must be 'big' or 'little', got {byte_order!r}/{word_order!r}")


def bytes_to_words(data: bytes, byte_order: str = "big", word_order: str = "big") -> list[int]:
    """Split big-endian ``data`` (even length) into registers in address order."""
    _check_orders(byte_order, word_order)
    words = [int.from_bytes(data[i : i + 2], byte_order) for i in range(0, len(data), 2)]  # type: ignore[arg-type]
    if word_order == "little":
        words.reverse()
    return words


def words_to_bytes(words: Sequence[int], byte_order: str = "big", word_order: str = "big") -> bytes:
    """Inverse of :func:`bytes_to_words`: registers in address order -> big-endian bytes."""
    _check_orders(byte_order, word_order)
    ordered = list(words)
    if word_order == "little":
        ordered.reverse()
    return b"".join(w.to_bytes(2, byte_order) for w in ordered)  # type: ignore[arg-type]


def raw_to_words(raw: Number, type_: str, byte_order: str = "big", word_order: str = "big") -> list[int]:
    """Encode one raw register value of ``type_`` into registers (address order)."""
    if type_ not in TYPE_WIDTH:
        raise ValueError(f"unknown register type {type_!r}")
    width = TYPE_WIDTH[type_]
    if type_ == "f32":
        data = struct.pack(">f", float(raw))
    else:
        if not isinstance(raw, int):
            raise TypeError(f"raw value for {type_} must be int, got {raw!r}")
        bits = 16 * width
        signed = type_.startswith("s")
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        if not lo <= raw <= hi:
            raise ValueError(f"raw value {raw} does not fit {type_}")
        data = raw.to_bytes(2 * width, "big", signed=signed)
    return bytes_to_words(data, byte_order, word_order)


def words_to_raw(words: Sequence[int], type_: str, byte_order: str = "big", word_order: str = "big") -> int | float:
    """Decode registers (address order) into the raw value of ``type_``."""
    if type_ not in TYPE_WIDTH:
        raise ValueError(f"unknown register type {type_!r}")
    if len(words) != TYPE_WIDTH[type_]:
        raise ValueError(f"{type_} needs {TYPE_WIDTH[type_]} registers, got {len(words)}")
    data = words_to_bytes(words, byte_order, word_order)
    if type_ == "f32":
        return struct.unpack(">f", data)[0]
    return int.from_bytes(data, "big", signed=type_.startswith("s"))


def to_raw(value: Number, scale: Number, type_: str) -> int | float:
    """``value / scale`` for the register; integers rounded half to even on exact fractions."""
    exact = _fraction(value) / _fraction(scale)
    if type_ == "f32":
        return float(exact)
    return round(exact)


def _fraction(x: Number) -> Fraction:
    # Scales and values written in TOML as decimals (0.01) mean the decimal, not the nearest
    # binary float, so floats go through their shortest repr.
    if isinstance(x, float):
        return Fraction(repr(x))
    return Fraction(x)


def value_spec(profile: Profile, name: str) -> Mapping[str, Any]:
    """The ``[values.<name>]`` table of a profile; ``KeyError`` if the meter lacks it."""
    return profile["values"][name]


def spec_registers(spec: Mapping[str, Any]) -> list[int]:
    """First register of each element of a value: one for scalars, one per phase for lists."""
    reg = spec["register"]
    return list(reg) if isinstance(reg, list | tuple) else [reg]


def spec_function(profile: Profile, spec: Mapping[str, Any]) -> int:
    """Read function for a value or identity table: its own ``function`` or the profile's."""
    return int(spec.get("function", profile.get("function", 3)))


def _orders(profile: Profile, spec: Mapping[str, Any]) -> tuple[str, str]:
    return (
        spec.get("byte_order", profile.get("byte_order", "big")),
        spec.get("word_order", profile.get("word_order", "big")),
    )


def encode_value(profile: Profile, name: str, value: Number | Sequence[Number]) -> RegisterImage:
    """Register image of value ``name`` (canonical unit) as ``profile`` maps it.

    Per-phase values take a sequence with one item per listed register (a scalar is applied
    to every phase)."""
    spec = value_spec(profile, name)
    regs = spec_registers(spec)
    values: list[Any] = list(value) if isinstance(value, list | tuple) else [value] * len(regs)
    if len(values) != len(regs):
        raise ValueError(f"{name}: {len(values)} values for {len(regs)} registers")
    fn = spec_function(profile, spec)
    type_ = spec["type"]
    byte_order, word_order = _orders(profile, spec)
    image: RegisterImage = {}
    for reg, v in zip(regs, values, strict=True):
        words = raw_to_words(to_raw(v, spec.get("scale", 1), type_), type_, byte_order, word_order)
        for i, w in enumerate(words):
            image[(fn, reg + i)] = w
    return image


def decode_value(profile: Profile, name: str, image: Mapping[tuple[int, int], int]) -> float | list[float]:
    """Inverse of :func:`encode_value` (value in the canonical unit, as a float).

    Returns a list for per-phase values (register lists), a float otherwise."""
    spec = value_spec(profile, name)
    fn = spec_function(profile, spec)
    type_ = spec["type"]
    byte_order, word_order = _orders(profile, spec)
    width = TYPE_WIDTH[type_]
    scale = spec.get("scale", 1)
    out = []
    for reg in spec_registers(spec):
        words = [image[(fn, reg + i)] for i in range(width)]
        raw = words_to_raw(words, type_, byte_order, word_order)
        out.append(float(raw * _fraction(scale)) if isinstance(raw, int) else raw * scale)
    return out if isinstance(spec["register"], list | tuple) else out[0]


def identity_span(profile: Profile) -> tuple[int, int, int] | None:
    """``(function, first register, count)`` of the serial number, or None for
    ``kind = "address"`` meters (no readable identity)."""
    ident = profile.get("identity") or {}
    if ident.get("kind", "serial") != "serial" or "register" not in ident:
        return None
    type_ = ident["type"]
    count = TYPE_WIDTH[type_] if type_ in TYPE_WIDTH else int(ident["count"])
    return spec_function(profile, ident), int(ident["register"]), count


def encode_identity(profile: Profile, serial: str) -> RegisterImage:
    """Register image of the serial number per the profile's ``[identity]`` table.

    ``u16/u32/u64``: the serial as a decimal integer (the profile's byte/word order applies);
    ``ascii``: 2 characters per register, first character in the high byte, right-padded with
    NUL; ``bcd``: 4 decimal digits per register, left-padded with zeros. Text and BCD are in
    register order whatever the profile's orders (a Carlo Gavazzi meter sends its numbers least
    significant word first but its serial text in reading order), as the core decodes them.
    Empty for meters without a serial register."""
    span = identity_span(profile)
    if span is None:
        return {}
    fn, reg, count = span
    ident = profile["identity"]
    type_ = ident["type"]
    byte_order, word_order = _orders(profile, ident)
    if type_ in TYPE_WIDTH:
        if not serial.isdigit():
            raise ValueError(f"serial {serial!r} must be decimal digits for {type_}")
        words = raw_to_words(int(serial), type_, byte_order, word_order)
    elif type_ == "ascii":
        data = serial.encode("ascii")
        if len(data) > 2 * count:
            raise ValueError(f"serial {serial!r} longer than {2 * count} characters")
        # text is in register order, first character high, whatever the numbers' orders
        words = bytes_to_words(data.ljust(2 * count, b"\0"))
    elif type_ == "bcd":
        if not serial.isdigit() or len(serial) > 4 * count:
            raise ValueError(f"serial {serial!r} must be at most {4 * count} decimal digits")
        words = bytes_to_words(bytes.fromhex(serial.zfill(4 * count)))
    else:
        raise ValueError(f"unknown identity type {type_!r}")
    return {(fn, reg + i): w for i, w in enumerate(words)}


def decode_identity(profile: Profile, image: Mapping[tuple[int, int], int]) -> str | None:
    """Inverse of :func:`encode_identity`, normalised: integers and BCD without leading
    zeros, ASCII without trailing NUL/space padding. None when the meter has no serial."""
    span = identity_span(profile)
    if span is None:
        return None
    fn, reg, count = span
    ident = profile["identity"]
    type_ = ident["type"]
    byte_order, word_order = _orders(profile, ident)
    words = [image[(fn, reg + i)] for i in range(count)]
    if type_ in TYPE_WIDTH:
        return str(words_to_raw(words, type_, byte_order, word_order))
    data = words_to_bytes(words)  # text and BCD digits: register order (see encode_identity)
    if type_ == "ascii":
        return data.rstrip(b"\0 ").decode("ascii", "replace")
    return data.hex().lstrip("0") or "0"


def encode_ratios(profile: Profile, ratios: Mapping[str, int]) -> RegisterImage:
    """Register image of the transformer ratios a profile's ``[ratios]`` table names."""
    image: RegisterImage = {}
    byte_order, word_order = _orders(profile, {})
    for name, spec in (profile.get("ratios") or {}).items():
        fn = spec_function(profile, spec)
        words = raw_to_words(int(ratios.get(name, 1)), spec["type"], byte_order, word_order)
        for i, w in enumerate(words):
            image[(fn, spec["register"] + i)] = w
    return image


def mapped_registers(profile: Profile) -> set[tuple[int, int]]:
    """Every ``(function, register)`` a profile defines (values, ratios and identity)."""
    out: set[tuple[int, int]] = set()
    for spec in (profile.get("ratios") or {}).values():
        fn = spec_function(profile, spec)
        out.update((fn, spec["register"] + i) for i in range(TYPE_WIDTH[spec["type"]]))
    for spec in (profile.get("values") or {}).values():
        fn = spec_function(profile, spec)
        for reg in spec_registers(spec):
            out.update((fn, reg + i) for i in range(TYPE_WIDTH[spec["type"]]))
    span = identity_span(profile)
    if span is not None:
        fn, reg, count = span
        out.update((fn, reg + i) for i in range(count))
    return out
