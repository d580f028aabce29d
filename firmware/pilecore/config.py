"""Site configuration: validation and compilation, the same rules on both ports.

`validate_site(cfg, boards, profiles)` takes the parsed site file (a dict from TOML on the Pi,
from the compiled JSON on the ESP32), the known boards and meter profiles (dicts keyed by id),
and returns `(compiled, problems)`:

    compiled  the configuration with every default filled in, plus the board definition and the
              profiles it uses embedded, so the ESP32 needs nothing else (None when problems)
    problems  a list of (key, message) pairs, every problem found, not only the first; key is a
              dotted path such as "pile[P03].meter.address" (an item without a usable id is
              named by its 1-based position: "pile[#3]")

The rules of one pile, one meter (一桩一表) are enforced here: every pile has exactly one meter,
no two piles (nor the site main meter) share a meter by bus and address or by bound serial.
"""

from pilecore import dlt645
from pilecore import schema as _schema

COMPILED_VERSION = 1
MAX_TOPIC = 200  # bytes of a topic part we are given; the gateway adds site, gateway and kind
_ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_."


def validate_site(cfg, boards, profiles, sensors=None):
    """Validate a site configuration; return (compiled or None, problems).

    `sensors` are the presence-sensor profiles (profiles/sensors), keyed by id.
    """
    sensors = sensors or {}
    problems = []
    out = check_table(cfg, _schema.site_schema(), "", problems)
    if out is None:
        return None, problems
    malformed = len(problems) > 0
    board = _cross(malformed, None, _check_board_ref, out, boards, problems)
    buses = _cross(malformed, {}, _check_buses, out, board, problems)
    claims = _cross(malformed, ({}, {}), _check_piles, out, buses, board, profiles, problems)
    _cross(malformed, None, _check_main_meter, out, buses, profiles, claims, problems)
    _cross(malformed, None, _check_bays, out, buses, board, sensors, claims[0], problems)
    _cross(malformed, None, _check_tariff, out, problems)
    _cross(malformed, None, _check_params, out, problems)
    _cross(malformed, None, _check_mqtt, out.get("mqtt"), problems)
    _cross(malformed, None, _check_topics, out, problems)
    if problems:
        return None, problems
    out["version"] = COMPILED_VERSION
    # An ESP32 loads this JSON into its small heap: the text meant for people (profile
    # sources, notes, quirks, board notes) stays in the repository (docs/config.md)
    slim = board["platform"].startswith("esp32")
    out["board_def"] = _without(board, BOARD_TEXT) if slim else board
    used = {}
    for pile in out["pile"]:
        used[pile["meter"]["profile"]] = profiles[pile["meter"]["profile"]]
    if "main_meter" in out:
        used[out["main_meter"]["profile"]] = profiles[out["main_meter"]["profile"]]
    out["profiles"] = _slim_profiles(used) if slim else used
    used_sensors = {}
    for bay in out.get("bay", ()):
        for sensor in bay.get("presence", ()):
            if sensor["type"] == "modbus":
                used_sensors[sensor["profile"]] = sensors[sensor["profile"]]
    out["sensor_profiles"] = _slim_profiles(used_sensors) if slim else used_sensors
    return out, problems


# Keys that only document: left out of the compiled JSON for an ESP32 (nothing there reads them)
PROFILE_TEXT = ("source", "note", "quirks", "products", "confidence")
BOARD_TEXT = ("notes", "heap_source", "unsupported")


def _without(table, keys):
    out = {}
    for k in table:
        if k not in keys:
            out[k] = table[k]
    return out


def _slim_profiles(used):
    out = {}
    for name in used:
        p = _without(used[name], PROFILE_TEXT)
        ident = p.get("identity")
        if isinstance(ident, dict) and "note" in ident:
            p["identity"] = _without(ident, ("note",))
        out[name] = p
    return out


def validate_board(board, name):
    """Validate one board definition; `name` is its file name (without extension)."""
    problems = []
    out = check_table(board, _schema.board_schema(), "", problems)
    if out is None:
        return None, problems
    _cross(len(problems) > 0, None, _check_board, out, name, problems)
    return (None if problems else out), problems


