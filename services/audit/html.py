"""``hvdm audit --html FILE``: one self-contained page -- every table of the text report, a chart per
VM, links between VMs -- that can be attached to a ticket and opened anywhere (no scripts, no
external files: charts are PNG images inlined as ``data:`` URIs).

Why matplotlib: it is already a dependency (``hvdm rebalance --plot``), and it draws readable time
axes, which a hand-written polyline did not. The charts use matplotlib's object API (``Figure``, no
``pyplot``), so nothing global is touched and no display is needed. When the log stamps its records
with wall-clock time (``services.audit.wall_clock``), charts are drawn against UTC time and the
protocol table shows the time beside the tick; otherwise against engine ticks.

>>> page = audit_html_page("t", ["<p>x</p>"], ["vm1", "vm2"])
>>> 'href="#vm-vm2"' in page and page.startswith("<!DOCTYPE html>")
True
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from html import escape
from typing import Any

from . import compacted
from .render import size
from .report import AuditReport
from .wall_clock import iso, wall_of_ticks

#: Charts are drawn for this many VMs at most (about 60 ms each); the tables cover every VM.
MAX_CHARTS = 300

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222}
table{border-collapse:collapse;margin:8px 0 16px}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#1a7f37;font-weight:bold}.bad{color:#cf222e;font-weight:bold}
code{font-size:12px;word-break:break-all}
h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:32px}
nav{margin:8px 0}nav a{margin-right:8px}.vmnav{font-size:12px;font-weight:normal;margin-left:16px}
"""


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


def _anchor(vm: str) -> str:
    return f"vm-{escape(vm)}"


def audit_html_page(title: str, parts: Sequence[str], vms: Sequence[str]) -> str:
    nav = "".join(f'<a href="#{_anchor(vm)}">{escape(vm)}</a>' for vm in vms)
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body id='top'><h1>hvdm audit</h1>"
        + (f"<nav>VMs: {nav}</nav>" if vms else "")
        + "".join(parts)
        + "</body></html>"
    )


# ---------------------------------------------------------------------------------------------- charts
def _times(ticks: Sequence[int], walls: dict[int, float]) -> list[Any] | None:
    """Ticks as UTC datetimes (interpolated between stamped ticks); None without stamps."""
    if not walls:
        return None
    import datetime as dt

    import numpy as np

    known = np.array(sorted(walls), dtype=float)
    values = np.array([walls[int(t)] for t in known], dtype=float)
    if len(known) == 1:
        return [dt.datetime.fromtimestamp(float(values[0]), tz=dt.UTC) for _ in ticks]
    # Outside the stamped span, extrapolate with the overall rate (seconds per tick).
    rate = (values[-1] - values[0]) / max(known[-1] - known[0], 1.0)
    out = []
    for t in ticks:
        if t < known[0]:
            unix = values[0] - (known[0] - t) * rate
        elif t > known[-1]:
            unix = values[-1] + (t - known[-1]) * rate
        else:
            unix = float(np.interp(t, known, values))
        out.append(dt.datetime.fromtimestamp(unix, tz=dt.UTC))
    return out


def chart_png(
    lines: Sequence[tuple[str, Sequence[tuple[int, float]]]],
    marks: Sequence[int],
    walls: dict[int, float],
    y_label: str = "GiB",
) -> str:
    """A step chart (values hold until the next point) with red vertical marks, as a base64 PNG.

    ``walls`` maps ticks to Unix times: with it the x axis is UTC time, without it engine ticks.
    """
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.0, 3.0), dpi=90)
    ax = fig.add_subplot()
    all_ticks = sorted({t for _, series in lines for t, _ in series} | set(marks))
    as_time = _times(all_ticks, walls) if all_ticks else None
    x_of = dict(zip(all_ticks, as_time, strict=True)) if as_time is not None else None
    for label, series in lines:
        if not series:
            continue
        xs = [x_of[t] if x_of is not None else t for t, _ in series]
        ax.step(xs, [v for _, v in series], where="post", label=label, linewidth=1.4)
    for tick in marks:
        ax.axvline(x_of[tick] if x_of is not None else tick, color="#cf222e", linewidth=0.9, alpha=0.8)
    if x_of is not None:
        locator = AutoDateLocator()  # type: ignore[no-untyped-call]
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
        ax.set_xlabel("time (UTC)")
    else:
        ax.set_xlabel("engine tick")
    ax.set_ylabel(y_label)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    if any(series for _, series in lines):
        ax.legend(loc="upper left", fontsize=8, frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


# ---------------------------------------------------------------------------------------------- tables
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
                    f"{t['min']}/{t['median']}/{t['p95']}/{t['max']}",
                    f"{s['min']:g}/{s['median']:g}/{s['p95']:g}/{s['max']:g}",
                ]
            )
    return rows


