"""deploy/: Prometheus config and rules (promtool), the Grafana dashboard, compose and Dockerfile.

Nothing here starts a container; the files are parsed and cross-checked: every metric a
dashboard panel or a rule reads is one the exporter produces, every service of the compose file
runs the command and exposes the port the Prometheus config scrapes.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.metrics import DEFAULT_METRICS_PORT, metric_names
from tests.deploy.dashboard import (
    DEPLOY,
    RULES,
    load_dashboard,
    metric_names_in,
    panel_queries,
    panels,
    substitute,
)


def load_yaml(path: Path) -> Any:
    """A deploy file, read with PyYAML's safe loader (plain data, no tags)."""
    return yaml.safe_load(path.read_text())


PROMETHEUS_DIR = DEPLOY / "prometheus"
REPO = DEPLOY.parent
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="needs promtool (Debian package 'prometheus')"
)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool_bin = shutil.which("promtool")
    assert promtool_bin is not None
    return subprocess.run([promtool_bin, *args], capture_output=True, text=True, timeout=120, check=False)


def rules() -> list[dict[str, Any]]:
    data = load_yaml(RULES)
    return [r for g in data["groups"] for r in g["rules"]]


def recorded_names() -> set[str]:
    return {r["record"] for r in rules() if "record" in r}


