"""Issue 9 section 5, the CLI promise: invalid input never gives a traceback.

The walk enumerates every command and every flag from the real parser (``build_parser``), so a
command or flag added later is covered without touching this file: each flag with a type gets
values just outside its declared bounds plus the usual suspects (NaN, 1e99, 2**64, garbage), and
each must be a usage error: exit status 2, one stderr line ``hvdm: error: ...``, no traceback.
Flags with a bare ``type=int``/``type=float`` fail the walk (they accept -1, NaN, 1e99).

A handful of the issue's cases also run as real ``hvdm`` subprocesses, including the ones that only
fail once the command runs (a corrupt database): one line, non-zero exit, no traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.cli import arg_types as at
from services.cli.main import COMMANDS, build_parser

ROOT = Path(__file__).resolve().parents[2]
GARBAGE = ["garbage", "", "1.5.3", "0x", "\u2603"]


def subcommands() -> dict[str, argparse.ArgumentParser]:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no sub-commands")


def bad_values(action: argparse.Action, tmp: Path) -> list[str]:
    """Values the action's type (or choices) must refuse."""
    kind: Any = action.type
    if isinstance(kind, at.IntArg):
        out = [str(kind.low - 1), str(kind.high + 1), "nan", "1e99", "inf", str(2**64), *GARBAGE]
        if kind.high < 2**64:
            out.append(str(2**64))
        return out
    if isinstance(kind, at.FloatArg):
        out = ["nan", "inf", "-inf", "1e999", *GARBAGE]
        out.append(str(kind.low) if kind.low_open else str(kind.low - 1))
        if kind.high < 1e99:
            out += ["1e99", str(2**64) if kind.high < 2**64 else "1e400"]
        return out
    if isinstance(kind, at.SizeArg):
        out = ["-1", "nan", "inf", "1e99", "1Q", "G", str(kind.high + 1), *GARBAGE]
        if kind.low > 0:
            out += ["0", str(kind.low - 1)]
        if kind.align > 1:
            out.append(str(kind.high - kind.high % kind.align - 1))
        return out
    if isinstance(kind, at.PortArg):
        return ["-1", "65536", "70000", "nan", "1e99", *GARBAGE]
    if isinstance(kind, at.HostPortArg):
        return ["foo", "host:70000", "host:-1", "host:", "h h:80", "host:nan", *GARBAGE]
    if isinstance(kind, at.BrokerArg):
        return ["notaurl", "http://h:1", "kafka://", "kafka://h:1?nope=1", "kafka://h:1?partitions=x", *GARBAGE]
    if isinstance(kind, at.OutputPathArg):
        return [str(tmp / "missing-dir" / "out.file"), str(tmp), ""]
    if isinstance(kind, at.VmIdArg):
        return ["vm1\n", "", "-x", "a" * 65, "vm 1", "vm/1"]
    if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        return ["not-a-choice", ""]
    assert kind not in (int, float), f"{action.option_strings or action.dest}: a bare type=int/float has no bounds"
    return []


def cases(tmp: Path) -> Iterator[tuple[str, list[str]]]:
    for command, parser in subcommands().items():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction) or action.nargs == 0:
                continue
            for value in bad_values(action, tmp):
                if action.option_strings:
                    argv = [command, f"{action.option_strings[-1]}={value}"]
                else:  # a positional: the first one is where the bad value goes (ctl's VM)
                    argv = [command, value, "info", "balloon"]
                yield command, argv


def parse_in_process(argv: list[str]) -> tuple[int | str | None, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            build_parser(argv[0]).parse_args(argv)
        except SystemExit as e:
            return e.code, err.getvalue()
    return None, err.getvalue()


def test_every_flag_of_every_command_refuses_bad_values_with_one_line(tmp_path: Path) -> None:
    walked = list(cases(tmp_path))
    covered = {command for command, _ in walked}
    # Every command with a typed flag is walked; decode/bench have only strings and choices.
    assert covered >= set(COMMANDS) - {"decode"}, set(COMMANDS) - covered
    assert len(walked) > 300
    failures = []
    for _, argv in walked:
        code, err = parse_in_process(argv)
        lines = err.splitlines()
        if code != 2 or len(lines) != 1 or not lines[0].startswith("hvdm: error: ") or "Traceback" in err:
            failures.append((argv, code, err[:200]))
    assert not failures, failures[:10]


def test_no_flag_is_an_unbounded_number() -> None:
    for command, parser in subcommands().items():
        for action in parser._actions:
            assert action.type not in (int, float), (command, action.option_strings)


@pytest.mark.parametrize("value", ["4G", "512M", "2M", str(4 << 30)], ids=["4G", "512M", "2M", "bytes"])
def test_good_sizes_still_parse(value: str) -> None:
    args = build_parser("run").parse_args(["run", f"--guest-memory={value}"])
    assert args.guest_memory > 0 and args.guest_memory % (2 << 20) == 0


def test_good_values_still_parse() -> None:
    args = build_parser("run").parse_args(
        ["run", "--tcp", "0.0.0.0:0", "--speed", "25", "--guests", "3", "--metrics-port", "9100", "--seed", "-7"]
    )
    assert args.tcp == ("0.0.0.0", 0) and args.speed == 25.0 and args.guests == 3 and args.seed == -7
    assert build_parser("run").parse_args(["run", "--tcp", "[::1]:8000"]).tcp == ("::1", 8000)
    assert build_parser("run").parse_args(["run", "--tcp", "7000"]).tcp == ("127.0.0.1", 7000)
    assert build_parser("engine").parse_args(["engine", "--broker", "kafka://h:9092?partitions=4"]).broker
    enc = build_parser("encode").parse_args(["encode", "{}", "--trailer-offset", "0x10"])
    assert enc.trailer_offset == 16
    assert math.isclose(build_parser("engine").parse_args(["engine", "--poll-interval", "0.5"]).poll_interval, 0.5)


def hvdm(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hvdm", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_the_issues_cases_as_real_subprocesses(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not an SQLite database, whatever its name says" * 20)
    runs = [
        (("run", "--guest-memory", "0"), 2),
        (("run", "--guest-memory", "1e99"), 2),
        (("run", "--guest-profile", "nope"), 2),
        (("run", "--speed", "0"), 2),
        (("run", "--tcp", "foo"), 2),
        (("run", "--tcp", "127.0.0.1:70000"), 2),
        (("run", "--guests", "-1"), 2),
        (("engine", "--batch", "0"), 2),
        (("engine", "--broker", "notaurl"), 2),
        (("fuzz", "--cases", "-5"), 2),
        (("audit", "--db", corrupt, "--html", tmp_path / "no" / "r.html"), 2),
        (("rebalance", "--simulate", "--plot", tmp_path), 2),
        (("run", "--db", corrupt, "--socket", tmp_path / "gw.sock", "--duration", "0.1"), 1),
        (("engine", "--db", corrupt, "--exit-when-idle"), 1),
        (("audit", "--db", corrupt), 1),
    ]
    for args, code in runs:
        out = hvdm(*args, cwd=tmp_path)
        lines = out.stderr.splitlines()
        assert out.returncode == code, (args, out.returncode, out.stderr)
        assert "Traceback" not in out.stderr, (args, out.stderr)
        assert len(lines) == 1 and lines[0].startswith("hvdm:"), (args, out.stderr)
    assert corrupt.read_bytes().startswith(b"this is not an SQLite database")  # and it is untouched


def test_a_good_command_still_runs() -> None:
    out = hvdm("fuzz", "--cases", "3", "--json")
    assert out.returncode == 0, out.stderr
    assert '"cases": 3' in out.stdout