def _check_board(out, name, problems):
    """The rules between a board's keys (after the schema walk)."""
    if out["id"] != name:
        problems.append(("id", "is %r but the file is named %r; they must match" % (out["id"], name)))
    esp = out["platform"] in ("esp32", "esp32s3")
    if esp and "firmware_offset" not in out:
        problems.append(("firmware_offset", "missing: an ESP32 board must say where the firmware is flashed"))
    if esp and "heap_kb" not in out:
        problems.append(("heap_kb", "missing: an ESP32 board must state its heap for Python (docs/esp32.md)"))
    seen = {}
    for kind in ("uart", "input", "relay"):
        for item in out.get(kind, ()):
            where = "%s[%s]" % (kind, item["name"])
            if item["name"] in seen:
                problems.append((where + ".name", "duplicate name (also used by %s)" % seen[item["name"]]))
            seen[item["name"]] = where
            if kind == "uart":
                _check_board_uart(item, where, esp, problems)
    if "uart" in out and not any(u["role"] == "rs485" for u in out["uart"]):
        problems.append(("uart", 'no UART with role "rs485": the board cannot reach the meters'))


def _check_board_uart(uart, where, esp, problems):
    if esp:
        for pin in ("tx", "rx"):
            if pin not in uart:
                problems.append((where + "." + pin, "missing: an ESP32 UART needs its %s pin" % pin))
        if uart["role"] == "rs485" and uart["de_mode"] == "gpio" and "de" not in uart:
            problems.append((where + ".de", "missing: RS-485 on an ESP32 needs the DE/RE direction pin"))
    elif "device" not in uart:
        problems.append((where + ".device", "missing: a Raspberry Pi UART is named by its device path"))


def _cross(malformed, fallback, check, *args):
    """Run one cross check.  The checks trust the schema walk (a required key is there, a table
    is a table); when the walk already found problems, an item it reported may lack what a check
    reads, and that check is skipped: the file is refused with the problems already listed
    (found by fuzzing the compiled JSON: a presence sensor without `type` raised KeyError)."""
    try:
        return check(*args)
    except (KeyError, TypeError, AttributeError, IndexError, ValueError):
        if not malformed:
            raise
        return fallback


# ---------------------------------------------------------------- generic schema walk


def check_table(data, fields, path, problems):
    """Check `data` against a dict of field specs; return it with defaults filled in.

    Appends every problem to `problems`.  Returns None only when `data` is not a table at all.
    """
    if not isinstance(data, dict):
        problems.append((path or "(top)", "must be a table, not %s" % _kind_of(data)))
        return None
    out = {}
    for key in sorted(data):
        if key not in fields:
            problems.append((_join(path, key), "unknown key" + _suggest(key, fields)))
    for key in sorted(fields):
        spec = fields[key]
        where = _join(path, key)
        if key not in data:
            if spec[1]:
                problems.append((where, "missing: this key is required"))
            elif spec[2] is not None:
                out[key] = spec[2]
            continue
        value = _check_value(data[key], spec, where, problems)
        if value is not None:
            out[key] = value
    return out


def _check_value(value, spec, where, problems):
    kind, extra = spec[0], spec[3]
    if kind == "table":
        return check_table(value, extra, where, problems)
    if kind == "tables":
        return _check_tables(value, extra, where, problems)
    why = _scalar_problem(value, kind, extra)
    if why:
        problems.append((where, why))
        return None
    return value


def _check_tables(value, fields, where, problems):
    if not isinstance(value, list):
        problems.append((where, "must be an array of tables ([[%s]]), not %s" % (where, _kind_of(value))))
        return None
    items = []
    for i, item in enumerate(value):
        label = "%s[%s]" % (where, _item_label(item, i))
        checked = check_table(item, fields, label, problems)
        if checked is not None:
            items.append(checked)
    return items


