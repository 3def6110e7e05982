"""The simulation's picture: fleet memory over time, one line per policy, and VMs under pressure.

matplotlib with the Agg backend (no display needed), imported only when a plot is asked for, so
the simulation itself runs where matplotlib is not installed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .simulation import Series

_COLOURS = {"hyperv": "tab:blue", "mom": "tab:orange", "hvdm": "tab:green", "oracle": "black"}
#: Points (samples) averaged for the lower panel: 10 minutes at the default 60 s sampling.
SMOOTH = 10
#: A policy whose mean is this many times the others' highest is drawn off scale.
OFF_SCALE = 4.0
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
    capacity = fleet["host_capacity_bytes"] * fleet["hosts"] / GIB
    top.axhline(capacity, color="black", linestyle=":", label=f"host capacity ({fleet['hosts']} hosts)")
    top.axhline(fleet["boot_bytes"] / GIB, color="purple", linestyle="-.", linewidth=0.8, label="sum of boot sizes")
    top.set_ylabel("fleet memory (GiB)")
    top.set_title(title or f"{fleet['vms']} VMs, static allocation at max = {fleet['static_max_bytes'] / GIB:,.0f} GiB")
    top.legend(loc="upper right", fontsize=8, ncols=2)
    top.grid(alpha=0.3)
    _pressure_panel(bottom, series)
    bottom.set_xlabel("simulated time (hours)")
    bottom.legend(loc="upper right", fontsize=8)
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _smoothed(values: list[float]) -> list[float]:
    """Trailing mean over ``SMOOTH`` samples: single bursty seconds become a readable level."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= SMOOTH:
            total -= values[i - SMOOTH]
        out.append(total / min(i + 1, SMOOTH))
    return out


def _pressure_panel(ax: Any, series: Mapping[str, Series]) -> None:
    """VMs under pressure on a *linear* axis, 10-minute means.

    Why not a log axis: symlog made 0.3 and 3 VMs look alike and squashed the zero line the oracle
    sits on. A policy far above the others (MoM's hundreds) would flatten everyone else, so the
    axis is scaled to the others and that policy is clipped and named in the legend with its mean.
    """
    smooth = {name: _smoothed(s.under_pressure) for name, s in series.items()}
    means = {name: sum(v) / max(len(v), 1) for name, v in smooth.items()}
    peaks = {name: max(v, default=0.0) for name, v in smooth.items()}
    base = max((m for m in means.values()), default=0.0)
    if len(means) > 1:
        ordered = sorted(means.values())
        base = ordered[-2] if ordered[-1] > OFF_SCALE * max(ordered[-2], 0.05) else ordered[-1]
    off = {name for name, m in means.items() if m > OFF_SCALE * max(base, 0.05)}
    top = max([peaks[n] for n in smooth if n not in off] or [1.0])
    top = max(top * 1.15, 1.0)
    for name, values in smooth.items():
        label = f"{name} (mean {means[name]:,.1f})"
        if name in off:
            label = f"{name} (off scale: mean {means[name]:,.0f}, peak {peaks[name]:,.0f})"
        ax.plot(series[name].t, [min(v, top) for v in values], label=label, color=_COLOURS.get(name), linewidth=1.2)
    ax.set_ylim(0, top)
    ax.set_ylabel("VMs under pressure\n(10-min mean)")
