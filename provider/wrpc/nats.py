"""wRPC 0.0.1 over NATS: invoke functions and serve them (protocol spec §3). I/O.

One :class:`WrpcTransport` per NATS connection. It answers every reply subject it
needs through an :class:`Inbox`:

* :class:`SharedInbox` (the default) holds one wildcard subscription ``_INBOX.<id>.>``
  and routes each message in-process by its token, so a call costs no SUB/UNSUB
  and the inbox is active before any call publishes (spec §3.2: subscribe first);
* :class:`PerCallInbox` subscribes and unsubscribes ``Rc`` and ``Rc.*`` for every
  call, as the spec's sequence diagram draws it. It exists to be measured against
  (``make bench-wrpc``) and as a fallback for accounts that forbid wildcard inboxes.

Nothing here flushes per call: nats-py's flusher coalesces writes on its own, and a
PING round trip per call would halve throughput. Only :func:`ensure_active` flushes,
once, when a subscription must be live before others are told it exists.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from provider.errors import (
    CodecError,
    IncompleteResults,
    InvocationTimeout,
    NoResponders,
    ProtocolViolation,
    TransportClosed,
    WrpcError,
)
from provider.wrpc.codec import Codec, StreamDecoder, encode
from provider.wrpc.messaging import Function
from provider.wrpc.subjects import (
    PARAMS,
    RESULTS,
    chunks,
    first_chunk_size,
    invocation_subject,
    params_subject,
    results_subject,
)

log = logging.getLogger(__name__)

P = TypeVar("P")
R = TypeVar("R")
T = TypeVar("T")

DEFAULT_TIMEOUT = 10.0
"""Seconds an invocation may take end to end, and a served call may wait for its params."""

Headers = Mapping[str, str]
Handler = Callable[[P, Headers], Awaitable[R]]

_STATUS = "Status"
_DESCRIPTION = "Description"


async def ensure_active(nc: NatsClient) -> None:
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

    def on_message(self, channel: str, msg: Msg) -> None:
        """Take a message that arrived on the inbox itself (``channel == ""``) or on a
        sub-channel (``"results"``, ``"params"``). Must not block."""

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

    def __init__(self, nc: NatsClient) -> None:
        self._nc = nc
        self._prefix = _new_prefix()
        self._unrouted = _new_prefix()
        self._routes: dict[str, Route] = {}
        self._ids = itertools.count(1)
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(
            self._prefix + ">", cb=self._on_message, pending_msgs_limit=-1, pending_bytes_limit=-1
        )

    async def _on_message(self, msg: Msg) -> None:
        token, _, channel = msg.subject[len(self._prefix) :].partition(".")
        route = self._routes.get(token)
        if route is not None:
            route.on_message(channel, msg)

    async def open(self, route: Route) -> str:
        token = str(next(self._ids))
        self._routes[token] = route
        return self._prefix + token

    def reserve(self) -> str:
        # Outside the wildcard: what the peer still sends there (its params EOF) is dropped by
        # the NATS server instead of being delivered to us only to be thrown away.
        return self._unrouted + str(next(self._ids))

    async def close(self, subject: str) -> None:
        self._routes.pop(subject[len(self._prefix) :], None)

    async def stop(self) -> None:
        routes, self._routes = self._routes, {}
        for route in routes.values():
            route.fail(TransportClosed("the wRPC transport closed"))
        if self._sub is not None and not self._nc.is_closed:
            await self._sub.unsubscribe()
        self._sub = None


class PerCallInbox:
    """A SUB of ``Rc`` and ``Rc.*`` per call, UNSUB when it ends.

    NATS orders a connection's commands, so the SUBs are active before the call's
    own publish reaches the server: no flush is needed before publishing.
    """

    def __init__(self, nc: NatsClient) -> None:
        self._nc = nc
        self._prefix = _new_prefix()
        self._ids = itertools.count(1)
        self._open: dict[str, tuple[Route, list[Subscription]]] = {}

    async def start(self) -> None:
        return None

    async def open(self, route: Route) -> str:
        subject = self._prefix + str(next(self._ids))
        cut = len(subject) + 1

        async def on_message(msg: Msg) -> None:
            route.on_message(msg.subject[cut:], msg)

        subs = [
            await self._nc.subscribe(subject, cb=on_message),
            await self._nc.subscribe(subject + ".*", cb=on_message),
        ]
        self._open[subject] = (route, subs)
        return subject

    def reserve(self) -> str:
        return self._prefix + str(next(self._ids))

    async def close(self, subject: str) -> None:
        entry = self._open.pop(subject, None)
        if entry is not None and not self._nc.is_closed:
            for sub in entry[1]:
                await sub.unsubscribe()

    async def stop(self) -> None:
        for subject, (route, _) in list(self._open.items()):
            route.fail(TransportClosed("the wRPC transport closed"))
            await self.close(subject)


# --- calls ------------------------------------------------------------------------------------


def _status_error(subject: str, msg: Msg) -> WrpcError | None:
    """The error a NATS status message on ``Rc`` stands for, or ``None`` if it is not one."""
    status = msg.headers.get(_STATUS) if msg.headers else None
    if status is None or status.startswith("2"):
        return None
    if status == "503":
        return NoResponders(subject)
    description = msg.headers.get(_DESCRIPTION, "") if msg.headers else ""
    return ProtocolViolation(f"NATS answered {subject!r} with status {status} {description}".rstrip())


def _as_dict(headers: Headers | None) -> dict[str, str] | None:
    if not headers:
        return None
    return headers if isinstance(headers, dict) else dict(headers)


def _settle(future: asyncio.Future[Any], *, value: Any = None, exc: BaseException | None = None) -> None:
    if future.done():
        return
    if exc is None:
        future.set_result(value)
    else:
        future.set_exception(exc)


class _Call(Generic[R]):
    """Client side of one invocation: waits for the handshake and decodes the results."""

    __slots__ = ("_decoder", "handshake", "results", "subject")

    def __init__(self, subject: str, results: Codec[R]) -> None:
        loop = asyncio.get_running_loop()
        self.subject = subject
        self.handshake: asyncio.Future[str] = loop.create_future()
        self.results: asyncio.Future[R] = loop.create_future()
        self._decoder = StreamDecoder(results)

    def on_message(self, channel: str, msg: Msg) -> None:
        if channel == "":
            self._on_handshake(msg)
        elif channel == RESULTS and not self.results.done():
            self._on_results(msg.data)

    def _on_handshake(self, msg: Msg) -> None:
        # Only the first message on Rc is the handshake (spec §3.2); later ones are ignored.
        if self.handshake.done():
            return
        error = _status_error(self.subject, msg)
        if error is None and not msg.reply:
            error = ProtocolViolation(f"{self.subject!r}: the handshake did not specify a reply subject")
        if error is not None:
            _settle(self.handshake, exc=error)
            _settle(self.results, exc=error)
        else:
            _settle(self.handshake, value=msg.reply)

    def _on_results(self, data: bytes) -> None:
        # Results may arrive before the handshake was processed (spec §3.2): decode regardless.
        if not data:
            _settle(self.results, exc=IncompleteResults(self.subject, self._decoder.received))
            return
        try:
            if self._decoder.feed(data):
                _settle(self.results, value=self._decoder.value)
        except CodecError as exc:
            _settle(self.results, exc=ProtocolViolation(f"{self.subject!r} sent invalid results: {exc}"))

    def fail(self, exc: Exception) -> None:
        _settle(self.handshake, exc=exc)
        _settle(self.results, exc=exc)

    def forget(self) -> None:
        """Mark both futures handled so an unread failure is not reported as lost."""
        for future in (self.handshake, self.results):
            if future.done():
                if not future.cancelled():
                    future.exception()
            else:
                future.cancel()


class _ServedParams(Generic[P]):
    """Server side of one invocation: the params, from the first message and ``Rs.params``."""

    __slots__ = ("_decoder", "future", "subject")

    def __init__(self, subject: str, params: Codec[P]) -> None:
        self.subject = subject
        self.future: asyncio.Future[P] = asyncio.get_running_loop().create_future()
        self._decoder = StreamDecoder(params)

    def feed(self, data: bytes) -> None:
        """Add param bytes. Raises :class:`CodecError` for bytes that can never decode."""
        if data and not self.future.done() and self._decoder.feed(data):
            self.future.set_result(self._decoder.value)

    def on_message(self, channel: str, msg: Msg) -> None:
        if channel != PARAMS:
            return
        if not msg.data:  # end of stream: only fine once the value is complete
            _settle(
                self.future,
                exc=ProtocolViolation(
                    f"{self.subject!r}: params ended after {self._decoder.received} byte(s), "
                    "before a complete value"
                ),
            )
            return
        try:
            self.feed(msg.data)
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


@dataclass
class Served(Generic[P, R]):
    """A function being served; :meth:`close` stops it and awaits its in-flight calls."""

    subject: str
    stats: ServeStats
    _sub: Subscription
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _closed: bool = False

    async def close(self) -> None:
        """Unsubscribe, then cancel and await every call still running. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._sub.unsubscribe()
        except Exception as exc:  # the connection may already be gone
            log.debug("unsubscribe %s failed: %s", self.subject, exc)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