def _scalar_problem(value, kind, extra):
    """Return why `value` is not a valid `kind`, or "" when it is."""
    if kind == "str":
        if not isinstance(value, str):
            return "must be a string, not %s" % _kind_of(value)
        if len(value) > extra:
            return "is %d characters long; at most %d allowed" % (len(value), extra)
        return ""
    if kind == "id":
        if not isinstance(value, str):
            return "must be a string, not %s" % _kind_of(value)
        return id_problem(value)
    if kind in ("int", "num"):
        if isinstance(value, bool) or not isinstance(value, int if kind == "int" else (int, float)):
            return "must be %s, not %s" % ("a whole number" if kind == "int" else "a number", _kind_of(value))
        if value != value:  # NaN compares false with every bound, so test it first
            return "nan is not a number: give a value from %s to %s" % (_fmt(extra[0]), _fmt(extra[1]))
        if value < extra[0] or value > extra[1]:
            return "%s is out of range: allowed %s to %s" % (_fmt(value), _fmt(extra[0]), _fmt(extra[1]))
        return ""
    if kind == "bool":
        if not isinstance(value, bool):
            return "must be true or false, not %s" % _kind_of(value)
        return ""
    if kind == "list":
        if not isinstance(value, list):
            return "must be an array, not %s" % _kind_of(value)
        for i, item in enumerate(value):
            why = _scalar_problem(item, extra, (0, 65535) if extra == "int" else 200)
            if why:
                return "item %d %s" % (i + 1, why)
        return ""
    if kind == "enum":
        for choice in extra:
            if value == choice and type(value) is type(choice):
                return ""
        return "%s is not allowed: use one of %s" % (_fmt(value), ", ".join([_fmt(c) for c in extra]))
    return ""


def id_problem(value):
    """Return why `value` is not a usable id (1-32 of A-Z a-z 0-9 - _ .), or ""."""
    if not value:
        return "must not be empty"
    if len(value) > 32:
        return "%r is too long: at most 32 characters" % value
    for ch in value:
        if ch not in _ID_CHARS:
            return "%r contains %r: ids may use only letters, digits, '-', '_' and '.'" % (value, ch)
    return ""


# ---------------------------------------------------------------- cross checks


def _check_board_ref(cfg, boards, problems):
    gw = cfg.get("gateway")
    if not gw or "board" not in gw:
        return None
    board = boards.get(gw["board"])
    if board is None:
        problems.append(
            (
                "gateway.board",
                "unknown board %r; known boards: %s" % (gw["board"], ", ".join(sorted(boards)) or "(none)"),
            )
        )
    return board


def _check_buses(cfg, board, problems):
    buses = {}
    for bus in cfg.get("bus", ()):
        where = "bus[%s]" % bus.get("name", "?")
        if "name" not in bus:
            continue
        if bus["name"] in buses:
            problems.append((where + ".name", "duplicate bus name %r" % bus["name"]))
            continue
        buses[bus["name"]] = bus
        if "port" in bus and board is not None:
            why = port_problem(bus["port"], board)
            if why:
                problems.append((where + ".port", why))
    return buses


def port_problem(port, board):
    """Return why `port` cannot carry an RS-485 bus on `board`, or ""."""
    uarts = {}
    for u in board.get("uart", ()):
        uarts[u["name"]] = u
    if port in uarts:
        if uarts[port]["role"] != "rs485":
            return "%r is the board's %s UART; meters must be on an RS-485 UART (%s)" % (
                port,
                uarts[port]["role"],
                _names(uarts, "rs485"),
            )
        return ""
    if board.get("platform", "").startswith("esp32"):
        return "%r is not a UART of board %s; use one of: %s" % (port, board.get("id"), _names(uarts, "rs485"))
    if port.startswith("/dev/"):
        for u in uarts.values():
            if u.get("device") == port and u["role"] == "console":
                return "%r is the board's console UART; meters must be on an RS-485 port" % port
        return ""
    for scheme in ("tcp://", "rtu+tcp://"):
        if port.startswith(scheme):
            return _hostport_problem(port[len(scheme) :], port)
    return "%r is not a serial device (/dev/...), tcp://host:port, rtu+tcp://host:port or a UART of the board (%s)" % (
        port,
        _names(uarts, "rs485"),
    )


def _names(uarts, role):
    names = [n for n in sorted(uarts) if uarts[n]["role"] == role]
    return ", ".join(names) if names else "none"


