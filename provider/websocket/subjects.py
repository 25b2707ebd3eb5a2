"""Subjects the provider reserves, subject patterns, and session ids. Pure.

Components address WebSocket peers through ``consumer.publish`` / ``consumer.request``
subjects. The provider reserves the ``ws.`` prefix for that:

==========================  =================================================================
``ws.session.<id>``         a server-mode session (the ``reply-to`` of its frames): publish → that client
``ws.session.<id>.binary``  likewise, as a binary frame (``.text``: a text frame); ``FORMAT=raw`` only.
                            A raw binary frame's ``reply-to`` carries ``.binary``, so an echo keeps its type
``ws.broadcast``            publish → every session of every server that delivers to the component
``ws.sessions``             request → JSON list of the sessions the component can reach
``ws.close.<id>``           publish → close that session (body: the close reason, 1000)
``ws.connected``            delivered on connect when ``LIFECYCLE_EVENTS`` is on (reply-to = the session)
``ws.disconnected``         delivered on disconnect, likewise
``ws.conn.<id>``            a client-mode connection (the ``reply-to`` of its frames): publish → send on it
``ws.conn.<id>.<reply>``    likewise, for a frame whose envelope named its own ``reply_to``: the
                            frame sent back carries ``<reply>`` as its subject. With ``FORMAT=raw``
                            (no envelopes) the suffix is the frame type instead: ``binary`` or ``text``
``ws.req.<id>``             the correlation subject of a client-mode ``request``
``ws.error``                the subject of error frames the provider sends to peers
==========================  =================================================================
"""

from __future__ import annotations

import base64
import enum
import hashlib
import secrets
from dataclasses import dataclass
from typing import Protocol

from provider.errors import ProviderError

PREFIX = "ws."
SESSION = "ws.session."
BROADCAST = "ws.broadcast"
SESSIONS = "ws.sessions"
CLOSE = "ws.close."
CONNECTED = "ws.connected"
DISCONNECTED = "ws.disconnected"
CONNECTION = "ws.conn."
REQUEST = "ws.req."
ERROR = "ws.error"

RESERVED_SUBJECTS = frozenset({BROADCAST, SESSIONS, CONNECTED, DISCONNECTED, ERROR})
EVENT = "ws.event."
"""Lifecycle events of the wasmCloud 2.x bridge (``ws.event.connected``): reserved here too, so a
component that serves both sees them only from the provider."""
RESERVED_PREFIXES = (SESSION, CLOSE, CONNECTION, REQUEST, EVENT)


def is_reserved(subject: str) -> bool:
    """Whether ``subject`` is one the provider gives meaning to: a peer may not send on it, lest a
    component take a client's frame for the provider's own (a fake ``ws.connected``, say)."""
    return subject in RESERVED_SUBJECTS or subject.startswith(RESERVED_PREFIXES)


class FrameType(enum.Enum):
    """The WebSocket frame type a publish asks for (``FORMAT=raw``: the subject's last token)."""

    TEXT = "text"
    BINARY = "binary"


def new_id() -> str:
    """128 random bits as 32 hex characters: unguessable, and safe in any subject."""
    return secrets.token_hex(16)


_ID_SALT = secrets.token_bytes(16)  # per process: ids of one run cannot be derived in another


def stable_id(*parts: str) -> str:
    """An id as unguessable as :func:`new_id`, but the same for the same ``parts`` within this
    process: a client connection keeps its id (and reply subject) when it is re-created, say
    after its links' config changed, for as long as the provider runs."""
    digest = hashlib.blake2b(digest_size=16, key=_ID_SALT)
    for part in parts:
        digest.update(part.encode("utf-8", errors="surrogatepass"))
        digest.update(b"\x00")
    return digest.hexdigest()


TAG_LENGTH = 10
"""Base32 characters of an instance tag: 50 bits, so instances of one provider never share one."""


