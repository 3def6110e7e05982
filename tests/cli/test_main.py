"""The command table and the modules agree, and only the chosen command's module is loaded."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from services.cli.main import COMMANDS, build_parser

ROOT = Path(__file__).resolve().parents[2]


def registered(parser: argparse.ArgumentParser) -> set[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


def test_every_table_entry_is_registered_by_its_module_and_nothing_else() -> None:
    assert registered(build_parser()) == set(COMMANDS)
    for command, module in COMMANDS.items():
        assert command in registered(build_parser(command)), (command, module)


def test_a_light_command_does_not_import_heavy_modules() -> None:
    code = (
        "import sys; from services.cli.main import main; main(['decode', '0100100005000000000002000000000000']);"
        "heavy = [m for m in ('numpy', 'faust', 'services.qmp', 'services.rebalancer') if m in sys.modules];"
        "print('HEAVY', heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout


def test_help_lists_every_command() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "services", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0
    for command in COMMANDS:
        assert command in out.stdout


def test_version_prints_the_installed_version() -> None:
    from importlib.metadata import version

    result = subprocess.run(
        [sys.executable, "-c", "import sys; from services.cli.main import main; main(['--version'])"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"hvdm {version('hvdm')}\n" and result.stderr == ""
