"""The bridge at work: one server-mode WebSocket server, its sessions mapped to NATS subjects. I/O.

Clients connect to the same :class:`~provider.websocket.server.WsServer` as in server mode
(auth, origins, limits, backpressure, formats, static files); what differs is where frames
go and where answers come from:

* a frame with subject ``s`` is published on ``PREFIX.in.s`` with the session's subject as
  its reply subject (the server refuses a subject that is not literal NATS tokens with a
  ``ws.error`` frame, so nothing reaches NATS outside ``PREFIX.in.>``); lifecycle events
  are published on ``PREFIX.event.connected`` / ``…disconnected`` the same way;
* NATS messages on this instance's session and close subjects (one wildcard subscription
  each), on ``PREFIX.broadcast`` and on ``PREFIX.sessions`` become frames, closes and the
  gathered listing.

Nothing a NATS peer sends stops the bridge: every handler catches what goes wrong, logs it
with the reason and counts it (:class:`BridgeCounters`; logged at shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import UserString
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import nats.errors
from nats.aio.subscription import Subscription

from provider.bridge.config import BridgeSettings
from provider.bridge.subjects import BridgeSubjects, decode_listing, encode_listing
from provider.errors import ConfigError
from provider.wasmcloud.runtime import connect_nats_retrying
from provider.websocket import formats
from provider.websocket.peer import Counters, SendError, client_tls
from provider.websocket.server import Session, SessionIndex, WsServer
from provider.websocket.subjects import instance_tag
from provider.wrpc.codec import Err, Ok
from provider.wrpc.connection import DirectHandler, NatsConnection
from provider.wrpc.messaging import BrokerMessage, UnitResult
from provider.wrpc.protocol import valid_subject

log = logging.getLogger("provider.bridge")

NATS = "NATS"
"""The one 'component' the server delivers to: everything goes to NATS."""
LINK = ("bridge", NATS, "wasmcloud", "messaging", "bridge")
"""The server delivers to its handler links; the bridge is one."""
MAX_GATHERS = 16
"""``sessions`` requests answered at once; more are dropped (logged, counted) rather than queued."""
CONNECT_TIMEOUT = 10.0
DRAIN_TIMEOUT = 2.0


@dataclass
class BridgeCounters:
    """What the bridge counts besides the server's :class:`~provider.websocket.peer.Counters`."""

    published: int = 0
    publish_failures: int = 0
    frames_to_sessions: int = 0
    broadcasts: int = 0
    closes: int = 0
    no_such_session: int = 0
    undeliverable: int = 0
    sessions_answered: int = 0
    bad_nats_messages: int = 0
    listings_cut: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _text(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


class Bridge:
    """One bridge instance: :meth:`run` until :meth:`stop` (or a signal the caller wires to it)."""

    def __init__(self, settings: BridgeSettings, tag: str | None = None) -> None:
        self.settings = settings
        self.subjects = BridgeSubjects(settings.prefix, tag or instance_tag())
        self.counters = Counters()
        self.stats = BridgeCounters()
        self.server: WsServer | None = None
        self._nc: NatsConnection | None = None
        self._subscriptions: list[Subscription] = []
        self._gathers: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()

    def stop(self) -> None:
        """Ask :meth:`run` to close every session (1001), leave NATS and return."""
        self._stop.set()

    async def run(self) -> None:
        """Connect to NATS, subscribe, listen; serve until :meth:`stop`.

        Raises :class:`~provider.errors.ProviderError` (:class:`ConfigError` for bad settings).
        """
        self._nc = await self._connect()
        try:
            settings = self._fit_frames_to_nats(self._nc)
            await self._subscribe(self._nc)
            self.server = WsServer(
                settings.server, self._publish, self.counters, SessionIndex(), naming=self.subjects
            )
            self.server.add_link(LINK, NATS, settings.delivery)
            await self.server.start()
            s = settings.server
            scheme = "wss" if s.tls_cert else "ws"
            log.info(
                "bridge ready: %s://%s:%d%s <-> NATS %s, prefix %r, instance %s",
                scheme,
                s.host,
                s.port,
                s.path,
                settings.nats.shown,
                self.subjects.prefix,
                self.subjects.tag,
            )
            await self._stop.wait()
        finally:
            await self._shutdown()

    # -- NATS --------------------------------------------------------------------------------------

    async def _connect(self) -> NatsConnection:
        n = self.settings.nats
        options: dict[str, Any] = {}
        if n.creds:
            options["user_credentials"] = UserString(n.creds)  # nats-py's form of in-memory creds
        if n.token:
            options["token"] = n.token
        if n.user:
            options["user"], options["password"] = n.user, n.password
        if n.tls_ca or any(url.startswith("tls://") for url in n.servers):
            options["tls"] = client_tls(n.tls_ca)
        return await connect_nats_retrying(
            list(n.servers),
            name=f"wasmcloud-ws-bridge {self.subjects.tag}",
            shown=n.shown,
            timeout=CONNECT_TIMEOUT,
            **options,
        )

    def _fit_frames_to_nats(self, nc: NatsConnection) -> BridgeSettings:
        """A frame's body must fit one NATS message: MAX_MESSAGE_BYTES at most the server's max_payload."""
        settings = self.settings
        limit = nc.max_payload
        if settings.server.max_message_bytes <= limit:
            return settings
        if settings.max_message_bytes_given:
            raise ConfigError(
                f"MAX_MESSAGE_BYTES={settings.server.max_message_bytes} is more than the NATS server "
                f"takes in one message (max_payload {limit}); lower it or raise max_payload"
            )
        log.info("MAX_MESSAGE_BYTES lowered to %d, the NATS server's max_payload", limit)
        self.settings = settings.with_max_message_bytes(limit)
        return self.settings

    async def _subscribe(self, nc: NatsConnection) -> None:
        s = self.subjects
        wanted: list[tuple[str, DirectHandler, str]] = [
            (s.own_sessions, self._guard(self._on_session_message), ""),
            (s.own_closes, self._guard(self._on_close), ""),
            (s.broadcast, self._guard(self._on_broadcast), ""),
            (s.sessions, self._guard(self._on_sessions_request), s.sessions_group),
            (s.gather, self._guard(self._on_gather), ""),
        ]
        for subject, handler, queue in wanted:
            self._subscriptions.append(await nc.subscribe_direct(subject, handler, queue=queue))
        # Every subscription is active before the first client can connect (and be answered).
        await nc.flush(timeout=int(CONNECT_TIMEOUT))

    def _guard(self, handler: Callable[[str, bytes, bytes], None]) -> DirectHandler:
        """A direct handler that never raises into nats-py's reader, whatever the message holds."""

        def guarded(subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
            try:
                handler(subject.decode("utf-8", errors="replace"), reply, data)
            except Exception:
                self.stats.bad_nats_messages += 1
                log.exception("message on %r dropped: handling it failed", subject[:200])

        return guarded

    async def _shutdown(self) -> None:
        if self.server is not None:
            await self.server.stop()  # every session closed with 1001
        for task in self._gathers:
            task.cancel()
        await asyncio.gather(*self._gathers, return_exceptions=True)
        if self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._nc.drain(), DRAIN_TIMEOUT)  # publishes in flight go out
            if not self._nc.is_closed:
                await self._nc.close()
        stats = ", ".join(f"{k} {v}" for k, v in self.stats.as_dict().items() if v) or "nothing else"
        log.info("bridge stopped: %s; %s", self.counters.summary(), stats)

    # -- client frames and lifecycle events → NATS (the server's Deliver) -----------------------------

    async def _publish(self, component: str, msg: BrokerMessage) -> UnitResult:
        assert self._nc is not None
        try:
            await self._nc.publish(msg.subject, msg.body, reply=msg.reply_to or "")
        except (nats.errors.Error, OSError) as exc:
            self.stats.publish_failures += 1
            reason = f"not published on {msg.subject!r}: {exc or type(exc).__name__}"
            self._tell(msg.reply_to, reason)
            return Err(reason)
        self.stats.published += 1
        return Ok(None)

    def _tell(self, reply_to: str | None, message: str) -> None:
        """An error frame to the session a failed publish came from (if it is still there)."""
        session_id = self.subjects.session_of(reply_to or "")
        session = self.server.sessions.get(session_id or "") if self.server else None
        if session is None:
            return
        frame = formats.error_frame(session.server.settings.format, message)
        if frame is not None:
            with contextlib.suppress(SendError):
                session.send(frame)

    # -- NATS → sessions ---------------------------------------------------------------------------

    def _session(self, session_id: str | None, subject: str) -> Session | None:
        session = self.server.sessions.get(session_id) if self.server and session_id else None
        if session is None:
            self.stats.no_such_session += 1
            log.info("message on %r dropped: no such session on this bridge (it closed?)", subject[:200])
        return session

    def _on_session_message(self, subject: str, reply: bytes, data: bytes) -> None:
        session = self._session(self.subjects.session_of(subject), subject)
        if session is None:
            return
        reply_to = _text(reply) if reply else None  # a reply subject that is not text is left out
        try:
            session.send(session.server.encode(BrokerMessage(subject, data, reply_to)))
        except SendError as exc:
            self.stats.undeliverable += 1
            log.info("message on %r not delivered: %s", subject, exc)
            return
        self.stats.frames_to_sessions += 1

    def _on_close(self, subject: str, reply: bytes, data: bytes) -> None:
        session = self._session(self.subjects.close_of(subject), subject)
        if session is None:
            return
        self.stats.closes += 1
        session.close(1000, data.decode("utf-8", errors="replace"))

    def _on_broadcast(self, subject: str, reply: bytes, data: bytes) -> None:
        if self.server is None:
            return
        self.stats.broadcasts += 1
        frame = self.server.encode(BrokerMessage(subject, data, (_text(reply) if reply else None)))
        for session in self.server:
            # A closed session, or one being closed as too slow, does not stop the others.
            with contextlib.suppress(SendError):
                session.send(frame)

    def _listing(self) -> bytes:
        sessions = [session.info() for session in self.server] if self.server else []
        assert self._nc is not None
        body, left_out = encode_listing(sessions, self._nc.max_payload)
        if left_out:
            self.stats.listings_cut += 1
            log.warning("sessions listing cut: %d session(s) do not fit one NATS message", left_out)
        return body

    def _on_gather(self, subject: str, reply: bytes, data: bytes) -> None:
        """Another instance (or this one) gathers the sessions: answer with this instance's."""
        reply_to = _text(reply)
        if not reply_to or not valid_subject(reply_to):
            self.stats.bad_nats_messages += 1
            log.info("message on %r dropped: no reply subject to answer on", subject)
            return
        assert self._nc is not None
        self._nc.publish_now(reply_to, self._listing())

    def _on_sessions_request(self, subject: str, reply: bytes, data: bytes) -> None:
        reply_to = _text(reply)
        if not reply_to:
            self.stats.bad_nats_messages += 1
            log.info("request on %r dropped: no reply subject to answer on", subject)
            return
        if len(self._gathers) >= MAX_GATHERS:
            self.stats.bad_nats_messages += 1
            log.warning("request on %r dropped: %d already being answered", subject, MAX_GATHERS)
            return
        task = asyncio.get_running_loop().create_task(self._gather(reply_to))
        self._gathers.add(task)
        task.add_done_callback(self._gathers.discard)

    async def _gather(self, reply_to: str) -> None:
        """Ask every instance for its sessions, wait the gather window, answer with all of them."""
        assert self._nc is not None
        nc = self._nc
        gathered: list[dict[str, Any]] = []

        def collect(subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
            try:
                gathered.extend(decode_listing(data))
            except ValueError as exc:
                self.stats.bad_nats_messages += 1
                log.info("a sessions answer dropped: %s", exc)

        inbox = nc.new_inbox()
        sub = await nc.subscribe_direct(inbox, collect)
        try:
            nc.publish_now(self.subjects.gather, b"", reply=inbox)
            # The window is the deadline of a scatter/gather: how many instances answer is not known.
            await asyncio.sleep(self.settings.gather_seconds)
        finally:
            await nc.unsubscribe_direct(sub)
        body, left_out = encode_listing(gathered, nc.max_payload)
        if left_out:
            self.stats.listings_cut += 1
            log.warning("sessions answer cut: %d session(s) do not fit one NATS message", left_out)
        try:
            await nc.publish(reply_to, body)
        except (nats.errors.Error, OSError) as exc:
            self.stats.publish_failures += 1
            log.warning("sessions answer to %r not published: %s", reply_to[:200], exc)
            return
        self.stats.sessions_answered += 1
