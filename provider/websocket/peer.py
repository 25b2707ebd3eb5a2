"""What server sessions and client connections share: bounded sending, ordered delivery with a
window, keepalive, rate limiting, TLS material, and the provider's counters. I/O.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import ssl
import tempfile
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.connection import Connection, broadcast
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from provider.errors import ConfigError, ProviderError, WrpcError
from provider.websocket.formats import Frame
from provider.wrpc.codec import Err
from provider.wrpc.messaging import BrokerMessage, UnitResult

log = logging.getLogger("provider.websocket")

Deliver = Callable[[str, BrokerMessage], Awaitable[UnitResult]]
"""Invoke ``handle-message`` on a component: the runtime's ``ProviderContext.handle_message``."""


# Why a frame was dropped (the keys of Counters.drops).
DROP_BAD_FRAME = "bad frame"
DROP_RESERVED = "reserved subject"
DROP_UNROUTED = "no subscriber"
DROP_NO_HANDLER = "no handler link"
DROP_LATE_ANSWER = "late answer"
DROP_UNDELIVERED = "undelivered at close"


@dataclass
class Counters:
    """What the provider counts; health answers show all of it (:meth:`summary`)."""

    frames_in: int = 0
    frames_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    delivered: int = 0
    component_errors: int = 0
    delivery_failures: int = 0
    publishes: int = 0
    publish_errors: int = 0
    drops: collections.Counter[str] = field(default_factory=collections.Counter)
    """Frames received but not delivered, by reason (``DROP_*``)."""
    closes: collections.Counter[str] = field(default_factory=collections.Counter)
    """Connections the provider closed, by ``"<code> <reason>"``."""

    def received(self, frame: Frame) -> None:
        self.frames_in += 1
        self.bytes_in += frame_size(frame)

    def sent(self, frame: Frame) -> None:
        self.frames_out += 1
        self.bytes_out += frame_size(frame)

    def summary(self) -> str:
        """One line for the health message: every counter, drops and closes by reason."""
        drops = ", ".join(f"{reason} {n}" for reason, n in sorted(self.drops.items())) or "none"
        closes = ", ".join(f"{reason} {n}" for reason, n in sorted(self.closes.items())) or "none"
        return (
            f"frames in {self.frames_in}, out {self.frames_out}; delivered {self.delivered}, "
            f"component errors {self.component_errors}, delivery failures {self.delivery_failures}; "
            f"publish errors {self.publish_errors}; dropped: {drops}; closed by the provider: {closes}"
        )


def frame_size(frame: Frame) -> int:
    """A frame's payload in bytes (a text frame's UTF-8 length)."""
    if isinstance(frame, str):
        return len(frame) if frame.isascii() else len(frame.encode("utf-8", errors="surrogatepass"))
    return len(frame)


class SendError(ProviderError):
    """A frame could not be queued on a connection; the message says why."""


def send_frame(ws: Connection, frame: Frame, limit: int) -> None:
    """Write ``frame`` now, without waiting, unless the connection already buffers ``limit`` bytes.

    This is ``websockets.broadcast`` for one connection: no task, no await. The kernel's
    socket buffer absorbs what the peer has not read yet; beyond it, the transport's own
    buffer grows, and ``limit`` bounds that. Raises :class:`SendError`.
    """
    if ws.protocol.state is not State.OPEN:
        raise SendError("the connection is closed")
    if ws.transport.get_write_buffer_size() > limit:
        raise SendError(f"the peer is not reading: more than {limit} bytes wait to be sent")
    broadcast([ws], frame)


MAX_CLOSE_REASON = 123
"""Bytes a close reason may have: a control frame carries 125, two of them the code (RFC 6455 §5.5)."""


def close_reason(reason: str) -> str:
    """``reason`` cut to :data:`MAX_CLOSE_REASON` UTF-8 bytes, never inside a character."""
    data = reason.encode("utf-8", errors="replace")
    if len(data) <= MAX_CLOSE_REASON:
        return reason
    return data[:MAX_CLOSE_REASON].decode("utf-8", errors="ignore")


_CODE_NAMES = {
    1000: "normal closure",
    1001: "going away",
    1002: "protocol error",
    1003: "unsupported data",
    1007: "invalid data",
    1008: "policy violation",
    1009: "message too big",
    1010: "mandatory extension",
    1011: "internal error",
}


def closed_by_us(ws: Connection) -> tuple[int, str] | None:
    """``(code, reason)`` of the close frame the provider sent first on ``ws``, or ``None`` if the
    peer closed first (or the connection just dropped). Covers websockets' own closes too
    (1009 for a frame too big, 1007 for bad UTF-8, 1002 for a protocol error)."""
    protocol = ws.protocol
    sent = protocol.close_sent
    if sent is None or protocol.close_rcvd_then_sent:
        return None
    return sent.code, sent.reason


def close_key(code: int, label: str | None = None) -> str:
    """The counter key of a close: its code and our label, or the code's name (reasons vary too much)."""
    return f"{code} {label or _CODE_NAMES.get(code, 'other')}"


