"""Judging a HIL run against its scenario's expectations (docs/hil.md, "Expectations").

`judge(run)` returns one `Check` per expectation plus the ones every scenario gets (the run
finished without a rig error, every message verified, the chain intact with no seq gap, every
billing record verifies with pyocmf, no traceback in the DUT's log).  Each check says what was
expected and what was seen, so a failure reads without the code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization

from pilehil.scenario import hms, seconds

CONTROL = {"within", "count", "min", "fields", "note", "index", "tolerance_s", "real_board"}


@dataclass
class Check:
    kind: str
    name: str
    ok: bool
    detail: str
    expected: dict[str, Any] | None = None


def _rel(run: Any, t: Any) -> float | None:
    return run.rel(t) if isinstance(t, int | float) else None


def _match_fields(item: dict[str, Any], want: dict[str, Any]) -> bool:
    for k, v in want.items():
        got = item.get(k)
        if isinstance(v, dict) and isinstance(got, dict):
            if not _match_fields(got, v):
                return False
        elif got != v:
            return False
    return True


def _describe(e: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in e.items() if k != "note")


def _short(ev: dict[str, Any], run: Any) -> str:
    t = _rel(run, ev.get("t"))
    rest = {k: v for k, v in ev.items() if k not in ("t",) and not isinstance(v, dict | list)}
    return f"[{hms(t) if t is not None else '?'}] " + ", ".join(f"{k}={v}" for k, v in rest.items())


def _events_matching(run: Any, e: dict[str, Any]) -> list[dict[str, Any]]:
    want = {k: v for k, v in e.items() if k not in CONTROL}
    want.update(e.get("fields", {}))
    window = (seconds(e["within"][0]), seconds(e["within"][1])) if "within" in e else None
    out = []
    for ev in run.events():
        if not _match_fields(ev, want):
            continue
        t = _rel(run, ev.get("t"))
        if window is not None and (t is None or not window[0] <= t <= window[1]):
            continue
        out.append(ev)
    return out


def _check_event(run: Any, e: dict[str, Any]) -> Check:
    found = _events_matching(run, e)
    if "count" in e:
        ok = len(found) == int(e["count"])
        need = f"exactly {e['count']}"
    else:
        ok = len(found) >= int(e.get("min", 1))
        need = f"at least {e.get('min', 1)}"
    window = f" between {e['within'][0]} and {e['within'][1]}" if "within" in e else ""
    seen = "; ".join(_short(ev, run) for ev in found[:5]) or "none"
    if not found:
        same = [ev for ev in run.events() if ev.get("type") == e["type"]]
        if same:
            seen += f" (events of type {e['type']} seen: " + "; ".join(_short(ev, run) for ev in same[:4]) + ")"
    return Check("event", _describe(e), ok, f"expected {need}{window}; matched {len(found)}: {seen}", e)


def _check_no_event(run: Any, e: dict[str, Any]) -> Check:
    found = _events_matching(run, e)
    seen = "; ".join(_short(ev, run) for ev in found[:5])
    return Check("no_event", _describe(e), not found, f"expected none; {'seen: ' + seen if found else 'none seen'}", e)


def _check_occupancy(run: Any, e: dict[str, Any]) -> Check:
    tol = int(e.get("tolerance_s", 90))
    recs = [r for r in run.occupancy() if r.get("bay") == e.get("bay", r.get("bay"))]
    plain = {k: v for k, v in e.items() if k not in CONTROL | {"arrival", "departure"}}

    def fits(r: dict[str, Any]) -> bool:
        if not _match_fields(r, plain):
            return False
        for key in ("arrival", "departure"):
            if key in e:
                t = _rel(run, r.get(key))
                if t is None or abs(t - seconds(e[key])) > tol:
                    return False
        return True

    found = [r for r in recs if fits(r)]
    seen = "; ".join(
        f"{r.get('bay')} {hms(run.rel(r['arrival']))}-{hms(run.rel(r['departure']))} {r.get('classification')}"
        f"{' (confirmed)' if r.get('confirmed') else ''} fee {r.get('fee_fen')} fen, billable {r.get('billable_s')} s"
        for r in recs
    )
    return Check(
        "occupancy",
        _describe(e),
        len(found) == int(e.get("count", 1)),
        f"expected {e.get('count', 1)} record(s) like this (times within {tol} s); "
        f"records for the bay: {seen or 'none'}",
        e,
    )


def _spki_hex(pem: str) -> str:
    pub = serialization.load_pem_public_key(pem.encode())
    return pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo).hex()


def verify_ocmf(run: Any, rec: dict[str, Any]) -> str | None:
    """None if the record's OCMF verifies with pyocmf under the device key, else why not."""
    import pyocmf

    try:
        o = pyocmf.OCMF.from_string(rec["ocmf"], strict=True)
        if o.verify_signature(_spki_hex(run.device_pem)) is not True:
            return "signature does not verify"
    except Exception as exc:  # pyocmf raises its own types for every malformed part
        return f"{type(exc).__name__}: {exc}"
    return None


