"""Server mode: one WebSocket server per listen address, shared by every handler link on it. I/O.

A client that connects becomes a :class:`Session` with an id the provider draws (128
random bits); each frame it sends is decoded under ``FORMAT`` and delivered by
``handle-message`` to the linked components whose ``SUBSCRIPTIONS`` match its subject,
with ``reply-to`` = the session's reply subject, whatever the client wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import mimetypes
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.typing import Origin

from provider.errors import ConfigError
from provider.wasmcloud.links import LinkKey
from provider.websocket import formats
from provider.websocket.config import Delivery, ServerSettings
from provider.websocket.formats import Envelope, Frame
from provider.websocket.peer import (
    Closer,
    Counters,
    Deliver,
    DeliveryWindow,
    SendError,
    TokenBucket,
    deliver_to,
    send_frame,
    server_tls,
)
from provider.websocket.subjects import SERVER_NAMING, Naming
from provider.wrpc.messaging import BrokerMessage

log = logging.getLogger("provider.websocket.server")

CLOSE_TIMEOUT = 2.0
"""Seconds a closing peer gets to answer the close handshake before the TCP connection is dropped."""
STOP_TIMEOUT = 0.15
"""Seconds a stopping server waits for its sessions to close (inside the host's 300 ms shutdown budget)."""


@dataclass(slots=True)
class Session:
    """One connected client."""

    id: str
    ws: ServerConnection
    server: WsServer
    remote: str
    path: str
    query: str
    connected_at: float = field(default_factory=time.time)

    @property
    def reply_subject(self) -> str:
        return self.server.naming.session_subject(self.id)

    def info(self) -> dict[str, object]:
        """What ``ws.sessions`` and lifecycle events tell a component about this session."""
        return {
            "id": self.id,
            "reply_to": self.reply_subject,
            "remote": self.remote,
            "connected_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.connected_at)),
            "path": self.path,
            "query": self.query,
            "listen": f"{self.server.settings.host}:{self.server.settings.port}",
        }

    def send(self, frame: Frame) -> None:
        """Queue ``frame`` for the client; a client too slow to take it is closed (1008). Raises SendError."""
        try:
            send_frame(self.ws, frame, self.server.settings.send_queue_limit)
        except SendError as exc:
            if self.ws.protocol.state is State.OPEN:
                self.server.counters.send_overflows += 1
                log.warning("session %s: %s; closing it (1008)", self.id, exc)
                self.server.closer.close(self.ws, 1008, "send queue full")
            raise
        self.server.counters.frames_out += 1

    def close(self, code: int, reason: str) -> None:
        self.server.closer.close(self.ws, code, reason)


class SessionIndex:
    """Every session of every server, by id: where a component's publish finds its session."""

    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}

    def add(self, session: Session) -> None:
        self._sessions[session.id] = session

    def discard(self, session: Session) -> None:
        self._sessions.pop(session.id, None)

    def get(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    def __len__(self) -> int:
        return len(self._sessions)


def _strip_token(query: str) -> str:
    """The query string without ``token`` (the client's credential is not shown to components)."""
    pairs = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != "token"]
    return urlencode(pairs)


