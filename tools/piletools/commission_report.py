"""The human side of a commissioning record: an HTML page (table and SVG diagram of buses,
addresses, piles and bays), the SVG on its own, and a one-page PDF of the table for the site
file.

The PDF writer is a few dozen lines of our own: one page, the 14 standard fonts (no embedding),
text and lines only.  A PDF library (reportlab, fpdf2) would earn its place for layouts with
images or CJK text; a table of pile ids, addresses, serials and verdicts needs neither, and
every PDF reader opens what PDF 1.4's base fonts draw.  Text outside Latin-1 is replaced by '?'
in the PDF only (the HTML keeps it).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

COLUMNS = ("pile", "verdict", "bus", "address", "profile", "serial", "load test", "interlock")


def rows(data: dict[str, Any]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for p in data["piles"]:
        m = p.get("meter") or {}
        ev = p.get("evidence") or {}
        rise = ev.get("rise_a")
        load = f"+{rise:.1f} A ({ev.get('method')})" if rise is not None else str(ev.get("method", "-"))
        out.append(
            (
                p["pile"],
                p["verdict"],
                str(m.get("bus", "-")),
                str(m.get("address", "-")),
                str(m.get("profile") or "-"),
                str(m.get("serial") or "-"),
                load,
                str(p["interlock"]["result"]),
            )
        )
    return out


def svg(data: dict[str, Any]) -> str:
    """Buses as horizontal lines, a box per device at its address, piles under their meters."""
    buses = data["buses"]
    piles_by_meter: dict[tuple[str, int], list[str]] = {}
    for p in data["piles"]:
        m = p.get("meter")
        if m:
            piles_by_meter.setdefault((m["bus"], m["address"]), []).append(
                p["pile"] + ("" if p["verdict"] == "proven" else " !")
            )
    width = 140 + 110 * max([len(b["devices"]) for b in buses] + [1])
    height = 40 + 150 * max(len(buses), 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<text x="10" y="20" font-size="14">Gateway {html.escape(data["gateway"])}: site '
        f"{html.escape(data['site'])}, verdict {html.escape(str(data['verdict']).upper())}</text>",
    ]
    for i, b in enumerate(buses):
        y = 70 + 150 * i
        parts.append(f'<text x="10" y="{y - 8}">{html.escape(b["bus"])} ({html.escape(b["line"])})</text>')
        parts.append(f'<line x1="10" y1="{y}" x2="{width - 10}" y2="{y}" stroke="black" stroke-width="3"/>')
        for k, d in enumerate(
            sorted(b["devices"], key=lambda d: (isinstance(d["address"], str), str(d["address"]).zfill(12)))
        ):
            x = 130 + 110 * k
            bad = d.get("collision") or not d.get("profile") or d.get("line") != b["line"]
            colour = "#f4c7c3" if bad else "#d9ead3"
            parts.append(f'<line x1="{x + 45}" y1="{y}" x2="{x + 45}" y2="{y + 20}" stroke="black"/>')
            parts.append(f'<rect x="{x}" y="{y + 20}" width="90" height="46" fill="{colour}" stroke="black" rx="4"/>')
            parts.append(f'<text x="{x + 5}" y="{y + 36}">addr {d["address"]}</text>')
            label = "COLLISION" if d.get("collision") else (d.get("profile") or "unknown")
            parts.append(f'<text x="{x + 5}" y="{y + 52}" font-size="10">{html.escape(label[:16])}</text>')
            pl = piles_by_meter.get((b["bus"], d["address"]), [])
            for j, name in enumerate(pl):
                parts.append(f'<text x="{x + 5}" y="{y + 84 + 14 * j}" font-weight="bold">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def html_page(data: dict[str, Any]) -> str:
    head = "".join(f"<th>{c}</th>" for c in COLUMNS)
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r) + "</tr>" for r in rows(data))
    faults = "".join(f"<li>{html.escape(f['text'])}</li>" for f in data["faults"]) or "<li>none</li>"
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in data.get("notes", [])) or "<li>none</li>"
    stats = "".join(
        f"<li>{html.escape(b['bus'])} ({html.escape(b['port'])}, {html.escape(b['line'])}): "
        + ", ".join(f"{k} {v}" for k, v in b["stats"].items())
        + "</li>"
        for b in data["buses"]
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Commissioning {html.escape(data["gateway"])}</title>
<style>body{{font-family:sans-serif}} table{{border-collapse:collapse}}
td,th{{border:1px solid #888;padding:3px 8px}}</style>
</head><body>
<h1>Commissioning record: gateway {html.escape(data["gateway"])}, site {html.escape(data["site"])}</h1>
<p>Verdict: <b>{html.escape(str(data["verdict"]).upper())}</b>. By {html.escape(data["by"])},
Unix time {data["t"]}; device key {html.escape(data["kid"])}. The signed record (record.jws) is the
evidence; this page is its human view.</p>
<table><tr>{head}</tr>
{body}
</table>
<h2>Faults</h2><ul>{faults}</ul>
<h2>Notes</h2><ul>{notes}</ul>
<h2>Bus statistics</h2><ul>{stats}</ul>
<h2>Diagram</h2>
{svg(data)}
</body></html>
"""


