"""The lattice's NATS as a :class:`~provider.wasmcloud.capability.Bus`, for a capability's
instances to talk to each other (design §7). I/O.

Plain nats-py underneath: subscriptions with a callback (messages handled in order, one at
a time, per subscription), request/reply with NATS's no-responders status, and JetStream
key-value buckets for what one instance must hold for the whole lattice.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import KeyValueConfig
from nats.js.kv import KeyValue as NatsKeyValue

from provider.errors import InvocationTimeout, MessageTooLarge, NoResponders, ProviderError, TransportClosed
from provider.wasmcloud.capability import BusHandler, BusSubscription, KeyValue
from provider.wrpc.connection import NatsConnection
from provider.wrpc.nats import ensure_active

log = logging.getLogger("provider.bus")


class _Subscription:
    def __init__(self, sub: Subscription) -> None:
        self._sub: Subscription | None = sub

    async def unsubscribe(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(nats.errors.ConnectionClosedError, nats.errors.BadSubscriptionError):
                await sub.unsubscribe()  # closing anyway


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
        async def deliver(msg: Msg) -> None:
            try:
                await handler(msg.subject, msg.reply, msg.data)
            except Exception:  # a bad message must not stop the subscription
                log.exception("%s: handling a message failed", subject)

        sub = await self._nc.subscribe(subject, cb=deliver)
        await ensure_active(self._nc)  # live before anyone is told to send to it
        return _Subscription(sub)

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