class WsServer:
    """A listening WebSocket server and its sessions, delivering to the handler links on its address."""

    def __init__(
        self,
        settings: ServerSettings,
        deliver: Deliver,
        counters: Counters,
        index: SessionIndex,
        naming: Naming = SERVER_NAMING,
    ) -> None:
        self.settings = settings
        self.counters = counters
        self.naming = naming
        """Session ids and the subjects of deliveries (the v2 bridge brings its own)."""
        self.closer = Closer()
        self._deliver = deliver
        self._index = index
        self._links: dict[LinkKey, tuple[str, Delivery]] = {}
        self.sessions: dict[str, Session] = {}
        self._server: Server | None = None
        self._stopping = False

    # -- links ----------------------------------------------------------------------------------

    def add_link(self, key: LinkKey, component: str, delivery: Delivery) -> None:
        self._links[key] = (component, delivery)

    def remove_link(self, key: LinkKey) -> None:
        self._links.pop(key, None)

    @property
    def has_links(self) -> bool:
        return bool(self._links)

    def delivers_to(self, component: str) -> bool:
        """Whether this server delivers to ``component`` (which may then reach its sessions)."""
        return any(c == component for c, _ in self._links.values())

    def _targets(self, subject: str) -> list[str]:
        return [c for c, d in self._links.values() if d.subscriptions.matches(subject)]

    def _lifecycle_targets(self) -> list[str]:
        return [c for c, d in self._links.values() if d.lifecycle_events]

    # -- life cycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and listen. Raises :class:`ConfigError` if the address cannot be bound."""
        s = self.settings
        tls = server_tls(s.tls_cert, s.tls_key) if s.tls_cert and s.tls_key else None
        origins: list[Origin | None] | None = None
        if s.allowed_origins and "*" not in s.allowed_origins:
            origins = [
                *(Origin(o) for o in s.allowed_origins),
                None,
            ]  # no Origin header: not a browser, nothing to defend
        try:
            self._server = await serve(
                self._session,
                s.host,
                s.port,
                process_request=self._check_request,
                origins=origins,
                compression="deflate" if s.compression else None,
                max_size=s.max_message_bytes,
                max_queue=8,
                ping_interval=s.ping_interval,
                ping_timeout=s.ping_timeout,
                close_timeout=CLOSE_TIMEOUT,
                ssl=tls,
                server_header=None,
                logger=logging.getLogger("websockets.server"),
            )
        except OSError as exc:
            raise ConfigError(f"URI={s.host}:{s.port}: cannot listen there: {exc.strerror or exc}") from exc
        scheme = "wss" if tls else "ws"
        log.info("listening on %s://%s:%d%s (FORMAT=%s)", scheme, s.host, s.port, s.path, s.format.value)

    async def stop(self) -> None:
        """Close every session with 1001 (going away) and stop listening, within :data:`STOP_TIMEOUT`."""
        if self._server is None:
            return
        self._stopping = True
        server, self._server = self._server, None
        server.close(close_connections=True)
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                await server.wait_closed()
        except TimeoutError:
            for session in list(self.sessions.values()):
                session.ws.transport.abort()
        await self.closer.wait()
        log.info("stopped listening on %s:%d", self.settings.host, self.settings.port)

    # -- the opening handshake -------------------------------------------------------------------

    def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Path, static files, connection limit and token, before the WebSocket is accepted."""
        s = self.settings
        url = urlsplit(request.path)
        if url.path != s.path:
            if s.static_dir and "upgrade" not in request.headers.get("Connection", "").lower():
                return self._static(connection, url.path)
            return connection.respond(HTTPStatus.NOT_FOUND, f"no WebSocket endpoint at {url.path}\n")
        if len(self.sessions) >= s.max_connections:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "too many connections\n")
        if s.auth_token is not None and not self._authorized(request.headers, url.query, s.auth_token):
            response = connection.respond(HTTPStatus.UNAUTHORIZED, "a valid token is required\n")
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        return None

    @staticmethod
    def _authorized(headers: Headers, query: str, token: str) -> bool:
        expected = token.encode()
        offered = [v.encode() for k, v in parse_qsl(query) if k == "token"]
        scheme, _, credential = headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            offered.append(credential.strip().encode())
        # compare_digest on every offer: the time taken does not tell how much of a guess matched
        return any([hmac.compare_digest(candidate, expected) for candidate in offered])

    def _static(self, connection: ServerConnection, path: str) -> Response:
        assert self.settings.static_dir is not None
        root = Path(self.settings.static_dir).resolve()
        target = (root / path.lstrip("/")).resolve()
        if target.is_dir():
            target = target / "index.html"
        if not target.is_relative_to(root) or not target.is_file():
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        body = target.read_bytes()
        content_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        # A fresh Response: respond() would already carry text/plain and a zero Content-Length,
        # and websockets' Headers add values rather than replace them.
        headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body)))])
        return Response(HTTPStatus.OK.value, HTTPStatus.OK.phrase, headers, body)

    # -- a session -------------------------------------------------------------------------------

    async def _session(self, ws: ServerConnection) -> None:
        s = self.settings
        url = urlsplit(ws.request.path if ws.request else s.path)
        host, port = ws.remote_address[:2] if ws.remote_address else ("?", 0)
        session = Session(
            self.naming.new_session_id(), ws, self, f"{host}:{port}", url.path, _strip_token(url.query)
        )
        self.sessions[session.id] = session
        self._index.add(session)
        window = DeliveryWindow(s.delivery_window)
        bucket = TokenBucket(s.rate_limit) if s.rate_limit > 0 else None
        log.debug("session %s opened from %s", session.id, session.remote)
        try:
            await self._lifecycle(window, session, self.naming.connected, session.info())
            async for frame in ws:
                self.counters.frames_in += 1
                if bucket is not None:
                    await bucket.take()
                await self._on_frame(window, session, frame)
        except ConnectionClosed:
            pass
        finally:
            self.sessions.pop(session.id, None)
            self._index.discard(session)
            if self._stopping:
                window.cancel()
            else:
                closed = {"code": ws.close_code, "reason": ws.close_reason or ""}
                await self._lifecycle(window, session, self.naming.disconnected, {**session.info(), **closed})
            await window.drain()
            log.debug("session %s closed (%s)", session.id, ws.close_code)

    async def _on_frame(self, window: DeliveryWindow, session: Session, frame: Frame) -> None:
        s = self.settings
        try:
            envelope = formats.decode(s.format, frame, s.subject)
            subject = self.naming.delivered_subject(envelope.subject)
        except (formats.FrameError, ValueError) as exc:
            self.counters.bad_frames += 1
            self._reply_error(session, str(exc))
            return
        targets = self._targets(envelope.subject)
        if not targets:
            self.counters.unrouted_frames += 1
            self._reply_error(session, f"no component subscribes to subject {envelope.subject!r}")
            return
        msg = BrokerMessage(subject, envelope.body, session.reply_subject)
        await window.submit(self._deliver_all(targets, msg, session.id))

    def _reply_error(self, session: Session, message: str) -> None:
        frame = formats.error_frame(self.settings.format, message)
        if frame is None:
            log.info("session %s: %s", session.id, message)
            return
        with contextlib.suppress(SendError):  # a client that cannot take it is being closed already
            session.send(frame)

    async def _lifecycle(
        self, window: DeliveryWindow, session: Session, subject: str, info: dict[str, object]
    ) -> None:
        targets = self._lifecycle_targets()
        if targets:
            msg = BrokerMessage(subject, json.dumps(info).encode(), session.reply_subject)
            await window.submit(self._deliver_all(targets, msg, session.id))

    async def _deliver_all(self, components: list[str], msg: BrokerMessage, session_id: str) -> None:
        origin = f"session {session_id}"
        if len(components) == 1:
            await deliver_to(self._deliver, components[0], msg, self.counters, origin)
        else:
            await asyncio.gather(
                *(deliver_to(self._deliver, c, msg, self.counters, origin) for c in components)
            )

    # -- from components --------------------------------------------------------------------------

    def encode(self, msg: BrokerMessage) -> Frame:
        """The frame carrying a component's message to this server's clients."""
        return formats.encode(self.settings.format, Envelope(msg.subject, msg.body, msg.reply_to))

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self.sessions.values()))
