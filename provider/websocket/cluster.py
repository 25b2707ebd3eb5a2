"""This provider's instances across a lattice, seen from one of them (design §7). I/O.

In a lattice every host runs an instance of the provider with the same links, each holding
the sessions of its own listeners, and a component's ``consumer`` call reaches one random
instance. A :class:`Cluster` lets that instance reach what the others hold:

* a publish (or close) to a session or connection of another instance is **forwarded** to it
  as one NATS request: the owner checks again that the component may reach it, queues the
  frame and answers ``ok`` or the ``err`` it would give locally. An owner that is gone answers
  through NATS's no-responders at once;
* a **broadcast** is sent to this instance's sessions and published once for the others;
* ``ws.sessions`` is **gathered** from every live instance within a deadline; an instance
  that did not answer is logged and the answer says it is partial;
* **presence**: each instance says it is here every :data:`HEARTBEAT` seconds, and gone when
  it stops, so a gatherer knows whom to wait for.

Subjects and message encodings are in :mod:`provider.websocket.forwarding`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from provider.errors import CodecError, InvocationTimeout, MessageTooLarge, NoResponders, ProviderError
from provider.wasmcloud.capability import Bus, BusSubscription, Instruments
from provider.websocket import forwarding as fw
from provider.websocket.peer import Counters
from provider.websocket.subjects import Ids
from provider.wrpc.codec import Codec, Err, decode, encode
from provider.wrpc.messaging import (
    MESSAGE_RESULT,
    UNIT_RESULT,
    BrokerMessage,
    MessageResult,
    RequestParams,
    UnitResult,
)

log = logging.getLogger("provider.websocket.cluster")
T = TypeVar("T")

HEARTBEAT = 2.0
"""Seconds between an instance's presence messages."""
EXPIRES = 3 * HEARTBEAT
"""An instance not heard from for this long is taken for gone (killed without a word)."""
FORWARD_TIMEOUT = 5.0
"""Seconds a forwarded publish may take; an owner that is gone answers at once (no responders)."""
MAX_REQUESTS_SERVED = 256
"""Forwarded requests served at once (each may wait for its connection's answer)."""


class Local(Protocol):
    """What an instance does for its peers: the provider's own local operations."""

    def publish_here(self, component: str, msg: BrokerMessage) -> UnitResult | Awaitable[UnitResult]:
        """A component's publish to a target this instance holds."""
        ...

    async def request_here(self, component: str, connection: str, params: RequestParams) -> MessageResult:
        """A component's request on a connection this instance holds."""
        ...

    def broadcast_here(self, component: str, msg: BrokerMessage) -> None:
        """Send to this instance's sessions of servers that deliver to ``component``."""

    def sessions_here(self, component: str) -> list[dict[str, object]]:
        """This instance's sessions that ``component`` may reach, as ``ws.sessions`` lists them."""
        ...

    def health_here(self) -> bytes:
        """This instance's health answer (the JSON the host's health subject gets from any instance)."""
        ...


@dataclass
class ForwardStats:
    """What forwarding costs: counts and the latest latencies (for health and metrics)."""

    forwarded: int = 0
    forward_failures: int = 0
    served: int = 0
    bad_messages: int = 0
    latencies: list[float] = field(default_factory=list)

    def record(self, seconds: float) -> None:
        self.latencies.append(seconds)
        if len(self.latencies) > 1024:
            del self.latencies[:512]


