"""wRPC 0.0.1 over NATS: invoke functions and serve them (protocol spec §3). I/O.

One :class:`WrpcTransport` per NATS connection (a :class:`~provider.wrpc.connection.NatsConnection`).
It answers every reply subject it needs through an :class:`Inbox`:

* :class:`SharedInbox` (the default) holds one wildcard subscription ``_INBOX.<id>.>``
  and routes each message in-process by its token, so a call costs no SUB/UNSUB
  and the inbox is active before any call publishes (spec §3.2: subscribe first);
* :class:`PerCallInbox` subscribes and unsubscribes ``Rc`` and ``Rc.*`` for every
  call, as the spec's sequence diagram draws it. It exists to be measured against
  (``make bench-wrpc``) and as a fallback for accounts that forbid wildcard inboxes.

The protocol itself — handshake, chunking, end of stream, decoding, every failure — is in
the pure state machines of :mod:`provider.wrpc.call`; this module only moves their
messages. Messages are handled where the connection parses them (direct subscriptions)
and published synchronously into its write buffer: nothing here awaits a publish, and
nothing flushes per call — nats-py's flusher writes everything published in one turn
of the event loop at once. Only :func:`ensure_active` flushes, once, when a
subscription must be live before others are told it exists.

A handler that returns its results at once (rather than an awaitable) is answered where its
call became whole, with no task; one that returns an awaitable is awaited in a task.

A served function holds a handler slot only while its handler runs: a call whose params
are still arriving waits in an inbox route, bounded in number, bytes and time
(:class:`~provider.wrpc.call.ServeLimits`), and whatever is over a limit is answered at
once with the empty result stream, counted and logged (rate-limited).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from nats.aio.subscription import Subscription

from provider.errors import (
    InvocationTimeout,
    OutboundBufferFull,
    Overloaded,
    ProviderError,
    TransportClosed,
    ValueTooLarge,
)
from provider.wrpc.call import (
    DEFAULT_MAX_VALUE_BYTES,
    Admission,
    ClientCall,
    Completed,
    ServedCall,
    ServedState,
    ServeLimits,
    Verdict,
)
from provider.wrpc.codec import encode
from provider.wrpc.connection import NatsConnection, check_subject
from provider.wrpc.drops import DropLog
from provider.wrpc.messaging import Function
from provider.wrpc.protocol import header_block, parse_headers
from provider.wrpc.subjects import invocation_subject

log = logging.getLogger(__name__)

P = TypeVar("P")
R = TypeVar("R")

DEFAULT_TIMEOUT = 10.0
"""Seconds an invocation may take end to end."""

UNROUTED = "unrouted"
"""Drop reason: a message on this transport's inbox for no call it has."""

Headers = Mapping[str, str]
Handler = Callable[[P, Headers], R | Awaitable[R]]
"""A served function: its results, or an awaitable of them when it has to wait for something.
Returning the results directly (a publish to a local session) answers the call at once,
from the connection's reader, with no task: in the same write as its handshake."""


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
        elif data:  # a late end of stream is normal once a call is over; anything else is lost
            self._nc.drop(UNROUTED, subject, "no call of this transport has that inbox (any more)")

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


def _forget(future: asyncio.Future[Any]) -> None:
    """Mark ``future`` handled so an unread failure is not reported as lost."""
    if future.done():
        if not future.cancelled():
            future.exception()
    else:
        future.cancel()


