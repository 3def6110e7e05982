"""``--config FILE`` and ``hvdm config show``, through the real CLI in subprocesses.

What must hold: the file sets every flag and the settings no flag sets, a flag beats the command's
section which beats a shared section which beats the default; a bad file is one line and exit 2
before anything starts; the engine config from the file is what a new log records in its meta, and
a log keeps the config its events were decided with.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import cast

import pytest

from services.cli.config_file import SHARED_KEYS, SHARED_SECTIONS, LoadedConfig, load_config, merge_broker
from services.cli.gateway_args import gateway_limits
from services.cli.main import build_parser
from services.kafka_engine.settings import KafkaSettings, SettingsError

ROOT = Path(__file__).resolve().parents[2]


def hvdm(*args: str, timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def write(tmp_path: Path, text: str, name: str = "hvdm.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


GOOD = """
[log]
level = "info"
[metrics]
port = 9722
host = "0.0.0.0"
vm_label = "vm,domain"
[auth]
allow_uid = [0, 1000]
[run]
guests = 3
guest-memory = "2G"
metrics_port = 9800
qmp_dir = "/run/hvdm/qmp"
[engine]
batch = 64
[engine_config]
post_init_wait_ticks = 5
retry_backoff_ticks = 10
[gateway_limits]
hello_timeout_s = 2.5
max_new_vms_per_window = 50
[kafka]
partitions = 16
session_timeout = 10.0
"""


def show(*args: str, env: dict[str, str] | None = None) -> dict[str, object]:
    out = hvdm("config", "show", "--format", "json", *args, env=env)
    assert out.returncode == 0, out.stderr
    data: dict[str, object] = json.loads(out.stdout)
    return data


def test_show_merges_defaults_file_sections_and_flags(tmp_path: Path) -> None:
    cfg = write(tmp_path, GOOD)
    data = show("--config", cfg, "run", "--guests", "7")
    run = data["run"]
    assert isinstance(run, dict)
    assert run["guests"] == 7  # the flag beats the [run] section
    assert run["guest_memory"] == 2 << 30  # [run], through the flag's size type
    assert run["metrics_port"] == 9800  # [run] beats [metrics]
    assert run["metrics_host"] == "0.0.0.0"  # [metrics]
    assert run["metrics_vm_label"] == ["vm", "domain"]
    assert run["allow_uid"] == [0, 1000]  # [auth]
    assert run["log_level"] == "info"  # [log]
    assert run["max_new_vms_per_minute"] == 50  # a [gateway_limits] field that has a flag
    assert run["seed"] == 1  # the default
    assert run["qmp_dir"] == "/run/hvdm/qmp"
    engine_config = data["engine_config"]
    assert isinstance(engine_config, dict)
    assert engine_config["post_init_wait_ticks"] == 5 and engine_config["balloon_timeout_ticks"] == 60
    limits = data["gateway_limits"]
    assert isinstance(limits, dict) and limits["hello_timeout_s"] == 2.5
    # Every section at once, in TOML that reads back with tomllib.
    import tomllib

    text = hvdm("config", "show", "--config", cfg)
    assert text.returncode == 0, text.stderr
    parsed = tomllib.loads(text.stdout)
    assert parsed["engine"]["batch"] == 64
    assert parsed["ctl"]["qmp_dir"] == "/run/hvdm/qmp"  # ctl looks where run serves
    assert parsed["kafka"]["partitions"] == 16


def test_broker_options_layer_url_over_environment_over_file(tmp_path: Path) -> None:
    cfg = write(tmp_path, GOOD)
    data = show("--config", cfg, "engine", "--broker", "kafka://h:1?prefix=x")
    engine = data["engine"]
    assert isinstance(engine, dict)
    broker = str(engine["broker"])
    assert broker.startswith("kafka://h:1?") and "prefix=x" in broker and "partitions=16" in broker
    data = show("--config", cfg, "engine", "--broker", "kafka://h:1", env={"HVDM_KAFKA_PARTITIONS": "3"})
    engine = data["engine"]
    assert isinstance(engine, dict) and "partitions" not in str(engine["broker"])  # the environment's 3 applies
    loaded = load_config(cfg)
    assert merge_broker("kafka://h:1?partitions=4", loaded, env={}) == "kafka://h:1?partitions=4&session_timeout=10.0"
    assert merge_broker(None, loaded) is None  # [kafka] alone never switches to Kafka


def test_kafka_compression_from_the_file_the_url_and_the_flag(tmp_path: Path) -> None:
    cfg = write(tmp_path, GOOD + 'compression = "gzip"\n')
    loaded = load_config(cfg)
    assert "compression=gzip" in str(merge_broker("kafka://h:1", loaded, env={}))
    data = show("--config", cfg, "engine", "--broker", "kafka://h:1?compression=none")
    engine = data["engine"]
    assert isinstance(engine, dict) and "compression=none" in str(engine["broker"])  # the URL beats the file
    data = show("--config", cfg, "engine", "--broker", "kafka://h:1?compression=none", "--kafka-compression", "zstd")
    engine = data["engine"]
    assert isinstance(engine, dict)
    settings = KafkaSettings.from_url(str(engine["broker"]))
    assert settings.compression == "zstd" and settings.compression_type == "zstd"  # the flag beats both
    assert KafkaSettings.from_url("kafka://h:1?compression=none").compression_type is None
    assert KafkaSettings().compression == "zstd"
    with pytest.raises(SettingsError, match="compression must be one of zstd, gzip, none"):
        KafkaSettings.from_url("kafka://h:1?compression=snappy")


def test_gateway_limits_without_flags_reach_the_gateway(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    args = build_parser("gateway", config).parse_args(["gateway", "--max-new-vms-per-peer", "9"])
    limits = gateway_limits(args)
    assert limits.hello_timeout_s == 2.5  # no flag sets it
    assert limits.max_new_vms_per_window == 50  # file, through the flag's default
    assert limits.max_new_vms_per_peer == 9  # the flag
    assert gateway_limits(build_parser("gateway").parse_args(["gateway"])).hello_timeout_s == 5.0


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[run]\nguests = -1\n", "[run] guests: must be an integer in [0, 10000]"),
        ('[run]\nguests = "2"\n', "[run] guests: must be an integer"),
        ("[run]\nbatch = 5\n", "[run] batch: not a flag of hvdm run"),
        ("[nope]\n", "unknown section [nope]"),
        ("[metrics]\nprot = 1\n", "[metrics] prot: unknown key"),
        ("[engine_config]\nballoon_timeout_ticks = 0\n", "[engine_config] balloon_timeout_ticks: must be an integer"),
        ("[engine_config]\ntick_seconds = nan\n", "[engine_config] tick_seconds:"),
        ("[engine_config]\nuse_hot_remove = 1\n", "use_hot_remove: must be true or false"),
        ("[engine_config]\nunballoon_max_ranges = 511\n", "unballoon_max_ranges: must be an integer in [1, 510]"),
        ("[engine_config]\nretry_backoff_ticks = 50\nretry_backoff_max_ticks = 10\n", "below retry_backoff_ticks"),
        ("[gateway_limits]\nmax_payload = 1000000\n", "[gateway_limits] max_payload"),
        ("[gateway_limits]\nstatus_interval_s = 1.0\n", "status_interval_s: unknown key"),
        ('[kafka]\nticks = "sometimes"\n', "[kafka] ticks: must be one of worker, external"),
        ('[kafka]\nprefix = "a b"\n', "[kafka] prefix may contain only"),
        ('[kafka]\ncompression = "lz4"\n', "[kafka] compression: must be one of zstd, gzip, none"),
        ("[kafka]\nlinger = 61\n", "[kafka] linger: must be"),
        ('[log]\nlevel = "loud"\n', "[log] level: must be one of"),
        ("[auth]\nallow_uid = 5\n", "[auth] allow_uid: must be a list"),
        ('[run]\ntcp = "h:99999"\n', "[run] tcp: must be HOST:PORT"),
        ("run = 3\n", "[run] must be a table"),
        ("[run\n", "not valid TOML"),
    ],
)
def test_a_bad_file_is_one_line_and_exit_2(tmp_path: Path, text: str, needle: str) -> None:
    cfg = write(tmp_path, text)
    out = hvdm("config", "show", "--config", cfg)
    lines = out.stderr.splitlines()
    assert out.returncode == 2, out
    assert len(lines) == 1 and lines[0].startswith("hvdm: error: config: "), lines
    assert needle in lines[0] and cfg in lines[0]
    assert out.stdout == ""


def test_a_missing_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    out = hvdm("engine", "--config", str(tmp_path / "nope.toml"), "--exit-when-idle")
    assert out.returncode == 2
    assert out.stderr.startswith("hvdm: error: engine: cannot read ") and len(out.stderr.splitlines()) == 1


def stored_engine_config(db: Path) -> dict[str, object]:
    with sqlite3.connect(db) as conn:
        (text,) = conn.execute("SELECT value FROM meta WHERE key = 'engine_config'").fetchone()
    data: dict[str, object] = json.loads(text)
    return data


def test_engine_config_from_the_file_goes_into_a_new_logs_meta_and_a_log_keeps_its_own(tmp_path: Path) -> None:
    db = tmp_path / "hvdm.db"
    first = write(
        tmp_path,
        "[engine_config]\npost_init_wait_ticks = 7\nhot_add_timeout_ticks = 99\nretention_ticks = 3600\n",
        "a.toml",
    )
    out = hvdm("engine", "--config", first, "--db", str(db), "--exit-when-idle")
    assert out.returncode == 0, out.stderr
    meta = stored_engine_config(db)
    assert meta["post_init_wait_ticks"] == 7 and meta["hot_add_timeout_ticks"] == 99
    assert meta["retention_ticks"] == 3600
    assert meta["balloon_timeout_ticks"] == 60
    second = write(tmp_path, '[log]\nformat = "json"\n[engine_config]\npost_init_wait_ticks = 1\n', "b.toml")
    out = hvdm("engine", "--config", second, "--db", str(db), "--exit-when-idle")
    assert out.returncode == 0, out.stderr
    assert stored_engine_config(db)["post_init_wait_ticks"] == 7  # replay must use what the events used
    records = [json.loads(line) for line in out.stderr.splitlines() if line.startswith("{")]
    assert any(r["level"] == "warning" and "engine_config_kept" in r["message"] for r in records), out.stderr


def test_shared_section_keys_are_the_flags_of_the_services() -> None:
    """``SHARED_KEYS`` names exactly the flags the services have (a new --metrics-* flag needs a key)."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    choices = cast(dict[str, argparse.ArgumentParser], sub.choices)
    for section, keys in SHARED_KEYS.items():
        prefix = SHARED_SECTIONS[section]
        dests = {a.dest for name in ("run", "engine", "gateway") for a in choices[name]._actions}
        wanted = {d.removeprefix(prefix) for d in dests if prefix and d.startswith(prefix)}
        assert set(keys) >= wanted, (section, wanted - set(keys))
        assert all(prefix + k in dests for k in keys), section
    assert LoadedConfig().engine_config() is None
