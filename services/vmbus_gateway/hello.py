"""The connection hello: one JSON line naming the VM, before any VMBus frame.

A real VMBus channel belongs to a VM by construction; a byte stream does not, so the first line
says which VM this is and how its memory is laid out. ``resume_after`` lets a guest whose channel
survived a gateway restart continue from the last host message it received, so no host message is
lost or repeated: host messages on a channel have consecutive outbox sequence numbers, the
gateway's answer says the one the connection starts after (``"delivered"``), and the guest counts
the frames it receives from there. ``token`` authenticates a TCP guest (see ``auth``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

MAX_HELLO_BYTES = 4096
_VM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class HelloError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Hello:
    vm: str
    boot_bytes: int
    maxmem_bytes: int
    hot_add_base_page: int | None = None
    status_reports: bool = True
    resume_after: int | None = None
    token: str | None = field(default=None, repr=False)

    def to_line(self) -> bytes:
        data: dict[str, Any] = {
            "hello": "hvdm/1",
            "vm": self.vm,
            "boot_bytes": self.boot_bytes,
            "maxmem_bytes": self.maxmem_bytes,
            "hot_add_base_page": self.hot_add_base_page,
            "status_reports": self.status_reports,
        }
        if self.resume_after is not None:
            data["resume_after"] = self.resume_after
        if self.token is not None:
            data["token"] = self.token
        return (json.dumps(data, separators=(",", ":")) + "\n").encode()


def parse_hello(line: bytes) -> Hello:
    """Validate a hello line; every problem is a HelloError with a one-line reason."""
    try:
        data = json.loads(line)
    except (ValueError, UnicodeDecodeError) as e:
        raise HelloError(f"hello is not JSON: {e}") from None
    if not isinstance(data, dict) or data.get("hello") != "hvdm/1":
        raise HelloError('hello must be a JSON object with "hello": "hvdm/1"')
    vm = data.get("vm")
    if not isinstance(vm, str) or not _VM_ID.fullmatch(vm):
        raise HelloError("vm must match [A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

    def _int(name: str, *, optional: bool = False) -> int | None:
        value = data.get(name)
        if value is None and optional:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise HelloError(f"{name} must be a non-negative integer")
        return value

    boot = _int("boot_bytes")
    maxmem = _int("maxmem_bytes")
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
    return Hello(
        vm=vm,
        boot_bytes=boot,
        maxmem_bytes=maxmem,
        hot_add_base_page=_int("hot_add_base_page", optional=True),
        status_reports=status,
        resume_after=_int("resume_after", optional=True),
        token=token,
    )