class Cluster:
    """One instance's view of the others; see the module docstring."""

    def __init__(
        self,
        bus: Bus,
        lattice: str,
        provider_id: str,
        ids: Ids,
        local: Local,
        counters: Counters,
        instruments: Instruments | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._bus = bus
        self._lattice = lattice
        self._provider = provider_id
        self.ids = ids
        self._local = local
        self._counters = counters
        self._instruments = instruments
        self._clock = clock
        self._prefix = fw.base(lattice, provider_id)
        self.members: dict[str, float] = {}
        """Other instances' tags → when they were last heard from."""
        self.stats = ForwardStats()
        self._subscriptions: list[BusSubscription] = []
        self._heartbeat: asyncio.Task[None] | None = None
        self._requests = asyncio.Semaphore(MAX_REQUESTS_SERVED)
        self._tasks: set[asyncio.Task[None]] = set()
        self._gathers: dict[str, Callable[[bytes], None]] = {}
        self._gather_ids = itertools.count(1)

    @property
    def tag(self) -> str:
        return self.ids.tag

    # -- life cycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe (two subscriptions, whatever the number of sessions), then say we are here."""
        self._subscriptions = [
            await self._bus.subscribe(f"{self._prefix}.{self.tag}.>", self._on_mine),
            await self._bus.subscribe(f"{self._prefix}.{fw.ALL}.>", self._on_all),
        ]
        self._say(fw.HERE)
        self._heartbeat = asyncio.create_task(self._beat(), name="ws-cluster-heartbeat")

    async def stop(self) -> None:
        """Say we are gone and stop listening. Idempotent."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
            self._heartbeat = None
            self._say(fw.GONE)
        subscriptions, self._subscriptions = self._subscriptions, []
        for sub in subscriptions:
            await sub.unsubscribe()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT)
            self._say(fw.HERE)

    def _say(self, what: str) -> None:
        try:
            self._bus.publish(
                fw.to_all(self._lattice, self._provider, what), encode(fw.PRESENCE, fw.Presence(self.tag))
            )
        except ProviderError as exc:  # NATS closed: nobody to tell
            log.debug("could not say %s: %s", what, exc)

    def live(self) -> list[str]:
        """The other instances heard from recently."""
        now = self._clock()
        for tag, seen in list(self.members.items()):
            if now - seen > EXPIRES:
                del self.members[tag]
                log.info("instance %s has not been heard from for %.0fs: taken for gone", tag, now - seen)
        return sorted(self.members)

    # -- asking the others --------------------------------------------------------------------

    async def forward(self, tag: str, component: str, msg: BrokerMessage) -> UnitResult:
        """Publish ``msg`` through instance ``tag``, which holds its target; its answer."""
        payload = encode(fw.FORWARDED, fw.Forwarded(component, msg.subject, msg.body, msg.reply_to))
        answer = await self._ask(tag, fw.PUBLISH, payload, FORWARD_TIMEOUT, msg.subject)
        if isinstance(answer, Err):
            return answer
        try:
            return decode(UNIT_RESULT, answer)
        except CodecError as exc:
            return self._garbled(tag, exc)

    async def forward_request(
        self, tag: str, component: str, connection: str, params: RequestParams
    ) -> MessageResult:
        """``consumer.request`` on a connection that instance ``tag`` holds; its answer."""
        request = fw.ForwardedRequest(component, connection, params.subject, params.body, params.timeout_ms)
        timeout = (params.timeout_ms or 10_000) / 1000 + FORWARD_TIMEOUT
        answer = await self._ask(
            tag, fw.REQUEST, encode(fw.FORWARDED_REQUEST, request), timeout, params.subject
        )
        if isinstance(answer, Err):
            return answer
        try:
            return decode(MESSAGE_RESULT, answer)
        except CodecError as exc:
            return self._garbled(tag, exc)

    async def _ask(self, tag: str, op: str, payload: bytes, timeout: float, what: str) -> bytes | Err[str]:
        subject = fw.to_instance(self._lattice, self._provider, tag, op)
        started = self._clock()
        try:
            answer = await self._bus.request(subject, payload, timeout)
        except NoResponders:
            self.stats.forward_failures += 1
            self.members.pop(tag, None)
            return Err(
                f"{what!r} is gone: the provider instance {tag} that held it is not running "
                "(it stopped, or was restarted with new ids)"
            )
        except InvocationTimeout:
            self.stats.forward_failures += 1
            return Err(f"{what!r}: provider instance {tag} did not answer within {timeout:g}s")
        except MessageTooLarge as exc:
            self.stats.forward_failures += 1
            return Err(
                f"{what!r} is held by provider instance {tag}, and the message is too large to forward "
                f"to it over the lattice: {exc}"
            )
        except ProviderError as exc:
            self.stats.forward_failures += 1
            return Err(f"{what!r}: could not reach provider instance {tag}: {exc}")
        self.stats.forwarded += 1
        took = self._clock() - started
        self.stats.record(took)
        if self._instruments is not None:
            self._instruments.record("forward", took, "ok")
        return answer

    def _garbled(self, tag: str, exc: Exception) -> Err[str]:
        self.stats.forward_failures += 1
        log.warning("instance %s answered a forwarded call with garbage: %s", tag, exc)
        return Err(f"provider instance {tag} answered with garbage")

    def broadcast(self, component: str, msg: BrokerMessage) -> None:
        """For every other instance's sessions (this instance has sent to its own already)."""
        message = fw.Broadcasted(self.tag, component, msg.subject, msg.body, msg.reply_to)
        self._bus.publish(
            fw.to_all(self._lattice, self._provider, fw.BROADCAST), encode(fw.BROADCASTED, message)
        )

    async def sessions(self, component: str, timeout: float) -> tuple[list[dict[str, object]], list[str]]:
        """Every other live instance's sessions ``component`` may reach, gathered for up to
        ``timeout`` seconds; and the instances that did not answer in time.

        The answers come back on ``L.P.ws.<tag>.answer-<n>``, inside this instance's own
        subscription: a gather costs one publish out, no subscription.
        """
        expected = set(self.live())
        if not expected:
            return [], []
        found: list[dict[str, object]] = []
        answered: set[str] = set()
        complete = asyncio.Event()

        def on_answer(data: bytes) -> None:
            try:
                answer = decode(fw.SESSIONS_ANSWER, data)
                sessions = json.loads(answer.sessions)
            except (CodecError, ValueError) as exc:
                self._bad("a sessions answer", str(exc))
                return
            if answer.tag in answered or answer.tag not in expected or not isinstance(sessions, list):
                return
            answered.add(answer.tag)
            found.extend(s for s in sessions if isinstance(s, dict))
            if expected <= answered:
                complete.set()

        name = f"{fw.ANSWER}{next(self._gather_ids)}"
        self._gathers[name] = on_answer
        try:
            query = encode(fw.SESSIONS_QUERY, fw.SessionsQuery(self.tag, component))
            reply = fw.to_instance(self._lattice, self._provider, self.tag, name)
            self._bus.publish(fw.to_all(self._lattice, self._provider, fw.SESSIONS), query, reply)
            try:
                async with asyncio.timeout(timeout):
                    await complete.wait()
            except TimeoutError:
                pass
        finally:
            del self._gathers[name]
        missing = sorted(expected - answered)
        if missing:
            log.warning(
                "ws.sessions for %s: no answer within %.0f ms from instance(s) %s; the list is partial",
                component,
                timeout * 1000,
                ", ".join(missing),
            )
        return found, missing

    # -- answering the others -----------------------------------------------------------------

    def _on_mine(self, subject: str, reply: str, data: bytes) -> Awaitable[None] | None:
        parsed = fw.op_of(subject, self._prefix)
        if parsed is None:
            self._bad(subject, "an unknown subject")
            return None
        _, op = parsed
        if op.startswith(fw.ANSWER):
            gather = self._gathers.get(op)
            if gather is not None:
                gather(data)
            return None
        if not reply:
            self._bad(subject, "no reply subject")
            return None
        if op == fw.HEALTH:
            self._bus.publish(reply, self._local.health_here())
        elif op == fw.PUBLISH:
            message = self._parsed(fw.FORWARDED, UNIT_RESULT, "publish", subject, reply, data)
            if message is None:
                return None
            result = self._local.publish_here(
                message.component, BrokerMessage(message.subject, message.body, message.reply_to)
            )
            if isinstance(result, Awaitable):  # the subscription's next messages wait for it
                return self._answer_later(result, reply)
            self._answer(result, reply)
        elif op == fw.REQUEST:
            request = self._parsed(fw.FORWARDED_REQUEST, MESSAGE_RESULT, "request", subject, reply, data)
            if request is not None:
                self._spawn(self._serve_request(request, reply))
        else:
            self._bad(subject, f"an unknown operation {op!r}")
        return None

    def _answer(self, result: UnitResult, reply: str) -> None:
        self.stats.served += 1
        self._bus.publish(reply, encode(UNIT_RESULT, result))

    async def _answer_later(self, pending: Awaitable[UnitResult], reply: str) -> None:
        self._answer(await pending, reply)

    async def _serve_request(self, request: fw.ForwardedRequest, reply: str) -> None:
        async with self._requests:
            result = await self._local.request_here(
                request.component,
                request.connection,
                RequestParams(request.subject, request.body, request.timeout_ms),
            )
        self.stats.served += 1
        self._bus.publish(reply, encode(MESSAGE_RESULT, result))

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_all(self, subject: str, reply: str, data: bytes) -> None:
        parsed = fw.op_of(subject, self._prefix)
        op = parsed[1] if parsed else ""
        try:
            if op in (fw.HERE, fw.GONE):
                self._presence(op, decode(fw.PRESENCE, data).tag)
            elif op == fw.BROADCAST:
                message = decode(fw.BROADCASTED, data)
                if message.origin != self.tag:
                    self._local.broadcast_here(
                        message.component, BrokerMessage(message.subject, message.body, message.reply_to)
                    )
            elif op == fw.SESSIONS:
                query = decode(fw.SESSIONS_QUERY, data)
                if query.origin != self.tag and reply:
                    sessions = json.dumps(self._local.sessions_here(query.component))
                    self._bus.publish(
                        reply, encode(fw.SESSIONS_ANSWER, fw.SessionsAnswer(self.tag, sessions))
                    )
            else:
                self._bad(subject, f"an unknown operation {op!r}")
        except CodecError as exc:
            self._bad(subject, str(exc))

    def _presence(self, op: str, tag: str) -> None:
        if tag == self.tag:
            return
        if op == fw.GONE:
            if self.members.pop(tag, None) is not None:
                log.info("instance %s stopped", tag)
            return
        if tag not in self.members:
            log.info("instance %s is here", tag)
            self._say(fw.HERE)  # so a newcomer learns of us at once, not at our next heartbeat
        self.members[tag] = self._clock()

    def _parsed(
        self, codec: Codec[T], answer: Codec[Any], what: str, subject: str, reply: str, data: bytes
    ) -> T | None:
        """``data`` decoded with ``codec``; else None, logged, and ``reply`` told why in ``answer``'s err."""
        try:
            return decode(codec, data)
        except CodecError as exc:
            self._bad(subject, str(exc))
            self._bus.publish(reply, encode(answer, Err(f"a forwarded {what} that does not parse: {exc}")))
            return None

    def _bad(self, subject: str, why: str) -> None:
        self.stats.bad_messages += 1
        self._counters.drops["bad lattice message"] += 1
        log.warning("dropped a message on %s: %s", subject[:200], why)
