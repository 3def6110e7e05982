"""The ``oracle`` policy: perfect foresight of every guest's demand, the yardstick for the others.

Why an oracle: comparing heuristics with each other says which is better, not how much is left on
the table. The oracle reads the simulation's workload trace *ahead* of time (``foresee``), so it
knows each VM's ``Committed_AS`` for every future second, and is otherwise held to the rules the
other policies live by: it decides at the same interval from the same view (nothing before the
first status report or the post-init wait), its targets are moved by the same light model (one
transaction at a time, hot-add at the onlining rate in 2 GiB chunks, ballooning at the guest's
speed and clamped by the Linux floor at the current size), and host capacity is shared with the
same ``fit_hosts``. It can therefore only exist in the simulation (``hvdm rebalance --simulate``).

What it targets at decision time ``t``, with ``need(s) = size_for(committed(s))`` (the smallest
size with no pressure at second ``s``) and ``I`` the decision interval:

* ``cover = max need(s)`` for ``t <= s < t + I``: until the next decision the VM is never under
  pressure (unballooning is instant, so nothing earlier is needed while the growth stays under
  the VM's ceiling);
* ``ramp = max (need(s) - r (s - t))`` over the next ``horizon_s``, with ``r`` the hot-add rate:
  growth above the ceiling (boot + hot-added: Linux cannot hot-remove, so the ceiling only rises)
  must start early enough for hot-add to keep up. Only where ``ramp`` exceeds the ceiling is the
  target raised to it; below the ceiling, growth is an instant unballoon and costs nothing.

Shrinking goes as deep as the guest allows in one request (``guest_floor_size``), so a large drop
takes a few rounds, as it would for anyone. Short hosts cut to ``cover`` first, then whole needs
smallest shortfall first (``fit_hosts(fewest_short=True)``). This is not a proven optimum (an
optimal schedule under host capacity is an integer program), but no causal policy can reclaim
more without adding pressure, which is what the fractions in the report are measured against.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .fleet_view import NO_TARGET, FleetView, Pages
from .model import LightFleet
from .policy import clamp, fit_hosts, params_of, parse_params, size_for


@dataclass(frozen=True, slots=True)
class OracleParams:
    #: How far ahead growth above the ceiling is planned (seconds of trace read ahead).
    horizon_s: int = 256


def sliding_max(values: Pages, width: int) -> Pages:
    """``out[:, i] = values[:, i : i + width].max()`` for every ``i`` with a full window.

    Doubling (sparse-table) passes: log2(width) numpy maxima over the whole array instead of a
    Python loop per decision, which keeps the oracle's cost close to the other policies'.
    """
    if width < 1:
        raise ValueError("a window is at least one sample wide")
    span, out = 1, values
    while span * 2 <= width:
        out = np.maximum(out[:, :-span], out[:, span:])
        span *= 2
    if span < width:
        rest = width - span
        out = np.maximum(out[:, :-rest], out[:, rest:])
    return out


class OraclePolicy:
    name = "oracle"

    def __init__(self, params: OracleParams | None = None) -> None:
        self.params = params or OracleParams()
        self._fleet: LightFleet | None = None
        self._t0 = 0
        self._cover: Pages = np.zeros((0, 0), dtype=np.int64)
        self._ramp: Pages = np.zeros((0, 0), dtype=np.int64)
        self._interval = 1

    @classmethod
    def from_strings(cls, given: Mapping[str, str]) -> OraclePolicy:
        return cls(parse_params(OracleParams, given))

    def parameters(self) -> dict[str, Any]:
        return params_of(self.params)

    @property
    def lookahead_s(self) -> int:
        """Seconds of trace ``foresee`` needs beyond the stretch being simulated."""
        return self.params.horizon_s + self._interval

    def attach(self, fleet: LightFleet, interval_s: int) -> None:
        """The model this oracle drives: it reads the ceiling (hot-added memory) from it."""
        self._fleet = fleet
        self._interval = interval_s

    def foresee(self, t0: int, committed: Pages) -> None:
        """The future: ``committed[:, k]`` is second ``t0 + k``; covers ``lookahead_s`` past the chunk."""
        need = size_for(committed.ravel()).reshape(committed.shape)
        self._t0 = t0
        self._cover = sliding_max(need, self._interval)
        if self._fleet is None:
            raise RuntimeError("attach the oracle to its fleet before foreseeing")
        rate = self._fleet.timing.hot_add_pages_per_s
        # ramp(t) = max over s in [t, t + H] of need(s) - r (s - t) = r t + max g(s), g(s) = need(s) - r s.
        steps = np.arange(committed.shape[1], dtype=np.int64) * rate
        window = sliding_max(need - steps, self.params.horizon_s + 1)
        self._ramp = window + steps[: window.shape[1]]

    def decide(self, view: FleetView) -> Pages:
        if self._fleet is None:
            raise ValueError("the oracle needs the simulation's future traces; it cannot run live")
        k = round(view.now) - self._t0
        if not 0 <= k < self._ramp.shape[1]:
            raise RuntimeError(f"the oracle has no foresight for t={view.now:g}")
        movable = view.controllable & (view.demand >= 0)
        cover = self._cover[:, k]
        ramp = self._ramp[:, k]
        fleet = self._fleet
        ceiling = fleet.boot + fleet.hot_added
        desired = clamp(np.where(ramp > ceiling, np.maximum(cover, ramp), cover), view)
        need = clamp(cover, view)
        fitted = fit_hosts(desired, need, view, movable, fewest_short=True)
        base = np.where(view.target >= 0, view.target, view.current)
        # Re-issued while the VM is not there yet: a balloon answered partially ends the engine's
        # pursuit of a target, and the oracle keeps no deadband to wait for a bigger change.
        change = movable & ((fitted != base) | (fitted != view.current))
        return np.where(change, fitted, NO_TARGET).astype(np.int64)
