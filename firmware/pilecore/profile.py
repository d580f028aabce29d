"""Meter profiles: the contract checker and the few lookups the core needs.

A meter profile is plain data (one TOML file per model under profiles/meters/, embedded as
JSON on the ESP32) describing where a meter keeps its readings.  The format is specified in
docs/meters.md ("Profile format reference").  This module never reads files: the ports load
the data and hand the resulting dict to `validate_profile`, which returns every problem it
finds instead of stopping at the first, so `pilegate check` can report them all at once.

Register addresses are 0-based protocol addresses (what goes on the wire).  A value is read
with the profile's default function (3 = holding, 4 = input) unless it overrides it.
"""

# Canonical values, in the fixed order the core reports them, with their canonical units.
_VALUE_NAMES = ("energy_import", "power", "voltage", "current", "frequency", "power_factor")
_UNITS = {
    "energy_import": "kWh",
    "power": "W",
    "voltage": "V",
    "current": "A",
    "frequency": "Hz",
    "power_factor": "",
}
_REQUIRED_VALUES = ("energy_import", "power")
_PER_PHASE = ("voltage", "current")

# Registers spanned by each numeric type.
_WIDTHS = {"u16": 1, "s16": 1, "u32": 2, "s32": 2, "f32": 2, "u64": 4, "s64": 4}
_IDENTITY_INT_TYPES = ("u16", "u32", "u64")
_IDENTITY_BLOB_TYPES = ("ascii", "bcd")

_TOP_KEYS = (
    "id",
    "kind",
    "maker",
    "model",
    "phases",
    "source",
    "function",
    "byte_order",
    "word_order",
    "max_block",
    "min_gap_ms",
    "response_ms",
    "timeout_ms",
    "quirks",
    "serial",
    "values",
    "identity",
    "protocol",
    "products",
    "confidence",
    "ratios",
    "recognize",
)
_VALUE_KEYS = ("register", "type", "scale", "unit", "min", "max", "function", "decimals", "ratios")
_RATIO_KEYS = ("register", "type", "function")
_SERIAL_KEYS = ("baud", "parity", "stopbits")
_IDENTITY_KEYS = ("kind", "register", "type", "count", "function", "note")
_RECOGNIZE_KEYS = ("checks", "note")
_CHECK_KEYS = ("value", "phase", "register", "function", "type", "equals", "min", "max", "what")
_BAUDS = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)

# Inclusive bounds for the timing fields, in milliseconds.  Wide enough for any RS-485 meter
# at any supported baud rate, narrow enough to catch seconds typed where milliseconds belong.
_MS_BOUNDS = {"min_gap_ms": (0, 1000), "response_ms": (1, 2000), "timeout_ms": (20, 10000)}

MAX_BLOCK_LIMIT = 125  # Modbus: at most 125 registers in one read (function 3 or 4)

PROTOCOLS = ("modbus", "dlt645")
# DL/T 645 profiles name data items instead of registers (see pilecore.dlt645).
_DLT_VALUE_KEYS = ("di", "block", "bytes", "decimals", "signed", "scale", "unit", "min", "max")
_DLT_IDENTITY_KEYS = ("kind", "di", "bytes", "note")
_MODBUS_ONLY_KEYS = ("function", "byte_order", "word_order", "max_block")
DLT_READ = 0x11  # the "function" of a DL/T 645 read in (function, item, size) triples


def protocol(p):
    """The protocol a profile's meter speaks: "modbus" (default) or "dlt645"."""
    return p.get("protocol", "modbus")


def value_names():
    """The canonical value names, in the fixed order the core reports them."""
    return _VALUE_NAMES


def canonical_unit(name):
    """The unit every profile must declare for canonical value `name` (KeyError if unknown)."""
    return _UNITS[name]


def is_per_phase(name):
    """True for values given as one register per phase (voltage, current)."""
    return name in _PER_PHASE


