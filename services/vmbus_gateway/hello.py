"""The connection hello: one JSON line naming the VM, before any VMBus frame.

A real VMBus channel belongs to a VM by construction; a byte stream does not, so the first line
says which VM this is and how its memory is laid out. ``resume_after`` lets a guest whose channel
survived a gateway restart continue from the last host message it received, so no host message is
lost or repeated: host messages on a channel have consecutive outbox sequence numbers, the
gateway's answer says the one the connection starts after (``"delivered"``), and the guest counts
the frames it receives from there. ``token`` authenticates a TCP guest (see ``auth``).

Where RAM is: ``"machine": "q35" | "pc"`` (QEMU's x86 split around the PCI hole, q35 when absent)
or an explicit ``"ram": [[start_page, page_count], ...]``. What the guest went through: a hello
without ``resume_after`` opens a new channel, which QEMU only allows after a VMBus device reset
(``"reset": "vmbus"``, the default); ``"reset": "system"`` says the guest rebooted, which also
takes back hot-added memory (QEMU's ``hv_balloon_system_reset``).

The hello is the first thing an unauthenticated peer sends, so every number in it is checked
against what the wire format and the log can hold (``dm_engine.limits``) before anything reaches
the inbox: one out-of-range integer stored there would be met again by every replay.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from ..dm_engine.limits import (
    MAX_MEMORY_BYTES,
    MAX_PAGE_NUMBER,
    MAX_RECORD_INT,
    VM_ID,
    BoundsError,
    canonical_uuid,
    check_int,
    check_window,
    json_too_deep,
    valid_vm_id,
)
from ..vdimm_allocator.ram_layout import (
    MACHINES,
    RamLayoutError,
    RamRanges,
    check_ram_ranges,
    ram_end_page,
    x86_ram_ranges,
)

MAX_HELLO_BYTES = 4096
#: Reason codes of refused hellos (the ``reason`` label of ``hvdm_gateway_hello_rejected_total``).
HELLO_REASONS = (
    "not_json",
    "too_deep",
    "too_long",
    "timeout",
    "bad_shape",
    "bad_vm_id",
    "bad_number",
    "bad_value",
    "bad_uuid",
)


class HelloError(ValueError):
    """A refused hello: a one-line message for the peer and a reason code for the counter."""

    def __init__(self, message: str, reason: str = "bad_value") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Hello:
    vm: str
    boot_bytes: int
    maxmem_bytes: int
    hot_add_base_page: int | None = None
    status_reports: bool = True
    resume_after: int | None = None
    token: str | None = field(default=None, repr=False)
    machine: str = "q35"
    #: Explicit guest RAM in pages; overrides ``machine``.
    ram: RamRanges | None = None
    reset: Literal["vmbus", "system"] = "vmbus"
    #: The VM's UUID (SMBIOS / libvirt ``<uuid>``), canonical and lower case; None when not given.
    uuid: str | None = None

    def ram_ranges(self) -> RamRanges:
        """Guest RAM as page ranges: the explicit list, or the machine's split of ``boot_bytes``."""
        if self.ram is not None:
            return self.ram
        return x86_ram_ranges("pc" if self.machine == "pc" else "q35", self.boot_bytes >> 12)

    def to_line(self) -> bytes:
        data: dict[str, Any] = {
            "hello": "hvdm/1",
            "vm": self.vm,
            "boot_bytes": self.boot_bytes,
            "maxmem_bytes": self.maxmem_bytes,
            "hot_add_base_page": self.hot_add_base_page,
            "status_reports": self.status_reports,
        }
        if self.ram is not None:
            data["ram"] = [list(r) for r in self.ram]
        else:
            data["machine"] = self.machine
        if self.resume_after is not None:
            data["resume_after"] = self.resume_after
        else:
            data["reset"] = self.reset
        if self.token is not None:
            data["token"] = self.token
        if self.uuid is not None:
            data["uuid"] = self.uuid
        return (json.dumps(data, separators=(",", ":")) + "\n").encode()


