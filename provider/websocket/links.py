"""One object per link, and the servers and client connections they share. I/O.

A link's ``MODE`` and role decide its object:

=====================  ==========================================================================
:class:`ServerHandler`  handler link, ``MODE=server``: the server on ``URI`` delivers to the component
:class:`ServerConsumer` consumer link, ``MODE=server``: the component may publish to those sessions
:class:`ClientLink`     either link, ``MODE=client``: one :class:`SharedConnection` per (component,
                        ``URI``, link name), opened with the first of its links, closed with the last
=====================  ==========================================================================

Each object owns what the link put in place and takes it down in :meth:`close` (idempotent).
Servers are shared by every handler link on their address (:class:`Servers`); a client
connection by the handler and consumer links of one component (:class:`Connections`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from provider.errors import ConfigError
from provider.wasmcloud.config import Config
from provider.wasmcloud.links import Link, LinkKey, Role
from provider.websocket.client import Connection, State
from provider.websocket.config import ClientSettings, Mode, client_settings, delivery, server_settings
from provider.websocket.election import Elector, Holder, Lease
from provider.websocket.peer import Counters, Deliver
from provider.websocket.server import SessionIndex, WsServer
from provider.websocket.subjects import Ids, ServerNaming

log = logging.getLogger("provider.websocket")

Address = tuple[str, int]
ClientKey = tuple[str, str, str]
"""(component, URI, link name): one connection, shared by that component's handler and consumer links."""


class Servers:
    """The WebSocket servers, one per listen address, each shared by the handler links on it."""

    def __init__(self, deliver: Deliver, counters: Counters, sessions: SessionIndex, ids: Ids) -> None:
        self._deliver = deliver
        self._counters = counters
        self._sessions = sessions
        self._ids = ids
        self.by_address: dict[Address, WsServer] = {}

    async def join(self, link: Link) -> WsServer:
        """The server ``link`` delivers from, started if it is the first on its address.

        Raises :class:`ConfigError` for bad keys, for settings that differ from the other links
        on the address, or for an address that cannot be bound.
        """
        settings = server_settings(link.config)
        wanted = delivery(link.config)
        server = self.by_address.get(settings.address)
        if server is None:
            server = WsServer(
                settings, self._deliver, self._counters, self._sessions, ServerNaming(self._ids)
            )
            await server.start()
            self.by_address[settings.address] = server
        else:
            differences = server.settings.differences(settings)
            if differences:
                raise ConfigError(
                    f"URI={settings.host}:{settings.port} is already served with other settings for "
                    f"{', '.join(differences)}; handler links on one address must agree on them"
                )
        server.add_link(link.key, link.component_id, wanted)
        log.info(
            "server %s:%d delivers %s to %s",
            settings.host,
            settings.port,
            wanted.subscriptions.describe(),
            link.component_id,
        )
        return server

    async def leave(self, server: WsServer, key: LinkKey) -> None:
        """``key`` no longer delivers from ``server``; the last link to leave stops it (clients: 1001)."""
        server.remove_link(key)
        if not server.has_links and self.by_address.get(server.settings.address) is server:
            del self.by_address[server.settings.address]
            await server.stop()

    def delivering_to(self, component: str) -> list[WsServer]:
        """The servers that deliver to ``component``: the only ones whose sessions it may reach."""
        return [s for s in self.by_address.values() if s.delivers_to(component)]

    def take_all(self) -> list[WsServer]:
        """Every server, forgotten here (for shutdown)."""
        servers, self.by_address = list(self.by_address.values()), {}
        return servers


@dataclass(eq=False)
class SharedConnection:
    """A client connection and the links (at most a handler and a consumer) that use it."""

    key: ClientKey
    connection: Connection
    links: dict[LinkKey, Link] = field(default_factory=dict)
    """In the order they were put: a later link's keys win where two set one differently."""
    lease: Lease | None = None
    """With ``CONNECTIONS=one``: the election of the one instance that connects."""

    @property
    def holder(self) -> Holder | None:
        """The instance that holds the connection when another one does (``None``: this one, or nobody)."""
        if self.lease is None or self.lease.holding:
            return None
        return self.lease.holder

    async def take(self) -> None:
        """This instance won the election: connect."""
        if self.connection.closed:
            self.connection = self.connection.fresh()
        if not self.connection.started:
            log.info(
                "%s: this instance holds the connection to %s", self.key[0], self.connection.settings.where
            )
            self.connection.start()

    async def give_up(self, reason: str) -> None:
        """Another instance holds the connection now: close ours (1000) and stand by."""
        log.warning(
            "%s: closing the connection to %s: %s", self.key[0], self.connection.settings.where, reason
        )
        await self.connection.close(reason)
        self.connection = self.connection.fresh()
        self.connection.state = State.STANDBY

    async def close(self, reason: str = "link deleted") -> None:
        if self.lease is not None:
            await self.lease.close()
        await self.connection.close(reason)

    def config(self, provider: Config) -> Config:
        """Provider defaults, then each link's own keys: a key one link sets is never dropped
        because the other link does not mention it."""
        return Config.layered(provider, *(link.own for link in self.links.values()))

    def refresh_flags(self) -> None:
        roles = {link.role for link in self.links.values()}
        self.connection.has_handler = Role.SOURCE in roles
        self.connection.has_consumer = Role.TARGET in roles