def type_width(vtype):
    """Number of 16-bit registers a value of numeric type `vtype` spans.

    u16/s16 -> 1, u32/s32/f32 -> 2, u64/s64 -> 4.  Raises ValueError for any other type.
    """
    try:
        return _WIDTHS[vtype]
    except (KeyError, TypeError):
        raise ValueError("unknown value type %r" % (vtype,))


def value_registers(p, name):
    """Where to read canonical value `name` of a valid profile `p`.

    Returns a list of (function, register, type) tuples: one for a total value, one per phase
    (in phase order L1, L2, L3) for voltage and current.  An empty list means the profile does
    not provide that value.  Raises KeyError if `name` is not a canonical value name.
    The profile must already have passed `validate_profile`.
    """
    if name not in _UNITS:
        raise KeyError(name)
    spec = p.get("values", {}).get(name)
    if spec is None:
        return []
    if protocol(p) == "dlt645":
        dis = spec["di"] if isinstance(spec["di"], list) else [spec["di"]]
        return [(DLT_READ, di, spec["bytes"]) for di in dis]
    function = spec.get("function", p["function"])
    regs = spec["register"]
    if not isinstance(regs, list):
        regs = [regs]
    return [(function, reg, spec["type"]) for reg in regs]


def validate_profile(p, name):
    """Check profile `p` (a dict, as loaded from profiles/meters/<name>.toml) against the format.

    Returns a list of (key, message) pairs, empty when the profile is valid.  `key` is the
    dotted path of the offending entry (for example "values.voltage.register[2]"), so a caller
    can prefix the file name and show the user exactly what to fix.
    """
    errors = []
    if not isinstance(p, dict):
        return [("", "a profile must be a table, got %s" % _kind(p))]
    for key in p:
        if key not in _TOP_KEYS:
            errors.append((key, "unknown key"))

    if p.get("id") != name:
        errors.append(("id", "must equal the file name %r, got %r" % (name, p.get("id"))))
    if p.get("kind") != "meter":
        errors.append(("kind", 'must be "meter", got %r' % (p.get("kind"),)))
    for key in ("maker", "model", "source"):
        _check_text(p, key, key, errors)
    _check_products(p, errors)
    phases = p.get("phases")
    if not _is_int(phases) or phases not in (1, 3):
        errors.append(("phases", "must be 1 or 3, got %r" % (phases,)))
        phases = None
    proto = protocol(p)
    if proto not in PROTOCOLS:
        errors.append(("protocol", 'must be "modbus" or "dlt645", got %r' % (proto,)))
        return errors
    if proto == "dlt645":
        _check_dlt(p, phases, errors)
        return errors
    function = p.get("function")
    if not _is_int(function) or function not in (3, 4):
        errors.append(("function", "must be 3 (holding) or 4 (input), got %r" % (function,)))
    for key in ("byte_order", "word_order"):
        if p.get(key) not in ("big", "little"):
            errors.append((key, 'must be "big" or "little", got %r' % (p.get(key),)))
    max_block = p.get("max_block")
    if not _is_int(max_block) or not 1 <= max_block <= MAX_BLOCK_LIMIT:
        errors.append(("max_block", "must be an integer 1..%d, got %r" % (MAX_BLOCK_LIMIT, max_block)))
        max_block = None
    _check_timing(p, errors)
    _check_quirks(p, errors)
    _check_serial(p.get("serial"), errors)
    spans = _check_values(p.get("values"), phases, max_block, errors)
    spans.extend(_check_ratios(p, errors))
    ident = _check_identity(p.get("identity"), max_block, errors)
    if "recognize" in p:
        _check_recognize(p["recognize"], p.get("values"), phases, errors)
    if ident is not None:
        spans.append(ident)
    if _is_int(function):
        _check_overlaps(spans, function, errors)
    return errors


