"""Wire formats on the WebSocket (``FORMAT``): raw, json, msgpack. Pure.

========  ======================================================================================
raw       the frame is the body; the subject comes from ``SUBJECT``. Outbound: a text frame if
          the body is UTF-8, else binary.
json      text frames ``{"subject": "…", "body": "<utf-8 text>"}``; a body that is not UTF-8 goes
          as ``"body_base64": "…"`` instead; ``"reply_to"`` when there is one.
msgpack   binary frames holding a map ``{"subject": str, "body": bin, "reply_to": str | nil}``.
========  ======================================================================================

Every encoding round-trips losslessly. A frame that does not parse raises
:class:`FrameError` with a message fit to send back to the peer.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
from dataclasses import dataclass
from typing import Any

import msgpack

from provider.errors import ProviderError
from provider.websocket.subjects import ERROR

Frame = str | bytes
"""A WebSocket message: ``str`` is a text frame, ``bytes`` a binary frame."""


class Format(enum.Enum):
    RAW = "raw"
    JSON = "json"
    MSGPACK = "msgpack"


class FrameError(ProviderError):
    """A frame that does not parse under the connection's ``FORMAT``."""


@dataclass(frozen=True, slots=True)
class Envelope:
    """What a frame carries: a subject, a body and the peer's own reply subject, if any."""

    subject: str
    body: bytes
    reply_to: str | None = None


def _text_body(body: bytes) -> str | None:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return None


def encode(fmt: Format, envelope: Envelope) -> Frame:
    """The frame that carries ``envelope``."""
    if fmt is Format.RAW:
        text = _text_body(envelope.body)
        return text if text is not None else envelope.body
    if fmt is Format.JSON:
        obj: dict[str, Any] = {"subject": envelope.subject}
        text = _text_body(envelope.body)
        if text is not None:
            obj["body"] = text
        else:
            obj["body_base64"] = base64.b64encode(envelope.body).decode("ascii")
        if envelope.reply_to is not None:
            obj["reply_to"] = envelope.reply_to
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    packed: bytes = msgpack.packb(
        {"subject": envelope.subject, "body": envelope.body, "reply_to": envelope.reply_to},
        use_bin_type=True,
    )
    return packed


def error_frame(fmt: Format, message: str) -> Frame | None:
    """An error for the peer, as an envelope on ``ws.error``; raw peers get none (it would look like data)."""
    if fmt is Format.RAW:
        return None
    return encode(fmt, Envelope(ERROR, message.encode("utf-8")))


def decode(fmt: Format, frame: Frame, default_subject: str) -> Envelope:
    """The envelope a frame carries. Raises :class:`FrameError` saying what is wrong with it."""
    if fmt is Format.RAW:
        body = frame.encode("utf-8") if isinstance(frame, str) else bytes(frame)
        return Envelope(default_subject, body)
    if fmt is Format.JSON:
        return _from_mapping(_json_object(frame), allow_base64=True)
    if isinstance(frame, str):
        raise FrameError("FORMAT=msgpack expects binary frames, got a text frame")
    try:
        obj = msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError, TypeError) as exc:
        raise FrameError(f"invalid msgpack: {exc}") from exc
    if not isinstance(obj, dict):
        raise FrameError(f"a msgpack frame must hold a map, got {type(obj).__name__}")
    return _from_mapping(obj, allow_base64=False)


def _json_object(frame: Frame) -> dict[str, Any]:
    try:
        obj = json.loads(frame)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FrameError(f"invalid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise FrameError(f"a JSON frame must be an object, got {type(obj).__name__}")
    return obj


def _from_mapping(obj: dict[str, Any], *, allow_base64: bool) -> Envelope:
    subject = obj.get("subject")
    if not isinstance(subject, str) or not subject:
        raise FrameError("'subject' must be a non-empty string")
    body = obj.get("body")
    encoded = obj.get("body_base64") if allow_base64 else None
    if body is not None and encoded is not None:
        raise FrameError("give 'body' or 'body_base64', not both")
    if encoded is not None:
        if not isinstance(encoded, str):
            raise FrameError("'body_base64' must be a string")
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise FrameError(f"'body_base64' is not valid base64: {exc}") from exc
    elif body is None:
        data = b""
    elif isinstance(body, str):
        data = body.encode("utf-8")
    elif isinstance(body, bytes) and not allow_base64:
        data = body
    else:
        raise FrameError(f"'body' must be {'a string' if allow_base64 else 'bytes or a string'}")
    reply_to = obj.get("reply_to")
    if reply_to is not None and not isinstance(reply_to, str):
        raise FrameError("'reply_to' must be a string")
    return Envelope(subject, data, reply_to or None)