# ------------------------------------------------------------------------------ Prometheus
@needs_promtool
def test_promtool_checks_the_config_and_the_rules() -> None:
    result = promtool("check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 15 rules found" in result.stdout


@needs_promtool
def test_alerts_fire_when_they_should(tmp_path: Path) -> None:
    """rules_test.yml: pressure, stale status reports, a stuck transaction, rising violations,
    engine lag, stalls, a scrape target down."""
    result = promtool("test", "rules", str(PROMETHEUS_DIR / "rules_test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = {r["alert"] for r in rules() if "alert" in r}
    tested = set(re.findall(r"alertname: (\w+)", (PROMETHEUS_DIR / "rules_test.yml").read_text()))
    assert alerts == tested, "every alert has a unit test"


@needs_promtool
def test_the_local_config_template_renders_to_a_valid_config(tmp_path: Path) -> None:
    from tests.metrics.prometheus_server import render_config

    config = tmp_path / "prometheus.yml"
    config.write_text(render_config("127.0.0.1:9722", "15s"))
    result = promtool("check", "config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_read_only_exported_or_recorded_metrics() -> None:
    exported = set(metric_names()) | {"up"}
    recorded = recorded_names()
    assert recorded and all(":" in name for name in recorded)
    for rule in rules():
        used = metric_names_in(rule["expr"])
        assert used, rule
        assert used <= exported | recorded, f"{rule}: unknown {used - exported - recorded}"
    alerts = [r for r in rules() if "alert" in r]
    assert {a["alert"] for a in alerts} >= {
        "HvdmGuestMemoryPressureHigh",
        "HvdmGuestStatusReportsStale",
        "HvdmVmStuckInTransaction",
        "HvdmGuestViolationsRising",
        "HvdmEngineLagHigh",
    }
    for a in alerts:
        assert a["labels"]["severity"] in ("warning", "critical")
        assert a["annotations"]["summary"] and a["annotations"]["description"]


def test_prometheus_scrapes_the_engines_and_the_gateway_of_the_compose_file() -> None:
    config = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    assert config["rule_files"] == ["rules.yml"]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "hvdm"  # HvdmExporterDown selects up{job="hvdm"}
    by_role = {group["labels"]["role"]: group["targets"] for group in job["static_configs"]}
    compose = load_yaml(DEPLOY / "docker-compose.yml")
    for role in ("engine", "gateway"):
        services = {name: svc for name, svc in compose["services"].items() if svc.get("command", [""])[0] == role}
        assert services, role
        assert sorted(by_role[role]) == sorted(f"{name}:{DEFAULT_METRICS_PORT}" for name in services)
        for name, svc in services.items():
            command = svc["command"]
            # Served on every interface of the container, on the port Prometheus scrapes.
            assert command[command.index("--metrics-port") + 1] == str(DEFAULT_METRICS_PORT), name
            assert command[command.index("--metrics-host") + 1] == "0.0.0.0", name
            assert svc["hostname"] == name  # the host label of its series


# ------------------------------------------------------------------------------ Grafana
def test_dashboard_queries_use_only_exported_metrics() -> None:
    exported = set(metric_names())
    queries = panel_queries(load_dashboard())
    used: set[str] = set()
    for q in queries:
        names = metric_names_in(q.expr)
        assert names, q
        assert names <= exported | recorded_names(), f"{q.panel}: unknown {names - exported}"
        used |= names
    # The dashboard shows every hvdm metric: per VM, the engines', the gateway's and QMP's.
    wanted = {n for n in exported if n.startswith("hvdm_") and not n.endswith(("_sum", "_count"))}
    assert wanted <= used, f"not on the dashboard: {wanted - used}"
    # Every query can be narrowed to the hosts picked in $host.
    for q in queries:
        assert 'host=~"$host"' in q.expr, q


def test_dashboard_structure() -> None:
    d = load_dashboard()
    assert d["uid"] == "hvdm-overview"
    all_panels = panels(d)
    ids = [p["id"] for p in all_panels]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert list(variables) == ["datasource", "host", "vm"]
    assert variables["host"]["query"]["query"] == "label_values(hvdm_build_info, host)"
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    vm = variables["vm"]
    assert vm["type"] == "query" and vm["multi"] and vm["includeAll"] and vm["allValue"] == ".*"
    titles = [p["title"] for p in all_panels]
    for p in all_panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)) and p["targets"]
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"]
            # Per-VM panels follow the $vm selection (a regex, so "All" works).
            if p["title"].startswith("$vm"):
                assert 'vm=~"$vm"' in t["expr"]
            substitute(t["expr"], {"host": "h", "vm": "x", "__rate_interval": "1m"})
    text = " ".join(titles).lower()
    for topic in (
        "current vs target vs boot",
        "demand, committed, available",
        "pressure",
        "ballooned and hot-added",
        "violations",
        "throughput",
        "lag",
    ):
        assert text.count(topic) >= 1, topic
    # Fleet and per-VM sections.
    rows = [p["title"] for p in all_panels if p["type"] == "row"]
    assert "Fleet" in rows and any("$vm" in r for r in rows)


def test_grafana_provisioning_matches_the_dashboard_and_compose() -> None:
    ds = load_yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    dash = load_dashboard()
    default = next(v for v in dash["templating"]["list"] if v["name"] == "datasource")["current"]["value"]
    assert source["uid"] == default
    providers = load_yaml(DEPLOY / "grafana/provisioning/dashboards/hvdm.yml")["providers"]
    path = providers[0]["options"]["path"]
    grafana = load_yaml(DEPLOY / "docker-compose.yml")["services"]["grafana"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in grafana["volumes"] if v.startswith("./"))
    assert mounts["./grafana/dashboards"] == path
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"


# ------------------------------------------------------------------------------ compose, Docker
def test_compose_file() -> None:
    compose = load_yaml(DEPLOY / "docker-compose.yml")
    services = compose["services"]
    assert set(services) == {"kafka", "gateway", "engine1", "engine2", "prometheus", "grafana"}

    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}  # KRaft
    assert env["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092"
    assert not any("ZOOKEEPER" in k for k in env)
    assert all(isinstance(v, str) for v in env.values())

    broker = ["--broker", "kafka://kafka:9092"]
    gateway = services["gateway"]
    assert gateway["command"][:3] == ["gateway", *broker]
    assert gateway["ports"][0] == "7070:7070" and "0.0.0.0:7070" in gateway["command"]
    host_ports = []
    for name in ("gateway", "engine1", "engine2"):
        svc = services[name]
        assert svc["image"] == "hvdm:latest"
        assert svc["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
        assert (DEPLOY / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
        assert svc["depends_on"]["kafka"]["condition"] == "service_healthy"
    for name in ("engine1", "engine2", "gateway"):
        cmd = services[name]["command"]
        assert cmd[:3] == [name.rstrip("12"), *broker]
        assert cmd[cmd.index("--metrics-port") + 1] == str(DEFAULT_METRICS_PORT)
        assert cmd[cmd.index("--metrics-host") + 1] == "0.0.0.0"  # reachable from the Prometheus container
        port = services[name]["ports"][-1]
        host, container = port.split(":")
        assert container == str(DEFAULT_METRICS_PORT)
        host_ports.append(host)
    assert len(set(host_ports)) == 3

    prom = services["prometheus"]
    assert prom["image"].startswith("prom/prometheus:")
    assert "./prometheus:/etc/prometheus:ro" in prom["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    assert prom["ports"] == ["9090:9090"]
    assert services["grafana"]["image"].startswith("grafana/grafana:")
    assert services["grafana"]["ports"] == ["3000:3000"]
    for svc in services.values():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), volume
            else:
                assert source in compose["volumes"], volume


def test_dockerfile() -> None:
    lines = [
        line.strip()
        for line in (DEPLOY / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    text = "\n".join(lines)
    assert lines[0] == "FROM python:3.11-slim"
    assert "COPY pyproject.toml README.md constraints.txt ./" in lines
    assert "COPY services ./services" in lines and "COPY bench ./bench" not in lines  # bench is not installed
    # The image installs exactly the versions CI tests.
    assert re.search(r"^RUN pip install -c constraints\.txt \.( |$)", text, re.M)
    assert re.search(r"^USER hvdm$", text, re.M)
    assert f"EXPOSE {DEFAULT_METRICS_PORT} 7070" in lines
    assert 'ENTRYPOINT ["hvdm"]' in lines
    for copied in ("pyproject.toml", "services", "constraints.txt"):
        assert (REPO / copied).exists()
