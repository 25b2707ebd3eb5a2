"""Client mode: one outgoing WebSocket connection per (component, URI, link name). I/O.

The connection is opened when the first of the component's two client-mode links
(``handler``: deliver the server's frames; ``consumer``: publish and request) appears,
and closed (1000) when the last one goes. It reconnects with exponential backoff and
jitter; the backoff starts over once a connection has stayed up for ``RECONNECT_MAX_MS``.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from provider.websocket import formats
from provider.websocket.config import ClientSettings
from provider.websocket.formats import Envelope, Format
from provider.websocket.peer import (
    Counters,
    Deliver,
    DeliveryWindow,
    SendError,
    client_tls,
    deliver_to,
    send_frame,
)
from provider.websocket.subjects import REQUEST, connection_subject, new_id
from provider.wrpc.codec import Err, Ok
from provider.wrpc.messaging import BrokerMessage, MessageResult

log = logging.getLogger("provider.websocket.client")

CLOSE_TIMEOUT = 2.0
DEFAULT_REQUEST_TIMEOUT_MS = 10_000


class State(enum.Enum):
    CONNECTING = "connecting"
    OPEN = "open"
    WAITING = "waiting to reconnect"
    FAILED = "failed"
    CLOSED = "closed"


def backoff(step: int, low: float, high: float) -> float:
    """Seconds to wait before reconnect ``step`` (1, 2, …): doubling from ``low`` up to ``high``,
    with "equal jitter" (somewhere in the upper half) so that many clients do not retry in step."""
    ceiling = min(high, low * 2 ** (step - 1))
    return random.uniform(ceiling / 2, ceiling)


class Connection:
    """One outgoing connection and its reconnect loop."""

    def __init__(
        self, component: str, settings: ClientSettings, deliver: Deliver, counters: Counters
    ) -> None:
        self.id = new_id()
        self.component = component
        self.settings = settings
        self.has_handler = False
        self.has_consumer = False
        self.state = State.CONNECTING
        self.last_error: str | None = None
        self.connects = 0
        self._deliver = deliver
        self._counters = counters
        self._ws: ClientConnection | None = None
        self._open = asyncio.Event()
        self._settled = asyncio.Event()  # set whenever waiting for the connection is pointless
        self._pending: dict[str, asyncio.Future[Envelope]] = {}
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def reply_subject(self) -> str:
        return connection_subject(self.id)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"ws-client {self.settings.uri}")

    async def close(self) -> None:
        """Close with 1000 and stop reconnecting; fail requests in flight. Idempotent."""
        self._closing = True
        self._settled.set()
        ws = self._ws
        if ws is not None:
            await ws.close(1000, "link deleted")
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.state = State.CLOSED
        for future in self._pending.values():
            if not future.done():
                future.cancel()

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
            ping_interval=s.ping_interval,
            close_timeout=CLOSE_TIMEOUT,
            max_size=s.max_message_bytes,
            compression=None,
            ssl=client_tls(s.tls_ca) if s.secure else None,
            user_agent_header=None,
        )

    async def _run(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        failures = 0  # consecutive failed connects: MAX_RECONNECT_ATTEMPTS counts these
        step = 0  # backoff step: grows with failures and short-lived connections
        while not self._closing:
            self.state = State.CONNECTING
            try:
                ws = await self._connect()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                step += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                if s.max_reconnect_attempts and failures >= s.max_reconnect_attempts:
                    self.state = State.FAILED
                    self._settled.set()
                    log.error(
                        "%s: gave up after %d failed attempt(s) to connect to %s: %s",
                        self.component,
                        failures,
                        s.uri,
                        self.last_error,
                    )
                    return
                delay = backoff(step, s.reconnect_min, s.reconnect_max)
                self.state = State.WAITING
                log.warning(
                    "%s: cannot connect to %s (%s); retrying in %.2fs",
                    self.component,
                    s.uri,
                    self.last_error,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            failures = 0
            self.connects += 1
            opened = loop.time()
            self._ws = ws
            self.state = State.OPEN
            self._open.set()
            log.info("%s: connected to %s", self.component, s.uri)
            try:
                await self._read(ws)
            finally:
                self._ws = None
                self._open.clear()
            if self._closing:
                return
            step = 0 if loop.time() - opened >= s.reconnect_max else step + 1
            delay = backoff(max(step, 1), s.reconnect_min, s.reconnect_max) if step else 0.0
            self.last_error = f"closed by the server ({ws.close_code} {ws.close_reason or ''})".rstrip()
            self.state = State.WAITING
            log.warning(
                "%s: connection to %s %s; reconnecting in %.2fs",
                self.component,
                s.uri,
                self.last_error,
                delay,
            )
            await asyncio.sleep(delay)

    async def _read(self, ws: ClientConnection) -> None:
        s = self.settings
        window = DeliveryWindow(s.delivery_window)
        origin = f"connection {s.uri}"
        try:
            async for frame in ws:
                self._counters.frames_in += 1
                try:
                    envelope = formats.decode(s.format, frame, s.subject)
                except formats.FrameError as exc:
                    self._counters.bad_frames += 1
                    log.warning("%s: ignored a frame from %s: %s", self.component, s.uri, exc)
                    continue
                waiter = self._pending.pop(envelope.subject, None)
                if waiter is not None:
                    if not waiter.done():
                        waiter.set_result(envelope)
                    continue
                if not self.has_handler:
                    self._counters.dropped_inbound += 1
                    log.debug("%s: no handler link; dropped a frame on %r", self.component, envelope.subject)
                    continue
                reply_to = connection_subject(self.id, envelope.reply_to)
                msg = BrokerMessage(envelope.subject, envelope.body, reply_to)
                await window.submit(deliver_to(self._deliver, self.component, msg, self._counters, origin))
        except ConnectionClosed:
            pass
        finally:
            if self._closing:
                window.cancel()
            await window.drain()

    # -- from the component ----------------------------------------------------------------------------

    async def send(self, envelope: Envelope) -> None:
        """Send on the connection, waiting up to ``CONNECT_TIMEOUT_SEC`` for it. Raises :class:`SendError`."""
        if not self._open.is_set():
            if self.state is State.FAILED:
                raise SendError(f"not connected to {self.settings.uri}: gave up ({self.last_error})")
            try:
                async with asyncio.timeout(self.settings.connect_timeout):
                    await self._wait_open()
            except TimeoutError:
                raise SendError(
                    f"not connected to {self.settings.uri} after waiting {self.settings.connect_timeout:g}s"
                    f" (last error: {self.last_error})"
                ) from None
        ws = self._ws
        if ws is None:
            raise SendError(f"not connected to {self.settings.uri}")
        send_frame(ws, formats.encode(self.settings.format, envelope), self.settings.send_queue_limit)
        self._counters.frames_out += 1

    async def _wait_open(self) -> None:
        opened = asyncio.ensure_future(self._open.wait())
        settled = asyncio.ensure_future(self._settled.wait())
        try:
            await asyncio.wait({opened, settled}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            opened.cancel()
            settled.cancel()
        if not self._open.is_set():
            reason = "the link was deleted" if self._closing else f"gave up ({self.last_error})"
            raise SendError(f"not connected to {self.settings.uri}: {reason}")

    async def request(self, subject: str, body: bytes, timeout_ms: int) -> MessageResult:
        """Send an envelope whose ``reply_to`` is a fresh correlation subject; return the answer to it."""
        if self.settings.format is Format.RAW:
            return Err(
                "request needs envelopes to match the answer: set FORMAT=json or FORMAT=msgpack on this "
                "link (it has FORMAT=raw)"
            )
        timeout = (timeout_ms or DEFAULT_REQUEST_TIMEOUT_MS) / 1000
        correlation = REQUEST + new_id()
        answer: asyncio.Future[Envelope] = asyncio.get_running_loop().create_future()
        self._pending[correlation] = answer
        try:
            async with asyncio.timeout(timeout):
                await self.send(Envelope(subject, body, correlation))
                envelope = await answer
        except TimeoutError:
            waited = f"{timeout * 1000:.0f} ms"
            return Err(
                f"timeout after {waited} waiting for an answer to {subject!r} from {self.settings.uri}"
            )
        except SendError as exc:
            return Err(str(exc))
        except asyncio.CancelledError:
            if self._closing:
                return Err("the link was deleted while the request waited")
            raise
        finally:
            self._pending.pop(correlation, None)
        return Ok(BrokerMessage(envelope.subject, envelope.body, envelope.reply_to))
