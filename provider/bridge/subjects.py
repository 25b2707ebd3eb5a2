"""The bridge's NATS subjects, the check that keeps clients under ``PREFIX.in.>``, the listing. Pure.

With ``PREFIX=ws`` and an instance tag ``t`` (each bridge process draws its own):

==============================  ==========================================================================
``ws.in.<s>``                   a client frame with subject ``s`` (reply subject: the session's subject)
``ws.session.t.<rand>``         a session of instance ``t``: a publish here is a frame to it
``ws.close.t.<rand>``           a publish here closes that session with 1000 (the body is the reason)
``ws.broadcast``                a publish here is a frame to every session of every instance
``ws.sessions``                 a request here is answered with every instance's sessions (JSON list)
``ws.event.connected``          published when a session opens (``LIFECYCLE_EVENTS``); reply = the session
``ws.event.disconnected``       published when it closes, likewise
``ws.bridge.sessions``          internal: the instance answering ``ws.sessions`` gathers lists here
==============================  ==========================================================================

An instance subscribes ``ws.session.t.>`` and ``ws.close.t.>`` once (not once per session).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from provider.websocket.subjects import FrameType, Ids

DEFAULT_PREFIX = "ws"
MAX_CLIENT_SUBJECT = 256
"""Characters a client subject may have (the NATS subject is the prefix and ``.in.`` longer)."""
_FORBIDDEN = frozenset("*>")


def check_tokens(text: str, what: str) -> str:
    """``text`` if it is a run of literal NATS tokens, else ``ValueError`` saying what is wrong.

    Literal tokens: printable ASCII without ``*`` or ``>`` (no wildcards, even inside a token),
    separated by single dots; no empty token, no whitespace or control characters, nothing
    outside ASCII. Narrower than what NATS accepts, so that no client subject can become a
    wildcard, a second subject or a protocol line on the way to the server.
    """
    if not text:
        raise ValueError(f"{what} is empty")
    if len(text) > MAX_CLIENT_SUBJECT:
        raise ValueError(f"{what} is {len(text)} characters long (at most {MAX_CLIENT_SUBJECT})")
    for char in text:
        if not "!" <= char <= "~":
            raise ValueError(
                f"{what} {_shown(text)} has {_describe(char)}: only printable ASCII without spaces is allowed"
            )
        if char in _FORBIDDEN:
            raise ValueError(f"{what} {_shown(text)} has the wildcard {char!r}: subjects must be literal")
    if any(not token for token in text.split(".")):
        raise ValueError(f"{what} {_shown(text)} has an empty token (a leading, trailing or double dot)")
    return text


def _shown(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:60] + "…")


def _describe(char: str) -> str:
    if char == " ":
        return "a space"
    if char.isspace() or not char.isprintable():
        return f"the control or space character U+{ord(char):04X}"
    return f"the non-ASCII character {char!r}"


@dataclass(frozen=True)
class BridgeSubjects:
    """The subjects of one bridge instance (``tag``) under ``prefix``; the server's :class:`Naming`."""

    prefix: str
    tag: str

    def __post_init__(self) -> None:
        check_tokens(self.prefix, "PREFIX")
        check_tokens(self.tag, "the instance tag")

    # -- what the server asks (provider.websocket.subjects.Naming) -----------------------------------

    @property
    def connected(self) -> str:
        return f"{self.prefix}.event.connected"

    @property
    def disconnected(self) -> str:
        return f"{self.prefix}.event.disconnected"

    def new_session_id(self) -> str:
        return Ids(self.tag).session()

    def session_subject(self, session_id: str, frame_type: FrameType | None = None) -> str:
        base = f"{self.prefix}.session.{session_id}"
        return f"{base}.{frame_type.value}" if frame_type is not None else base

    def delivered_subject(self, client_subject: str) -> str:
        """``PREFIX.in.<client subject>``; ``ValueError`` for a subject that is not literal NATS tokens."""
        return f"{self.prefix}.in.{check_tokens(client_subject, 'subject')}"

    # -- what the bridge subscribes and publishes -----------------------------------------------------

    @property
    def inbound(self) -> str:
        """Every client frame: what a v2 component's ``subscriptions`` name (``ws.in.>``)."""
        return f"{self.prefix}.in.>"

    @property
    def own_sessions(self) -> str:
        """This instance's session subjects: ``PREFIX.session.<tag>.>``."""
        return f"{self.prefix}.session.{self.tag}.>"

    @property
    def own_closes(self) -> str:
        """This instance's close subjects: ``PREFIX.close.<tag>.>``."""
        return f"{self.prefix}.close.{self.tag}.>"

    @property
    def broadcast(self) -> str:
        return f"{self.prefix}.broadcast"

    @property
    def sessions(self) -> str:
        return f"{self.prefix}.sessions"

    @property
    def sessions_group(self) -> str:
        """The queue group of ``PREFIX.sessions``: one instance answers each request."""
        return f"{self.prefix}.bridges"

    @property
    def gather(self) -> str:
        """Where the answering instance asks every instance (itself included) for its sessions."""
        return f"{self.prefix}.bridge.sessions"

    def session_of(self, subject: str) -> str | None:
        """The session id a ``PREFIX.session.<id>`` subject names, if it is one of this instance's."""
        return self._own_id(subject, f"{self.prefix}.session.")

    def close_of(self, subject: str) -> str | None:
        """The session id a ``PREFIX.close.<id>`` subject names, if it is one of this instance's."""
        return self._own_id(subject, f"{self.prefix}.close.")

    def _own_id(self, subject: str, head: str) -> str | None:
        if not subject.startswith(head):
            return None
        session_id = subject[len(head) :]
        tag, dot, rest = session_id.partition(".")
        if tag != self.tag or not dot or not rest or "." in rest:
            return None
        return session_id


# -- the sessions listing -------------------------------------------------------------------------------


def encode_listing(sessions: list[dict[str, Any]], limit: int) -> tuple[bytes, int]:
    """A JSON list of as many of ``sessions`` as fit in ``limit`` bytes, and how many were left out.

    One NATS message carries the answer, so it cannot be longer than the server's max_payload.
    """
    parts: list[bytes] = []
    size = 2  # the brackets
    for session in sessions:
        item = json.dumps(session, separators=(",", ":"), ensure_ascii=False).encode()
        extra = len(item) + (1 if parts else 0)
        if size + extra > limit:
            break
        parts.append(item)
        size += extra
    return b"[" + b",".join(parts) + b"]", len(sessions) - len(parts)


def decode_listing(body: bytes) -> list[dict[str, Any]]:
    """An instance's answer: a JSON list of objects. Raises ``ValueError`` for anything else."""
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ValueError("not a JSON list of objects")
    return value