def instance_tag(instance_id: str = "") -> str:
    """The token that names one provider instance in its ids: derived from HostData's
    ``instance_id`` (a fresh UUID on every start), or random without one."""
    seed = instance_id.encode("utf-8", errors="surrogatepass") if instance_id else secrets.token_bytes(16)
    return base64.b32encode(hashlib.sha256(seed).digest()).decode("ascii")[:TAG_LENGTH].lower()


def tag_of(some_id: str) -> str | None:
    """The instance a session or connection id belongs to (``None`` for an id without a tag)."""
    tag, dot, rest = some_id.partition(".")
    return tag if dot and tag and rest else None


@dataclass(frozen=True)
class Ids:
    """Session and connection ids that name their instance: ``<tag>.<128 random bits>`` (design §7).

    The owner of an id is known from the id alone; the tag is its own subject token, so one
    wildcard subscription per instance (``….<tag>.>``) reaches all of its sessions.
    """

    tag: str

    @classmethod
    def for_instance(cls, instance_id: str = "") -> Ids:
        return cls(instance_tag(instance_id))

    def session(self) -> str:
        return f"{self.tag}.{new_id()}"

    def connection(self, *parts: str) -> str:
        """A client connection's id: stable for the same ``parts`` on this instance (:func:`stable_id`)."""
        return f"{self.tag}.{stable_id(*parts)}"

    def owns(self, some_id: str) -> bool:
        return tag_of(some_id) == self.tag


def session_subject(session_id: str, frame_type: FrameType | None = None) -> str:
    """A session's reply subject; with a frame type, the one that asks for that type."""
    base = SESSION + session_id
    return f"{base}.{frame_type.value}" if frame_type is not None else base


class ReservedSubject(ProviderError, ValueError):
    """A client sent a frame on a subject the provider reserves."""


class Naming(Protocol):
    """How a server names its sessions and the subjects of what it delivers.

    Server mode uses :class:`ServerNaming` (``ws.session.<id>``, ``ws.connected``, client
    subjects as they are, reserved ones refused); the v2 bridge
    (:mod:`provider.bridge.subjects`) puts everything under its ``PREFIX`` and client
    subjects under ``PREFIX.in.``. Both draw ids from :class:`Ids`.
    """

    @property
    def tag(self) -> str:
        """The instance tag every session id starts with."""
        ...

    @property
    def connected(self) -> str:
        """The subject of the lifecycle event delivered when a session opens."""
        ...

    @property
    def disconnected(self) -> str:
        """The subject of the lifecycle event delivered when a session closes."""
        ...

    def new_session_id(self) -> str:
        """A fresh, unguessable session id that names this instance."""
        ...

    def session_subject(self, session_id: str, frame_type: FrameType | None = None) -> str:
        """The reply subject of a session's frames (asking for ``frame_type``, if given)."""
        ...

    def delivered_subject(self, client_subject: str) -> str:
        """The subject a client's frame is delivered on. Raises ``ValueError`` saying why it is refused
        (:class:`ReservedSubject` for a subject the provider keeps for itself)."""
        ...


@dataclass(frozen=True)
class ServerNaming:
    """Server mode's names: ``ws.session.<id>``, ``ws.connected`` / ``ws.disconnected``, subjects as
    sent, except the reserved ones (:func:`is_reserved`)."""

    ids: Ids
    connected: str = CONNECTED
    disconnected: str = DISCONNECTED

    @property
    def tag(self) -> str:
        return self.ids.tag

    def new_session_id(self) -> str:
        return self.ids.session()

    def session_subject(self, session_id: str, frame_type: FrameType | None = None) -> str:
        return session_subject(session_id, frame_type)

    def delivered_subject(self, client_subject: str) -> str:
        if is_reserved(client_subject):
            raise ReservedSubject(f"subject {client_subject!r} is reserved for the provider (ws.*)")
        return client_subject


def connection_subject(connection_id: str, reply_to: str | None = None) -> str:
    """A connection's reply subject; with the peer's own ``reply_to`` appended if it gave one."""
    base = CONNECTION + connection_id
    return f"{base}.{reply_to}" if reply_to else base