def parse_mqtt_url(url):
    """(tls, host, port) of mqtt[s]://host[:port][/...]; an IPv6 host is written in brackets
    ("mqtt://[::1]:1883") and returned without them.  ValueError for anything else."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("mqtt", "mqtts"):
        raise ValueError("%r must start with mqtts:// or mqtt://" % url)
    hostport = rest.split("/")[0]
    port = ""
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise ValueError("%r: IPv6 address without its closing ']'" % url)
        host, tail = hostport[1:end], hostport[end + 1 :]
        if tail:
            if not tail.startswith(":"):
                raise ValueError("%r: only ':port' may follow ']'" % url)
            port = tail[1:]
    else:
        host, sep, port = hostport.rpartition(":")
        if not sep:
            host, port = hostport, ""
        elif ":" in host:
            raise ValueError("%r: write an IPv6 address in brackets, e.g. mqtt://[::1]:1883" % url)
    if not host:
        raise ValueError("%r has no host" % url)
    tls = scheme == "mqtts"
    if port:
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError("%r: port %r is not a number 1-65535" % (url, port))
        return tls, host, int(port)
    return tls, host, 8883 if tls else 1883


def _hostport_problem(rest, port):
    host, sep, num = rest.rpartition(":")
    if not sep or not host:
        return "%r needs a host and a port, e.g. tcp://192.168.1.50:502" % port
    if not num.isdigit() or not 1 <= int(num) <= 65535:
        return "%r has no valid port number (1-65535)" % port
    return ""


def _meter_problems(meter, where, buses, profiles, problems):
    if "bus" in meter and meter["bus"] not in buses:
        problems.append(
            (
                where + ".bus",
                "unknown bus %r; define it in a [[bus]] table (buses: %s)"
                % (meter["bus"], ", ".join(sorted(buses)) or "none"),
            )
        )
    if "profile" in meter and meter["profile"] not in profiles:
        problems.append(
            (
                where + ".profile",
                "unknown meter profile %r; known profiles: %s"
                % (meter["profile"], ", ".join(sorted(profiles)) or "none"),
            )
        )
    prof = profiles.get(meter.get("profile"))
    if "address" in meter:
        _meter_address(meter, where, prof, problems)
    bus = buses.get(meter.get("bus")) if isinstance(buses, dict) else None
    port = bus.get("port", "") if isinstance(bus, dict) else ""
    if prof is not None and prof.get("protocol") == "dlt645" and isinstance(port, str) and port.startswith("tcp://"):
        problems.append(
            (
                where + ".bus",
                "bus %s is Modbus TCP (%s), which cannot carry DL/T 645 frames; put this meter on a "
                "serial port or an rtu+tcp:// converter" % (meter["bus"], port),
            )
        )
    if "ranges" in meter:
        _meter_ranges(meter, where, prof, problems)


def _meter_address(meter, where, prof, problems):
    """Modbus: 1..247.  DL/T 645: 12 digits (an int or a string; stored as the string)."""
    addr = meter["address"]
    if prof is not None and prof.get("protocol") == "dlt645":
        text = dlt645.normalise_address(addr)
        if text is None:
            problems.append(
                (
                    where + ".address",
                    "%s is not a DL/T 645 address: write the meter's 12-digit address as a string, "
                    'e.g. "000012345678" (on its nameplate or display, or found with the '
                    "broadcast address read)" % _fmt(addr),
                )
            )
            del meter["address"]
        else:
            meter["address"] = text
        return
    why = _scalar_problem(addr, "int", (1, 247))
    if why:
        problems.append((where + ".address", why + " (a Modbus address)"))
        del meter["address"]


def _meter_ranges(meter, where, prof, problems):
    """`ranges = {value = [min, max]}`: replaces the profile's sane range for this meter."""
    ranges = meter["ranges"]
    if not isinstance(ranges, dict):
        problems.append((where + ".ranges", "must be a table of value = [min, max], not %s" % _kind_of(ranges)))
        del meter["ranges"]
        return
    names = ("energy_import", "power", "voltage", "current", "frequency", "power_factor")
    for name in sorted(ranges):
        pair = ranges[name]
        path = where + ".ranges." + name
        if name not in names:
            problems.append((path, "unknown value; use one of %s" % ", ".join(names)))
        elif prof is not None and name not in prof.get("values", {}):
            problems.append((path, "profile %s does not read %s" % (prof.get("id"), name)))
        elif (
            not isinstance(pair, list)
            or len(pair) != 2
            or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in pair)
            or pair[0] >= pair[1]
        ):
            problems.append((path, "must be [min, max] with min < max, got %s" % _fmt(pair)))


