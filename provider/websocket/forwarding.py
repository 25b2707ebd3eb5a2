"""What a provider's instances say to each other over the lattice's NATS (design §7). Pure.

Every subject lies under ``LATTICE.PROVIDER_ID.ws.``, so nothing crosses lattices or
provider ids, and the provider's NATS permissions (``LATTICE.>``) already allow it:

===================================  ===========================================================
``L.P.ws.<tag>.publish``             request: a component's publish to a session or connection of
                                     instance ``<tag>`` (answer: ``result<_, string>``)
``L.P.ws.<tag>.request``             request: a component's ``consumer.request`` on a connection
                                     ``<tag>`` holds (answer: ``result<broker-message, string>``)
``L.P.ws.<tag>.health``              request: that instance's health answer (the host's health subject
                                     is shared by every instance, so any of them answers it)
``L.P.ws.all.broadcast``             every instance: send to its sessions that the component reaches
``L.P.ws.all.sessions``              every instance: answer the reply subject with its sessions
``L.P.ws.all.here`` / ``….gone``     presence: an instance that runs (every few seconds) or stops
``L.P.ws.<tag>.answer-<n>``          the answers to instance ``<tag>``'s ``n``-th sessions gather
===================================  ===========================================================

Bodies are encoded with the wRPC value codec (:mod:`provider.wrpc.codec`): the same typed,
fuzzed decoder as every invocation, so a hostile peer's bytes can only raise its errors.
One wildcard subscription per instance (``L.P.ws.<tag>.>``) and one for all
(``L.P.ws.all.>``): the count does not grow with sessions.
"""

from __future__ import annotations

from dataclasses import dataclass

from provider.wrpc.codec import BYTES, STRING, U32, Codec, OptionOf, RecordOf

ALL = "all"
PUBLISH = "publish"
REQUEST = "request"
BROADCAST = "broadcast"
SESSIONS = "sessions"
HEALTH = "health"
HERE = "here"
GONE = "gone"
ANSWER = "answer-"
"""``L.P.ws.<tag>.answer-<n>``: where the answers to instance ``<tag>``'s gather ``n`` come back."""


def base(lattice: str, provider_id: str) -> str:
    """``LATTICE.PROVIDER_ID.ws``: where all of it lives."""
    return f"{lattice}.{provider_id}.ws"


def to_instance(lattice: str, provider_id: str, tag: str, op: str) -> str:
    return f"{base(lattice, provider_id)}.{tag}.{op}"


def to_all(lattice: str, provider_id: str, op: str) -> str:
    return f"{base(lattice, provider_id)}.{ALL}.{op}"


@dataclass(frozen=True, slots=True)
class Forwarded:
    """A component's publish, forwarded to the instance that holds its target."""

    component: str
    subject: str
    body: bytes
    reply_to: str | None


@dataclass(frozen=True, slots=True)
class ForwardedRequest:
    """A component's ``consumer.request``, forwarded to the instance that holds ``connection``."""

    component: str
    connection: str
    subject: str
    body: bytes
    timeout_ms: int


@dataclass(frozen=True, slots=True)
class Broadcasted:
    """A component's broadcast, for every other instance (``origin`` sent it to its own sessions)."""

    origin: str
    component: str
    subject: str
    body: bytes
    reply_to: str | None


@dataclass(frozen=True, slots=True)
class SessionsQuery:
    """Which sessions may ``component`` reach on your instance?"""

    origin: str
    component: str


@dataclass(frozen=True, slots=True)
class SessionsAnswer:
    """One instance's sessions for a query: ``sessions`` is the JSON list ``ws.sessions`` answers."""

    tag: str
    sessions: str


@dataclass(frozen=True, slots=True)
class Presence:
    """An instance that runs (``here``) or stops (``gone``)."""

    tag: str


FORWARDED: Codec[Forwarded] = RecordOf(
    "forwarded",
    [("component", STRING), ("subject", STRING), ("body", BYTES), ("reply-to", OptionOf(STRING))],
    Forwarded,
)
FORWARDED_REQUEST: Codec[ForwardedRequest] = RecordOf(
    "forwarded-request",
    [
        ("component", STRING),
        ("connection", STRING),
        ("subject", STRING),
        ("body", BYTES),
        ("timeout-ms", U32),
    ],
    ForwardedRequest,
)
BROADCASTED: Codec[Broadcasted] = RecordOf(
    "broadcasted",
    [
        ("origin", STRING),
        ("component", STRING),
        ("subject", STRING),
        ("body", BYTES),
        ("reply-to", OptionOf(STRING)),
    ],
    Broadcasted,
)
SESSIONS_QUERY: Codec[SessionsQuery] = RecordOf(
    "sessions-query", [("origin", STRING), ("component", STRING)], SessionsQuery
)
SESSIONS_ANSWER: Codec[SessionsAnswer] = RecordOf(
    "sessions-answer", [("tag", STRING), ("sessions", STRING)], SessionsAnswer
)
PRESENCE: Codec[Presence] = RecordOf("presence", [("tag", STRING)], Presence)


def op_of(subject: str, prefix: str) -> tuple[str, str] | None:
    """``(tag or "all", op)`` of a subject under ``prefix`` (``L.P.ws``), or ``None``."""
    if not subject.startswith(prefix + "."):
        return None
    target, dot, op = subject[len(prefix) + 1 :].partition(".")
    return (target, op) if dot and target and op and "." not in op else None