def _kind(x):
    return type(x).__name__


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x):
    """A finite int or float (bools excluded)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return False
    return x - x == 0  # inf - inf and nan - nan are nan, never 0


def _check_products(p, errors):
    """`products` (optional): the brands/models one map serves; `confidence` (optional)."""
    if "products" in p:
        items = p["products"]
        if not isinstance(items, list) or not items:
            errors.append(("products", "must be a non-empty list of strings, got %r" % (items,)))
        else:
            for i, item in enumerate(items):
                if not isinstance(item, str) or not item.strip():
                    errors.append(("products[%d]" % i, "must be a non-empty string, got %r" % (item,)))
    if "confidence" in p and p["confidence"] not in ("high", "medium", "low"):
        errors.append(("confidence", 'must be "high", "medium" or "low", got %r' % (p["confidence"],)))


def _check_dlt(p, phases, errors):
    """The DL/T 645 part of a profile: data items instead of registers."""
    for key in _MODBUS_ONLY_KEYS:
        if key in p:
            errors.append((key, "is a Modbus setting; a DL/T 645 profile must leave it out"))
    if "ratios" in p:
        errors.append(("ratios", "is a Modbus setting; a DL/T 645 profile must leave it out"))
    _check_timing(p, errors)
    _check_quirks(p, errors)
    _check_serial(p.get("serial"), errors)
    seen = {}
    for vname, spec, path in _value_tables(p.get("values"), errors):
        for key in spec:
            if key not in _DLT_VALUE_KEYS:
                errors.append((path + "." + key, "unknown key"))
        dis = spec.get("di")
        if vname in _PER_PHASE:
            if not isinstance(dis, list):
                errors.append((path + ".di", "must be a list of data identifiers, one per phase, got %r" % (dis,)))
                dis = []
            elif phases is not None and len(dis) != phases:
                errors.append((path + ".di", "must list %d identifier(s), one per phase, got %d" % (phases, len(dis))))
            if "block" in spec:
                _check_di(spec["block"], path + ".block", None, errors)
        else:
            if isinstance(dis, list):
                errors.append(
                    (path + ".di", "must be a single data identifier (only voltage and current are per-phase)")
                )
                dis = []
            else:
                dis = [dis]
            if "block" in spec:
                errors.append((path + ".block", "only per-phase values (voltage, current) can be read as a block"))
        for i, di in enumerate(dis):
            _check_di(di, path + ".di" + ("[%d]" % i if vname in _PER_PHASE else ""), seen, errors)
        nbytes, decimals = spec.get("bytes"), spec.get("decimals")
        if not _is_int(nbytes) or not 1 <= nbytes <= 8:
            errors.append((path + ".bytes", "must be the item's size in bytes, 1..8, got %r" % (nbytes,)))
        if not _is_int(decimals) or not 0 <= decimals <= 6:
            errors.append((path + ".decimals", "must be the item's decimals, 0..6, got %r" % (decimals,)))
        if "signed" in spec and not isinstance(spec["signed"], bool):
            errors.append((path + ".signed", "must be true or false, got %r" % (spec["signed"],)))
        scale = spec.get("scale")
        if not _is_number(scale) or scale == 0:
            errors.append((path + ".scale", "must be a finite non-zero number, got %r" % (scale,)))
        unit = _UNITS[vname]
        if spec.get("unit") != unit:
            errors.append((path + ".unit", "must be the canonical unit %r, got %r" % (unit, spec.get("unit"))))
        _check_range(vname, spec, path, errors)
    _check_dlt_identity(p.get("identity"), seen, errors)


def _check_di(di, path, seen, errors):
    if not _is_int(di) or not 0 <= di <= 0xFFFFFFFF:
        errors.append((path, "must be a data identifier 0x00000000..0xFFFFFFFF, got %r" % (di,)))
        return
    if seen is not None:
        if di in seen:
            errors.append((path, "data item 0x%08X is also %s" % (di, seen[di])))
        else:
            seen[di] = path


def _check_dlt_identity(ident, seen, errors):
    if not isinstance(ident, dict):
        errors.append(("identity", "missing table saying what identifies the meter"))
        return
    for key in ident:
        if key not in _DLT_IDENTITY_KEYS:
            errors.append(("identity." + key, "unknown key"))
    _check_text(ident, "note", "identity.note", errors)
    kind = ident.get("kind")
    if kind == "address":
        for key in ("di", "bytes"):
            if key in ident:
                errors.append(("identity." + key, 'must be omitted when kind is "address"'))
        return
    if kind != "serial":
        errors.append(("identity.kind", 'must be "serial" or "address", got %r' % (kind,)))
        return
    if "di" not in ident:
        errors.append(("identity.di", 'required when kind is "serial" (e.g. 0x04000402, the meter number)'))
    else:
        _check_di(ident["di"], "identity.di", seen, errors)
    nbytes = ident.get("bytes")
    if not _is_int(nbytes) or not 1 <= nbytes <= 32:
        errors.append(("identity.bytes", "must be the identity's size in BCD bytes, 1..32, got %r" % (nbytes,)))


def _check_text(table, key, path, errors):
    value = table.get(key)
    if not isinstance(value, str) or not value.strip():
        errors.append((path, "must be a non-empty string, got %r" % (value,)))


def _check_timing(p, errors):
    for key in ("min_gap_ms", "response_ms", "timeout_ms"):
        lo, hi = _MS_BOUNDS[key]
        value = p.get(key)
        if not _is_int(value) or not lo <= value <= hi:
            errors.append((key, "must be an integer %d..%d ms, got %r" % (lo, hi, value)))
    response, timeout = p.get("response_ms"), p.get("timeout_ms")
    if _is_int(response) and _is_int(timeout) and response >= timeout:
        errors.append(("timeout_ms", "must be greater than response_ms (%d), got %d" % (response, timeout)))


def _check_quirks(p, errors):
    if "quirks" not in p:
        return
    quirks = p["quirks"]
    if not isinstance(quirks, list):
        errors.append(("quirks", "must be a list of strings, got %s" % _kind(quirks)))
        return
    for i, item in enumerate(quirks):
        if not isinstance(item, str) or not item.strip():
            errors.append(("quirks[%d]" % i, "must be a non-empty string, got %r" % (item,)))


def _check_serial(serial, errors):
    if not isinstance(serial, dict):
        errors.append(("serial", "missing table of factory line settings (baud, parity, stopbits)"))
        return
    for key in serial:
        if key not in _SERIAL_KEYS:
            errors.append(("serial." + key, "unknown key"))
    baud = serial.get("baud")
    if not _is_int(baud) or baud not in _BAUDS:
        errors.append(("serial.baud", "must be one of %s, got %r" % (", ".join([str(b) for b in _BAUDS]), baud)))
    if serial.get("parity") not in ("N", "E", "O"):
        errors.append(("serial.parity", 'must be "N", "E" or "O", got %r' % (serial.get("parity"),)))
    stopbits = serial.get("stopbits")
    if not _is_int(stopbits) or stopbits not in (1, 2):
        errors.append(("serial.stopbits", "must be 1 or 2, got %r" % (stopbits,)))


def _check_register(reg, path, width, errors):
    """A register address that, with `width` registers, stays inside 0..65535."""
    if not _is_int(reg) or not 0 <= reg <= 0xFFFF:
        errors.append((path, "must be an integer register address 0..65535 (0x0000..0xFFFF), got %r" % (reg,)))
        return False
    if width is not None and reg + width - 1 > 0xFFFF:
        errors.append((path, "value of %d registers at 0x%04X runs past 0xFFFF" % (width, reg)))
        return False
    return True


def _value_tables(values, errors):
    """The [values] tables worth checking further, as (name, table, path): what every protocol
    shares (a table of canonical names, the required ones present) is checked here once."""
    out = []
    if not isinstance(values, dict):
        errors.append(("values", "missing table of canonical values"))
        return out
    for req in _REQUIRED_VALUES:
        if req not in values:
            errors.append(("values." + req, "required value is missing"))
    for vname in values:
        path = "values." + vname
        spec = values[vname]
        if vname not in _UNITS:
            errors.append((path, "unknown value; canonical names are " + ", ".join(_VALUE_NAMES)))
        elif not isinstance(spec, dict):
            errors.append((path, "must be a table, got %s" % _kind(spec)))
        else:
            out.append((vname, spec, path))
    return out


def _check_values(values, phases, max_block, errors):
    """Check the [values] tables; return (function or None, first, last, path) spans."""
    spans = []
    for vname, spec, path in _value_tables(values, errors):
        spans.extend(_check_value(vname, spec, path, phases, max_block, errors))
    return spans


def _check_value(vname, spec, path, phases, max_block, errors):
    spans = []
    for key in spec:
        if key not in _VALUE_KEYS:
            errors.append((path + "." + key, "unknown key"))
    vtype = spec.get("type")
    width = _WIDTHS.get(vtype) if isinstance(vtype, str) else None
    if width is None:
        errors.append((path + ".type", "must be one of %s, got %r" % (" ".join(sorted(_WIDTHS)), vtype)))
    elif max_block is not None and width > max_block:
        errors.append((path + ".type", "%s spans %d registers, more than max_block %d" % (vtype, width, max_block)))
    function = spec.get("function")
    if "function" in spec and (not _is_int(function) or function not in (3, 4)):
        errors.append((path + ".function", "must be 3 or 4, got %r" % (function,)))
        function = -1  # keeps this value out of the overlap check
    reg = spec.get("register")
    if vname in _PER_PHASE:
        if not isinstance(reg, list):
            errors.append(
                (path + ".register", "must be a list of registers, one per phase (L1, L2, L3), got %r" % (reg,))
            )
        else:
            if phases is not None and len(reg) != phases:
                errors.append(
                    (path + ".register", "must list %d register(s), one per phase, got %d" % (phases, len(reg)))
                )
            for i, r in enumerate(reg):
                rpath = "%s.register[%d]" % (path, i)
                if _check_register(r, rpath, width, errors) and width is not None:
                    spans.append((function, r, r + width - 1, rpath))
    else:
        rpath = path + ".register"
        if isinstance(reg, list):
            errors.append((rpath, "must be a single register (only voltage and current are per-phase), got a list"))
        elif _check_register(reg, rpath, width, errors) and width is not None:
            spans.append((function, reg, reg + width - 1, rpath))
    scale = spec.get("scale")
    if not _is_number(scale) or scale == 0:
        errors.append((path + ".scale", "must be a finite non-zero number, got %r" % (scale,)))
    unit = _UNITS[vname]
    if spec.get("unit") != unit:
        errors.append((path + ".unit", "must be the canonical unit %r, got %r" % (unit, spec.get("unit"))))
    if "decimals" in spec:
        d = spec["decimals"]
        if vtype != "f32":
            errors.append((path + ".decimals", "only for an f32 value (an integer's step is its scale)"))
        elif not _is_int(d) or not 0 <= d <= 6:
            errors.append((path + ".decimals", "must be the decimals the maker states, 0..6, got %r" % (d,)))
    _check_range(vname, spec, path, errors)
    return spans


def energy_step_wh(p, ratio=1):
    """The step of a profile's energy register in Wh: the least change the meter delivers.

    Derived from the profile data alone, so every profile gets it: an integer register counts
    in steps of its scale (scale 0.01 kWh -> 10 Wh); a DL/T 645 item in steps of its last
    decimal times its scale (2 decimals of kWh -> 10 Wh); an f32 register in steps of the
    decimals its maker states (`decimals`), and without them as finely as the gateway decodes
    energy, 1 Wh (the float carries its own precision; nothing coarser is known).  `ratio` is a
    factor applied by the meter's PT/CT ratios where the energy is scaled by them.  Never less
    than 1 Wh (energy is decoded to the Wh).  Returns an int when the step is a whole number of
    Wh, else a float.
    """
    spec = p["values"]["energy_import"]
    scale = spec.get("scale", 1)
    if protocol(p) == "dlt645":
        decimals = spec.get("decimals", 0)
    elif spec.get("type") == "f32":
        decimals = spec.get("decimals")
        if decimals is None:
            return 1
    else:
        decimals = 0
    step = scale * ratio * 1000 / 10**decimals
    whole = int(step + 0.5)
    if abs(step - whole) <= 1e-6 * step:
        step = whole
    return step if step >= 1 else 1


def _check_ratios(p, errors):
    """[ratios.<name>]: transformer ratios the meter holds (register, u16/u32, optional
    function); a value's `ratios` list names those its raw reading is multiplied by."""
    spans = []
    ratios = p.get("ratios", {})
    if not isinstance(ratios, dict):
        errors.append(("ratios", "must be a table of ratio registers, got %s" % _kind(ratios)))
        ratios = {}
    for name in ratios:
        spec, path = ratios[name], "ratios." + name
        if not isinstance(spec, dict):
            errors.append((path, "must be a table (register, type), got %s" % _kind(spec)))
            continue
        for key in spec:
            if key not in _RATIO_KEYS:
                errors.append((path + "." + key, "unknown key"))
        if spec.get("type") not in ("u16", "u32"):
            errors.append((path + ".type", "must be u16 or u32, got %r" % (spec.get("type"),)))
            continue
        function = spec.get("function")
        if "function" in spec and (not _is_int(function) or function not in (3, 4)):
            errors.append((path + ".function", "must be 3 or 4, got %r" % (function,)))
            function = -1
        width = _WIDTHS[spec["type"]]
        if _check_register(spec.get("register"), path + ".register", width, errors):
            spans.append((function, spec["register"], spec["register"] + width - 1, path + ".register"))
    for vname, spec in (p.get("values") or {}).items():
        if not isinstance(spec, dict) or "ratios" not in spec:
            continue
        names = spec["ratios"]
        if not isinstance(names, list) or not names:
            errors.append(("values.%s.ratios" % vname, "must be a non-empty list of ratio names"))
            continue
        for i, rname in enumerate(names):
            if rname not in ratios:
                errors.append(
                    ("values.%s.ratios[%d]" % (vname, i), "no [ratios.%s] table names its register" % (rname,))
                )
    return spans


