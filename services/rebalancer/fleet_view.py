"""The fleet view: what a rebalancing policy may know about a fleet, one array entry per VM.

Why arrays: the same policy code runs live (tens of VMs on one host, read from the event log)
and in the simulation (a thousand VMs, every five simulated seconds for hours); numpy arrays make
the second affordable without a second implementation. The live projection (``projection.py``)
and the simulation's light model (``model.py``) both build a ``FleetView``; policies only read it.

Demand and pressure follow Hyper-V (references.md 1.2): demand is what the guest has committed,
pressure is demand / assigned. One correction makes them exact for Linux guests: Linux adds its
ballooned pages to ``num_committed`` (guest-behaviour.md 3, "the host expects the pressure
information to include the ballooned out pages"), so the view subtracts the host's own, exact
count of ballooned pages. What remains is ``Committed_AS + floor (+ hot-added but not onlined)``:
the guest's balloon floor is part of its demand, which is why a policy that never targets below
demand never asks a Linux guest for pages it will refuse.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..units import PAGE_SIZE

GIB_PAGES = (1 << 30) // PAGE_SIZE

Pages = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]
Flags = npt.NDArray[np.bool_]
Index = npt.NDArray[np.intp]

#: "No target": the VM has none yet (view) / the policy leaves it alone (decision).
NO_TARGET = -1


#: The floor table's bands: ``floor(T) = _FLOOR_ADD[b] + (T >> _FLOOR_SHIFT[b])`` for T below
#: ``_FLOOR_UPPER[b]`` (and above the previous bound); the last band is open.
_FLOOR_UPPER = np.array([32768, 131072, 524288, 2097152], dtype=np.int64)
_FLOOR_ADD = np.array([2048, 10240, 26624, 59392, 124928], dtype=np.int64)
_FLOOR_SHIFT = np.array([1, 2, 3, 4, 5], dtype=np.int64)


def balloon_floor_pages(totalram: Pages) -> Pages:
    """Linux ``compute_balloon_floor()`` for many guests at once (guest-behaviour.md 3).

    The same table as ``services.guest_sim.balloon_floor``; a band lookup rather than
    ``np.select``, because the simulation calls it every simulated second:

    >>> balloon_floor_pages(np.array([262144, 1048576, 16777216])).tolist()
    [59392, 124928, 649216]
    """
    band = np.searchsorted(_FLOOR_UPPER, totalram, side="right")
    out: Pages = _FLOOR_ADD[band] + (totalram >> _FLOOR_SHIFT[band])
    return out


@dataclass(frozen=True, slots=True)
class FleetView:
    """One snapshot of the fleet, in 4 KiB pages.

    * ``demand``: committed minus ballooned (see the module docstring); -1 when unknown (no status
      report yet). ``available``: the guest's MemAvailable (MoM's ``mem_unused``), -1 when unknown.
    * ``target``: the target the engine is pursuing, -1 if none was ever set.
    * ``controllable``: the handshake is done, the post-init wait is over, the guest balloons and
      has reported its status -- the only VMs a policy may re-target.
    * ``host``: index into ``host_capacity`` (pages of RAM the host can give to VMs).
    * ``weight``: Hyper-V's memory weight (priority); higher gets memory first when short.
    """

    vm_ids: tuple[str, ...]
    now: float
    host: Index
    host_capacity: Pages
    boot: Pages
    min: Pages
    max: Pages
    current: Pages
    target: Pages
    demand: Pages
    available: Pages
    controllable: Flags
    weight: Floats
    #: Names of the hosts (``host`` indexes them); empty where hosts have no names (``hostN``).
    host_names: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        return len(self.vm_ids)

    @property
    def hosts(self) -> int:
        return len(self.host_capacity)

    def host_sum(self, values: Pages) -> Pages:
        """Per-host sums of a per-VM quantity."""
        return np.bincount(self.host, weights=values, minlength=self.hosts).astype(np.int64)

    def pressure(self) -> Floats:
        """demand / assigned (1.0 = exactly what it needs); NaN where demand is unknown."""
        out = np.full(self.size, np.nan)
        known = self.demand >= 0
        out[known] = self.demand[known] / np.maximum(self.current[known], 1)
        return out
