"""What `pilegate read` prints: one row per pile, as a table or as JSON objects."""

from __future__ import annotations

from typing import Any

from pilecore import metering
from pilegate.metering_service import Meter


def rows(cfg: dict[str, Any], meters: dict[str, Meter]) -> list[dict[str, Any]]:
    """One dict per pile: pile, serial, energy_kwh, power_w, voltage_v, current_a,
    frequency_hz, power_factor, error (None when the meter answered correctly: its values read
    and, for a model with a serial number register, its serial read and matching the serial
    commissioned for the pile, if any)."""
    out = []
    for pile in cfg["pile"]:
        m = meters[pile["id"]]
        r = m.reading or {}
        error = m.error
        bound = pile["meter"].get("serial") or None
        has_serial = metering.identity_read(m.profile.get("identity")) is not None
        if error is None and m.identity is None and has_serial:
            # whether or not a serial is bound yet: an installer reading serials to commission
            # must see that this one was not read (issue 9, defect #7)
            error = "serial number could not be read"
            if m.identity_error:
                error += f" ({m.identity_error})"
        elif bound is not None and m.identity is not None and m.identity != bound:
            error = f"wrong meter: serial {m.identity}, but {bound} is bound to this pile"
        wh = r.get("energy_wh")
        out.append(
            {
                "pile": pile["id"],
                "bus": m.bus,
                "address": m.address,
                "profile": pile["meter"]["profile"],
                "serial": m.identity,
                "energy_kwh": None if wh is None else wh / 1000,
                "power_w": _round(r.get("power_w"), 1),
                "voltage_v": [_round(v, 1) for v in r.get("voltage_v", [])],
                "current_a": [_round(v, 3) for v in r.get("current_a", [])],
                "frequency_hz": _round(r.get("frequency_hz"), 2),
                "power_factor": _round(r.get("power_factor"), 3),
                "error": error,
            }
        )
    return out


def _round(v: float | None, n: int) -> float | None:
    return None if v is None else round(v, n)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, list):
        return "/".join(_fmt(x) for x in v) if v else "-"
    return str(v)


def table(rows: list[dict[str, Any]]) -> str:
    head = ["pile", "meter", "serial", "energy kWh", "power W", "voltage V", "current A", "Hz", "PF", "status"]
    body = []
    for r in rows:
        body.append(
            [
                r["pile"],
                f"{r['bus']}/{r['address']} {r['profile']}",
                _fmt(r["serial"]),
                "-" if r["energy_kwh"] is None else f"{r['energy_kwh']:.3f}",
                _fmt(r["power_w"]),
                _fmt(r["voltage_v"]),
                _fmt(r["current_a"]),
                _fmt(r["frequency_hz"]),
                _fmt(r["power_factor"]),
                "ok" if not r["error"] else "FAILED: " + r["error"],
            ]
        )
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=True)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip() for line in [head, *body]]
    failed = sum(1 for r in rows if r["error"])
    lines.append(f"{len(rows)} pile(s), {failed} failed")
    return "\n".join(lines)
