"""Components written in plain Python and served over wRPC, as a host serves a wasm component. I/O.

The provider cannot tell one from a wasm component: handle-message is served on
``LATTICE.COMPONENT_ID.wrpc.0.0.1.wasmcloud:messaging/handler@0.2.0.handle-message``
(queue group ``LATTICE.COMPONENT_ID``) and calls to the provider carry the
``source-id`` / ``link-name`` headers a host sets. Used by the tests and benchmarks.
"""

from __future__ import annotations

import collections
import contextvars
from collections.abc import Awaitable, Callable
from typing import Any

from provider.wrpc.codec import Err, Ok
from provider.wrpc.messaging import (
    HANDLE_MESSAGE,
    PUBLISH,
    REQUEST,
    BrokerMessage,
    MessageResult,
    RequestParams,
    UnitResult,
)
from provider.wrpc.nats import Headers, Served, WrpcTransport
from provider.wrpc.subjects import prefix

OnMessage = Callable[["NativeComponent", BrokerMessage], Awaitable[UnitResult]]
TRACE_HEADERS = ("traceparent", "tracestate")
_TRACE: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("trace", default={})  # noqa: B039 - never mutated


class NativeComponent:
    """A component: ``on_message`` handles what the provider delivers; publish/request call it back."""

    def __init__(
        self,
        transport: WrpcTransport,
        component_id: str,
        provider_id: str,
        on_message: OnMessage,
        *,
        lattice: str = "default",
    ) -> None:
        self.transport = transport
        self.component_id = component_id
        self.provider_id = provider_id
        self.lattice = lattice
        self._on_message = on_message
        self._served: Served[Any, Any] | None = None
        self.received_headers: collections.deque[dict[str, str]] = collections.deque(maxlen=1000)
        """The headers of the last handle-message calls (tests look at their ``traceparent``)."""

    async def start(self) -> None:
        """Serve handle-message; returns once the subscription is live."""

        async def handle(msg: BrokerMessage, headers: Headers) -> UnitResult:
            self.received_headers.append(dict(headers))
            # As a host does: the component's own calls while it handles this one carry its trace.
            trace = _TRACE.set({k: v for k, v in headers.items() if k.lower() in TRACE_HEADERS})
            try:
                return await self._on_message(self, msg)
            finally:
                _TRACE.reset(trace)

        self._served = await self.transport.serve(
            prefix(self.lattice, self.component_id), HANDLE_MESSAGE, handle
        )

    async def close(self) -> None:
        if self._served is not None:
            await self._served.close()

    def _headers(self, link_name: str) -> dict[str, str]:
        return {"source-id": self.component_id, "link-name": link_name, **_TRACE.get()}

    async def publish(self, msg: BrokerMessage, link_name: str = "default") -> UnitResult:
        """``consumer.publish`` on the provider, as this component."""
        return await self.transport.invoke(
            prefix(self.lattice, self.provider_id), PUBLISH, msg, headers=self._headers(link_name)
        )

    async def request(
        self, subject: str, body: bytes, timeout_ms: int = 5000, link_name: str = "default"
    ) -> MessageResult:
        """``consumer.request`` on the provider, as this component."""
        return await self.transport.invoke(
            prefix(self.lattice, self.provider_id),
            REQUEST,
            RequestParams(subject, body, timeout_ms),
            headers=self._headers(link_name),
            timeout=timeout_ms / 1000 + 5,
        )


async def echo(component: NativeComponent, msg: BrokerMessage) -> UnitResult:
    """Send every message's body back to its reply-to."""
    if msg.reply_to is None:
        return Err("nothing to answer: the message has no reply-to")
    return await component.publish(BrokerMessage(msg.reply_to, msg.body, None))


async def accept(component: NativeComponent, msg: BrokerMessage) -> UnitResult:
    """Take every message and do nothing."""
    return Ok(None)
