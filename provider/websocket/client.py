"""Client mode: one outgoing WebSocket connection per (component, URI, link name). I/O.

The connection is opened when the first of the component's two client-mode links
(``handler``: deliver the server's frames; ``consumer``: publish and request) appears,
and closed (1000) when the last one goes. It reconnects with exponential backoff and
jitter (:func:`backoff`); the backoff starts over once a connection has stayed up for
``RECONNECT_MAX_MS``. Its id, and so its reply subject ``ws.conn.<id>``, stays the same
across reconnects and config changes (:meth:`Connection.reconfigure` reconnects with new
settings in place).

Reading never waits for the component except when the backlog is full: answers to
``request`` are matched as they arrive, and other frames queue (at most
:data:`DELIVERY_BACKLOG`) for in-order delivery. So a component that calls ``request``
while it handles a frame gets its answer even if the server sends other frames first.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import random
import ssl

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State as Protocol

from provider.websocket import formats
from provider.websocket.config import ClientSettings
from provider.websocket.formats import Envelope, Format, Frame
from provider.websocket.peer import (
    DROP_BAD_FRAME,
    DROP_LATE_ANSWER,
    DROP_NO_HANDLER,
    DROP_UNDELIVERED,
    KEEPALIVE_TIMEOUT,
    Counters,
    Deliver,
    DeliveryWindow,
    Liveness,
    SendError,
    client_tls,
    close_key,
    closed_by_us,
    deliver_to,
    keepalive,
    send_frame,
)
from provider.websocket.subjects import REQUEST, FrameType, connection_subject, new_id
from provider.wrpc.codec import Err, Ok
from provider.wrpc.messaging import BrokerMessage, MessageResult

log = logging.getLogger("provider.websocket.client")

CLOSE_TIMEOUT = 2.0
PING_TIMEOUT = 20.0
"""Seconds a keepalive pong may take (websockets' default), counted only while the provider reads."""
DEFAULT_REQUEST_TIMEOUT_MS = 10_000
DELIVERY_BACKLOG = 32
"""Frames read ahead of the component's ``handle-message`` calls. Beyond it reading pauses (the
server is slowed down by TCP, nothing is dropped), which also delays answers to requests."""


class State(enum.Enum):
    """Where a connection is in its life; shown in the health message and in errors."""

    STANDBY = "held by another instance"
    CONNECTING = "connecting"
    OPEN = "open"
    WAITING = "waiting to reconnect"
    FAILED = "failed"
    CLOSED = "closed"


def backoff(step: int, low: float, high: float) -> float:
    """Seconds to wait before reconnect attempt ``step`` (1, 2, …), always within ``[low, high]``.

    The ceiling doubles from ``2·low`` up to ``high``, and the delay is drawn from its upper
    half ("equal jitter"): it keeps growing, yet clients cut off together do not retry in step.
    """
    # The exponent is capped: an unbounded 2**step overflows a float after ~1000 attempts,
    # which a connection retried forever reaches within hours.
    ceiling = min(high, low * 2.0 ** min(max(step, 1), 64))
    delay = random.uniform(max(low, ceiling / 2), ceiling)
    return min(high, max(low, delay))  # uniform() may round one ulp past its bounds


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class Connection:
    """One outgoing connection, its reconnect loop and its in-order delivery to the component.

    Raises :class:`~provider.errors.ConfigError` if ``TLS_CA`` cannot be loaded, so that a link
    with a bad CA is rejected when it is put, not retried forever.
    """

    def __init__(
        self,
        component: str,
        settings: ClientSettings,
        deliver: Deliver,
        counters: Counters,
        connection_id: str | None = None,
    ) -> None:
        self.id = connection_id or new_id()
        self.component = component
        self.settings = settings
        self.has_handler = False
        self.has_consumer = False
        self.state = State.CONNECTING
        self.last_error: str | None = None
        self.connects = 0
        self._tls: ssl.SSLContext | None = client_tls(settings.tls_ca) if settings.secure else None
        self._deliver = deliver
        self._counters = counters
        self._ws: ClientConnection | None = None
        self._changed = asyncio.Condition()  # notified when the connection opens, gives up or closes
        self._stopped: str | None = None  # why sending is over for good (gave up, link deleted)
        self._close_reason = "link deleted"  # the reason of the close frame when the run loop is cancelled
        self._liveness = Liveness()
        self._pending: dict[str, asyncio.Future[Envelope]] = {}  # correlation subject → its answer
        self._sent_on: dict[str, ClientConnection] = {}  # correlation subject → where it was sent
        self._backlog: asyncio.Queue[BrokerMessage] = asyncio.Queue(DELIVERY_BACKLOG)
        self._in_hand = 0  # frames taken from, or not yet put in, the backlog when close() cancels
        self._task: asyncio.Task[None] | None = None
        self._deliverer: asyncio.Task[None] | None = None
        self._closing: asyncio.Future[None] | None = None

    @property
    def reply_subject(self) -> str:
        """``ws.conn.<id>``: the ``reply-to`` of this connection's frames."""
        return connection_subject(self.id)

    @property
    def started(self) -> bool:
        return self._task is not None

    @property
    def closed(self) -> bool:
        return self._closing is not None

    def fresh(self) -> Connection:
        """A new, unstarted connection with this one's id, settings and links (after a close)."""
        copy = Connection(self.component, self.settings, self._deliver, self._counters, self.id)
        copy.has_handler, copy.has_consumer = self.has_handler, self.has_consumer
        return copy

    def start(self) -> None:
        """Start connecting (in the background) and delivering."""
        where = self.settings.where
        self._task = asyncio.create_task(self._run(), name=f"ws-client {where}")
        self._deliverer = asyncio.create_task(self._deliver_backlog(), name=f"ws-client-deliver {where}")

    async def close(self, reason: str = "link deleted") -> None:
        """Close with 1000 and ``reason``, and stop reconnecting; fail requests in flight.

        Idempotent: a second call waits for the first one's close to finish.
        """
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close(reason))
        await asyncio.shield(self._closing)

    async def _close(self, reason: str) -> None:
        self._close_reason = reason
        self._stopped = f"closed ({reason})"
        # The run loop closes an open connection with 1000 on its way out (see _run).
        tasks = [t for t in (self._task, self._deliverer) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.state = State.CLOSED
        await self._notify()
        self._fail_pending(f"{self._stopped} while the request waited")
        undelivered = self._backlog.qsize() + self._in_hand
        if undelivered:
            self._counters.drops[DROP_UNDELIVERED] += undelivered
            log.warning(
                "%s: %d frame(s) from %s not delivered: %s",
                self.component,
                undelivered,
                self.settings.where,
                self._stopped,
            )

    async def reconfigure(self, settings: ClientSettings) -> bool:
        """Reconnect with ``settings`` (same id, same reply subject); ``False`` if nothing changed.

        Raises :class:`~provider.errors.ConfigError` (a bad ``TLS_CA``) before anything changes.
        Requests in flight on the old connection fail; frames already read are still delivered.
        """
        if settings == self.settings or self._stopped is not None:
            return False
        tls = client_tls(settings.tls_ca) if settings.secure else None
        if self._task is not None:
            self._close_reason = "link config changed"
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.settings, self._tls = settings, tls
        self._close_reason = "link deleted"
        if self._task is None:  # standing by (another instance holds the connection): nothing to restart
            return True
        self._task = asyncio.create_task(self._run(), name=f"ws-client {settings.where}")
        return True

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _fail_pending(self, reason: str, sent_on: ClientConnection | None = None) -> None:
        """Fail the requests waiting for an answer (only those sent on ``sent_on``, if given)."""
        for correlation, future in self._pending.items():
            if (sent_on is None or self._sent_on.get(correlation) is sent_on) and not future.done():
                future.set_exception(SendError(reason))

    # -- the connection loop ------------------------------------------------------------------------

    async def _connect(self) -> ClientConnection:
        s = self.settings
        headers = list(s.headers)
        if s.auth_token:
            headers.append(("Authorization", f"Bearer {s.auth_token}"))
        return await connect(
            s.uri,
            additional_headers=headers,
            subprotocols=list(s.subprotocols) or None,  # type: ignore[arg-type]  # Subprotocol is a str
            open_timeout=s.connect_timeout,
            ping_interval=None,  # the provider's own keepalive (see peer.keepalive)
            close_timeout=CLOSE_TIMEOUT,
            max_size=s.max_message_bytes,
            compression=None,
            ssl=self._tls,
            user_agent_header=None,
        )

    async def _open(self) -> ClientConnection:
        """:meth:`_connect`, such that a connection the server accepted always gets a close frame.

        Cancelled (by :meth:`close` or :meth:`reconfigure`) during the opening handshake, it lets
        the handshake finish for up to ``CLOSE_TIMEOUT`` and closes what opened with 1000 and the
        reason; only a server that has not answered by then is dropped without one. (The server may
        have sent its 101 and counted the connection open while the provider had not read it yet.)
        """
        opening = asyncio.ensure_future(self._connect())
        try:
            return await asyncio.shield(opening)
        except asyncio.CancelledError:
            await self._close_opening(opening)
            raise

    async def _close_opening(self, opening: asyncio.Future[ClientConnection]) -> None:
        done: set[asyncio.Future[ClientConnection]] = set()
        try:
            done, _ = await asyncio.wait([opening], timeout=CLOSE_TIMEOUT)
        finally:
            if not opening.done():  # no answer within CLOSE_TIMEOUT, or cancelled again: drop it
                opening.cancel()
                log.info(
                    "%s: dropped the connection being opened to %s before its handshake finished (%s)",
                    self.component,
                    self.settings.where,
                    self._close_reason,
                )
        if opening not in done or opening.cancelled() or opening.exception() is not None:
            return  # nothing opened; the run loop is ending, so a failure is neither retried nor shown
        ws = opening.result()
        await ws.close(1000, self._close_reason)
        self._count_close(ws)

    async def _run(self) -> None:
        """Connect, read until the connection ends, wait, reconnect; until closed or given up."""
        s = self.settings
        loop = asyncio.get_running_loop()
        retries = 0  # failed reconnect attempts in a row: MAX_RECONNECT_ATTEMPTS bounds these
        retrying = False  # the first attempt of all is a connect, not a reconnect
        step = 0  # backoff step: grows with failed attempts and short-lived connections
        while True:
            self.state = State.CONNECTING
            try:
                ws = await self._open()
            except Exception as exc:
                self.last_error = _describe(exc)
                if retrying:
                    retries += 1
                retrying = True
                if s.max_reconnect_attempts and retries >= s.max_reconnect_attempts:
                    await self._give_up(retries)
                    return
                step += 1
                await self._wait("cannot connect to %s (%s); retrying in %.2fs", step)
                continue
            retries, retrying = 0, True
            self.connects += 1
            opened = loop.time()
            self._ws = ws
            self.state = State.OPEN
            log.info("%s: connected to %s", self.component, s.where)
            pinger = (
                asyncio.create_task(
                    keepalive(
                        ws,
                        s.ping_interval,
                        PING_TIMEOUT,
                        self._liveness,
                        functools.partial(self._timed_out, ws),
                    )
                )
                if s.ping_interval
                else None
            )
            try:
                await self._notify()
                await self._read(ws)
            except asyncio.CancelledError:  # close() or reconfigure(): say goodbye properly
                await ws.close(1000, self._close_reason)
                raise
            except Exception:  # a bug here must not end reconnecting for good
                log.exception("%s: reading from %s failed", self.component, s.where)
                await ws.close(1011, "provider error")
            finally:
                self._ws = None
                self._liveness.busy = False
                if pinger is not None:
                    pinger.cancel()
                self._count_close(ws)
                self.last_error = f"closed ({ws.close_code} {ws.close_reason or ''})".replace(" )", ")")
                # The server cannot answer on a later connection what it was asked on this one.
                self._fail_pending(
                    f"the connection to {s.where} {self.last_error} before the answer came", ws
                )
            # A connection that stayed up resets the backoff; one that dropped at once keeps it growing.
            step = 1 if loop.time() - opened >= s.reconnect_max else step + 1
            await self._wait("connection to %s %s; reconnecting in %.2fs", step)

    async def _timed_out(self, ws: ClientConnection) -> None:
        """No pong while the provider was reading: the server is gone; close, then reconnect."""
        await ws.close(1011, KEEPALIVE_TIMEOUT)

    def _count_close(self, ws: ClientConnection) -> None:
        ours = closed_by_us(ws)
        if ours is None:
            return
        code, reason = ours
        label = KEEPALIVE_TIMEOUT if reason == KEEPALIVE_TIMEOUT else None
        self._counters.closes[close_key(code, label)] += 1
        log.info(
            "%s: the provider closed its connection to %s: %d %s",
            self.component,
            self.settings.where,
            code,
            reason,
        )

    async def _wait(self, message: str, step: int) -> None:
        s = self.settings
        delay = backoff(step, s.reconnect_min, s.reconnect_max)
        self.state = State.WAITING
        log.warning("%s: " + message, self.component, s.where, self.last_error, delay)
        await asyncio.sleep(delay)

    async def _give_up(self, retries: int) -> None:
        s = self.settings
        self.state = State.FAILED
        limit = f"MAX_RECONNECT_ATTEMPTS={s.max_reconnect_attempts}"
        self._stopped = f"gave up after {retries} reconnect attempt(s) ({limit})"
        log.error(
            "%s: %s to %s; last error: %s; delete and put the link again to retry",
            self.component,
            self._stopped,
            s.where,
            self.last_error,
        )
        self._fail_pending(f"not connected to {s.where}: {self._stopped}")
        await self._notify()

    async def _read(self, ws: ClientConnection) -> None:
        liveness = self._liveness
        try:
            async for frame in ws:
                liveness.frames += 1
                message = self._inbound(ws, frame)
                if message is not None:
                    await self._enqueue(message)
        except ConnectionClosed:
            pass

    async def _enqueue(self, message: BrokerMessage) -> None:
        if not self._backlog.full():
            self._backlog.put_nowait(message)
            return
        self._liveness.busy = True  # the backlog is full: the provider itself stops reading
        try:
            await self._backlog.put(message)
        except asyncio.CancelledError:
            self._in_hand += 1  # closed while the backlog was full: count it with the backlog
            raise
        finally:
            self._liveness.busy = False

    def _inbound(self, ws: ClientConnection, frame: Frame) -> BrokerMessage | None:
        """Match an answer to its request, or make the message to deliver; ``None`` if there is none."""
        s = self.settings
        self._counters.received(frame)
        try:
            envelope = formats.decode(s.format, frame, s.subject)
        except formats.FrameError as exc:
            self._counters.drops[DROP_BAD_FRAME] += 1
            log.warning("%s: ignored a frame from %s: %s", self.component, s.where, exc)
            error = formats.error_frame(s.format, str(exc))
            if error is not None:
                try:
                    send_frame(ws, error, s.send_queue_limit)
                except SendError as send_error:
                    log.debug("%s: no error frame sent to %s: %s", self.component, s.where, send_error)
            return None
        waiter = self._pending.pop(envelope.subject, None)
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(envelope)
            return None
        if envelope.subject.startswith(REQUEST):
            self._counters.drops[DROP_LATE_ANSWER] += 1
            log.warning(
                "%s: dropped an answer on %r from %s: its request is over (timed out)",
                self.component,
                envelope.subject,
                s.where,
            )
            return None
        if not self.has_handler:
            self._counters.drops[DROP_NO_HANDLER] += 1
            log.warning(
                "%s: dropped a frame on %r from %s: no handler link (MODE=client) delivers it",
                self.component,
                envelope.subject,
                s.where,
            )
            return None
        if s.format is Format.RAW:  # no envelope: the suffix is the frame type, so an echo keeps it
            binary = isinstance(frame, bytes)
            reply_to = connection_subject(self.id, FrameType.BINARY.value if binary else None)
        else:
            reply_to = connection_subject(self.id, envelope.reply_to)
        return BrokerMessage(envelope.subject, envelope.body, reply_to)

    async def _deliver_backlog(self) -> None:
        """Deliver queued frames in the order they came in, across reconnects."""
        window = DeliveryWindow(self.settings.delivery_window)
        origin = f"connection {self.settings.where}"
        try:
            while True:
                message = await self._backlog.get()
                self._in_hand += 1
                await window.submit(
                    deliver_to(self._deliver, self.component, message, self._counters, origin)
                )
                self._in_hand -= 1
        finally:
            window.cancel()

    # -- from the component ----------------------------------------------------------------------------

    async def send(self, envelope: Envelope, frame_type: FrameType | None = None) -> ClientConnection:
        """Send on the connection, waiting up to ``CONNECT_TIMEOUT_SEC`` for it; the connection used.

        Raises :class:`SendError`, or :class:`~provider.websocket.formats.FrameError` for a frame
        type the format cannot send.
        """
        frame = formats.encode(self.settings.format, envelope, frame_type)
        ws = self._ws
        if ws is None or ws.protocol.state is not Protocol.OPEN:
            # Closing but not yet seen by the reader counts as disconnected: wait for the next one.
            ws = await self._wait_open(stale=ws)
        send_frame(ws, frame, self.settings.send_queue_limit)
        self._counters.sent(frame)
        return ws

    async def _wait_open(self, stale: ClientConnection | None) -> ClientConnection:
        s = self.settings

        def settled() -> bool:
            return (self._ws is not None and self._ws is not stale) or self._stopped is not None

        try:
            async with asyncio.timeout(s.connect_timeout), self._changed:
                await self._changed.wait_for(settled)
        except TimeoutError:
            raise SendError(
                f"not connected to {s.where}: no connection within CONNECT_TIMEOUT_SEC={s.connect_timeout:g}s"
                f" ({self.state.value}; last error: {self.last_error})"
            ) from None
        if self._stopped is not None or self._ws is None:
            raise SendError(f"not connected to {s.where}: {self._stopped}")
        return self._ws

    async def request(self, subject: str, body: bytes, timeout_ms: int) -> MessageResult:
        """Send an envelope whose ``reply_to`` is a fresh correlation subject; return the answer to it.

        The answer is the first frame whose envelope's subject is that correlation subject;
        its ``reply_to`` becomes this connection's reply subject, as for a delivered frame.
        """
        if self.settings.format is Format.RAW:
            return Err(
                "request needs envelopes to match the answer: set FORMAT=json or FORMAT=msgpack on this "
                "link (it has FORMAT=raw)"
            )
        timeout = (timeout_ms or DEFAULT_REQUEST_TIMEOUT_MS) / 1000
        correlation = REQUEST + new_id()
        answer: asyncio.Future[Envelope] = asyncio.get_running_loop().create_future()
        self._pending[correlation] = answer
        sent = False
        try:
            async with asyncio.timeout(timeout):
                self._sent_on[correlation] = await self.send(Envelope(subject, body, correlation))
                sent = True
                envelope = await answer
        except TimeoutError:
            waited = f"{timeout * 1000:.0f} ms"
            if not sent:
                return Err(f"timeout after {waited}: not connected to {self.settings.where}")
            return Err(
                f"timeout after {waited} waiting for an answer to {subject!r} from {self.settings.where}"
            )
        except SendError as exc:
            return Err(str(exc))
        finally:
            self._pending.pop(correlation, None)
            self._sent_on.pop(correlation, None)
        reply_to = connection_subject(self.id, envelope.reply_to)
        return Ok(BrokerMessage(envelope.subject, envelope.body, reply_to))
