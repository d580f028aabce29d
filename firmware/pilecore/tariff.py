"""Occupancy fees under a site tariff: integer fen, started blocks, stepped rates, a cap.

A tariff is plain data (a dict, from the site config or a signed downlink command):

    {"id": "luoyang-2024", "version": 3, "currency": "CNY",
     "free_min": 15,                   # free minutes at the start of the billable time
     "block_min": 15,                  # every STARTED block after the free time is charged
     "price_fen": 500,                 # price of a block (fen = 1/100 yuan)
     "steps": [{"after_min": 60, "price_fen": 1000}],   # optional: dearer blocks later
     "cap_fen": 5000,                  # optional: most one occupancy can cost; 0 = no cap
     "applies_to": ["fuel_car", "ev_overstay", "ev_parked"]}

Money is always an int number of fen, never a float.  Minutes in the tariff, seconds in the
durations: `fee()` works in whole seconds, so a stay of 15 min 1 s after the free time starts a
second block.  Which seconds of an occupancy are billable for each classification is decided in
bays.py (see docs/bays.md); this module only prices a number of billable seconds.
"""

# Every classification an occupancy can get (bays.py uses this tuple too: one source of truth).
CLASSIFICATIONS = ("ev_charging", "ev_overstay", "ev_parked", "fuel_car", "unknown")

# Classifications a tariff may bill.  A charging EV is never billed for occupancy and an
# unknown occupancy is never billed at all (a fee is never guessed).
BILLABLE_CLASSES = ("fuel_car", "ev_overstay", "ev_parked")

_REQUIRED = ("id", "version", "currency", "free_min", "block_min", "price_fen", "applies_to")
_OPTIONAL = ("steps", "cap_fen")
_MAX_PRICE_FEN = 1000000  # 10,000 yuan per block: anything above is a unit mistake
_MAX_CAP_FEN = 100000000
_MAX_MIN = 525600  # one year in minutes


def default_tariff():
    """An example tariff (the brief's numbers); sites configure their own.

    15 free minutes, then 5 yuan per started 15 minutes, 10 yuan per block from the 60th minute,
    at most 50 yuan per occupancy; fuel cars, EV overstays and EVs parked without charging pay.
    """
    return {
        "id": "default",
        "version": 1,
        "currency": "CNY",
        "free_min": 15,
        "block_min": 15,
        "price_fen": 500,
        "steps": [{"after_min": 60, "price_fen": 1000}],
        "cap_fen": 5000,
        "applies_to": ["fuel_car", "ev_overstay", "ev_parked"],
    }


def _is_int(v):
    # bool is an int subclass in Python; True must not pass as 1 fen.
    return isinstance(v, int) and not isinstance(v, bool)


def _int_in(probs, key, v, lo, hi):
    if not _is_int(v):
        probs.append((key, "must be an integer, got %r" % (v,)))
        return False
    if v < lo or v > hi:
        probs.append((key, "must be between %d and %d, got %d" % (lo, hi, v)))
        return False
    return True


def _currency_ok(v):
    if not isinstance(v, str) or len(v) != 3:
        return False
    return all("A" <= ch <= "Z" for ch in v)


def validate_tariff(t):
    """Every problem of tariff `t` as a list of (key, message); [] when it is usable.

    Keys are dotted paths ("steps.1.after_min").  Unknown keys are problems too: a typo in a
    tariff changes what people pay, so nothing is silently ignored.
    """
    if not isinstance(t, dict):
        return [("", "a tariff must be a table (dict), got %r" % (type(t).__name__,))]
    probs = []
    for k in t:
        if k not in _REQUIRED and k not in _OPTIONAL:
            probs.append((str(k), "unknown key (allowed: %s)" % ", ".join(_REQUIRED + _OPTIONAL)))
    for k in _REQUIRED:
        if k not in t:
            probs.append((k, "missing"))
    if "id" in t:
        v = t["id"]
        if not isinstance(v, str) or not v or len(v) > 64:
            probs.append(("id", "must be a non-empty string of at most 64 characters"))
    if "version" in t:
        _int_in(probs, "version", t["version"], 1, 2147483647)
    if "currency" in t and not _currency_ok(t["currency"]):
        probs.append(("currency", "must be a 3-letter ISO 4217 code such as CNY"))
    if "free_min" in t:
        _int_in(probs, "free_min", t["free_min"], 0, _MAX_MIN)
    if "block_min" in t:
        _int_in(probs, "block_min", t["block_min"], 1, 1440)
    if "price_fen" in t:
        _int_in(probs, "price_fen", t["price_fen"], 0, _MAX_PRICE_FEN)
    if "cap_fen" in t:
        _int_in(probs, "cap_fen", t["cap_fen"], 0, _MAX_CAP_FEN)
    if "steps" in t:
        _check_steps(probs, t["steps"])
    if "applies_to" in t:
        _check_applies(probs, t["applies_to"])
    return probs


