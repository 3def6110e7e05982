"""The simulation's picture: fleet memory over time, one line per policy, and VMs under pressure.

matplotlib with the Agg backend (no display needed), imported only when a plot is asked for, so
the simulation itself runs where matplotlib is not installed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from services.rebalancer.simulation import Series

_COLOURS = {"hyperv": "tab:blue", "mom": "tab:orange", "hvdm": "tab:green"}
GIB = float(1 << 30)


def write_plot(path: str | Path, series: Mapping[str, Series], fleet: Mapping[str, Any], title: str = "") -> None:
    """Two panels: assigned vs demand (GiB) with the static and capacity lines; VMs under pressure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7.5), sharex=True, height_ratios=(3, 1.4))
    demand_drawn = False
    for name, s in series.items():
        colour = _COLOURS.get(name)
        top.plot(s.t, [b / GIB for b in s.assigned], label=f"{name}: assigned", color=colour, linewidth=1.4)
        if not demand_drawn:
            # Demand differs slightly per policy (the floor moves with the size): draw one, dashed.
            top.plot(s.t, [b / GIB for b in s.demand], label="demand (hyperv run)", color="grey", linestyle="--")
            demand_drawn = True
        bottom.plot(s.t, s.under_pressure, label=name, color=colour, linewidth=1.0)
    capacity = fleet["host_capacity_bytes"] * fleet["hosts"] / GIB
    top.axhline(capacity, color="black", linestyle=":", label=f"host capacity ({fleet['hosts']} hosts)")
    top.axhline(fleet["boot_bytes"] / GIB, color="purple", linestyle="-.", linewidth=0.8, label="sum of boot sizes")
    top.set_ylabel("fleet memory (GiB)")
    top.set_title(title or f"{fleet['vms']} VMs, static allocation at max = {fleet['static_max_bytes'] / GIB:,.0f} GiB")
    top.legend(loc="upper right", fontsize=8, ncols=2)
    top.grid(alpha=0.3)
    bottom.set_yscale("symlog", linthresh=1.0)  # MoM's hundreds and the others' few, both readable
    bottom.set_ylim(bottom=0)
    bottom.set_ylabel("VMs under pressure")
    bottom.set_xlabel("simulated time (hours)")
    bottom.legend(loc="upper right", fontsize=8)
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
