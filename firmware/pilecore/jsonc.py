"""Compact, deterministic JSON: sorted keys, no spaces, UTF-8 text, no NaN or infinity.

MicroPython's json.dumps has no sort_keys or separators and orders dict keys by hash, so the
same data would serialise differently on the two interpreters.  Signed payloads are built
with `dumps` here instead: the same dict gives the same bytes on the Pi and the ESP32 (floats
aside: an ESP32's 32-bit floats print fewer digits).
"""

import json


class Raw:
    """Text that is already JSON (made by dumps), embedded as it is: a message body serialised
    once can be wrapped in its signed envelope without being encoded again."""

    def __init__(self, text):
        self.text = text


def dumps(obj):
    """Serialise dicts (str keys only), lists, tuples, str, int, float, bool, None and Raw."""
    if isinstance(obj, dict):
        for key in obj:
            if isinstance(obj[key], Raw):
                return _with_raw(obj)
    if _fast is not None:
        try:
            return _fast(obj)
        except TypeError as exc:
            raise ValueError(str(exc))
    out = []
    _enc(obj, out)
    return "".join(out)


def _with_raw(obj):
    """A dict with Raw values at its top level (the envelope around a pre-serialised body)."""
    enc = _fast or dumps
    parts = []
    for key in sorted(obj):
        value = obj[key]
        parts.append(enc(key) + ":" + (value.text if isinstance(value, Raw) else enc(value)))
    return "{" + ",".join(parts) + "}"


def _cpython_dumps(obj):
    # CPython's C encoder gives exactly the bytes of _enc below (same escapes, float repr) at a
    # fraction of the cost; MicroPython's json.dumps takes no keyword arguments, so it uses _enc.
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


try:
    _cpython_dumps({"a": 1})
    _fast = _cpython_dumps
except TypeError:
    _fast = None


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
            elif ch == "\b":
                parts.append("\\b")
            elif ch == "\f":
                parts.append("\\f")
            else:
                parts.append("\\u%04x" % c)
            start = i + 1
    parts.append(s[start:])
    parts.append('"')
    return "".join(parts)


def copy(x):
    """Deep copy of plain JSON-like data (dicts, lists, scalars)."""
    if isinstance(x, dict):
        out = {}
        for k in x:
            out[k] = copy(x[k])
        return out
    if isinstance(x, (list, tuple)):
        return [copy(v) for v in x]
    return x
