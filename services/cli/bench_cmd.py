"""``hvdm bench NAME``: runs one of the repository's benchmarks (``bench/NAME.py``).

Benchmarks print ratios against a baseline measured in the same process, so their figures are
comparable across machines; they are deliberately not part of the test suite. They are not part of
the installed package either (``bench`` is too generic a top-level name to claim in site-packages):
``hvdm bench`` runs them from a source checkout: the checkout that holds this file (an editable
install, or ``python -m services``) is put on ``sys.path`` so ``bench`` and the ``services`` name the
benchmarks import resolve there.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from pathlib import Path

#: The source checkout this module was loaded from, if it was (``services/cli/bench_cmd.py``).
CHECKOUT = Path(__file__).resolve().parents[2]


def available() -> list[str]:
    """Names of the benchmark modules in ``bench/`` (none when hvdm runs from an installed wheel)."""
    if (CHECKOUT / "bench" / "__init__.py").is_file() and str(CHECKOUT) not in sys.path:
        sys.path.append(str(CHECKOUT))
    try:
        import bench
    except ImportError:
        return []
    return sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if not m.name.startswith("_"))


def _run(args: argparse.Namespace) -> int:
    module = importlib.import_module(f"bench.{args.name}")
    code: int = module.main(args.bench_args)
    return code


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "bench", help="run a benchmark from bench/ (e.g. ranges, codec; from a source checkout only)"
    )
    parser.add_argument("name", choices=available(), help="benchmark to run")
    parser.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments passed to the benchmark")
    parser.set_defaults(func=_run)
