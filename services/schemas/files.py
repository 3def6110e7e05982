"""The committed schema files under ``schemas/``: render, write and compare them.

Why a byte-exact comparison: the files are what other teams and tools read, so "up to date"
must mean "identical to what the generator writes now", not "equivalent after parsing".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from .generator import FAMILIES, Schema, generate

#: ``schemas/`` at the repository root, next to the ``services`` package.
SCHEMA_ROOT: Final = Path(__file__).resolve().parents[2] / "schemas"


def render(schema: Schema) -> str:
    """The file text of one schema: two-space indent, key order as generated, final newline."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def rendered() -> dict[str, str]:
    """Every schema file's text, keyed by its path relative to ``schemas/``."""
    return {path: render(schema) for path, schema in generate().items()}


@dataclass(frozen=True, slots=True)
class Drift:
    """How the files on disk differ from the generator's output."""

    missing: tuple[str, ...]
    changed: tuple[str, ...]
    unexpected: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.missing or self.changed or self.unexpected)

    def lines(self) -> list[str]:
        return (
            [f"missing    {p}" for p in self.missing]
            + [f"changed    {p}" for p in self.changed]
            + [f"unexpected {p}" for p in self.unexpected]
        )


def _on_disk(root: Path) -> set[str]:
    """Schema files the generator owns: ``*.json`` directly inside one of the family folders."""
    found: set[str] = set()
    for family in FAMILIES:
        folder = root / family
        if folder.is_dir():
            found.update(f"{family}/{p.name}" for p in folder.glob("*.json"))
    return found


def check(root: Path = SCHEMA_ROOT) -> Drift:
    """Compare ``root`` with the generator; an empty ``Drift`` is falsy."""
    wanted = rendered()
    present = _on_disk(root)
    missing = sorted(p for p in wanted if p not in present)
    changed = sorted(p for p in wanted if p in present and (root / p).read_text(encoding="utf-8") != wanted[p])
    unexpected = sorted(present - set(wanted))
    return Drift(tuple(missing), tuple(changed), tuple(unexpected))


def write(root: Path = SCHEMA_ROOT) -> Drift:
    """Make ``root`` match the generator, deleting files of record kinds that no longer exist;
    returns what had to change."""
    drift = check(root)
    for path, text in rendered().items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if path in drift.missing or path in drift.changed:
            target.write_text(text, encoding="utf-8")
    for path in drift.unexpected:
        (root / path).unlink()
    return drift
