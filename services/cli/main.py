"""Entry point of the ``hvdm`` console script.

Each sub-command lives in its own module under ``services.cli`` and exposes
``register(subparsers)``; the module list below is the single place that wires them in, so a
command's flags sit next to the code that runs it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: Modules that contribute sub-commands, in the order they appear in ``hvdm --help``.
COMMAND_MODULES: tuple[str, ...] = (
    "services.cli.wire_cmds",
    "services.cli.bench_cmd",
    "services.cli.ctl_cmd",
    "services.cli.run_cmd",
    "services.cli.engine_cmd",
    "services.cli.gateway_cmd",
    "services.cli.fuzz_cmd",
    "services.cli.audit_cmds",
    "services.cli.rebalance_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the full parser; modules that are not importable are skipped loudly, not silently."""
    parser = argparse.ArgumentParser(
        prog="hvdm",
        description="Host side of the Hyper-V Dynamic Memory protocol, as an event-sourced service.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