@dataclass(frozen=True)
class ToSession:
    """``ws.session.<id>[.binary|.text]``: send to that session (of that frame type, if given)."""

    session_id: str
    frame_type: FrameType | None = None


@dataclass(frozen=True)
class Broadcast:
    pass


@dataclass(frozen=True)
class ListSessions:
    pass


@dataclass(frozen=True)
class CloseSession:
    session_id: str


@dataclass(frozen=True)
class ToConnection:
    """``ws.conn.<id>[.<reply>]``: send on connection ``connection_id``, subject ``reply`` if given."""

    connection_id: str
    reply: str | None


@dataclass(frozen=True)
class Other:
    """Any subject the provider does not reserve."""

    subject: str


Target = ToSession | Broadcast | ListSessions | CloseSession | ToConnection | Other


_FRAME_TYPES = {t.value: t for t in FrameType}


def _id_of(tokens: list[str]) -> str | None:
    """An id from its tokens: ``<tag>.<rand>`` (or one token, which no instance owns)."""
    return ".".join(tokens) if 1 <= len(tokens) <= 2 and all(tokens) else None


def _session_after(subject: str) -> ToSession | None:
    tokens = subject[len(SESSION) :].split(".")
    frame_type = _FRAME_TYPES.get(tokens[-1]) if len(tokens) > 1 else None
    if frame_type is not None:
        tokens = tokens[:-1]
    session = _id_of(tokens)
    return ToSession(session, frame_type) if session is not None else None


def _connection_after(subject: str) -> ToConnection | None:
    tokens = subject[len(CONNECTION) :].split(".")
    connection = _id_of(tokens[:2])
    if connection is None:
        return None
    return ToConnection(connection, ".".join(tokens[2:]) or None)


def parse_target(subject: str) -> Target:
    """What a component means by publishing or requesting on ``subject``."""
    if subject.startswith(PREFIX):
        if subject == BROADCAST:
            return Broadcast()
        if subject == SESSIONS:
            return ListSessions()
        if subject.startswith(SESSION) and (target := _session_after(subject)):
            return target
        if subject.startswith(CLOSE) and (session := _id_of(subject[len(CLOSE) :].split("."))):
            return CloseSession(session)
        if subject.startswith(CONNECTION) and (connection := _connection_after(subject)):
            return connection
    return Other(subject)


class SubjectPattern:
    """A NATS-style pattern: tokens split on ``.``; ``*`` matches one token, a final ``>`` one or more."""

    __slots__ = ("_tokens", "text")

    def __init__(self, text: str) -> None:
        tokens = text.split(".")
        if not text or any(not t for t in tokens):
            raise ValueError(f"{text!r} is not a subject pattern (empty token)")
        if ">" in tokens[:-1] or any((("*" in t) or (">" in t)) and len(t) > 1 for t in tokens):
            raise ValueError(f"{text!r}: '*' must be a whole token and '>' only the whole last token")
        self.text = text
        self._tokens = tokens

    def matches(self, subject: str) -> bool:
        parts = subject.split(".")
        for i, token in enumerate(self._tokens):
            if token == ">":
                return len(parts) > i
            if i >= len(parts) or (token != "*" and token != parts[i]):
                return False
        return len(parts) == len(self._tokens)

    def __repr__(self) -> str:
        return f"SubjectPattern({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SubjectPattern) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


@dataclass(frozen=True)
class Subscriptions:
    """The subjects a component receives; no patterns means every subject."""

    patterns: tuple[SubjectPattern, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Subscriptions:
        """Comma-separated patterns; raises ``ValueError`` for a bad one."""
        return cls(tuple(SubjectPattern(p.strip()) for p in text.split(",") if p.strip()))

    def matches(self, subject: str) -> bool:
        return not self.patterns or any(p.matches(subject) for p in self.patterns)

    def describe(self) -> str:
        return ",".join(p.text for p in self.patterns) or ">"
