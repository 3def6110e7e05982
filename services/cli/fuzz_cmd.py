"""``hvdm fuzz``: the longer, standalone adversarial run over decode + decide, and over the two text
grammars at the edge (the gateway hello and QMP requests, ``services.fuzz.grammar_fuzz``)."""

from __future__ import annotations

import argparse
import json

from ..fuzz.engine_fuzz import fuzz
from ..fuzz.grammar_fuzz import fuzz_grammars
from .arg_types import SEED, FloatArg, IntArg


def _run(args: argparse.Namespace) -> int:
    report = fuzz(args.cases, args.seed, args.max_seconds)
    grammars = fuzz_grammars(args.cases, args.seed, args.max_seconds)
    failures = report.failures + grammars.failures
    summary = {
        "cases": report.cases,
        "inputs": report.inputs,
        "events": report.events,
        "seconds": round(report.seconds, 2),
        "cases_per_second": round(report.cases / report.seconds, 1) if report.seconds else None,
        "violations": dict(report.violations.most_common()),
        "failures": failures[:20],
        "grammars": {**grammars.to_dict(), "seconds": round(grammars.seconds, 2)},
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
        g = grammars
        print(
            f"hvdm fuzz: {g.hellos} hellos ({g.hellos_accepted} accepted in bounds, the rest refused with a reason) "
            f"and {g.requests} QMP requests ({g.requests_accepted} accepted, {g.inputs_submitted} inputs submitted) "
            f"in {g.seconds:.1f} s"
        )
        for reason, n in g.hello_rejections.most_common():
            print(f"  hello {reason:<18} {n}")
        for failure in failures[:20]:
            print(f"FAILED {failure}")
    return 1 if failures else 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("fuzz", help="feed random and adversarial inputs through decode + decide")
    p.add_argument("--cases", type=IntArg(1, 1_000_000_000), default=10_000)
    p.add_argument("--seed", type=SEED, default=1)
    p.add_argument("--max-seconds", type=FloatArg(0.0, 1e9, low_open=True), help="stop after this much wall time")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run)