def ratio_registers(p, names):
    """[(ratio name, function, register, type)] of the ratios `names` of a valid profile."""
    out = []
    for name in names:
        spec = p["ratios"][name]
        out.append((name, spec.get("function", p["function"]), spec["register"], spec["type"]))
    return out


def _check_range(vname, spec, path, errors):
    lo, hi = spec.get("min"), spec.get("max")
    ok = True
    for key, value in (("min", lo), ("max", hi)):
        if not _is_number(value):
            errors.append((path + "." + key, "must be a finite number, got %r" % (value,)))
            ok = False
    if not ok:
        return
    if lo >= hi:
        errors.append((path + ".max", "must be greater than min (%r), got %r" % (lo, hi)))
    if vname == "energy_import" and lo < 0:
        errors.append((path + ".min", "an energy total cannot be negative, got %r" % (lo,)))
    if vname == "power_factor" and (lo < -1 or hi > 1):
        errors.append(
            (path + ".max" if hi > 1 else path + ".min", "a power factor lies within -1..1, got %r..%r" % (lo, hi))
        )


def _check_recognize(rec, values, phases, errors):
    """Check [recognize]: the checks that tell this model from others when commissioning."""
    if not isinstance(rec, dict):
        errors.append(("recognize", "must be a table, got %s" % _kind(rec)))
        return
    for key in rec:
        if key not in _RECOGNIZE_KEYS:
            errors.append(("recognize." + key, "unknown key"))
    _check_text(rec, "note", "recognize.note", errors)
    checks = rec.get("checks")
    if not isinstance(checks, list) or not checks:
        errors.append(("recognize.checks", "must be a non-empty list of checks"))
        return
    for i, chk in enumerate(checks):
        _check_one_check(chk, "recognize.checks[%d]" % i, values, phases, errors)


