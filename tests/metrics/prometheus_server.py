"""A real Prometheus server for one test: config rendered from deploy/, loopback port, tmp TSDB.

Used through the ``prometheus`` fixture (tests/metrics/conftest.py), which stops every server it
started. The config comes from ``deploy/prometheus/prometheus.local.yml.in`` with the rules of
``deploy/prometheus/rules.yml``, so the test exercises the files we ship.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
TEMPLATE = DEPLOY / "prometheus.local.yml.in"
RULES = DEPLOY / "rules.yml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class PrometheusServer:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    config_path: Path
    _log: Any = field(repr=False, default=None)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]

    def wait_until(self, what: str, check: Any, timeout: float = 60.0) -> Any:
        """Poll ``check()`` until it returns something truthy; fail with the server log otherwise."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                last = check()
            except OSError as e:
                last = e
            else:
                if last:
                    return last
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what} (last: {last!r})\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._log is not None:
            self._log.close()


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


def render_config(target: str | Sequence[str], scrape_interval: str = "1s", rules: Path = RULES) -> str:
    """The template with ``target`` (one ``host:port`` or several) as the hvdm job's targets."""
    targets = [target] if isinstance(target, str) else list(target)
    text = Template(TEMPLATE.read_text()).safe_substitute(
        HVDM_TARGET="\n          - ".join(targets), SCRAPE_INTERVAL=scrape_interval, RULES_FILE=str(rules)
    )
    assert "${" not in text, "the template uses a variable the test does not fill in"
    return text


def start_prometheus(workdir: Path, target: str | Sequence[str]) -> PrometheusServer:
    binary = prometheus_binary()
    assert binary is not None
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(render_config(target))
    port = free_port()
    log_path = workdir / "prometheus.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = PrometheusServer(proc, port, log_path, config, log)

    def ready() -> bool:
        with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as resp:
            return bool(resp.status == 200)

    try:
        server.wait_until("Prometheus to be ready", ready, timeout=60)
    except BaseException:
        server.stop()
        raise
    return server
