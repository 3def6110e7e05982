"""``hvdm config show``: the configuration a command would run with (file, flags and defaults merged).

Why: with a config file, environment and flags all feeding one process, an operator needs to see the
result before starting the service, and a unit file or a CI job can check it (``--format json``).

    hvdm config show --config /etc/hvdm/hvdm.toml                 # every section
    hvdm config show --config F --format json run --metrics-port 9000   # what 'hvdm run ...' would use
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .config_file import (
    COMMAND_SECTIONS,
    ConfigError,
    add_config_argument,
    config_of,
    effective,
    extras_of,
    to_toml,
)


def _show(args: argparse.Namespace) -> int:
    from .main import EXIT_USAGE, CliParser, build_parser, error_line

    inner = CliParser(prog="hvdm config show")
    add_config_argument(inner)
    inner.add_argument("--format", choices=["toml", "json"], default=args.format)
    inner.add_argument("command", nargs="?", choices=COMMAND_SECTIONS, help="show what this command would use")
    inner.add_argument("flags", nargs=argparse.REMAINDER, help="the command's flags")
    shown = inner.parse_args(args.rest)
    config = config_of(args)
    try:
        # Every command's section is checked, whichever command is shown.
        parsers = {command: build_parser(command, config) for command in COMMAND_SECTIONS}
    except ConfigError as e:
        print(error_line("config", e), file=sys.stderr)
        return EXIT_USAGE
    sections: dict[str, Any] = {}
    commands = (shown.command,) if shown.command else COMMAND_SECTIONS
    for command in commands:
        parser = parsers[command]
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
        # Required positionals (ctl's VM and words) get a placeholder: they are not configuration.
        placeholders = [
            "x" for a in sub._actions if not a.option_strings and not isinstance(a, argparse._SubParsersAction)
        ]
        parsed = parser.parse_args([command, *(shown.flags if shown.command else []), *placeholders])
        if getattr(parsed, "broker", None) is not None:
            from .config_file import merge_broker
            from .kafka_args import with_compression

            parsed.broker = with_compression(
                merge_broker(parsed.broker, config), getattr(parsed, "kafka_compression", None)
            )
        sections[command] = effective(parsed, sub)
    sections.update(extras_of(config))
    if shown.format == "json":
        print(json.dumps({"config_file": config.path, **sections}, indent=2, sort_keys=True))
    else:
        print(f"# effective hvdm configuration (file: {config.path or 'none'})", file=sys.stdout)
        print(to_toml(sections), end="")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("config", help="show the effective configuration (config file, flags, defaults)")
    add_config_argument(p)
    p.add_argument("--format", choices=["toml", "json"], default="toml", help="output format (default toml)")
    p.add_argument("action", choices=["show"], help="show: print the effective configuration")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="[--format F] [COMMAND [FLAGS...]]")
    p.set_defaults(func=_show)
