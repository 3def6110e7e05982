"""``hvdm fuzz``: the longer, standalone adversarial run over decode + decide."""

from __future__ import annotations

import argparse
import json

from services.cli.arg_types import SEED, FloatArg, IntArg
from services.fuzz.engine_fuzz import fuzz


def _run(args: argparse.Namespace) -> int:
    report = fuzz(args.cases, args.seed, args.max_seconds)
    summary = {
        "cases": report.cases,
        "inputs": report.inputs,
        "events": report.events,
        "seconds": round(report.seconds, 2),
        "cases_per_second": round(report.cases / report.seconds, 1) if report.seconds else None,
        "violations": dict(report.violations.most_common()),
        "failures": report.failures[:20],
    }
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print(
            f"hvdm fuzz: {report.cases} cases, {report.inputs} inputs, {report.events} events in "
            f"{report.seconds:.1f} s; invariants checked after every event; every case replayed byte for byte"
        )
        for reason, n in report.violations.most_common():
            print(f"  {reason:<24} {n}")
        for failure in report.failures[:20]:
            print(f"FAILED {failure}")
    return 1 if report.failures else 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("fuzz", help="feed random and adversarial inputs through decode + decide")
    p.add_argument("--cases", type=IntArg(1, 1_000_000_000), default=10_000)
    p.add_argument("--seed", type=SEED, default=1)
    p.add_argument("--max-seconds", type=FloatArg(0.0, 1e9, low_open=True), help="stop after this much wall time")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run)
