"""The site configuration schema: every key, its type, default and range.

This is the one written definition of site.toml.  The validator (pilecore.config) walks it on
both ports; docs/config.md describes every key it names (a test checks that nothing here is
undocumented).  It is built on demand by `site_schema()` rather than at import, so the ESP32
only holds it while it validates a configuration.

A field is a tuple `(kind, required, default, extra)`:

    kind      "str" | "id" | "int" | "num" | "bool" | "enum" | "list" | "table" | "tables" | "any"
              ("any" is checked by the owning module, e.g. the tariff by pilecore.tariff)
    required  True when the key must be present
    default   value filled in when absent (None: stays absent)
    extra     int/num: (min, max); enum: tuple of choices; str/id: max length;
              list: item kind; table/tables: dict of fields
"""

BAUD_RATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
PARITIES = ("N", "E", "O")


def _s(required=False, default=None, maxlen=200):
    return ("str", required, default, maxlen)


def _list(item_kind, default=None, required=False):
    return ("list", required, default, item_kind)


def _id(required=True, default=None):
    # Ids end up in MQTT topics and file names: letters, digits, '-', '_', '.', 1-32 chars.
    return ("id", required, default, 32)


def _i(lo, hi, default=None, required=False):
    return ("int", required, default, (lo, hi))


def _n(lo, hi, default=None, required=False):
    return ("num", required, default, (lo, hi))


def _b(default):
    return ("bool", False, default, None)


def _e(choices, default=None, required=False):
    return ("enum", required, default, choices)


def _t(fields, required=False):
    return ("table", required, None, fields)


def _ts(fields, required=False):
    return ("tables", required, None, fields)


def _meter_fields():
    """A meter reference: where it hangs and what it is."""
    return {
        "bus": _id(),
        # Modbus: 1..247; DL/T 645: the 12-digit address (checked by pilecore.config).
        "address": ("any", True, None, None),
        "profile": _id(),
        # Bound serial number. Empty: bind the first serial read (recorded as an event).
        "serial": _s(default="", maxlen=40),
        # Per-meter sane ranges replacing the profile's: {value: [min, max]} (CT meters).
        "ranges": ("any", False, None, None),
    }


def site_schema():
    """Return the schema of a site configuration (a fresh dict each call)."""
    return {
        "gateway": _t(
            {
                "id": _id(),
                "site": _id(),
                "board": _id(),
                "name": _s(maxlen=80),
                "data_dir": _s(default="/var/lib/pilegate"),
            },
            required=True,
        ),
        "mqtt": _t(
            {
                "url": _s(required=True),
                "allow_insecure": _b(False),
                "tls_verify": _b(True),
                "ca_file": _s(),
                "cert_file": _s(),
                "key_file": _s(),
                "username": _s(maxlen=100),
                "password_file": _s(),
                "client_id": _s(maxlen=64),
                "keepalive_s": _i(5, 1200, 30),
                "prefix": _s(default="pilegate/v1", maxlen=64),
            },
            required=True,
        ),
        "telemetry": _t(
            {
                "interval_s": _i(1, 3600, 30),
                "outbox_mb": _i(1, 4096, 256),
            }
        ),
        "metering": _t(
            {
                "poll_s": _i(1, 3600, 10),
                "offline_after_s": _i(5, 86400, 120),
                "verify_serial_s": _i(60, 604800, 3600),
                "idle_power_w": _n(0, 100000, 50.0),
                "swap_window_s": _i(10, 3600, 120),
            }
        ),
        "main_meter": _t(
            {
                "bus": _id(),
                "address": ("any", True, None, None),
                "profile": _id(),
                "serial": _s(default="", maxlen=40),
                "ranges": ("any", False, None, None),
                "tolerance_pct": _n(0, 100, 5.0),
                "tolerance_w": _n(0, 1000000, 300.0),
                "window_s": _i(60, 86400, 900),
            }
        ),
        "signing": _t(
            {
                "platform_key": _s(),
                "command_max_age_s": _i(10, 86400, 300),
            }
        ),
        "console": _t(
            {
                "serial_port": _s(),
                "baud": _e(BAUD_RATES, 115200),
                "socket": _s(default="/run/pilegate/console.sock"),
                "idle_logout_s": _i(30, 86400, 600),
            }
        ),
        "bus": _ts(
            {
                "name": _id(),
                "port": _s(required=True),
                "baud": _e(BAUD_RATES, 9600),
                "parity": _e(PARITIES, "N"),
                "stopbits": _e((1, 2), 1),
                "timeout_ms": _i(20, 10000, 500),
            },
            required=True,
        ),
        "pile": _ts(
            {
                "id": _id(),
                "name": _s(maxlen=80),
                "meter": _t(_meter_fields(), required=True),
                "max_power_kw": _n(0.5, 1000, 7.0),
                "interlock": _e(("report", "relay"), "report"),
                "relay": _s(maxlen=32),
                "coil": _t(
                    {
                        "bus": _id(),
                        "address": _i(1, 247, required=True),
                        "coil": _i(0, 65535, required=True),
                    }
                ),
            },
            required=True,
        ),
        "bays": _t(_bays_fields()),
        "sessions": _t(_sessions_fields()),
        "tariff": ("any", False, None, None),
        "bay": _ts(
            {
                "id": _id(),
                "pile": _id(),
                "name": _s(maxlen=80),
                "presence": _ts(
                    {
                        "type": _e(("modbus", "input"), required=True),
                        "bus": _id(False),
                        "address": _i(1, 247),
                        "profile": _id(False),
                        "input": _id(False),
                        "active": _e(("high", "low"), "high"),
                    }
                ),
                "plug": _t(
                    {
                        "source": _e(("power", "input", "modbus"), "power"),
                        "input": _id(False),
                        "active": _e(("high", "low"), "high"),
                        "bus": _id(False),
                        "address": _i(1, 247),
                        "function": _e((1, 2, 3, 4), 3),
                        "register": _i(0, 65535),
                        "plugged_values": _list("int", [1]),
                    }
                ),
                "camera": _s(maxlen=64),
            }
        ),
    }


