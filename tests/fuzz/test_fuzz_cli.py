"""``hvdm fuzz`` through the CLI: it runs the requested cases and reports what it found."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from services.fuzz.engine_fuzz import FuzzReport, program, run_case

ROOT = Path(__file__).resolve().parents[2]


def test_fuzz_cli_runs_cases_and_reports_violations() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "services", "fuzz", "--cases", "60", "--seed", "7", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["cases"] == 60
    assert report["failures"] == []
    assert report["events"] > 0
    # Hostile inputs were generated and recognised as such.
    assert {"UNEXPECTED_MESSAGE", "SIZE_MISMATCH"} <= set(report["violations"])
    # The hello and QMP grammars were fuzzed too: some accepted, most refused, none crashed.
    grammars = report["grammars"]
    assert grammars["hellos"] == grammars["qmp_requests"] == 60
    assert 0 < grammars["hellos_accepted"] < 60 and "bad_number" in grammars["hello_rejections"]
    assert 0 < grammars["qmp_requests_accepted"] < 60 and "GenericError" in grammars["qmp_errors"]


def test_programs_are_reproducible_from_seed_and_case() -> None:
    assert list(program(3, 11)) == list(program(3, 11))
    assert list(program(3, 11)) != list(program(3, 12))


def test_a_case_counts_its_inputs_and_events() -> None:
    report = FuzzReport()
    run_case(1, 0, report)
    assert report.inputs == len(list(program(1, 0)))
    assert report.events > 0
