"""wRPC 0.0.1 over NATS: invoke functions and serve them (protocol spec §3). I/O.

One :class:`WrpcTransport` per NATS connection (a :class:`~provider.wrpc.connection.NatsConnection`).
It answers every reply subject it needs through an :class:`Inbox`:

* :class:`SharedInbox` (the default) holds one wildcard subscription ``_INBOX.<id>.>``
  and routes each message in-process by its token, so a call costs no SUB/UNSUB
  and the inbox is active before any call publishes (spec §3.2: subscribe first);
* :class:`PerCallInbox` subscribes and unsubscribes ``Rc`` and ``Rc.*`` for every
  call, as the spec's sequence diagram draws it. It exists to be measured against
  (``make bench-wrpc``) and as a fallback for accounts that forbid wildcard inboxes.

Messages are handled where the connection parses them (direct subscriptions) and
published synchronously into its write buffer: nothing here awaits a publish, and
nothing flushes per call — nats-py's flusher writes everything published in one turn
of the event loop at once. Only :func:`ensure_active` flushes, once, when a
subscription must be live before others are told it exists.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from nats.aio.subscription import Subscription

from provider.errors import (
    CodecError,
    IncompleteResults,
    IncompleteValue,
    InvocationTimeout,
    NoResponders,
    ProtocolViolation,
    ProviderError,
    TransportClosed,
    WrpcError,
)
from provider.wrpc.codec import Codec, StreamDecoder, decode, encode
from provider.wrpc.connection import NatsConnection, check_subject
from provider.wrpc.messaging import Function
from provider.wrpc.protocol import header_block, parse_headers, status_of
from provider.wrpc.subjects import (
    PARAMS,
    RESULTS,
    chunks,
    invocation_subject,
    params_subject,
    results_subject,
)

log = logging.getLogger(__name__)

P = TypeVar("P")
R = TypeVar("R")

DEFAULT_TIMEOUT = 10.0
"""Seconds an invocation may take end to end, and a served call may wait for its params."""

Headers = Mapping[str, str]
Handler = Callable[[P, Headers], Awaitable[R]]

_PARAMS = PARAMS.encode()
_RESULTS = RESULTS.encode()


async def ensure_active(nc: NatsConnection) -> None:
    """Return once every SUB issued so far on ``nc`` is active on the server.

    nats-py writes a flush's PING straight to the socket, possibly ahead of SUB
    commands still in its pending buffer (spec §6.2). The first flush hands that
    buffer to the flusher task, which writes it before the PONG can be read; the
    second PING then follows the SUBs on the wire, so its PONG proves them.
    """
    await nc.flush()
    await nc.flush()


# --- inboxes ----------------------------------------------------------------------------------


class Route(Protocol):
    """The receiving end of one reply inbox (a call's ``Rc`` or a served call's ``Rs``)."""

    def on_message(self, channel: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        """Take a message that arrived on the inbox itself (``channel == b""``) or on a
        sub-channel (``b"results"``, ``b"params"``). Must not block."""

    def fail(self, exc: Exception) -> None:
        """The inbox is going away before the route finished: fail whatever waits."""


class Inbox(Protocol):
    """Hands out reply subjects and delivers what arrives on them to a :class:`Route`."""

    async def start(self) -> None:
        """Prepare to receive (subscribe if needed)."""

    async def open(self, route: Route) -> str:
        """Register ``route``; return its reply subject, already able to receive."""

    def reserve(self) -> str:
        """A fresh reply subject nobody subscribes to: whatever is sent there is dropped."""

    async def close(self, subject: str) -> None:
        """Stop delivering to the route of ``subject``; late messages are dropped."""

    async def stop(self) -> None:
        """Fail every open route and stop receiving."""


def _new_prefix() -> str:
    # 128 random bits, subject-safe: nobody else can guess (or collide with) our inbox.
    return f"_INBOX.{secrets.token_hex(16)}."


class SharedInbox:
    """One wildcard subscription, routed in-process by the token after the prefix."""

    def __init__(self, nc: NatsConnection) -> None:
        self._nc = nc
        self._prefix = _new_prefix()
        self._cut = len(self._prefix)
        self._unrouted = _new_prefix()
        self._routes: dict[bytes, Route] = {}
        self._ids = itertools.count(1)
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe_direct(self._prefix + ">", self._on_message)

    def _on_message(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        token, _, channel = subject[self._cut :].partition(b".")
        route = self._routes.get(token)
        if route is not None:
            route.on_message(channel, reply, data, headers)

    async def open(self, route: Route) -> str:
        token = str(next(self._ids))
        self._routes[token.encode()] = route
        return self._prefix + token

    def reserve(self) -> str:
        # Outside the wildcard: what the peer still sends there (its params EOF) is dropped by
        # the NATS server instead of being delivered to us only to be thrown away.
        return self._unrouted + str(next(self._ids))

    async def close(self, subject: str) -> None:
        self._routes.pop(subject[self._cut :].encode(), None)

    async def stop(self) -> None:
        routes, self._routes = self._routes, {}
        for route in routes.values():
            route.fail(TransportClosed("the wRPC transport closed"))
        if self._sub is not None:
            await self._nc.unsubscribe_direct(self._sub)
        self._sub = None


class PerCallInbox:
    """A SUB of ``Rc`` and ``Rc.*`` per call, UNSUB when it ends.

    NATS orders a connection's commands, so the SUBs are active before the call's
    own publish reaches the server: no flush is needed before publishing.
    """

    def __init__(self, nc: NatsConnection) -> None:
        self._nc = nc
        self._prefix = _new_prefix()
        self._ids = itertools.count(1)
        self._open: dict[str, tuple[Route, list[Subscription]]] = {}

    async def start(self) -> None:
        return None

    async def open(self, route: Route) -> str:
        subject = self._prefix + str(next(self._ids))
        cut = len(subject) + 1

        def on_message(got: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
            route.on_message(got[cut:], reply, data, headers)

        subs = [
            await self._nc.subscribe_direct(subject, on_message),
            await self._nc.subscribe_direct(subject + ".*", on_message),
        ]
        self._open[subject] = (route, subs)
        return subject

    def reserve(self) -> str:
        return self._prefix + str(next(self._ids))

    async def close(self, subject: str) -> None:
        entry = self._open.pop(subject, None)
        if entry is not None:
            for sub in entry[1]:
                await self._nc.unsubscribe_direct(sub)

    async def stop(self) -> None:
        for subject, (route, _) in list(self._open.items()):
            route.fail(TransportClosed("the wRPC transport closed"))
            await self.close(subject)


# --- calls ------------------------------------------------------------------------------------


def _status_error(subject: str, headers: bytes | None) -> WrpcError | None:
    """The error a NATS status message on ``Rc`` stands for, or ``None`` if it is not one."""
    status, description = status_of(headers)
    if status is None or status.startswith("2"):
        return None
    if status == "503":
        return NoResponders(subject)
    return ProtocolViolation(f"NATS answered {subject!r} with status {status} {description}".rstrip())


def _settle(future: asyncio.Future[Any], *, value: Any = None, exc: BaseException | None = None) -> None:
    if future.done():
        return
    if exc is None:
        future.set_result(value)
    else:
        future.set_exception(exc)


class _Call(Generic[R]):
    """Client side of one invocation.

    The handshake is answered where it arrives: the rest of the params and their end of
    stream go out from this callback, so the caller waits once, for the results, which may
    come before the handshake was seen (spec §3.2).
    """

    __slots__ = ("_codec", "_decoder", "_nc", "handshaken", "results", "subject", "tail")

    def __init__(self, nc: NatsConnection, subject: str, results: Codec[R]) -> None:
        self._nc = nc
        self.subject = subject
        self._codec = results
        self._decoder: StreamDecoder[R] | None = None
        self.tail = b""
        """Param bytes that did not fit in the invocation message: sent once the handshake names ``Rs``."""
        self.handshaken = False
        self.results: asyncio.Future[R] = asyncio.get_running_loop().create_future()

    def on_message(self, channel: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        if not channel:
            self._on_handshake(reply, headers)
        elif channel == _RESULTS and not self.results.done():
            self._on_results(data)

    def _on_handshake(self, reply: bytes, headers: bytes | None) -> None:
        # Only the first message on Rc is the handshake (spec §3.2); later ones are ignored.
        if self.handshaken:
            return
        self.handshaken = True
        error = _status_error(self.subject, headers)
        if error is None and not reply:
            error = ProtocolViolation(f"{self.subject!r}: the handshake did not specify a reply subject")
        if error is not None:
            _settle(self.results, exc=error)
            return
        tail, self.tail = self.tail, b""
        subject = params_subject(reply.decode())
        nc = self._nc
        try:
            for chunk in chunks(tail, nc.max_payload):
                nc.publish_now(subject, bytes(chunk))
            nc.publish_now(subject, b"")
        except TransportClosed as exc:
            _settle(self.results, exc=exc)

    def _on_results(self, data: bytes) -> None:
        received = self._decoder.received if self._decoder is not None else 0
        if not data:
            _settle(self.results, exc=IncompleteResults(self.subject, received))
            return
        try:
            if self._decoder is None:
                # The usual case: the whole value in one message, no stream decoder needed.
                try:
                    _settle(self.results, value=decode(self._codec, data))
                    return
                except IncompleteValue:
                    self._decoder = StreamDecoder(self._codec)
            if self._decoder.feed(data):
                _settle(self.results, value=self._decoder.value)
        except CodecError as exc:
            _settle(self.results, exc=ProtocolViolation(f"{self.subject!r} sent invalid results: {exc}"))

    def expire(self, timeout: float) -> None:
        waiting_for = "the results" if self.handshaken else "the handshake"
        _settle(self.results, exc=InvocationTimeout(self.subject, waiting_for, timeout))

    def fail(self, exc: Exception) -> None:
        _settle(self.results, exc=exc)

    def forget(self) -> None:
        """Mark the future handled so an unread failure is not reported as lost."""
        if self.results.done():
            if not self.results.cancelled():
                self.results.exception()
        else:
            self.results.cancel()


class _ServedParams(Generic[P]):
    """Server side of an invocation whose params did not fit in its first message: the rest
    arrives on ``Rs.params``."""

    __slots__ = ("_decoder", "future", "subject")

    def __init__(self, subject: str, params: Codec[P], first: bytes) -> None:
        self.subject = subject
        self.future: asyncio.Future[P] = asyncio.get_running_loop().create_future()
        self._decoder = StreamDecoder(params)
        self._decoder.feed(first)

    def on_message(self, channel: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        if channel != _PARAMS or self.future.done():
            return
        if not data:  # end of stream: only fine once the value is complete
            _settle(
                self.future,
                exc=ProtocolViolation(
                    f"{self.subject!r}: params ended after {self._decoder.received} byte(s), "
                    "before a complete value"
                ),
            )
            return
        try:
            if self._decoder.feed(data):
                self.future.set_result(self._decoder.value)
        except CodecError as exc:
            _settle(self.future, exc=exc)

    def fail(self, exc: Exception) -> None:
        _settle(self.future, exc=exc)


@dataclass
class ServeStats:
    """Counters of one served function (read by health and the benchmarks)."""

    served: int = 0
    handler_failures: int = 0
    bad_params: int = 0
    in_flight: int = 0
    waiting: int = 0


@dataclass
class Served(Generic[P, R]):
    """A function being served; :meth:`close` stops it and awaits its in-flight calls."""

    subject: str
    stats: ServeStats
    _nc: NatsConnection
    _sub: Subscription | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    closed: bool = False

    async def close(self) -> None:
        """Unsubscribe, then cancel and await every call still running. Idempotent."""
        if self.closed:
            return
        self.closed = True
        try:
            if self._sub is not None:
                await self._nc.unsubscribe_direct(self._sub)
        except Exception as exc:  # the connection may already be gone
            log.debug("unsubscribe %s failed: %s", self.subject, exc)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


# --- the transport ----------------------------------------------------------------------------


class WrpcTransport:
    """Invokes and serves wRPC functions over one NATS connection."""

    def __init__(self, nc: NatsConnection, *, inbox: Inbox | None = None) -> None:
        self._nc = nc
        self._inbox = inbox if inbox is not None else SharedInbox(nc)
        self._served: list[Served[Any, Any]] = []
        self._started = False
        self._subjects: dict[tuple[str, str, str], str] = {}

    @property
    def nats(self) -> NatsConnection:
        """The NATS connection underneath."""
        return self._nc

    async def start(self) -> None:
        """Subscribe the inbox and wait until the server has it. Call once before use."""
        if not self._started:
            await self._inbox.start()
            await ensure_active(self._nc)
            self._started = True

    async def close(self) -> None:
        """Stop serving, fail in-flight invocations with :class:`TransportClosed`. Idempotent."""
        served, self._served = self._served, []
        for one in served:
            await one.close()
        await self._inbox.stop()

    def _subject(self, target_prefix: str, func: Function[Any, Any]) -> str:
        """The invocation subject, checked once: ids come from the host and end up on the wire."""
        key = (target_prefix, func.instance, func.name)
        subject = self._subjects.get(key)
        if subject is None:
            subject = check_subject(invocation_subject(target_prefix, func.instance, func.name))
            if len(self._subjects) < 10_000:
                self._subjects[key] = subject
        return subject

    # -- client ----------------------------------------------------------------------------

    async def invoke(
        self,
        target_prefix: str,
        func: Function[P, R],
        params: P,
        *,
        headers: Headers | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> R:
        """Call ``func`` on ``target_prefix`` (``LATTICE.TARGET_ID``) and return its decoded results.

        Raises :class:`NoResponders`, :class:`InvocationTimeout` (``timeout`` covers the
        whole call), :class:`IncompleteResults` (the callee trapped) or
        :class:`ProtocolViolation`; ``ValueError`` for a target id or header that cannot
        go on the wire.
        """
        subject = self._subject(target_prefix, func)
        payload = encode(func.params, params)
        block = header_block(headers) if headers else b""
        nc = self._nc
        call: _Call[R] = _Call(nc, subject, func.results)
        rc = await self._inbox.open(call)
        # What fits in the invocation message itself: max_payload less the header block
        # and, as the reference client does, the reply subject (spec §3.2).
        first = max(0, nc.max_payload - len(rc) - len(block))
        if len(payload) > first:
            call.tail = payload[first:]
            payload = payload[:first]
        timer = asyncio.get_running_loop().call_later(timeout, call.expire, timeout)
        try:
            nc.publish_now(subject, payload, rc, block)
            return await call.results
        finally:
            timer.cancel()
            call.forget()
            await self._inbox.close(rc)

    # -- server ----------------------------------------------------------------------------

    async def serve(
        self,
        target_prefix: str,
        func: Function[P, R],
        handler: Handler[P, R],
        *,
        queue_group: str | None = None,
        max_in_flight: int = 1024,
        params_timeout: float = DEFAULT_TIMEOUT,
    ) -> Served[P, R]:
        """Serve ``func`` at ``target_prefix`` with ``handler(params, headers)``.

        Subscribes with ``queue_group`` (default: ``target_prefix``, as wasmCloud does)
        and returns once the subscription is active. At most ``max_in_flight`` calls run
        at once; beyond that, invocations wait in order and start as calls finish. A
        handler that raises is logged and its caller gets an empty result stream (a trap,
        spec §3.4); WIT-level errors must be returned as ``Err`` values instead.
        """
        subject = self._subject(target_prefix, func)
        stats = ServeStats()
        served: Served[P, R] = Served(subject, stats, self._nc)
        tasks = served._tasks
        waiting: collections.deque[tuple[bytes, bytes, bytes | None]] = collections.deque()

        def start(reply: bytes, data: bytes, headers: bytes | None) -> None:
            stats.in_flight += 1
            task = asyncio.create_task(
                self._handle(subject, func, handler, reply.decode(), data, headers, stats, params_timeout)
            )
            tasks.add(task)
            task.add_done_callback(done)

        def done(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            stats.in_flight -= 1
            if not task.cancelled() and task.exception() is not None:
                log.error("%s: serving a call failed: %s", subject, task.exception())
            if waiting and not served.closed:
                stats.waiting -= 1
                start(*waiting.popleft())

        def on_invocation(got: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
            if not reply:
                log.warning("dropped an invocation of %s without a reply subject", subject)
                stats.bad_params += 1
            elif stats.in_flight < max_in_flight:
                start(reply, data, headers)
            else:
                stats.waiting += 1
                waiting.append((reply, data, headers))

        served._sub = await self._nc.subscribe_direct(
            subject, on_invocation, queue=queue_group if queue_group is not None else target_prefix
        )
        await ensure_active(self._nc)
        self._served.append(served)
        return served

    async def _handle(
        self,
        subject: str,
        func: Function[P, R],
        handler: Handler[P, R],
        reply: str,
        data: bytes,
        headers: bytes | None,
        stats: ServeStats,
        params_timeout: float,
    ) -> None:
        nc = self._nc
        state: _ServedParams[P] | None = None
        bad: CodecError | None = None
        try:
            params = decode(func.params, data)  # the usual case: all params in the first message
        except IncompleteValue:
            state = _ServedParams(subject, func.params, data)
        except CodecError as exc:
            bad = exc
        # Complete params need no route: the caller's EOF on Rs.params then lands on a
        # subject nobody reads, and is dropped by the NATS server.
        rs = await self._inbox.open(state) if state is not None else self._inbox.reserve()
        results = results_subject(reply)
        try:
            nc.publish_now(reply, b"", rs)  # the handshake, always sent (spec §3.2)
            if bad is not None:
                stats.bad_params += 1
                log.warning("%s: invalid params, answered with no results: %s", subject, bad)
                return
            if state is not None:
                try:
                    async with asyncio.timeout(params_timeout):
                        params = await state.future
                except TimeoutError:
                    stats.bad_params += 1
                    log.warning(
                        "%s: no complete params in %.1fs; answered with no results", subject, params_timeout
                    )
                    return
                except (CodecError, ProtocolViolation) as exc:
                    stats.bad_params += 1
                    log.warning("%s: invalid params, answered with no results: %s", subject, exc)
                    return
                finally:
                    state.fail(TransportClosed("call ended"))
                    await self._inbox.close(rs)
            try:
                payload = encode(func.results, await handler(params, parse_headers(headers)))
            except ProviderError as exc:  # a failure we know (a component trapped…): no traceback
                stats.handler_failures += 1
                log.warning("%s: %s; the caller gets no results (a trap)", subject, exc)
                return
            except Exception:
                stats.handler_failures += 1
                log.exception("%s: the handler failed; the caller gets no results (a trap)", subject)
                return
            for chunk in chunks(payload, nc.max_payload):
                nc.publish_now(results, bytes(chunk))
            stats.served += 1
        finally:
            if not nc.is_closed:
                nc.publish_now(results, b"")  # end of stream, after the results or alone (a trap)
