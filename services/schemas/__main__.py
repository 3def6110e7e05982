"""``python -m services.schemas [--check] [--root DIR]``: regenerate or verify ``schemas/``.

Exit status: 0 when the files are (now) up to date; with ``--check``, 1 when they are stale, with
one line per differing file on stderr so CI says which record changed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .files import SCHEMA_ROOT, check, write


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.schemas", description="Generate the JSON Schemas of hvdm's records."
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if the files differ; write nothing")
    parser.add_argument("--root", type=Path, default=SCHEMA_ROOT, help="schema directory (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.check:
        drift = check(args.root)
        for line in drift.lines():
            print(f"schemas: {line}", file=sys.stderr)
        if drift:
            print("schemas: stale; run `python -m services.schemas` and commit the result", file=sys.stderr)
            return 1
        print(f"schemas: up to date in {args.root}")
        return 0
    drift = write(args.root)
    for line in drift.lines():
        print(f"schemas: {line} -> fixed")
    print(f"schemas: up to date in {args.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
