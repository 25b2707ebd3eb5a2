"""A one-machine lattice: a NATS server's URL, the provider process started as a host starts
it, the host's control connection, and Python components served over wRPC. I/O.

Used by the tests, the benchmarks and the local host.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from provider.host.control import HostControl, ProviderIdentity
from provider.host.launcher import ProviderProcess
from provider.host.native import NativeComponent, OnMessage
from provider.wasmcloud.links import LinkAnswer, LinkDefinition
from provider.websocket import forwarding
from provider.websocket.subjects import instance_tag
from provider.wrpc.connection import NatsConnection
from provider.wrpc.connection import connect as connect_nats
from provider.wrpc.nats import WrpcTransport

SHUTDOWN_WAIT = 0.3
"""What a host waits for the shutdown reply before it kills the provider."""


def consumer_link(component: str, provider: str, name: str = "default", **config: str) -> LinkDefinition:
    """component → provider, ``wasmcloud:messaging/consumer``: the provider reads ``target_config``."""
    return LinkDefinition(
        component, provider, "wasmcloud", "messaging", ("consumer",), name, target_config=config
    )


def handler_link(provider: str, component: str, name: str = "default", **config: str) -> LinkDefinition:
    """provider → component, ``wasmcloud:messaging/handler``: the provider reads ``source_config``."""
    return LinkDefinition(
        provider, component, "wasmcloud", "messaging", ("handler",), name, source_config=config
    )


class LocalLattice:
    """The provider process on a NATS server, with the host's side of the protocol."""

    def __init__(
        self,
        nats_url: str,
        launcher: Path,
        *,
        provider_id: str = "websocket-provider",
        lattice: str = "default",
        config: Mapping[str, str] | None = None,
        secrets: Mapping[str, str | bytes] | None = None,
        links: tuple[LinkDefinition, ...] = (),
        link_secrets: Mapping[tuple[str, str], Mapping[str, str | bytes]] | None = None,
        log_level: str = "info",
        structured_logging: bool = False,
        otel_config: Mapping[str, Any] | None = None,
        echo_logs: bool = False,
        cwd: Path | None = None,
        own_process_group: bool = False,
        environment: Mapping[str, str] | None = None,
    ) -> None:
        self.nats_url = nats_url
        self.provider = ProviderIdentity(provider_id)
        self.lattice = lattice
        self.process = ProviderProcess(
            launcher, echo=echo_logs, cwd=cwd, own_process_group=own_process_group, environment=environment
        )
        self._start_args = {
            "links": links,
            "link_secrets": link_secrets,
            "config": config,
            "provider_secrets": secrets,
            "log_level": log_level,
            "structured_logging": structured_logging,
            "otel_config": otel_config,
        }
        self._connections: list[NatsConnection] = []
        self._components: list[NativeComponent] = []
        self.host: HostControl | None = None
        self.transport: WrpcTransport | None = None
        self.instance_id = ""
        """HostData ``instance_id`` of the running provider (new on every start)."""

    @property
    def provider_id(self) -> str:
        return self.provider.provider_id

    async def connect(self) -> NatsConnection:
        nc = await connect_nats(self.nats_url, connect_timeout=5)
        self._connections.append(nc)
        return nc

    async def start(self, *, wait_healthy: float | None = 10.0) -> None:
        """Start the provider with HostData and (unless told not to) wait until it is healthy."""
        self.host = HostControl(await self.connect(), lattice=self.lattice)
        self.transport = WrpcTransport(await self.connect())
        await self.transport.start()
        data = self.host.host_data(self.provider, nats_url=self.nats_url, **self._start_args)  # type: ignore[arg-type]
        self.instance_id = data.instance_id
        await self.process.start(data)
        if wait_healthy is not None:
            try:
                await self.host.wait_healthy(self.provider, wait_healthy)
                await self.host.wait_listening(self.provider, wait_healthy)
            except TimeoutError:
                raise TimeoutError(
                    f"the provider was not healthy within {wait_healthy}s:\n{self.process.output}"
                ) from None

    async def component(self, component_id: str, on_message: OnMessage) -> NativeComponent:
        """A Python component served over wRPC (its handler is live when this returns)."""
        assert self.transport is not None
        component = NativeComponent(
            self.transport, component_id, self.provider_id, on_message, lattice=self.lattice
        )
        await component.start()
        self._components.append(component)
        return component

    async def put_link(
        self,
        link: LinkDefinition,
        secrets: Mapping[str, str | bytes] | None = None,
        *,
        wait: float | None = 10.0,
    ) -> str | None:
        """Put a link. With ``wait=None`` it is published as a host does (no answer, returns
        ``None``); otherwise the provider is asked, and this returns what it answered as one
        line: ``put link …`` or ``rejected link …: <why>`` (:meth:`LinkAnswer.text`).

        Raises :class:`TimeoutError` after ``wait`` seconds without an answer, and
        :class:`~provider.errors.ConfigError` for an answer that is not one.
        """
        answer = await self.apply_link(link, secrets, wait=wait)
        return None if answer is None else answer.text()

    async def apply_link(
        self,
        link: LinkDefinition,
        secrets: Mapping[str, str | bytes] | None = None,
        *,
        wait: float | None = 10.0,
    ) -> LinkAnswer | None:
        """:meth:`put_link`, returning the provider's structured answer."""
        assert self.host is not None
        if wait is None:
            await self.host.put_link(self.provider, link, secrets)
            return None
        return await self.host.ask_put_link(self.provider, link, secrets, timeout=wait)

    async def delete_link(self, link: LinkDefinition, *, wait: float | None = 10.0) -> str | None:
        """Delete a link; unless ``wait`` is ``None``, ask the provider and return its answer
        as one line (``deleted link …`` or ``did not delete link …: <why>``)."""
        assert self.host is not None
        if wait is None:
            await self.host.delete_link(link)
            return None
        answer = await self.host.ask_delete_link(self.provider, link, timeout=wait)
        return answer.text()

    async def instance_health(self, timeout: float = 2.0) -> dict[str, Any]:
        """The health answer of this very instance (every instance of the provider id answers the
        host's health subject; this asks the instance on its own subject, design §7)."""
        assert self.host is not None
        subject = forwarding.to_instance(
            self.lattice, self.provider_id, instance_tag(self.instance_id), forwarding.HEALTH
        )
        reply = await self.host.nc.request(subject, b"", timeout=timeout)
        answer: dict[str, Any] = json.loads(reply.data)
        return answer

    async def shutdown(self) -> bytes | None:
        """The host's shutdown request; the provider's reply, or ``None`` if none came in time."""
        assert self.host is not None
        return await self.host.shutdown(self.provider, SHUTDOWN_WAIT)

    async def stop_provider(self) -> None:
        """Shut the provider down as a host does (request, then SIGKILL if it is still there).

        The connections stay open, so components can be stopped after the provider. Idempotent.
        """
        if self.host is not None and self.process.returncode is None:
            await self.shutdown()
            with contextlib.suppress(TimeoutError):
                await self.process.wait(2.0)
        await self.process.kill()

    async def stop(self) -> None:
        """Stop the provider (:meth:`stop_provider`), then the components and connections."""
        await self.stop_provider()
        for component in self._components:
            await component.close()
        if self.transport is not None:
            await self.transport.close()
        for nc in self._connections:
            if not nc.is_closed:
                await nc.close()
