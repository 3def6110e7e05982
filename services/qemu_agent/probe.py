"""What a QEMU VM is, read from its QMP answers: pure functions, so they are tested without QEMU.

Discovery reads ``query-name``, ``query-uuid``, ``query-version``, ``query-balloon``, ``query-memory-size-summary``,
``query-memory-devices`` and ``qom-list`` of ``/machine/peripheral`` and ``/machine/peripheral-anon``
(where ``-device ...`` objects live). Every answer is checked for shape and range: QEMU is a peer
like any other, and a malformed answer makes the VM "not attachable" with a reason, never a crash.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from ..dm_engine.limits import NIL_UUID, canonical_uuid
from ..dm_engine.limits import VM_ID as LIMITS_VM_ID

#: The VM ids the rest of hvdm accepts (``dm_engine.limits.VM_ID``), matched as a whole string:
#: with ``match`` and ``$`` a QEMU name ``"db1\n"`` would pass and split log lines.
VM_ID = LIMITS_VM_ID
MAX_BYTES = 1 << 52
#: The QOM containers where ``-device`` objects appear, with and without an ``id``.
PERIPHERAL_PATHS = ("/machine/peripheral", "/machine/peripheral-anon")


class ProbeError(ValueError):
    """A QMP answer had a shape or value QEMU never sends; the VM is not attached."""


@dataclass(frozen=True, slots=True)
class VmDescription:
    vm_id: str
    device: str  # hv-balloon, virtio-balloon or none
    #: The QOM path of the balloon device (for virtio guest-stats), "" when there is none.
    device_path: str
    boot_bytes: int
    maxmem_bytes: int
    actual_bytes: int
    qemu_version: str
    #: ``query-uuid`` (canonical, lower case); None for the nil UUID (QEMU started without -uuid).
    uuid: str | None = None


def _size(value: Any, what: str, *, allow_zero: bool = True) -> int:
    if type(value) is not int or value < (0 if allow_zero else 1) or value > MAX_BYTES:
        raise ProbeError(f"{what}: expected a size in bytes, got {str(value)[:40]!r}")
    return value


def sanitize_vm_id(text: str) -> str:
    """A VM id hvdm accepts, made from ``text``: other characters become '-', at most 64 long.

    >>> sanitize_vm_id("web 01/prod"), sanitize_vm_id("ok-vm")
    ('web-01-prod', 'ok-vm')
    """
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "-", text)[:64].lstrip("-_.")
    return cleaned or "qemu"


def vm_id_for(name_answer: Any, address: str) -> str:
    """``query-name``'s name when set, else the socket file name without its extension.

    >>> vm_id_for({"name": "db1"}, "/run/q/x.sock"), vm_id_for({}, "/run/q/web.qmp"), vm_id_for({}, "tcp:h:4444")
    ('db1', 'web', 'h-4444')
    >>> vm_id_for({"name": "db1\\n"}, "/run/q/x.sock")
    'db1-'

    """
    name = name_answer.get("name") if isinstance(name_answer, dict) else None
    if isinstance(name, str) and name:
        return name if VM_ID.fullmatch(name) else sanitize_vm_id(name)
    if address.startswith("tcp:"):
        return sanitize_vm_id(address[4:].replace(":", "-"))
    stem = PurePath(address).stem
    return stem if VM_ID.fullmatch(stem) else sanitize_vm_id(stem)


def uuid_of(answer: Any) -> str | None:
    """``query-uuid`` -> the VM's UUID in canonical lower case, None for the nil UUID QEMU answers
    when started without ``-uuid``; ``ProbeError`` for anything QEMU never sends.

    >>> uuid_of({"UUID": "6B29FC40-CA47-1067-B31D-00DD010662DA"}), uuid_of({"UUID": NIL_UUID})
    ('6b29fc40-ca47-1067-b31d-00dd010662da', None)
    """
    value = answer.get("UUID") if isinstance(answer, dict) else None
    if value == NIL_UUID:
        return None
    try:
        return canonical_uuid(value)
    except ValueError as e:
        raise ProbeError(f"query-uuid: {e}") from None


def version_text(answer: Any) -> str:
    """``query-version`` as "major.minor.micro"."""
    try:
        q = answer["qemu"]
        parts = [q["major"], q["minor"], q["micro"]]
    except (KeyError, TypeError) as exc:
        raise ProbeError("query-version: no qemu version") from exc
    if not all(type(p) is int and 0 <= p < 10_000 for p in parts):
        raise ProbeError("query-version: version numbers out of range")
    return ".".join(str(p) for p in parts)


def balloon_device(listings: dict[str, Any]) -> tuple[str, str]:
    """(device kind, QOM path) from ``qom-list`` answers keyed by container path.

    >>> balloon_device({"/machine/peripheral": [{"name": "b0", "type": "child<virtio-balloon-pci>"}]})
    ('virtio-balloon', '/machine/peripheral/b0')
    >>> balloon_device({"/machine/peripheral-anon": [{"name": "device[0]", "type": "child<hv-balloon>"}]})
    ('hv-balloon', '/machine/peripheral-anon/device[0]')
    """
    for container in PERIPHERAL_PATHS:
        entries = listings.get(container)
        if not isinstance(entries, list):
            continue
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            name, kind = entry.get("name"), entry.get("type")
            if not isinstance(name, str) or not isinstance(kind, str) or not kind.startswith("child<"):
                continue
            if "hv-balloon" in kind:
                return "hv-balloon", f"{container}/{name}"
            if "virtio-balloon" in kind:
                return "virtio-balloon", f"{container}/{name}"
    return "none", ""


def memory_sizes(summary: Any, devices: Any) -> tuple[int, int]:
    """(boot bytes, maximum bytes) from ``query-memory-size-summary`` and ``query-memory-devices``.

    Boot memory is ``base-memory`` alone: QEMU counts an hv-balloon memory backend as plugged from
    boot, although the guest sees none of it until hot-add. The maximum adds each hv-balloon
    device's ``max-size`` (the most QEMU can hot-add); DIMMs already plugged count as boot memory.

    >>> memory_sizes({"base-memory": 1 << 30, "plugged-memory": 2 << 30},
    ...              [{"type": "hv-balloon", "data": {"max-size": 2 << 30, "memdev": "/objects/mem1"}}])
    (1073741824, 3221225472)
    """
    if not isinstance(summary, dict):
        raise ProbeError("query-memory-size-summary: not an object")
    base = _size(summary.get("base-memory"), "base-memory", allow_zero=False)
    if not isinstance(devices, list):
        raise ProbeError("query-memory-devices: not a list")
    boot, maxmem = base, base
    for dev in devices[:256]:
        if not isinstance(dev, dict) or not isinstance(dev.get("data"), dict):
            raise ProbeError("query-memory-devices: malformed entry")
        data = dev["data"]
        if dev.get("type") == "hv-balloon":
            maxmem += _size(data.get("max-size", 0), "hv-balloon max-size")
        elif dev.get("type") in ("dimm", "nvdimm", "virtio-mem", "virtio-pmem"):
            plugged = _size(data.get("size", data.get("size-bytes", 0)), "memory device size")
            boot += plugged
            maxmem += plugged
    return boot, min(maxmem, MAX_BYTES)


def actual_of(answer: Any) -> int:
    """``query-balloon`` / ``BALLOON_CHANGE`` data -> bytes."""
    if not isinstance(answer, dict):
        raise ProbeError("query-balloon: not an object")
    return _size(answer.get("actual"), "actual")


def hv_status(data: Any) -> tuple[int, int]:
    """``HV_BALLOON_STATUS_REPORT`` / ``query-hv-balloon-status-report`` -> (available, committed)."""
    if not isinstance(data, dict):
        raise ProbeError("status report: not an object")
    return _size(data.get("available"), "available"), _size(data.get("committed"), "committed")


def virtio_status(answer: Any, ballooned_bytes: int = 0) -> tuple[int, int] | None:
    """virtio ``guest-stats`` -> (available, committed), or None before the guest's first update.

    virtio-balloon reports no commit charge. hvdm maps: available = ``stat-available-memory``
    (the guest's MemAvailable, the same figure Linux's hv_balloon reports as available), and
    committed = ``stat-total-memory - stat-available-memory`` (memory in use) plus
    ``ballooned_bytes`` (virtio's total shrinks as the balloon inflates, while hv-balloon's
    committed counts ballooned pages: adding them back gives both devices one meaning). What
    virtio cannot give is the commit charge itself (Committed_AS: memory promised but not yet
    touched), so pressure reads lower on virtio than on hv-balloon for the same guest.

    >>> virtio_status({"stats": {"stat-available-memory": 3, "stat-total-memory": 10}, "last-update": 5}, 4)
    (3, 11)
    >>> virtio_status({"stats": {}, "last-update": 0}) is None
    True
    """
    if not isinstance(answer, dict) or not isinstance(answer.get("stats"), dict):
        raise ProbeError("guest-stats: not an object")
    if answer.get("last-update") in (0, None):
        return None
    stats = answer["stats"]
    available = stats.get("stat-available-memory")
    total = stats.get("stat-total-memory")
    unset = (None, -1, (1 << 64) - 1)  # QEMU shows a stat the guest never sent as -1 (u64 all ones)
    if available in unset or total in unset:
        return None  # the guest driver does not report them (an old kernel): no status
    available = _size(available, "stat-available-memory")
    total = _size(total, "stat-total-memory")
    return available, max(0, total - available) + max(0, ballooned_bytes)
