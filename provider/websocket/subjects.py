"""Subjects the provider reserves, subject patterns, and session ids. Pure.

Components address WebSocket peers through ``consumer.publish`` / ``consumer.request``
subjects. The provider reserves the ``ws.`` prefix for that:

==========================  =================================================================
``ws.session.<id>``         a server-mode session (the ``reply-to`` of its frames): publish → that client
``ws.broadcast``            publish → every session of every server that delivers to the component
``ws.sessions``             request → JSON list of the sessions the component can reach
``ws.close.<id>``           publish → close that session (body: the close reason, 1000)
``ws.connected``            delivered on connect when ``LIFECYCLE_EVENTS`` is on (reply-to = the session)
``ws.disconnected``         delivered on disconnect, likewise
``ws.conn.<id>``            a client-mode connection (the ``reply-to`` of its frames): publish → send on it
``ws.conn.<id>.<reply>``    likewise, for a frame whose envelope named its own ``reply_to``: the
                            frame sent back carries ``<reply>`` as its subject
``ws.req.<id>``             the correlation subject of a client-mode ``request``
``ws.error``                the subject of error frames the provider sends to peers
==========================  =================================================================
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Protocol

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


def new_id() -> str:
    """128 random bits as 32 hex characters: unguessable, and safe in any subject."""
    return secrets.token_hex(16)


def session_subject(session_id: str) -> str:
    return SESSION + session_id


# -- session ids that name their instance (design §7) ------------------------------------------------
# One place for the scheme, so that server mode and the v2 bridge draw ids the same way.


def new_instance_tag() -> str:
    """A short random token naming one running instance (32 bits as 8 hex characters).

    Drawn afresh by every process, so a restarted instance has a new tag. Two instances that
    drew the same tag would both subscribe to each other's session subjects; each still only
    delivers to the sessions it holds, so a collision costs log noise, not misdelivery.
    """
    return secrets.token_hex(4)


def instance_session_id(tag: str) -> str:
    """A session id that names its instance: ``<tag>.<rand>``, ``<rand>`` being 128 random bits.

    The owner is known from the id alone (its first token), so one wildcard subscription
    (``….session.<tag>.>``) covers every session of an instance.
    """
    return f"{tag}.{new_id()}"


class Naming(Protocol):
    """How a server names its sessions and the subjects of what it delivers.

    Server mode uses :data:`SERVER_NAMING` (``ws.session.<id>``, ``ws.connected``, client
    subjects as they are); the v2 bridge (:mod:`provider.bridge.subjects`) puts everything
    under its ``PREFIX`` and client subjects under ``PREFIX.in.``.
    """

    @property
    def connected(self) -> str:
        """The subject of the lifecycle event delivered when a session opens."""
        ...

    @property
    def disconnected(self) -> str:
        """The subject of the lifecycle event delivered when a session closes."""
        ...

    def new_session_id(self) -> str:
        """A fresh, unguessable session id."""
        ...

    def session_subject(self, session_id: str) -> str:
        """The reply subject of a session's frames."""
        ...

    def delivered_subject(self, client_subject: str) -> str:
        """The subject a client's frame is delivered on. Raises ``ValueError`` saying why it is refused."""
        ...


@dataclass(frozen=True)
class ServerNaming:
    """Server mode's names: ``ws.session.<id>``, ``ws.connected`` / ``ws.disconnected``, subjects as sent."""

    connected: str = CONNECTED
    disconnected: str = DISCONNECTED

    def new_session_id(self) -> str:
        return new_id()

    def session_subject(self, session_id: str) -> str:
        return session_subject(session_id)

    def delivered_subject(self, client_subject: str) -> str:
        return client_subject


SERVER_NAMING = ServerNaming()


def connection_subject(connection_id: str, reply_to: str | None = None) -> str:
    """A connection's reply subject; with the peer's own ``reply_to`` appended if it gave one."""
    base = CONNECTION + connection_id
    return f"{base}.{reply_to}" if reply_to else base


@dataclass(frozen=True)
class ToSession:
    session_id: str


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


def _id_after(subject: str, prefix: str) -> str | None:
    rest = subject[len(prefix) :]
    return rest if rest and "." not in rest else None


def parse_target(subject: str) -> Target:
    """What a component means by publishing or requesting on ``subject``."""
    if subject.startswith(PREFIX):
        if subject == BROADCAST:
            return Broadcast()
        if subject == SESSIONS:
            return ListSessions()
        if subject.startswith(SESSION) and (session := _id_after(subject, SESSION)):
            return ToSession(session)
        if subject.startswith(CLOSE) and (session := _id_after(subject, CLOSE)):
            return CloseSession(session)
        if subject.startswith(CONNECTION):
            connection, _, reply = subject[len(CONNECTION) :].partition(".")
            if connection:
                return ToConnection(connection, reply or None)
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
