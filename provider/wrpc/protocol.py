"""The NATS client-protocol pieces wRPC's hot path writes and reads itself. Pure.

``HPUB``/``PUB`` commands and header blocks (``NATS/1.0[ status]\\r\\nkey: value\\r\\n…\\r\\n``),
as the NATS client protocol defines them. Building a command once as bytes, and parsing
header blocks only where someone reads them, is what makes a wRPC call cheap in Python.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from types import MappingProxyType

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