# --- the transport ----------------------------------------------------------------------------


class WrpcTransport:
    """Invokes and serves wRPC functions over one NATS connection."""

    def __init__(self, nc: NatsClient, *, inbox: Inbox | None = None) -> None:
        self._nc = nc
        self._inbox = inbox if inbox is not None else SharedInbox(nc)
        self._served: list[Served[Any, Any]] = []
        self._started = False

    @property
    def nats(self) -> NatsClient:
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
        :class:`ProtocolViolation`.
        """
        subject = invocation_subject(target_prefix, func.instance, func.name)
        payload = encode(func.params, params)
        call = _Call(subject, func.results)
        rc = await self._inbox.open(call)
        nc = self._nc
        try:
            async with asyncio.timeout(timeout):
                first = first_chunk_size(nc.max_payload, rc, headers)
                await nc.publish(subject, payload[:first], reply=rc, headers=_as_dict(headers))
                rs = await call.handshake
                tail = params_subject(rs)
                for chunk in chunks(payload[first:], nc.max_payload):
                    await nc.publish(tail, bytes(chunk))
                await nc.publish(tail, b"")
                return await call.results
        except TimeoutError:
            waiting_for = "the results" if call.handshake.done() else "the handshake"
            raise InvocationTimeout(subject, waiting_for, timeout) from None
        finally:
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
        at once; beyond that, invocations wait in the subscription's queue. A handler
        that raises is logged and its caller gets an empty result stream (a trap, spec
        §3.4); WIT-level errors must be returned as ``Err`` values instead.
        """
        subject = invocation_subject(target_prefix, func.instance, func.name)
        stats = ServeStats()
        slots = asyncio.Semaphore(max_in_flight)
        tasks: set[asyncio.Task[None]] = set()

        def done(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            stats.in_flight -= 1
            slots.release()
            if not task.cancelled() and task.exception() is not None:
                log.error("%s: serving a call failed: %s", subject, task.exception())

        async def on_invocation(msg: Msg) -> None:
            if not msg.reply:
                log.warning("dropped an invocation of %s without a reply subject", subject)
                stats.bad_params += 1
                return
            await slots.acquire()
            stats.in_flight += 1
            task = asyncio.create_task(self._handle(subject, func, handler, msg, stats, params_timeout))
            tasks.add(task)
            task.add_done_callback(done)

        sub = await self._nc.subscribe(
            subject,
            queue=queue_group if queue_group is not None else target_prefix,
            cb=on_invocation,
            pending_msgs_limit=-1,
            pending_bytes_limit=-1,
        )
        await ensure_active(self._nc)
        served: Served[P, R] = Served(subject, stats, sub, tasks)
        self._served.append(served)
        return served

    async def _handle(
        self,
        subject: str,
        func: Function[P, R],
        handler: Handler[P, R],
        msg: Msg,
        stats: ServeStats,
        params_timeout: float,
    ) -> None:
        nc = self._nc
        state = _ServedParams(subject, func.params)
        try:
            state.feed(msg.data)  # before the handshake: the rest can only follow it
        except CodecError as exc:
            state.fail(exc)
        # Params complete in the first message (the common case) need no route: the
        # caller's EOF on Rs.params then lands on a subject nobody reads, and is dropped.
        routed = not state.future.done()
        rs = await self._inbox.open(state) if routed else self._inbox.reserve()
        results = results_subject(msg.reply)
        try:
            await nc.publish(msg.reply, b"", reply=rs)  # the handshake, always sent (spec §3.2)
            try:
                if routed:
                    async with asyncio.timeout(params_timeout):
                        params = await state.future
                else:
                    params = state.future.result()
            except TimeoutError:
                stats.bad_params += 1
                log.warning(
                    "%s: no complete params within %.1fs; answered with no results", subject, params_timeout
                )
                return
            except (CodecError, ProtocolViolation) as exc:
                stats.bad_params += 1
                log.warning("%s: invalid params, answered with no results: %s", subject, exc)
                return
            finally:
                if routed:
                    await self._inbox.close(rs)
            try:
                payload = encode(func.results, await handler(params, msg.headers or {}))
            except Exception:
                stats.handler_failures += 1
                log.exception("%s: the handler failed; the caller gets no results (a trap)", subject)
                return
            for chunk in chunks(payload, nc.max_payload):
                await nc.publish(results, bytes(chunk))
            stats.served += 1
        finally:
            state.fail(TransportClosed("call ended"))
            if not nc.is_closed:
                await nc.publish(results, b"")  # end of stream, after the results or alone (a trap)
