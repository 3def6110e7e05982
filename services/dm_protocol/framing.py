"""VMBus in-band packet framing, so DM messages can travel over a byte stream (guest-behaviour.md 10).

A packet is a 16-byte descriptor (u16 type = 6, u16 offset8 = 2, u16 len8, u16 flags, u64 trans_id),
the DM message, zero padding to a multiple of 8 and, optionally, the 8-byte ring trailer
``u64(start_offset << 32)`` that Linux's ring writer appends (not counted in len8).

Why the reader distinguishes two kinds of bad packet:

* a descriptor whose *length* is usable but whose type or offset is wrong still tells us where the
  next packet starts, so the reader yields a ``Frame`` with ``error`` set and keeps going (the
  engine records a violation, the connection survives);
* a length below the descriptor size or a payload above ``max_payload`` leaves no trustworthy
  boundary (and an honest Linux guest never produces one), so ``feed`` raises ``FramingError``
  and the reader refuses any further input; the caller closes the connection.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final, NoReturn

from .reasons import DecodeError, DecodeReason, EncodeError

VM_PKT_DATA_INBAND: Final = 6
DESCRIPTOR_SIZE: Final = 16
TRAILER_SIZE: Final = 8
#: A Linux guest receives into a 4096-byte buffer (guest-behaviour.md 9.12).
MAX_DM_PAYLOAD: Final = 4096

_DESCRIPTOR: Final = struct.Struct("<HHHHQ")
_TRAILER: Final = struct.Struct("<Q")
_DM_SIZE: Final = struct.Struct("<H")  # the DM header's size field, at offset 2
_DM_TRANS_ID: Final = struct.Struct("<I")  # the DM header's trans_id field, at offset 4
_MAX_LEN8: Final = 0xFFFF


@dataclass(frozen=True, slots=True)
class Frame:
    """One packet read from the stream.

    ``payload`` is bytes ``[offset8*8, len8*8)`` as Linux hands it to hv_balloon, padding
    included; use ``dm_message_bytes`` before ``decode``. When ``error`` is BAD_PACKET_OFFSET the
    payload is taken from byte 16, as Linux forces a bad offset to the descriptor size.
    ``trailer_offset`` is the ring offset from the trailer (upper 32 bits) when the reader expects
    trailers, else None.
    """

    payload: bytes
    packet_type: int
    flags: int
    trans_id: int
    error: DecodeReason | None = None
    trailer_offset: int | None = None


class FramingError(DecodeError):
    """The stream is unusable from here on. ``frames`` are the good frames that preceded the break
    in the same ``feed`` call, so messages received before the corruption are not lost."""

    frames: tuple[Frame, ...]

    def __init__(self, reason: DecodeReason, detail: str = "", frames: tuple[Frame, ...] = ()) -> None:
        super().__init__(reason, detail)
        self.frames = frames


def frame(payload: bytes, *, trans_id: int = 0, flags: int = 0, trailer_offset: int | None = None) -> bytes:
    """Wrap a DM message in an in-band packet, zero padded to 8, with an optional ring trailer.

    The payload limit of a Linux guest (4096) is not enforced here so that tests can build
    oversized packets; only what the descriptor fields can hold is.

    >>> frame(bytes.fromhex("01001000010000000000020000000000")).hex()
    '0600020004000000000000000000000001001000010000000000020000000000'
    """
    pad = -len(payload) % 8
    len8 = (DESCRIPTOR_SIZE + len(payload) + pad) // 8
    if len8 > _MAX_LEN8:
        raise EncodeError(DecodeReason.FIELD_OUT_OF_BOUNDS, f"payload of {len(payload)} bytes overflows len8")
    if not 0 <= flags <= 0xFFFF:
        raise EncodeError(DecodeReason.FIELD_OUT_OF_BOUNDS, f"flags={flags} is not a u16")
    if not 0 <= trans_id < 1 << 64:
        raise EncodeError(DecodeReason.FIELD_OUT_OF_BOUNDS, f"trans_id={trans_id} is not a u64")
    packet = _DESCRIPTOR.pack(VM_PKT_DATA_INBAND, DESCRIPTOR_SIZE // 8, len8, flags, trans_id)
    packet += bytes(payload) + bytes(pad)
    if trailer_offset is not None:
        if not 0 <= trailer_offset < 1 << 32:
            raise EncodeError(DecodeReason.FIELD_OUT_OF_BOUNDS, f"trailer_offset={trailer_offset} is not a u32")
        packet += _TRAILER.pack(trailer_offset << 32)
    return packet


def dm_trans_id(message: bytes) -> int:
    """The DM header's trans_id, which a host packet's descriptor carries as its own trans_id.

    QEMU's hv-balloon passes the message's trans_id to the VMBus send (``hv_balloon_send_packet``),
    so a host frame says which DM transaction it belongs to; 0 for a message too short to have one.

    >>> dm_trans_id(bytes.fromhex("0900080007000000"))
    7
    """
    if len(message) < 8:
        return 0
    return int(_DM_TRANS_ID.unpack_from(message, 4)[0])


def dm_message_bytes(frame_payload: bytes) -> bytes:
    """Trim a frame payload to the DM message it carries, so ``decode`` can stay strict.

    The payload includes the packet's padding. When the DM header's size is smaller than the
    payload by fewer than 8 bytes and those bytes are all zero, they are padding and are cut off.
    Anything else is returned unchanged, so ``decode`` reports the mismatch itself.

    >>> dm_message_bytes(bytes.fromhex("0c000c00000000000000000000000000")).hex()
    '0c000c000000000000000000'
    """
    n = len(frame_payload)
    if n < 8:
        return frame_payload
    (size,) = _DM_SIZE.unpack_from(frame_payload, 2)
    if size < n and n - size < 8 and not any(frame_payload[size:]):
        return frame_payload[:size]
    return frame_payload


class FrameReader:
    """Cut a byte stream into ``Frame`` objects, whatever the read boundaries are.

    Bytes are appended to one ``bytearray``; complete packets are parsed at a moving offset and
    the consumed prefix is dropped once per ``feed``, so each byte is copied O(1) times and even a
    stream fed one byte at a time costs O(n) overall. At most one packet (<= 16 + max_payload +
    trailer bytes) stays buffered, because the length check happens as soon as a descriptor has
    arrived, not when its whole packet has.

    >>> reader = FrameReader()
    >>> packet = frame(bytes.fromhex("0900080007000000"))
    >>> reader.feed(packet[:5]), reader.pending_bytes
    ([], 5)
    >>> [f.payload.hex() for f in reader.feed(packet[5:])]
    ['0900080007000000']
    """

    def __init__(self, max_payload: int = MAX_DM_PAYLOAD, trailer: bool = False) -> None:
        self._max_payload = max_payload
        self._trailer = TRAILER_SIZE if trailer else 0
        self._buffer = bytearray()
        self._failure: FramingError | None = None

    @property
    def pending_bytes(self) -> int:
        """Bytes received but not yet part of a returned frame."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Append ``data`` and return every frame it completed, in stream order.

        Raises ``FramingError`` (a ``DecodeError``: BAD_PACKET_LENGTH or FRAME_TOO_LARGE) when the
        stream cannot continue, and again on every later call.
        """
        if self._failure is not None:
            raise FramingError(self._failure.reason, f"stream already failed: {self._failure.detail}")
        buffer = self._buffer
        buffer += data
        end = len(buffer)
        trailer = self._trailer
        frames: list[Frame] = []
        pos = 0
        while end - pos >= DESCRIPTOR_SIZE:
            packet_type, offset8, len8, flags, trans_id = _DESCRIPTOR.unpack_from(buffer, pos)
            length = len8 * 8
            offset = offset8 * 8
            offset_ok = DESCRIPTOR_SIZE <= offset <= length
            if length < DESCRIPTOR_SIZE:
                self._fail(DecodeReason.BAD_PACKET_LENGTH, f"len8={len8} is shorter than the descriptor", frames)
            payload_size = length - (offset if offset_ok else DESCRIPTOR_SIZE)
            if payload_size > self._max_payload:
                self._fail(
                    DecodeReason.FRAME_TOO_LARGE,
                    f"payload of {payload_size} bytes exceeds {self._max_payload}",
                    frames,
                )
            if end - pos < length + trailer:
                break
            error: DecodeReason | None = None
            if packet_type != VM_PKT_DATA_INBAND:
                error = DecodeReason.BAD_PACKET_TYPE
            elif not offset_ok:
                error = DecodeReason.BAD_PACKET_OFFSET
            start = pos + (offset if offset_ok else DESCRIPTOR_SIZE)
            trailer_offset = None
            if trailer:
                trailer_offset = _TRAILER.unpack_from(buffer, pos + length)[0] >> 32
            payload = bytes(buffer[start : pos + length])
            frames.append(Frame(payload, packet_type, flags, trans_id, error, trailer_offset))
            pos += length + trailer
        if pos:
            del buffer[:pos]  # once per feed: what remains is less than one packet
        return frames

    def _fail(self, reason: DecodeReason, detail: str, frames: list[Frame]) -> NoReturn:
        self._failure = FramingError(reason, detail, tuple(frames))
        self._buffer = bytearray()
        raise self._failure
