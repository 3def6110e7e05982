"""Run ``hvdm`` as a user would: a subprocess of ``python -m services``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def hvdm(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services", *map(str, args)], cwd=REPO, capture_output=True, text=True)


def hvdm_json(*args: str | Path, code: int = 0) -> dict[str, Any]:
    """Run with ``--json``; assert the exit status, no stderr, and exactly one JSON document."""
    result = hvdm(*args, "--json")
    assert result.returncode == code, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    document: dict[str, Any] = json.loads(lines[0])
    return document
