"""The simulated guest's RAM sits where QEMU's x86 machines put it, and host and guest agree on it.

* ``pc_q35_init`` / ``pc_init1``: RAM of a big guest is split around the PCI hole, part of it from
  4 GiB up; the simulator's memory is those ranges, so its balloon answers name relocated pages.
* Linux ``hv_balloon`` (section 2.3 of guest-behaviour.md, ``probe_memory_block_size``): with 64 GiB
  or more the hot-add alignment divides the end of boot memory, ``max_pfn``, hole included.
* The engine, told the same layout, accepts every page an honest guest returns, and the guest sees
  no host misbehaviour: a q35 guest through the whole demo story leaves no violation on either side.
"""

from __future__ import annotations

from pathlib import Path

from services.dm_engine.events import GuestViolation, PagesBallooned
from services.dm_engine.inputs import AddBackend, PlugBackend, SetTarget, SystemReset
from services.dm_engine.records import event_from_dict, loads
from services.dm_engine.state import ProtocolState
from services.embedded.lockstep import LockstepFleet
from services.event_log.sqlite_log import SqliteLog
from services.guest_sim import GuestConfig, SimulatedGuest
from tests.embedded.fleet_scenario import CONFIG, all_settled
from tests.guest_sim.host_script import GIB_PAGES, balloon, ready_guest

FOUR_GIB = 4 * GIB_PAGES
GIB = 1 << 30


def _story(fleet: LockstepFleet) -> None:
    """The demo story for 4 GiB guests: shrink into the relocated RAM, hot-add, shrink, reboot, grow."""
    for vm in fleet.vms:
        fleet.connect(vm)
    fleet.run_until(lambda f: all(f.runner.states[vm].protocol is ProtocolState.IDLE for vm in f.vms))
    fleet.advance(50)
    for target in (GIB + GIB // 2, 5 * GIB, 3 * GIB):
        for vm in fleet.vms:
            if target == 5 * GIB:
                fleet.submit(vm, AddBackend(backend_id="mem1", size_bytes=2 * GIB))
                fleet.submit(vm, PlugBackend(backend_id="mem1"))
            fleet.submit(vm, SetTarget(target_bytes=target))
        fleet.settle()
        fleet.run_until(all_settled)
        fleet.advance(3)
    for vm, v in fleet.vms.items():
        fleet.disconnect(vm)
        fleet.submit(vm, SystemReset())
        fleet.settle()
        fleet.connect(vm, v.guest.reboot(fleet.now))
    fleet.run_until(lambda f: all(f.runner.states[vm].protocol is ProtocolState.IDLE for vm in f.vms))
    for vm in fleet.vms:
        fleet.submit(vm, SetTarget(target_bytes=2 * GIB))
    fleet.settle()
    fleet.run_until(all_settled)


def test_q35_guest_memory_is_split_around_the_pci_hole() -> None:
    """pc_q35_init's split; Linux balloon_up takes free RAM wherever it is, never the hole."""
    g = ready_guest(boot_bytes=4 << 30, machine="q35")
    assert g.memory.online.to_list() == [(0, 2 * GIB_PAGES), (FOUR_GIB, 2 * GIB_PAGES)]
    assert g.config.ram_end_page == 6 * GIB_PAGES
    # ballooning most of it reaches the relocated RAM, never the hole
    responses = balloon(g, 3 * GIB_PAGES)
    pages = [r for m in responses for r in m.ranges]
    assert any(start >= FOUR_GIB for start, _ in pages)
    assert not any(2 * GIB_PAGES <= start < FOUR_GIB for start, _ in pages)


def test_pc_and_explicit_layouts() -> None:
    """pc_init1's split, an explicit map, and the flat [0, boot) of the worked examples."""
    assert GuestConfig(boot_bytes=4 << 30, machine="pc").ram_ranges() == ((0, 3 * GIB_PAGES), (FOUR_GIB, GIB_PAGES))
    ram = ((0, GIB_PAGES), (8 * GIB_PAGES, GIB_PAGES))
    assert GuestConfig(boot_bytes=2 << 30, ram=ram).ram_ranges() == ram
    assert GuestConfig(boot_bytes=4 << 30, machine="flat").ram_ranges() == ((0, FOUR_GIB),)


def test_hot_add_alignment_follows_max_pfn_with_the_hole() -> None:
    """64 GiB on pc: 3 GiB below 4 GiB and 61 GiB from 4 GiB, so boot memory ends at 65 GiB and the
    largest power of two <= 2 GiB dividing it is 1 GiB (2**10 MiB); counted as [0, 64 GiB) it
    would be 2 GiB. q35's 2 GiB hole keeps the parity: 64 GiB ends at 66 GiB, still 2 GiB."""
    assert GuestConfig(boot_bytes=64 << 30, machine="pc").effective_alignment() == 10
    assert GuestConfig(boot_bytes=64 << 30, machine="flat").effective_alignment() == 11
    assert GuestConfig(boot_bytes=64 << 30, machine="q35").effective_alignment() == 11
    assert GuestConfig(boot_bytes=65 << 30, machine="q35").effective_alignment() == 10


def test_honest_q35_guests_leave_no_violation_on_either_side(tmp_path: Path) -> None:
    """Engine and simulator share the layout: no PAGES_NOT_OWNED, no host violation."""
    fleet = LockstepFleet(SqliteLog(tmp_path / "q35.db"), CONFIG)
    guests = []
    for i, profile in enumerate(("linux", "windows")):
        guest = SimulatedGuest(GuestConfig(boot_bytes=4 << 30, profile=profile, workload="steady", seed=i))
        guests.append(guest)
        fleet.add_vm(f"vm{i + 1}", guest, 4 << 30, 16 << 30)
    _story(fleet)
    for vm, guest in zip(fleet.vms, guests, strict=True):
        state = fleet.runner.states[vm]
        assert state.ram == ((0, 2 * GIB_PAGES), (FOUR_GIB, 2 * GIB_PAGES))
        events = [event_from_dict(loads(r.record)) for r in fleet.log.iter_events(vm)]
        assert [e for e in events if isinstance(e, GuestViolation)] == []
        relocated = [r for e in events if isinstance(e, PagesBallooned) for r in e.ranges if r[0] >= FOUR_GIB]
        assert relocated and all(start + n <= 6 * GIB_PAGES for start, n in relocated)
        assert guest.host_violations == []
        assert state.ballooned_pages == guest.snapshot()["ballooned_pages"]
    fleet.log.close()
