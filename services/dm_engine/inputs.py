"""Inbox record types: everything that may change a VM, in one total order per VM.

Every input carries ``tick``, the engine clock value at which it entered the inbox. Time reaches
the engine only this way, which is what makes replaying an inbox reproduce its events exactly.
Guest messages are kept as raw bytes: the engine decodes them itself, so a newer decoder re-reads
an old log faithfully.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import ClassVar, Literal

from .events import PageRanges

#: The inbox key of a record for every VM (the clock's ticks): each VM the engine knows gets it.
ALL_VMS = "*"

#: What a fresh channel says about the guest's past (the hello's ``reset``): "" in logs written
#: before hellos carried it (no reset implied), "vmbus" for a new channel (QEMU can only reopen a
#: channel after a VMBus device reset), "system" for a reboot that also drops hot-added memory.
ResetKind = Literal["", "vmbus", "system"]


@dataclass(frozen=True, slots=True, kw_only=True)
class InputBase:
    KIND: ClassVar[str] = ""
    tick: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelOpened(InputBase):
    """A guest opened its DM channel; the gateway's hello describes the VM it belongs to."""

    KIND: ClassVar[str] = "ChannelOpened"
    boot_bytes: int
    maxmem_bytes: int
    #: First page of the hot-add window; None places it as QEMU does (32 GiB aligned, above RAM).
    hot_add_base_page: int | None = None
    status_reports: bool = True
    #: Guest RAM as ``(start_page, page_count)`` ranges (the x86 PCI hole moves RAM above 4 GiB);
    #: empty in logs written before hellos described it, meaning ``[0, boot)``.
    ram: PageRanges = ()
    reset: ResetKind = ""
    #: The VM's UUID from the hello (canonical, lower case), "" when the hello gave none: recorded
    #: as ``VmIdentified`` so every projection (the ``uuid`` metric label) can name the VM as
    #: libvirt does; nothing the engine decides reads it.
    uuid: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelClosed(InputBase):
    KIND: ClassVar[str] = "ChannelClosed"
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class VmbusReset(InputBase):
    """VMBus connect/unload: trees and counters are dropped, hot-added memory stays (QEMU)."""

    KIND: ClassVar[str] = "VmbusReset"


@dataclass(frozen=True, slots=True, kw_only=True)
class SystemReset(InputBase):
    """Guest reboot: every vDIMM is released and the guest is back at its boot size."""

    KIND: ClassVar[str] = "SystemReset"


@dataclass(frozen=True, slots=True, kw_only=True)
class GuestMessage(InputBase):
    """One DM message as the guest sent it (the payload of one VMBus packet)."""

    KIND: ClassVar[str] = "GuestMessage"
    raw: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class MalformedFrame(InputBase):
    """The gateway could not even frame what the guest sent; recorded as a violation."""

    KIND: ClassVar[str] = "MalformedFrame"
    reason: str
    raw: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class SetTarget(InputBase):
    """QMP ``balloon``: the size the VM should reach, in bytes (rounded down to pages)."""

    KIND: ClassVar[str] = "SetTarget"
    target_bytes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class AddBackend(InputBase):
    """QMP ``object-add memory-backend-ram``: a backend exists but is not yet plugged."""

    KIND: ClassVar[str] = "AddBackend"
    backend_id: str
    size_bytes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoveBackend(InputBase):
    """QMP ``object-del``."""

    KIND: ClassVar[str] = "RemoveBackend"
    backend_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PlugBackend(InputBase):
    """QMP ``hv-balloon-add-memory``: lay the backend out as a vDIMM available for hot-add."""

    KIND: ClassVar[str] = "PlugBackend"
    backend_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ForgetVm(InputBase):
    """Drop a disconnected VM: its state, metric series and QMP socket go; a later hello with the
    same id starts a fresh VM. Refused (``CommandRejected``) while its channel or monitor is open.

    Why: every hello with a new id creates a VM, so without a way to retire them the state, the
    series and one socket fd per VM grow without bound. ``reason`` is "operator" (``hvdm ctl VM
    forget``) or "retention" (closed for ``retention_ticks``)."""

    KIND: ClassVar[str] = "ForgetVm"
    reason: str = "operator"


@dataclass(frozen=True, slots=True, kw_only=True)
class Tick(InputBase):
    """The clock moved; drives the post-init wait, timeouts and back-off."""

    KIND: ClassVar[str] = "Tick"


# ----------------------------------------------------------------------------- QEMU-managed VMs
# The Dynamic Memory protocol of these VMs runs inside QEMU (hv-balloon) or is virtio-balloon: the
# QEMU agent reports what QEMU says, and the engine decides targets and records facts.

#: Balloon device kinds the QEMU agent recognises; "none" is a VM without a balloon (left alone).
QEMU_DEVICES = ("hv-balloon", "virtio-balloon", "none")


@dataclass(frozen=True, slots=True, kw_only=True)
class QemuAttached(InputBase):
    """The QEMU agent reached the VM's QMP monitor and read its memory layout."""

    KIND: ClassVar[str] = "QemuAttached"
    device: str
    boot_bytes: int
    #: Boot memory plus the hv-balloon memory backend (the most QEMU can hot-add); boot for virtio.
    maxmem_bytes: int
    actual_bytes: int
    qemu_version: str
    address: str
    #: QEMU's ``query-uuid`` (canonical, lower case), "" when QEMU has none (the nil UUID).
    uuid: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class QemuActualChanged(InputBase):
    """QEMU's ``query-balloon`` actual (or a ``BALLOON_CHANGE``) differs from the last one reported."""

    KIND: ClassVar[str] = "QemuActualChanged"
    actual_bytes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class QemuStatusReport(InputBase):
    """Guest memory status: hv-balloon's report, or virtio guest-stats mapped (see qemu_agent)."""

    KIND: ClassVar[str] = "QemuStatusReport"
    available_bytes: int
    committed_bytes: int
    source: str


@dataclass(frozen=True, slots=True, kw_only=True)
class QemuCommandFailed(InputBase):
    """QEMU answered a command hvdm sent with an error."""

    KIND: ClassVar[str] = "QemuCommandFailed"
    command: str
    error_class: str
    desc: str


@dataclass(frozen=True, slots=True, kw_only=True)
class QemuDetached(InputBase):
    """The monitor went away (QEMU exited, socket removed, connection lost)."""

    KIND: ClassVar[str] = "QemuDetached"
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class QemuTracePages(InputBase):
    """Pages named by one hv-balloon trace line: ``ballooned`` (a remove-response run),
    ``unballooned`` (an unballoon post), ``hot_added`` (an accepted hot-add) or ``reset``."""

    KIND: ClassVar[str] = "QemuTracePages"
    op: str
    ranges: tuple[tuple[int, int], ...]


Input = (
    ChannelOpened
    | ChannelClosed
    | VmbusReset
    | SystemReset
    | GuestMessage
    | MalformedFrame
    | SetTarget
    | AddBackend
    | RemoveBackend
    | PlugBackend
    | Tick
    | ForgetVm
    | QemuAttached
    | QemuActualChanged
    | QemuStatusReport
    | QemuCommandFailed
    | QemuDetached
    | QemuTracePages
)

#: KIND -> input class, built from the ``Input`` union.
INPUT_TYPES: dict[str, type[InputBase]] = {cls.KIND: cls for cls in typing.get_args(Input)}

#: Inputs only a QEMU-managed VM takes.
QEMU_INPUTS: frozenset[type[InputBase]] = frozenset(
    {QemuAttached, QemuActualChanged, QemuStatusReport, QemuCommandFailed, QemuDetached, QemuTracePages}
)
