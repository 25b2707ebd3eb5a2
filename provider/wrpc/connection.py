"""nats-py's client with the fast paths a wRPC call needs. I/O.

nats-py reads the socket through a stream reader and a reader task, runs a regular
expression per operation, builds a ``Msg`` and goes through a per-subscription queue and
task for every message it receives, and runs a coroutine (and often a fresh future) for
every publish. A wRPC call is five messages, so that bookkeeping, not the bytes, is what a
call costs in Python (``make bench-wrpc`` measures it). :class:`NatsConnection` keeps all of
nats-py — connecting, authentication, TLS, reconnecting and resubscribing, pings — and adds:

* **reading where the bytes arrive** (:class:`_Reader`): once nats-py's handshake is done,
  the socket's own callback splits each read (:class:`~provider.wrpc.protocol.ServerStream`,
  pure: ``find`` and slices) and delivers messages to direct subscriptions at once; the rest
  (nats-py's own subscriptions, ``PING``, ``INFO``, ``-ERR`` …) is fed, whole, to nats-py's
  stream reader, where its reader task handles it as before (with the same splitter in
  place of its regular expressions, :class:`_Parser`);
* :meth:`~NatsConnection.subscribe_direct`: the handler is called right where the message
  is read (``subject``, ``reply``, ``data``, raw header block), with no ``Msg``, no queue,
  no task and no coroutine in between. Handlers must not block;
* :meth:`~NatsConnection.publish_now`: a synchronous publish of a command built once
  (:mod:`provider.wrpc.protocol`) into nats-py's own write buffer; everything published in
  one turn of the event loop goes out in one write at its end (at the end of the read that
  caused it, or once the tasks that read woke have had their turn).

These reach into private parts of nats-py (its transport's stream reader and writer, its
parser's interface, ``_process_connect_init``, ``_process_msg`` and the pending write buffer)
and of asyncio (the loop's ``_ready`` queue, only to tell whether a read woke anything; a loop
without one, uvloop, has every read's publishes written once the loop's turn is over), so
the nats-py version is pinned in ``pyproject.toml`` and the wRPC tests run every call through
this class.

**The reader never dies.** nats-py reads the socket in one task; anything raised where it
hands over a message (its ``Msg`` decodes subject and reply as UTF-8, its header parser
indexes and decodes the block, a handler may fail) ends that task for good while the
connection looks alive. Here every message that cannot be delivered is dropped, counted
by reason in :attr:`~NatsConnection.drops` and logged at most once per reason per
interval (:class:`~provider.wrpc.drops.DropLog`); the reader goes on.

**Publishing while disconnected is bounded.** What waits for a reconnect is held in
nats-py's pending buffer up to its ``pending_size`` option (2 MiB unless set); past it
:meth:`~NatsConnection.publish_now` raises :class:`~provider.errors.OutboundBufferFull`, as
nats-py's own ``publish`` does, instead of growing without limit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.aio.transport import TcpTransport
from nats.errors import ProtocolError
from nats.protocol.parser import Parser

from provider.errors import NatsProtocolError, OutboundBufferFull, TransportClosed
from provider.wrpc.drops import DropLog
from provider.wrpc.protocol import ServerStream, command, message_bytes, valid_subject

log = logging.getLogger(__name__)

DirectHandler = Callable[[bytes, bytes, bytes, bytes | None], None]
"""``(subject, reply, data, header block or None)``, called synchronously for each message.
All four are the bytes as they came: hostile, not necessarily UTF-8."""

HANDLER_FAILED = "handler_failed"
"""Drop reason: a direct handler raised."""
NOT_UTF8 = "not_utf8"
"""Drop reason: a subject or reply subject that is not UTF-8 (nats-py's ``Msg`` needs it)."""
BAD_HEADERS = "bad_headers"
"""Drop reason: a header block that does not start with ``NATS/1.0``."""
UNDELIVERABLE = "undeliverable"
"""Drop reason: nats-py raised while building or queueing the message."""
PROTOCOL_VIOLATION = "protocol_violation"
"""Count (in ``drops``) of reads that were not the NATS protocol: the connection is dropped and
nats-py reconnects, as on its own parser's errors."""
_HEADER_LINE = b"NATS/1.0"
_HEADER_SIZE = len(_HEADER_LINE)
_SHOWN = 120  # characters of a hostile subject that make it into a log line


def _shown(subject: bytes | str) -> str:
    text = subject.decode(errors="backslashreplace") if isinstance(subject, bytes) else subject
    return repr(text if len(text) <= _SHOWN else text[:_SHOWN] + "…")


class _Parser(Parser):
    """nats-py's parser interface over :class:`ServerStream`: messages go to
    :meth:`NatsConnection._process_msg`, every other operation, whole, to nats-py's own parser.
    Once a :class:`_Reader` reads the socket, only what it hands on comes here."""

    nc: NatsConnection

    def reset(self) -> None:  # nats-py resets its parser for every new connection
        super().reset()
        self.stream = ServerStream()

    async def parse(self, data: bytes = b"") -> None:
        nc = self.nc
        try:
            operations = self.stream.feed(data)
        except NatsProtocolError as exc:
            nc.protocol_violation(str(exc))
            raise ProtocolError() from exc
        for operation in operations:
            if isinstance(operation, bytes):
                try:
                    await Parser.parse(self, operation)
                except ValueError as exc:  # an INFO that is not JSON, an -ERR not UTF-8: would end the reader
                    nc.protocol_violation(f"{operation[:120]!r}: {exc}")
                    raise ProtocolError() from exc
                if self.buf:  # a line nats-py's parser does not take whole: not the protocol
                    nc.protocol_violation(f"an operation nats-py cannot read: {bytes(self.buf[:120])!r}")
                    raise ProtocolError()
                continue
            await nc._process_msg(*operation)  # direct subscriptions first, then nats-py's own


class _Reader(asyncio.Protocol):
    """The socket's protocol once connected: each read is split and delivered where it arrives.

    nats-py reads through an ``asyncio.StreamReader`` and a reader task, so every read costs
    the loop a wake-up of that task besides the socket's own callback. Here the socket's
    callback splits what it read (its own :class:`ServerStream`), delivers messages to direct
    subscriptions at once, and feeds everything else, whole, to nats-py's stream reader, so
    nats-py's reader task goes on handling its own subscriptions, ``PING``, ``INFO``,
    ``-ERR`` … as before. What the handlers published is written at the end of the read, in
    one write — or, when the read woke or started tasks (a handler that calls out, a caller
    whose results came), once those have had their turn, so their messages go in the same
    write. End of stream, loss and flow control go to nats-py's protocol object unchanged.
    """

    def __init__(
        self, nc: NatsConnection, inner: asyncio.StreamReaderProtocol, reader: asyncio.StreamReader
    ) -> None:
        self.nc = nc
        self.inner = inner
        self.reader = reader
        self.stream = ServerStream()
        self.broken = False
        self.failing: asyncio.Task[None] | None = None  # nats-py handling the protocol error
        self.ready: Any = getattr(nc.event_loop, "_ready", None)  # asyncio's callbacks for this turn

    def data_received(self, data: bytes) -> None:
        if not self.broken:
            self.nc._on_data(self, data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class NatsConnection(Client):
    """A nats-py client that reads its socket itself, with direct (queue-less) subscriptions and
    a synchronous publish."""

    def __init__(self) -> None:
        super().__init__()
        self._ps = _Parser(self)
        self._direct: dict[int, DirectHandler] = {}
        self.drops = DropLog()
        """Messages dropped, by reason (``drops.counts``): for health and the tests."""
        self.publishes_refused = 0
        """Publishes refused with :class:`OutboundBufferFull` while disconnected."""
        self._reading = False  # in a read's callback: what is published is written at its end
        self._write_soon = False  # a write of the pending commands is scheduled
        self._event_loop: asyncio.AbstractEventLoop | None = None  # set on connecting: see event_loop

    @property
    def event_loop(self) -> asyncio.AbstractEventLoop:
        """The loop it runs on: the one it connected on, kept (the running one before that). On
        Python 3.11 each ``asyncio.get_running_loop()``, and so each ``asyncio.create_task``, is a
        ``getpid()`` system call (its check for a fork): two per wRPC call were 4.6 % of the
        provider's CPU at 50 × 8, so the connection and its transport use this instead."""
        return self._event_loop or asyncio.get_running_loop()

    async def _process_connect_init(self) -> None:
        # nats-py's handshake (INFO, CONNECT, PING/PONG) on the new socket, then read it ourselves.
        self._event_loop = asyncio.get_running_loop()
        await super()._process_connect_init()
        self._read_directly()

    def _read_directly(self) -> None:
        """Put a :class:`_Reader` in front of nats-py's stream reader on a plain TCP or TLS
        socket (anything else, nats-py's websocket transport say, stays as nats-py reads it)."""
        transport = self._transport
        if (
            not isinstance(transport, TcpTransport)
            or transport._io_writer is None
            or transport._io_reader is None
        ):
            return
        socket = transport._io_writer.transport
        inner = socket.get_protocol()
        if not isinstance(inner, asyncio.StreamReaderProtocol):
            return
        reader = transport._io_reader
        buffered = bytes(reader._buffer)  # type: ignore[attr-defined]  # read after the PONG, not yet parsed
        reader._buffer.clear()  # type: ignore[attr-defined]
        fast = _Reader(self, inner, reader)
        socket.set_protocol(fast)
        if buffered:
            self._on_data(fast, buffered)

    def _on_data(self, fast: _Reader, data: bytes) -> None:
        try:
            operations = fast.stream.feed(data)
        except NatsProtocolError as exc:
            fast.broken = True  # nothing more is read from this socket: nats-py replaces it
            self.protocol_violation(str(exc))
            fast.failing = self.event_loop.create_task(self._process_op_err(ProtocolError()))
            return
        direct = self._direct
        others: list[bytes] = []
        ready = fast.ready
        waiting = len(ready) if ready is not None else -1
        self._reading = True
        try:
            for operation in operations:
                if isinstance(operation, bytes):
                    others.append(operation)
                    continue
                handler = direct.get(operation[0])
                if handler is None:
                    others.append(message_bytes(operation))
                else:
                    self._deliver(handler, operation[1], operation[2], operation[3], operation[4])
        finally:
            self._reading = False
        if others:
            fast.reader.feed_data(b"".join(others))
        if self._pending_data_size and not self._write_soon:
            if ready is not None and len(ready) == waiting:
                self._write_pending()  # nothing else to run first: one write, now
            else:  # tasks this read woke or started may publish too: one write after their turn
                self._write_soon = True
                self.event_loop.call_soon(self._write_pending)

    def _write_pending(self) -> None:
        """Write every pending command now, in one write (while connected; otherwise they wait
        for nats-py's reconnect, which writes them)."""
        self._write_soon = False
        transport = self._transport
        if self._pending_data_size and self.is_connected and transport is not None:
            pending = self._pending
            self._pending = []
            self._pending_data_size = 0
            transport.writelines(pending)

    async def subscribe_direct(self, subject: str, handler: DirectHandler, queue: str = "") -> Subscription:
        """Subscribe (nats-py renews it after a reconnect) and deliver straight to ``handler``."""

        async def unused(msg: Any) -> None:  # nats-py wants a callback; direct delivery bypasses it
            raise AssertionError("direct subscriptions are delivered by _process_msg")

        sub: Subscription = await self.subscribe(
            subject, queue=queue, cb=unused, pending_msgs_limit=-1, pending_bytes_limit=-1
        )
        self._direct[sub._id] = handler
        return sub

    async def unsubscribe_direct(self, sub: Subscription) -> None:
        """Stop delivering to the handler and remove the interest from the server."""
        self._direct.pop(sub._id, None)
        if not self.is_closed:
            await sub.unsubscribe()

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        # The parser awaits this from the reader task: nothing may escape it.
        handler = self._direct.get(sid)
        if handler is not None:
            self._deliver(handler, subject, reply, data, headers)
            return
        # nats-py's own path decodes subject and reply and parses the header block, and
        # raises on bytes it cannot: refuse those first, by name, then guard the rest.
        try:
            subject.decode()
            reply.decode()
        except UnicodeDecodeError:
            self.drop(NOT_UTF8, subject, "its subject or reply subject is not UTF-8")
            return
        if headers is not None and (len(headers) <= _HEADER_SIZE or not headers.startswith(_HEADER_LINE)):
            self.drop(BAD_HEADERS, subject, "its header block does not start with NATS/1.0")
            return
        try:
            await super()._process_msg(sid, subject, reply, data, headers)  # type: ignore[arg-type]
        except Exception as exc:
            self.drop(UNDELIVERABLE, subject, f"{type(exc).__name__}: {exc}")

    def _deliver(
        self, handler: DirectHandler, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        self.stats["in_msgs"] += 1
        self.stats["in_bytes"] += len(data)
        try:
            handler(subject, reply, data, headers)
        except Exception as exc:
            self.drop(HANDLER_FAILED, subject, f"{type(exc).__name__}: {exc}")

    def protocol_violation(self, detail: str) -> None:
        """The server sent what is not the NATS protocol: count it and say so (nats-py then
        drops the connection and reconnects)."""
        self.drops.drop(PROTOCOL_VIOLATION, time.monotonic())
        log.warning("NATS: the server sent bytes that are not the NATS protocol (%s); reconnecting", detail)

    def reply_of(self, subject: bytes, reply: bytes) -> str | None:
        """The reply subject of a direct message, to answer on; ``None`` if there is none, or if
        it is not UTF-8 (then the message is dropped and counted)."""
        try:
            return reply.decode() or None
        except UnicodeDecodeError:
            self.drop(NOT_UTF8, subject, "its reply subject is not UTF-8")
            return None

    def drop(self, reason: str, subject: bytes | str, detail: str) -> None:
        """Count a message dropped for ``reason`` and log it, rate-limited per reason."""
        reported = self.drops.drop(reason, time.monotonic())
        if reported:
            log.warning(
                "NATS: dropped a message on %s (%s): %s [%d dropped for this reason since the last report]",
                _shown(subject),
                reason,
                detail,
                reported,
            )

    def publish_now(self, subject: str, payload: bytes, reply: str = "", headers: bytes = b"") -> None:
        """Queue a message for nats-py's flusher, without awaiting anything.

        ``subject`` and ``reply`` must be valid subjects (the transport builds them or got them
        from the server). While disconnected the message waits in nats-py's reconnect buffer,
        as its own ``publish`` does, up to its ``pending_size``: past it this raises
        :class:`OutboundBufferFull` and nothing is queued. Raises :class:`TransportClosed`
        once the connection is closed.
        """
        if self.is_closed:
            raise TransportClosed("the NATS connection is closed")
        cmd = command(subject, reply, payload, headers)
        if not self.is_connected:
            limit = self._max_pending_size
            if limit <= 0 or self._pending_data_size + len(cmd) > limit:
                self.publishes_refused += 1
                raise OutboundBufferFull(self._pending_data_size, len(cmd), limit)
        self._pending.append(cmd)
        self._pending_data_size += len(cmd)
        self.stats["out_msgs"] += 1
        self.stats["out_bytes"] += len(payload)
        if self._reading or self._write_soon or not self.is_connected:
            return  # written at the end of this read, by the write already scheduled, or after a reconnect
        # Everything published in this turn of the event loop goes out in one write, at its end.
        self._write_soon = True
        self.event_loop.call_soon(self._write_pending)


async def connect(servers: str | list[str], **options: Any) -> NatsConnection:
    """Like ``nats.connect``, returning a :class:`NatsConnection`."""
    nc = NatsConnection()
    await nc.connect(servers, **options)
    return nc


def check_subject(subject: str) -> str:
    """``subject`` itself if NATS accepts it; raises ``ValueError`` naming it otherwise."""
    if not valid_subject(subject):
        raise ValueError(f"{subject!r} is not a valid NATS subject")
    return subject
