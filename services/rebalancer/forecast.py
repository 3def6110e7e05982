"""The hvdm policy: size each VM for what it will need soon, not for a fixed share of what it uses.

Hyper-V keeps a buffer proportional to demand (20 %): too much for a large, stable guest, too
little for a small guest that bursts. This policy replaces the proportional buffer by headroom
it has *observed* each guest to need, from the guest's own history of used memory
(``Committed_AS``, i.e. demand without the balloon floor, so our own ballooning -- which moves the
floor -- does not look like the guest changing):

* **burst memory**: the target covers the highest use seen in the last ``window_s`` (30 min). A
  guest that spiked keeps room for its spikes; a stable one keeps only ``buffer`` (5 %).
* **trend**: a guest whose use rises steadily (a leak, a diurnal ramp) is sized ``lead_s`` ahead
  along its trend, measured on per-minute *minima* so that bursts do not read as growth.
* **fast grow, slow shrink**: growth is written at once (and always when the guest is under
  pressure now); shrinking waits until the peak leaves the window and moves only past the
  hysteresis deadband, which also keeps the number of balloon operations low.
* **the guest's floor**: the target is the size at which the planned use plus the Linux balloon
  floor *at that size* fit (``size_for``), never below the minimum.
* **host fairness**: when a host is short, headroom is cut first, in proportion; if demand itself
  does not fit, it goes by weight and, within a weight, to whole needs smallest shortfall first
  (``fit_hosts(fewest_short=True)``): the fewest VMs are left paging, and the VM asking for the
  most -- typically a leak -- waits.

Parameters are in ``HvdmParams``; ``hvdm rebalance --param NAME=VALUE`` overrides them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .fleet_view import FleetView, Pages
from .history import BucketHistory
from .policy import (
    Hysteresis,
    align_up,
    clamp,
    fit_hosts,
    guest_used,
    params_of,
    parse_params,
    size_for,
)


@dataclass(frozen=True, slots=True)
class HvdmParams:
    #: Headroom on top of the planned use, as a fraction of it.
    buffer: float = 0.03
    #: How long the peaks of use are remembered (burst memory).
    window_s: float = 1800.0
    #: Which of the per-minute peaks in the window the target covers: 1.0 the highest, 0.8 the
    #: one 80 % of the minutes stay under.
    burst_quantile: float = 0.9
    #: The span over which the trend of use is measured.
    trend_s: float = 300.0
    #: How far ahead along the trend the target is sized.
    lead_s: float = 60.0
    grow_fraction: float = 0.0
    shrink_fraction: float = 0.05
    grow_step_pages: int = 4096
    shrink_step_pages: int = 16384


class HvdmPolicy:
    name = "hvdm"
    bucket_s = 60.0

    def __init__(self, params: HvdmParams | None = None) -> None:
        self.params = params or HvdmParams()
        p = self.params
        self._window_buckets = max(1, math.ceil(p.window_s / self.bucket_s))
        self._trend_buckets = max(2, math.ceil(p.trend_s / self.bucket_s))
        self.used = BucketHistory(self.bucket_s, max(self._window_buckets, self._trend_buckets) + 2)
        self.hysteresis = Hysteresis(p.grow_fraction, p.shrink_fraction, p.grow_step_pages, p.shrink_step_pages)

    @classmethod
    def from_strings(cls, given: Mapping[str, str]) -> HvdmPolicy:
        return cls(parse_params(HvdmParams, given))

    def parameters(self) -> dict[str, Any]:
        return params_of(self.params)

    def decide(self, view: FleetView) -> Pages:
        p = self.params
        movable = view.controllable & (view.demand >= 0)
        used = guest_used(view)
        self.used.align(view.vm_ids)
        self.used.push(view.now, np.where(movable, used, np.nan))
        now_used = np.maximum(used, 0).astype(np.float64)
        peak = np.nan_to_num(self.used.peak_quantile(self._window_buckets, p.burst_quantile), nan=0.0)
        trend = np.maximum(self.used.floor_trend(self._trend_buckets), 0.0)
        planned = np.maximum(np.maximum(peak, now_used + trend * p.lead_s), now_used)
        desired = clamp(align_up(size_for(np.ceil(planned * (1.0 + p.buffer)).astype(np.int64))), view)
        need = clamp(size_for(now_used.astype(np.int64)), view)
        fitted = fit_hosts(desired, need, view, movable, fewest_short=True)
        return self.hysteresis.settle(fitted, view, movable)
