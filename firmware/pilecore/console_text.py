"""How the console shows things: terminal-safe text, values, tables, masking of secrets.

Pure functions on plain data, shared by the console's session (pilecore.console), its commands
(pilecore.console_cmds) and its views (pilecore.console_views).  No I/O, nothing built at import.

- `safe_text` strips control characters (device-supplied text must not steer a terminal);
- `fmt_value` shows one value (times as ISO 8601 UTC, durations, yes/no, '-' for none);
- `kv_lines` / `table_lines` lay out a dict or a list of dicts;
- `clean_data` makes backend data safe to show (secrets masked, JSON-encodable, bounded depth);
- `to_wire` makes text into terminal bytes (CRLF, no control characters).
"""

from pilecore import civiltime, jsonc

MASK = "****"

# A name is secret when its last word is one of these, or when any word is a strong one.  "pin"
# alone is not (GPIO pins are everywhere in board settings); a PIN record or hash is.
_SECRET_WORDS = (
    "password",
    "passwd",
    "secret",
    "token",
    "psk",
    "key",
    "privkey",
    "credential",
    "credentials",
    "passphrase",
)
_STRONG_WORDS = ("password", "passwd", "secret", "private", "psk", "token", "passphrase")


class Usage(Exception):
    """A command was given bad arguments (the answer adds the usage line)."""


class Fail(Exception):
    """A command cannot do what was asked (the message is the answer)."""


def msg_of(e):
    s = str(e)
    return safe_text(s) if s else type(e).__name__


def err_text(js, text):
    if js:
        return json_text({"error": text})
    return "error: %s\n" % text


def json_text(obj):
    return jsonc.dumps(obj) + "\n"


def ceil_int(x):
    i = int(x)
    return i + 1 if x > i else i


def parse_int(s, lo, hi, what):
    try:
        v = int(s[2:], 16) if s[:2].lower() == "0x" else int(s)
    except ValueError:
        raise Usage("%s must be a number, not '%s'" % (what, safe_text(s[:16])))
    if not lo <= v <= hi:
        raise Usage("%s must be %d..%d" % (what, lo, hi))
    return v


def key_words(key):
    out = []
    for part in key.lower().replace("-", "_").split("."):
        for w in part.split("_"):
            if w:
                out.append(w)
    return out


def is_secret(key):
    """Does a setting or field name look like it holds a secret? (its value is shown as ****)"""
    if not isinstance(key, str):
        return False
    w = key_words(key)
    if not w:
        return False
    if w[-1] in _SECRET_WORDS:
        return True
    for x in w:
        if x in _STRONG_WORDS:
            return True
    return "pin" in w and ("record" in w or "hash" in w or "code" in w or "console" in w)


def is_binding(key):
    """Is this key part of a meter-to-pile binding (commissioning only)?"""
    w = key_words(key)
    for x in w:
        if x in ("meter", "meters", "binding", "bindings", "bound"):
            return True
    return len(w) > 0 and w[0] in ("pile", "piles") and ("address" in w or "serial" in w or "bus" in w)


def mask_args(cmd, args):
    out = [safe_text(a[:64]) for a in args]
    if cmd == "set" and len(out) > 1 and is_secret(args[0]):
        out[1:] = [MASK]
    return out


def clean_data(obj, depth=0):
    """Backend data made safe to show: secrets masked, JSON-encodable, bounded depth."""
    if depth > 8:
        return "..."
    if obj is None or obj is True or obj is False:
        return obj
    if isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        out = {}
        for k in obj:
            v = obj[k]
            sk = k if isinstance(k, str) else str(k)
            if is_secret(sk) and v not in (None, ""):
                out[sk] = MASK
            else:
                out[sk] = clean_data(v, depth + 1)
        return out
    if isinstance(obj, (list, tuple)):
        return [clean_data(x, depth + 1) for x in obj]
    if isinstance(obj, (bytes, bytearray)):
        return "".join(["%02x" % b for b in obj])
    return str(obj)


def safe_text(s, keep_newlines=False):
    """A string without control characters (a terminal must not be steered by device data)."""
    if not isinstance(s, str):
        s = str(s)
    bad = False
    for ch in s:
        if ch < " " or ch == "\x7f":
            bad = True
            break
    if not bad:
        return s
    out = []
    for ch in s:
        if (ch < " " or ch == "\x7f") and not (keep_newlines and ch == "\n"):
            out.append("?")
        else:
            out.append(ch)
    return "".join(out)


