"""Server mode: one WebSocket server per listen address, shared by every handler link on it. I/O.

A client that connects becomes a :class:`Session` with an id the provider draws (its
instance's tag and 128 random bits); each frame it sends is decoded under ``FORMAT`` and delivered by
``handle-message`` to the linked components whose ``SUBSCRIPTIONS`` match its subject,
with ``reply-to`` = the session's reply subject, whatever the client wrote. A frame on a
subject the provider reserves (``ws.connected``…) is refused with a ``ws.error`` frame.

Every session the provider closes (a slow reader, a keepalive timeout, a component's
request, a frame too big, shutdown) is logged with its code and reason and counted.
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
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

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
    DROP_BAD_FRAME,
    DROP_RESERVED,
    DROP_UNROUTED,
    KEEPALIVE_TIMEOUT,
    Closer,
    Counters,
    Deliver,
    DeliveryWindow,
    Liveness,
    SendError,
    TokenBucket,
    close_key,
    closed_by_us,
    deliver_to,
    keepalive,
    send_frame,
    server_tls,
)
from provider.websocket.subjects import FrameType, Ids, Naming, ReservedSubject, ServerNaming
from provider.wrpc.messaging import BrokerMessage

log = logging.getLogger("provider.websocket.server")

CLOSE_TIMEOUT = 2.0
"""Seconds a closing peer gets to answer the close handshake before the TCP connection is dropped."""
STOP_TIMEOUT = 0.15
"""Seconds a stopping server waits for its sessions to close (inside the host's 300 ms shutdown budget)."""
SEND_QUEUE_FULL = "send queue full"
MAX_STATIC_BYTES = 8 * 1024 * 1024
"""The largest file ``STATIC_DIR`` serves (it is read whole, for pages and their assets)."""


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
    liveness: Liveness = field(default_factory=Liveness)
    close_label: str | None = None
    """Why the provider closes this session, for the counters (``None``: by code)."""

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
            "instance": self.server.instance,
        }

    def send(self, frame: Frame) -> None:
        """Queue ``frame`` for the client; a client too slow to take it is closed (1008). Raises SendError."""
        try:
            send_frame(self.ws, frame, self.server.settings.send_queue_limit)
        except SendError as exc:
            if self.ws.protocol.state is State.OPEN:
                log.warning("session %s: %s; closing it (1008)", self.id, exc)
                self.close(1008, SEND_QUEUE_FULL, SEND_QUEUE_FULL)
            raise
        self.server.counters.sent(frame)

    def close(self, code: int, reason: str, label: str | None = None) -> None:
        """Start the close handshake; ``label`` names the cause in the counters (else the code)."""
        if self.close_label is None:
            self.close_label = label
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
        naming: Naming | None = None,
    ) -> None:
        self.settings = settings
        self.counters = counters
        self.naming: Naming = naming or ServerNaming(Ids.for_instance())
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
    def instance(self) -> str:
        """The tag of the provider instance this server runs in (the first token of its session ids)."""
        return self.naming.tag

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
                ping_interval=None,  # the provider's own keepalive, which knows when it stopped reading
                close_timeout=CLOSE_TIMEOUT,
                ssl=tls,
                server_header=None,
                reuse_port=s.reuse_port or None,
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
        """Path, static files, connection limit and token, before the WebSocket is accepted.

        Never raises: whatever the request holds, the client gets a 4xx, not websockets' 500
        and a traceback in the log.
        """
        try:
            return self._screen(connection, request)
        except Exception as exc:  # a request nobody foresaw: refuse it, without a traceback per request
            log.warning("refused a request for %r: %s: %s", request.path[:200], type(exc).__name__, exc)
            return connection.respond(HTTPStatus.BAD_REQUEST, "bad request\n")

    def _screen(self, connection: ServerConnection, request: Request) -> Response | None:
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
        try:
            name = unquote(path, errors="strict")  # /a%20b.txt is the file "a b.txt"
        except UnicodeDecodeError:
            return connection.respond(HTTPStatus.BAD_REQUEST, "the path is not UTF-8\n")
        if "\x00" in name:
            return connection.respond(HTTPStatus.BAD_REQUEST, "the path holds a NUL byte\n")
        root = Path(self.settings.static_dir).resolve()
        try:
            target = (root / name.lstrip("/")).resolve()
            if target.is_dir():
                target = target / "index.html"
            # Resolved first (symlinks and ".." included), then checked: nothing outside root, ever.
            if not target.is_relative_to(root) or not target.is_file():
                return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
            if target.stat().st_size > MAX_STATIC_BYTES:
                return connection.respond(HTTPStatus.FORBIDDEN, "too large to serve from STATIC_DIR\n")
            body = target.read_bytes()
        except OSError as exc:  # a name too long, a file that vanished or cannot be read
            log.info("static %r: %s", path[:200], exc.strerror or exc)
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
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
        liveness = session.liveness
        pinger = (
            asyncio.create_task(
                keepalive(ws, s.ping_interval, s.ping_timeout, liveness, lambda: self._timed_out(session))
            )
            if s.ping_interval
            else None
        )
        log.debug("session %s opened from %s", session.id, session.remote)
        try:
            await self._lifecycle(window, session, self.naming.connected, session.info())
            async for frame in ws:
                self.counters.received(frame)
                liveness.frames += 1
                liveness.busy = True  # from here until the next read, the provider reads nothing
                if bucket is not None:
                    await bucket.take()
                await self._on_frame(window, session, frame)
                liveness.busy = False
        except ConnectionClosed:
            pass
        finally:
            liveness.busy = False
            if pinger is not None:
                pinger.cancel()
            self.sessions.pop(session.id, None)
            self._index.discard(session)
            if self._stopping:
                window.cancel()
            else:
                closed = {"code": ws.close_code, "reason": ws.close_reason or ""}
                await self._lifecycle(window, session, self.naming.disconnected, {**session.info(), **closed})
            await window.drain()
            self._count_close(session)

    async def _timed_out(self, session: Session) -> None:
        """The keepalive gave up on ``session``: no pong, no frames, and the provider was reading."""
        session.close(1011, KEEPALIVE_TIMEOUT, KEEPALIVE_TIMEOUT)

    def _count_close(self, session: Session) -> None:
        """Log and count a close the provider started (any code); a client's own close is debug."""
        ours = closed_by_us(session.ws)
        if ours is None:
            log.debug("session %s closed by the client (%s)", session.id, session.ws.close_code)
            return
        code, reason = ours
        self.counters.closes[close_key(code, session.close_label)] += 1
        log.info("session %s from %s closed by the provider: %d %s", session.id, session.remote, code, reason)

    async def _on_frame(self, window: DeliveryWindow, session: Session, frame: Frame) -> None:
        s = self.settings
        try:
            envelope = formats.decode(s.format, frame, s.subject)
            subject = self.naming.delivered_subject(envelope.subject)
        except formats.FrameError as exc:
            self._reply_error(session, DROP_BAD_FRAME, str(exc))
            return
        except ReservedSubject as exc:
            self._reply_error(session, DROP_RESERVED, str(exc))
            return
        except ValueError as exc:  # a subject the naming refuses (the v2 bridge: not NATS tokens)
            self._reply_error(session, DROP_BAD_FRAME, str(exc))
            return
        targets = self._targets(envelope.subject)
        if not targets:
            self._reply_error(
                session, DROP_UNROUTED, f"no component subscribes to subject {envelope.subject!r}"
            )
            return
        # A raw binary frame's reply subject asks for a binary answer, so an echo keeps the type.
        binary = s.format is formats.Format.RAW and isinstance(frame, bytes)
        reply_to = self.naming.session_subject(session.id, FrameType.BINARY if binary else None)
        msg = BrokerMessage(subject, envelope.body, reply_to)
        await window.submit(self._deliver_all(targets, msg, session.id))

    def _reply_error(self, session: Session, reason: str, message: str) -> None:
        """Count a dropped frame and tell the client why (raw clients: the log only)."""
        self.counters.drops[reason] += 1
        frame = formats.error_frame(self.settings.format, message)
        if frame is None:
            log.info("session %s: dropped a frame: %s", session.id, message)
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

    def encode(self, msg: BrokerMessage, frame_type: FrameType | None = None) -> Frame:
        """The frame carrying a component's message to this server's clients. Raises FrameError."""
        return formats.encode(self.settings.format, Envelope(msg.subject, msg.body, msg.reply_to), frame_type)

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self.sessions.values()))
