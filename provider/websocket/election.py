"""One instance per lattice holds a client connection: a lease in a JetStream key-value bucket. I/O.

With ``CONNECTIONS=one`` (the default) the instances of a provider elect, for each client
connection, the one that connects out: it creates the connection's key in the bucket
``WS_CONNECTIONS_<lattice>_<provider>`` (entries live :data:`TTL` seconds after their last
write) and refreshes it every :data:`REFRESH` seconds while it holds the connection; the
others try to create the key every :data:`RETRY` seconds, which succeeds only once the key
is gone: deleted by a holder that stopped, or expired after a holder was killed. The key's
value names the holder (its instance tag and connection id), so the others forward what a
component sends on the connection to it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from provider.errors import ProviderError
from provider.wasmcloud.capability import Bus, KeyValue

log = logging.getLogger("provider.websocket.election")

TTL = 3.0
"""Seconds a lease lives after its last refresh: how long a killed holder blocks the others."""
REFRESH = 1.0
RETRY = 0.5


@dataclass(frozen=True)
class Holder:
    """Who holds a connection: the instance's tag and that instance's connection id."""

    tag: str
    connection_id: str

    def encode(self) -> bytes:
        return f"{self.tag} {self.connection_id}".encode()

    @classmethod
    def decode(cls, value: bytes) -> Holder | None:
        try:
            tag, connection_id = value.decode("ascii").split(" ")
        except ValueError:  # UnicodeDecodeError included: not ours, not anyone's
            return None
        return cls(tag, connection_id) if tag and connection_id else None


def bucket_name(lattice: str, provider_id: str) -> str:
    """A bucket name JetStream accepts (letters, digits, ``-``, ``_``) for this lattice and provider."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"WS_CONNECTIONS_{lattice}_{provider_id}")[:200]


def lease_key(*parts: str) -> str:
    """The key of one connection (component, URI, link name): a hash, since URIs are not keys."""
    digest = hashlib.sha256("\x00".join(parts).encode("utf-8", errors="surrogatepass")).hexdigest()
    return f"c{digest[:40]}"


class Lease:
    """Runs the election for one connection: :attr:`holder` is who holds it (``None``: nobody known);
    ``gain`` and ``lose`` are called when this instance takes it and gives it up."""

    def __init__(
        self,
        bus: Bus,
        bucket: str,
        key: str,
        me: Holder,
        gain: Callable[[], Awaitable[None]],
        lose: Callable[[str], Awaitable[None]],
    ) -> None:
        self._bus = bus
        self._bucket = bucket
        self._key = key
        self.me = me
        self._gain = gain
        self._lose = lose
        self.holder: Holder | None = None
        self._task: asyncio.Task[None] | None = None
        self._kv: KeyValue | None = None
        self._revision: int | None = None
        self.changed = asyncio.Event()

    @property
    def holding(self) -> bool:
        return self.holder == self.me

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"ws-lease {self._key}")

    async def close(self) -> None:
        """Stop electing; a holder deletes its key so that another instance takes over at once."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self.holding and self._kv is not None:
            try:
                await self._kv.delete(self._key)
            except Exception as exc:  # the lease expires anyway
                log.debug("could not release %s: %s", self._key, exc)
        self.holder = None

    async def _run(self) -> None:
        try:
            self._kv = await self._bus.key_value(self._bucket, TTL)
        except ProviderError as exc:
            log.warning(
                "no JetStream key-value bucket for electing the instance that connects (%s): this "
                "instance connects itself; with several instances, each does (CONNECTIONS=every)",
                exc,
            )
            await self._take()
            return
        while True:
            try:
                if self.holding:
                    await self._refresh()
                else:
                    await self._try()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS away for a moment: try again
                log.warning("electing the instance for connection %s: %s", self._key, exc)
                await asyncio.sleep(RETRY)

    async def _try(self) -> None:
        assert self._kv is not None
        revision = await self._kv.create(self._key, self.me.encode())
        if revision is not None:
            self._revision = revision
            await self._take()
            return
        current = await self._kv.get(self._key)
        holder = Holder.decode(current[0]) if current is not None else None
        if holder != self.holder:
            self.holder = holder
            self.changed.set()
        await asyncio.sleep(RETRY)

    async def _take(self) -> None:
        self.holder = self.me
        self.changed.set()
        await self._gain()

    async def _refresh(self) -> None:
        assert self._kv is not None
        assert self._revision is not None
        await asyncio.sleep(REFRESH)
        revision = await self._kv.update(self._key, self.me.encode(), self._revision)
        if revision is None:  # expired and taken by another (we were cut off longer than TTL)
            self.holder = None
            self._revision = None
            self.changed.set()
            await self._lose("another instance holds the connection now")
            return
        self._revision = revision


class Elector:
    """Makes the :class:`Lease` of each connection of one instance."""

    def __init__(self, bus: Bus, lattice: str, provider_id: str, tag: str) -> None:
        self._bus = bus
        self._bucket = bucket_name(lattice, provider_id)
        self.tag = tag

    def lease(
        self,
        parts: tuple[str, ...],
        connection_id: str,
        gain: Callable[[], Awaitable[None]],
        lose: Callable[[str], Awaitable[None]],
    ) -> Lease:
        return Lease(self._bus, self._bucket, lease_key(*parts), Holder(self.tag, connection_id), gain, lose)