def _check_one_check(chk, path, values, phases, errors):
    if not isinstance(chk, dict):
        errors.append((path, "must be a table, got %s" % _kind(chk)))
        return
    for key in chk:
        if key not in _CHECK_KEYS:
            errors.append((path + "." + key, "unknown key"))
    has_range = "min" in chk or "max" in chk
    for key in ("min", "max"):
        if key in chk and not _is_number(chk[key]):
            errors.append((path + "." + key, "must be a finite number, got %r" % (chk[key],)))
    if "value" in chk:
        name = chk["value"]
        if not isinstance(values, dict) or name not in values:
            errors.append((path + ".value", "must name a value this profile defines, got %r" % (name,)))
        phase = chk.get("phase")
        if phase is not None and (not _is_int(phase) or not 1 <= phase <= (phases or 3) or name not in _PER_PHASE):
            errors.append(
                (path + ".phase", "must be a phase 1..%d of voltage or current, got %r" % (phases or 3, phase))
            )
        for key in ("register", "function", "type", "equals"):
            if key in chk:
                errors.append((path + "." + key, "not with `value` (the value's own register is read)"))
        if not has_range:
            errors.append((path, "a value check needs min and/or max"))
        return
    _check_register(chk.get("register"), path + ".register", 1, errors)
    if chk.get("type") not in _WIDTHS:
        errors.append((path + ".type", "must be one of u16 s16 u32 s32 f32 u64 s64, got %r" % (chk.get("type"),)))
    function = chk.get("function", 3)
    if not _is_int(function) or function not in (3, 4):
        errors.append((path + ".function", "must be 3 or 4, got %r" % (function,)))
    if "equals" in chk and not _is_int(chk["equals"]):
        errors.append((path + ".equals", "must be an integer, got %r" % (chk["equals"],)))
    if "equals" not in chk and not has_range:
        errors.append((path, "a register check needs equals, or min and/or max"))
    _check_text(chk, "what", path + ".what", errors)


