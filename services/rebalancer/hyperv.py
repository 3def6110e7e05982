"""The Hyper-V-like policy: target = demand x (1 + buffer), by weight when the host is short.

From references.md 1.1-1.3: demand is the guest's committed memory, the memory buffer is a
percentage of demand added as headroom (5-2000 %, default 20 %), the target is clamped to
[Minimum RAM, Maximum RAM], and "the buffer is not maintained when the host lacks memory": then
memory goes by priority / weight. Microsoft publishes no balancer rate or deadband; the
hysteresis (grow by 16 MiB or more, shrink only when 5 % and 64 MiB below) is ours and is the same
``Hysteresis`` every policy uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .fleet_view import FleetView, Pages
from .policy import Hysteresis, align_up, clamp, fit_hosts, params_of, parse_params


@dataclass(frozen=True, slots=True)
class HyperVParams:
    #: Memory buffer as a fraction of demand (Set-VMMemory -Buffer 20 = 0.20); 0.05 .. 20.
    buffer: float = 0.20
    grow_fraction: float = 0.0
    shrink_fraction: float = 0.05
    grow_step_pages: int = 4096
    shrink_step_pages: int = 16384

    def __post_init__(self) -> None:
        if not 0.05 <= self.buffer <= 20.0:
            raise ValueError("buffer must be within 0.05 .. 20 (Hyper-V allows 5 % .. 2000 %)")


class HyperVPolicy:
    name = "hyperv"

    def __init__(self, params: HyperVParams | None = None) -> None:
        self.params = params or HyperVParams()
        p = self.params
        self.hysteresis = Hysteresis(p.grow_fraction, p.shrink_fraction, p.grow_step_pages, p.shrink_step_pages)

    @classmethod
    def from_strings(cls, given: Mapping[str, str]) -> HyperVPolicy:
        return cls(parse_params(HyperVParams, given))

    def parameters(self) -> dict[str, Any]:
        return params_of(self.params)

    def decide(self, view: FleetView) -> Pages:
        movable = view.controllable & (view.demand >= 0)
        demand = np.maximum(view.demand, 0)
        desired = clamp(align_up(np.ceil(demand * (1.0 + self.params.buffer)).astype(np.int64)), view)
        need = clamp(demand, view)
        fitted = fit_hosts(desired, need, view, movable)
        return self.hysteresis.settle(fitted, view, movable)
