"""Entry point of the ``hvdm`` console script.

Each sub-command lives in its own module under ``hvdm.cli`` and exposes
``register(subparsers)``; the table below is the single place that wires them in, so a command's
flags sit next to the code that runs it. Only the module of the command being run is imported
(``hvdm decode`` need not load numpy, Faust or the QMP server); ``hvdm --help`` imports them all.

One error path (the README's promise: invalid input never gives a traceback): a bad flag is a
usage error, one line ``hvdm: error: COMMAND: ...`` on stderr and exit status 2 (``CliParser``;
the flag types in ``arg_types`` name every bound); anything a command raises that it did not
handle itself is one line ``hvdm: error: COMMAND: ...`` and exit status 1. ``HVDM_TRACEBACK=1``
shows the traceback instead, for bug reports.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from .config_file import (
    ConfigError,
    LoadedConfig,
    apply_to_parsers,
    config_path_of,
    load_config,
    merge_broker,
)
from .kafka_args import with_compression
from .log_output import configure_logging

#: Command name -> the module that registers it (relative to this package, so the command line works
#: under the installed import name ``hvdm`` and the checkout's ``services``), in ``hvdm --help`` order.
COMMANDS: dict[str, str] = {
    "decode": ".wire_cmds",
    "encode": ".wire_cmds",
    "run": ".run_cmd",
    "engine": ".engine_cmd",
    "gateway": ".gateway_cmd",
    "ctl": ".ctl_cmd",
    "audit": ".audit_cmds",
    "replay": ".audit_cmds",
    "compact": ".compact_cmd",
    "rebalance": ".rebalance_cmd",
    "fuzz": ".fuzz_cmd",
    "bench": ".bench_cmd",
    "config": ".config_cmd",
}

#: Modules that contribute sub-commands (each once, in table order).
COMMAND_MODULES: tuple[str, ...] = tuple(dict.fromkeys(COMMANDS.values()))


EXIT_ERROR = 1
EXIT_USAGE = 2


def error_line(command: str | None, message: object) -> str:
    """The one stderr line of every CLI failure (newlines in the message are flattened)."""
    where = f"{command}: " if command else ""
    return f"hvdm: error: {where}{message}".replace("\r", " ").replace("\n", " ")


class CliParser(argparse.ArgumentParser):
    """argparse with hvdm's usage error: one line and exit status 2 (argparse prints the usage
    block too, which buries the error). Sub-command parsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("hvdm").strip() or None
        self.exit(EXIT_USAGE, error_line(command, message) + "\n")


def _version() -> str:
    """The installed distribution's version (``pyproject.toml``), without importing any command."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hvdm")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown (not installed)"


def build_parser(only: str | None = None, config: LoadedConfig | None = None) -> argparse.ArgumentParser:
    """The parser with every command, or only with the commands of ``only``'s module; a config
    file's values become the defaults of the flags it names (``config_file``)."""
    parser = CliParser(
        prog="hvdm",
        description="Host side of the Hyper-V Dynamic Memory protocol, as an event-sourced service.",
    )
    parser.add_argument("--version", action="version", version=f"hvdm {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    modules = (COMMANDS[only],) if only in COMMANDS else COMMAND_MODULES
    for name in modules:
        importlib.import_module(name, __package__).register(subparsers)
    if config is not None:
        apply_to_parsers(config, subparsers.choices)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    command = _command_of(args_list)
    config_path = config_path_of(args_list)
    try:
        config = load_config(config_path) if config_path is not None else LoadedConfig()
        parser = build_parser(command, config)
    except ConfigError as e:
        print(error_line(command, e), file=sys.stderr)
        return EXIT_USAGE
    args = parser.parse_args(args_list)
    if getattr(args, "broker", None) is not None:
        args.broker = with_compression(merge_broker(args.broker, config), getattr(args, "kafka_compression", None))
    if hasattr(args, "log_format"):
        configure_logging(args)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (``| head``): not a failure of the command; silence the final flush.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        if os.environ.get("HVDM_TRACEBACK"):
            raise
        print(error_line(args.command, f"{type(exc).__name__}: {exc}"), file=sys.stderr)
        return EXIT_ERROR
    return code


if __name__ == "__main__":
    sys.exit(main())
