"""Reason codes and the two exceptions of the DM wire layer.

Why a separate module: the engine turns a rejected guest message into a ``GuestViolation`` event
carrying a reason code, so the codes are part of the event schema. They must stay stable strings
(``value == name``) that survive JSON, logs and Prometheus labels, and they must be importable
without pulling in the codec.
"""

from __future__ import annotations

import enum


class DecodeReason(enum.StrEnum):
    """Why bytes (or JSON, or hex) could not become a message, or what was odd about one.

    The value equals the name so ``str(reason)`` is the code itself.
    """

    # --- DM message decoding (checked in this order by ``codec.decode``) ---
    #: Fewer bytes than the 8-byte header, or than the message type's fixed struct.
    TRUNCATED = "TRUNCATED"
    #: A type number outside 0..14 (or, from JSON, an unknown type name).
    UNKNOWN_TYPE = "UNKNOWN_TYPE"
    #: The header ``size`` (or the info message's ``info_size`` / ``data_size``) disagrees with the
    #: number of bytes present, or a fixed-size message carries extra bytes.
    SIZE_MISMATCH = "SIZE_MISMATCH"
    #: ``range_count`` disagrees with the header size.
    RANGE_COUNT_MISMATCH = "RANGE_COUNT_MISMATCH"
    #: Not an error: reserved bits or reserved fields were non-zero. Recorded in ``anomalies``.
    RESERVED_BITS_SET = "RESERVED_BITS_SET"

    # --- VMBus framing (``framing.FrameReader``) ---
    #: Descriptor type is not VM_PKT_DATA_INBAND (6); the frame is skipped.
    BAD_PACKET_TYPE = "BAD_PACKET_TYPE"
    #: ``offset8 * 8`` is below the descriptor size or beyond the packet; the frame is skipped.
    BAD_PACKET_OFFSET = "BAD_PACKET_OFFSET"
    #: ``len8 * 8`` is below the descriptor size: the stream cannot be resynchronised.
    BAD_PACKET_LENGTH = "BAD_PACKET_LENGTH"
    #: Payload larger than the reader's limit (4096 by default): the stream is abandoned.
    FRAME_TOO_LARGE = "FRAME_TOO_LARGE"

    # --- Encoding (``codec.encode``, ``framing.frame``, ``json_form.from_json_dict``) ---
    #: A page range with start_page >= 2**40 or page_count >= 2**24 (or negative, or not a pair).
    RANGE_OUT_OF_BOUNDS = "RANGE_OUT_OF_BOUNDS"
    #: An integer field that is negative or does not fit its wire width (including the u16 size).
    FIELD_OUT_OF_BOUNDS = "FIELD_OUT_OF_BOUNDS"

    # --- Text front ends (JSON form, CLI) ---
    #: A JSON object with a missing, unknown or wrongly typed field.
    INVALID_JSON_FIELD = "INVALID_JSON_FIELD"
    #: Text that is not JSON, or JSON that is not an object.
    INVALID_JSON = "INVALID_JSON"
    #: Text that is not an even number of hex digits.
    INVALID_HEX = "INVALID_HEX"


class _ReasonError(ValueError):
    """Shared shape: a machine-readable ``reason`` plus a human ``detail``; str() starts with the code."""

    def __init__(self, reason: DecodeReason, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else str(reason))

    def __reduce__(self) -> tuple[type[_ReasonError], tuple[DecodeReason, str]]:
        # Exceptions pickle their ``args``; ours has a two-argument constructor, so say so explicitly
        # (errors cross process boundaries in the stream workers).
        return (type(self), (self.reason, self.detail))


class DecodeError(_ReasonError):
    """Input bytes / text that do not form a valid message. Raised by decode paths only."""


class EncodeError(_ReasonError):
    """A message whose fields cannot be represented on the wire."""
