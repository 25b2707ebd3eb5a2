"""nats-py's client with the two fast paths a wRPC call needs. I/O.

nats-py builds a ``Msg`` and goes through a per-subscription queue and task for every
message it receives, and runs a coroutine (and often a fresh future) for every publish.
A wRPC call is five messages, so that bookkeeping, not the bytes, is what a call costs
in Python (``make bench-wrpc`` measures it). :class:`NatsConnection` keeps all of
nats-py — connecting, authentication, TLS, reconnecting and resubscribing, pings — and adds:

* :meth:`~NatsConnection.subscribe_direct`: the handler is called right where the message
  is read (``subject``, ``reply``, ``data``, raw header block), with no ``Msg``, no queue,
  no task and no coroutine in between. Handlers must not block;
* a parser in place of nats-py's: :class:`~provider.wrpc.protocol.ServerStream` (pure)
  splits what is read with ``find`` and slices where nats-py runs a regular expression per
  operation and deletes each one from the front of a ``bytearray``; messages to direct
  subscriptions are delivered at once, everything else (nats-py's own subscriptions,
  ``PING``, ``INFO``, ``-ERR`` …) goes to nats-py's code as before;
* :meth:`~NatsConnection.publish_now`: a synchronous publish of a command built once
  (:mod:`provider.wrpc.protocol`) into nats-py's own write buffer, which its flusher task
  writes with everything else published in the same event-loop turn.

These reach into private parts of nats-py (its parser's interface, ``_process_msg`` and the
pending write buffer), so the nats-py version is pinned in ``pyproject.toml`` and the wRPC tests run
every call through this class.

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
from nats.errors import ProtocolError
from nats.protocol.parser import Parser

from provider.errors import NatsProtocolError, OutboundBufferFull, TransportClosed
from provider.wrpc.drops import DropLog
from provider.wrpc.protocol import ServerStream, command, valid_subject

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
    """nats-py's parser interface over :class:`ServerStream`: direct subscriptions are delivered
    with no await; every other operation is handed, whole, to nats-py's own parser."""

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
        direct = nc._direct
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
            sid, subject, reply, payload, headers = operation
            handler = direct.get(sid)
            if handler is None:
                await nc._process_msg(sid, subject, reply, payload, headers)
            else:
                nc._deliver(handler, subject, reply, payload, headers)


class NatsConnection(Client):
    """A nats-py client with direct (queue-less) subscriptions, a synchronous publish and a
    faster parser."""

    def __init__(self) -> None:
        super().__init__()
        self._ps = _Parser(self)
        self._direct: dict[int, DirectHandler] = {}
        self.drops = DropLog()
        """Messages dropped, by reason (``drops.counts``): for health and the tests."""
        self.publishes_refused = 0
        """Publishes refused with :class:`OutboundBufferFull` while disconnected."""

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
        queue: asyncio.Queue[asyncio.Future[None]] | None = self._flush_queue
        # The same kick as nats-py's own publish: one pending flush request covers every
        # command appended before the flusher runs.
        if queue is not None and queue.empty() and self.is_connected:
            queue.put_nowait(asyncio.get_running_loop().create_future())


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