def _check_piles(cfg, buses, board, profiles, problems):
    ids = {}
    by_addr = {}
    by_serial = {}
    for i, pile in enumerate(cfg.get("pile", ())):
        where = "pile[%s]" % _item_label(pile, i)
        pid = pile.get("id")
        if pid is not None:
            if pid in ids:
                problems.append((where + ".id", "duplicate pile id %r (also %s)" % (pid, ids[pid])))
            ids[pid] = where
        meter = pile.get("meter")
        if meter is None:
            continue
        _meter_problems(meter, where + ".meter", buses, profiles, problems)
        _claim_meter(meter, where, by_addr, by_serial, problems)
        _check_interlock(pile, where, buses, board, problems)
    return by_addr, by_serial


def _claim_meter(meter, where, by_addr, by_serial, problems):
    """One pile, one meter: a meter (bus+address, or serial) may belong to one pile only."""
    if "bus" in meter and "address" in meter:
        key = "%s/%s" % (meter["bus"], meter["address"])
        if key in by_addr:
            problems.append(
                (
                    where + ".meter.address",
                    "bus %s address %s is already the meter of %s; every pile needs a "
                    "meter of its own (一桩一表)" % (meter["bus"], meter["address"], by_addr[key]),
                )
            )
        else:
            by_addr[key] = where
    serial = meter.get("serial", "")
    if serial:
        if serial in by_serial:
            problems.append(
                (
                    where + ".meter.serial",
                    "serial %r is already bound to %s; one meter cannot meter two piles" % (serial, by_serial[serial]),
                )
            )
        else:
            by_serial[serial] = where


def _check_interlock(pile, where, buses, board, problems):
    relays = [r["name"] for r in (board or {}).get("relay", ())]
    if "relay" in pile and board is not None and pile["relay"] not in relays:
        problems.append(
            (
                where + ".relay",
                "board %s has no relay output %r (relays: %s)"
                % (board["id"], pile["relay"], ", ".join(relays) or "none"),
            )
        )
    coil = pile.get("coil")
    if coil and coil.get("bus") is not None and coil["bus"] not in buses:
        problems.append((where + ".coil.bus", "unknown bus %r" % coil["bus"]))
    if pile.get("interlock") == "relay" and "relay" not in pile and not coil:
        problems.append(
            (
                where + ".interlock",
                'is "relay" but the pile names neither a `relay` output nor a Modbus `coil` to switch',
            )
        )


def _check_main_meter(cfg, buses, profiles, claims, problems):
    """The optional site main meter: known bus and profile, and not any pile's meter."""
    meter = cfg.get("main_meter")
    if not meter:
        return
    _meter_problems(meter, "main_meter", buses, profiles, problems)
    by_addr, by_serial = claims
    if "bus" in meter and "address" in meter:
        key = "%s/%s" % (meter["bus"], meter["address"])
        if key in by_addr:
            problems.append(
                (
                    "main_meter.address",
                    "bus %s address %s is the meter of %s; the site "
                    "main meter must be a separate meter" % (meter["bus"], meter["address"], by_addr[key]),
                )
            )
        else:
            by_addr[key] = "main_meter"
    if meter.get("serial") and meter["serial"] in by_serial:
        problems.append(
            ("main_meter.serial", "serial %r is bound to %s" % (meter["serial"], by_serial[meter["serial"]]))
        )


