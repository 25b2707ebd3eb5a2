"""The seam between the host protocol and what the provider does (its capability). Pure.

The runtime (:mod:`provider.wasmcloud.runtime`) speaks to the host and calls a
:class:`Capability` one control event at a time; the capability calls components back
through the :class:`ProviderContext` the runtime gives it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from provider.wasmcloud.config import Config
from provider.wasmcloud.hostdata import HostData
from provider.wasmcloud.links import Link
from provider.wrpc.messaging import BrokerMessage, MessageResult, RequestParams, UnitResult


@dataclass(frozen=True)
class Health:
    """A health answer: ``{"healthy": …, "message": …}`` on the wire."""

    healthy: bool
    message: str | None = None


BusHandler = Callable[[str, str, bytes], Awaitable[None] | None]
"""``(subject, reply, payload)`` of a message received on a :class:`Bus` subscription. Handled
at once, where the connection reads it, unless the handler returns an awaitable: then the
subscription's next messages wait until it is done (an ``async def`` handler always waits)."""


class BusSubscription(Protocol):
    async def unsubscribe(self) -> None:
        """Stop receiving (idempotent)."""


class KeyValue(Protocol):
    """A key-value bucket on the lattice (JetStream): entries expire unless their holder refreshes them."""

    async def create(self, key: str, value: bytes) -> int | None:
        """Put ``key`` if it does not exist; its revision, or ``None`` if someone holds it."""
        ...

    async def update(self, key: str, value: bytes, revision: int) -> int | None:
        """Replace ``key`` if it is still at ``revision``; the new revision, or ``None`` if it changed."""
        ...

    async def get(self, key: str) -> tuple[bytes, int] | None:
        """The value and revision of ``key``, or ``None``."""
        ...

    async def delete(self, key: str) -> None:
        """Remove ``key`` (idempotent)."""


class Bus(Protocol):
    """The lattice's NATS, for what a capability's instances say to each other (design §7).

    Subjects must lie under ``LATTICE.PROVIDER_ID.``: that is what the provider's NATS
    permissions already allow, and it keeps one lattice's or provider's traffic from another's.
    """

    async def subscribe(self, subject: str, handler: BusHandler) -> BusSubscription:
        """Deliver every message on ``subject`` (wildcards allowed) to ``handler``, in order."""
        ...

    def publish(self, subject: str, payload: bytes, reply: str = "") -> None:
        """Send without waiting (raises :class:`~provider.errors.ProviderError` once closed)."""

    async def request(self, subject: str, payload: bytes, timeout: float) -> bytes:
        """One answer to ``payload`` on ``subject``. Raises :class:`~provider.errors.NoResponders`
        at once when nobody serves it, :class:`~provider.errors.InvocationTimeout` after ``timeout``."""
        ...

    def new_inbox(self) -> str:
        """A fresh subject to receive answers on."""
        ...

    async def key_value(self, bucket: str, ttl: float) -> KeyValue:
        """The bucket (created if missing) whose entries live ``ttl`` seconds after their last write.
        Raises :class:`~provider.errors.ProviderError` when the lattice has no JetStream."""
        ...


class Instruments(Protocol):
    """What a capability tells the runtime's telemetry (nothing happens when telemetry is off)."""

    def observe(self, measurements: Callable[[], Mapping[str, Any]]) -> None:
        """Export what ``measurements()`` returns at each metrics collection: numbers, or maps of
        attribute value → number (``{"sessions": 3, "drops": {"bad frame": 2}}``)."""

    def record(self, operation: str, seconds: float, outcome: str) -> None:
        """One operation's duration (``messaging.client.operation.duration``)."""


class ProviderContext(Protocol):
    """What the runtime offers a capability."""

    @property
    def instruments(self) -> Instruments:
        """The telemetry (does nothing unless HostData's ``otel_config`` switches it on)."""
        ...

    @property
    def bus(self) -> Bus:
        """The lattice's NATS, shared by this provider's instances."""
        ...

    @property
    def host_data(self) -> HostData: ...

    @property
    def provider_id(self) -> str: ...

    @property
    def config(self) -> Config:
        """The provider-level config (HostData config and secrets, updated by ``config.update``)."""
        ...

    async def handle_message(self, component_id: str, msg: BrokerMessage) -> UnitResult:
        """Invoke ``wasmcloud:messaging/handler.handle-message`` on a component.

        Returns the component's result; raises :class:`~provider.errors.WrpcError` when the
        call itself fails (no responders, timeout, trap).
        """
        ...


class Capability(Protocol):
    """What a provider does with its links. Calls come one at a time for control events,
    concurrently for ``publish`` / ``request``."""

    async def start(self, context: ProviderContext) -> None:
        """Called once, before any link is put."""

    async def put_link(self, link: Link) -> None:
        """Apply a new link (``link.role`` says which side the provider is on).

        Raise :class:`~provider.errors.ConfigError` to reject it; the link is then not
        recorded, and nothing of it may stay applied.
        """

    async def delete_link(self, link: Link) -> None:
        """Tear a link down; return once it is gone."""

    async def update_config(self, config: Config) -> None:
        """The provider-level config changed (links whose effective config changed are re-put)."""

    async def shutdown(self) -> None:
        """Release everything, quickly (the host allows 300 ms in all)."""

    def health(self) -> Health:
        """Answer a health check; must not block."""
        ...

    def publish(self, link: Link, msg: BrokerMessage) -> UnitResult | Awaitable[UnitResult]:
        """``consumer.publish`` from the component at the other end of ``link``: the result, or
        an awaitable of it when the capability must wait (an ``async def`` is fine). Answering at
        once, where it can, saves the call a task and a turn of the event loop."""
        ...

    async def request(self, link: Link, params: RequestParams) -> MessageResult:
        """``consumer.request`` from the component at the other end of ``link``."""
        ...


@runtime_checkable
class ReplacesLinks(Protocol):
    """A capability that can apply a changed link in place (else the runtime deletes and puts it)."""

    async def replace_link(self, previous: Link, link: Link) -> None:
        """Apply ``link`` instead of ``previous`` (same key, other config).

        Raise :class:`~provider.errors.ConfigError` to reject it; then neither stays applied,
        as after a delete and a rejected put.
        """
