"""nats-py's client with the two fast paths a wRPC call needs. I/O.

nats-py builds a ``Msg`` and goes through a per-subscription queue and task for every
message it receives, and runs a coroutine (and often a fresh future) for every publish.
A wRPC call is five messages, so that bookkeeping, not the bytes, is what a call costs
in Python (``make bench-wrpc`` measures it). :class:`NatsConnection` keeps all of
nats-py — connecting, authentication, TLS, reconnecting and resubscribing, pings — and adds:

* :meth:`~NatsConnection.subscribe_direct`: the handler is called right where nats-py's
  parser hands over the message (``subject``, ``reply``, ``data``, raw header block), with
  no ``Msg``, no queue and no task in between. Handlers must not block;
* :meth:`~NatsConnection.publish_now`: a synchronous publish of a command built once
  (:mod:`provider.wrpc.protocol`) into nats-py's own write buffer, which its flusher task
  writes with everything else published in the same event-loop turn.

Both reach into two private parts of nats-py (``_process_msg`` and the pending write
buffer), so the nats-py version is pinned in ``pyproject.toml`` and the wRPC tests run
every call through this class.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client
from nats.aio.subscription import Subscription

from provider.errors import TransportClosed
from provider.wrpc.protocol import command, valid_subject

DirectHandler = Callable[[bytes, bytes, bytes, bytes | None], None]
"""``(subject, reply, data, header block or None)``, called synchronously for each message."""


class NatsConnection(Client):
    """A nats-py client with direct (queue-less) subscriptions and a synchronous publish."""

    def __init__(self) -> None:
        super().__init__()
        self._direct: dict[int, DirectHandler] = {}

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
        handler = self._direct.get(sid)
        if handler is None:
            await super()._process_msg(sid, subject, reply, data, headers)  # type: ignore[arg-type]
            return
        self.stats["in_msgs"] += 1
        self.stats["in_bytes"] += len(data)
        handler(subject, reply, data, headers)

    def publish_now(self, subject: str, payload: bytes, reply: str = "", headers: bytes = b"") -> None:
        """Queue a message for nats-py's flusher, without awaiting anything.

        ``subject`` and ``reply`` must be valid subjects (the transport builds them or got them
        from the server). While disconnected the message waits in nats-py's reconnect buffer,
        as its own ``publish`` does. Raises :class:`TransportClosed` once the connection is closed.
        """
        if self.is_closed:
            raise TransportClosed("the NATS connection is closed")
        cmd = command(subject, reply, payload, headers)
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
