"""Sizes as people type them: ``4G``, ``512M``, ``200G``, ``1T`` or plain bytes (QEMU's suffixes)."""

from __future__ import annotations

import math

_SUFFIX = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}


def parse_size(text: str, default_unit: str = "") -> int:
    """Bytes for a size with an optional binary suffix (K, M, G, T, P; ``iB`` and ``B`` accepted).

    >>> parse_size("4G"), parse_size("512M"), parse_size("1024", "M")
    (4294967296, 536870912, 1073741824)
    >>> parse_size("inf")
    Traceback (most recent call last):
    ...
    ValueError: not a size: 'inf'
    """
    raw = text.strip().upper().removesuffix("IB").removesuffix("B") if text.strip()[-1:].isalpha() else text
    raw = raw.strip().upper()
    number, unit = raw, default_unit.upper()
    if raw and raw[-1] in _SUFFIX and raw[-1].isalpha():
        number, unit = raw[:-1], raw[-1]
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"not a size: {text!r}") from None
    if not math.isfinite(value) or value < 0 or unit not in _SUFFIX:
        raise ValueError(f"not a size: {text!r}")
    return int(value * _SUFFIX[unit])


def size_arg(text: str) -> int:
    """``argparse`` type for sizes: a bad value becomes a usage error, not a traceback."""
    import argparse

    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
