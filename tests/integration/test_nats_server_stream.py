"""NatsConnection's own parser against a NATS server that breaks the protocol: a scripted
server on loopback (asyncio streams) answers the handshake, then sends a malformed ``MSG``
or an ``INFO`` that is not JSON. The connection must say so, count it, reconnect and go on
delivering (nats-py's reader, on such an ``INFO``, raised inside its read task and stopped
reading for good while the connection looked alive)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from provider.host.nats_server import NatsServer
from provider.wrpc.connection import PROTOCOL_VIOLATION, NatsConnection, _Reader, connect
from provider.wrpc.nats import ensure_active

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


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (made with the openssl command)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_over_tls_messages_are_read_and_written_by_the_same_fast_path(
    certificate: tuple[Path, Path],
) -> None:
    """A real nats-server with TLS: the reader sits in front of the TLS transport as in front of
    plain TCP; direct deliveries, publishes from them and nats-py's own subscriptions all work."""
    await _over_tls(*certificate)


def test_over_tls_on_uvloop_too(certificate: tuple[Path, Path]) -> None:
    """The same on uvloop (the provider's loop), whose TLS transport is its own."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(_loop_module()) == "uvloop"
        runner.run(_over_tls(*certificate))


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


async def _over_tls(cert: Path, key: Path) -> None:
    tls = ssl.create_default_context(cafile=str(cert))
    config = f'tls {{ cert_file: "{cert}", key_file: "{key}" }}'
    with NatsServer(extra_config=config, jetstream=False) as server:
        url = server.url.replace("nats://", "tls://")
        nc = await connect(url, tls=tls)
        other = await connect(url, tls=tls)
        try:
            assert isinstance(nc._transport._io_writer.transport.get_protocol(), _Reader)  # type: ignore[union-attr]

            def answer(subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
                nc.publish_now(reply.decode(), data.upper())

            await nc.subscribe_direct("shout", answer)
            seen: asyncio.Queue[bytes] = asyncio.Queue()

            async def plain(msg: Any) -> None:
                await seen.put(msg.data)

            await nc.subscribe("plain", cb=plain)  # one of nats-py's own, through its reader task
            await ensure_active(nc)  # one flush's PING may overtake the SUBs (spec §6.2)
            for i in range(50):
                reply = await other.request("shout", b"hello %d" % i, timeout=WAIT)
                assert reply.data == b"HELLO %d" % i
            await other.publish("plain", b"for nats-py")
            assert await asyncio.wait_for(seen.get(), WAIT) == b"for nats-py"
            assert PROTOCOL_VIOLATION not in nc.drops.counts
        finally:
            await other.close()
            await nc.close()


def _inside_the_read() -> bool:
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "_on_data":
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


async def test_what_a_read_publishes_is_written_in_that_turn_unless_it_woke_tasks(
    nats_server: NatsServer,
) -> None:
    """A direct handler's publish goes out at the end of the read that caused it (no extra turn
    of the event loop); when the read also woke a task, the write waits for that task's turn,
    so what the task publishes goes in the same write."""
    nc = await connect(nats_server.url)
    peer = await connect(nats_server.url)
    try:
        writes: list[tuple[bool, list[str]]] = []
        transport = nc._transport
        assert transport is not None
        write = transport.writelines

        def recorded(lines: list[bytes]) -> None:
            writes.append((_inside_the_read(), [line.split(b" ")[1].decode() for line in lines]))
            write(lines)

        transport.writelines = recorded  # type: ignore[method-assign,assignment]

        def at_once(subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
            nc.publish_now("out.first", b"")

        async def in_a_task() -> None:
            nc.publish_now("out.task", b"")

        def waking(subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
            nc.publish_now("out.second", b"")
            asyncio.get_running_loop().create_task(in_a_task())

        await nc.subscribe_direct("at-once", at_once)
        await nc.subscribe_direct("waking", waking)
        got = await peer.subscribe("out.>")
        await ensure_active(nc)  # one flush's PING may overtake the SUBs (spec §6.2)
        await ensure_active(peer)
        expected = {"at-once": [(True, ["out.first"])], "waking": [(False, ["out.second", "out.task"])]}
        for subject, written in expected.items():
            writes.clear()
            await peer.publish(subject, b"")
            await peer.flush()
            for _ in written[0][1]:
                await asyncio.wait_for(got.next_msg(), WAIT)
            assert writes == written
    finally:
        await peer.close()
        await nc.close()
