"""``hvdm audit --html FILE``: one self-contained page -- tables and inline SVG plots, no scripts,
no external files -- that can be attached to a ticket and opened anywhere.

Why SVG written here rather than matplotlib: the page must not depend on a plotting stack being
installed where the audit runs, and a line chart is a polyline.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

from services.audit.render import size
from services.audit.report import AuditReport

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222}
table{border-collapse:collapse;margin:8px 0 16px}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#1a7f37;font-weight:bold}.bad{color:#cf222e;font-weight:bold}
code{font-size:12px;word-break:break-all}
h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:32px}
"""
_COLOURS = ("#1f77b4", "#2ca02c", "#ff7f0e", "#d62728")


def svg_chart(
    lines: Sequence[tuple[str, Sequence[tuple[float, float]]]],
    marks: Sequence[float] = (),
    width: int = 760,
    height: int = 240,
    y_label: str = "",
) -> str:
    """A line chart as inline SVG: step lines (values hold until the next point), vertical red marks.

    >>> svg_chart([("a", [(0, 0), (1, 1)])]).startswith("<svg")
    True
    """
    points = [p for _, series in lines for p in series]
    if not points:
        return "<p>(no data)</p>"
    x0 = min(p[0] for p in points)
    x1 = max(max(p[0] for p in points), x0 + 1)
    y1 = max(max(p[1] for p in points), 1.0) * 1.05
    left, right, top, bottom = 60, 10, 10, 30
    w, h = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * w

    def sy(y: float) -> float:
        return top + h - y / y1 * h

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 18 * len(lines)}">']
    out.append(f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#999"/>')
    for frac in (0.0, 0.5, 1.0):
        y = y1 * frac
        out.append(f'<text x="{left - 4}" y="{sy(y) + 4:.1f}" font-size="10" text-anchor="end">{y:.3g}</text>')
    out.append(f'<text x="{left}" y="{top + h + 14}" font-size="10">tick {x0:g}</text>')
    out.append(f'<text x="{left + w}" y="{top + h + 14}" font-size="10" text-anchor="end">tick {x1:g}</text>')
    out.append(f'<text x="4" y="{top + 10}" font-size="10">{escape(y_label)}</text>')
    for x in marks:
        out.append(
            f'<line x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{top}" y2="{top + h}" '
            'stroke="#d62728" stroke-opacity="0.35"/>'
        )
    for i, (name, series) in enumerate(lines):
        colour = _COLOURS[i % len(_COLOURS)]
        path: list[str] = []
        prev_y: float | None = None
        for x, y in series:
            if prev_y is not None:
                path.append(f"{sx(x):.1f},{sy(prev_y):.1f}")
            path.append(f"{sx(x):.1f},{sy(y):.1f}")
            prev_y = y
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{" ".join(path)}"/>')
        ly = top + h + 30 + 18 * i
        out.append(f'<rect x="{left}" y="{ly - 9}" width="12" height="4" fill="{colour}"/>')
        out.append(f'<text x="{left + 18}" y="{ly - 4}" font-size="11">{escape(name)}</text>')
    out.append("</svg>")
    return "".join(out)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for cell in row:
            text = "-" if cell is None else str(cell)
            numeric = isinstance(cell, int | float) and not isinstance(cell, bool)
            cells.append(f'<td class="n">{escape(text)}</td>' if numeric else f"<td>{escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _latency_rows(latencies: dict[str, Any]) -> list[list[Any]]:
    rows: list[list[Any]] = []
    for kind, d in latencies.items():
        parts = (
            [("first answer", d["first_answer"]), ("completion", d["completion"])] if "completion" in d else [("", d)]
        )
        for label, summary in parts:
            if not summary.get("count"):
                continue
            t, s = summary["ticks"], summary["seconds"]
            rows.append(
                [
                    f"{kind} {label}".strip(),
                    summary["count"],
                    t["min"],
                    t["median"],
                    t["p95"],
                    t["max"],
                    s["median"],
                    s["max"],
                ]
            )
    return rows


def audit_html(report: AuditReport) -> str:
    doc = report.to_dict()
    gib = float(1 << 30)
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>hvdm audit {escape(doc['db'])}</title><style>{_STYLE}</style></head><body>",
        f"<h1>hvdm audit</h1><p><code>{escape(doc['db'])}</code></p>",
    ]
    verdict = '<span class="ok">MATCHES</span>' if doc["replay_matches"] else '<span class="bad">DIVERGES</span>'
    parts.append(
        f"<p>Replay {verdict}: {doc['inbox_records']:,} inbox records re-decided, {doc['decided_events']:,} events "
        f"decided, {doc['events']:,} recorded; consumed position {doc['consumed_position']:,}; "
        f"tick = {doc['engine_config']['tick_seconds']:g} s ({escape(doc['engine_config_source'])}).</p>"
    )
    if doc["consumed_behind_inbox"]:
        parts.append(
            f'<p><span class="bad">BEHIND</span>: {doc["unconsumed_inputs"]:,} inbox records after the consumed '
            "position were never processed (the engine stopped on them, or is still running).</p>"
        )
    div = doc["first_divergence"]
    if div is not None:
        parts.append(
            f"<p class='bad'>First divergence: vm {escape(div['vm'])} seq {div['seq']} inbox pos {div['inbox_pos']} "
            f"({escape(div['kind'])})</p><p>expected <code>{escape(str(div['expected']))}</code><br>"
            f"recorded <code>{escape(str(div['recorded']))}</code></p>"
        )
    rows = [
        [
            vm,
            v["protocol_state"],
            v["protocol_version"],
            size(v["current_bytes"]),
            size(v["target_bytes"]),
            sum(v["violations"].values()),
            "ok" if v["replay_matches"] else "DIVERGES",
        ]
        for vm, v in doc["vms"].items()
    ]
    parts.append(_table(["VM", "PROTOCOL", "VERSION", "CURRENT", "TARGET", "VIOLATIONS", "REPLAY"], rows))
    for vm, v in doc["vms"].items():
        b = v["behaviour"]
        parts.append(f"<h2>{escape(vm)}</h2>")
        series = report.vms[vm].fold.series
        current = [(t, c / gib * 4096) for t, c, _, _ in series]
        target = [(t, g / gib * 4096) for t, _, g, _ in series if g >= 0]
        demand = [(t, d / gib * 4096) for t, _, _, d in series if d >= 0]
        marks = [float(d["first"]["tick"]) for d in b["violations"].values()] + [
            float(d["last"]["tick"]) for d in b["violations"].values()
        ]
        parts.append(
            svg_chart(
                [("current size", current), ("target", target), ("demand (committed - ballooned)", demand)],
                marks,
                y_label="GiB",
            )
        )
        if b["violations"]:
            vrows = [
                [
                    reason,
                    d["count"],
                    f"tick {d['first']['tick']} seq {d['first']['seq']} pos {d['first']['inbox_pos']}: "
                    f"{d['first']['detail']}",
                    f"tick {d['last']['tick']} seq {d['last']['seq']} pos {d['last']['inbox_pos']}",
                    d["pages"],
                    " ".join(f"[{a}, {n}]" for a, n in d["ranges"][:50]) + (" ..." if len(d["ranges"]) > 50 else ""),
                ]
                for reason, d in b["violations"].items()
            ]
            parts.append("<h3>Violations (red marks: first and last)</h3>")
            parts.append(_table(["REASON", "COUNT", "FIRST", "LAST", "PAGES", "RANGES [start, count]"], vrows))
        lat = _latency_rows(b["latencies"])
        if lat:
            parts.append("<h3>Response latencies</h3>")
            parts.append(_table(["TYPE", "COUNT", "MIN T", "MEDIAN T", "P95 T", "MAX T", "MEDIAN S", "MAX S"], lat))
        if b["throughput"]:
            trows = [
                [
                    k,
                    d["pages"],
                    size(d["bytes"]),
                    d["seconds"],
                    None if d["gb_per_min"] is None else round(d["gb_per_min"], 3),
                ]
                for k, d in b["throughput"].items()
            ]
            parts.append("<h3>Throughput</h3>")
            parts.append(_table(["KIND", "PAGES", "SIZE", "SECONDS", "GB/MIN"], trows))
        st = b["status_reports"]
        parts.append(
            f"<h3>Status reports</h3><p>{st['count']:,} reports; {st['gaps']} gaps longer than {st['gap_ticks']} "
            f"ticks; at most {st['max_in_one_tick']} in one tick.</p>"
        )
        if st["gaps_listed"]:
            parts.append(
                _table(
                    ["FROM TICK", "TO TICK", "SECONDS"],
                    [[g["from_tick"], g["to_tick"], g["seconds"]] for g in st["gaps_listed"]],
                )
            )
        if b["protocol"]:
            prows = []
            for e in b["protocol"]:
                what = e.get("version") or e.get("reason") or ""
                if "capabilities" in e:
                    what = ", ".join(f"{k}={val}" for k, val in e["capabilities"].items())
                prows.append([e["tick"], e["seq"], e["event"], what])
            parts.append("<h3>Protocol over time</h3>")
            parts.append(_table(["TICK", "SEQ", "EVENT", "DETAIL"], prows))
    parts.append("</body></html>")
    return "".join(parts)
