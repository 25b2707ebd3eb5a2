"""Fixtures shared by every test: real nats-server processes on loopback, NATS connections."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import nats
import pytest
from nats.aio.client import Client as NatsClient

from provider.host.nats_server import NatsServer

Connect = Callable[..., Awaitable[NatsClient]]


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
    opened: list[NatsClient] = []

    async def _connect(server: NatsServer, **options: object) -> NatsClient:
        nc = await nats.connect(server.url, connect_timeout=5, max_reconnect_attempts=0, **options)
        opened.append(nc)
        return nc

    yield _connect
    for nc in opened:
        if not nc.is_closed:
            await nc.close()
