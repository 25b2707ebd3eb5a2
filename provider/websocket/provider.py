"""The WebSocket messaging capability: links → servers and client connections; publish/request routing. I/O.

Each link's ``MODE`` decides what it means:

============  =========================================================================================
handler link  (provider → component; ``source_config``) ``server``: deliver the frames of the server
              at ``URI``; ``client``: open a connection to ``URI`` and deliver its frames
consumer link (component → provider; ``target_config``) ``server``: the component may publish to the
              sessions of servers that deliver to it; ``client``: publish and request on its connection
============  =========================================================================================

The provider keeps one object per link (:mod:`provider.websocket.links`) in one map. Where a
component's publish goes is decided by :func:`~provider.websocket.subjects.parse_target` and
dispatched here with ``match``, so mypy checks that every kind of target is handled.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
from collections.abc import Awaitable
from typing import assert_never

from provider.errors import ConfigError
from provider.wasmcloud.capability import Health, ProviderContext
from provider.wasmcloud.config import Config
from provider.wasmcloud.links import Link, LinkKey, Role
from provider.websocket.client import Connection, State
from provider.websocket.cluster import Cluster
from provider.websocket.config import (
    Mode,
    client_settings,
    delivery,
    key_warnings,
    mode_of,
    server_settings,
    sessions_timeout,
)
from provider.websocket.election import Elector, Holder
from provider.websocket.formats import Envelope, Format, FrameError
from provider.websocket.links import (
    ClientLink,
    Connections,
    LinkObject,
    ServerConsumer,
    ServerHandler,
    Servers,
)
from provider.websocket.peer import Counters, SendError
from provider.websocket.server import Session, SessionIndex, WsServer
from provider.websocket.subjects import (
    SESSIONS,
    Broadcast,
    CloseSession,
    FrameType,
    Ids,
    ListSessions,
    Other,
    Target,
    ToConnection,
    ToSession,
    connection_subject,
    parse_target,
    tag_of,
)
from provider.wrpc.codec import Err, Ok
from provider.wrpc.messaging import BrokerMessage, MessageResult, RequestParams, UnitResult

log = logging.getLogger("provider.websocket")

SERVER_PUBLISH_HELP = (
    "in server mode, publish to a session's reply subject (ws.session.<id>), to ws.broadcast, "
    "or to ws.close.<id>"
)
CLOSED_BY_COMPONENT = "closed by a component"


class WebSocketProvider:
    """The capability the runtime drives (see :class:`provider.wasmcloud.capability.Capability`)."""

    def __init__(self) -> None:
        self.counters = Counters()
        self.sessions = SessionIndex()
        self.links: dict[LinkKey, LinkObject] = {}
        self._context: ProviderContext | None = None
        self._use(Ids.for_instance())
        self.cluster: Cluster | None = None

    def _use(self, ids: Ids) -> None:
        self.ids = ids
        self.servers = Servers(self._handle, self.counters, self.sessions, ids)
        self.connections = Connections(self._handle, self.counters, self._provider_config, ids)

    async def start(self, context: ProviderContext) -> None:
        """Ids that name this instance (from HostData ``instance_id``), then join the other instances."""
        self._context = context
        host = context.host_data
        self._use(Ids.for_instance(host.instance_id))
        self.cluster = Cluster(
            context.bus, host.lattice, context.provider_id, self.ids, self, self.counters, context.instruments
        )
        context.instruments.observe(self.measurements)
        elector = Elector(context.bus, host.lattice, context.provider_id, self.ids.tag)
        self.connections = Connections(self._handle, self.counters, self._provider_config, self.ids, elector)
        await self.cluster.start()
        log.info(
            "instance %s: session and connection ids start with %s.", host.instance_id or "?", self.ids.tag
        )

    def _provider_config(self) -> Config:
        return self._context.config if self._context is not None else Config()

    async def _handle(self, component: str, msg: BrokerMessage) -> UnitResult:
        """Deliver to a component through the runtime (the servers' and connections' ``Deliver``)."""
        assert self._context is not None, "the provider has not been started"
        return await self._context.handle_message(component, msg)

    # -- links -----------------------------------------------------------------------------------------

    async def put_link(self, link: Link) -> None:
        self.links[link.key] = await self._open(link)

    async def _open(self, link: Link) -> LinkObject:
        mode = mode_of(link.config)
        self._warn_about_keys(link, mode)
        if mode is Mode.CLIENT:
            shared = await self.connections.join(link)
            log.info(
                "%s: %s link %r uses client connection %s to %s",
                link.component_id,
                "handler" if link.role is Role.SOURCE else "consumer",
                link.name,
                shared.connection.id,
                shared.connection.settings.where,
            )
            return ClientLink(link, shared, self.connections)
        if link.role is Role.SOURCE:
            return ServerHandler(link, await self.servers.join(link), self.servers)
        return ServerConsumer(link)

    @staticmethod
    def _warn_about_keys(link: Link, mode: Mode) -> None:
        """Unknown, misspelt, deprecated or idle keys the link itself sets (provider defaults aside)."""
        for warning in key_warnings(link.own, mode):
            log.warning("%s: link %r (MODE=%s): %s", link.component_id, link.name, mode.value, warning)

    async def replace_link(self, previous: Link, link: Link) -> None:
        """Apply a changed link, in place where what it uses can stay.

        A client connection keeps its id and reply subject (and reconnects only if its settings
        changed); a server keeps its sessions when only the link's ``SUBSCRIPTIONS`` or
        ``LIFECYCLE_EVENTS`` changed. Anything else is :meth:`delete_link` then :meth:`put_link`.
        A :class:`ConfigError` rejects the new link and leaves neither applied.
        """
        current = self.links.get(previous.key)
        try:
            replaced = await self._in_place(current, link) if current is not None else None
        except ConfigError:
            await self.delete_link(previous)
            raise
        if replaced is None:
            await self.delete_link(previous)
            await self.put_link(link)
        else:
            self.links[link.key] = replaced

    async def _in_place(self, current: LinkObject, link: Link) -> LinkObject | None:
        mode = mode_of(link.config)
        self._warn_about_keys(link, mode)
        match current:
            case ClientLink():
                if mode is not Mode.CLIENT:
                    return None
                settings = client_settings(link.config)
                if (link.component_id, settings.uri, link.name) != current.shared.key:
                    return None
                return ClientLink(link, await self.connections.join(link), self.connections)
            case ServerHandler():
                if mode is not Mode.SERVER or server_settings(link.config) != current.server.settings:
                    return None
                current.server.add_link(link.key, link.component_id, delivery(link.config))
                return ServerHandler(link, current.server, self.servers)
            case ServerConsumer():
                return ServerConsumer(link) if mode is Mode.SERVER else None
            case _:
                assert_never(current)

    async def delete_link(self, link: Link) -> None:
        current = self.links.pop(link.key, None)
        if current is not None:
            await current.close()

    async def update_config(self, config: Config) -> None:
        """Nothing to do here: the runtime re-puts every link whose effective config changed."""

    async def shutdown(self) -> None:
        """Close every session (1001) and every client connection (1000), all at once."""
        self.links = {}
        if self.cluster is not None:
            await self.cluster.stop()
        servers = self.servers.take_all()
        connections = self.connections.take_all()
        await asyncio.gather(
            *(s.stop() for s in servers),
            *(c.close("provider shutting down") for c in connections),
            return_exceptions=True,
        )

    def measurements(self) -> dict[str, object]:
        """What the telemetry exports as metrics (provider.wasmcloud.telemetry): the counters as they are."""
        c = self.counters
        states = collections.Counter(
            s.connection.state.name.lower() for s in self.connections.by_key.values()
        )
        stats = self.cluster.stats if self.cluster is not None else None
        return {
            "sessions": len(self.sessions),
            "connections": dict(states),
            "frames_in": c.frames_in,
            "frames_out": c.frames_out,
            "bytes": {"receive": c.bytes_in, "transmit": c.bytes_out},
            "deliveries": {"ok": c.delivered, "err": c.component_errors, "failed": c.delivery_failures},
            "publishes": {"ok": c.publishes - c.publish_errors, "err": c.publish_errors},
            "drops": dict(c.drops),
            "closes": dict(c.closes),
            "forwards": {"ok": stats.forwarded, "failed": stats.forward_failures} if stats else {},
        }

    def health(self) -> Health:
        clients = [shared.connection for shared in self.connections.by_key.values()]
        open_clients = sum(1 for c in clients if c.state is State.OPEN)
        failed = sum(1 for c in clients if c.state is State.FAILED)
        standby = sum(1 for c in clients if c.state is State.STANDBY)
        message = (
            f"{len(self.servers.by_address)} server(s), {len(self.sessions)} session(s), "
            f"{open_clients}/{len(clients)} client connection(s) open"
        )
        if standby:
            message += f", {standby} held by another instance"
        if failed:
            message += f", {failed} given up (MAX_RECONNECT_ATTEMPTS)"
        if self.cluster is not None:
            stats = self.cluster.stats
            message += (
                f"; instance {self.ids.tag} with {len(self.cluster.live())} other(s): "
                f"forwarded {stats.forwarded} (failed {stats.forward_failures}), "
                f"served {stats.served} for others"
            )
        return Health(True, f"{message}; {self.counters.summary()}")

    # -- from components ------------------------------------------------------------------------------

    def publish(self, link: Link, msg: BrokerMessage) -> UnitResult | Awaitable[UnitResult]:
        """A local session or a broadcast is answered at once; the rest (client mode, another
        instance's session) returns an awaitable of the result."""
        self.counters.publishes += 1
        return self._counted(self._publish(self.links.get(link.key), link, msg))

    def _counted(self, result: UnitResult | Awaitable[UnitResult]) -> UnitResult | Awaitable[UnitResult]:
        """``result`` as it is, its ``err`` counted (once it comes, if it is still on its way)."""
        if isinstance(result, Awaitable):
            return self._counted_later(result)
        if isinstance(result, Err):
            self.counters.publish_errors += 1
        return result

    async def _counted_later(self, pending: Awaitable[UnitResult]) -> UnitResult:
        result: UnitResult = await pending
        if isinstance(result, Err):
            self.counters.publish_errors += 1
        return result

    def _publish(
        self, current: LinkObject | None, link: Link, msg: BrokerMessage
    ) -> UnitResult | Awaitable[UnitResult]:
        component = link.component_id
        target = parse_target(msg.subject)
        client = current if isinstance(current, ClientLink) else None
        if client is not None and not isinstance(target, ToConnection | Other):
            return Err(f"{msg.subject!r} is a server-mode subject; this link has MODE=client")
        match target:
            case ToConnection():
                # A connection's reply subject works whatever the consumer link's mode: a component
                # that receives from a client-mode handler link can always answer what it received.
                return self._forwarded(target.connection_id, component, msg) or self._to_connection(
                    component, target, msg
                )
            case Other():
                if client is None:
                    return Err(f"{SERVER_PUBLISH_HELP}; got {msg.subject!r}")
                return self._to_client(client, component, msg)
            case Broadcast():
                result = self._broadcast(component, msg)
                if isinstance(result, Ok) and self.cluster is not None:
                    self.cluster.broadcast(component, msg)
                return result
            case ToSession() | CloseSession():
                return self._forwarded(target.session_id, component, msg) or self._to_session(
                    component, target, msg
                )
            case ListSessions():
                return Err(f"{SESSIONS!r} answers consumer.request, not publish")
            case _:
                assert_never(target)

    async def _to_client(self, client: ClientLink, component: str, msg: BrokerMessage) -> UnitResult:
        holder = await self._holder(client)
        if holder is not None and self.cluster is not None:
            # Another instance holds the connection (CONNECTIONS=one): send through it.
            raw = client.connection.settings.format is Format.RAW
            via = connection_subject(holder.connection_id, None if raw else msg.subject)
            return await self.cluster.forward(
                holder.tag, component, BrokerMessage(via, msg.body, msg.reply_to)
            )
        return await self._send_on(client.connection, component, msg, msg.subject, None)

    async def _holder(self, client: ClientLink) -> Holder | None:
        """The other instance that holds ``client``'s connection, if one does; while an election is
        still open (nobody holds it yet), wait for it up to ``CONNECT_TIMEOUT_SEC``."""
        lease = client.shared.lease
        if lease is None:
            return None
        if lease.holder is None:
            lease.changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(client.connection.settings.connect_timeout):
                    while lease.holder is None:
                        await lease.changed.wait()
                        lease.changed.clear()
        return client.shared.holder

    def _forwarded(self, some_id: str, component: str, msg: BrokerMessage) -> Awaitable[UnitResult] | None:
        """``msg`` forwarded to the other instance that holds ``some_id`` (its id says which);
        ``None`` if this one holds it."""
        owner = tag_of(some_id)
        if owner is None or owner == self.ids.tag or self.cluster is None:
            return None
        return self.cluster.forward(owner, component, msg)

    # -- what this instance does for the others (cluster.Local) -----------------------------------------

    def publish_here(self, component: str, msg: BrokerMessage) -> UnitResult | Awaitable[UnitResult]:
        """A publish forwarded by another instance: its target must be ours; checked as a local one.
        A session is answered at once; a client connection may have to be waited for."""
        target = parse_target(msg.subject)
        result: UnitResult | Awaitable[UnitResult]
        match target:
            case ToSession() | CloseSession() if self.ids.owns(target.session_id):
                result = self._to_session(component, target, msg)
            case ToConnection() if self.ids.owns(target.connection_id):
                result = self._to_connection(component, target, msg)
            case _:
                result = Err(f"{msg.subject!r} is not held by provider instance {self.ids.tag}")
        return self._counted(result)

    async def request_here(self, component: str, connection: str, params: RequestParams) -> MessageResult:
        owned = self._owned_connection(connection, component)
        if owned is None:
            return Err(f"no connection {connection!r} of component {component!r} on instance {self.ids.tag}")
        return await owned.request(params.subject, params.body, params.timeout_ms)

    def broadcast_here(self, component: str, msg: BrokerMessage) -> None:
        self._broadcast(component, msg)

    def health_here(self) -> bytes:
        health = self.health()
        return json.dumps({"healthy": health.healthy, "message": health.message}).encode()

    def sessions_here(self, component: str) -> list[dict[str, object]]:
        return [s.info() for s in self._reachable_sessions(component)]

    def _broadcast(self, component: str, msg: BrokerMessage) -> UnitResult:
        servers = self.servers.delivering_to(component)
        if not servers:
            return Err(
                f"component {component!r} receives from no WebSocket server: no sessions to broadcast to"
            )
        for server in servers:
            frame = server.encode(msg)
            for session in server:
                # A closed session, or one being closed as too slow, does not stop the others.
                with contextlib.suppress(SendError):
                    session.send(frame)
        return Ok(None)

    def _to_session(self, component: str, target: ToSession | CloseSession, msg: BrokerMessage) -> UnitResult:
        found = self.sessions.get(target.session_id)
        if found is None or not found.server.delivers_to(component):
            return Err(
                f"no session {target.session_id!r} that component {component!r} can reach "
                "(it closed, or its server does not deliver to this component)"
            )
        if isinstance(target, CloseSession):
            found.close(1000, msg.body.decode("utf-8", errors="replace"), CLOSED_BY_COMPONENT)
            return Ok(None)
        try:
            found.send(found.server.encode(msg, target.frame_type))
        except (SendError, FrameError) as exc:
            return Err(f"session {target.session_id!r}: {exc}")
        return Ok(None)

    def _owned_connection(self, connection_id: str, component: str) -> Connection | None:
        for shared in self.connections.by_key.values():
            if shared.connection.id == connection_id and shared.connection.component == component:
                return shared.connection
        return None

    async def _to_connection(self, component: str, target: ToConnection, msg: BrokerMessage) -> UnitResult:
        connection = self._owned_connection(target.connection_id, component)
        if connection is None:
            return Err(
                f"no connection {target.connection_id!r} of component {component!r} "
                "(its links were deleted, or it belongs to another component)"
            )
        if connection.settings.format is Format.RAW:
            # Raw frames have no subject: the suffix of a raw connection's reply subject is a frame type.
            frame_type = FrameType(target.reply) if target.reply in ("binary", "text") else None
            if target.reply is not None and frame_type is None:
                return Err(f"{msg.subject!r}: FORMAT=raw takes .binary or .text after the connection id")
            return await self._send_on(connection, component, msg, msg.subject, frame_type)
        return await self._send_on(connection, component, msg, target.reply or msg.subject, None)

    @staticmethod
    async def _send_on(
        connection: Connection, component: str, msg: BrokerMessage, subject: str, frame_type: FrameType | None
    ) -> UnitResult:
        try:
            await connection.send(Envelope(subject, msg.body, msg.reply_to), frame_type)
        except (SendError, FrameError) as exc:
            log.warning("%s: publish on %r dropped: %s", component, msg.subject, exc)
            return Err(str(exc))
        return Ok(None)

    async def request(self, link: Link, params: RequestParams) -> MessageResult:
        current = self.links.get(link.key)
        if isinstance(current, ClientLink):
            holder = await self._holder(current)
            if holder is not None and self.cluster is not None:
                return await self.cluster.forward_request(
                    holder.tag, link.component_id, holder.connection_id, params
                )
            return await current.connection.request(params.subject, params.body, params.timeout_ms)
        target: Target = parse_target(params.subject)
        if isinstance(target, ListSessions):
            return await self._list_sessions(link)
        return Err(f"in server mode, request answers only {SESSIONS!r}; got {params.subject!r}")

    async def _list_sessions(self, link: Link) -> MessageResult:
        """This instance's sessions the component may reach, and every other live instance's,
        gathered within ``SESSIONS_TIMEOUT_MS``; subject ``ws.sessions.partial`` if one did not answer."""
        component = link.component_id
        listing = self.sessions_here(component)
        missing: list[str] = []
        if self.cluster is not None:
            others, missing = await self.cluster.sessions(component, sessions_timeout(link.config))
            listing.extend(others)
        subject = SESSIONS if not missing else f"{SESSIONS}.partial"
        return Ok(BrokerMessage(subject, json.dumps(listing).encode(), None))

    def _reachable_sessions(self, component: str) -> list[Session]:
        servers: list[WsServer] = self.servers.delivering_to(component)
        return [session for server in servers for session in server]
