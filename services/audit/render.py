"""Plain-text rendering of audit reports and point-in-time states, for people at a terminal.

Plain text (no ``rich``): the output ends up in tickets and chat, where only aligned columns
survive. Machines should read ``--json`` instead; nothing here is a contract.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import compacted
from .point_in_time import PointInTime
from .report import AuditReport

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
_RANGES_SHOWN = 16


def size(nbytes: int | None) -> str:
    """Bytes in the largest binary unit that keeps the number >= 1.

    >>> size(8 << 20), size(0), size(None)
    ('8.00 MiB', '0 B', '-')
    """
    if nbytes is None:
        return "-"
    value = float(nbytes)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{nbytes} B" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _num(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> list[str]:
    """Columns padded to their widest cell; cells starting with a digit are right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]

    def line(cells: Sequence[str], header: bool) -> str:
        out = []
        for cell, width in zip(cells, widths, strict=True):
            numeric = not header and cell[:1].isdigit()
            out.append(cell.rjust(width) if numeric else cell.ljust(width))
        return (indent + "  ".join(out)).rstrip()

    return [line(headers, True), *(line(r, False) for r in rows)]


def _rate(txn: dict[str, Any]) -> str:
    rate = txn["gb_per_min"]
    if rate is None:
        return "-"
    return f">= {rate:.3g} (instant)" if txn["gb_per_min_is_lower_bound"] else f"{rate:.3g}"


def _transactions(title: str, txns: list[dict[str, Any]]) -> list[str]:
    if not txns:
        return []
    rows = [
        [
            str(t["trans_id"]),
            t["outcome"],
            _num(t["requested_pages"]),
            _num(t["pages"]),
            size(t["bytes"]),
            str(t["start_tick"]),
            "-" if t["end_tick"] is None else str(t["end_tick"]),
            "-" if t["seconds"] is None else f"{t['seconds']:g}",
            _rate(t),
        ]
        for t in txns
    ]
    headers = ["TRANS", "OUTCOME", "REQUESTED", "PAGES", "SIZE", "START", "END", "SECONDS", "GB/MIN"]
    return ["", title, *table(headers, rows, "  ")]


def audit_text(report: AuditReport) -> str:
    doc = report.to_dict()
    config = doc["engine_config"]
    where = "stored in the log" if doc["engine_config_source"] == "meta" else "none stored: defaults"
    window = ""
    if doc["from_position"]:
        window = f" (reporting inbox records after position {doc['from_position']})"
    lines = [
        f"hvdm audit  {doc['db']}{window}",
        f"engine config  tick_seconds={config['tick_seconds']:g} ({where})",
        f"inbox          {doc['inbox_records']} records replayed (consumed position "
        f"{doc['consumed_position']}, high watermark {doc['inbox_high_watermark']})",
        f"events         {doc['events']} recorded, {doc['decided_events']} decided by the replay",
    ]
    if doc["consumed_behind_inbox"]:
        lines.append(
            f"engine         BEHIND: {doc['unconsumed_inputs']} inbox records after the consumed position were "
            "never processed (the engine stopped on them, or is still running)"
        )
    div = doc["first_divergence"]
    if div is None:
        lines.append("replay         MATCHES: every decided event equals the recorded one byte for byte")
    else:
        lines += [
            f"replay         DIVERGES: first at vm {div['vm']} seq {div['seq']} "
            f"(inbox pos {div['inbox_pos']}, {div['kind']})",
            f"  expected  {div['expected'] if div['expected'] is not None else '(no event)'}",
            f"  recorded  {div['recorded'] if div['recorded'] is not None else '(no event)'}",
        ]
    if doc["compaction"] is not None:
        lines.append(f"compacted      {compacted.cut_sentence(doc['compaction'])}")
    vms: dict[str, dict[str, Any]] = doc["vms"]
    summary = [
        [
            vm,
            v["protocol_state"],
            v["protocol_version"] or "-",
            size(v["current_bytes"]),
            size(v["target_bytes"]),
            str(sum(v["violations"].values())),
            "ok" if v["replay_matches"] else "DIVERGES",
        ]
        for vm, v in vms.items()
    ]
    lines += ["", *table(["VM", "PROTOCOL", "VERSION", "CURRENT", "TARGET", "VIOLATIONS", "REPLAY"], summary)]
    money = [
        [
            vm,
            _num(v["boot_bytes"]),
            _num(v["hot_added_bytes"]),
            _num(v["ballooned_bytes"]),
            _num(v["current_bytes"]),
            _num(v["target_bytes"]),
        ]
        for vm, v in vms.items()
    ]
    lines += ["", "accounting (bytes)"]
    lines += table(["VM", "BOOT", "HOT-ADDED", "BALLOONED", "CURRENT", "TARGET"], money, "  ")
    if doc["compaction"] is not None:
        rows = [[c if isinstance(c, str) else f"{c:,}" for c in row] for row in compacted.summary_rows(vms, size)]
        lines += ["", "history summaries (the compacted history and what came after the cut, merged)"]
        lines += table(compacted.SUMMARY_HEADERS, rows, "  ")
        if violations := compacted.violation_rows(vms):
            lines += ["", "violations over the whole history"]
            cells = [[str(c) for c in row] for row in violations]
            lines += table(["VM", "REASON", "BEFORE THE CUT", "AFTER", "TOTAL"], cells, "  ")
    for vm, v in vms.items():
        if v["fold_error"]:
            lines += ["", f"{vm}: recorded events could not all be folded: {v['fold_error']}"]
        if v["inputs_rejected"]:
            rows = [
                [str(r["inbox_pos"]), str(r["tick"]), r["input_type"], f"{r['error_class']}: {r['error']}"]
                for r in v["inputs_rejected"]
            ]
            lines += [
                "",
                f"{vm} NEEDS ATTENTION: inputs the engine rejected",
                *table(["INBOX POS", "TICK", "INPUT", "ERROR"], rows, "  "),
            ]
        if v["violations"]:
            rows = [
                [
                    reason,
                    str(count),
                    str(v["violation_ticks"][reason]["first_tick"]),
                    str(v["violation_ticks"][reason]["last_tick"]),
                ]
                for reason, count in v["violations"].items()
            ]
            lines += ["", f"{vm} violations", *table(["REASON", "COUNT", "FIRST TICK", "LAST TICK"], rows, "  ")]
        lines += _transactions(f"{vm} balloon transactions", v["balloon_transactions"])
        lines += _transactions(f"{vm} unballoon transactions", v["unballoon_transactions"])
        lines += behaviour_text(vm, v["behaviour"])
    if any(t["instant"] for v in vms.values() for t in v["balloon_transactions"] + v["unballoon_transactions"]):
        lines += [
            "",
            f"(instant: started and ended within one tick; the rate assumes the whole tick "
            f"({config['tick_seconds']:g} s), so it is a lower bound)",
        ]
    return "\n".join(lines)


