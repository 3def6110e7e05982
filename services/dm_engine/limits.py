"""The numbers hvdm can hold: one place every edge checks before a value enters the inbox.

Why one place: a number that the wire format or the log cannot represent must be refused where it
arrives (the gateway's hello, a QMP argument, a CLI flag, a Kafka envelope), with one clear error,
because once it is in the inbox every replay of the log meets it again. The bounds follow from
three facts:

* DM page ranges put the start page in 40 bits and the count in 24 (``dm_protocol.messages``), so a
  guest physical page number is below ``PAGE_LIMIT`` = 2**40 and memory the engine can name is
  below ``MAX_MEMORY_BYTES`` = 2**52 bytes (4 PiB). A hot-add window that ends above page 2**40
  could be described but never hot-added (the encoder refuses the range).
* Stored records are JSON read back by orjson, which keeps integers exact only up to 64 bits and
  returns anything larger as a float; SQLite integers are signed 64-bit. ``MAX_RECORD_INT`` is the
  largest integer any record field may hold.
* The engine places a hot-add window with no explicit base at a 32 GiB boundary above guest RAM,
  as QEMU does (``default_window_start``; a test keeps it in step with the engine).

>>> check_layout(4 << 30, 8 << 30, None)
>>> check_layout(4 << 30, 8 << 30, (1 << 40) - 1)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
services.dm_engine.limits.BoundsError: hot_add_base_page: the hot-add window [1099511627775, ...) ends beyond...
"""

from __future__ import annotations

import math
import re
from typing import Final

from ..dm_protocol.messages import PAGE_COUNT_LIMIT, START_PAGE_LIMIT
from ..units import PAGE_SHIFT, PAGE_SIZE
from ..vdimm_allocator.ram_layout import RamRanges, hot_add_window_start_page, legacy_ram_ranges

#: Exclusive bound of a guest page number (a DM range's 40-bit start page).
PAGE_LIMIT: Final = START_PAGE_LIMIT
MAX_PAGE_NUMBER: Final = PAGE_LIMIT - 1
#: Exclusive bound of the page count of one DM range (24 bits); longer spans are split by the engine.
RANGE_COUNT_LIMIT: Final = PAGE_COUNT_LIMIT
#: Largest memory size in bytes (boot, maxmem, balloon target, backend) the engine can express.
MAX_MEMORY_BYTES: Final = PAGE_LIMIT << PAGE_SHIFT
#: A memory backend can be at most all addressable memory (the allocator then needs it to fit the window).
MAX_BACKEND_BYTES: Final = MAX_MEMORY_BYTES
#: Integers a stored input may carry (signed 64-bit: SQLite and orjson keep them exact).
MAX_RECORD_INT: Final = (1 << 63) - 1
MIN_RECORD_INT: Final = -(1 << 63)
#: Default hot-add window alignment in pages (32 GiB), the same as the engine's ``WINDOW_ALIGN_PAGES``.
WINDOW_ALIGN_PAGES: Final = (32 << 30) >> PAGE_SHIFT
#: Deepest JSON nesting hvdm accepts from a peer. Its messages need fewer than 10 levels; QEMU allows
#: 1024, but Python's recursive decoder must stay far below the interpreter's recursion limit.
MAX_JSON_DEPTH: Final = 256


#: A VM id, matched against the whole string (``fullmatch``): ``"vm1\\n"`` is not ``vm1``, and a
#: newline in an id would split log lines.
VM_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def valid_vm_id(vm: object) -> bool:
    """A VM id hvdm accepts anywhere (hello, inbox envelopes, CLI).

    >>> valid_vm_id("vm1"), valid_vm_id("vm1\\n"), valid_vm_id("-x"), valid_vm_id(7)
    (True, False, False, False)
    """
    return isinstance(vm, str) and VM_ID.fullmatch(vm) is not None


#: A UUID in RFC 4122's canonical text form: 32 hex digits in groups of 8-4-4-4-12.
UUID_TEXT: Final = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
NIL_UUID: Final = "00000000-0000-0000-0000-000000000000"


def canonical_uuid(value: object) -> str:
    """A VM's UUID (SMBIOS / QEMU ``-uuid`` / libvirt ``<uuid>``) in canonical form: lower case.

    Only the canonical text form is taken (no braces, no ``urn:uuid:``, no missing hyphens), and
    not the nil UUID, which identifies nothing (QEMU answers it for a VM started without -uuid).
    Any version and variant are accepted: SMBIOS UUIDs set by hand need not follow RFC 4122's.

    >>> canonical_uuid("6B29FC40-CA47-1067-B31D-00DD010662DA")
    '6b29fc40-ca47-1067-b31d-00dd010662da'
    >>> canonical_uuid("{6b29fc40-ca47}")
    Traceback (most recent call last):
    ...
    ValueError: uuid must be a UUID in canonical form (8-4-4-4-12 hex digits), got '{6b29fc40-ca47}'
    """
    if not isinstance(value, str) or UUID_TEXT.fullmatch(value) is None:
        raise ValueError(f"uuid must be a UUID in canonical form (8-4-4-4-12 hex digits), got {str(value)[:64]!r}")
    if value == NIL_UUID:
        raise ValueError("uuid must not be the nil UUID (00000000-0000-0000-0000-000000000000)")
    return value.lower()


class BoundsError(ValueError):
    """A number outside what hvdm can hold; the message names the field and the bound."""


