"""Reading deploy/grafana/dashboards/hvdm.json: every query a panel or variable runs."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "hvdm.json"
RULES = DEPLOY / "prometheus" / "rules.yml"

#: A PromQL metric name: not preceded by a name character, a quote or a brace-label position.
_IDENT = re.compile(r"(?<![A-Za-z0-9_:\"$])[A-Za-z_:][A-Za-z0-9_:]*")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_LABEL_SET = re.compile(r"\{[^}]*\}")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


@dataclass(frozen=True)
class PanelQuery:
    panel: str
    ref: str
    expr: str
    instant: bool


def load_dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in dashboard["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def panel_queries(dashboard: dict[str, Any]) -> list[PanelQuery]:
    return [
        PanelQuery(p["title"], t["refId"], t["expr"], bool(t.get("instant")) and not t.get("range", True))
        for p in panels(dashboard)
        if p["type"] != "row"
        for t in p["targets"]
    ]


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Replace Grafana variables ($vm, ${vm}, $__rate_interval) the way Grafana would."""
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", variables[name]).replace("$" + name, variables[name])
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


def metric_names_in(expr: str) -> set[str]:
    """Metric names an expression reads (functions, keywords, label names and strings removed)."""
    stripped = _STRING.sub('""', expr)
    stripped = _LABEL_SET.sub("", stripped)
    stripped = _GROUPING.sub("", stripped)
    stripped = re.sub(r"\[[^\]]*\]", "", stripped)  # range selectors: [5m], [$__rate_interval]
    names = set()
    for m in _IDENT.finditer(stripped):
        name = m.group(0)
        after = stripped[m.end() :].lstrip()
        if after.startswith("("):
            continue  # a function call
        if name in {"by", "without", "on", "ignoring", "offset", "bool", "and", "or", "unless", "le"}:
            continue
        if re.fullmatch(r"\d+[smhdwy]", name) or name.startswith("__"):
            continue
        names.add(name)
    return names
