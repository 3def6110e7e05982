"""The MoM-like policy: oVirt MoM's default balloon rules (vdsm ``02-balloon.policy``).

Every interval (MoM: ``policy-engine-interval`` 10 s) with ``host_free`` = the moving average of
the host's free memory over its capacity (``sample-history-length`` 10):

* host_free < 20 % (``pressure_threshold``): every guest *shrinks* by at most 5 %
  (``max_balloon_change_percent``) of its size, not below ``used + guest_free x size``, where the
  guest free target scales with host pressure (``0.20 x host_free / 0.20``), and goes negative
  below 5 % (``pressure_critical``: ``host_free - 0.05``, forcing guests to swap);
* otherwise every guest *grows* by 5 % toward its maximum ("slowly deflate the balloons"), and at
  once to ``used + guest_free x size`` if it has less;
* changes under 0.25 % of the size are skipped (``min_balloon_change_percent``);
* QoS: a guest below its guaranteed minimum goes back to it.

``used`` is ``StatAvg(balloon_cur) - StatAvg(mem_unused)``: averages over the last 10 samples, so
MoM reacts to a burst late and partly -- that is MoM, not a bug of this port. No weights (the
default policy has none). What MoM calls the balloon is the VM's whole size here: growing past
boot RAM is a hot-add.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .fleet_view import NO_TARGET, FleetView, Pages
from .history import History
from .policy import lower_bound, params_of, parse_params


@dataclass(frozen=True, slots=True)
class MomParams:
    pressure_threshold: float = 0.20
    pressure_critical: float = 0.05
    min_guest_free_percent: float = 0.20
    max_balloon_change_percent: float = 0.05
    min_balloon_change_percent: float = 0.0025
    sample_history_length: int = 10
    #: Respect the Linux balloon floor (MoM does not know it; a guest refuses pages below it).
    respect_guest_floor: int = 1


class MomPolicy:
    name = "mom"

    def __init__(self, params: MomParams | None = None) -> None:
        self.params = params or MomParams()
        n = self.params.sample_history_length
        self._cur = History(n)
        self._unused = History(n)
        self._host_free: list[list[float]] = []

    @classmethod
    def from_strings(cls, given: Mapping[str, str]) -> MomPolicy:
        return cls(parse_params(MomParams, given))

    def parameters(self) -> dict[str, Any]:
        return params_of(self.params)

    def _host_free_percent(self, view: FleetView) -> np.ndarray[Any, np.dtype[np.float64]]:
        free = (view.host_capacity - view.host_sum(view.current)) / np.maximum(view.host_capacity, 1)
        if len(self._host_free) != view.hosts:
            self._host_free = [[] for _ in range(view.hosts)]
        n = self.params.sample_history_length
        for h, value in enumerate(free.tolist()):
            samples = self._host_free[h]
            samples.append(value)
            del samples[:-n]
        return np.array([sum(s) / len(s) for s in self._host_free])

    def decide(self, view: FleetView) -> Pages:
        p = self.params
        valid = view.controllable & (view.available >= 0)
        self._cur.align(view.vm_ids)
        self._unused.align(view.vm_ids)
        self._cur.push(view.now, np.where(valid, view.current, np.nan))
        self._unused.push(view.now, np.where(valid, view.available, np.nan))
        host_free = self._host_free_percent(view)[view.host]
        critical = host_free <= p.pressure_critical
        guest_free = np.where(
            critical, host_free - p.pressure_critical, p.min_guest_free_percent * host_free / p.pressure_threshold
        )
        cur = view.current.astype(np.float64)
        used = History.mean(self._cur.ordered()[1]) - History.mean(self._unused.ordered()[1])
        balloon_min = np.maximum(view.min, used + guest_free * cur)
        pressure = host_free < p.pressure_threshold
        shrink = np.maximum(cur * (1.0 - p.max_balloon_change_percent), balloon_min)
        grow = np.minimum(np.maximum(cur * (1.0 + p.max_balloon_change_percent), balloon_min), view.max)
        size = np.where(pressure, shrink, grow)
        act = np.where(pressure, size <= cur, cur < view.max)
        big_enough = np.abs(size - cur) > p.min_balloon_change_percent * cur
        new = np.floor(np.nan_to_num(size, nan=0.0)).astype(np.int64)
        if p.respect_guest_floor:
            new = np.maximum(new, lower_bound(view))
        out = np.where(valid & act & big_enough & (new != view.target), new, NO_TARGET)
        # QoS: back to the guaranteed minimum.
        qos = valid & (view.current < view.min)
        return np.where(qos, view.min, out).astype(np.int64)
