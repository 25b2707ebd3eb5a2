"""Fixtures shared by every test: real nats-server processes on loopback, NATS connections."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from provider.host.lattice import LocalLattice
from provider.host.launcher import LAUNCHER_NAME, write_launcher
from provider.host.native import NativeComponent
from provider.host.nats_server import NatsServer
from provider.wrpc.codec import Ok
from provider.wrpc.connection import NatsConnection
from provider.wrpc.connection import connect as connect_nats
from provider.wrpc.messaging import BrokerMessage, UnitResult

Connect = Callable[..., Awaitable[NatsConnection]]

# Properties are checked, never timed (speed is `make bench`'s to judge): without this, an example
# that a loaded CI machine happens to run slowly fails on hypothesis's 200 ms deadline or its
# too-slow health check, though every value was right.
settings.register_profile("project", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("project")


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    """A nats-server with default limits (max_payload 1 MiB), on 127.0.0.1 and a random port."""
    with NatsServer() as server:
        yield server


@pytest.fixture(scope="session")
def small_nats_server() -> Iterator[NatsServer]:
    """A nats-server with max_payload 4096, so every sizeable value is chunked."""
    with NatsServer(max_payload=4096) as server:
        yield server


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Open NATS connections that are closed when the test ends."""
    opened: list[NatsConnection] = []

    async def _connect(server: NatsServer, **options: object) -> NatsConnection:
        nc = await connect_nats(server.url, connect_timeout=5, max_reconnect_attempts=0, **options)
        opened.append(nc)
        return nc

    yield _connect
    for nc in opened:
        if not nc.is_closed:
            await nc.close()


@pytest.fixture(scope="session")
def launcher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The provider's launcher script, as a provider archive would carry it."""
    return write_launcher(tmp_path_factory.mktemp("provider") / LAUNCHER_NAME)


MakeLattice = Callable[..., Awaitable[LocalLattice]]
WAIT = 10.0


class Inbox:
    """A component's received messages, awaitable with a deadline."""

    def __init__(self) -> None:
        self.messages: list[BrokerMessage] = []
        self._changed = asyncio.Condition()

    async def record(self, component: NativeComponent, msg: BrokerMessage) -> UnitResult:
        async with self._changed:
            self.messages.append(msg)
            self._changed.notify_all()
        return Ok(None)

    async def wait_for(self, count: int, timeout: float = WAIT) -> list[BrokerMessage]:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: len(self.messages) >= count)
        return self.messages


@pytest.fixture
async def make_lattice(nats_server: NatsServer, launcher: Path) -> AsyncIterator[MakeLattice]:
    """Start provider processes (the host's way) that are stopped when the test ends."""
    started: list[LocalLattice] = []

    async def _make(server: NatsServer | None = None, **options: object) -> LocalLattice:
        lattice = LocalLattice((server or nats_server).url, launcher, **options)  # type: ignore[arg-type]
        started.append(lattice)
        await lattice.start()
        return lattice

    yield _make
    for lattice in started:
        await lattice.stop()