def _rate(txn: dict[str, Any]) -> str | None:
    rate = txn["gb_per_min"]
    if rate is None:
        return None
    return f">= {rate:.3g} (instant)" if txn["gb_per_min_is_lower_bound"] else f"{rate:.3g}"


def _transactions(title: str, txns: list[dict[str, Any]]) -> list[str]:
    if not txns:
        return []
    rows = [
        [
            t["trans_id"],
            t["outcome"],
            t["requested_pages"],
            t["pages"],
            size(t["bytes"]),
            t["start_tick"],
            t["end_tick"],
            t["seconds"],
            _rate(t),
        ]
        for t in txns
    ]
    headers = ["TRANS", "OUTCOME", "REQUESTED", "PAGES", "SIZE", "START", "END", "SECONDS", "GB/MIN"]
    return [f"<h3>{escape(title)}</h3>", _table(headers, rows)]


def _vm_nav(vms: Sequence[str], i: int) -> str:
    links = ['<a href="#top">top</a>']
    if i > 0:
        links.append(f'<a href="#{_anchor(vms[i - 1])}">&larr; {escape(vms[i - 1])}</a>')
    if i + 1 < len(vms):
        links.append(f'<a href="#{_anchor(vms[i + 1])}">{escape(vms[i + 1])} &rarr;</a>')
    return f'<span class="vmnav">{" ".join(links)}</span>'


def _vm_section(report: AuditReport, vm: str, v: dict[str, Any], walls: dict[int, float], chart: bool) -> list[str]:
    b = v["behaviour"]
    parts: list[str] = []
    if chart:
        series = report.vms[vm].fold.series
        gib = float(1 << 30) / 4096
        current = [(t, c / gib) for t, c, _, _ in series]
        target = [(t, g / gib) for t, _, g, _ in series if g >= 0]
        demand = [(t, d / gib) for t, _, _, d in series if d >= 0]
        marks = sorted({d[k]["tick"] for d in b["violations"].values() for k in ("first", "last")})
        png = chart_png(
            [("current size", current), ("target", target), ("demand (committed - ballooned)", demand)], marks, walls
        )
        parts.append(f'<p><img alt="{escape(vm)} memory over time" src="data:image/png;base64,{png}"></p>')
    if v["fold_error"]:
        parts.append(f"<p class='bad'>Recorded events could not all be folded: {escape(str(v['fold_error']))}</p>")
    if v["inputs_rejected"]:
        rows = [
            [r["inbox_pos"], r["tick"], r["input_type"], f"{r['error_class']}: {r['error']}"]
            for r in v["inputs_rejected"]
        ]
        parts += ["<h3 class='bad'>Needs attention: inputs the engine rejected</h3>"]
        parts.append(_table(["INBOX POS", "TICK", "INPUT", "ERROR"], rows))
    if v["violations"]:
        rows = [
            [reason, count, v["violation_ticks"][reason]["first_tick"], v["violation_ticks"][reason]["last_tick"]]
            for reason, count in v["violations"].items()
        ]
        parts += ["<h3>Violations (red marks on the chart: first and last)</h3>"]
        parts.append(_table(["REASON", "COUNT", "FIRST TICK", "LAST TICK"], rows))
    parts += _transactions("Balloon transactions", v["balloon_transactions"])
    parts += _transactions("Unballoon transactions", v["unballoon_transactions"])
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
        parts.append("<h3>Violations in detail</h3>")
        parts.append(_table(["REASON", "COUNT", "FIRST", "LAST", "PAGES", "RANGES [start, count]"], vrows))
    lat = _latency_rows(b["latencies"])
    if lat:
        parts.append("<h3>Response latencies</h3>")
        parts.append(_table(["LATENCY", "COUNT", "TICKS min/med/p95/max", "SECONDS min/med/p95/max"], lat))
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
    interval = st["interval"]
    cadence = "no interval"
    if interval.get("count"):
        t = interval["ticks"]
        cadence = f"interval ticks min/median/max {t['min']}/{t['median']}/{t['max']}"
    parts.append(
        f"<h3>Status reports</h3><p>{st['count']:,} reports, {cadence}; {st['gaps']} gaps longer than "
        f"{st['gap_ticks']} ticks; at most {st['max_in_one_tick']} in one tick.</p>"
    )
    if st["gaps_listed"]:
        grows = [[g["from_tick"], g["to_tick"], g["seconds"]] for g in st["gaps_listed"]]
        parts.append(_table(["FROM TICK", "TO TICK", "SECONDS"], grows))
    if b["protocol"]:
        prows = []
        for e in b["protocol"]:
            what = e.get("version") or e.get("reason") or ""
            if "capabilities" in e:
                what = ", ".join(f"{k}={val}" for k, val in e["capabilities"].items())
            prows.append([e["tick"], iso(walls.get(e["tick"])), e["seq"], e["event"], what])
        parts.append("<h3>Protocol over time</h3>")
        parts.append(_table(["TICK", "TIME (UTC)", "SEQ", "EVENT", "DETAIL"], prows))
    return parts