def _param_fields(spec, out, skip=()):
    for name in spec:
        default, lo, hi = spec[name][0], spec[name][1], spec[name][2]
        if name not in skip:
            out[name] = _i(lo, hi, default) if isinstance(default, int) else _n(lo, hi, default)
    return out


def _bays_fields():
    """Site-wide bay parameters: taken from pilecore.bays, the one place they are defined."""
    from pilecore import bays

    out = {"plate_topic": _s(default="pilegate/local/plates", maxlen=128), "plate_broker": _s(maxlen=200)}
    # plug_source is per bay: [[bay]] plug.source
    return _param_fields(bays.param_spec(), out, skip=("plug_source",))


def _sessions_fields():
    """Charging-session detection parameters, from pilecore.sessions."""
    from pilecore import sessions

    return _param_fields(sessions.param_spec(), {})


def board_schema():
    """Return the schema of a board file in boards/."""
    return {
        "id": _id(),
        "name": _s(required=True, maxlen=120),
        "platform": _e(("esp32", "esp32s3", "rpi"), required=True),
        "flash_mb": _i(1, 65536, required=True),
        "psram_mb": _i(0, 64, 0),
        "firmware_offset": _i(0, 0x100000),
        "notes": _s(maxlen=2000),
        # ESP32: the heap for Python (and the TLS session) in KB, where that figure comes from,
        # and why the board cannot run the gateway when the RAM budget test says so
        "heap_kb": _i(16, 65536),
        "heap_source": _s(maxlen=600),
        "unsupported": _s(maxlen=1000),
        "uart": _ts(
            {
                "name": _id(),
                "role": _e(("rs485", "console"), required=True),
                "device": _s(),
                "tx": _i(0, 48),
                "rx": _i(0, 48),
                "de": _i(0, 48),
                "de_mode": _e(("gpio", "auto", "kernel"), "gpio"),
            },
            required=True,
        ),
        "input": _ts(
            {
                "name": _id(),
                "pin": _i(0, 48, required=True),
                "pull": _e(("none", "up", "down"), "none"),
            }
        ),
        "relay": _ts(
            {
                "name": _id(),
                "pin": _i(0, 48, required=True),
                "active": _e(("high", "low"), "high"),
            }
        ),
    }
