"""The Prometheus text format (0.0.4) for hvdm's per-VM series, written directly from a snapshot.

prometheus-client formats every sample through a generic path (label-name validation, escaping,
sorting, float formatting: about 14 us per sample on a small VM, so ~2 s for 10,000 VMs). hvdm's
series all have the same shape, so this module formats them with one f-string per line, escapes
each VM id once, and prints integer byte counts as integers. The result is the same set of
samples ``generate_latest`` produces from :meth:`HvdmCollector.collect` (tests compare the two
parsed), in a fraction of the time; ``bench/metrics_scrape.py`` has the numbers.

:func:`render` is one scrape: these families, then anything else in an extra registry (the latency
histogram, build info, the process and gateway collectors) through prometheus-client's own
``generate_latest``. ``server.py`` serves it.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from ..units import PAGE_SIZE
from .collector import (
    METRICS,
    PROTOCOL_STATES,
    HvdmCollector,
    MetricsLabels,
    Snapshot,
    demand_pages,
    info_labels,
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: gzip level for scrapes that accept it: level 1 is ~10x faster than 9 and only ~15% larger.
GZIP_LEVEL = 1


def escape_label_value(value: str) -> str:
    r"""Escape a label value for the text format.

    >>> escape_label_value('a"b\\c\nd')
    'a\\"b\\\\c\\nd'

    Runtime complexity: O(len(value))
    """
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def _header(name: str) -> str:
    doc, typ = METRICS[name]
    exported = f"{name}_total" if typ == "counter" else name
    doc = doc.replace("\\", "\\\\").replace("\n", "\\n")
    return f"# HELP {exported} {doc}\n# TYPE {exported} {typ}\n"


def _label_text(labels: dict[str, str]) -> str:
    return ",".join(f'{k}="{escape_label_value(v)}"' for k, v in labels.items())


def render_snapshot(snap: Snapshot, labels: MetricsLabels | None = None) -> str:
    """Every hvdm family of ``snap`` in the text format, families in :data:`METRICS` order."""
    labels = labels if labels is not None else MetricsLabels()
    page = PAGE_SIZE
    out: dict[str, list[str]] = {name: [] for name in METRICS}
    boot = out["hvdm_vm_boot_bytes"]
    maxmem = out["hvdm_vm_maxmem_bytes"]
    current = out["hvdm_vm_current_bytes"]
    target = out["hvdm_vm_target_bytes"]
    ballooned = out["hvdm_vm_ballooned_bytes"]
    hot_added = out["hvdm_vm_hot_added_bytes"]
    available = out["hvdm_vm_guest_available_bytes"]
    committed = out["hvdm_vm_guest_committed_bytes"]
    demand_ = out["hvdm_vm_guest_demand_bytes"]
    pressure = out["hvdm_vm_pressure_ratio"]
    connected = out["hvdm_vm_connected"]
    status_time_ = out["hvdm_vm_last_status_report_timestamp_seconds"]
    state = out["hvdm_vm_protocol_state"]
    reports = out["hvdm_vm_status_reports"]
    traffic = out["hvdm_vm_balloon_bytes"]
    violations = out["hvdm_vm_guest_violations"]
    info = out["hvdm_vm_info"]
    rejected = out["hvdm_vm_inputs_rejected"]
    attention = out["hvdm_vm_needs_attention"]
    vm_labels = labels.vm
    states = PROTOCOL_STATES
    for (
        vm,
        boot_p,
        maxmem_p,
        current_p,
        target_p,
        ballooned_p,
        hot_added_p,
        avail_p,
        committed_p,
        status_time,
        proto,
        n_reports,
        out_p,
        in_p,
        viol,
        version,
        caps,
        n_rejected,
        needs_attention,
        uuid,
    ) in snap.rows:
        base = _label_text(vm_labels(vm, uuid))
        lv = f"{{{base}}} "
        boot.append(f"hvdm_vm_boot_bytes{lv}{boot_p * page}\n")
        if maxmem_p:
            maxmem.append(f"hvdm_vm_maxmem_bytes{lv}{maxmem_p * page}\n")
        current.append(f"hvdm_vm_current_bytes{lv}{current_p * page}\n")
        if target_p is not None:
            target.append(f"hvdm_vm_target_bytes{lv}{target_p * page}\n")
        ballooned.append(f"hvdm_vm_ballooned_bytes{lv}{ballooned_p * page}\n")
        hot_added.append(f"hvdm_vm_hot_added_bytes{lv}{hot_added_p * page}\n")
        if avail_p is not None:
            demand = demand_pages(committed_p, ballooned_p)
            available.append(f"hvdm_vm_guest_available_bytes{lv}{avail_p * page}\n")
            committed.append(f"hvdm_vm_guest_committed_bytes{lv}{committed_p * page}\n")
            demand_.append(f"hvdm_vm_guest_demand_bytes{lv}{demand * page}\n")
            if current_p > 0:
                pressure.append(f"hvdm_vm_pressure_ratio{lv}{demand / current_p!r}\n")
        connected.append(f"hvdm_vm_connected{lv}{0 if proto == 'CLOSED' else 1}\n")
        if status_time is not None:
            status_time_.append(f"hvdm_vm_last_status_report_timestamp_seconds{lv}{float(status_time)!r}\n")
        for st in states:
            state.append(f'hvdm_vm_protocol_state{{{base},state="{st}"}} {1 if st == proto else 0}\n')
        reports.append(f"hvdm_vm_status_reports_total{lv}{n_reports}\n")
        traffic.append(f'hvdm_vm_balloon_bytes_total{{{base},direction="out"}} {out_p * page}\n')
        traffic.append(f'hvdm_vm_balloon_bytes_total{{{base},direction="in"}} {in_p * page}\n')
        for reason, count in viol:
            violations.append(
                f'hvdm_vm_guest_violations_total{{{base},reason="{escape_label_value(reason)}"}} {count}\n'
            )
        rejected.append(f"hvdm_vm_inputs_rejected_total{lv}{n_rejected}\n")
        attention.append(f"hvdm_vm_needs_attention{lv}{1 if needs_attention else 0}\n")
        info.append(f"hvdm_vm_info{{{base},{_label_text(info_labels(version, caps))}}} 1\n")
    common = _label_text(labels.common())
    lc = f"{{{common}}} " if common else " "
    out["hvdm_engine_inbox_records_processed"].append(f"hvdm_engine_inbox_records_processed_total{lc}{snap.consumed}\n")
    out["hvdm_engine_consumer_lag_records"].append(f"hvdm_engine_consumer_lag_records{lc}{snap.lag}\n")
    out["hvdm_engine_snapshot_age_events"].append(f"hvdm_engine_snapshot_age_events{lc}{snap.snapshot_age}\n")
    out["hvdm_engine_vms"].append(f"hvdm_engine_vms{lc}{len(snap.rows)}\n")
    parts: list[str] = []
    for name, lines in out.items():
        parts.append(_header(name))
        parts.extend(lines)
    return "".join(parts)


def render(collector: HvdmCollector, extra: CollectorRegistry | None = None) -> bytes:
    """One scrape: the collector's families, then whatever ``extra`` holds."""
    body = render_snapshot(collector.snapshot(), collector.labels).encode()
    if extra is not None:
        body += generate_latest(extra)
    return body
