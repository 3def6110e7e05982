"""Units every package counts in, defined once.

A page is 4 KiB: the DM protocol counts guest memory in 4 KiB pages on the wire (ranges, status
reports, balloon requests), QEMU's hv-balloon and Linux's hv_balloon do the same, and so does
every page count hvdm stores. Sizes for people are binary: MiB and GiB.
"""

from __future__ import annotations

from typing import Final

PAGE_SHIFT: Final = 12
PAGE_SIZE: Final = 1 << PAGE_SHIFT
MIB: Final = 1 << 20
GIB: Final = 1 << 30
