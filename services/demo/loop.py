"""The demo loop both deployments run: advance every script, print progress, stop when done.

Why one loop: the embedded and the Kafka deployment differ only in their ``DemoHost`` (and in how
often reading states back is worth it), so the story, its progress table, the guest rebooter and
the per-VM summary are written once here.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TextIO

from ..dm_engine.state import ProtocolState, VmState
from ..metrics.collector import demand_pages
from ..units import MIB
from ..vmbus_gateway.client import GuestLink
from .host import DemoHost
from .scenario import DemoScript, advance_demo

#: Re-reads the host's states (the Kafka deployment's projection); None where they are live.
Refresh = Callable[[], Awaitable[None]]


def _fmt_mib(pages: int | None) -> str:
    return "-" if pages is None else f"{(pages << 12) // MIB}"


def progress_table(states: Mapping[str, VmState], scripts: Mapping[str, DemoScript], now_tick: int) -> str:
    header = f"{'vm':<10} {'state':<22} {'target':>8} {'current':>8} {'balloon':>8} {'hotadd':>8} {'press%':>6}  step"
    lines = [f"tick {now_tick}  (sizes in MiB)", header]
    for vm in sorted(states):
        s = states[vm]
        pressure = "-"
        if s.status is not None and s.current_pages:
            # Demand (committed minus ballooned), as hvdm_vm_pressure_ratio and the rebalancer count it.
            pressure = f"{100 * demand_pages(s.status.committed_pages, s.ballooned_pages) / s.current_pages:.0f}"
        step = scripts[vm].describe() if vm in scripts else ""
        lines.append(
            f"{vm:<10} {s.protocol.value:<22} {_fmt_mib(s.target_pages):>8} {_fmt_mib(s.current_pages):>8} "
            f"{_fmt_mib(s.ballooned_pages):>8} {_fmt_mib(s.hot_added_pages):>8} {pressure:>6}  {step}"
        )
    return "\n".join(lines)


def vm_summary(s: VmState, script: DemoScript | None) -> dict[str, Any]:
    """One VM's final accounting, as both deployments print it."""
    return {
        "protocol_state": s.protocol.value,
        "boot_bytes": s.boot_pages << 12,
        "current_bytes": s.current_pages << 12,
        "target_bytes": None if s.target_pages is None else s.target_pages << 12,
        "ballooned_bytes": s.ballooned_pages << 12,
        "hot_added_bytes": s.hot_added_pages << 12,
        "violations": dict(sorted(s.counters.violations.items())),
        "scenario_done": script.done if script is not None else None,
    }


def vm_lines(report: Mapping[str, Any]) -> list[str]:
    """The per-VM lines of a run's summary (``vm_summary`` values under ``report["vms"]``)."""
    lines = []
    for vm, v in report["vms"].items():
        viol = ", ".join(f"{k}={n}" for k, n in v["violations"].items()) or "none"
        lines.append(
            f"  {vm}: {v['protocol_state']}, current {v['current_bytes'] // MIB} MiB "
            f"(boot {v['boot_bytes'] // MIB}, ballooned {v['ballooned_bytes'] // MIB}, "
            f"hot-added {v['hot_added_bytes'] // MIB}); violations: {viol}"
        )
    return lines


async def run_scripts(
    host: DemoHost,
    scripts: Mapping[str, DemoScript],
    out: TextIO,
    *,
    progress_interval: float,
    duration: float | None,
    poll_seconds: float,
    refresh: Refresh | None = None,
    stop: Callable[[], str | None] | None = None,
) -> None:
    """Drive every script until all are done, ``duration`` passes, or ``stop`` names a reason."""
    started = next_progress = time.monotonic()
    while True:
        await asyncio.sleep(poll_seconds)
        if refresh is not None:
            await refresh()
        for script in scripts.values():
            await advance_demo(script, host)
        now = time.monotonic()
        if progress_interval > 0 and now >= next_progress and (scripts or host.states):
            print(progress_table(host.states, scripts, host.now_tick()), file=out, flush=True)
            next_progress = now + progress_interval
        if scripts and all(s.done for s in scripts.values()):
            return
        if duration is not None and now - started >= duration:
            return
        reason = stop() if stop is not None else None
        if reason is not None:
            print(f"hvdm: {reason}; stopping", file=sys.stderr, flush=True)
            return


def rebooter(
    link: GuestLink,
    guest: Any,
    host: DemoHost,
    endpoint: Mapping[str, Any],
    *,
    wait_seconds: float,
    refresh: Refresh | None = None,
) -> Callable[[Callable[[], None]], Awaitable[None]]:
    """A script's ``reboot_guest``: stop the guest, wait for the host to see the channel closed (so
    the reset does not race the old boot's last messages), reset, boot the guest again."""

    async def reboot(reset_host: Callable[[], None]) -> None:
        await link.stop()
        vm = link.hello.vm
        deadline = time.monotonic() + wait_seconds
        while time.monotonic() < deadline:
            if refresh is not None:
                await refresh()
            state = host.states.get(vm)
            if state is not None and state.protocol is ProtocolState.CLOSED:
                break
            await asyncio.sleep(0.01 if refresh is None else 0.05)
        reset_host()
        await link.open(**endpoint, first_messages=guest.reboot(host.now_seconds()))

    return reboot
