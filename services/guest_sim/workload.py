"""Workloads: the guest's ``Committed_AS`` as a pure function of simulated time.

Why pure functions of ``(t, boot size, seed)``: the simulator must be deterministic for a seed and
must never read a clock, and a host test may jump time forward by hours in one ``poll``. A
stateless function can be evaluated at any instant in any order; randomness comes from a
``random.Random`` seeded with a string built from the seed and the time window (string seeds are
hashed with SHA-512, so they do not depend on ``PYTHONHASHSEED``).

The value is what Linux reports as ``Committed_AS`` (guest-behaviour.md 3). The memory model
(``memory.py``) makes the same number of pages resident as far as free memory allows; beyond that
the guest is "under pressure" and the host sees it in the status report.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType
from typing import Final, Protocol


class Workload(Protocol):
    """Anything that says how many pages the guest has committed ``t`` seconds after boot."""

    def committed_pages(self, t: float) -> int: ...


def _fraction(boot_pages: int, fraction: float) -> int:
    return max(0, int(boot_pages * fraction))


@lru_cache(maxsize=4096)
def _uniforms(key: str, count: int) -> tuple[float, ...]:
    """The first ``count`` ``random()`` values of a generator seeded with the string ``key``.

    Cached because seeding from a string hashes it with SHA-512, and the status thread asks for
    the workload every simulated second, mostly within the same time window.
    """
    rng = random.Random(key)
    return tuple(rng.random() for _ in range(count))


@dataclass(frozen=True, slots=True)
class Idle:
    """A quiet guest: 8 % of boot RAM committed, constant."""

    boot_pages: int
    seed: int

    def committed_pages(self, t: float) -> int:
        return _fraction(self.boot_pages, 0.08)


@dataclass(frozen=True, slots=True)
class Steady:
    """A busy but stable guest: 40 % of boot RAM, with +-2 % noise that changes every 10 s."""

    boot_pages: int
    seed: int

    def committed_pages(self, t: float) -> int:
        window = math.floor(max(t, 0.0) / 10.0)
        (u,) = _uniforms(f"steady:{self.seed}:{window}", 1)
        return _fraction(self.boot_pages, 0.40 + 0.04 * u - 0.02)


@dataclass(frozen=True, slots=True)
class Diurnal:
    """A day/night cycle: 35 % +- 20 % of boot RAM on a 24 h sine, phase chosen by the seed."""

    boot_pages: int
    seed: int

    def committed_pages(self, t: float) -> int:
        phase = 2 * math.pi * _uniforms(f"diurnal:{self.seed}", 1)[0]
        return _fraction(self.boot_pages, 0.35 + 0.20 * math.sin(2 * math.pi * t / 86_400.0 + phase))


@dataclass(frozen=True, slots=True)
class Bursty:
    """20 % of boot RAM, plus random spikes: in each minute, with probability 0.3, a spike of
    +30..60 % of boot RAM starts at a random second and lasts 10..50 s."""

    boot_pages: int
    seed: int

    def _spike(self, minute: int, t: float) -> float:
        chance, offset, duration, size = _uniforms(f"bursty:{self.seed}:{minute}", 4)
        if chance >= 0.3:
            return 0.0
        start = minute * 60.0 + 60.0 * offset
        length = 10.0 + 40.0 * duration
        height = 0.30 + 0.30 * size
        return height if start <= t < start + length else 0.0

    def committed_pages(self, t: float) -> int:
        minute = math.floor(max(t, 0.0) / 60.0)
        # A spike may start in the previous minute and still be running.
        spike = max(self._spike(minute, t), self._spike(minute - 1, t))
        return _fraction(self.boot_pages, 0.20 + spike)


@dataclass(frozen=True, slots=True)
class Leak:
    """A memory leak: 20 % of boot RAM, growing by 2..4 % of boot RAM per minute (rate from the
    seed) until it reaches twice the boot RAM, far beyond what the guest can hold; from about 40 min
    on the guest is under pressure unless the host adds memory."""

    boot_pages: int
    seed: int

    def committed_pages(self, t: float) -> int:
        rate = 0.02 + 0.02 * _uniforms(f"leak:{self.seed}", 1)[0]
        return _fraction(self.boot_pages, min(2.0, 0.20 + rate * max(t, 0.0) / 60.0))


_FACTORIES: Final[Mapping[str, Callable[[int, int], Workload]]] = MappingProxyType(
    {"idle": Idle, "steady": Steady, "diurnal": Diurnal, "bursty": Bursty, "leak": Leak}
)

#: Workload name -> one-line description.
WORKLOADS: Final[Mapping[str, str]] = MappingProxyType(
    {name: (factory.__doc__ or "").split("\n\n")[0].replace("\n    ", " ") for name, factory in _FACTORIES.items()}
)


def make_workload(name: str, boot_pages: int, seed: int) -> Workload:
    """The workload called ``name`` for a guest of ``boot_pages``; ValueError if unknown."""
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise ValueError(f"unknown workload {name!r}; known: {', '.join(_FACTORIES)}") from None
    return factory(boot_pages, seed)
