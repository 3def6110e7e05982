"""Migration recommendations: what no per-host balancer can fix, said as "move VM x to host y".

A policy only redistributes a host's memory among that host's VMs. When the VMs' *needs* -- each
VM's current use at the smallest size the guest allows (``size_for(used)``), never below its
minimum -- add up to more than the host's capacity, every VM has already given all it can and
someone stays under pressure whatever the policy does. Only moving a VM helps, and that is a
decision with costs the rebalancer cannot see (live-migration bandwidth, placement rules), so it
*recommends*: which VM, to which host, why, and the pressure it expects to save. The operator or
an external scheduler acts on it; the simulation can apply it to measure the effect.

The choice, per short host (largest shortfall first):

* the VM to move is the one with the smallest need that still covers the shortfall (the least
  memory copied); if none covers it alone, the largest need, then again for what is left;
* the destination is the host with the most spare room (capacity minus needs minus what earlier
  recommendations in the same round already sent there) that holds the VM's need plus ``margin``
  of it, so a move does not just make the next host short;
* ``expected_pressure_saved_bytes`` is the part of the shortfall the move removes: the memory that
  would otherwise be missing from the source host's VMs.

Pure: a ``FleetView`` in, recommendations out (the live loop records them, the simulation may apply
them). ``Migration.to_dict`` keys are the contract of ``hvdm rebalance --json`` and of the record.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..units import PAGE_SIZE
from .fleet_view import Flags, FleetView, Pages
from .policy import guest_used, size_for


@dataclass(frozen=True, slots=True)
class Migration:
    vm: str
    from_host: str
    to_host: str
    reason: str
    vm_need_bytes: int
    host_shortfall_bytes: int
    expected_pressure_saved_bytes: int
    destination_spare_bytes: int

    def to_dict(self) -> dict[str, object]:
        return {
            "vm": self.vm,
            "from_host": self.from_host,
            "to_host": self.to_host,
            "reason": self.reason,
            "vm_need_bytes": self.vm_need_bytes,
            "host_shortfall_bytes": self.host_shortfall_bytes,
            "expected_pressure_saved_bytes": self.expected_pressure_saved_bytes,
            "destination_spare_bytes": self.destination_spare_bytes,
        }


def needs(view: FleetView) -> Pages:
    """What each VM keeps after reclaiming everything reclaimable (its current size if unknown)."""
    used = guest_used(view)
    least = np.maximum(size_for(np.maximum(used, 0)), view.min)
    return np.where(used >= 0, np.minimum(least, np.maximum(view.max, view.current)), view.current).astype(np.int64)


def host_shortfalls(view: FleetView) -> Pages:
    """Per host, pages its VMs need beyond its capacity (0 where it fits)."""
    out: Pages = np.maximum(view.host_sum(needs(view)) - view.host_capacity, 0).astype(np.int64)
    return out


def recommend(view: FleetView, *, margin: float = 0.25, movable: Flags | None = None) -> list[Migration]:
    """Recommendations for every host that is short even after reclaiming all it can.

    ``movable`` (default: every VM with a known demand) excludes VMs the caller will not move now
    (e.g. just migrated). Hosts with a name in ``view.host_names`` are named by it, else ``hostN``.
    """
    need = needs(view)
    per_host = view.host_sum(need)
    short = per_host - view.host_capacity
    spare = (view.host_capacity - per_host).astype(np.int64)
    allowed = view.demand >= 0 if movable is None else movable & (view.demand >= 0)
    out: list[Migration] = []
    # Hosts nobody named (``projection.UNKNOWN_HOST``) are neither a source nor a destination.
    unnamed = {h for h in range(view.hosts) if host_name(view, h) == UNKNOWN_HOST}
    spare[list(unnamed)] = -1
    for h in np.argsort(-short, kind="stable").tolist():
        left = int(short[h])
        if left <= 0:
            break
        if h in unnamed:
            continue
        candidates = [int(i) for i in np.flatnonzero((view.host == h) & allowed)]
        while left > 0 and candidates:
            covering = [i for i in candidates if need[i] >= left]
            if covering:
                pick = min(covering, key=lambda i: (int(need[i]), i))
            else:
                pick = max(candidates, key=lambda i: (int(need[i]), -i))
            candidates.remove(pick)
            room = int(need[pick] * (1.0 + margin))
            dest = max(
                (d for d in range(view.hosts) if d != h and spare[d] >= room),
                key=lambda d: (int(spare[d]), -d),
                default=None,
            )
            if dest is None:
                continue
            saved = min(left, int(need[pick]))
            out.append(
                Migration(
                    vm=view.vm_ids[pick],
                    from_host=host_name(view, h),
                    to_host=host_name(view, dest),
                    reason=(
                        f"host {host_name(view, h)} needs {_gib(int(per_host[h]))} for its VMs after reclaiming "
                        f"everything reclaimable, {_gib(left)} more than its capacity "
                        f"{_gib(int(view.host_capacity[h]))}"
                    ),
                    vm_need_bytes=int(need[pick]) * PAGE_SIZE,
                    host_shortfall_bytes=left * PAGE_SIZE,
                    expected_pressure_saved_bytes=saved * PAGE_SIZE,
                    destination_spare_bytes=int(spare[dest]) * PAGE_SIZE,
                )
            )
            spare[dest] -= need[pick]
            left -= int(need[pick])
    return out


#: The name ``projection.build_view`` gives the host of VMs no gateway placed.
UNKNOWN_HOST = "?"


def host_name(view: FleetView, h: int) -> str:
    return view.host_names[h] if h < len(view.host_names) else f"host{h}"


def _gib(pages: int) -> str:
    return f"{pages * PAGE_SIZE / (1 << 30):.1f} GiB"
