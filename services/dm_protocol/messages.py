"""The fifteen DM messages as immutable values, plus the facts about their fields.

Why frozen dataclasses: messages cross every boundary in hvdm (socket -> gateway -> event log ->
engine), so they must be hashable, comparable and impossible to mutate after decoding. Each field
carries its wire *kind* in the dataclass metadata; the binary codec and the JSON form both read that
one declaration, so the width of a field is written down exactly once.

Layouts are in ``codec.py``; this module knows nothing about byte offsets.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Union

from .reasons import DecodeReason

#: A page range as (start_page, page_count), pages of 4 KiB.
PageRange = tuple[int, int]

#: Exclusive upper bounds of the two halves of a wire page range (40-bit start, 24-bit count).
START_PAGE_LIMIT: Final = 1 << 40
PAGE_COUNT_LIMIT: Final = 1 << 24


class MessageType(enum.IntEnum):
    """The ``type`` u16 of the DM header (guest-behaviour.md 1.4)."""

    DM_ERROR = 0
    DM_VERSION_REQUEST = 1
    DM_VERSION_RESPONSE = 2
    DM_CAPABILITIES_REPORT = 3
    DM_CAPABILITIES_RESPONSE = 4
    DM_STATUS_REPORT = 5
    DM_BALLOON_REQUEST = 6
    DM_BALLOON_RESPONSE = 7
    DM_UNBALLOON_REQUEST = 8
    DM_UNBALLOON_RESPONSE = 9
    DM_MEM_HOT_ADD_REQUEST = 10
    DM_MEM_HOT_ADD_RESPONSE = 11
    DM_INFO_MESSAGE = 12
    DM_MEM_HOT_REMOVE_REQUEST = 13
    DM_MEM_HOT_REMOVE_RESPONSE = 14


class FieldKind(enum.Enum):
    """What a message field is on the wire; decides validation and its JSON shape."""

    U4 = "u4"
    U32 = "u32"
    U64 = "u64"
    BOOL = "bool"
    RANGE = "range"
    OPTIONAL_RANGE = "range|null"
    RANGES = "ranges"
    BYTES = "bytes"


#: Exclusive upper bound of each integer kind.
INT_LIMITS: Final[Mapping[FieldKind, int]] = {
    FieldKind.U4: 1 << 4,
    FieldKind.U32: 1 << 32,
    FieldKind.U64: 1 << 64,
}

_U4: Final = {"kind": FieldKind.U4}
_U32: Final = {"kind": FieldKind.U32}
_U64: Final = {"kind": FieldKind.U64}
_BOOL: Final = {"kind": FieldKind.BOOL}
_RANGE: Final = {"kind": FieldKind.RANGE}
_OPT_RANGE: Final = {"kind": FieldKind.OPTIONAL_RANGE}
_RANGES: Final = {"kind": FieldKind.RANGES}
_BYTES: Final = {"kind": FieldKind.BYTES}


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageBase:
    """Fields every message has.

    ``trans_id`` is the DM header's u32; it is not a correlation key (guest-behaviour.md 9.2).
    ``anomalies`` is filled by ``decode`` with ``RESERVED_BITS_SET`` when reserved bits or fields
    were non-zero: such a message is still usable, but ``encode`` of it would not reproduce the
    input bytes, and the engine may want to record that the guest is odd.
    """

    TYPE: ClassVar[MessageType]

    trans_id: int = field(default=0, metadata=_U32)
    anomalies: tuple[DecodeReason, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class DmError(MessageBase):
    """Type 0. Never sent by Linux; any bytes after the header are kept verbatim."""

    TYPE: ClassVar[MessageType] = MessageType.DM_ERROR
    data: bytes = field(default=b"", metadata=_BYTES)


@dataclass(frozen=True, slots=True, kw_only=True)
class VersionRequest(MessageBase):
    """Type 1, G->H. ``version`` is ``(major << 16) | minor``."""

    TYPE: ClassVar[MessageType] = MessageType.DM_VERSION_REQUEST
    version: int = field(metadata=_U32)
    is_last_attempt: bool = field(default=False, metadata=_BOOL)


@dataclass(frozen=True, slots=True, kw_only=True)
class VersionResponse(MessageBase):
    """Type 2, H->G."""

    TYPE: ClassVar[MessageType] = MessageType.DM_VERSION_RESPONSE
    is_accepted: bool = field(metadata=_BOOL)


@dataclass(frozen=True, slots=True, kw_only=True)
class CapabilitiesReport(MessageBase):
    """Type 3, G->H. ``hot_add_alignment`` n means units of 2**n MiB; ``hot_remove`` is caps bit 6."""

    TYPE: ClassVar[MessageType] = MessageType.DM_CAPABILITIES_REPORT
    balloon: bool = field(metadata=_BOOL)
    hot_add: bool = field(metadata=_BOOL)
    hot_add_alignment: int = field(metadata=_U4)
    hot_remove: bool = field(default=False, metadata=_BOOL)
    min_page_cnt: int = field(default=0, metadata=_U64)
    max_page_number: int = field(default=0xFFFFFFFFFFFFFFFF, metadata=_U64)


@dataclass(frozen=True, slots=True, kw_only=True)
class CapabilitiesResponse(MessageBase):
    """Type 4, H->G. Bits 1 and 2 are the protocol-2.0 extension; Linux reads bit 0 only."""

    TYPE: ClassVar[MessageType] = MessageType.DM_CAPABILITIES_RESPONSE
    is_accepted: bool = field(metadata=_BOOL)
    hot_remove: bool = field(default=False, metadata=_BOOL)
    suppress_pressure_reports: bool = field(default=False, metadata=_BOOL)


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusReport(MessageBase):
    """Type 5, G->H, unsolicited about once a second. Counts are 4 KiB pages."""

    TYPE: ClassVar[MessageType] = MessageType.DM_STATUS_REPORT
    num_avail: int = field(metadata=_U64)
    num_committed: int = field(metadata=_U64)
    page_file_size: int = field(default=0, metadata=_U64)
    zero_free: int = field(default=0, metadata=_U64)
    page_file_writes: int = field(default=0, metadata=_U32)
    io_diff: int = field(default=0, metadata=_U32)


@dataclass(frozen=True, slots=True, kw_only=True)
class BalloonRequest(MessageBase):
    """Type 6, H->G: ask the guest to give up ``num_pages`` pages."""

    TYPE: ClassVar[MessageType] = MessageType.DM_BALLOON_REQUEST
    num_pages: int = field(metadata=_U32)


@dataclass(frozen=True, slots=True, kw_only=True)
class BalloonResponse(MessageBase):
    """Type 7, G->H: pages the guest gave up; ``more_pages`` means another response follows."""

    TYPE: ClassVar[MessageType] = MessageType.DM_BALLOON_RESPONSE
    more_pages: bool = field(metadata=_BOOL)
    ranges: tuple[PageRange, ...] = field(metadata=_RANGES)


@dataclass(frozen=True, slots=True, kw_only=True)
class UnballoonRequest(MessageBase):
    """Type 8, H->G: pages given back; the guest answers only the one with ``more_pages`` False."""

    TYPE: ClassVar[MessageType] = MessageType.DM_UNBALLOON_REQUEST
    more_pages: bool = field(metadata=_BOOL)
    ranges: tuple[PageRange, ...] = field(metadata=_RANGES)


@dataclass(frozen=True, slots=True, kw_only=True)
class UnballoonResponse(MessageBase):
    """Type 9, G->H: header only."""

    TYPE: ClassVar[MessageType] = MessageType.DM_UNBALLOON_RESPONSE


@dataclass(frozen=True, slots=True, kw_only=True)
class HotAddRequest(MessageBase):
    """Type 10, H->G. ``region`` None is the 16-byte form; a region makes it 24 bytes."""

    TYPE: ClassVar[MessageType] = MessageType.DM_MEM_HOT_ADD_REQUEST
    range: PageRange = field(metadata=_RANGE)
    region: PageRange | None = field(default=None, metadata=_OPT_RANGE)


@dataclass(frozen=True, slots=True, kw_only=True)
class HotAddResponse(MessageBase):
    """Type 11, G->H. ``result`` 1 is success."""

    TYPE: ClassVar[MessageType] = MessageType.DM_MEM_HOT_ADD_RESPONSE
    page_count: int = field(metadata=_U32)
    result: int = field(metadata=_U32)


@dataclass(frozen=True, slots=True, kw_only=True)
class InfoMessage(MessageBase):
    """Type 12, H->G: one info blob (type 0 = MAX_PAGE_CNT with an 8-byte u64 ``data``)."""

    TYPE: ClassVar[MessageType] = MessageType.DM_INFO_MESSAGE
    info_type: int = field(metadata=_U32)
    data: bytes = field(metadata=_BYTES)


@dataclass(frozen=True, slots=True, kw_only=True)
class HotRemoveRequest(MessageBase):
    """Type 13, H->G (protocol-2.0 extension, not upstream Linux). ``qos_flags`` is kept whole."""

    TYPE: ClassVar[MessageType] = MessageType.DM_MEM_HOT_REMOVE_REQUEST
    virtual_node: int = field(metadata=_U32)
    page_count: int = field(metadata=_U32)
    qos_flags: int = field(metadata=_U32)


@dataclass(frozen=True, slots=True, kw_only=True)
class HotRemoveResponse(MessageBase):
    """Type 14, G->H (protocol-2.0 extension, never sent by upstream Linux)."""

    TYPE: ClassVar[MessageType] = MessageType.DM_MEM_HOT_REMOVE_RESPONSE
    result: int = field(metadata=_U32)
    more_pages: bool = field(metadata=_BOOL)
    ranges: tuple[PageRange, ...] = field(metadata=_RANGES)


Message = Union[  # noqa: UP007 -- a named alias of 15 classes reads better as Union[...]
    DmError,
    VersionRequest,
    VersionResponse,
    CapabilitiesReport,
    CapabilitiesResponse,
    StatusReport,
    BalloonRequest,
    BalloonResponse,
    UnballoonRequest,
    UnballoonResponse,
    HotAddRequest,
    HotAddResponse,
    InfoMessage,
    HotRemoveRequest,
    HotRemoveResponse,
]

#: The class of each message type; every ``MessageType`` member has exactly one.
MESSAGE_CLASSES: Final[dict[MessageType, type[Any]]] = {
    cls.TYPE: cls
    for cls in (
        DmError,
        VersionRequest,
        VersionResponse,
        CapabilitiesReport,
        CapabilitiesResponse,
        StatusReport,
        BalloonRequest,
        BalloonResponse,
        UnballoonRequest,
        UnballoonResponse,
        HotAddRequest,
        HotAddResponse,
        InfoMessage,
        HotRemoveRequest,
        HotRemoveResponse,
    )
}


def _wire_fields(cls: type[Any]) -> tuple[tuple[str, FieldKind], ...]:
    return tuple((f.name, f.metadata["kind"]) for f in dataclasses.fields(cls) if "kind" in f.metadata)


#: (field name, kind) of every field that travels on the wire, ``trans_id`` first, in declaration
#: order; computed once so validation and JSON conversion do not call ``dataclasses.fields`` per message.
WIRE_FIELDS: Final[Mapping[type[Any], tuple[tuple[str, FieldKind], ...]]] = {
    cls: _wire_fields(cls) for cls in MESSAGE_CLASSES.values()
}
