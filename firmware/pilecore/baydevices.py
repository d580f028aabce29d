"""The Modbus devices of the bays (presence sensors, pile controllers' plug registers) and how
their raw answers become the inputs of SiteCore.bay_inputs, the same on both ports.

A device is named by a key: "<bay>#<n>" for the n-th presence sensor of a bay (0-based),
"<bay>#plug" for the bay's pile-controller plug register.  The ports poll each device as a
scheduler device with a planner.RawPlan, keep the latest value with its time, and once a second
call `gather` to hand every bay its samples.
"""

from pilecore import modbus

FRESH_S = 30  # a sensor value older than this is no reading at all


def devices(cfg, poll_ms):
    """[(key, bus, address, function, register, count, response_ms, min_gap_ms, timeout_ms)]."""
    out = []
    for bay in cfg.get("bay", ()):
        for k, sensor in enumerate(bay.get("presence", ())):
            if sensor["type"] != "modbus":
                continue
            prof = cfg["sensor_profiles"][sensor["profile"]]
            width = 2 if prof["type"] in ("u32", "s32") else 1
            out.append(
                (
                    "%s#%d" % (bay["id"], k),
                    sensor["bus"],
                    sensor["address"],
                    prof["function"],
                    prof["register"],
                    width,
                    prof.get("response_ms", 50),
                    prof.get("min_gap_ms", 0),
                    prof.get("timeout_ms"),
                )
            )
        plug = bay.get("plug") or {}
        if plug.get("source") == "modbus":
            out.append(
                (bay["id"] + "#plug", plug["bus"], plug["address"], plug["function"], plug["register"], 1, 50, 0, None)
            )
    return out


def value(cfg, key, regs):
    """The value a device's registers stand for: mm for a distance sensor, the raw register for
    a presence sensor or a plug register; None when there was no answer or it does not decode."""
    if regs is None:
        return None
    bay_id, _, which = key.partition("#")
    if which == "plug":
        return regs[0]
    bay = None
    for b in cfg.get("bay", ()):
        if b["id"] == bay_id:
            bay = b
    if bay is None:
        return None
    prof = cfg["sensor_profiles"][bay["presence"][int(which)]["profile"]]
    try:
        raw = modbus.decode_raw(regs, 0, prof["type"], prof.get("byte_order", "big"), prof.get("word_order", "big"))
    except ValueError:
        return None
    if prof["measures"] == "distance":
        return int(raw * prof["scale"])
    return raw


def gather(cfg, now, latest, read_input):
    """[(bay id, samples, raw plug)] for every bay.

    latest: {key: (t, value)} of the Modbus devices; read_input(name) -> 0 | 1 | None, or None
    when the port has no inputs.
    """
    out = []
    for bay in cfg.get("bay", ()):
        samples = []
        for k, sensor in enumerate(bay.get("presence", ())):
            if sensor["type"] == "input":
                samples.append(read_input(sensor["input"]) if read_input else None)
            else:
                samples.append(_fresh(latest, "%s#%d" % (bay["id"], k), now))
        plug = bay.get("plug") or {}
        raw_plug = None
        if plug.get("source") == "input":
            raw_plug = read_input(plug["input"]) if read_input else None
        elif plug.get("source") == "modbus":
            raw_plug = _fresh(latest, bay["id"] + "#plug", now)
        out.append((bay["id"], samples, raw_plug))
    return out


def _fresh(latest, key, now):
    item = latest.get(key)
    if item is None or now - item[0] > FRESH_S:
        return None
    return item[1]
