"""The lattice's NATS as a :class:`~provider.wasmcloud.capability.Bus`, for a capability's
instances to talk to each other (design §7). I/O.

nats-py underneath: subscriptions handled where the connection reads them, in order, one at a
time per subscription (:class:`_InOrder`: a handler that must wait holds the messages after
it back, up to a bound), request/reply with NATS's no-responders status, and JetStream
key-value buckets for what one instance must hold for the whole lattice.

Handling a message in the reader keeps the order of everything the instance receives: a
broadcast another instance forwarded is sent to this instance's sessions before a later
publish that reaches this instance straight from the component.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.subscription import Subscription
from nats.js.api import KeyValueConfig
from nats.js.kv import KeyValue as NatsKeyValue

from provider.errors import InvocationTimeout, MessageTooLarge, NoResponders, ProviderError, TransportClosed
from provider.wasmcloud.capability import BusHandler, BusSubscription, KeyValue
from provider.wrpc.connection import NOT_UTF8, NatsConnection
from provider.wrpc.nats import ensure_active

log = logging.getLogger("provider.bus")


BACKLOG = 10_000
"""Messages a subscription holds while its handler waits; past it they are dropped and counted."""
BACKLOG_BYTES = 64 << 20
"""Payload bytes a subscription holds while its handler waits; past it likewise."""
BACKLOG_FULL = "backlog_full"
"""Drop reason: a lattice subscription's backlog was full."""


class _InOrder:
    """One subscription's messages, handled in arrival order: in the reader while its handler
    answers at once, and queued behind a handler that waits (a task drains them)."""

    def __init__(self, nc: NatsConnection, subject: str, handler: BusHandler) -> None:
        self._nc = nc
        self._subject = subject
        self._handler = handler
        self._backlog: collections.deque[tuple[str, str, bytes]] = collections.deque()
        self._held = 0  # payload bytes in the backlog
        self._draining: asyncio.Task[None] | None = None
        self.sub: Subscription | None = None

    def on_message(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        try:
            text = subject.decode()
        except UnicodeDecodeError:
            self._nc.drop(NOT_UTF8, subject, "its subject is not UTF-8")
            return
        answer = self._nc.reply_of(subject, reply) if reply else ""
        if answer is None:
            return  # dropped and counted by reply_of
        if self._draining is not None:
            if len(self._backlog) >= BACKLOG or self._held + len(data) > BACKLOG_BYTES:
                self._nc.drop(
                    BACKLOG_FULL, subject, f"{len(self._backlog)} messages ({self._held} bytes) wait already"
                )
                return
            self._backlog.append((text, answer, data))
            self._held += len(data)
            return
        pending = self._handle(text, answer, data)
        if pending is not None:
            self._draining = asyncio.create_task(self._drain(pending))

    def _handle(self, subject: str, reply: str, data: bytes) -> Awaitable[None] | None:
        try:
            return self._handler(subject, reply, data)
        except Exception:  # a bad message must not stop the subscription
            log.exception("%s: handling a message failed", self._subject)
            return None

    async def _drain(self, pending: Awaitable[None] | None) -> None:
        try:
            while pending is not None or self._backlog:
                if pending is not None:
                    try:
                        await pending
                    except Exception:
                        log.exception("%s: handling a message failed", self._subject)
                pending = None
                if self._backlog:
                    subject, reply, data = self._backlog.popleft()
                    self._held -= len(data)
                    pending = self._handle(subject, reply, data)
        finally:
            self._draining = None

    async def unsubscribe(self) -> None:
        sub, self.sub = self.sub, None
        if sub is not None:
            with contextlib.suppress(nats.errors.ConnectionClosedError, nats.errors.BadSubscriptionError):
                await self._nc.unsubscribe_direct(sub)  # closing anyway
        self._backlog.clear()
        self._held = 0
        if self._draining is not None:
            self._draining.cancel()


class _KeyValue:
    """A JetStream KV bucket, its errors turned into the seam's ``None`` answers."""

    def __init__(self, kv: NatsKeyValue) -> None:
        self._kv = kv

    async def create(self, key: str, value: bytes) -> int | None:
        try:
            revision: int = await self._kv.create(key, value)
        except nats.js.errors.KeyWrongLastSequenceError:
            return None
        return revision

    async def update(self, key: str, value: bytes, revision: int) -> int | None:
        try:
            updated: int = await self._kv.update(key, value, last=revision)
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.KeyNotFoundError):
            return None
        return updated

    async def get(self, key: str) -> tuple[bytes, int] | None:
        try:
            entry = await self._kv.get(key)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        return (entry.value or b""), int(entry.revision or 0)

    async def delete(self, key: str) -> None:
        with contextlib.suppress(nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            await self._kv.delete(key)


class NatsBus:
    """:class:`~provider.wasmcloud.capability.Bus` over the provider's NATS connection."""

    def __init__(self, nc: NatsConnection) -> None:
        self._nc = nc

    async def subscribe(self, subject: str, handler: BusHandler) -> BusSubscription:
        ordered = _InOrder(self._nc, subject, handler)
        ordered.sub = await self._nc.subscribe_direct(subject, ordered.on_message)
        await ensure_active(self._nc)  # live before anyone is told to send to it
        return ordered

    def publish(self, subject: str, payload: bytes, reply: str = "") -> None:
        self._nc.publish_now(subject, payload, reply)

    async def request(self, subject: str, payload: bytes, timeout: float) -> bytes:
        try:
            msg = await self._nc.request(subject, payload, timeout=timeout)
        except nats.errors.NoRespondersError:
            raise NoResponders(subject) from None
        except nats.errors.TimeoutError:
            raise InvocationTimeout(subject, "an answer", timeout) from None
        except nats.errors.ConnectionClosedError as exc:
            raise TransportClosed("the NATS connection is closed") from exc
        except nats.errors.MaxPayloadError:
            raise MessageTooLarge(len(payload), self._nc.max_payload) from None
        data: bytes = msg.data
        return data

    def new_inbox(self) -> str:
        inbox: str = self._nc.new_inbox()
        return inbox

    async def key_value(self, bucket: str, ttl: float) -> KeyValue:
        js = self._nc.jetstream(timeout=2.0)
        try:
            kv: Any = await js.key_value(bucket)
        except nats.js.errors.BucketNotFoundError:
            try:
                kv = await js.create_key_value(KeyValueConfig(bucket=bucket, ttl=ttl, history=1))
            except Exception as exc:
                raise ProviderError(f"cannot create the JetStream bucket {bucket!r}: {exc}") from exc
        except Exception as exc:  # no JetStream on this lattice, or not for this account
            raise ProviderError(f"no JetStream key-value bucket {bucket!r}: {exc}") from exc
        return _KeyValue(kv)
