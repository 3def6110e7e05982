"""Workload traces for the fleet simulation: ``Committed_AS`` of many guests, second by second.

Why not call ``Workload.committed_pages(t)`` for every VM and second: a 1,000-VM, 8-hour run is
29 million calls, minutes of Python. The workloads are piecewise simple (constant, 10-second
windows, one-minute spike draws, a line, a sine), so this module evaluates each one per *piece*,
with the same random draws (``_uniforms`` with the same string keys) and the same float
expressions as ``services.guest_sim.workload``; the result is the guest simulator's trace, not a
look-alike. ``tests/rebalancer/test_traces.py`` checks that the two agree page for page (the
diurnal sine may differ by one page where ``numpy.sin`` and ``math.sin`` round differently).

A trace is an ``int64`` array ``(vms, seconds)`` for the integer seconds ``[t0, t1)`` since boot.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..guest_sim.workload import (
    Bursty,
    Diurnal,
    Idle,
    Leak,
    Steady,
    Workload,
    _uniforms,
    make_workload,
)

Pages = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class TraceSpec:
    """One VM's workload: the guest simulator's name, its boot RAM and its seed."""

    workload: str
    boot_pages: int
    seed: int

    def build(self) -> Workload:
        return make_workload(self.workload, self.boot_pages, self.seed)


def _steady(w: Steady, t0: int, t1: int) -> Pages:
    first, last = t0 // 10, (t1 - 1) // 10
    values = np.array([w.committed_pages(10.0 * k) for k in range(first, last + 1)], dtype=np.int64)
    return np.repeat(values, 10)[t0 - 10 * first : t1 - 10 * first]


def _diurnal(w: Diurnal, t0: int, t1: int) -> Pages:
    phase = 2 * math.pi * _uniforms(f"diurnal:{w.seed}", 1)[0]
    t = np.arange(t0, t1, dtype=np.float64)
    fraction = 0.35 + 0.20 * np.sin(2 * math.pi * t / 86_400.0 + phase)
    return np.maximum(0, (w.boot_pages * fraction).astype(np.int64))


def _bursty(w: Bursty, t0: int, t1: int) -> Pages:
    base = max(0, int(w.boot_pages * 0.20))
    out = np.full(t1 - t0, base, dtype=np.int64)
    # A spike drawn for minute m may run into minute m + 1, so start one minute early.
    for minute in range(t0 // 60 - 1, (t1 - 1) // 60 + 1):
        chance, offset, duration, size = _uniforms(f"bursty:{w.seed}:{minute}", 4)
        if chance >= 0.3:
            continue
        start = minute * 60.0 + 60.0 * offset
        end = start + (10.0 + 40.0 * duration)
        value = max(0, int(w.boot_pages * (0.20 + (0.30 + 0.30 * size))))
        # Integer seconds t with start <= t < end, the workload's own test.
        lo = max(t0, math.ceil(start))
        hi = min(t1, math.ceil(end))
        if lo < hi:
            window = out[lo - t0 : hi - t0]
            np.maximum(window, value, out=window)
    return out


def _leak(w: Leak, t0: int, t1: int) -> Pages:
    rate = 0.02 + 0.02 * _uniforms(f"leak:{w.seed}", 1)[0]
    t = np.arange(t0, t1, dtype=np.float64)
    fraction = np.minimum(2.0, 0.20 + rate * t / 60.0)
    return np.maximum(0, (w.boot_pages * fraction).astype(np.int64))


def trace(workload: Workload, t0: int, t1: int) -> Pages:
    """``workload.committed_pages(t)`` for the integer seconds ``t0 <= t < t1``.

    >>> trace(Idle(262144, 0), 0, 3).tolist()
    [20971, 20971, 20971]
    """
    if t1 <= t0:
        return np.zeros(0, dtype=np.int64)
    if isinstance(workload, Idle):
        return np.full(t1 - t0, workload.committed_pages(0.0), dtype=np.int64)
    if isinstance(workload, Steady):
        return _steady(workload, t0, t1)
    if isinstance(workload, Diurnal):
        return _diurnal(workload, t0, t1)
    if isinstance(workload, Bursty):
        return _bursty(workload, t0, t1)
    if isinstance(workload, Leak):
        return _leak(workload, t0, t1)
    # A workload this module does not know: exact, one call per second.
    return np.array([workload.committed_pages(float(t)) for t in range(t0, t1)], dtype=np.int64)


def fleet_trace(workloads: Sequence[Workload], t0: int, t1: int) -> Pages:
    """Traces of many guests stacked into one ``(vms, t1 - t0)`` array."""
    out = np.empty((len(workloads), max(0, t1 - t0)), dtype=np.int64)
    for i, w in enumerate(workloads):
        out[i] = trace(w, t0, t1)
    return out