def _ranges_short(ranges: list[list[int]], shown: int = 4) -> str:
    text = " ".join(f"[{a}, {n}]" for a, n in ranges[:shown])
    return text + (f" +{len(ranges) - shown} more" if len(ranges) > shown else "") if text else "-"


def _secs(value: float) -> str:
    return f"{value:g}"


def behaviour_text(vm: str, b: dict[str, Any]) -> list[str]:
    """The guest-behaviour part of one VM: violations in detail, latencies, throughput, cadence."""
    lines: list[str] = []
    if b["violations"]:
        rows = [
            [
                reason,
                f"{d['count']:,}",
                f"{d['first']['tick']} (seq {d['first']['seq']}, pos {d['first']['inbox_pos']})",
                f"{d['last']['tick']} (seq {d['last']['seq']}, pos {d['last']['inbox_pos']})",
                f"{d['pages']:,}",
                _ranges_short(d["ranges"]),
            ]
            for reason, d in b["violations"].items()
        ]
        headers = ["REASON", "COUNT", "FIRST TICK", "LAST TICK", "PAGES", "RANGES [start, count]"]
        lines += ["", f"{vm} violations in detail", *table(headers, rows, "  ")]
    lat = b["latencies"]
    if lat:
        rows = []
        for kind, d in lat.items():
            parts = (
                [("first answer", d["first_answer"]), ("completion", d["completion"])]
                if "completion" in d
                else [("", d)]
            )
            for label, summary in parts:
                if not summary.get("count"):
                    continue
                t, sec = summary["ticks"], summary["seconds"]
                rows.append(
                    [
                        f"{kind} {label}".strip(),
                        str(summary["count"]),
                        f"{t['min']}/{t['median']}/{t['p95']}/{t['max']}",
                        f"{_secs(sec['min'])}/{_secs(sec['median'])}/{_secs(sec['p95'])}/{_secs(sec['max'])}",
                    ]
                )
        if rows:
            headers = ["LATENCY", "COUNT", "TICKS min/med/p95/max", "SECONDS min/med/p95/max"]
            lines += ["", f"{vm} response latencies", *table(headers, rows, "  ")]
    if b["throughput"]:
        rows = [
            [
                kind,
                f"{d['pages']:,}",
                size(d["bytes"]),
                _secs(d["seconds"]),
                "-" if d["gb_per_min"] is None else f"{d['gb_per_min']:.3g}",
            ]
            for kind, d in b["throughput"].items()
        ]
        lines += ["", f"{vm} throughput", *table(["KIND", "PAGES", "SIZE", "SECONDS", "GB/MIN"], rows, "  ")]
    st = b["status_reports"]
    interval = st["interval"]
    cadence = "no interval"
    if interval.get("count"):
        t = interval["ticks"]
        cadence = f"interval ticks min/med/max {t['min']}/{t['median']}/{t['max']}"
    lines += [
        "",
        f"{vm} status reports: {st['count']:,}, {cadence}, gaps > {st['gap_ticks']} ticks: {st['gaps']}, "
        f"most in one tick: {st['max_in_one_tick']}",
    ]
    for gap in st["gaps_listed"][:10]:
        lines.append(f"  gap from tick {gap['from_tick']} to {gap['to_tick']} ({_secs(gap['seconds'])} s)")
    if b["protocol"]:
        lines += ["", f"{vm} protocol over time"]
        for entry in b["protocol"]:
            extra = ""
            if "version" in entry:
                extra = f" {entry['version']}"
            elif "capabilities" in entry:
                extra = " " + " ".join(f"{k}={v}" for k, v in entry["capabilities"].items())
            elif "reason" in entry:
                extra = f" ({entry['reason']})"
            lines.append(f"  tick {entry['tick']:>6}  {entry['event']}{extra}")
    return lines