def _check_steps(probs, steps):
    if not isinstance(steps, list):
        probs.append(("steps", "must be a list of {after_min, price_fen} tables"))
        return
    last = -1
    for i, st in enumerate(steps):
        key = "steps.%d" % i
        if not isinstance(st, dict):
            probs.append((key, "must be a table with after_min and price_fen"))
            continue
        for k in st:
            if k not in ("after_min", "price_fen"):
                probs.append((key + "." + str(k), "unknown key (allowed: after_min, price_fen)"))
        if "after_min" not in st or "price_fen" not in st:
            probs.append((key, "needs both after_min and price_fen"))
            continue
        if _int_in(probs, key + ".after_min", st["after_min"], 1, _MAX_MIN):
            if st["after_min"] <= last:
                probs.append((key + ".after_min", "must be greater than the previous step's (%d)" % last))
            last = st["after_min"]
        _int_in(probs, key + ".price_fen", st["price_fen"], 0, _MAX_PRICE_FEN)


def _check_applies(probs, applies):
    if not isinstance(applies, list):
        probs.append(("applies_to", "must be a list of classifications"))
        return
    seen = []
    for i, c in enumerate(applies):
        key = "applies_to.%d" % i
        if c in seen:
            probs.append((key, "%r is listed twice" % (c,)))
        elif c == "ev_charging":
            probs.append((key, "a charging EV is never billed for occupancy"))
        elif c == "unknown":
            probs.append((key, "an unknown occupancy is never billed (a fee is never guessed)"))
        elif c not in BILLABLE_CLASSES:
            probs.append((key, "%r is not one of %s" % (c, ", ".join(BILLABLE_CLASSES))))
        seen.append(c)


def tariff_ref(t):
    """{"id", "version"} naming tariff `t` in records, or None values when there is none."""
    if t is None:
        return {"id": None, "version": None}
    return {"id": t["id"], "version": t["version"]}


def fee(tariff, classification, billable_s):
    """Price `billable_s` seconds of an occupancy classified `classification`.

    Returns (fen, breakdown).  `tariff` must have passed validate_tariff(), or be None (no
    tariff in force: nothing is due).  Rules:
      - nothing is due when the classification is not in applies_to, or billable_s <= free time;
      - otherwise every STARTED block of block_min minutes after the free time costs the price in
        force at the block's start: the last step whose after_min <= the block's start minute
        (minutes counted from the start of the billable time, free time included), else price_fen;
      - the total is capped at cap_fen when cap_fen > 0.
    The breakdown is a JSON-safe dict: parts lists runs of equally priced blocks.
    """
    if not _is_int(billable_s) or billable_s < 0:
        raise ValueError("billable_s must be an int >= 0, got %r" % (billable_s,))
    ref = tariff_ref(tariff)
    bd = {
        "tariff": ref["id"],
        "version": ref["version"],
        "classification": classification,
        "billable_s": billable_s,
        "free_s": 0,
        "block_s": 0,
        "blocks": 0,
        "parts": [],
        "gross_fen": 0,
        "cap_fen": 0,
        "capped": False,
        "fen": 0,
    }
    if tariff is None:
        return 0, bd
    free_min = tariff["free_min"]
    block_min = tariff["block_min"]
    free_s = free_min * 60
    block_s = block_min * 60
    cap = tariff.get("cap_fen", 0)
    bd["free_s"] = free_s
    bd["block_s"] = block_s
    bd["cap_fen"] = cap
    if classification not in tariff["applies_to"] or billable_s <= free_s:
        return 0, bd
    n = (billable_s - free_s + block_s - 1) // block_s
    # Runs of blocks sharing a price: (index of the run's first block, price).  Block i starts at
    # minute free_min + i * block_min, so a step applies from the first block starting at or
    # after its after_min.  Steps are strictly increasing, so the indexes never decrease; a run
    # overtaken by a later one at the same index simply has no blocks.
    runs = [(0, tariff["price_fen"])]
    for st in tariff.get("steps", []):
        after = st["after_min"]
        idx = 0 if after <= free_min else (after - free_min + block_min - 1) // block_min
        runs.append((idx, st["price_fen"]))
    gross = 0
    parts = bd["parts"]
    for k in range(len(runs)):
        first, price = runs[k]
        end = runs[k + 1][0] if k + 1 < len(runs) else n
        if end > n:
            end = n
        count = end - first
        if count <= 0:
            continue
        parts.append(
            {"from_min": free_min + first * block_min, "blocks": count, "price_fen": price, "fen": count * price}
        )
        gross += count * price
    fen = gross
    if cap > 0 and gross > cap:
        fen = cap
        bd["capped"] = True
    bd["blocks"] = n
    bd["gross_fen"] = gross
    bd["fen"] = fen
    return fen, bd
