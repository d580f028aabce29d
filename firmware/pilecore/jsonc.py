"""Compact, deterministic JSON: sorted keys, no spaces, UTF-8 text, no NaN or infinity.

MicroPython's json.dumps has no sort_keys or separators and orders dict keys by hash, so the
same data would serialise differently on the two interpreters.  Signed payloads are built
with `dumps` here instead: the same dict gives the same bytes on the Pi and the ESP32 (floats
aside: an ESP32's 32-bit floats print fewer digits).
"""

import json


def dumps(obj):
    """Serialise dicts, lists, tuples, str, int, float, bool and None; return a str."""
    out = []
    _enc(obj, out)
    return "".join(out)


def _enc(obj, out):
    if obj is None:
        out.append("null")
    elif obj is True:
        out.append("true")
    elif obj is False:
        out.append("false")
    elif isinstance(obj, int):
        out.append(str(obj))
    elif isinstance(obj, float):
        if obj != obj or obj in (float("inf"), float("-inf")):
            raise ValueError("NaN and infinity are not JSON")
        out.append(json.dumps(obj))
    elif isinstance(obj, str):
        out.append(_str(obj))
    elif isinstance(obj, dict):
        out.append("{")
        first = True
        for key in sorted(obj):
            if not isinstance(key, str):
                raise ValueError("JSON object keys must be strings, not %r" % (key,))
            if not first:
                out.append(",")
            first = False
            out.append(_str(key))
            out.append(":")
            _enc(obj[key], out)
        out.append("}")
    elif isinstance(obj, (list, tuple)):
        out.append("[")
        for i, item in enumerate(obj):
            if i:
                out.append(",")
            _enc(item, out)
        out.append("]")
    else:
        raise ValueError("cannot encode %s as JSON" % type(obj).__name__)


def _str(s):
    # Escape exactly what RFC 8259 requires (quote, backslash, control characters) and leave
    # other characters as UTF-8, the same on both interpreters.
    parts = ['"']
    start = 0
    for i, ch in enumerate(s):
        c = ord(ch)
        if c < 0x20 or ch == '"' or ch == "\\":
            parts.append(s[start:i])
            if ch == '"':
                parts.append('\\"')
            elif ch == "\\":
                parts.append("\\\\")
            elif ch == "\n":
                parts.append("\\n")
            elif ch == "\r":
                parts.append("\\r")
            elif ch == "\t":
                parts.append("\\t")
            else:
                parts.append("\\u%04x" % c)
            start = i + 1
    parts.append(s[start:])
    parts.append('"')
    return "".join(parts)
