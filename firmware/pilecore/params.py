"""Parameter tables shared by the core modules that take tunable parameters (bays, sessions).

A spec is {name: (default, min, max, unit, doc)}; a value is an int within [min, max], unless
the module passes `choices` for a name (then one of those).  Each module keeps its own spec and
cross-checks; this module only does what is the same for all of them.
"""


def defaults(spec):
    out = {}
    for k in spec:
        out[k] = spec[k][0]
    return out


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def check(params, spec, what, choices=None):
    """(problems, merged): every problem of a partial parameter dict, and the defaults with the
    valid values laid over them (for the module's cross-checks)."""
    if not isinstance(params, dict):
        return [("", "%s parameters must be a table (dict)" % what)], defaults(spec)
    choices = choices or {}
    probs = []
    for k in params:
        if k not in spec:
            probs.append((str(k), "unknown parameter"))
    merged = defaults(spec)
    for k in spec:
        if k not in params:
            continue
        v = params[k]
        lo, hi, unit = spec[k][1], spec[k][2], spec[k][3]
        if k in choices:
            if v not in choices[k]:
                probs.append((k, "must be one of %s, got %r" % (", ".join(choices[k]), v)))
                continue
        elif not _is_int(v):
            probs.append((k, "must be an integer (%s), got %r" % (unit, v)))
            continue
        elif v < lo or v > hi:
            probs.append((k, "must be between %d and %d %s, got %d" % (lo, hi, unit, v)))
            continue
        merged[k] = v
    return probs, merged


def make(params, spec, validate, what):
    """Defaults overlaid with `params`; raises ValueError listing every problem."""
    if params is None:
        return defaults(spec)
    probs = validate(params)
    if probs:
        raise ValueError("bad %s parameters: " % what + "; ".join(["%s: %s" % kv for kv in probs]))
    merged = defaults(spec)
    merged.update(params)
    return merged