def _ranges(label: str, ranges: list[list[int]]) -> str:
    shown = " ".join(f"[{s}, {c}]" for s, c in ranges[:_RANGES_SHOWN])
    more = f" ... {len(ranges) - _RANGES_SHOWN} more (see --json)" if len(ranges) > _RANGES_SHOWN else ""
    return f"{label} ({len(ranges)}): {shown or '-'}{more}"


def point_text(point: PointInTime) -> str:
    doc = point.to_dict()
    snap = doc["state"]
    acc = doc["accounting"]
    where = f"inbox position {doc['until_pos']}" + ("" if doc["tick"] is None else f" (tick {doc['tick']})")
    if doc["requested_tick"] is not None:
        where += f", the last record at or before tick {doc['requested_tick']}"
    how = (
        f"folding {doc['events']} recorded events (last seq {doc['last_seq']})"
        if doc["source"] == "events"
        else f"re-deciding the inbox ({doc['events']} events decided)"
    )
    lines = [
        f"{doc['vm']} after {where}, by {how}",
        f"protocol {doc['protocol_state']}  version {doc['protocol_version'] or '-'}  host trans_id {snap['trans_id']}",
        "",
    ]
    rows = [
        [name, _num(acc[f"{name}_pages"]), _num(acc[f"{name}_bytes"]), size(acc[f"{name}_bytes"])]
        for name in ("boot", "hot_added", "ballooned", "current", "target")
    ]
    lines += table(["ACCOUNTING", "PAGES", "BYTES", "SIZE"], rows)
    txn = snap["txn"]
    if txn is None:
        lines += ["", "transaction in flight: none"]
    else:
        lines += [
            "",
            f"transaction in flight: {txn['kind']} trans_id {txn['trans_id']}, "
            f"{txn['received_pages']:,} of {txn['requested_pages']:,} pages answered, "
            f"started tick {txn['started_tick']}, last activity tick {txn['last_activity_tick']}",
        ]
    lines += [_ranges("ballooned ranges", snap["ballooned"]), _ranges("owned ranges", snap["owned"])]
    vdimms = snap["layout"]["vdimms"]
    if vdimms:
        keys = [
            "backend_id",
            "start_page",
            "page_count",
            "usable_start",
            "usable_count",
            "added_pages",
            "removed_pages",
            "unusable_tail",
        ]
        vrows = [[str(v.get(k, "-")) for k in keys] for v in vdimms]
        lines += ["", "vDIMMs", *table([k.upper() for k in keys], vrows, "  ")]
    else:
        lines.append("vDIMMs: none")
    counters = [
        "status_reports_total",
        "balloon_out_pages_total",
        "balloon_in_pages_total",
        "hot_added_pages_total",
        "hot_removed_pages_total",
        "commands_rejected_total",
        "inputs_rejected_total",
    ]
    values = snap["counters"]
    rows = [[c, _num(values[c])] for c in counters] + [["consecutive_timeouts", _num(snap["consecutive_timeouts"])]]
    lines += ["", "counters", *table(["NAME", "VALUE"], rows, "  ")]
    if values["violations"]:
        vrows = [[r, str(n)] for r, n in values["violations"].items()]
        lines += ["", "violations", *table(["REASON", "COUNT"], vrows, "  ")]
    return "\n".join(lines)