class _ClientRoute(Generic[R]):
    """Moves one :class:`ClientCall`'s messages and settles its caller's future."""

    __slots__ = ("call", "future", "nc")

    def __init__(self, nc: NatsConnection, call: ClientCall[R], loop: asyncio.AbstractEventLoop) -> None:
        self.nc = nc
        self.call = call
        self.future: asyncio.Future[R] = loop.create_future()

    def on_message(self, channel: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        self.call.receive(channel, reply, data, headers)
        self.advance()

    def fail(self, exc: Exception) -> None:
        self.call.fail(exc if isinstance(exc, ProviderError) else TransportClosed(str(exc)))
        self.advance()

    def expire(self) -> None:
        self.call.expire()
        self.advance()

    def advance(self) -> None:
        """Publish what the call has to send, then settle the future once it is over."""
        call = self.call
        try:
            for message in call.data_to_send():
                self.nc.publish_now(*message)
        except (TransportClosed, OutboundBufferFull) as exc:
            call.fail(exc)
        for event in call.events_received():
            if self.future.done():
                continue
            if isinstance(event, Completed):
                self.future.set_result(event.value)
            else:
                self.future.set_exception(event.error)


@dataclass
class ServeStats:
    """Counters of one served function (read by health and the benchmarks)."""

    served: int = 0
    """Calls answered with the handler's results."""
    handler_failures: int = 0
    """Handlers that raised (or returned a value that does not encode): the caller got a trap."""
    bad_params: int = 0
    """Calls whose params were invalid, ended early, came too late or were too large."""
    params_timeouts: int = 0
    """Of ``bad_params``: the rest of the params did not come within ``params_timeout``."""
    params_too_large: int = 0
    """Of ``bad_params``: a declared length took the params past ``max_params_bytes``."""
    overloaded: int = 0
    """Calls refused at once because a limit was reached (awaiting, queued, held bytes)."""
    no_reply: int = 0
    """Invocations dropped without an answer: no usable reply subject."""
    in_flight: int = 0
    """Handlers running now."""
    waiting: int = 0
    """Calls with whole params waiting for a handler slot now."""
    awaiting_params: int = 0
    """Calls whose params are still arriving now."""


class Served(Generic[P, R]):
    """A function being served; :meth:`close` stops it and awaits its in-flight calls.

    Each invocation becomes a :class:`ServedCall`. Its handshake goes out at once; its
    params, if they go on past the first message, are received on an inbox route by a
    short task that holds no handler slot; once whole, :class:`Admission` runs it, queues it
    for a slot, or refuses it.
    """

    def __init__(
        self,
        transport: WrpcTransport,
        subject: str,
        func: Function[P, R],
        handler: Handler[P, R],
        limits: ServeLimits,
    ) -> None:
        self.subject = subject
        self._stats = ServeStats()
        self.limits = limits
        self.closed = False
        self._transport = transport
        self._nc = transport.nats
        self._inbox = transport.inbox
        self._func = func
        self._handler = handler
        self._admission: Admission[ServedCall[P, R]] = Admission(limits)
        self._tasks: set[asyncio.Task[None]] = set()
        self._sub: Subscription | None = None

    async def start(self, queue: str) -> None:
        self._sub = await self._nc.subscribe_direct(self.subject, self.on_invocation, queue=queue)

    async def close(self) -> None:
        """Unsubscribe, answer queued calls with no results, then cancel and await every call
        still running or receiving its params. Idempotent."""
        if self.closed:
            return
        self.closed = True
        try:
            if self._sub is not None:
                await self._nc.unsubscribe_direct(self._sub)
        except Exception as exc:  # the connection may already be gone
            log.debug("unsubscribe %s failed: %s", self.subject, exc)
        for call in self._admission.drain():
            call.reject(TransportClosed(f"{self.subject!r} stopped being served"))
            self._send(call)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- from the connection's reader: must not block ------------------------------------------

    def on_invocation(self, _subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        """A message on the invocation subject (a direct subscription handler)."""
        limits = self.limits
        call: ServedCall[P, R] = ServedCall(
            self.subject,
            self._func.params,
            self._func.results,
            reply,
            data,
            headers,
            max_payload=self._nc.max_payload,
            timeout=limits.params_timeout,
            limit=limits.max_params_bytes,
        )
        if call.state is ServedState.DROPPED:
            self._advance(call)
            return
        if call.needs_params and not self.closed:
            refusal = self._admission.start_awaiting(call.size)
            if refusal is None:
                self._track(self._nc.event_loop.create_task(self._receive_params(call)), self._receiver_done)
                return
            call.accept(self._inbox.reserve())
            call.reject(Overloaded(refusal))
        else:
            # Whole params need no route: the caller's end of stream on Rs.params then goes to
            # a subject nobody reads, and is dropped by the NATS server.
            call.accept(self._inbox.reserve())
            if self.closed:
                call.reject(TransportClosed(f"{self.subject!r} stopped being served"))
        self._advance(call)

    def _advance(self, call: ServedCall[P, R]) -> None:
        """Act on what happened to ``call``, then publish what it has to send, until it rests.

        Acting first matters: a handler that waits gets its task scheduled before the handshake
        wakes nats-py's flusher, so what the handler publishes in its first step (a component's
        own call) leaves in the same write as the handshake, a turn of the event loop sooner."""
        events = call.events_received()
        while True:
            for event in events:
                if isinstance(event, Completed):
                    self._admit(call)
                else:
                    self._failed(call, event.error)
            self._send(call)
            events = call.events_received()
            if not events:
                return

    def _admit(self, call: ServedCall[P, R]) -> None:
        verdict = self._admission.admit(call, call.size)
        if verdict is Verdict.RUN:
            self._run(call)
        elif verdict is Verdict.REFUSED:
            limits = self.limits
            call.reject(
                Overloaded(
                    f"{limits.max_in_flight} handlers run and {self._admission.queued} calls "
                    f"wait for one (limit {limits.max_queued})"
                )
            )

    def _failed(self, call: ServedCall[P, R], error: ProviderError) -> None:
        stats = self._stats
        if call.state is ServedState.DROPPED:
            stats.no_reply += 1
            self._transport.report("no_reply", f"{error}; dropped")
            return
        if isinstance(error, TransportClosed):
            return  # we are closing: not the caller's doing
        if isinstance(error, Overloaded):
            stats.overloaded += 1
            reason = "overloaded"
        else:
            stats.bad_params += 1
            reason = "bad_params"
            if isinstance(error, InvocationTimeout):
                stats.params_timeouts += 1
                reason = "params_timeout"
            elif isinstance(error, ValueTooLarge):
                stats.params_too_large += 1
                reason = "params_too_large"
        self._transport.report(reason, f"{self.subject}: {error}; answered with no results")

    def _send(self, call: ServedCall[P, R]) -> None:
        try:
            for message in call.data_to_send():
                self._nc.publish_now(*message)
        except (TransportClosed, OutboundBufferFull) as exc:
            if not self.closed:
                self._transport.report("unanswered", f"{self.subject!r}: could not answer a call: {exc}")

    @property
    def stats(self) -> ServeStats:
        """The function's counters, the gauges (in flight, waiting, awaiting params) as of now."""
        admission, stats = self._admission, self._stats
        stats.in_flight, stats.waiting, stats.awaiting_params = (
            admission.in_flight,
            admission.queued,
            admission.awaiting,
        )
        return stats

    # -- tasks ---------------------------------------------------------------------------------

    def _track(self, task: asyncio.Task[None], done: Callable[[asyncio.Task[None]], None]) -> None:
        """Keep ``task`` until it is done (``close`` cancels what is left), then call ``done``."""
        self._tasks.add(task)
        task.add_done_callback(done)

    async def _receive_params(self, call: ServedCall[P, R]) -> None:
        """Route ``Rs.params`` to ``call`` until its params are whole, refused or too late."""
        route = _ParamsRoute(self, call)
        rs: str | None = None
        timer: asyncio.TimerHandle | None = None
        try:
            rs = await self._inbox.open(route)
            timer = self._nc.event_loop.call_later(self.limits.params_timeout, route.expire)
            call.accept(rs)
            route.advance(call.size)
            await route.done
        finally:
            if timer is not None:
                timer.cancel()
            if not route.done.done():  # cancelled: the function stops being served
                route.fail(TransportClosed(f"{self.subject!r} stopped being served"))
            if rs is not None:
                await self._inbox.close(rs)

    def _receiver_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: receiving params failed: %s", self.subject, task.exception())

    def _run(self, call: ServedCall[P, R] | None) -> None:
        """Run the handler of ``call`` (which holds a slot). Results returned at once are sent at
        once, and the slot goes to the next queued call; an awaitable is awaited in a task."""
        while call is not None:
            try:
                results = self._handler(call.params, parse_headers(call.headers))
            except Exception as exc:
                self._trap(call, exc)
            else:
                if isinstance(results, Awaitable):
                    task = self._nc.event_loop.create_task(self._awaited(call, results))
                    self._track(task, functools.partial(self._handler_done, call, results))
                    return
                self._answer(call, results)
            call = self._admission.finished()

    async def _awaited(self, call: ServedCall[P, R], pending: Awaitable[R]) -> None:
        try:
            results = await pending
        except Exception as exc:
            self._trap(call, exc)
        else:
            self._answer(call, results)

    def _answer(self, call: ServedCall[P, R], results: R) -> None:
        """Send the handler's results (a trap if they do not encode)."""
        try:
            call.send_results(results)
        except Exception as exc:
            self._trap(call, exc)
            return
        self._stats.served += 1
        self._send(call)

    def _trap(self, call: ServedCall[P, R], exc: Exception) -> None:
        """The handler failed: its caller gets only the end of the result stream (spec §3.4)."""
        self._stats.handler_failures += 1
        if isinstance(exc, ProviderError):  # a failure we know (a component trapped…): no traceback
            log.warning("%s: %s; the caller gets no results (a trap)", self.subject, exc)
        else:
            log.error(
                "%s: the handler failed; the caller gets no results (a trap)", self.subject, exc_info=exc
            )
        call.trap()
        self._send(call)

    def _handler_done(self, call: ServedCall[P, R], pending: Awaitable[R], task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():  # the function stops being served
            if isinstance(pending, Coroutine):
                pending.close()  # never started if cancelled at once: no "never awaited" warning
            call.trap()  # the caller gets the end of stream (nothing, if it was answered)
            self._send(call)
        elif task.exception() is not None:
            log.error("%s: serving a call failed: %s", self.subject, task.exception())
        self._run(self._admission.finished())


class _ParamsRoute(Generic[P, R]):
    """The inbox route of a served call whose params are still arriving."""

    __slots__ = ("call", "done", "served")

    def __init__(self, served: Served[P, R], call: ServedCall[P, R]) -> None:
        self.served = served
        self.call = call
        self.done: asyncio.Future[None] = served._nc.event_loop.create_future()

    def on_message(self, channel: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        call = self.call
        before = call.size
        call.receive(channel, reply, data, headers)
        self.advance(before)

    def fail(self, exc: Exception) -> None:
        call = self.call
        if call.state is ServedState.NEW:  # not accepted yet: nothing was sent, nothing to answer
            self.served._admission.stop_awaiting(call.size)
            self.done.set_result(None)
            return
        before = call.size
        call.reject(exc if isinstance(exc, ProviderError) else TransportClosed(str(exc)))
        self.advance(before)

    def expire(self) -> None:
        before = self.call.size
        self.call.expire()
        self.advance(before)

    def advance(self, before: int) -> None:
        """Account for the bytes the call took in, and hand it on once it stops receiving."""
        if self.done.done():
            return
        call, admission = self.call, self.served._admission
        if call.size != before:
            refusal = admission.grow(call.size - before)
            if refusal is not None and call.state is ServedState.AWAITING_PARAMS:
                call.reject(Overloaded(refusal))
        if call.state is not ServedState.AWAITING_PARAMS:
            admission.stop_awaiting(call.size)
            self.done.set_result(None)
        self.served._advance(call)


# --- the transport ----------------------------------------------------------------------------


class WrpcTransport:
    """Invokes and serves wRPC functions over one NATS connection."""

    def __init__(self, nc: NatsConnection, *, inbox: Inbox | None = None) -> None:
        self._nc = nc
        self._inbox = inbox if inbox is not None else SharedInbox(nc)
        self._served: list[Served[Any, Any]] = []
        self._started = False
        self._subjects: dict[tuple[str, str, str], str] = {}
        self.failures = DropLog()
        """Served calls answered with no results or dropped, by reason (``failures.counts``)."""

    @property
    def nats(self) -> NatsConnection:
        """The NATS connection underneath."""
        return self._nc

    @property
    def inbox(self) -> Inbox:
        """Where replies to this transport's calls arrive."""
        return self._inbox

    def counters(self) -> dict[str, int]:
        """What was dropped or refused so far, by reason: NATS messages the connection could
        not deliver (``nats.<reason>``), publishes refused while disconnected, and served calls
        answered with no results (``served.<reason>``). For health."""
        counters = {f"nats.{reason}": count for reason, count in self._nc.drops.counts.items()}
        counters["nats.publishes_refused"] = self._nc.publishes_refused
        counters.update({f"served.{reason}": count for reason, count in self.failures.counts.items()})
        return counters

    def report(self, reason: str, message: str) -> None:
        """Count a served call that failed for ``reason``; log it, rate-limited per reason."""
        reported = self.failures.drop(reason, time.monotonic())
        if reported:
            log.warning("%s [%d like it since the last report]", message, reported)

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
        max_results_bytes: int = DEFAULT_MAX_VALUE_BYTES,
    ) -> R:
        """Call ``func`` on ``target_prefix`` (``LATTICE.TARGET_ID``) and return its decoded results.

        Raises :class:`NoResponders`, :class:`InvocationTimeout` (``timeout`` covers the
        whole call), :class:`IncompleteResults` (the callee trapped),
        :class:`ProtocolViolation` (including results declared larger than
        ``max_results_bytes``), :class:`OutboundBufferFull` (NATS is disconnected and its
        reconnect buffer is full) or :class:`TransportClosed`; ``ValueError`` for a target id
        or header that cannot go on the wire.
        """
        subject = self._subject(target_prefix, func)
        block = header_block(headers) if headers else b""
        nc = self._nc
        call = ClientCall(
            subject,
            func.results,
            encode(func.params, params),
            max_payload=nc.max_payload,
            timeout=timeout,
            headers=block,
            limit=max_results_bytes,
        )
        loop = nc.event_loop
        route = _ClientRoute(nc, call, loop)
        rc = await self._inbox.open(route)
        timer = loop.call_later(timeout, route.expire)
        try:
            call.start(rc)
            route.advance()
            return await route.future
        finally:
            timer.cancel()
            _forget(route.future)
            await self._inbox.close(rc)

    # -- server ----------------------------------------------------------------------------

    async def serve(
        self,
        target_prefix: str,
        func: Function[P, R],
        handler: Handler[P, R],
        *,
        queue_group: str | None = None,
        limits: ServeLimits | None = None,
    ) -> Served[P, R]:
        """Serve ``func`` at ``target_prefix`` with ``handler(params, headers)``.

        Subscribes with ``queue_group`` (default: ``target_prefix``, as wasmCloud does)
        and returns once the subscription is active. ``limits`` bound what the function
        holds (:class:`ServeLimits`: handlers at once, queued calls, calls still receiving
        params, their bytes and their deadline); a call over a limit is answered at once
        with no results. A handler that raises is logged and its caller gets an empty result
        stream (a trap, spec §3.4); WIT-level errors must be returned as ``Err`` values instead.
        """
        served: Served[P, R] = Served(
            self, self._subject(target_prefix, func), func, handler, limits or ServeLimits()
        )
        await served.start(queue_group if queue_group is not None else target_prefix)
        await ensure_active(self._nc)
        self._served.append(served)
        return served
