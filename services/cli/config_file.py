"""``--config FILE``: one TOML file for what every hvdm process is started with; flags override it.

Why a file as well as flags: a host runs ``hvdm run`` (or ``hvdm gateway`` and ``hvdm engine``) from
a service manager, and some settings have no flag at all (the engine's timeouts and back-off, the
gateway's per-connection limits, the Kafka consumer timing). The file holds them all, in sections::

    [log]             level, format                    (--log-level, --log-format of every service)
    [metrics]         port, host, host_label, ...      (the --metrics-* flags)
    [auth]            allow_uid, tls_cert, ...         (the gateway's authentication flags)
    [run] [engine] [gateway] [ctl]                     (any flag of that command, by its long name)
    [engine_config]   post_init_wait_ticks, ...        (dm_engine.config.EngineConfig; no flags)
    [gateway_limits]  hello_timeout_s, ...             (vmbus_gateway.server.GatewayLimits)
    [kafka]           partitions, session_timeout, ... (kafka_engine.settings.KafkaSettings options)

Keys are the flag's long name with ``-`` or ``_`` (``metrics-port`` = ``metrics_port``). Precedence:
a flag on the command line, then the command's own section, then the shared section, then the
built-in default. Values go through the flag's own argument type (``arg_types``), so the file and
the command line accept exactly the same values; an unknown section or key, a value of the wrong TOML
type or out of range is one line ``hvdm: error: config FILE: [section] key: ...`` and exit status 2,
before anything starts.

The engine config from the file is what a new log is created with (it is stored in the log's meta,
as before); a log that already has one keeps it, because replaying the log must use the config its
events were decided with.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ..dm_engine.config import BALLOON_REQUEST_MAX_PAGES, MAX_RANGES_PER_MESSAGE, EngineConfig
from ..dm_protocol.framing import MAX_DM_PAYLOAD
from .arg_types import FloatArg, IntArg, PortArg, SizeArg

#: Commands whose flags the file may set (one section each).
COMMAND_SECTIONS = ("run", "engine", "gateway", "ctl")
#: Sections shared by every command that has the flags: section -> flag-dest prefix.
SHARED_SECTIONS = {"log": "log_", "metrics": "metrics_", "auth": ""}
#: The keys of each shared section (a test keeps them in step with the flags).
SHARED_KEYS = {
    "log": ("level", "format"),
    "metrics": ("port", "host", "host_label", "vm_label", "uuid_file"),
    "auth": ("allow_uid", "tls_cert", "tls_key", "tls_client_ca", "token_secret_file", "insecure"),
}
#: Dests never taken from the file: the parser's own plumbing.
NOT_CONFIGURABLE = {"help", "func", "config", "command", "gateway_command", "version"}

TICKS = IntArg(0, 1 << 31)
POSITIVE_TICKS = IntArg(1, 1 << 31)
SECONDS = FloatArg(0.0, 86400.0, low_open=True)

#: Bounds of every EngineConfig field (all of them: a field without bounds is a test failure).
ENGINE_CONFIG_TYPES: dict[str, Any] = {
    "tick_seconds": FloatArg(0.0, 3600.0, low_open=True),
    "post_init_wait_ticks": TICKS,
    "balloon_timeout_ticks": POSITIVE_TICKS,
    "unballoon_timeout_ticks": POSITIVE_TICKS,
    "hot_add_timeout_ticks": POSITIVE_TICKS,
    "hot_remove_timeout_ticks": POSITIVE_TICKS,
    "retry_backoff_ticks": POSITIVE_TICKS,
    "retry_backoff_max_ticks": POSITIVE_TICKS,
    "max_status_reports_per_tick": IntArg(1, 1_000_000),
    # Windows ignores larger balloon requests; a DM message holds at most this many ranges.
    "balloon_request_max_pages": IntArg(1, BALLOON_REQUEST_MAX_PAGES),
    "unballoon_max_ranges": IntArg(1, MAX_RANGES_PER_MESSAGE),
    "suppress_status_reports": bool,
    "use_hot_remove": bool,
    "qemu_stall_ticks": POSITIVE_TICKS,
    # Forget VMs disconnected this long (0: never).
    "retention_ticks": TICKS,
}

#: GatewayLimits fields the file may set. ``status_interval_s`` is not one: ``hvdm run`` derives it
#: from ``--speed`` (one stored status report per simulated second, QEMU's rate).
GATEWAY_LIMIT_TYPES: dict[str, Any] = {
    "max_payload": IntArg(64, MAX_DM_PAYLOAD),
    "hello_timeout_s": SECONDS,
    "violation_budget": IntArg(1, 1 << 31),
    "max_frames_per_second": IntArg(1, 10_000_000),
    "max_new_vms_per_peer": IntArg(1, 10_000_000),
    "max_new_vms_per_window": IntArg(1, 10_000_000),
    "new_vm_window_s": SECONDS,
    "keepalive_s": SECONDS,
    "accept_backoff_max_s": SECONDS,
}
#: GatewayLimits fields that also have a flag (field -> flag dest): the file sets the flag's default.
GATEWAY_LIMIT_FLAGS = {
    "keepalive_s": "keepalive",
    "max_new_vms_per_peer": "max_new_vms_per_peer",
    "max_new_vms_per_window": "max_new_vms_per_minute",
}

KAFKA_TYPES: dict[str, Any] = {
    "prefix": str,
    "partitions": IntArg(1, 100_000),
    "replication": IntArg(1, 1000),
    "ticks": ("worker", "external"),
    "speed": FloatArg(0.0, 1e6, low_open=True),
    "session_timeout": SECONDS,
    "heartbeat": SECONDS,
    "rebalance_timeout": SECONDS,
    "commit_interval": SECONDS,
    "fetch_wait": SECONDS,
    "linger": FloatArg(0.0, 60.0),
    "compression": ("zstd", "gzip", "none"),
}

EXTRA_SECTIONS = {"engine_config": ENGINE_CONFIG_TYPES, "gateway_limits": GATEWAY_LIMIT_TYPES, "kafka": KAFKA_TYPES}


class ConfigError(ValueError):
    """A config file that cannot be used; the message is the one line the user sees."""


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """A checked config file (or none: every field empty)."""

    path: str | None = None
    #: Per section, key (normalised to ``_``) -> the TOML value.
    sections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def section(self, name: str) -> Mapping[str, Any]:
        return self.sections.get(name, {})

    def engine_config(self) -> EngineConfig | None:
        """The file's engine config over the defaults; None when the file has no ``[engine_config]``."""
        values = self.section("engine_config")
        if not values:
            return None
        return replace(EngineConfig(), **{k: _typed(v, ENGINE_CONFIG_TYPES[k]) for k, v in values.items()})

    def gateway_limits(self) -> dict[str, Any]:
        """The ``[gateway_limits]`` fields that have no flag (the others are flag defaults)."""
        values = self.section("gateway_limits")
        return {k: _typed(v, GATEWAY_LIMIT_TYPES[k]) for k, v in values.items() if k not in GATEWAY_LIMIT_FLAGS}

    def kafka(self) -> dict[str, Any]:
        return {k: _typed(v, KAFKA_TYPES[k]) for k, v in self.section("kafka").items()}


