"""The Hyper-V Dynamic Memory wire protocol: messages, binary codec, JSON form and VMBus framing.

One job per module:

* ``reasons``   -- reason codes, ``DecodeError`` / ``EncodeError``
* ``messages``  -- the 15 message dataclasses and their field kinds
* ``codec``     -- ``encode`` / ``decode`` of DM message bytes
* ``json_form`` -- ``to_json_dict`` / ``from_json_dict``
* ``framing``   -- VMBus in-band packets over a byte stream

Everything public is re-exported here; import from ``services.dm_protocol``.
"""

from .codec import HEADER_SIZE, MAX_MESSAGE_SIZE, decode, encode
from .framing import (
    DESCRIPTOR_SIZE,
    MAX_DM_PAYLOAD,
    TRAILER_SIZE,
    VM_PKT_DATA_INBAND,
    Frame,
    FrameReader,
    FramingError,
    dm_message_bytes,
    dm_trans_id,
    frame,
)
from .json_form import from_json_dict, to_json_dict
from .messages import (
    MESSAGE_CLASSES,
    PAGE_COUNT_LIMIT,
    START_PAGE_LIMIT,
    BalloonRequest,
    BalloonResponse,
    CapabilitiesReport,
    CapabilitiesResponse,
    DmError,
    HotAddRequest,
    HotAddResponse,
    HotRemoveRequest,
    HotRemoveResponse,
    InfoMessage,
    Message,
    MessageBase,
    MessageType,
    PageRange,
    StatusReport,
    UnballoonRequest,
    UnballoonResponse,
    VersionRequest,
    VersionResponse,
)
from .reasons import DecodeError, DecodeReason, EncodeError

__all__ = [
    "DESCRIPTOR_SIZE",
    "HEADER_SIZE",
    "MAX_DM_PAYLOAD",
    "MAX_MESSAGE_SIZE",
    "MESSAGE_CLASSES",
    "PAGE_COUNT_LIMIT",
    "START_PAGE_LIMIT",
    "TRAILER_SIZE",
    "VM_PKT_DATA_INBAND",
    "BalloonRequest",
    "BalloonResponse",
    "CapabilitiesReport",
    "CapabilitiesResponse",
    "DecodeError",
    "DecodeReason",
    "DmError",
    "EncodeError",
    "Frame",
    "FrameReader",
    "FramingError",
    "HotAddRequest",
    "HotAddResponse",
    "HotRemoveRequest",
    "HotRemoveResponse",
    "InfoMessage",
    "Message",
    "MessageBase",
    "MessageType",
    "PageRange",
    "StatusReport",
    "UnballoonRequest",
    "UnballoonResponse",
    "VersionRequest",
    "VersionResponse",
    "decode",
    "dm_message_bytes",
    "dm_trans_id",
    "encode",
    "frame",
    "from_json_dict",
    "to_json_dict",
]