def audit_html(report: AuditReport, log: Any = None) -> str:
    """The page for ``report``; ``log`` (the reader the audit read) supplies wall-clock stamps."""
    doc = report.to_dict()
    walls = wall_of_ticks(log) if log is not None else {}
    parts = [f"<p><code>{escape(doc['db'])}</code></p>"]
    verdict = '<span class="ok">MATCHES</span>' if doc["replay_matches"] else '<span class="bad">DIVERGES</span>'
    window = f" Reporting inbox records after position {doc['from_position']:,}." if doc["from_position"] else ""
    parts.append(
        f"<p>Replay {verdict}: {doc['inbox_records']:,} inbox records re-decided, {doc['decided_events']:,} events "
        f"decided, {doc['events']:,} recorded; consumed position {doc['consumed_position']:,}, high watermark "
        f"{doc['inbox_high_watermark']:,}; tick = {doc['engine_config']['tick_seconds']:g} s "
        f"({escape(doc['engine_config_source'])}).{window}</p>"
    )
    if walls:
        parts.append(
            f"<p>Wall clock: records stamped from {iso(min(walls.values()))} to {iso(max(walls.values()))} (UTC).</p>"
        )
    else:
        parts.append("<p>Wall clock: not recorded in this log; charts are drawn against engine ticks.</p>")
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
    vms: dict[str, dict[str, Any]] = doc["vms"]
    names = list(vms)
    summary = [
        [
            f"{vm}",
            v["protocol_state"],
            v["protocol_version"],
            size(v["current_bytes"]),
            size(v["target_bytes"]),
            sum(v["violations"].values()),
            "ok" if v["replay_matches"] else "DIVERGES",
        ]
        for vm, v in vms.items()
    ]
    parts.append(_table(["VM", "PROTOCOL", "VERSION", "CURRENT", "TARGET", "VIOLATIONS", "REPLAY"], summary))
    money = [
        [vm, v["boot_bytes"], v["hot_added_bytes"], v["ballooned_bytes"], v["current_bytes"], v["target_bytes"]]
        for vm, v in vms.items()
    ]
    parts += [
        "<h3>Accounting (bytes)</h3>",
        _table(["VM", "BOOT", "HOT-ADDED", "BALLOONED", "CURRENT", "TARGET"], money),
    ]
    if doc["compaction"] is not None:
        parts += [
            "<h3>Compacted history</h3>",
            f"<p>{escape(compacted.cut_sentence(doc['compaction']))}.</p>",
            _table(compacted.SUMMARY_HEADERS, compacted.summary_rows(vms, size)),
        ]
        if violations := compacted.violation_rows(vms):
            parts.append(_table(["VM", "REASON", "BEFORE THE CUT", "AFTER", "TOTAL"], violations))
    if len(names) > MAX_CHARTS:
        parts.append(f"<p>Charts are drawn for the first {MAX_CHARTS} VMs; every VM has its tables.</p>")
    for i, vm in enumerate(names):
        parts.append(f'<h2 id="{_anchor(vm)}">{escape(vm)}{_vm_nav(names, i)}</h2>')
        parts += _vm_section(report, vm, vms[vm], walls, chart=i < MAX_CHARTS)
    if any(t["instant"] for v in vms.values() for t in v["balloon_transactions"] + v["unballoon_transactions"]):
        parts.append(
            f"<p>(instant: started and ended within one tick; the rate assumes the whole tick "
            f"({doc['engine_config']['tick_seconds']:g} s), so it is a lower bound)</p>"
        )
    return audit_html_page(f"hvdm audit {doc['db']}", parts, names)