def _check_billing(run: Any, e: dict[str, Any]) -> Check:
    recs = [b for b in run.billing() if b.get("type") == "session" and b.get("pile") == e.get("pile", b.get("pile"))]
    problems = []
    for b in recs:
        why = verify_ocmf(run, b)
        if why:
            problems.append(f"record of {b.get('pile')}: {why}")
        s = b.get("session", {})
        if "energy_wh" in e:
            lo, hi = e["energy_wh"]
            if not lo <= s.get("energy_wh", -1) <= hi:
                problems.append(f"energy {s.get('energy_wh')} Wh not in [{lo}, {hi}]")
        if "metered" in e and s.get("metered") != e["metered"]:
            problems.append(f"metered is {s.get('metered')}, expected {e['metered']}")
    count_ok = len(recs) == int(e["count"]) if "count" in e else len(recs) >= int(e.get("min", 1))
    seen = "; ".join(
        f"{b.get('pile')}: {b.get('session', {}).get('energy_wh')} Wh, metered {b.get('session', {}).get('metered')}"
        for b in recs
    )
    detail = f"{len(recs)} record(s) ({seen or 'none'}), each checked with pyocmf"
    if problems:
        detail += "; problems: " + "; ".join(problems)
    return Check("billing", _describe(e), count_ok and not problems, detail, e)


def _check_ack(run: Any, e: dict[str, Any]) -> Check:
    acks = [a for a in run.acks() if a.get("cmd_id") == e.get("id")]
    want_ok = e.get("ok", True)
    fits = []
    for a in acks:
        if a.get("ok") != want_ok:
            continue
        if "reason" in e and not str(a.get("reason", "")).startswith(str(e["reason"])):
            continue
        if "result" in e and not _match_fields(a.get("result") or {}, e["result"]):
            continue
        fits.append(a)
    seen = "; ".join(str({k: v for k, v in a.items() if k != "cmd_id"}) for a in acks) or "no ack"
    return Check("ack", _describe(e), len(fits) >= 1, f"acks for {e.get('id')}: {seen}", e)


def _check_telemetry(run: Any, e: dict[str, Any]) -> Check:
    at = seconds(e["at"])
    msgs = [m for m in run.telemetry() if run.rel(m.get("t", 0)) <= at]
    if not msgs:
        return Check("telemetry", _describe(e), False, f"no telemetry message by {hms(at)}", e)
    last = msgs[-1]
    piles = {p.get("pile"): p for p in last.get("data", {}).get("piles", [])}
    item = piles.get(e.get("pile")) if "pile" in e else last.get("data", {})
    fields = e.get("fields", {})
    ok = item is not None and _match_fields(item, fields)
    shown = {k: (item or {}).get(k) for k in fields}
    return Check(
        "telemetry",
        _describe(e),
        ok,
        f"telemetry of {hms(run.rel(last.get('t', 0)))}: {e.get('pile', 'site')} {shown}",
        e,
    )


def _check_console(run: Any, e: dict[str, Any]) -> Check:
    text = run.consoles.get(e["name"])
    if text is None:
        return Check("console", _describe(e), False, f"no console session named {e['name']!r} ran", e)
    missing = [c for c in e.get("contains", []) if c not in text]
    present = [c for c in e.get("not_contains", []) if c in text]
    ok = not missing and not present
    detail = "all expected text seen" if ok else f"missing {missing}; unwanted {present}"
    return Check("console", _describe(e), ok, detail, e)


def _standard(run: Any) -> list[Check]:
    out = [Check("rig", "the run finished without a rig error", not run.error, run.error or "ok")]
    out.append(
        Check(
            "chain",
            "every message verified; chain intact; no seq gap",
            run.receiver_clean and not run.gaps and not run.broken_links and run.bad_signatures == 0,
            f"gaps {run.gaps or 'none'}, broken links {run.broken_links or 'none'}, bad signatures "
            f"{run.bad_signatures}; verifier: {run.receiver_report.strip()[:600]}",
        )
    )
    bills = [b for b in run.billing() if b.get("type") == "session"]
    bad = [f"{b.get('pile')}: {why}" for b in bills if (why := verify_ocmf(run, b))]
    out.append(
        Check("billing", f"all {len(bills)} billing record(s) verify with pyocmf", not bad, "; ".join(bad) or "ok")
    )
    tb = "Traceback" in run.dut_log
    out.append(Check("log", "no traceback in the DUT's log", not tb, "a traceback is in the DUT log" if tb else "ok"))
    return out


JUDGES = {
    "event": _check_event,
    "no_event": _check_no_event,
    "occupancy": _check_occupancy,
    "billing": _check_billing,
    "ack": _check_ack,
    "telemetry": _check_telemetry,
    "console": _check_console,
}


def judge(run: Any, final: bool = True) -> list[Check]:
    """Every expectation of the scenario as a Check; with `final`, the standard checks too."""
    out: list[Check] = []
    for kind, fn in JUDGES.items():
        for e in run.scenario.expect.get(kind, []):
            if not final and kind == "no_event":
                continue
            out.append(fn(run, e))
    if final:
        out = _standard(run) + out
    return out
