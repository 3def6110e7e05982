"""Real QEMU VMs as a source of VMs: attach QEMU processes through their QMP monitors.

One job: turn what QEMU says (balloon device, memory layout, actual size, guest status, command
failures, monitor gone) into engine inbox inputs, and deliver the engine's targets as QMP
``balloon``. The engine keeps these VMs as QEMU-managed state (``services.dm_engine.qemu_vm``).
Each deployment connects the agent to its log in its own package (``embedded.qemu_sink``).
"""

from .address import QmpAddress, parse_address
from .agent import QemuAgent

__all__ = ["QemuAgent", "QmpAddress", "parse_address"]
