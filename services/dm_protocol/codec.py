"""Binary codec: DM message bytes <-> message values (layouts in guest-behaviour.md 1.5).

Why it is written this way:

* ``decode`` is the trust boundary for whatever a guest writes, so it is strict and total: every
  input either becomes a message or raises ``DecodeError`` with a reason code, never ``struct.error``
  or ``IndexError``. Checks run in a fixed, documented order so that one malformed message always
  yields the same reason:

  1. fewer than 8 bytes                                  -> TRUNCATED
  2. type not in 0..14                                   -> UNKNOWN_TYPE
  3. header ``size`` != number of bytes                  -> SIZE_MISMATCH
  4. fewer bytes than the type's fixed struct            -> TRUNCATED
  5. ``range_count * 8 + fixed`` != size                 -> RANGE_COUNT_MISMATCH
  6. hot-add request not 16 or 24 bytes, fixed-size
     message with extra bytes, info message whose
     ``info_size`` != size - 16 or ``data_size`` != info_size - 8  -> SIZE_MISMATCH

  Non-zero reserved bits do not fail decoding; the message carries ``RESERVED_BITS_SET`` in
  ``anomalies``. Hence the invariant the tests check: ``decode(b)`` has no anomalies exactly when
  ``encode(decode(b)) == b``.
* The hot path is a dispatch dict on the type and precompiled ``struct.Struct`` objects, so a
  16-byte message decodes in about a microsecond or two.
* Page ranges never go through a per-range ``unpack_from`` loop. ``bench/codec.py`` measures the
  alternatives (``iter_unpack``, ``array('Q')``, ``memoryview.cast``, ``int.from_bytes``, big-int
  masking, ...) against that naive loop. Two came out ahead, each in its own size band, so both are
  used: below ``_SLICE_MIN_RANGES`` one ``Struct("<nQ")`` call plus a list comprehension that
  splits each u64 (about 2x the naive loop); from there up, strided slice assignments de-interleave
  the 5-byte starts and 3-byte counts so that no Python bytecode runs per range (about 2.5-3x at
  510 ranges, over 10 M ranges/s). Both are byte-order independent, unlike ``array``/``cast``.
  The compiled layouts are cached per count; the u16 size bounds that cache at 8189 entries.
* ``encode`` validates every field against its declared kind (``messages.WIRE_FIELDS``) and raises
  ``EncodeError`` instead of silently truncating a value into a bitfield. It enforces only what the
  wire format can hold (u16 size); the 4096-byte payload limit of a Linux guest is a policy of the
  gateway and engine.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, Final

from .messages import (
    INT_LIMITS,
    PAGE_COUNT_LIMIT,
    START_PAGE_LIMIT,
    WIRE_FIELDS,
    BalloonRequest,
    BalloonResponse,
    CapabilitiesReport,
    CapabilitiesResponse,
    DmError,
    FieldKind,
    HotAddRequest,
    HotAddResponse,
    HotRemoveRequest,
    HotRemoveResponse,
    InfoMessage,
    Message,
    MessageType,
    PageRange,
    StatusReport,
    UnballoonRequest,
    UnballoonResponse,
    VersionRequest,
    VersionResponse,
)
from .reasons import DecodeError, DecodeReason, EncodeError

Buffer = bytes | bytearray | memoryview

HEADER_SIZE: Final = 8
#: Largest DM message the u16 ``size`` field can describe.
MAX_MESSAGE_SIZE: Final = 0xFFFF

_START_MASK: Final = START_PAGE_LIMIT - 1
_RESERVED: Final = (DecodeReason.RESERVED_BITS_SET,)
_NO_ANOMALIES: tuple[DecodeReason, ...] = ()

_TRUNCATED: Final = DecodeReason.TRUNCATED
_SIZE_MISMATCH: Final = DecodeReason.SIZE_MISMATCH
_RANGE_COUNT_MISMATCH: Final = DecodeReason.RANGE_COUNT_MISMATCH

# Precompiled layouts. Decoding reads the body at offset 8; encoding packs header and body at once.
_HEADER: Final = struct.Struct("<HHI")
_BODY_II: Final = struct.Struct("<II")
_BODY_Q: Final = struct.Struct("<Q")
_BODY_QQ: Final = struct.Struct("<QQ")
_BODY_QQQ: Final = struct.Struct("<QQQ")
_BODY_STATUS: Final = struct.Struct("<QQQQII")
_BODY_IIII: Final = struct.Struct("<IIII")
_BODY_IIQ: Final = struct.Struct("<IIQ")
_MSG_II: Final = struct.Struct("<HHIII")
_MSG_Q: Final = struct.Struct("<HHIQ")
_MSG_QQ: Final = struct.Struct("<HHIQQ")
_MSG_QQQ: Final = struct.Struct("<HHIQQQ")
_MSG_STATUS: Final = struct.Struct("<HHIQQQQII")
_MSG_IIII: Final = struct.Struct("<HHIIIII")
_MSG_IIQ: Final = struct.Struct("<HHIIIQ")

_RANGE_STRUCTS: dict[int, struct.Struct] = {}
_COUNT_STRUCTS: dict[int, struct.Struct] = {}

#: From this many ranges on, slice de-interleaving beats the comprehension (crossover measured at
#: 64-128 ranges by bench/codec.py; below it the slicing set-up cost dominates).
_SLICE_MIN_RANGES: Final = 128


def _ranges_struct(count: int) -> struct.Struct:
    """The ``<{count}Q`` layout, compiled once per count (at most 8190 distinct counts exist)."""
    layout = _RANGE_STRUCTS.get(count)
    if layout is None:
        layout = _RANGE_STRUCTS[count] = struct.Struct(f"<{count}Q")
    return layout


def _counts_struct(count: int) -> struct.Struct:
    layout = _COUNT_STRUCTS.get(count)
    if layout is None:
        layout = _COUNT_STRUCTS[count] = struct.Struct(f"<{count}I")
    return layout


# --------------------------------------------------------------------------------------------- decode


def _unpack_ranges(data: Buffer, offset: int, count: int) -> tuple[PageRange, ...]:
    """``count`` page ranges at ``offset``; the caller has checked they are all present.

    >>> _unpack_ranges(bytes.fromhex("0000040000000200"), 0, 1)
    ((262144, 512),)
    """
    if count < _SLICE_MIN_RANGES:
        if not count:
            return ()
        mask = _START_MASK  # local: read once per element in the comprehension below
        return tuple([(word & mask, word >> 40) for word in _ranges_struct(count).unpack_from(data, offset)])
    # Bytes 0-4 of each range are start_page, 5-7 page_count. Zeroing 5-7 in a copy leaves the starts
    # as u64s; gathering 5-7 into 4-byte slots gives the counts as u32s. All loops run in C.
    body = bytes(data[offset : offset + 8 * count])
    starts = bytearray(body)
    zeros = bytes(count)
    starts[5::8] = zeros
    starts[6::8] = zeros
    starts[7::8] = zeros
    counts = bytearray(4 * count)
    counts[0::4] = body[5::8]
    counts[1::4] = body[6::8]
    counts[2::4] = body[7::8]
    return tuple(zip(_ranges_struct(count).unpack(starts), _counts_struct(count).unpack(counts), strict=True))


def _fixed(n: int, fixed: int, name: str) -> None:
    """Steps 4 and 6 for a fixed-size message."""
    if n < fixed:
        raise DecodeError(_TRUNCATED, f"{name} needs {fixed} bytes, got {n}")
    if n != fixed:
        raise DecodeError(_SIZE_MISMATCH, f"{name} is {fixed} bytes, got {n}")


def _at_least(n: int, fixed: int, name: str) -> None:
    if n < fixed:
        raise DecodeError(_TRUNCATED, f"{name} needs at least {fixed} bytes, got {n}")


def _count_matches(n: int, fixed: int, count: int, name: str) -> None:
    if fixed + 8 * count != n:
        raise DecodeError(
            _RANGE_COUNT_MISMATCH, f"{name} range_count {count} needs {fixed + 8 * count} bytes, size is {n}"
        )


def _dec_error(data: Buffer, n: int, trans_id: int) -> Message:
    return DmError(trans_id=trans_id, data=bytes(data[HEADER_SIZE:n]))


def _dec_version_request(data: Buffer, n: int, trans_id: int) -> Message:
    _fixed(n, 16, "VERSION_REQUEST")
    version, word = _BODY_II.unpack_from(data, 8)
    return VersionRequest(
        trans_id=trans_id,
        version=version,
        is_last_attempt=bool(word & 1),
        anomalies=_RESERVED if word >> 1 else _NO_ANOMALIES,
    )


def _dec_version_response(data: Buffer, n: int, trans_id: int) -> Message:
    _fixed(n, 16, "VERSION_RESPONSE")
    (word,) = _BODY_Q.unpack_from(data, 8)
    return VersionResponse(
        trans_id=trans_id, is_accepted=bool(word & 1), anomalies=_RESERVED if word >> 1 else _NO_ANOMALIES
    )


def _dec_capabilities_report(data: Buffer, n: int, trans_id: int) -> Message:
    _fixed(n, 32, "CAPABILITIES_REPORT")
    caps, min_page_cnt, max_page_number = _BODY_QQQ.unpack_from(data, 8)
    return CapabilitiesReport(
        trans_id=trans_id,
        balloon=bool(caps & 1),
        hot_add=bool(caps & 2),
        hot_add_alignment=(caps >> 2) & 0xF,
        hot_remove=bool(caps & 0x40),
        min_page_cnt=min_page_cnt,
        max_page_number=max_page_number,
        anomalies=_RESERVED if caps >> 7 else _NO_ANOMALIES,
    )


def _dec_capabilities_response(data: Buffer, n: int, trans_id: int) -> Message:
    _fixed(n, 16, "CAPABILITIES_RESPONSE")
    (word,) = _BODY_Q.unpack_from(data, 8)
    return CapabilitiesResponse(
        trans_id=trans_id,
        is_accepted=bool(word & 1),
        hot_remove=bool(word & 2),
        suppress_pressure_reports=bool(word & 4),
        anomalies=_RESERVED if word >> 3 else _NO_ANOMALIES,
    )


def _dec_status_report(data: Buffer, n: int, trans_id: int) -> Message:
    _fixed(n, 48, "STATUS_REPORT")
    avail, committed, page_file_size, zero_free, writes, io_diff = _BODY_STATUS.unpack_from(data, 8)
    return StatusReport(
        trans_id=trans_id,
        num_avail=avail,
        num_committed=committed,
        page_file_size=page_file_size,
        zero_free=zero_free,
        page_file_writes=writes,
        io_diff=io_diff,
    )


def _dec_balloon_request(data: Buffer, n: int, trans_id: int) -> Message:
    _fixed(n, 16, "BALLOON_REQUEST")
    num_pages, reserved = _BODY_II.unpack_from(data, 8)
    return BalloonRequest(trans_id=trans_id, num_pages=num_pages, anomalies=_RESERVED if reserved else _NO_ANOMALIES)


def _dec_balloon_response(data: Buffer, n: int, trans_id: int) -> Message:
    _at_least(n, 16, "BALLOON_RESPONSE")
    reserved, word = _BODY_II.unpack_from(data, 8)
    count = word >> 1
    _count_matches(n, 16, count, "BALLOON_RESPONSE")
    return BalloonResponse(
        trans_id=trans_id,
        more_pages=bool(word & 1),
        ranges=_unpack_ranges(data, 16, count),
        anomalies=_RESERVED if reserved else _NO_ANOMALIES,
    )


def _dec_unballoon_request(data: Buffer, n: int, trans_id: int) -> Message:
    _at_least(n, 16, "UNBALLOON_REQUEST")
    word, count = _BODY_II.unpack_from(data, 8)
    _count_matches(n, 16, count, "UNBALLOON_REQUEST")
    return UnballoonRequest(
        trans_id=trans_id,
        more_pages=bool(word & 1),
        ranges=_unpack_ranges(data, 16, count),
        anomalies=_RESERVED if word >> 1 else _NO_ANOMALIES,
    )


def _dec_unballoon_response(data: Buffer, n: int, trans_id: int) -> Message:
    _fixed(n, 8, "UNBALLOON_RESPONSE")
    return UnballoonResponse(trans_id=trans_id)


def _dec_hot_add_request(data: Buffer, n: int, trans_id: int) -> Message:
    _at_least(n, 16, "MEM_HOT_ADD_REQUEST")
    if n == 16:
        (word,) = _BODY_Q.unpack_from(data, 8)
        return HotAddRequest(trans_id=trans_id, range=(word & _START_MASK, word >> 40))
    if n == 24:
        word, region = _BODY_QQ.unpack_from(data, 8)
        return HotAddRequest(
            trans_id=trans_id,
            range=(word & _START_MASK, word >> 40),
            region=(region & _START_MASK, region >> 40),
        )
    # Linux would read a region from any size other than 16; we refuse to guess (guest-behaviour 9.11).
    raise DecodeError(_SIZE_MISMATCH, f"MEM_HOT_ADD_REQUEST is 16 or 24 bytes, got {n}")


def _dec_hot_add_response(data: Buffer, n: int, trans_id: int) -> Message:
    _fixed(n, 16, "MEM_HOT_ADD_RESPONSE")
    page_count, result = _BODY_II.unpack_from(data, 8)
    return HotAddResponse(trans_id=trans_id, page_count=page_count, result=result)


def _dec_info_message(data: Buffer, n: int, trans_id: int) -> Message:
    # Linux ignores info_size and reads only the first blob; we accept exactly one blob whose two
    # length fields both agree with the message size, so that encode(decode(b)) == b.
    _at_least(n, 24, "INFO_MESSAGE")
    reserved, info_size, info_type, data_size = _BODY_IIII.unpack_from(data, 8)
    if info_size != n - 16:
        raise DecodeError(_SIZE_MISMATCH, f"INFO_MESSAGE info_size {info_size}, but {n - 16} bytes follow it")
    if data_size != info_size - 8:
        raise DecodeError(_SIZE_MISMATCH, f"INFO_MESSAGE data_size {data_size}, but {n - 24} bytes follow it")
    return InfoMessage(
        trans_id=trans_id,
        info_type=info_type,
        data=bytes(data[24:n]),
        anomalies=_RESERVED if reserved else _NO_ANOMALIES,
    )


def _dec_hot_remove_request(data: Buffer, n: int, trans_id: int) -> Message:
    _fixed(n, 24, "MEM_HOT_REMOVE_REQUEST")
    virtual_node, page_count, qos_flags, reserved = _BODY_IIII.unpack_from(data, 8)
    return HotRemoveRequest(
        trans_id=trans_id,
        virtual_node=virtual_node,
        page_count=page_count,
        qos_flags=qos_flags,
        anomalies=_RESERVED if reserved else _NO_ANOMALIES,
    )


def _dec_hot_remove_response(data: Buffer, n: int, trans_id: int) -> Message:
    _at_least(n, 24, "MEM_HOT_REMOVE_RESPONSE")
    result, count, word = _BODY_IIQ.unpack_from(data, 8)
    _count_matches(n, 24, count, "MEM_HOT_REMOVE_RESPONSE")
    return HotRemoveResponse(
        trans_id=trans_id,
        result=result,
        more_pages=bool(word & 1),
        ranges=_unpack_ranges(data, 24, count),
        anomalies=_RESERVED if word >> 1 else _NO_ANOMALIES,
    )


_Decoder = Callable[[Buffer, int, int], Message]

#: Indexed by the raw u16 type; a dict ``get`` is the cheapest "is this a known type" check.
_DECODERS: Final[dict[int, _Decoder]] = {
    MessageType.DM_ERROR: _dec_error,
    MessageType.DM_VERSION_REQUEST: _dec_version_request,
    MessageType.DM_VERSION_RESPONSE: _dec_version_response,
    MessageType.DM_CAPABILITIES_REPORT: _dec_capabilities_report,
    MessageType.DM_CAPABILITIES_RESPONSE: _dec_capabilities_response,
    MessageType.DM_STATUS_REPORT: _dec_status_report,
    MessageType.DM_BALLOON_REQUEST: _dec_balloon_request,
    MessageType.DM_BALLOON_RESPONSE: _dec_balloon_response,
    MessageType.DM_UNBALLOON_REQUEST: _dec_unballoon_request,
    MessageType.DM_UNBALLOON_RESPONSE: _dec_unballoon_response,
    MessageType.DM_MEM_HOT_ADD_REQUEST: _dec_hot_add_request,
    MessageType.DM_MEM_HOT_ADD_RESPONSE: _dec_hot_add_response,
    MessageType.DM_INFO_MESSAGE: _dec_info_message,
    MessageType.DM_MEM_HOT_REMOVE_REQUEST: _dec_hot_remove_request,
    MessageType.DM_MEM_HOT_REMOVE_RESPONSE: _dec_hot_remove_response,
}


def decode(data: Buffer) -> Message:
    """Decode exactly one DM message (no VMBus descriptor, no padding).

    Raises ``DecodeError`` (and nothing else) for any malformed input; see the module docstring
    for the order of checks.

    >>> decode(bytes.fromhex("0b0010000b0000000080000001000000"))
    HotAddResponse(trans_id=11, anomalies=(), page_count=32768, result=1)
    """
    if type(data) is memoryview and (data.itemsize != 1 or data.ndim != 1):
        data = data.tobytes()  # a view of non-bytes items: len() would not count bytes
    n = len(data)
    if n < HEADER_SIZE:
        raise DecodeError(_TRUNCATED, f"{n} bytes is shorter than the 8-byte DM header")
    msg_type, size, trans_id = _HEADER.unpack_from(data)
    decoder = _DECODERS.get(msg_type)
    if decoder is None:
        raise DecodeError(DecodeReason.UNKNOWN_TYPE, f"message type {msg_type}")
    if size != n:
        raise DecodeError(_SIZE_MISMATCH, f"header size {size}, but {n} bytes were received")
    return decoder(data, n, trans_id)


# --------------------------------------------------------------------------------------------- encode


def _range_word(value: Any, name: str) -> int:
    """One page range as its u64; raises RANGE_OUT_OF_BOUNDS for anything that is not a valid pair."""
    try:
        start, count = value
        if 0 <= start < START_PAGE_LIMIT and 0 <= count < PAGE_COUNT_LIMIT:
            word: int = start | (count << 40)
            return word
    except (TypeError, ValueError):
        pass
    raise EncodeError(
        DecodeReason.RANGE_OUT_OF_BOUNDS,
        f"{name} {value!r}: need start_page < 2**40 and page_count < 2**24, both non-negative ints",
    )


def _pack_ranges(ranges: Any) -> tuple[int, bytes]:
    """(count, packed bytes) for a ranges field, validated in the same pass that packs it."""
    try:
        count = len(ranges)
        words = [s | (c << 40) if 0 <= s < START_PAGE_LIMIT and 0 <= c < PAGE_COUNT_LIMIT else -1 for s, c in ranges]
        return count, _ranges_struct(count).pack(*words)
    except (TypeError, ValueError, struct.error):
        pass
    # Slow path only for the error message: find the first offending range.
    for index, item in enumerate(ranges):
        _range_word(item, f"ranges[{index}]")
    raise EncodeError(DecodeReason.RANGE_OUT_OF_BOUNDS, f"ranges {ranges!r} is not a sequence of pairs")


def _check_fields(msg: Any) -> None:
    """Validate every wire field except ``ranges`` (checked while packing) against its kind."""
    for name, kind in WIRE_FIELDS[type(msg)]:
        value = getattr(msg, name)
        limit = INT_LIMITS.get(kind)
        if limit is not None:
            if not isinstance(value, int) or not 0 <= value < limit:
                raise EncodeError(DecodeReason.FIELD_OUT_OF_BOUNDS, f"{name}={value!r} is not an int in [0, {limit})")
        elif kind is FieldKind.BOOL:
            if value is not True and value is not False and value not in (0, 1):
                raise EncodeError(DecodeReason.FIELD_OUT_OF_BOUNDS, f"{name}={value!r} is not a bool")
        elif kind is FieldKind.RANGE or (kind is FieldKind.OPTIONAL_RANGE and value is not None):
            _range_word(value, name)
        elif kind is FieldKind.BYTES and not isinstance(value, bytes | bytearray | memoryview):
            raise EncodeError(DecodeReason.FIELD_OUT_OF_BOUNDS, f"{name}={value!r} is not bytes")


def _size(size: int, name: str) -> int:
    if size > MAX_MESSAGE_SIZE:
        raise EncodeError(DecodeReason.FIELD_OUT_OF_BOUNDS, f"{name} would be {size} bytes; the u16 size allows 65535")
    return size


def _enc_error(m: DmError) -> bytes:
    data = bytes(m.data)
    return _HEADER.pack(0, _size(8 + len(data), "DM_ERROR"), m.trans_id) + data


def _enc_version_request(m: VersionRequest) -> bytes:
    return _MSG_II.pack(1, 16, m.trans_id, m.version, 1 if m.is_last_attempt else 0)


def _enc_version_response(m: VersionResponse) -> bytes:
    return _MSG_Q.pack(2, 16, m.trans_id, 1 if m.is_accepted else 0)


def _enc_capabilities_report(m: CapabilitiesReport) -> bytes:
    caps = (
        (1 if m.balloon else 0) | (2 if m.hot_add else 0) | (m.hot_add_alignment << 2) | (0x40 if m.hot_remove else 0)
    )
    return _MSG_QQQ.pack(3, 32, m.trans_id, caps, m.min_page_cnt, m.max_page_number)


def _enc_capabilities_response(m: CapabilitiesResponse) -> bytes:
    word = (1 if m.is_accepted else 0) | (2 if m.hot_remove else 0) | (4 if m.suppress_pressure_reports else 0)
    return _MSG_Q.pack(4, 16, m.trans_id, word)


def _enc_status_report(m: StatusReport) -> bytes:
    return _MSG_STATUS.pack(
        5,
        48,
        m.trans_id,
        m.num_avail,
        m.num_committed,
        m.page_file_size,
        m.zero_free,
        m.page_file_writes,
        m.io_diff,
    )


def _enc_balloon_request(m: BalloonRequest) -> bytes:
    return _MSG_II.pack(6, 16, m.trans_id, m.num_pages, 0)


def _enc_balloon_response(m: BalloonResponse) -> bytes:
    count, packed = _pack_ranges(m.ranges)
    size = _size(16 + 8 * count, "BALLOON_RESPONSE")
    return _MSG_II.pack(7, size, m.trans_id, 0, (1 if m.more_pages else 0) | (count << 1)) + packed


def _enc_unballoon_request(m: UnballoonRequest) -> bytes:
    count, packed = _pack_ranges(m.ranges)
    size = _size(16 + 8 * count, "UNBALLOON_REQUEST")
    return _MSG_II.pack(8, size, m.trans_id, 1 if m.more_pages else 0, count) + packed


def _enc_unballoon_response(m: UnballoonResponse) -> bytes:
    return _HEADER.pack(9, 8, m.trans_id)


def _enc_hot_add_request(m: HotAddRequest) -> bytes:
    start, count = m.range
    if m.region is None:
        return _MSG_Q.pack(10, 16, m.trans_id, start | (count << 40))
    region_start, region_count = m.region
    return _MSG_QQ.pack(10, 24, m.trans_id, start | (count << 40), region_start | (region_count << 40))


def _enc_hot_add_response(m: HotAddResponse) -> bytes:
    return _MSG_II.pack(11, 16, m.trans_id, m.page_count, m.result)


def _enc_info_message(m: InfoMessage) -> bytes:
    data = bytes(m.data)
    size = _size(24 + len(data), "INFO_MESSAGE")
    return _MSG_IIII.pack(12, size, m.trans_id, 0, 8 + len(data), m.info_type, len(data)) + data


def _enc_hot_remove_request(m: HotRemoveRequest) -> bytes:
    return _MSG_IIII.pack(13, 24, m.trans_id, m.virtual_node, m.page_count, m.qos_flags, 0)


def _enc_hot_remove_response(m: HotRemoveResponse) -> bytes:
    count, packed = _pack_ranges(m.ranges)
    size = _size(24 + 8 * count, "MEM_HOT_REMOVE_RESPONSE")
    return _MSG_IIQ.pack(14, size, m.trans_id, m.result, count, 1 if m.more_pages else 0) + packed


_ENCODERS: Final[dict[type[Any], Callable[[Any], bytes]]] = {
    DmError: _enc_error,
    VersionRequest: _enc_version_request,
    VersionResponse: _enc_version_response,
    CapabilitiesReport: _enc_capabilities_report,
    CapabilitiesResponse: _enc_capabilities_response,
    StatusReport: _enc_status_report,
    BalloonRequest: _enc_balloon_request,
    BalloonResponse: _enc_balloon_response,
    UnballoonRequest: _enc_unballoon_request,
    UnballoonResponse: _enc_unballoon_response,
    HotAddRequest: _enc_hot_add_request,
    HotAddResponse: _enc_hot_add_response,
    InfoMessage: _enc_info_message,
    HotRemoveRequest: _enc_hot_remove_request,
    HotRemoveResponse: _enc_hot_remove_response,
}


def encode(msg: Message) -> bytes:
    """The exact wire bytes of ``msg``; ``anomalies`` are not encoded (reserved bits are written as 0).

    Raises ``EncodeError`` (RANGE_OUT_OF_BOUNDS or FIELD_OUT_OF_BOUNDS) for values the wire cannot
    carry, and ``TypeError`` for an object that is not a DM message (a programming error).

    >>> encode(BalloonRequest(trans_id=3, num_pages=512)).hex()
    '06001000030000000002000000000000'
    """
    encoder = _ENCODERS.get(type(msg))
    if encoder is None:
        raise TypeError(f"not a DM message: {type(msg).__name__}")
    _check_fields(msg)
    return encoder(msg)