def _conflicts(link: Link, others: list[Link]) -> list[str]:
    """The keys ``link`` sets to another value than a link it shares its connection with."""
    own = link.own
    return sorted(
        {
            own.spelled(key)
            for other in others
            for key in own
            if key in other.own and other.own[key] != own[key]
        }
    )


class Connections:
    """The client connections, one per (component, ``URI``, link name)."""

    def __init__(
        self,
        deliver: Deliver,
        counters: Counters,
        provider_config: Callable[[], Config],
        ids: Ids,
        elector: Elector | None = None,
    ) -> None:
        self._deliver = deliver
        self._counters = counters
        self._provider_config = provider_config
        self._ids = ids
        self._elector = elector
        self.by_key: dict[ClientKey, SharedConnection] = {}

    async def join(self, link: Link) -> SharedConnection:
        """The connection ``link`` uses: opened if it is the first, else reconfigured with the keys
        ``link`` adds or changes (same id, same reply subject). Raises :class:`ConfigError`."""
        provider = self._provider_config()
        own = client_settings(link.config)  # the link alone must make sense
        key: ClientKey = (link.component_id, own.uri, link.name)
        shared = self.by_key.get(key)
        if shared is None:
            settings = client_settings(Config.layered(provider, link.own))
            connection = Connection(
                link.component_id,
                settings,
                self._deliver,
                self._counters,
                connection_id=self._ids.connection(*key),
            )
            shared = SharedConnection(key, connection, {link.key: link})
            shared.refresh_flags()
            self.by_key[key] = shared
            if settings.connections == "one" and self._elector is not None:
                connection.state = State.STANDBY
                shared.lease = self._elector.lease(key, connection.id, shared.take, shared.give_up)
                shared.lease.start()
            else:
                connection.start()
            return shared
        others = [other for k, other in shared.links.items() if k != link.key]
        links = {k: v for k, v in shared.links.items() if k != link.key} | {link.key: link}
        settings = client_settings(Config.layered(provider, *(v.own for v in links.values())))
        conflicts = _conflicts(link, others)
        if conflicts:
            names = sorted({"HEADER_*" if k.upper().startswith("HEADER_") else k.upper() for k in conflicts})
            log.warning(
                "%s: link %r to %s sets %s differently (%s) from the other link of its connection; "
                "the link put last wins (give both links the same client keys)",
                link.component_id,
                link.name,
                settings.where,
                ", ".join(names),
                ", ".join(conflicts),
            )
        await self._apply(shared, settings)  # raises ConfigError before anything changes
        shared.links = links
        shared.refresh_flags()
        return shared

    async def leave(self, shared: SharedConnection, link: Link) -> None:
        """``link`` no longer uses ``shared``; the last link to leave closes it (1000)."""
        if shared.links.pop(link.key, None) is None:
            return
        shared.refresh_flags()
        if not shared.links:
            if self.by_key.get(shared.key) is shared:
                del self.by_key[shared.key]
            await shared.close()
            return
        try:
            await self._apply(shared, client_settings(shared.config(self._provider_config())))
        except ConfigError as exc:  # the remaining link alone was fine when it was put
            log.error("%s: connection to %s keeps its settings: %s", link.component_id, shared.key[1], exc)

    @staticmethod
    async def _apply(shared: SharedConnection, settings: ClientSettings) -> None:
        connection = shared.connection
        differences = connection.settings.differences(settings)
        if await connection.reconfigure(settings):
            log.info(
                "%s: reconnecting to %s with new %s",
                connection.component,
                settings.where,
                ", ".join(differences),
            )

    def take_all(self) -> list[SharedConnection]:
        """Every connection, forgotten here (for shutdown)."""
        shared, self.by_key = list(self.by_key.values()), {}
        return shared


# --- the link objects -------------------------------------------------------------------------------


@dataclass(eq=False)
class ServerHandler:
    """A handler link with ``MODE=server``: its server delivers to the component."""

    link: Link
    server: WsServer
    servers: Servers
    mode: Mode = Mode.SERVER
    closed: bool = False

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            await self.servers.leave(self.server, self.link.key)


@dataclass(eq=False)
class ServerConsumer:
    """A consumer link with ``MODE=server``: publishes go to the sessions the component can reach."""

    link: Link
    mode: Mode = Mode.SERVER
    closed: bool = False

    async def close(self) -> None:
        self.closed = True


@dataclass(eq=False)
class ClientLink:
    """Either link with ``MODE=client``: it uses (and shares) one outgoing connection."""

    link: Link
    shared: SharedConnection
    connections: Connections
    mode: Mode = Mode.CLIENT
    closed: bool = False

    @property
    def connection(self) -> Connection:
        return self.shared.connection

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            await self.connections.leave(self.shared, self.link)


LinkObject = ServerHandler | ServerConsumer | ClientLink
