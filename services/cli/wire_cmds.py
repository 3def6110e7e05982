"""``hvdm decode`` and ``hvdm encode``: the DM wire codec from the command line.

Why: captured bytes from a misbehaving guest are easier to reason about as JSON, and hand-written
JSON is the quickest way to build a test vector. Both directions use the same codec as the
service, so what the CLI accepts is exactly what the gateway accepts.

Output is machine-friendly: one JSON object per line for ``decode`` (one per packet with
``--framed``), one hex line for ``encode``. Bad input exits with status 1 and exactly one stderr
line ``hvdm: <command> error <REASON>: <detail>``, never a traceback.

    $ hvdm decode 0b0010000b0000000080000001000000
    {"type": "DM_MEM_HOT_ADD_RESPONSE", "trans_id": 11, "page_count": 32768, "result": 1}
    $ hvdm encode '{"type": "DM_BALLOON_REQUEST", "num_pages": 512}' --framed
    0600020004000000000000000000000006001000000000000002000000000000
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Final

from ..dm_protocol import (
    DecodeError,
    DecodeReason,
    EncodeError,
    FrameReader,
    Message,
    decode,
    dm_message_bytes,
    encode,
    frame,
    from_json_dict,
    to_json_dict,
)
from .arg_types import IntArg

#: Separators people put in hex dumps (spaces, newlines, colons, the spec's ``|``); all ignored.
_HEX_SEPARATORS: Final = re.compile(r"[\s:|]+")
_HEX_DIGITS: Final = re.compile(r"[0-9a-fA-F]*")


def _read_argument(text: str) -> str:
    """The argument itself, or standard input when it is ``-`` (for long captures)."""
    return sys.stdin.read() if text == "-" else text


def _parse_hex(text: str) -> bytes:
    digits = _HEX_SEPARATORS.sub("", text)
    if digits[:2] in ("0x", "0X"):
        digits = digits[2:]
    if not _HEX_DIGITS.fullmatch(digits) or len(digits) % 2:
        raise DecodeError(DecodeReason.INVALID_HEX, f"not an even number of hex digits: {text[:60]!r}")
    return bytes.fromhex(digits)


def _decode_framed(raw: bytes, trailer: bool) -> list[Message]:
    reader = FrameReader(trailer=trailer)
    frames = reader.feed(raw)
    if reader.pending_bytes or not frames:
        raise DecodeError(DecodeReason.TRUNCATED, f"{reader.pending_bytes} bytes do not complete a VMBus packet")
    messages = []
    for index, packet in enumerate(frames):
        if packet.error is not None:
            raise DecodeError(packet.error, f"packet {index}: type {packet.packet_type}")
        messages.append(decode(dm_message_bytes(packet.payload)))
    return messages


def _fail(command: str, exc: DecodeError | EncodeError) -> int:
    line = f"hvdm: {command} error {exc}".replace("\r", " ").replace("\n", " ")
    print(line, file=sys.stderr)
    return 1


def _run_decode(args: argparse.Namespace) -> int:
    try:
        raw = _parse_hex(_read_argument(args.hex))
        framed = args.framed or args.trailer
        messages = _decode_framed(raw, args.trailer) if framed else [decode(raw)]
    except DecodeError as exc:
        return _fail("decode", exc)
    for msg in messages:
        print(json.dumps(to_json_dict(msg)))
    return 0


def _run_encode(args: argparse.Namespace) -> int:
    try:
        try:
            document = json.loads(_read_argument(args.json))
        except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
            raise DecodeError(DecodeReason.INVALID_JSON, str(exc)) from None
        if not isinstance(document, dict):
            kind = type(document).__name__
            raise DecodeError(DecodeReason.INVALID_JSON, f"expected a JSON object, got {kind}")
        wire = encode(from_json_dict(document))
        if args.framed or args.trailer_offset is not None:
            wire = frame(wire, trailer_offset=args.trailer_offset)
    except (DecodeError, EncodeError) as exc:
        return _fail("encode", exc)
    print(wire.hex())
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    decode_parser = subparsers.add_parser(
        "decode", help="decode a DM message (or VMBus packets) from hex to one JSON object per line"
    )
    decode_parser.add_argument("hex", help="hex bytes; spaces, colons and '|' are ignored; '-' reads stdin")
    decode_parser.add_argument("--framed", action="store_true", help="input is one or more VMBus in-band packets")
    decode_parser.add_argument(
        "--trailer",
        action="store_true",
        help="each packet is followed by the 8-byte ring trailer (implies --framed)",
    )
    decode_parser.set_defaults(func=_run_decode)

    encode_parser = subparsers.add_parser("encode", help="encode a JSON message to lowercase hex")
    encode_parser.add_argument("json", help="the message as a JSON object (see 'hvdm decode'); '-' reads stdin")
    encode_parser.add_argument("--framed", action="store_true", help="wrap it in a VMBus in-band packet")
    encode_parser.add_argument(
        "--trailer-offset",
        type=IntArg(0, (1 << 32) - 1, base=0),  # a ring offset (u32), often written in hex
        metavar="OFFSET",
        help="frame it and append the ring trailer for a packet starting at this ring offset",
    )
    encode_parser.set_defaults(func=_run_encode)