def _check_identity(ident, max_block, errors):
    """Check [identity]; return its (function or None, first, last, path) span, if any."""
    if not isinstance(ident, dict):
        errors.append(("identity", "missing table saying what identifies the meter"))
        return None
    for key in ident:
        if key not in _IDENTITY_KEYS:
            errors.append(("identity." + key, "unknown key"))
    _check_text(ident, "note", "identity.note", errors)
    kind = ident.get("kind")
    if kind == "address":
        for key in ("register", "type", "count", "function"):
            if key in ident:
                errors.append(("identity." + key, 'must be omitted when kind is "address"'))
        return None
    if kind != "serial":
        errors.append(("identity.kind", 'must be "serial" or "address", got %r' % (kind,)))
        return None
    itype, count = ident.get("type"), ident.get("count")
    width = None
    if itype in _IDENTITY_INT_TYPES:
        width = _WIDTHS[itype]
        if "count" in ident and count != width:
            errors.append(("identity.count", "a %s spans %d register(s), got count %r" % (itype, width, count)))
    elif itype in _IDENTITY_BLOB_TYPES:
        if not _is_int(count) or count < 1:
            errors.append(("identity.count", "%s needs count, a positive number of registers, got %r" % (itype, count)))
        else:
            width = count
    else:
        errors.append(("identity.type", "must be one of u16 u32 u64 ascii bcd, got %r" % (itype,)))
    if width is not None and max_block is not None and width > max_block:
        errors.append(("identity.count", "%d registers exceed max_block %d" % (width, max_block)))
    function = ident.get("function")
    if "function" in ident and (not _is_int(function) or function not in (3, 4)):
        errors.append(("identity.function", "must be 3 or 4, got %r" % (function,)))
        function = -1
    reg = ident.get("register")
    if "register" not in ident:
        errors.append(("identity.register", 'required when kind is "serial"'))
    elif _check_register(reg, "identity.register", width, errors) and width is not None:
        return (function, reg, reg + width - 1, "identity.register")
    return None


