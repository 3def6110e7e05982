"""What every rebalancing policy shares: the interface, the guest's floor, host fitting, hysteresis.

A policy turns a ``FleetView`` into new targets (pages per VM, ``NO_TARGET`` where it leaves a VM
alone). It never talks to a guest and never writes anything: the live loop turns its answer into
``SetTarget`` inbox records, the simulation into moves of its light model. So one implementation
serves both, and the mechanics below are the same for the three policies -- they differ only in
how they compute the size each VM *should* have.

* ``guest_floor_size``: the smallest size a Linux guest will balloon down to (it never gives
  pages below ``Committed_AS + compute_balloon_floor()``); targets below it would be refused.
* ``fit_hosts``: when a host cannot give every VM what the policy wants, first the headroom above
  ``need`` is cut (Hyper-V: "the buffer is not maintained when the host lacks memory"), then need
  itself, by weight: higher weight is served first, equal weights share in proportion.
* ``settle``: hysteresis. A new target is written only when it differs enough from the one the
  engine already pursues, so noise in status reports does not turn into balloon traffic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol

import numpy as np

from .fleet_view import NO_TARGET, Flags, FleetView, Pages, balloon_floor_pages

#: Targets are whole 2 MiB units: the balloon's allocation unit, and it keeps tiny changes away.
ALIGN_PAGES = 512


class Policy(Protocol):
    """Decides targets from a view; may keep history between calls (one call per interval)."""

    name: str

    def decide(self, view: FleetView) -> Pages: ...

    def parameters(self) -> dict[str, Any]: ...


def align_up(pages: Pages) -> Pages:
    return (-(-pages // ALIGN_PAGES) * ALIGN_PAGES).astype(np.int64)


def guest_used(view: FleetView) -> Pages:
    """Pages the guest uses for itself (``Committed_AS``): demand without the floor at its size."""
    used = view.demand - balloon_floor_pages(view.current)
    return np.where(view.demand >= 0, np.maximum(used, 0), -1).astype(np.int64)


def size_for(used: Pages) -> Pages:
    """The smallest size S with ``S - used >= floor(S)``: room for ``used`` pages plus the Linux
    balloon floor *at that size* (Linux recomputes the floor from the current total RAM).

    Within one band of the floor table ``floor(S) = a + S / k``, so ``S = (used + a) k / (k - 1)``;
    the answer is the candidate that lands in its own band, then nudged up by the rounding.

    >>> size_for(np.array([262144])).tolist()  # 1 GiB of use needs 1 GiB + the floor at ~1.3 GiB
    [330021]
    """
    u = used.astype(np.int64)
    a, k, lo, hi = (column[:, np.newaxis] for column in _FLOOR_BANDS)
    candidates = -(-(u[np.newaxis, :] + a) * k // (k - 1))
    inside = (candidates >= lo) & (candidates < hi)
    # The floor is increasing, so exactly one band holds its own candidate; argmax finds it.
    size = np.take_along_axis(candidates, inside.argmax(axis=0)[np.newaxis, :], axis=0)[0]
    for _ in range(2):  # integer rounding of T >> k: at most a page or two short
        size = size + np.maximum(0, balloon_floor_pages(size) - (size - u))
    out: Pages = size.astype(np.int64)
    return out


#: (a, k, lo, hi): floor(T) = a + T // k for lo <= T < hi (guest-behaviour.md 3).
_FLOOR_BANDS = np.array(
    [
        (2048, 2, 0, 32768),
        (10240, 4, 32768, 131072),
        (26624, 8, 131072, 524288),
        (59392, 16, 524288, 2097152),
        (124928, 32, 2097152, 1 << 62),
    ],
    dtype=np.int64,
).T


def guest_floor_size(view: FleetView) -> Pages:
    """The smallest size the guest reaches with one balloon request (-1 where demand is unknown).

    Linux clamps a request to MemAvailable - floor, with the floor of its *current* size, and the
    engine gives up on a target after a partial answer; so a target is never set below
    ``used + floor(current)``. Once the guest is smaller its floor is too, and the next round may
    go further, down to ``size_for(used)``.
    """
    used = guest_used(view)
    reachable = np.maximum(size_for(np.maximum(used, 0)), used + balloon_floor_pages(view.current))
    return np.where(used >= 0, reachable, -1).astype(np.int64)


def lower_bound(view: FleetView) -> Pages:
    """A target never goes below the VM's minimum nor the guest's floor."""
    return np.maximum(view.min, guest_floor_size(view))


def clamp(desired: Pages, view: FleetView) -> Pages:
    """Within [max(min, guest floor), max]; max wins if the two cross."""
    return np.minimum(np.maximum(desired, lower_bound(view)), view.max).astype(np.int64)


def fit_hosts(desired: Pages, need: Pages, view: FleetView, movable: Flags, *, fewest_short: bool = False) -> Pages:
    """Scale the targets of ``movable`` VMs so every host's total fits its capacity.

    VMs the policy may not move keep their current size, which the host must keep providing.
    ``need`` (<= desired) is what a VM should keep before anybody's headroom; below it, the
    guest floor / minimum is always kept and the rest of need is shared by weight: higher weight
    first; within one weight in proportion, or, with ``fewest_short``, whole needs smallest
    shortfall first -- a VM a little short of its demand pages as much as one far short, so
    meeting whole needs leaves the fewest VMs under pressure (the biggest consumer waits).
    Headroom above need is cut the same way: in proportion, or whole headrooms smallest first.
    """
    out = desired.copy()
    fixed = np.where(movable, 0, view.current)
    budget = view.host_capacity - view.host_sum(fixed)
    want = view.host_sum(np.where(movable, desired, 0))
    for h in np.flatnonzero(want > budget):
        members = np.flatnonzero((view.host == h) & movable)
        room = float(max(int(budget[h]), 0))
        d, n = desired[members], np.minimum(need[members], desired[members])
        # What the guest cannot give back; a guest already below it is not grown for it.
        floor = np.minimum(np.minimum(lower_bound(view)[members], view.current[members]), n)
        if n.sum() <= room:
            extra = (d - n).astype(np.float64)
            spare = room - float(n.sum())
            if fewest_short:
                # Whole headrooms, smallest first: many guests keep their (small) margin and the
                # few holding a lot of room (remembered bursts) give it up.
                given = np.zeros(len(members))
                for i in np.argsort(extra, kind="stable"):
                    given[i] = min(extra[i], max(spare, 0.0))
                    spare -= given[i]
                out[members] = n + np.floor(given).astype(np.int64)
                continue
            share = spare / extra.sum() if extra.sum() > 0 else 0.0
            out[members] = n + np.floor(extra * share).astype(np.int64)
            continue
        room -= float(floor.sum())
        got = floor.astype(np.float64)
        rest = (n - floor).astype(np.float64)
        weights = view.weight[members]
        for w in sorted(set(weights.tolist()), reverse=True):
            group = weights == w
            asked = rest[group].sum()
            if asked <= 0:
                continue
            if fewest_short and asked > room:
                index = np.flatnonzero(group)
                for i in index[np.argsort(rest[index], kind="stable")]:
                    give = min(rest[i], max(room, 0.0))
                    got[i] += give
                    room -= give
                continue
            part = min(1.0, max(room, 0.0) / asked)
            got[group] += rest[group] * part
            room -= asked * part
        out[members] = np.floor(got).astype(np.int64)
    return out


@dataclass(frozen=True, slots=True)
class Hysteresis:
    """Write a target only when it moves by more than these fractions of the pursued size and by
    at least ``grow_step_pages`` (default 16 MiB) / ``shrink_step_pages`` (default 64 MiB)."""

    grow_fraction: float = 0.0
    shrink_fraction: float = 0.05
    grow_step_pages: int = 4096
    shrink_step_pages: int = 16384

    def settle(self, desired: Pages, view: FleetView, movable: Flags) -> Pages:
        base = np.where(view.target >= 0, view.target, view.current)
        up = (desired > base * (1.0 + self.grow_fraction)) & (desired - base >= self.grow_step_pages)
        down = (desired < base * (1.0 - self.shrink_fraction)) & (base - desired >= self.shrink_step_pages)
        # Growth the guest needs *now* is never held back by the deadband.
        urgent = (view.demand > view.current) & (desired > view.current)
        change = movable & (up | down | urgent) & (desired != base)
        # The deadband must not break the host fit: where the targets the engine would pursue
        # exceed a host's capacity, every shrink the fit asked for on that host is written.
        pursued = np.where(change, desired, np.where(movable, base, view.current))
        over = view.host_sum(pursued) > view.host_capacity
        if over.any():
            change |= movable & over[view.host] & (desired < base)
        return np.where(change, desired, NO_TARGET).astype(np.int64)


def params_of(obj: Any) -> dict[str, Any]:
    """A dataclass's fields as a JSON-able dict (for reports)."""
    return asdict(obj)


def parse_params(cls: type[Any], given: Mapping[str, str]) -> Any:
    """Build the parameter dataclass ``cls`` from ``key=value`` strings (CLI ``--param``)."""
    known = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, text in given.items():
        field_ = known.get(key)
        if field_ is None:
            raise ValueError(f"unknown parameter {key!r}; known: {', '.join(sorted(known))}")
        default = getattr(cls(), key)
        try:
            kwargs[key] = type(default)(float(text)) if isinstance(default, int | float) else text
        except ValueError:
            raise ValueError(f"parameter {key}: not a number: {text!r}") from None
    return cls(**kwargs)


PolicyFactory = Callable[[Mapping[str, str]], Policy]
