"""NatsConnection's own parser against a NATS server that breaks the protocol: a scripted
server on loopback (asyncio streams) answers the handshake, then sends a malformed ``MSG``
or an ``INFO`` that is not JSON. The connection must say so, count it, reconnect and go on
delivering (nats-py's reader, on such an ``INFO``, raised inside its read task and stopped
reading for good while the connection looked alive)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from provider.wrpc.connection import PROTOCOL_VIOLATION, NatsConnection, connect

WAIT = 10.0
INFO = b'INFO {"server_id":"scripted","version":"2.10.0","proto":1,"headers":true,"max_payload":1048576}\r\n'


class ScriptedServer:
    """Speaks just enough NATS: INFO, PONG to every PING, and for the n-th connection sends
    ``breakage[n]`` once the client has subscribed (``None``: a good message to sid 1)."""

    def __init__(self, breakage: list[bytes | None]) -> None:
        self.breakage = breakage
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = self.connections
        self.connections += 1
        writer.write(INFO)
        try:
            while line := await reader.readline():
                if line.startswith(b"PING"):
                    writer.write(b"PONG\r\n")
                elif line.startswith(b"SUB "):
                    sid = line.split()[-1]
                    bad = self.breakage[index] if index < len(self.breakage) else None
                    writer.write(bad if bad is not None else b"MSG greet %s 5\r\nhello\r\n" % sid)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"nats://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


@contextlib.asynccontextmanager
async def client(url: str) -> AsyncIterator[tuple[NatsConnection, asyncio.Queue[bytes]]]:
    nc = await connect(url, reconnect_time_wait=0.05, max_reconnect_attempts=-1, allow_reconnect=True)
    got: asyncio.Queue[bytes] = asyncio.Queue()
    await nc.subscribe_direct("greet", lambda subject, reply, data, headers: got.put_nowait(data))
    try:
        yield nc, got
    finally:
        await nc.close()


@pytest.mark.parametrize(
    "breakage",
    [
        b"MSG greet 1 five\r\nhello\r\n",  # a size that is not a number
        b"MSG greet 1 5\r\nhelloXX",  # a body not followed by CRLF
        b"HMSG greet 1 9 5\r\nhello\r\n",  # a header block larger than the message
        b"INFO {not json\r\n",  # nats-py's own parser raised JSONDecodeError inside the reader
    ],
)
async def test_a_server_that_breaks_the_protocol_is_dropped_counted_and_reconnected(
    breakage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    scripted = ScriptedServer([breakage, None])
    async with scripted as url, client(url) as (nc, got):
        assert await asyncio.wait_for(got.get(), WAIT) == b"hello"  # after the reconnect
        assert scripted.connections == 2
        assert nc.drops.counts[PROTOCOL_VIOLATION] == 1
        assert any("not the NATS protocol" in r.getMessage() for r in caplog.records)


async def test_messages_split_across_reads_and_between_other_operations_are_delivered() -> None:
    body = bytes(range(256)) * 4096  # 1 MiB: many reads
    stream = b"PING\r\n+OK\r\nMSG greet 1 r %d\r\n%s\r\nPING\r\nMSG greet 1 3\r\nend\r\n" % (len(body), body)
    scripted = ScriptedServer([stream])
    async with scripted as url, client(url) as (nc, got):
        assert await asyncio.wait_for(got.get(), WAIT) == body
        assert await asyncio.wait_for(got.get(), WAIT) == b"end"
        assert scripted.connections == 1
        assert PROTOCOL_VIOLATION not in nc.drops.counts