def is_time_key(key):
    return key in ("t", "time", "since", "arrival") or key.endswith("_t") or key.endswith("_at")


def duration_text(s):
    s = int(s)
    d, s = s // 86400, s % 86400
    text = "%02d:%02d:%02d" % (s // 3600, (s // 60) % 60, s % 60)
    return ("%dd %s" % (d, text)) if d else text


def fmt_value(v, key=""):
    if v is None:
        return "-"
    if v is True:
        return "yes"
    if v is False:
        return "no"
    if isinstance(v, int):
        if is_time_key(key) and v >= 1000000000:
            try:
                return civiltime.iso_utc(v)
            except ValueError:
                return str(v)
        if key == "uptime_s" and v >= 0:
            return duration_text(v)
        return str(v)
    if isinstance(v, float):
        s = "%.3f" % v
        if "." in s:
            s = s.rstrip("0").rstrip(".")
        return s
    if isinstance(v, (list, tuple)):
        return ", ".join([fmt_value(x) for x in v]) if v else "-"
    if isinstance(v, dict):
        return " ".join(["%s=%s" % (safe_text(k), fmt_value(v[k], k)) for k in sorted(v)])
    return safe_text(v)


def ordered_keys(keys, preferred):
    keys = list(keys)
    first = [k for k in preferred if k in keys]
    return first + sorted([k for k in keys if k not in first])


def flatten_dict(d, prefix, out):
    for k in d:
        v = d[k]
        name = prefix + str(k)
        if isinstance(v, dict) and v:
            flatten_dict(v, name + ".", out)
        else:
            out[name] = v


# The fields of `status`, in the order the views pick them and the text shows them.
STATUS_FIELDS = (
    "gateway",
    "site",
    "firmware",
    "platform",
    "board",
    "uptime_s",
    "time",
    "time_sync",
    "mem_free",
    "mem_total",
    "config_hash",
    "kid",
    "epoch",
    "seq",
    "storage",
)


# The columns of `piles` and `bays` and the fields of `mqtt`, as the views pick them and the
# text orders them.
PILE_FIELDS = (
    "id",
    "name",
    "state",
    "power_w",
    "energy_wh",
    "t",
    "bus",
    "address",
    "serial",
    "metered",
    "interlock",
    "faults",
)
BAY_FIELDS = ("bay", "pile", "state", "plugged", "charging", "arrival", "classification", "fee_fen")
MQTT_FIELDS = (
    "broker",
    "connected",
    "connects",
    "last_error",
    "last_publish_t",
    "outbox",
    "oldest_unsent_seq",
    "oldest_unsent_t",
    "seq",
)


def kv_lines(d, preferred):
    """Aligned `key  value` lines; nested dicts flattened with dotted keys."""
    if not isinstance(d, dict):
        return fmt_value(d) + "\n"
    flat = {}
    flatten_dict(d, "", flat)
    keys = ordered_keys(flat, preferred)
    if not keys:
        return "-\n"
    w = min(32, max([len(k) for k in keys]))
    lines = []
    for k in keys:
        last = k.split(".")[-1]
        lines.append("%-*s  %s" % (w, safe_text(k), fmt_value(flat[k], last)))
    return "\n".join(lines) + "\n"


def table_lines(rows, preferred):
    """Aligned columns: the preferred ones present, then any other scalar column, sorted."""
    present = []
    for r in rows:
        if isinstance(r, dict):
            for k in r:
                if k not in present and not isinstance(r[k], dict):
                    present.append(k)
    cols = ordered_keys(present, preferred)
    if not cols:
        return "\n".join([fmt_value(r) for r in rows]) + "\n"
    cells = [[safe_text(c) for c in cols]]
    for r in rows:
        if isinstance(r, dict):
            cells.append([fmt_value(r.get(c), c) for c in cols])
    widths = [0] * len(cols)
    for row in cells:
        for i in range(len(cols)):
            if len(row[i]) > widths[i]:
                widths[i] = len(row[i])
    lines = []
    for row in cells:
        parts = []
        for i in range(len(cols)):
            parts.append(row[i] if i == len(cols) - 1 else "%-*s" % (widths[i], row[i]))
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines) + "\n"


def to_wire(text):
    """Text to terminal bytes: CRLF line ends, no other control characters."""
    if not text:
        return b""
    return safe_text(text, keep_newlines=True).replace("\n", "\r\n").encode("utf-8")
