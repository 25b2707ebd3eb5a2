"""The NATS client-protocol pieces wRPC's hot path writes and reads itself. Pure.

``HPUB``/``PUB`` commands and header blocks (``NATS/1.0[ status]\\r\\nkey: value\\r\\n…\\r\\n``),
as the NATS client protocol defines them, and :class:`ServerStream`, which splits what a
server sends into messages (``MSG``, ``HMSG``) and its other operations. Building a command
once as bytes, splitting messages with a few ``find`` calls and slices, and parsing header
blocks only where someone reads them, is what makes a wRPC call cheap in Python.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from types import MappingProxyType

from provider.errors import NatsProtocolError

_HEADER_LINE = b"NATS/1.0"
_CRLF = b"\r\n"
_KEY = re.compile(r"[!-9;-~]+")  # printable ASCII but ':' (RFC 7230 token-ish, as NATS servers accept)
_SUBJECT = re.compile(r"[^\s]+")


def valid_subject(subject: str) -> bool:
    """A subject NATS accepts: non-empty, no whitespace, no empty token."""
    return (
        bool(_SUBJECT.fullmatch(subject))
        and ".." not in subject
        and not subject.startswith(".")
        and (not subject.endswith("."))
    )


def header_block(headers: Mapping[str, str]) -> bytes:
    """The header block of ``headers`` (``b""`` for none). Raises ``ValueError`` for a key or
    value that would break the block (a bad key character, CR or LF in a value)."""
    if not headers:
        return b""
    return _header_block(tuple(headers.items()))


@functools.lru_cache(maxsize=1024)  # a link's calls carry the same few headers, call after call
def _header_block(items: tuple[tuple[str, str], ...]) -> bytes:
    lines = [_HEADER_LINE]
    for key, value in items:
        if not _KEY.fullmatch(key):
            raise ValueError(f"invalid NATS header name {key!r}")
        if "\r" in value or "\n" in value:
            raise ValueError(f"NATS header {key!r} has a line break in its value")
        lines.append(f"{key}: {value}".encode())
    lines.append(b"")
    lines.append(b"")
    return _CRLF.join(lines)


def command(subject: str, reply: str, payload: bytes, headers: bytes = b"") -> bytes:
    """A ``PUB`` (or, with a header block, ``HPUB``) command with its payload."""
    if headers:
        size = len(headers)
        head = f"HPUB {subject} {reply} {size} {size + len(payload)}\r\n".encode()
        return b"".join((head, headers, payload, _CRLF))
    return b"".join((f"PUB {subject} {reply} {len(payload)}\r\n".encode(), payload, _CRLF))


def status_of(headers: bytes | None) -> tuple[str | None, str]:
    """The inline status of a header block (``"503"``, ``"408"`` …) and its description, if any."""
    if not headers or len(headers) <= len(_HEADER_LINE) or headers[len(_HEADER_LINE)] != 0x20:
        return None, ""
    line = headers[len(_HEADER_LINE) + 1 : headers.find(_CRLF)].decode(errors="replace")
    code, _, description = line.partition(" ")
    return (code or None), description.strip()


_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


def parse_headers(headers: bytes | None) -> Mapping[str, str]:
    """The ``key: value`` fields of a header block (the status line skipped); the last of a
    repeated key wins. Read-only: the same block (one caller's calls) gives the same mapping."""
    if not headers:
        return _NO_HEADERS
    if len(headers) <= _CACHED_BLOCK:
        return _parse_cached(headers)
    return _parse_headers(headers)


_CACHED_BLOCK = 512
"""Header blocks up to this size are remembered (1,024 of them): a hostile peer's blocks hold at
most 512 KiB that way."""


@functools.lru_cache(maxsize=1024)
def _parse_cached(headers: bytes) -> Mapping[str, str]:
    return _parse_headers(headers)


def _parse_headers(headers: bytes) -> Mapping[str, str]:
    fields: dict[str, str] = {}
    for line in headers.split(_CRLF)[1:]:
        key, sep, value = line.partition(b":")
        if sep:
            fields[key.strip().decode(errors="replace")] = value.strip().decode(errors="replace")
    return MappingProxyType(fields)


# --- what a server sends -----------------------------------------------------------------------

MAX_CONTROL_LINE = 1 << 20
"""The longest operation line :class:`ServerStream` waits for (a NATS server's own limit on the
lines it sends is its ``max_control_line``, 4 KiB unless configured; subjects live there)."""

MAX_MESSAGE = 64 << 20
"""The largest message body :class:`ServerStream` gathers: a NATS server's ``max_payload``
cannot be set above 64 MiB."""

Message = tuple[int, bytes, bytes, bytes, "bytes | None"]
"""``(sid, subject, reply, payload, header block or None)``: one ``MSG`` or ``HMSG``, the bytes
as they came (hostile: not necessarily UTF-8)."""


class ServerStream:
    """Splits the bytes a NATS server sends, in chunks as they are read, into operations.

    :meth:`feed` returns, in order, a :data:`Message` for every complete ``MSG``/``HMSG`` and the
    whole line (with its CRLF) of every other operation (``PING``, ``PONG``, ``+OK``, ``-ERR``,
    ``INFO``, or anything unknown), for the caller to act on. What is incomplete waits for the
    next chunk; a message body of known size is gathered in parts and joined once.

    The grammar is nats-py's (``nats.protocol.parser``), a little stricter: an ``MSG``/``HMSG``
    line is ``MSG <subject> <sid> [reply] <#bytes>`` or ``HMSG <subject> <sid> [reply] <#header
    bytes> <#bytes>``, fields separated by blanks, no CR or LF inside and none at its end,
    sizes in decimal digits, the header size at most the total, the body followed by CRLF, and
    an ``HMSG`` whose header size is 0 has no header block. Whatever breaks that raises
    :class:`NatsProtocolError`; the stream is not usable after it (the connection must be
    dropped, as nats-py drops it on its own parser's errors).
    """

    __slots__ = ("_have", "_need", "_parts", "_rest")

    def __init__(self) -> None:
        self._rest = b""
        self._parts: list[bytes] = []
        self._have = 0
        self._need = 0  # bytes of a message (line + body + CRLF) being gathered in _parts

    def feed(self, data: bytes) -> list[Message | bytes]:
        """The operations ``data`` completes, in order (see the class)."""
        if self._need:
            self._parts.append(data)
            self._have += len(data)
            if self._have < self._need:
                return []
            data = b"".join(self._parts)
            self._parts = []
            self._have = self._need = 0
        elif self._rest:
            data = self._rest + data
        self._rest = b""
        out: list[Message | bytes] = []
        pos = 0
        size = len(data)
        find = data.find
        while pos < size:
            end = find(b"\r\n", pos)
            if end < 0:
                if size - pos > MAX_CONTROL_LINE:
                    raise NatsProtocolError(f"an operation line longer than {MAX_CONTROL_LINE} bytes")
                self._rest = data[pos:]
                break
            if data.startswith(b"MSG ", pos):
                start = pos + 4
            elif data.startswith(b"HMSG ", pos):
                start = pos + 5
            else:
                start = _message_start(data, pos, end)
                if not start:
                    out.append(data[pos : end + 2])
                    pos = end + 2
                    continue
            if find(b"\r", pos, end) >= 0 or find(b"\n", pos, end) >= 0 or data[end - 1] in _BLANKS:
                raise NatsProtocolError(f"a malformed message line {_shown(data[pos:end])}")
            args = data[start:end].split()
            headed = data[pos] == 0x48  # "H"
            try:
                if headed:
                    if len(args) == 5:
                        subject, sid, reply, head, total = args
                    elif len(args) == 4:
                        subject, sid, head, total = args
                        reply = b""
                    else:
                        raise ValueError("expected 4 or 5 fields")
                    if not head.isdigit():
                        raise ValueError("the header size is not a number")
                    header_size = int(head)
                else:
                    if len(args) == 4:
                        subject, sid, reply, total = args
                    elif len(args) == 3:
                        subject, sid, total = args
                        reply = b""
                    else:
                        raise ValueError("expected 3 or 4 fields")
                    header_size = 0
                if not total.isdigit():
                    raise ValueError("the size is not a number")
                body_size = int(total)
                number = int(sid)
            except ValueError as exc:
                raise NatsProtocolError(f"a malformed message line {_shown(data[pos:end])}: {exc}") from None
            if body_size > MAX_MESSAGE:
                raise NatsProtocolError(
                    f"a message of {body_size} bytes (over {MAX_MESSAGE}) in {_shown(data[pos:end])}"
                )
            if header_size > body_size:
                raise NatsProtocolError(f"a header size over the message size in {_shown(data[pos:end])}")
            body = end + 2
            stop = body + body_size
            if stop + 2 > size:  # the body is still coming: gather it, from this line on
                waiting = data[pos:]
                self._parts = [waiting]
                self._have = len(waiting)
                self._need = stop + 2 - pos
                break
            if data[stop] != 0x0D or data[stop + 1] != 0x0A:
                raise NatsProtocolError(f"a message body not followed by CRLF after {_shown(data[pos:end])}")
            if header_size:
                split = body + header_size
                out.append((number, subject, reply, data[split:stop], data[body:split]))
            else:
                out.append((number, subject, reply, data[body:stop], None))
            pos = stop + 2
        return out


def message_bytes(message: Message) -> bytes:
    """A :data:`Message` as a server writes it (``MSG`` or ``HMSG``): what
    :meth:`ServerStream.feed` reads back as the same message."""
    sid, subject, reply, payload, headers = message
    gap = b" " + reply if reply else b""
    if headers is None:
        return b"MSG %s %d%s %d\r\n%s\r\n" % (subject, sid, gap, len(payload), payload)
    size = len(headers)
    return b"HMSG %s %d%s %d %d\r\n%s%s\r\n" % (
        subject,
        sid,
        gap,
        size,
        size + len(payload),
        headers,
        payload,
    )


_BLANKS = b" \t\x0b\x0c"


def _message_start(data: bytes, pos: int, end: int) -> int:
    """Where the fields start if the line at ``pos`` is an ``MSG``/``HMSG`` whose name is
    followed by a blank other than a space; 0 if it is another operation."""
    for name in (b"MSG", b"HMSG"):
        after = pos + len(name)
        if data.startswith(name, pos) and after < end and data[after] in _BLANKS:
            return after + 1
    return 0


def _shown(line: bytes) -> str:
    return repr(line[:120]) + ("…" if len(line) > 120 else "")