def _check_overlaps(spans, default_function, errors):
    """No two entries may share a register within one function space."""
    placed = []
    for function, first, last, path in spans:
        if function is None:
            function = default_function
        if function == -1:
            continue
        for other_function, ofirst, olast, opath in placed:
            if other_function == function and first <= olast and ofirst <= last:
                errors.append(
                    (
                        path,
                        "registers 0x%04X..0x%04X overlap %s (0x%04X..0x%04X) in "
                        "function %d space" % (first, last, opath, ofirst, olast, function),
                    )
                )
        placed.append((function, first, last, path))


# ---------------------------------------------------------------- presence sensors

_SENSOR_KEYS = (
    "id",
    "kind",
    "maker",
    "model",
    "source",
    "measures",
    "function",
    "register",
    "type",
    "scale",
    "present_values",
    "min_mm",
    "max_mm",
    "byte_order",
    "word_order",
    "max_block",
    "min_gap_ms",
    "response_ms",
    "timeout_ms",
    "quirks",
    "serial",
)


def validate_sensor_profile(p, name):
    """Check a presence-sensor profile (profiles/sensors/<name>.toml); [(key, message)].

    A sensor either measures a distance (`measures = "distance"`: raw * scale = mm, judged by the
    site's thresholds with hysteresis) or reports presence itself (`measures = "presence"`:
    present when the raw value is one of `present_values`).
    """
    errors = []
    if not isinstance(p, dict):
        return [("", "a profile must be a table, got %s" % _kind(p))]
    for key in p:
        if key not in _SENSOR_KEYS:
            errors.append((key, "unknown key"))
    if p.get("id") != name:
        errors.append(("id", "must equal the file name %r, got %r" % (name, p.get("id"))))
    if p.get("kind") != "presence":
        errors.append(("kind", 'must be "presence", got %r' % (p.get("kind"),)))
    for key in ("maker", "model", "source"):
        _check_text(p, key, key, errors)
    measures = p.get("measures")
    if measures not in ("distance", "presence"):
        errors.append(("measures", 'must be "distance" or "presence", got %r' % (measures,)))
    if p.get("function") not in (3, 4) or not _is_int(p.get("function")):
        errors.append(("function", "must be 3 (holding) or 4 (input), got %r" % (p.get("function"),)))
    typ = p.get("type")
    if typ not in ("u16", "s16", "u32", "s32"):
        errors.append(("type", "must be u16, s16, u32 or s32, got %r" % (typ,)))
        typ = None
    _check_register(p.get("register"), "register", _WIDTHS.get(typ), errors)
    for key in ("byte_order", "word_order"):
        if p.get(key, "big") not in ("big", "little"):
            errors.append((key, 'must be "big" or "little", got %r' % (p.get(key),)))
    if measures == "distance":
        if not _is_number(p.get("scale")) or p.get("scale") <= 0:
            errors.append(("scale", "must be a positive number (raw * scale = mm), got %r" % (p.get("scale"),)))
        lo, hi = p.get("min_mm"), p.get("max_mm")
        if not (_is_int(lo) and _is_int(hi) and 0 <= lo < hi <= 65535):
            errors.append(("min_mm", "min_mm and max_mm must be integers with 0 <= min_mm < max_mm <= 65535"))
    elif measures == "presence":
        pv = p.get("present_values")
        if not isinstance(pv, list) or not pv or not all(_is_int(v) for v in pv):
            errors.append(("present_values", "must be a non-empty list of integers"))
    max_block = p.get("max_block", 1)
    if not _is_int(max_block) or not 1 <= max_block <= MAX_BLOCK_LIMIT:
        errors.append(("max_block", "must be an integer 1..%d, got %r" % (MAX_BLOCK_LIMIT, max_block)))
    _check_timing(p, errors)
    _check_quirks(p, errors)
    _check_serial(p.get("serial"), errors)
    return errors
