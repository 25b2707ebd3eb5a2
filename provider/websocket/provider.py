"""The WebSocket messaging capability: links → servers and client connections; publish/request routing. I/O.

Each link's ``MODE`` decides what it means:

============  =========================================================================================
handler link  (provider → component; ``source_config``) ``server``: deliver the frames of the server
              at ``URI``; ``client``: open a connection to ``URI`` and deliver its frames
consumer link (component → provider; ``target_config``) ``server``: the component may publish to the
              sessions of servers that deliver to it; ``client``: publish and request on its connection
============  =========================================================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from provider.errors import ConfigError
from provider.wasmcloud.capability import Health, ProviderContext
from provider.wasmcloud.config import Config
from provider.wasmcloud.links import Link, LinkKey, Role
from provider.websocket.client import Connection, State
from provider.websocket.config import Mode, client_settings, delivery, mode_of, server_settings
from provider.websocket.formats import Envelope
from provider.websocket.peer import Counters, SendError
from provider.websocket.server import Session, SessionIndex, WsServer
from provider.websocket.subjects import (
    SESSIONS,
    Broadcast,
    CloseSession,
    ListSessions,
    Other,
    Target,
    ToConnection,
    ToSession,
    parse_target,
)
from provider.wrpc.codec import Err, Ok
from provider.wrpc.messaging import BrokerMessage, MessageResult, RequestParams, UnitResult

log = logging.getLogger("provider.websocket")

ClientKey = tuple[str, str, str]
"""(component, URI, link name): one connection, shared by that component's handler and consumer links."""

SERVER_PUBLISH_HELP = (
    "in server mode, publish to a session's reply subject (ws.session.<id>), to ws.broadcast, "
    "or to ws.close.<id>"
)


