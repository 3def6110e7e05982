"""The demo scenario: a scripted story per VM, driven through the same inputs operators use.

Each step submits operator inputs (targets, backends, reboots) and waits until the VM has settled
before the next: idle, and either at its target or with nothing more the guest will give. The
script reads only the engine's projection, so what it shows is what the event log says.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ..dm_engine.inputs import AddBackend, PlugBackend, SetTarget, SystemReset
from ..dm_engine.state import ProtocolState, VmState
from .host import DemoHost


@dataclass(slots=True)
class DemoScript:
    """One VM's story: handshake, shrink to 50 %, hot-add past boot size, shrink, reboot, grow."""

    vm: str
    boot_bytes: int
    #: Stops the guest, runs the given callback (the host-side reset), then boots it again.
    reboot_guest: Callable[[Callable[[], None]], Awaitable[None]]
    step: int = 0
    done: bool = False
    log: list[str] = field(default_factory=list)
    #: Inbox position of the last input this script submitted; nothing moves until it is processed.
    pending_pos: int = 0

    @property
    def backend_bytes(self) -> int:
        # A whole number of 128 MiB blocks, at least 1 GiB.
        return max(1 << 30, (self.boot_bytes // 2) >> 27 << 27)

    def describe(self) -> str:
        return "done" if self.done else STEP_NAMES[min(self.step, len(STEP_NAMES) - 1)]


STEP_NAMES = [
    "handshake",
    "shrink to 50%",
    "hot-add past boot",
    "shrink to 75%",
    "reboot",
    "grow again",
]


def settled(state: VmState | None) -> bool:
    """Idle, and either at the target or told by the guest that it cannot go further."""
    if state is None or state.protocol is not ProtocolState.IDLE:
        return False
    if state.target_pages is None:
        return True
    return state.current_pages == state.target_pages or not state.target_pending


async def advance_demo(script: DemoScript, service: DemoHost) -> None:
    """Move the script one step if the VM has settled; call repeatedly."""
    if script.done:
        return
    if service.consumed < script.pending_pos:
        return
    state = service.states.get(script.vm)
    if not settled(state):
        return
    assert state is not None
    boot = script.boot_bytes
    vm = script.vm

    def submit(vm: str, record: SetTarget | AddBackend | PlugBackend | SystemReset) -> None:
        script.pending_pos = service.submit(vm, record)

    if script.step == 0:
        submit(vm, SetTarget(target_bytes=boot // 2))
    elif script.step == 1:
        submit(vm, AddBackend(backend_id="mem1", size_bytes=script.backend_bytes))
        submit(vm, PlugBackend(backend_id="mem1"))
        submit(vm, SetTarget(target_bytes=boot + script.backend_bytes))
    elif script.step == 2:
        submit(vm, SetTarget(target_bytes=boot * 3 // 4))
    elif script.step == 3:
        # Reboot: the guest stops, the host resets (releasing every vDIMM), the guest boots again.
        await script.reboot_guest(lambda: submit(vm, SystemReset()))
    elif script.step == 4:
        if state.hot_added_pages:
            return
        submit(vm, PlugBackend(backend_id="mem1"))
        submit(vm, SetTarget(target_bytes=boot + script.backend_bytes // 2))
    else:
        script.done = True
        return
    script.step += 1
    script.log.append(f"tick {service.now_tick()}: {STEP_NAMES[script.step]}")
