"""A one-machine lattice: a NATS server's URL, the provider process started as a host starts
it, the host's control connection, and Python components served over wRPC.

Used by the tests, the benchmarks and the local host.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from pathlib import Path

from provider.host.control import HostControl, ProviderIdentity
from provider.host.launcher import ProviderProcess
from provider.host.native import NativeComponent, OnMessage
from provider.wasmcloud.links import LinkDefinition
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
        echo_logs: bool = False,
        cwd: Path | None = None,
        own_process_group: bool = False,
        provider_env: Mapping[str, str] | None = None,
    ) -> None:
        self.nats_url = nats_url
        self.provider = ProviderIdentity(provider_id)
        self.lattice = lattice
        self.process = ProviderProcess(
            launcher, echo=echo_logs, cwd=cwd, own_process_group=own_process_group, env=provider_env
        )
        self._start_args = {
            "links": links,
            "link_secrets": link_secrets,
            "config": config,
            "provider_secrets": secrets,
            "log_level": log_level,
            "structured_logging": structured_logging,
        }
        self._connections: list[NatsConnection] = []
        self._components: list[NativeComponent] = []
        self.host: HostControl | None = None
        self.transport: WrpcTransport | None = None

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
        await self.process.start(data)
        if wait_healthy is not None:
            try:
                await self.host.wait_healthy(self.provider, wait_healthy)
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
        """Put a link; unless ``wait`` is ``None``, return the provider's log line saying it was
        applied (``put link …``) or refused (``rejected link …``).

        The host protocol has no acknowledgement for link puts, so the provider's own log
        (at level info) is what tells that it has processed one.
        """
        assert self.host is not None
        since = self.process.total_lines
        await self.host.put_link(self.provider, link, secrets)
        if wait is None:
            return None
        described = re.escape(link.describe())
        return await self.process.wait_for_line(rf"(put|rejected) link {described}", wait, since)

    async def delete_link(self, link: LinkDefinition, *, wait: float | None = 10.0) -> None:
        """Delete a link; unless ``wait`` is ``None``, wait until the provider says it is gone."""
        assert self.host is not None
        since = self.process.total_lines
        await self.host.delete_link(link)
        if wait is not None:
            await self.process.wait_for_line(rf"deleted link {re.escape(link.describe())}", wait, since)

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