class WebSocketProvider:
    """The capability the runtime drives (see :class:`provider.wasmcloud.capability.Capability`)."""

    def __init__(self) -> None:
        self.counters = Counters()
        self.sessions = SessionIndex()
        self.servers: dict[tuple[str, int], WsServer] = {}
        self.clients: dict[ClientKey, Connection] = {}
        self._server_links: dict[LinkKey, tuple[str, int]] = {}
        self._client_links: dict[LinkKey, ClientKey] = {}
        self._consumer_modes: dict[LinkKey, Mode] = {}
        self._context: ProviderContext | None = None

    async def start(self, context: ProviderContext) -> None:
        self._context = context

    async def _handle(self, component: str, msg: BrokerMessage) -> UnitResult:
        """Deliver to a component through the runtime (the servers' and connections' ``Deliver``)."""
        assert self._context is not None, "the provider has not been started"
        return await self._context.handle_message(component, msg)

    # -- links -----------------------------------------------------------------------------------------

    async def put_link(self, link: Link) -> None:
        mode = mode_of(link.config)
        if link.role is Role.SOURCE:
            if mode is Mode.SERVER:
                await self._put_server_link(link)
            else:
                await self._put_client_link(link, handler=True)
        else:
            if mode is Mode.CLIENT:
                await self._put_client_link(link, handler=False)
            self._consumer_modes[link.key] = mode

    async def _put_server_link(self, link: Link) -> None:
        settings = server_settings(link.config)
        wanted = delivery(link.config)
        server = self.servers.get(settings.address)
        if server is None:
            server = WsServer(settings, self._handle, self.counters, self.sessions)
            await server.start()
            self.servers[settings.address] = server
        else:
            differences = server.settings.differences(settings)
            if differences:
                raise ConfigError(
                    f"URI={settings.host}:{settings.port} is already served with other settings for "
                    f"{', '.join(differences)}; handler links on one address must agree on them"
                )
        server.add_link(link.key, link.component_id, wanted)
        self._server_links[link.key] = settings.address
        log.info(
            "server %s:%d delivers %s to %s",
            settings.host,
            settings.port,
            wanted.subscriptions.describe(),
            link.component_id,
        )

    async def _put_client_link(self, link: Link, *, handler: bool) -> None:
        settings = client_settings(link.config)
        key: ClientKey = (link.component_id, settings.uri, link.name)
        connection = self.clients.get(key)
        if connection is not None and connection.settings != settings:
            # The two links of a connection are put one after the other, so when a manifest
            # changes the config of both, the first put meets the other's old settings. Refusing
            # it would lose that link for good; the link put last decides instead.
            log.warning(
                "%s: link %r to %s sets %s differently from the other link of its connection; "
                "reconnecting with this link's settings (give both links the same client keys)",
                link.component_id,
                link.name,
                settings.where,
                ", ".join(connection.settings.differences(settings)),
            )
            replacement = Connection(link.component_id, settings, self._handle, self.counters)
            replacement.has_handler = connection.has_handler
            replacement.has_consumer = connection.has_consumer
            self.clients[key] = replacement
            await connection.close("link config changed")
            connection = replacement
            connection.start()
        elif connection is None:
            connection = Connection(link.component_id, settings, self._handle, self.counters)
            self.clients[key] = connection
            connection.start()
        if handler:
            connection.has_handler = True
        else:
            connection.has_consumer = True
        self._client_links[link.key] = key
        log.info(
            "%s: %s link %r uses client connection %s to %s",
            link.component_id,
            "handler" if handler else "consumer",
            link.name,
            connection.id,
            settings.where,
        )

    async def delete_link(self, link: Link) -> None:
        self._consumer_modes.pop(link.key, None)
        address = self._server_links.pop(link.key, None)
        if address is not None:
            server = self.servers[address]
            server.remove_link(link.key)
            if not server.has_links:
                del self.servers[address]
                await server.stop()
        key = self._client_links.pop(link.key, None)
        connection = self.clients.get(key) if key is not None else None
        if key is not None and connection is not None:
            if link.role is Role.SOURCE:
                connection.has_handler = False
            else:
                connection.has_consumer = False
            if not (connection.has_handler or connection.has_consumer):
                del self.clients[key]
                await connection.close()

    async def update_config(self, config: Config) -> None:
        """Nothing to do here: the runtime re-puts every link whose effective config changed."""

    async def shutdown(self) -> None:
        """Close every session (1001) and every client connection (1000), all at once."""
        servers, self.servers = list(self.servers.values()), {}
        clients, self.clients = list(self.clients.values()), {}
        await asyncio.gather(
            *(s.stop() for s in servers),
            *(c.close("provider shutting down") for c in clients),
            return_exceptions=True,
        )

    def health(self) -> Health:
        open_clients = sum(1 for c in self.clients.values() if c.state is State.OPEN)
        failed = sum(1 for c in self.clients.values() if c.state is State.FAILED)
        message = (
            f"{len(self.servers)} server(s), {len(self.sessions)} session(s), "
            f"{open_clients}/{len(self.clients)} client connection(s) open"
        )
        if failed:
            message += f", {failed} given up (MAX_RECONNECT_ATTEMPTS)"
        return Health(True, message)

    # -- from components ------------------------------------------------------------------------------

    async def publish(self, link: Link, msg: BrokerMessage) -> UnitResult:
        mode = self._consumer_modes.get(link.key, Mode.SERVER)
        # A connection's reply subject works whatever the consumer link's mode: a component that
        # receives from a client-mode handler link can always answer what it received.
        target = parse_target(msg.subject)
        if mode is Mode.CLIENT or isinstance(target, ToConnection):
            result = await self._client_publish(link, msg, target)
        else:
            result = self._server_publish(link.component_id, msg, target)
        if isinstance(result, Err):
            self.counters.publish_errors += 1
        return result

    async def request(self, link: Link, params: RequestParams) -> MessageResult:
        mode = self._consumer_modes.get(link.key, Mode.SERVER)
        if mode is Mode.CLIENT:
            connection = self._connection_of(link)
            if connection is None:
                return Err(f"component {link.component_id!r} has no client connection for link {link.name!r}")
            return await connection.request(params.subject, params.body, params.timeout_ms)
        target = parse_target(params.subject)
        if isinstance(target, ListSessions):
            listing = [s.info() for s in self._reachable_sessions(link.component_id)]
            return Ok(BrokerMessage(SESSIONS, json.dumps(listing).encode(), None))
        return Err(f"in server mode, request answers only {SESSIONS!r}; got {params.subject!r}")

    def _servers_of(self, component: str) -> list[WsServer]:
        return [s for s in self.servers.values() if s.delivers_to(component)]

    def _reachable_sessions(self, component: str) -> list[Session]:
        return [session for server in self._servers_of(component) for session in server]

    def _server_publish(self, component: str, msg: BrokerMessage, target: Target) -> UnitResult:
        if isinstance(target, Broadcast):
            servers = self._servers_of(component)
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
        if isinstance(target, ToSession | CloseSession):
            found = self.sessions.get(target.session_id)
            if found is None or not found.server.delivers_to(component):
                return Err(
                    f"no session {target.session_id!r} that component {component!r} can reach "
                    "(it closed, or its server does not deliver to this component)"
                )
            if isinstance(target, CloseSession):
                found.close(1000, msg.body.decode("utf-8", errors="replace"))
                return Ok(None)
            try:
                found.send(found.server.encode(msg))
            except SendError as exc:
                return Err(f"session {target.session_id!r}: {exc}")
            return Ok(None)
        if isinstance(target, ListSessions):
            return Err(f"{SESSIONS!r} answers consumer.request, not publish")
        return Err(f"{SERVER_PUBLISH_HELP}; got {msg.subject!r}")

    def _connection_of(self, link: Link) -> Connection | None:
        key = self._client_links.get(link.key)
        return self.clients.get(key) if key is not None else None

    async def _client_publish(self, link: Link, msg: BrokerMessage, target: Target) -> UnitResult:
        subject = msg.subject
        if isinstance(target, ToConnection):
            owned = {c.id: c for c in self.clients.values() if c.component == link.component_id}
            connection = owned.get(target.connection_id)
            if connection is None:
                return Err(
                    f"no connection {target.connection_id!r} of component {link.component_id!r} "
                    "(its links were deleted, or it belongs to another component)"
                )
            subject = target.reply or subject
        elif isinstance(target, Other):
            connection = self._connection_of(link)
            if connection is None:
                return Err(f"component {link.component_id!r} has no client connection for link {link.name!r}")
        else:
            return Err(f"{msg.subject!r} is a server-mode subject; this link has MODE=client")
        try:
            await connection.send(Envelope(subject, msg.body, msg.reply_to))
        except SendError as exc:
            log.warning("%s: publish on %r dropped: %s", link.component_id, msg.subject, exc)
            return Err(str(exc))
        return Ok(None)
