"""The provider runtime: the wasmCloud 1.x host protocol over NATS (protocol spec §1.4, §2, §3.3, §6). I/O.

Start-up follows the Rust SDK's order: connect, subscribe the control subjects, start the
capability, apply HostData's links, serve the ``consumer`` exports (queue group
``LATTICE.PROVIDER_ID``), then answer health checks as healthy.

Link puts, link deletes and config updates are queued and applied **one at a time** by a
single control task. Health checks are answered straight from their subscription, so a
busy control task or data plane cannot delay them; a shutdown request for this host
stops everything within the host's 300 ms budget.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
from collections import UserString
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from nats.aio.msg import Msg

from provider.errors import ConfigError, ProviderError
from provider.wasmcloud.capability import Capability, Health
from provider.wasmcloud.config import Config, parse_string_map
from provider.wasmcloud.hostdata import HostData
from provider.wasmcloud.links import (
    Link,
    LinkDefinition,
    LinkResolver,
    LinkTable,
    PutOutcome,
    decode_link_definition,
)
from provider.wasmcloud.subjects import ControlSubjects
from provider.wasmcloud.xkeys import XKey
from provider.wrpc.codec import Err
from provider.wrpc.connection import NatsConnection
from provider.wrpc.connection import connect as connect_nats
from provider.wrpc.messaging import (
    HANDLE_MESSAGE,
    PUBLISH,
    REQUEST,
    BrokerMessage,
    MessageResult,
    RequestParams,
    UnitResult,
)
from provider.wrpc.nats import Headers, Served, WrpcTransport, ensure_active
from provider.wrpc.subjects import prefix

log = logging.getLogger("provider.runtime")

ResultT = TypeVar("ResultT", UnitResult, MessageResult)

MESSAGING = ("wasmcloud", "messaging")
HANDLE_MESSAGE_TIMEOUT = 10.0
"""Seconds a component has to answer ``handle-message`` (the Rust SDK's client default)."""
SHUTDOWN_BUDGET = 0.2
"""Seconds the capability gets to shut down: the host waits 300 ms for the reply in all."""
CONNECT_TIMEOUT = 10.0


class _Event(enum.Enum):
    PUT = "link put"
    DELETE = "link delete"
    CONFIG = "config update"


def nats_credentials(jwt: str, seed: str) -> UserString:
    """An in-memory NATS creds file, the form nats-py takes a user JWT and nkey seed in."""
    return UserString(
        "-----BEGIN NATS USER JWT-----\n"
        f"{jwt.strip()}\n"
        "------END NATS USER JWT------\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{seed.strip()}\n"
        "------END USER NKEY SEED------\n"
    )


async def connect_lattice(host_data: HostData, timeout: float = CONNECT_TIMEOUT) -> NatsConnection:
    """Connect to the lattice's RPC NATS (JWT + seed auth when HostData carries them).

    The first connection is retried for up to ``timeout`` while the server is unreachable,
    but a refusal (bad credentials, say) fails at once with the server's reason. Once
    connected, the client reconnects for as long as the provider runs.
    """
    options: dict[str, Any] = {}
    if host_data.lattice_rpc_user_jwt and host_data.lattice_rpc_user_seed:
        options["user_credentials"] = nats_credentials(
            host_data.lattice_rpc_user_jwt, host_data.lattice_rpc_user_seed
        )
    return await connect_nats_retrying(
        host_data.lattice_rpc_url,
        name=f"wasmcloud-ws-provider {host_data.provider_key}",
        shown=host_data.lattice_rpc_url,
        timeout=timeout,
        what="the lattice",
        **options,
    )


async def connect_nats_retrying(
    servers: str | list[str],
    *,
    name: str,
    shown: str,
    timeout: float = CONNECT_TIMEOUT,
    what: str = "NATS",
    **options: Any,
) -> NatsConnection:
    """Connect to ``servers``, retrying for up to ``timeout`` while unreachable; a refusal fails at once.

    Once connected, the client reconnects forever. ``shown`` names the servers in log lines
    and errors (without credentials); ``what`` is what they are (``the lattice``).
    """

    async def on_error(exc: Exception) -> None:
        log.warning("NATS: %s", exc)

    async def on_disconnected() -> None:
        # Not for a first attempt that failed (reported below), nor for our own close.
        if nc_ready and not nc.is_closed:
            log.warning("NATS: disconnected from %s, reconnecting", shown)

    async def on_reconnected() -> None:
        log.info("NATS: reconnected")

    nc_ready = False
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            nc = await connect_nats(
                servers,
                name=name,
                connect_timeout=max(0.1, min(2.0, deadline - loop.time())),
                allow_reconnect=False,  # the first connection: fail fast, so that a refusal is seen
                max_reconnect_attempts=-1,
                reconnect_time_wait=1,
                error_cb=on_error,
                disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected,
                **options,
            )
        except (OSError, TimeoutError) as exc:  # not reachable (yet): retry until the deadline
            if loop.time() >= deadline:
                raise ProviderError(
                    f"cannot connect to {what} at {shown} within {timeout:g}s: {exc}"
                ) from exc
            await asyncio.sleep(min(0.25, max(0.0, deadline - loop.time())))  # retry back-off
            continue
        except Exception as exc:
            raise ProviderError(f"{what} at {shown} refused the connection: {exc}") from exc
        # nats-py reads this option whenever the connection drops: from now on, reconnect forever.
        nc.options["allow_reconnect"] = True
        nc_ready = True
        return nc


class ProviderRuntime:
    """Runs one provider: the control plane for ``capability`` and its ``consumer`` exports."""

    def __init__(self, host_data: HostData, capability: Capability) -> None:
        self._host = host_data
        self._capability = capability
        self._xkey = XKey.from_seed(host_data.provider_xkey_private_key) if host_data.has_xkeys else None
        self._resolver = LinkResolver(
            provider_id=host_data.provider_key,
            provider_config=dict(host_data.config),
            provider_secrets=dict(host_data.secrets),
            xkey=self._xkey,
            host_xkey_public=host_data.host_xkey_public_key,
        )
        self._config = Config(host_data.config, host_data.secrets)
        self._subjects = ControlSubjects.for_provider(
            host_data.lattice, host_data.provider_key, self._xkey.public if self._xkey else None
        )
        self._prefix = prefix(host_data.lattice, host_data.provider_key)
        self.links = LinkTable()
        self._events: asyncio.Queue[tuple[_Event, bytes]] = asyncio.Queue()
        self._ready = False
        self._stopping = False
        self._torn_down = False
        self._stopped = asyncio.Event()
        self._nc: NatsConnection | None = None
        self._wrpc: WrpcTransport | None = None
        self._served: list[Served[Any, Any]] = []
        self._control_task: asyncio.Task[None] | None = None

    # -- ProviderContext ----------------------------------------------------------------------

    @property
    def host_data(self) -> HostData:
        return self._host

    @property
    def provider_id(self) -> str:
        return self._host.provider_key

    @property
    def config(self) -> Config:
        return self._config

    async def handle_message(self, component_id: str, msg: BrokerMessage) -> UnitResult:
        """Invoke ``handle-message`` on ``component_id`` with ``source-id``/``target-id`` headers."""
        assert self._wrpc is not None, "the runtime is not running"
        return await self._wrpc.invoke(
            prefix(self._host.lattice, component_id),
            HANDLE_MESSAGE,
            msg,
            headers={"source-id": self.provider_id, "target-id": component_id},
            timeout=HANDLE_MESSAGE_TIMEOUT,
        )

    # -- life cycle ---------------------------------------------------------------------------

    async def run(self, nc: NatsConnection | None = None) -> None:
        """Run until a shutdown request for this host (or :meth:`stop`). Closes ``nc`` at the end."""
        self._nc = nc if nc is not None else await connect_lattice(self._host)
        try:
            await self._start()
            await self._stopped.wait()
        finally:
            await self._teardown()

    async def _start(self) -> None:
        nc = self._nc
        assert nc is not None
        self._wrpc = WrpcTransport(nc)
        await self._wrpc.start()
        s = self._subjects
        await nc.subscribe(s.health, cb=self._on_health)
        await nc.subscribe(s.shutdown, cb=self._on_shutdown)
        await nc.subscribe(s.link_put, cb=self._queue(_Event.PUT))
        await nc.subscribe(s.link_delete, cb=self._queue(_Event.DELETE))
        await nc.subscribe(s.config_update, cb=self._queue(_Event.CONFIG))
        await ensure_active(nc)
        log.info(
            "provider %s started on lattice %r (host %s, instance %s); link puts on %s",
            self.provider_id,
            self._host.lattice,
            self._host.host_id,
            self._host.instance_id,
            s.link_put,
        )
        await self._capability.start(self)
        for error in self._host.link_errors:
            log.error("%s; the link was skipped", error)
        for definition in self._host.link_definitions:
            await self._put(definition)
        self._served = [
            await self._wrpc.serve(self._prefix, PUBLISH, self._publish),
            await self._wrpc.serve(self._prefix, REQUEST, self._request),
        ]
        self._control_task = asyncio.create_task(self._control_loop(), name="provider-control")
        self._ready = True
        log.info("provider %s ready with %d link(s)", self.provider_id, len(self.links))

    def stop(self) -> None:
        """Ask :meth:`run` to shut down (signals, tests). Idempotent."""
        self._stopping = True
        self._stopped.set()

    async def _teardown(self) -> None:
        """Stop the data plane, then the transport and the NATS connection."""
        await self._teardown_data_plane()
        if self._wrpc is not None:
            await self._wrpc.close()
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.close()

    # -- control plane ------------------------------------------------------------------------

    def _queue(self, kind: _Event) -> Callable[[Msg], Awaitable[None]]:
        async def enqueue(msg: Msg) -> None:
            if not self._stopping:
                self._events.put_nowait((kind, msg.data))

        return enqueue

    async def _control_loop(self) -> None:
        """Apply control events one at a time, in arrival order."""
        while True:
            kind, payload = await self._events.get()
            try:
                if kind is _Event.PUT:
                    await self._put(decode_link_definition(payload))
                elif kind is _Event.DELETE:
                    await self._delete(decode_link_definition(payload))
                else:
                    await self._update_config(payload)
            except ConfigError as exc:
                log.error("ignored a %s: %s", kind.value, exc)
            except Exception:
                log.exception("a %s failed", kind.value)

    async def _put(self, definition: LinkDefinition) -> None:
        role = self._resolver.role(definition)
        if role is None:
            log.debug("ignored a link that does not name this provider: %s", definition.describe())
            return
        if (definition.wit_namespace, definition.wit_package) != MESSAGING:
            log.warning("ignored a link for an interface this provider lacks: %s", definition.describe())
            return
        try:
            link = self._resolver.resolve(definition, role)
        except ConfigError as exc:
            log.error("rejected link %s: %s", definition.describe(), exc)
            return
        outcome = self.links.outcome(link)
        if outcome is PutOutcome.DUPLICATE:
            log.debug("ignored a duplicate put of link %s", definition.describe())
            return
        if outcome is PutOutcome.CHANGED:
            previous = self.links.remove(link.key)
            assert previous is not None
            log.info("link %s changed: re-applying it", definition.describe())
            await self._capability.delete_link(previous)
        await self._apply(link)

    async def _apply(self, link: Link) -> None:
        try:
            await self._capability.put_link(link)
        except ConfigError as exc:
            log.error("rejected link %s: %s", link.definition.describe(), exc)
            return
        self.links.record(link)
        log.info("put link %s as %s", link.definition.describe(), link.role.value)

    async def _delete(self, definition: LinkDefinition) -> None:
        link = self.links.remove(definition.key)
        if link is None:
            log.debug("ignored a delete of a link this provider does not hold: %s", definition.describe())
            return
        await self._capability.delete_link(link)
        log.info("deleted link %s", definition.describe())

    async def _update_config(self, payload: bytes) -> None:
        try:
            raw = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"config update is not JSON: {exc}") from exc
        config = parse_string_map(raw, "config update")
        self._resolver = self._resolver.with_provider_config(config)
        self._config = Config(config, self._host.secrets)
        await self._capability.update_config(self._config)
        log.info("provider config updated (%d key(s))", len(config))
        for link in self.links:
            updated = self._resolver.resolve(link.definition, link.role)
            if not updated.same_as(link):
                log.info("link %s: effective config changed, re-applying", link.definition.describe())
                self.links.remove(link.key)
                await self._capability.delete_link(link)
                await self._apply(updated)

    async def _on_health(self, msg: Msg) -> None:
        if not self._ready:
            health = Health(False, "starting")
        else:
            try:
                health = self._capability.health()
            except Exception as exc:
                log.exception("health check failed")
                health = Health(False, f"health check failed: {exc}")
        body: dict[str, Any] = {"healthy": health.healthy}
        if health.message is not None:
            body["message"] = health.message
        if msg.reply:
            await self._nc_or_raise().publish(msg.reply, json.dumps(body).encode())

    async def _on_shutdown(self, msg: Msg) -> None:
        try:
            host_id = json.loads(msg.data).get("host_id", "")
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            host_id = ""
        if host_id != self._host.host_id:
            # Every instance of this provider id in the lattice hears this subject (spec §2.5).
            log.debug("ignored a shutdown request for host %r", host_id)
            return
        log.info("shutdown requested by host %s", host_id)
        await self._teardown_data_plane()
        nc = self._nc_or_raise()
        if msg.reply:
            await nc.publish(msg.reply, b"shutting down")
        await nc.flush()
        self._stopped.set()

    async def _teardown_data_plane(self) -> None:
        """Stop control events and exports, then shut the capability down. Runs once."""
        if self._torn_down:
            return
        self._torn_down = True
        self._stopping = True
        if self._control_task is not None:
            self._control_task.cancel()
            await asyncio.gather(self._control_task, return_exceptions=True)
        for served in self._served:
            await served.close()
        try:
            async with asyncio.timeout(SHUTDOWN_BUDGET):
                await self._capability.shutdown()
        except TimeoutError:
            log.warning("the capability took longer than %.0f ms to shut down", SHUTDOWN_BUDGET * 1000)
        except Exception:
            log.exception("the capability failed to shut down cleanly")

    def _nc_or_raise(self) -> NatsConnection:
        if self._nc is None:
            raise ProviderError("the runtime is not connected")
        return self._nc

    # -- data plane: consumer exports -----------------------------------------------------------

    def _caller(self, headers: Headers) -> tuple[Link | None, str]:
        source = headers.get("source-id", "")
        name = headers.get("link-name", "") or "default"
        link = self.links.target_link(source, name)
        if link is not None:
            return link, ""
        if not source:
            return None, "the call carries no source-id header, so its caller cannot be identified"
        return None, (
            f"component not linked: {source!r} has no link named {name!r} to provider "
            f"{self.provider_id!r} for wasmcloud:messaging/consumer"
        )

    async def _publish(self, msg: BrokerMessage, headers: Headers) -> UnitResult:
        return await self._from_component(
            "publish", headers, lambda link: self._capability.publish(link, msg)
        )

    async def _request(self, params: RequestParams, headers: Headers) -> MessageResult:
        return await self._from_component(
            "request", headers, lambda link: self._capability.request(link, params)
        )

    async def _from_component(
        self, what: str, headers: Headers, call: Callable[[Link], Awaitable[ResultT]]
    ) -> ResultT | Err[str]:
        """Find the caller's link, then run ``call`` on it; every failure is an ``err`` value."""
        link, why = self._caller(headers)
        if link is None:
            return Err(why)
        try:
            return await call(link)
        except Exception as exc:  # the component gets err("…"), not a trap (spec §3.4)
            log.exception("%s from %s failed", what, link.component_id)
            return Err(f"provider error: {exc}")
