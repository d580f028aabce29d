"""HTML reports of HIL runs: an index and one page per scenario and DUT (docs/hil.md).

Each page draws the timeline as SVG (pile power from the simulator's truth, bay occupancy,
the gateway's events as markers, the rig's actions as dashed lines, fees at departures), lists
every expectation with pass/fail and what was seen, and keeps the raw verified messages, the
console transcripts and the DUT's log, so a failure can be understood from the page alone.
Self-contained files (inline CSS, no scripts), written under build/hil/.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from pilehil.scenario import hms

from .expect import Check

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
EVENT_COLOURS = {
    "bay": "#2ca02c",
    "meter": "#d62728",
    "pile": "#d62728",
    "interlock": "#9467bd",
    "sensor": "#ff7f0e",
    "site": "#8c564b",
    "command": "#17becf",
    "gateway": "#555555",
}
CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;max-width:1200px}
h1{font-size:1.4em;margin:.2em 0} h2{font-size:1.1em;margin-top:1.4em;border-bottom:1px solid #ddd}
.pass{color:#176b1d;font-weight:600} .fail{color:#b00020;font-weight:600}
.skip{color:#8a6d00;font-weight:600}
table{border-collapse:collapse;width:100%}
td,th{border:1px solid #ddd;padding:3px 6px;vertical-align:top;text-align:left}
tr.f td{background:#fdecee} code,pre{font:12px ui-monospace,monospace}
pre{white-space:pre-wrap;background:#f6f6f6;padding:6px}
.meta{color:#555} svg text{font:11px system-ui,sans-serif}
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def timeline_svg(run: Any, width: int = 1100) -> str:
    """The scenario's timeline: power per pile, bay occupancy, events, actions, fees."""
    sc = run.scenario
    samples = run.samples
    t_lo = min([s["t"] for s in samples] + [0])
    t_hi = max([s["t"] for s in samples] + [sc.duration])
    piles = sorted({p for s in samples for p in s["piles"]})
    bays = sorted({b for s in samples for b in s["bays"]})
    left, right = 60, 20
    power_h, lane_h = 150, 16
    top = 20
    y_bays = top + power_h + 20
    y_events = y_bays + lane_h * len(bays) + 14
    y_axis = y_events + 5 * 11 + 10
    height = y_axis + 40
    span = max(1, t_hi - t_lo)

    def x(t: float) -> float:
        return left + (t - t_lo) * (width - left - right) / span

    p_max = max([1] + [w for s in samples for w in s["piles"].values()] + [s.get("main_w", 0) for s in samples])
    p_max = max(p_max, 1000)

    def y(w: float) -> float:
        return top + power_h - w * power_h / p_max

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    out.append(f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>')
    # axes and hour/10-minute ticks
    out.append(f'<line x1="{left}" y1="{top + power_h}" x2="{width - right}" y2="{top + power_h}" stroke="#999"/>')
    step = 600 if span <= 4 * 3600 else 3600
    t = (t_lo // step) * step
    while t <= t_hi:
        if t >= t_lo:
            out.append(f'<line x1="{x(t):.1f}" y1="{top}" x2="{x(t):.1f}" y2="{y_axis - 10}" stroke="#eee"/>')
            out.append(f'<text x="{x(t):.1f}" y="{y_axis + 2}" text-anchor="middle">{hms(t)[:5]}</text>')
        t += step
    out.append(f'<text x="4" y="{top + 8}">{p_max / 1000:.1f} kW</text>')
    out.append(f'<text x="4" y="{top + power_h}">0</text>')
    series = [(p, [(s["t"], s["piles"].get(p, 0)) for s in samples]) for p in piles]
    if any("main_w" in s for s in samples):
        series.append(("main", [(s["t"], s.get("main_w", 0)) for s in samples]))
    for i, (name, pts) in enumerate(series):
        colour = "#888" if name == "main" else COLOURS[i % len(COLOURS)]
        dash = ' stroke-dasharray="4 3"' if name == "main" else ""
        path = " ".join(f"{'M' if j == 0 else 'L'}{x(t):.1f},{y(w):.1f}" for j, (t, w) in enumerate(pts))
        out.append(f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="1.5"{dash}/>')
        out.append(f'<text x="{width - right - 60}" y="{top + 12 + 12 * i}" fill="{colour}">{_e(name)}</text>')
    # bays: grey present, green charging
    for i, b in enumerate(bays):
        yy = y_bays + i * lane_h
        out.append(f'<text x="4" y="{yy + 11}">{_e(b)}</text>')
        prev = None
        for s in [*samples, {"t": t_hi, "bays": {}}]:
            state = s["bays"].get(b, 0)
            if prev is not None and prev[1]:
                fill = "#3a3" if prev[1] == 2 else "#bbb"
                w = max(0.5, x(s["t"]) - x(prev[0]))
                out.append(f'<rect x="{x(prev[0]):.1f}" y="{yy}" width="{w:.1f}" height="{lane_h - 4}" fill="{fill}"/>')
            prev = (s["t"], state)
    # actions of the rig
    for t_rel, what, note in run.actions:
        out.append(
            f'<line x1="{x(t_rel):.1f}" y1="{top}" x2="{x(t_rel):.1f}" y2="{y_events + 20}" stroke="#444" '
            f'stroke-dasharray="3 3"><title>{_e(hms(t_rel))} {_e(what)} {_e(note)}</title></line>'
        )
        out.append(f'<text x="{x(t_rel) + 2:.1f}" y="{top + 10}" fill="#444">{_e(what)}</text>')
    # events of the gateway, one lane per family
    for lane, name in enumerate(("bay", "sensor", "meter", "interlock", "other")):
        out.append(f'<text x="4" y="{y_events + lane * 11 + 4}" font-size="9">{name}</text>')
    for ev in run.events():
        if not isinstance(ev.get("t"), int):
            continue
        tr = run.rel(ev["t"])
        kind = str(ev.get("type", "?"))
        colour = EVENT_COLOURS.get(kind.split(".")[0], "#333")
        lane = {"bay": 0, "sensor": 1, "meter": 2, "pile": 2, "interlock": 3}.get(kind.split(".")[0], 4)
        if kind == "occupancy":
            continue
        yy = y_events + lane * 11
        tip = _e(f"{hms(tr)} " + json.dumps(ev, ensure_ascii=False)[:300])
        out.append(f'<circle cx="{x(tr):.1f}" cy="{yy}" r="3.5" fill="{colour}"><title>{tip}</title></circle>')
    # fees at departures
    for r in run.occupancy():
        if isinstance(r.get("departure"), int):
            tr = run.rel(r["departure"])
            label = f"{r.get('classification')} {r.get('fee_fen', 0) / 100:.2f} ¥"
            out.append(f'<text x="{x(tr):.1f}" y="{y_axis + 16}" text-anchor="end" fill="#b00020">{_e(label)}</text>')
    out.append(
        f'<text x="{left}" y="{height - 8}" fill="#555">site time from 00:00:00 = {_e(sc.start)} (Unix s); '
        "grey: vehicle present, green: charging; dots: gateway events (hover); dashed: rig actions</text>"
    )
    out.append("</svg>")
    return "\n".join(out)


def _status(checks: list[Check], skipped: str | None, xfail: str | None) -> tuple[str, str]:
    if skipped:
        return "skip", "SKIPPED"
    ok = all(c.ok for c in checks)
    if xfail:
        return ("pass", "XPASS") if ok else ("skip", "XFAIL")
    return ("pass", "PASS") if ok else ("fail", "FAIL")


def scenario_page(run: Any, checks: list[Check], xfail: str | None = None) -> str:
    sc = run.scenario
    cls, word = _status(checks, None, xfail)
    rows = []
    for c in checks:
        mark = '<td class="pass">pass</td>' if c.ok else '<td class="fail">FAIL</td>'
        rows.append(
            f'<tr class="{"" if c.ok else "f"}">{mark}'
            f"<td>{_e(c.kind)}</td><td><code>{_e(c.name)}</code></td><td>{_e(c.detail)}</td></tr>"
        )
    msgs = []
    for m in run.messages:
        body = json.dumps(m.body, ensure_ascii=False, indent=1) if m.body else ""
        msgs.append(
            f"<tr><td>{_e(m.seq)}</td><td>{_e(m.kind)}</td><td>{_e(m.status)}</td><td>{_e(hms(run.rel(m.arrived)))}</td>"
            f"<td><details><summary>{_e(body[:120])}</summary><pre>{_e(body)}</pre></details></td></tr>"
        )
    consoles = "".join(f"<h3>{_e(k)}</h3><pre>{_e(v)}</pre>" for k, v in run.consoles.items())
    actions = "".join(f"<tr><td>{_e(hms(t))}</td><td>{_e(w)}</td><td>{_e(n)}</td></tr>" for t, w, n in run.actions)
    log_tail = "\n".join(run.dut_log.splitlines()[-200:])
    xf = f"<p class='skip'>Expected to fail: {_e(xfail)}</p>" if xfail else ""
    err = f"<p class='fail'>Rig error: {_e(run.error)}</p>" if run.error else ""
    return f"""<!doctype html><html lang="en"><meta charset="utf-8"><title>{_e(sc.id)} on {_e(run.dut)}</title>
<style>{CSS}</style><body>
<p><a href="index.html">all scenarios</a></p>
<h1>{_e(sc.title)} <span class="{cls}">{word}</span></h1>
<p class="meta">scenario <code>{_e(sc.id)}</code> ({_e(sc.path.name)}) · DUT <b>{_e(run.dut)}</b> ·
site clock {run.speed:g}× real time · {hms(sc.duration)} of site time in {run.wall_s:.0f} s ·
{len(run.messages)} messages</p>
<p>{_e(sc.description)}</p>{xf}{err}
<h2>Timeline</h2>{timeline_svg(run)}
<h2>Expectations</h2>
<table><tr><th></th><th>kind</th><th>expectation</th><th>what was seen</th></tr>{"".join(rows)}</table>
<h2>Rig actions</h2><table><tr><th>site time</th><th>action</th><th>details</th></tr>{actions}</table>
<h2>Console sessions</h2>{consoles or "<p>none</p>"}
<h2>Verified messages</h2>
<p class="meta">as the reference verifier accepted them (signature, chain and seq checked); arrival in site time</p>
<table><tr><th>seq</th><th>kind</th><th>verdict</th><th>arrived</th><th>body</th></tr>{"".join(msgs)}</table>
<h2>Verifier</h2><pre>{_e(run.receiver_report)}</pre>
<h2>DUT log (last 200 lines)</h2>
<details><summary>show</summary><pre>{_e(log_tail)}</pre></details>
</body></html>
"""


def page_name(run: Any) -> str:
    return f"{run.scenario.id}--{run.dut}.html"


def write_page(folder: Path, run: Any, checks: list[Check], xfail: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / page_name(run)
    path.write_text(scenario_page(run, checks, xfail), encoding="utf-8")
    return path


STATUSES = ("PASS", "FAIL", "XFAIL", "XPASS", "SKIPPED")


def _summary(rows: list[dict[str, Any]]) -> str:
    """One line per DUT: how many scenarios ended in each status, and their summed wall time."""
    out = ["<table><tr><th>DUT</th>", *(f"<th>{s}</th>" for s in STATUSES), "<th>wall time (sum)</th></tr>"]
    for dut in sorted({r["dut"] for r in rows}):
        mine = [r for r in rows if r["dut"] == dut]
        out.append(f"<tr><td>{_e(dut)}</td>")
        for st in STATUSES:
            n = sum(1 for r in mine if r["status"] == st)
            cls = {"PASS": "pass", "XPASS": "pass", "FAIL": "fail"}.get(st, "skip") if n else ""
            out.append(f'<td class="{cls}">{n}</td>')
        out.append(f"<td>{sum(r.get('wall_s', 0) for r in mine):.0f} s</td></tr>")
    out.append("</table>")
    return "".join(out)


def write_index(folder: Path, rows: list[dict[str, Any]]) -> Path:
    """rows: {scenario, title, dut, status, wall_s, page, failed: [names]}."""
    folder.mkdir(parents=True, exist_ok=True)
    body = []
    for r in sorted(rows, key=lambda r: (r["scenario"], r["dut"])):
        cls = {"PASS": "pass", "XPASS": "pass", "FAIL": "fail"}.get(r["status"], "skip")
        link = f'<a href="{_e(r["page"])}">{_e(r["scenario"])}</a>' if r.get("page") else _e(r["scenario"])
        body.append(
            f"<tr><td>{link}</td><td>{_e(r['title'])}</td><td>{_e(r['dut'])}</td>"
            f'<td class="{cls}">{_e(r["status"])}</td><td>{r.get("wall_s", 0):.0f} s</td>'
            f"<td>{_e('; '.join(r.get('failed', []))[:400])}</td></tr>"
        )
    path = folder / "index.html"
    path.write_text(
        f"""<!doctype html><html lang="en"><meta charset="utf-8"><title>pilegate HIL report</title>
<style>{CSS}</style><body><h1>pilegate HIL report</h1>
<h2>By device under test</h2>{_summary(rows)}
<h2>Scenarios</h2><table><tr><th>scenario</th><th>title</th><th>DUT</th><th>result</th><th>wall time</th>
<th>failed checks / reason</th></tr>
{"".join(body)}</table></body></html>
""",
        encoding="utf-8",
    )
    return path