def is_int(value: object) -> bool:
    """An integer in the JSON sense: ``bool`` is an ``int`` subclass in Python but not a number here.

    >>> is_int(3), is_int(True), is_int(3.0)
    (True, False, False)
    """
    return type(value) is int


def check_int(name: str, value: object, low: int, high: int) -> int:
    """``value`` if it is an integer in ``[low, high]``, else ``BoundsError`` naming the field.

    >>> check_int("boot_bytes", 4096, 1, MAX_MEMORY_BYTES)
    4096
    >>> check_int("boot_bytes", 2**64, 1, 2**52)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    services.dm_engine.limits.BoundsError: boot_bytes must be an integer in [1, 4503599627370496], got 184467...
    """
    if not is_int(value):
        raise BoundsError(f"{name} must be an integer, got {type(value).__name__}")
    assert isinstance(value, int)
    if not low <= value <= high:
        raise BoundsError(f"{name} must be an integer in [{low}, {high}], got {_short(value)}")
    return value


def _short(value: int) -> str:
    """A hostile integer can have a million digits; an error message quotes only its size."""
    text = str(value) if value.bit_length() <= 256 else ""
    return text or f"an integer of {value.bit_length()} bits"


def default_window_start(boot_pages: int, ram: RamRanges = ()) -> int:
    """First page of the hot-add window when the hello gives none. The engine has placed it at
    boot RAM rounded up to 32 GiB, and QEMU places it above the RAM the PCI hole relocated
    (``ram_layout``); the later of the two, so a bound checked here holds for either placement.

    >>> default_window_start(1 << 20) == default_window_start(1 << 20, ((0, 1 << 19), (1 << 20, 1 << 19)))
    True
    """
    legacy = -(-boot_pages // WINDOW_ALIGN_PAGES) * WINDOW_ALIGN_PAGES
    return max(legacy, hot_add_window_start_page(ram or legacy_ram_ranges(boot_pages)))


def check_layout(boot_bytes: int, maxmem_bytes: int, hot_add_base_page: int | None, ram: RamRanges = ()) -> None:
    """Refuse a VM memory layout whose pages the wire format cannot name (a hello's rule).

    Boot RAM is ``boot_bytes``; the hot-add window has ``maxmem - boot`` pages from
    ``hot_add_base_page`` (or the default start), and its last page must be below 2**40.
    """
    check_int("boot_bytes", boot_bytes, PAGE_SIZE, MAX_MEMORY_BYTES)
    check_int("maxmem_bytes", maxmem_bytes, boot_bytes, MAX_MEMORY_BYTES)
    check_window(boot_bytes, maxmem_bytes, hot_add_base_page, ram)


def check_window(boot_bytes: int, maxmem_bytes: int, hot_add_base_page: int | None, ram: RamRanges = ()) -> None:
    """The part of :func:`check_layout` the engine itself depends on, for any ``ChannelOpened``:
    sizes it can name and a hot-add window whose pages the wire format can name. (The engine
    tolerates a maxmem below boot, reading it as "no hot-add", as it always has.)"""
    check_int("boot_bytes", boot_bytes, 0, MAX_MEMORY_BYTES)
    check_int("maxmem_bytes", maxmem_bytes, 0, MAX_MEMORY_BYTES)
    boot_pages = boot_bytes >> PAGE_SHIFT
    window = max(maxmem_bytes >> PAGE_SHIFT, boot_pages) - boot_pages
    if hot_add_base_page is None:
        start = default_window_start(boot_pages, ram)
        name = "maxmem_bytes"
    else:
        start = check_int("hot_add_base_page", hot_add_base_page, 0, MAX_PAGE_NUMBER)
        name = "hot_add_base_page"
    if start + window > PAGE_LIMIT:
        raise BoundsError(
            f"{name}: the hot-add window [{start}, {start + window}) ends beyond page 2**40 - 1, "
            "the last page a DM page range can name"
        )


def check_finite(name: str, value: float, low: float, high: float) -> float:
    """A float flag (speed, seconds) that is a real number in ``[low, high]``.

    >>> check_finite("speed", float("nan"), 1e-9, 1e6)
    Traceback (most recent call last):
    ...
    services.dm_engine.limits.BoundsError: speed must be a finite number in [1e-09, 1e+06], got nan
    """
    if not math.isfinite(value) or not low <= value <= high:
        raise BoundsError(f"{name} must be a finite number in [{low:g}, {high:g}], got {value!r}")
    return value


def json_too_deep(text: bytes | str, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when the JSON text nests arrays/objects more than ``limit`` deep (strings are skipped).

    Checked before decoding because Python's decoder recurses once per level: 100,000 nested lists
    from a peer would otherwise end in a ``RecursionError`` instead of a parse error.

    >>> json_too_deep(b"[" * 300 + b"]" * 300), json_too_deep('["[[[[", {"a": [1]}]', limit=3)
    (True, False)

    Runtime complexity: O(len(text)); texts with at most ``limit`` brackets are answered by two
    C-speed ``count`` calls.
    """
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    depth = 0
    in_string = escape = False
    for byte in data:
        if in_string:
            if escape:
                escape = False
            elif byte == 0x5C:  # backslash
                escape = True
            elif byte == 0x22:  # double quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte == 0x5B or byte == 0x7B:  # [ {
            depth += 1
            if depth > limit:
                return True
        elif byte == 0x5D or byte == 0x7D:  # ] }
            depth -= 1
    return False