def _pdf_text(s: str) -> str:
    s = s.encode("latin-1", "replace").decode("latin-1")
    return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def pdf(data: dict[str, Any]) -> bytes:
    """A one-page A4 PDF: title, verdict, the table, the faults (landscape, Helvetica)."""
    w, h = 842, 595
    lines = []

    def text(x: float, y: float, s: str, size: int = 9, bold: bool = False) -> None:
        font = "F2" if bold else "F1"
        lines.append(f"BT /{font} {size} Tf {x:.1f} {y:.1f} Td ({_pdf_text(s)}) Tj ET")

    text(40, h - 50, f"Commissioning record: gateway {data['gateway']}, site {data['site']}", 14, True)
    text(40, h - 70, f"Verdict {str(data['verdict']).upper()}  -  by {data['by']}  -  Unix time {data['t']}", 10)
    text(40, h - 84, f"Device key {data['kid']}", 8)
    xs = [40, 90, 170, 240, 290, 400, 510, 640, 800]
    y = h - 115
    for i, c in enumerate(COLUMNS):
        text(xs[i] + 2, y, c, 9, True)
    lines.append(f"0.5 w {xs[0]} {y - 4} m {xs[-1]} {y - 4} l S")
    for r in rows(data):
        y -= 16
        for i, v in enumerate(r):
            text(xs[i] + 2, y, v[:24], 9)
        lines.append(f"0.2 w {xs[0]} {y - 4} m {xs[-1]} {y - 4} l S")
    y -= 28
    text(40, y, "Faults", 11, True)
    for f in data["faults"] or [{"text": "none"}]:
        for chunk in _wrap(f["text"], 140):
            y -= 13
            if y < 30:
                break
            text(48, y, chunk, 8)
    stream = "\n".join(lines).encode("latin-1")
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {w} {h}] /Contents 4 0 R "
        "/Resources << /Font << /F1 5 0 R /F2 6 0 R >> >> >>".encode(),
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica-Bold /Encoding /WinAnsiEncoding >>",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for i, body in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    return bytes(out)


def _wrap(s: str, n: int) -> list[str]:
    words, out, cur = s.split(), [], ""
    for wd in words:
        if cur and len(cur) + 1 + len(wd) > n:
            out.append(cur)
            cur = wd
        else:
            cur = f"{cur} {wd}".strip()
    return [*out, cur] if cur else out


def write_all(out_dir: Path, data: dict[str, Any]) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "report.html", out_dir / "report.svg", out_dir / "report.pdf"]
    paths[0].write_text(html_page(data), encoding="utf-8")
    paths[1].write_text(svg(data) + "\n", encoding="utf-8")
    paths[2].write_bytes(pdf(data))
    return paths