def config_of(args: argparse.Namespace) -> LoadedConfig:
    """The config file a parsed command was given (an empty one without ``--config``)."""
    loaded = getattr(args, "config_file", None)
    return loaded if isinstance(loaded, LoadedConfig) else LoadedConfig()


def _typed(value: Any, kind: Any) -> Any:
    if kind is bool or kind is str or isinstance(kind, tuple):
        return value
    return kind(str(value))


def _norm(key: str) -> str:
    return key.replace("-", "_")


def config_path_of(argv: Sequence[str]) -> str | None:
    """The ``--config`` value in ``argv`` (read before parsing: the file supplies the flags' defaults)."""
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.partition("=")[2]
    return None


def add_config_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML config file (flags override it; see README, Configuration)")


# ---------------------------------------------------------------------------------------------- loading
def load_config(path: str) -> LoadedConfig:
    """Read and check the file's shape and the values of the sections no parser checks."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    known = set(COMMAND_SECTIONS) | set(SHARED_SECTIONS) | set(EXTRA_SECTIONS)
    sections: dict[str, dict[str, Any]] = {}
    for name, table in data.items():
        if name not in known:
            raise ConfigError(f"{path}: unknown section [{name}] (known: {', '.join(sorted(known))})")
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{name}] must be a table, got {type(table).__name__}")
        sections[name] = {_norm(k): v for k, v in table.items()}
    for name, keys in SHARED_KEYS.items():
        for key in sections.get(name, {}):
            if key not in keys:
                raise ConfigError(f"{path}: [{name}] {key}: unknown key (known: {', '.join(keys)})")
    for name, types in EXTRA_SECTIONS.items():
        for key, value in sections.get(name, {}).items():
            if key not in types:
                raise ConfigError(f"{path}: [{name}] {key}: unknown key (known: {', '.join(types)})")
            _check_value(path, name, key, value, types[key])
    engine = sections.get("engine_config", {})
    low, high = (
        engine.get("retry_backoff_ticks", EngineConfig().retry_backoff_ticks),
        engine.get("retry_backoff_max_ticks", EngineConfig().retry_backoff_max_ticks),
    )
    if isinstance(low, int) and isinstance(high, int) and high < low:
        raise ConfigError(f"{path}: [engine_config] retry_backoff_max_ticks ({high}) is below retry_backoff_ticks")
    if "kafka" in sections:
        _check_kafka(path, sections["kafka"])
    return LoadedConfig(path, sections)


def _check_value(path: str, section: str, key: str, value: Any, kind: Any) -> None:
    where = f"{path}: [{section}] {key}"
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: must be true or false, got {value!r}")
        return
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: must be a string, got {value!r}")
        return
    if isinstance(kind, tuple):
        if value not in kind:
            raise ConfigError(f"{where}: must be one of {', '.join(kind)}, got {value!r}")
        return
    _check_typed(where, value, kind)


def _check_typed(where: str, value: Any, kind: Any) -> Any:
    """Run ``value`` through an argument type, after checking its TOML type fits the type."""
    wants_int = isinstance(kind, IntArg | PortArg)
    wants_number = isinstance(kind, FloatArg)
    if isinstance(value, bool) or (wants_int and not isinstance(value, int)):
        raise ConfigError(f"{where}: must be an integer, got {value!r}")
    if wants_number and not isinstance(value, int | float):
        raise ConfigError(f"{where}: must be a number, got {value!r}")
    if isinstance(kind, SizeArg) and not isinstance(value, int | str):
        raise ConfigError(f"{where}: must be a size (bytes, or a string like '4G'), got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: must be finite, got {value!r}")
    try:
        return kind(str(value)) if kind is not None else value
    except (argparse.ArgumentTypeError, ValueError, TypeError) as e:
        raise ConfigError(f"{where}: {e}") from None


def _check_kafka(path: str, values: Mapping[str, Any]) -> None:
    from ..kafka_engine.settings import KafkaSettings, SettingsError

    typed = {k: _typed(v, KAFKA_TYPES[k]) for k, v in values.items()}
    try:
        replace(KafkaSettings(), **typed).validate()
    except SettingsError as e:
        raise ConfigError(f"{path}: [kafka] {e}") from None


# ---------------------------------------------------------------------------------------------- flags
def _flag_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {
        a.dest: a
        for a in parser._actions
        if a.option_strings and a.dest not in NOT_CONFIGURABLE and not isinstance(a, argparse._HelpAction)
    }


def _flag_value(where: str, action: argparse.Action, value: Any) -> Any:
    """A TOML value for a flag, converted and checked as the flag would convert its text."""
    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: must be true or false, got {value!r}")
        return value
    if isinstance(action, argparse._AppendAction):
        if not isinstance(value, list):
            raise ConfigError(f"{where}: must be a list, got {value!r}")
        return [_one_flag_value(where, action, v) for v in value]
    return _one_flag_value(where, action, value)


def _one_flag_value(where: str, action: argparse.Action, value: Any) -> Any:
    if isinstance(value, dict | list):
        raise ConfigError(f"{where}: must be a single value, got {value!r}")
    kind = action.type
    if kind is None or isinstance(kind, type):
        if not isinstance(value, str):
            raise ConfigError(f"{where}: must be a string, got {value!r}")
        converted: Any = kind(value) if callable(kind) else value
    elif isinstance(kind, IntArg | FloatArg | SizeArg | PortArg):
        converted = _check_typed(where, value, kind)
    else:
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ConfigError(f"{where}: must be a string, got {value!r}")
        converted = _check_typed(where, value, kind)
    if action.choices is not None and converted not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise ConfigError(f"{where}: must be one of {choices}, got {value!r}")
    return converted


def apply_to_parsers(config: LoadedConfig, parsers: Mapping[str, argparse.ArgumentParser]) -> None:
    """Make the file's values the defaults of the commands' flags (a flag given still wins).

    Raises ``ConfigError`` for a key no command has, or a value its flag refuses.
    """
    path = config.path or "config"
    actions = {name: _flag_actions(p) for name, p in parsers.items()}
    for section in COMMAND_SECTIONS:
        values = config.section(section)
        if values and section in actions:
            for key in values:
                if key not in actions[section]:
                    raise ConfigError(f"{path}: [{section}] {key}: not a flag of hvdm {section}")
    limits = {
        GATEWAY_LIMIT_FLAGS[k]: v for k, v in config.section("gateway_limits").items() if k in GATEWAY_LIMIT_FLAGS
    }
    for name, parser in parsers.items():
        acts = actions[name]
        defaults: dict[str, Any] = {}
        for key, value in limits.items():
            if key in acts:
                defaults[key] = _flag_value(f"{path}: [gateway_limits] {key}", acts[key], value)
        for section, prefix in SHARED_SECTIONS.items():
            for key, value in config.section(section).items():
                if prefix + key in acts:
                    defaults[prefix + key] = _flag_value(f"{path}: [{section}] {key}", acts[prefix + key], value)
        own = dict(config.section(name))
        if name == "ctl" and "qmp_dir" not in own and "qmp_dir" in config.section("run"):
            own["qmp_dir"] = config.section("run")["qmp_dir"]  # ctl finds the sockets run serves
        for key, value in own.items():
            defaults[key] = _flag_value(f"{path}: [{name}] {key}", acts[key], value)
        parser.set_defaults(config_file=config, **defaults)


def merge_broker(url: str | None, config: LoadedConfig, env: Mapping[str, str] | None = None) -> str | None:
    """The ``--broker`` URL (from the command line or a command's section) over the file's ``[kafka]``
    options: the URL's host list and options win, then ``HVDM_KAFKA_*`` in the environment, then the
    file. ``[kafka]`` alone never switches a command to Kafka; ``broker`` does."""
    from ..kafka_engine.settings import ENV_PREFIX

    kafka = config.kafka()
    if url is None or not kafka:
        return url
    env = os.environ if env is None else env
    parts = urlsplit(url)
    merged = {k: str(v) for k, v in kafka.items() if ENV_PREFIX + k.upper() not in env}
    merged.update(parse_qsl(parts.query, keep_blank_values=True))
    query = "&".join(f"{k}={v}" for k, v in merged.items())
    return f"kafka://{parts.netloc}" + (f"?{query}" if query else "")


# ---------------------------------------------------------------------------------------------- show
def _plain(value: Any) -> Any:
    """A parsed flag value as the file would write it."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], int) and isinstance(value[0], str):
        host, port = value
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def effective(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The flag values a parsed command runs with (None: unset)."""
    return {dest: _plain(getattr(args, dest, None)) for dest in sorted(_flag_actions(parser))}


def extras_of(config: LoadedConfig) -> dict[str, dict[str, Any]]:
    """The sections no flag sets, with the defaults filled in."""
    from ..kafka_engine.settings import KafkaSettings
    from ..vmbus_gateway.server import GatewayLimits

    engine = config.engine_config() or EngineConfig()
    values = config.section("gateway_limits")
    limits = replace(GatewayLimits(), **{k: _typed(v, GATEWAY_LIMIT_TYPES[k]) for k, v in values.items()})
    kafka = replace(KafkaSettings(), **config.kafka())
    return {
        "engine_config": engine.to_dict(),
        "gateway_limits": {f.name: getattr(limits, f.name) for f in fields(limits) if f.name in GATEWAY_LIMIT_TYPES},
        "kafka": {f.name: getattr(kafka, f.name) for f in fields(kafka)},
    }


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML form for {value!r}")


def to_toml(sections: Mapping[str, Mapping[str, Any]]) -> str:
    """TOML for flat sections; an unset value (None) is written as a comment, TOML has no null."""
    out: list[str] = []
    for name, values in sections.items():
        out.append(f"[{name}]")
        for key, value in values.items():
            out.append(f"# {key} = (unset)" if value is None else f"{key} = {_toml_value(value)}")
        out.append("")
    return "\n".join(out)
