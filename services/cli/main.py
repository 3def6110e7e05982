"""Entry point of the ``hvdm`` console script.

Each sub-command lives in its own module under ``services.cli`` and exposes
``register(subparsers)``; the table below is the single place that wires them in, so a command's
flags sit next to the code that runs it. Only the module of the command being run is imported
(``hvdm decode`` need not load numpy, Faust or the QMP server); ``hvdm --help`` imports them all.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: Command name -> the module that registers it, in the order they appear in ``hvdm --help``.
COMMANDS: dict[str, str] = {
    "decode": "services.cli.wire_cmds",
    "encode": "services.cli.wire_cmds",
    "run": "services.cli.run_cmd",
    "engine": "services.cli.engine_cmd",
    "gateway": "services.cli.gateway_cmd",
    "ctl": "services.cli.ctl_cmd",
    "audit": "services.cli.audit_cmds",
    "replay": "services.cli.audit_cmds",
    "rebalance": "services.cli.rebalance_cmd",
    "fuzz": "services.cli.fuzz_cmd",
    "bench": "services.cli.bench_cmd",
}

#: Modules that contribute sub-commands (each once, in table order).
COMMAND_MODULES: tuple[str, ...] = tuple(dict.fromkeys(COMMANDS.values()))


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser with every command, or only with the commands of ``only``'s module."""
    parser = argparse.ArgumentParser(
        prog="hvdm",
        description="Host side of the Hyper-V Dynamic Memory protocol, as an event-sourced service.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    modules = (COMMANDS[only],) if only in COMMANDS else COMMAND_MODULES
    for name in modules:
        importlib.import_module(name).register(subparsers)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command_of(args_list))
    args = parser.parse_args(args_list)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