def _check_bays(cfg, buses, board, sensors, devices, problems):
    """Bays: a known pile, sensors that exist and collide with nothing, a usable plug source.

    `devices` maps "bus/address" to the pile whose meter is there; sensors and pile controllers
    are added to it so no two devices share an address.
    """
    piles = set([p.get("id") for p in cfg.get("pile", ())])
    inputs = set([i["name"] for i in (board or {}).get("input", ())])
    used_inputs = {}
    ids = {}
    for i, bay in enumerate(cfg.get("bay", ())):
        where = "bay[%s]" % _item_label(bay, i)
        bid = bay.get("id")
        if bid is not None:
            if bid in ids:
                problems.append((where + ".id", "duplicate bay id %r" % bid))
            ids[bid] = where
        if "pile" in bay and bay["pile"] not in piles:
            problems.append(
                (
                    where + ".pile",
                    "names pile %r, which is not defined; piles: %s"
                    % (bay["pile"], ", ".join(sorted([p for p in piles if p])) or "none"),
                )
            )
        for k, sensor in enumerate(bay.get("presence", ())):
            swhere = "%s.presence[%d]" % (where, k + 1)
            if sensor["type"] == "input":
                _check_input(sensor, swhere, inputs, used_inputs, board, problems)
            else:
                _check_modbus_device(sensor, swhere, buses, devices, problems, sensors, "sensor")
        plug = bay.get("plug")
        if plug and plug["source"] == "input":
            _check_input(plug, where + ".plug", inputs, used_inputs, board, problems)
        elif plug and plug["source"] == "modbus":
            _check_modbus_device(plug, where + ".plug", buses, None, problems, None, "pile controller")
            if "register" not in plug:
                problems.append((where + ".plug.register", "missing: which register holds the plug state"))


def _check_input(item, where, inputs, used, board, problems):
    if "input" not in item:
        problems.append(
            (where + ".input", "missing: name the board input (%s)" % (", ".join(sorted(inputs)) or "none"))
        )
        return
    if board is not None and item["input"] not in inputs:
        problems.append(
            (
                where + ".input",
                "board %s has no input %r (inputs: %s)"
                % (board["id"], item["input"], ", ".join(sorted(inputs)) or "none"),
            )
        )
    elif item["input"] in used:
        problems.append((where + ".input", "input %r is already used by %s" % (item["input"], used[item["input"]])))
    else:
        used[item["input"]] = where


def _check_modbus_device(item, where, buses, devices, problems, profiles, what):
    for key in ("bus", "address"):
        if key not in item:
            problems.append((where + "." + key, "missing: a Modbus %s needs its bus and address" % what))
            return
    if item["bus"] not in buses:
        problems.append((where + ".bus", "unknown bus %r" % item["bus"]))
    if profiles is not None:
        if "profile" not in item:
            problems.append(
                (where + ".profile", "missing: name the sensor profile (%s)" % (", ".join(sorted(profiles)) or "none"))
            )
        elif item["profile"] not in profiles:
            problems.append(
                (
                    where + ".profile",
                    "unknown sensor profile %r; known: %s" % (item["profile"], ", ".join(sorted(profiles)) or "none"),
                )
            )
    if devices is not None:
        key = "%s/%d" % (item["bus"], item["address"])
        if key in devices:
            problems.append(
                (
                    where + ".address",
                    "bus %s address %d is already used by %s" % (item["bus"], item["address"], devices[key]),
                )
            )
        else:
            devices[key] = where


def _check_params(cfg, problems):
    """Rules between parameters that the per-key ranges cannot express."""
    from pilecore import bays, sessions

    for section, module in (("bays", bays), ("sessions", sessions)):
        values = dict(cfg.get(section) or {})
        for extra in ("plate_topic", "plate_broker"):
            values.pop(extra, None)
        for key, msg in module.validate_params(values):
            problems.append(("%s.%s" % (section, key) if key else section, msg))


def _check_tariff(cfg, problems):
    from pilecore import tariff

    t = cfg.get("tariff")
    if t is None:
        cfg["tariff"] = tariff.default_tariff()
        return
    if not isinstance(t, dict):
        problems.append(("tariff", "must be a table"))
        return
    for key, msg in tariff.validate_tariff(t):
        problems.append(("tariff." + key if key else "tariff", msg))