def parse_hello(line: bytes) -> Hello:  # noqa: C901 -- one check per hello field, in order
    """Validate a hello line; every problem is a HelloError with a one-line reason.

    >>> parse_hello(b'{"hello":"hvdm/1","vm":"vm1","boot_bytes":4096,"maxmem_bytes":8192}').maxmem_bytes
    8192
    >>> parse_hello(b'{"hello":"hvdm/1","vm":"v","boot_bytes":18446744073709551616}')  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    services.vmbus_gateway.hello.HelloError: boot_bytes must be an integer in [0, 4503599627370496], got 1844...
    """
    if len(line) > MAX_HELLO_BYTES:
        raise HelloError(f"hello longer than {MAX_HELLO_BYTES} bytes", "too_long")
    if json_too_deep(line):
        raise HelloError("hello is nested too deeply", "too_deep")
    try:
        data = json.loads(line)
    except RecursionError:
        raise HelloError("hello is nested too deeply", "too_deep") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise HelloError(f"hello is not JSON: {e}", "not_json") from None
    if not isinstance(data, dict) or data.get("hello") != "hvdm/1":
        raise HelloError('hello must be a JSON object with "hello": "hvdm/1"', "bad_shape")
    vm = data.get("vm")
    if not valid_vm_id(vm):
        raise HelloError(f"vm must match {VM_ID.pattern}", "bad_vm_id")
    assert isinstance(vm, str)

    def _int(name: str, high: int, *, optional: bool = False) -> int | None:
        value = data.get(name)
        if value is None and optional:
            return None
        try:
            return check_int(name, value, 0, high)
        except BoundsError as e:
            raise HelloError(str(e), "bad_number") from None

    boot = _int("boot_bytes", MAX_MEMORY_BYTES)
    maxmem = _int("maxmem_bytes", MAX_MEMORY_BYTES)
    hot_add_base_page = _int("hot_add_base_page", MAX_PAGE_NUMBER, optional=True)
    resume_after = _int("resume_after", MAX_RECORD_INT, optional=True)
    assert boot is not None and maxmem is not None
    if boot <= 0 or boot % 4096:
        raise HelloError("boot_bytes must be a positive multiple of 4096")
    if maxmem < boot:
        raise HelloError("maxmem_bytes must be at least boot_bytes")
    status = data.get("status_reports", True)
    if not isinstance(status, bool):
        raise HelloError("status_reports must be a boolean")
    token = data.get("token")
    if token is not None and (not isinstance(token, str) or len(token) > 128):
        raise HelloError("token must be a string of at most 128 characters")
    uuid = data.get("uuid")
    if uuid is not None:
        try:
            uuid = canonical_uuid(uuid)
        except ValueError as e:
            raise HelloError(str(e), "bad_uuid") from None
    machine, ram, reset = _layout_and_reset(data, boot >> 12)
    ranges = ram or x86_ram_ranges(machine, boot >> 12)
    if hot_add_base_page is not None and hot_add_base_page < ram_end_page(ranges):
        raise HelloError("hot_add_base_page must lie above guest RAM")
    try:
        check_window(boot, maxmem, hot_add_base_page, ranges)
    except BoundsError as e:
        raise HelloError(str(e), "bad_number") from None
    return Hello(
        vm=vm,
        boot_bytes=boot,
        maxmem_bytes=maxmem,
        hot_add_base_page=hot_add_base_page,
        status_reports=status,
        resume_after=resume_after,
        token=token,
        machine=machine,
        ram=ram,
        reset=reset,
        uuid=uuid,
    )


def _layout_and_reset(data: dict[str, Any], boot_pages: int) -> tuple[Any, RamRanges | None, Any]:
    """The RAM description (``machine`` or ``ram``, not both) and the reset kind of a hello."""
    machine = data.get("machine", "q35")
    ram_list = data.get("ram")
    if "machine" in data and ram_list is not None:
        raise HelloError("give either machine or ram, not both")
    if machine not in MACHINES:
        raise HelloError(f"machine must be one of {', '.join(MACHINES)}")
    ram: RamRanges | None = None
    if ram_list is not None:
        if not isinstance(ram_list, list) or not all(isinstance(r, list) for r in ram_list):
            raise HelloError("ram must be a list of [start_page, page_count] pairs")
        try:
            ram = check_ram_ranges(ram_list, boot_pages)
        except RamLayoutError as e:
            raise HelloError(str(e)) from None
    reset = data.get("reset", "vmbus")
    if reset not in ("vmbus", "system"):
        raise HelloError('reset must be "vmbus" or "system"')
    if "reset" in data and data.get("resume_after") is not None:
        raise HelloError("a resumed channel was not reset: reset cannot go with resume_after")
    return machine, ram, reset
