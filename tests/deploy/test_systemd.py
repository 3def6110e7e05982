"""deploy/systemd: the units pass ``systemd-analyze verify`` (and its offline security review), carry
the hardening the README promises, and start hvdm with a config file hvdm itself accepts."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "deploy" / "systemd"
UNITS = {"hvdm.service": ("run", "hvdm.toml"), "hvdm-gateway.service": ("gateway", "gateway.toml"),
         "hvdm-engine.service": ("engine", "engine.toml")}  # fmt: skip
needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")


def unit(name: str) -> dict[str, dict[str, list[str]]]:
    """The unit's keys, each with every value it is given (systemd keys may repeat)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = ""
    for raw in (SYSTEMD / name).read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out.setdefault(section, {})
            continue
        key, _, value = line.partition("=")
        out[section].setdefault(key, []).append(value)
    return out


def installed_copy(tmp_path: Path, name: str) -> Path:
    """The unit with ExecStart pointing at this checkout's hvdm (verify checks the binary exists)."""
    hvdm = Path(sys.executable).with_name("hvdm")
    assert hvdm.exists(), hvdm
    path = tmp_path / name
    path.write_text((SYSTEMD / name).read_text().replace("/usr/local/bin/hvdm", str(hvdm)))
    return path


@pytest.mark.parametrize("name", sorted(UNITS))
def test_unit_has_the_hardening_and_stop_behaviour(name: str) -> None:
    service = unit(name)["Service"]
    one = {k: v[-1] for k, v in service.items()}
    # hvdm speaks sd_notify (tests/deploy/test_sd_notify.py): READY=1, STOPPING=1, watchdog pings.
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert 10 <= int(one["WatchdogSec"]) <= 120 and int(one["TimeoutStartSec"]) >= 90
    assert one["KillSignal"] == "SIGTERM" and 0 < int(one["TimeoutStopSec"]) <= 90
    assert one["NoNewPrivileges"] == "yes" and one["ProtectSystem"] == "strict" and one["PrivateTmp"] == "yes"
    assert set(one["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert one["User"] == "hvdm" and one["CapabilityBoundingSet"] == ""
    writable = one["ReadWritePaths"].split()
    assert writable == [f"/var/lib/{one['StateDirectory']}", f"/run/{one['RuntimeDirectory']}"]
    assert one["WorkingDirectory"] in writable
    command, config = UNITS[name]
    assert one["ExecStart"].split()[1:] == [command, "--config", f"/etc/hvdm/{config}"]
    assert unit(name)["Install"]["WantedBy"] == ["multi-user.target"]
    configparser.ConfigParser(strict=False, interpolation=None).read(SYSTEMD / name)  # plain INI as well


@pytest.mark.parametrize("name", sorted(UNITS))
def test_the_example_config_is_valid_for_the_units_command(name: str) -> None:
    command, config = UNITS[name]
    out = subprocess.run(
        [sys.executable, "-m", "services", "config", "show", "--config", str(SYSTEMD / config), command],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert 'log_format = "json"' in out.stdout


def test_embedded_unit_and_config_agree_on_the_runtime_directory() -> None:
    import tomllib

    config = tomllib.loads((SYSTEMD / "hvdm.toml").read_text())
    service = unit("hvdm.service")["Service"]
    runtime = f"/run/{service['RuntimeDirectory'][0]}/"
    assert config["run"]["socket"].startswith(runtime) and config["run"]["qmp_dir"].startswith(runtime)
    assert service["Environment"] == [f"HVDM_QMP_DIR={config['run']['qmp_dir']}"]  # hvdm ctl finds the sockets
    assert config["run"]["db"].startswith(f"/var/lib/{service['StateDirectory'][0]}/")


@needs_systemd
@pytest.mark.parametrize("name", sorted(UNITS))
def test_systemd_analyze_verify_is_clean(tmp_path: Path, name: str) -> None:
    path = installed_copy(tmp_path, name)
    out = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout == "" and out.stderr == "", out


@needs_systemd
@pytest.mark.parametrize("name", sorted(UNITS))
def test_offline_security_review_rates_the_units_ok(tmp_path: Path, name: str) -> None:
    path = installed_copy(tmp_path, name)
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if "--offline" in out.stderr:
        pytest.skip("systemd-analyze without --offline (systemd < 250)")
    level = float(out.stdout.rsplit("Overall exposure level for", 1)[1].split(":")[1].split()[0])
    assert level <= 2.0, out.stdout[-400:]