def _check_mqtt(mqtt, problems):
    if not mqtt or "url" not in mqtt:
        return
    url = mqtt["url"]
    scheme, sep, _ = url.partition("://")
    if not sep or scheme not in ("mqtt", "mqtts"):
        problems.append(("mqtt.url", "%r must start with mqtts:// (TLS) or mqtt:// (plain, lab only)" % url))
        return
    try:
        parse_mqtt_url(url)
    except ValueError as e:
        problems.append(("mqtt.url", str(e)))
    if scheme == "mqtt" and not mqtt.get("allow_insecure"):
        problems.append(
            (
                "mqtt.url",
                "plain mqtt:// sends telemetry unencrypted; use mqtts://, or set allow_insecure = true for a lab",
            )
        )
    if not mqtt.get("tls_verify", True) and not mqtt.get("allow_insecure"):
        problems.append(
            ("mqtt.tls_verify", "false turns off certificate checks; allowed only with allow_insecure = true (labs)")
        )
    if ("cert_file" in mqtt) != ("key_file" in mqtt):
        problems.append(("mqtt.cert_file", "a client certificate needs both cert_file and key_file"))


def topic_problem(value, filter_ok=False):
    """Why `value` is not a usable MQTT topic (or, with filter_ok, subscription filter), or "".

    Every level (text between '/') must be non-empty; a topic name must not contain the
    wildcards '+' and '#' (MQTT 3.1.1 section 4.7); a filter may use '+' as a whole level and
    '#' as the whole last level.  No NUL or other control characters, valid UTF-8, at most
    MAX_TOPIC bytes.
    """
    if not isinstance(value, str) or not value:
        return "must not be empty: a topic needs at least one level"
    for ch in value:
        if ch < " " or ch == "\x7f":
            return "%r contains a control character (%r), which MQTT topics must not" % (value, ch)
    try:
        size = len(value.encode("utf-8"))
    except UnicodeError:
        return "%r is not valid UTF-8" % value
    if size > MAX_TOPIC:
        return "is %d bytes long; at most %d" % (size, MAX_TOPIC)
    levels = value.split("/")
    for i in range(len(levels)):
        lv = levels[i]
        if not lv:
            return "%r has an empty level (a leading, trailing or doubled '/')" % value
        if "+" in lv or "#" in lv:
            if not filter_ok:
                return "%r contains the wildcard %r: a topic we publish to must name one topic" % (
                    value,
                    "#" if "#" in lv else "+",
                )
            if lv == "+" or (lv == "#" and i == len(levels) - 1):
                continue
            return "%r: '+' must be a whole level and '#' the whole last level" % value
    return ""


def _check_topics(cfg, problems):
    """Topic parts must be valid MQTT topic levels, on both ports (the ids are by their charset)."""
    mqtt = cfg.get("mqtt") or {}
    if "prefix" in mqtt:
        why = topic_problem(mqtt["prefix"])
        if why:
            problems.append(("mqtt.prefix", why))
    bays = cfg.get("bays") or {}
    if "plate_topic" in bays:
        why = topic_problem(bays["plate_topic"], filter_ok=True)
        if why:
            problems.append(("bays.plate_topic", why))
    if bays.get("plate_broker"):
        try:
            tls = parse_mqtt_url(bays["plate_broker"])[0]
        except ValueError as e:
            problems.append(("bays.plate_broker", "%s (the plate readers' broker, e.g. mqtt://192.168.1.5:1883)" % e))
        else:
            if tls:  # the ESP32 has no CA for a local broker: one rule for both ports
                problems.append(
                    (
                        "bays.plate_broker",
                        "mqtts:// is not supported for the plate readers' broker (a broker on the site's"
                        " own network, with no CA to check it against): use mqtt://host:port",
                    )
                )


# ---------------------------------------------------------------- helpers


def _join(path, key):
    return key if not path else path + "." + key


def _item_label(item, index):
    if isinstance(item, dict):
        for key in ("id", "name"):
            value = item.get(key)
            if isinstance(value, str) and value and not id_problem(value):
                return value
    return "#%d" % (index + 1)


def _kind_of(value):
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "a whole number"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a %s" % type(value).__name__


def _fmt(value):
    if isinstance(value, str):
        return '"%s"' % value
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _suggest(key, fields):
    best, best_d = None, 3
    for name in fields:
        d = _distance(key, name)
        if d < best_d:
            best, best_d = name, d
    if best is None:
        return "; allowed keys: " + ", ".join(sorted(fields))
    return "; did you mean %r?" % best


def _distance(a, b):
    """Levenshtein distance (small strings only)."""
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
        prev = cur
    return prev[len(b)]