class Closer:
    """Owns the close handshakes the provider starts (a slow peer, a component's close request)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def close(self, ws: Connection, code: int, reason: str) -> None:
        """Start closing ``ws`` with ``code``; websockets aborts it after its close timeout."""
        task = asyncio.create_task(ws.close(code, close_reason(reason)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait(self) -> None:
        """Wait for every close started so far."""
        await asyncio.gather(*self._tasks, return_exceptions=True)


class DeliveryWindow:
    """At most ``size`` deliveries of one peer in flight; :meth:`submit` waits for a slot.

    Deliveries are started in submission order, so their invocations go out in the order
    the frames came in; with ``size`` 1 each also finishes before the next starts, and runs
    in the reader itself (no task: one event-loop turn less per frame). Only the peer's
    reader submits, so there is at most one waiter. Kept small: there is one per session.
    """

    __slots__ = ("_free", "_inline", "_tasks", "_wake")

    def __init__(self, size: int) -> None:
        self._free = size
        self._inline = size == 1
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake: asyncio.Future[None] | None = None

    async def submit(self, delivery: Coroutine[Any, Any, None]) -> None:
        if self._inline:
            await delivery
            return
        try:
            while self._free == 0:
                self._wake = asyncio.get_running_loop().create_future()
                await self._wake
        except BaseException:
            delivery.close()
            raise
        self._free -= 1
        task = asyncio.create_task(delivery)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._free += 1
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def drain(self) -> None:
        """Wait for the deliveries in flight."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def cancel(self) -> None:
        """Cancel the deliveries running in tasks (an inline one ends with its reader)."""
        for task in self._tasks:
            task.cancel()


class Liveness:
    """What a connection's reader tells its keepalive: frames it has read, and whether it is busy
    elsewhere (delivering, or waiting for room to), so that it reads nothing meanwhile."""

    __slots__ = ("busy", "frames")

    def __init__(self) -> None:
        self.frames = 0
        self.busy = False


KEEPALIVE_TIMEOUT = "keepalive ping timeout"


async def keepalive(
    ws: Connection,
    interval: float,
    timeout: float | None,
    liveness: Liveness,
    on_timeout: Callable[[], Awaitable[None]],
) -> None:
    """Ping every ``interval`` seconds; call ``on_timeout`` when a pong is ``timeout`` late.

    websockets' own keepalive cannot be used: when the provider stops reading a busy peer (its
    delivery window is full), the peer's pong waits in the socket behind the frames not read yet,
    and websockets would close a healthy, busy session with 1011. Here a peer whose frames keep
    being read, or which waits for the provider itself, is alive: the wait for the pong starts over.
    Runs until cancelled or the connection closes.
    """
    try:
        while True:
            await asyncio.sleep(interval)
            pong = await ws.ping()
            if timeout is None:
                continue
            seen = liveness.frames
            while True:
                try:
                    async with asyncio.timeout(timeout):
                        await asyncio.shield(pong)
                    break
                except TimeoutError:
                    if liveness.busy or liveness.frames != seen:
                        seen = liveness.frames  # frames are arriving: the pong is queued behind them
                        continue
                    await on_timeout()
                    return
    except ConnectionClosed:
        return


class TokenBucket:
    """``rate`` messages per second with a burst of ``rate`` (at least 1); :meth:`take` waits for a token."""

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._capacity = max(1.0, rate)
        self._tokens = self._capacity
        self._stamp = asyncio.get_running_loop().time()

    async def take(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._tokens = min(self._capacity, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens < 1:
            # Reading pauses until the bucket refills: the peer is slowed down, nothing is dropped.
            await asyncio.sleep((1 - self._tokens) / self._rate)
            self._tokens = 1.0
            self._stamp = loop.time()
        self._tokens -= 1


async def deliver_to(
    deliver: Deliver, component: str, msg: BrokerMessage, counters: Counters, origin: str
) -> None:
    """Invoke ``handle-message``; log and count what goes wrong instead of raising."""
    try:
        result = await deliver(component, msg)
    except WrpcError as exc:
        counters.delivery_failures += 1
        log.warning("%s: message on %r not delivered to %s: %s", origin, msg.subject, component, exc)
        return
    if isinstance(result, Err):
        counters.component_errors += 1
        log.info(
            "%s: component %s returned an error for %r: %s", origin, component, msg.subject, result.value
        )
    else:
        counters.delivered += 1


def _material(value: str, suffix: str, directory: str) -> str:
    """A path to ``value``: itself if it is a path, else PEM text written to a private file."""
    if "-----BEGIN" not in value:
        if not os.path.isfile(value):
            raise ConfigError(f"TLS {suffix}: {value!r} is neither PEM text nor a readable file")
        return value
    path = os.path.join(directory, suffix)
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
        out.write(value)
    return path


def server_tls(cert: str, key: str) -> ssl.SSLContext:
    """A server context from PEM text (from secrets) or file paths."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory(prefix="ws-tls-") as directory:
        try:
            context.load_cert_chain(
                _material(cert, "cert.pem", directory), _material(key, "key.pem", directory)
            )
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"TLS_CERT/TLS_KEY could not be loaded: {exc}") from exc
    return context


def client_tls(ca: str | None) -> ssl.SSLContext:
    """A client context trusting the system CAs, or only ``ca`` (PEM text or a file path) if given."""
    try:
        if ca is None:
            return ssl.create_default_context()
        if "-----BEGIN" in ca:
            return ssl.create_default_context(cadata=ca)
        return ssl.create_default_context(cafile=ca)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ConfigError(f"TLS_CA could not be loaded: {exc}") from exc
