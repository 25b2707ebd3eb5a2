"""Hostile lattice peers against the real provider process: a raw TCP NATS client (asyncio
streams speaking the NATS client protocol, no nats-py) sends what nats-py would never send —
reply subjects and header blocks that are not UTF-8, header blocks that are not headers,
payloads that make handlers raise, floods of truncated invocations — to every subject the
provider subscribes to. Afterwards the provider must still answer health and deliver."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import statistics
from collections.abc import AsyncIterator

import pytest

from provider.host.lattice import LocalLattice
from provider.host.machine import free_port, resident_bytes
from provider.host.native import echo
from provider.host.nats_server import NatsServer
from provider.wrpc.codec import Err
from provider.wrpc.messaging import PUBLISH, REQUEST, BrokerMessage
from provider.wrpc.nats import WrpcTransport
from provider.wrpc.subjects import invocation_subject, prefix
from tests.conftest import MakeLattice
from tests.integration.test_server_mode import open_ws, recv_json, serve_links

WAIT = 10.0
_MSG = re.compile(rb"(H?MSG) (\S+) (\S+) (?:(\S+) )?(?:(\d+) )?(\d+)\r\n")


class RawPeer:
    """A NATS client written against the protocol text, so it can send any bytes at all."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._pongs: asyncio.Queue[None] = asyncio.Queue()
        self.messages: asyncio.Queue[tuple[bytes, bytes, bytes]] = asyncio.Queue()
        self._task = asyncio.create_task(self._read())
        self._sids = 0

    @classmethod
    async def connect(cls, server: NatsServer) -> RawPeer:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        await asyncio.wait_for(reader.readline(), WAIT)  # INFO
        writer.write(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"protocol":1}\r\n')
        peer = cls(reader, writer)
        await peer.ping()
        return peer

    async def _read(self) -> None:
        reader = self._reader
        while line := await reader.readline():
            if line.startswith(b"PING"):
                self._writer.write(b"PONG\r\n")
            elif line.startswith(b"PONG"):
                self._pongs.put_nowait(None)
            elif match := _MSG.match(line):
                body = await reader.readexactly(int(match.group(6)) + 2)
                header_size = int(match.group(5)) if match.group(1) == b"HMSG" else 0
                self.messages.put_nowait((match.group(2), match.group(4) or b"", body[header_size:-2]))

    def send(self, raw: bytes) -> None:
        """Write raw protocol bytes."""
        self._writer.write(raw)

    def pub(self, subject: bytes, payload: bytes, reply: bytes = b"", headers: bytes | None = None) -> None:
        """PUB, or HPUB when ``headers`` (any bytes) is given."""
        middle = b" " + reply if reply else b""
        if headers is None:
            self.send(b"PUB %s%s %d\r\n%s\r\n" % (subject, middle, len(payload), payload))
        else:
            total = len(headers) + len(payload)
            self.send(
                b"HPUB %s%s %d %d\r\n%s%s\r\n" % (subject, middle, len(headers), total, headers, payload)
            )

    def sub(self, subject: bytes) -> None:
        self._sids += 1
        self.send(b"SUB %s %d\r\n" % (subject, self._sids))

    async def ping(self) -> None:
        """Return once the server has processed everything sent so far."""
        self.send(b"PING\r\n")
        await self._writer.drain()
        await asyncio.wait_for(self._pongs.get(), WAIT)

    async def next_message(self) -> tuple[bytes, bytes, bytes]:
        """``(subject, reply, payload)`` of the next message for this peer's subscriptions."""
        return await asyncio.wait_for(self.messages.get(), WAIT)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


@pytest.fixture
async def peer(nats_server: NatsServer) -> AsyncIterator[RawPeer]:
    raw = await RawPeer.connect(nats_server)
    yield raw
    await raw.close()


BAD_HEADER_BLOCKS = [
    b"NATS/1.0",  # no line end: nats-py indexes past it
    b"abcd",  # not a header block at all
    b"NATS/1.0 \xff\xff\r\n\r\n",  # a status that is not UTF-8
    b"NATS/1.0 503 \xfe\xff\r\n\r\n",  # a description that is not UTF-8
    b"NATS/1.0\r\n\xff\xfe: \xfa\r\n\r\n",
]
DEEP_JSON = b"[" * 100_000


def subjects_of(lattice: LocalLattice) -> list[bytes]:
    """Every subject the provider subscribes to (its inbox aside)."""
    assert lattice.host is not None
    control = lattice.host.subjects(lattice.provider)
    target = prefix(lattice.lattice, lattice.provider_id)
    return [
        s.encode()
        for s in (
            control.health,
            control.shutdown,
            control.link_put,
            control.link_delete,
            control.config_update,
            invocation_subject(target, PUBLISH.instance, PUBLISH.name),
            invocation_subject(target, REQUEST.instance, REQUEST.name),
        )
    ]


async def provider_inbox(peer: RawPeer, lattice: LocalLattice) -> bytes:
    """The provider's own inbox prefix, as any lattice peer can learn it: from the handshake of
    an invocation whose params are not whole (its Rs lies inside the provider's wildcard inbox)."""
    peer.sub(b"_INBOX.spy")
    subject = subjects_of(lattice)[5]
    peer.pub(subject, b"\x05ab", reply=b"_INBOX.spy")
    _, rs, _ = await peer.next_message()
    return rs.rsplit(b".", 1)[0]


def hostile_messages(subject: bytes) -> list[tuple[bytes, bytes, bytes, bytes | None]]:
    """``(subject, payload, reply, headers)`` for every way a message can be wrong on ``subject``."""
    messages: list[tuple[bytes, bytes, bytes, bytes | None]] = [
        (subject, b"{}", b"_INBOX.\xff\xfe", None),  # reply subject not UTF-8
        (subject, DEEP_JSON, b"", None),  # a payload that makes a JSON parser raise
        (subject, b"\xff\x00\x01", b"_INBOX.x", None),  # neither JSON nor wRPC
        (subject, b"\x01a\xff\xff\xff\xff\x0f", b"_INBOX.big", None),  # a list declared as 4 GiB
    ]
    messages += [(subject, b"\x00", b"_INBOX.h", block) for block in BAD_HEADER_BLOCKS]
    return messages


async def assert_serving(lattice: LocalLattice, port: int) -> None:
    """Health answers healthy and a WebSocket frame is echoed through the component."""
    assert lattice.host is not None
    health = await lattice.host.health(lattice.provider, timeout=WAIT)
    assert health is not None, f"no health answer:\n{lattice.process.output}"
    assert health["healthy"] is True
    async with await open_ws(port) as ws:
        await ws.send(json.dumps({"subject": "after.hostile", "body": "still here"}))
        assert (await recv_json(ws))["body"] == "still here"


async def echo_provider(make_lattice: MakeLattice) -> tuple[LocalLattice, int]:
    lattice = await make_lattice()
    await lattice.component("echo", echo)
    port = free_port()
    await serve_links(lattice, "echo", port)
    return lattice, port


def lines_since(lattice: LocalLattice, since: int) -> list[str]:
    """The provider's log lines after the first ``since`` it wrote."""
    kept = list(lattice.process.lines)
    first = lattice.process.total_lines - len(kept)
    return kept[max(0, since - first) :]


async def test_nats_reader_survives_hostile_messages_on_every_subject(
    make_lattice: MakeLattice, peer: RawPeer
) -> None:
    """Non-UTF-8 reply subjects and header blocks, non-headers, deep JSON and garbage on every
    subject the provider subscribes to, and junk on its own inbox: health still answers and a
    WebSocket frame is still echoed."""
    lattice, port = await echo_provider(make_lattice)
    for subject in subjects_of(lattice):
        for message in hostile_messages(subject):
            peer.pub(message[0], message[1], message[2], message[3])
    inbox = await provider_inbox(peer, lattice)
    for token in (b"\xff\xfe", b"999999", b"1.results", b"2.params.\xff"):
        peer.pub(inbox + b"." + token, b"junk", b"_INBOX.\xff")
    for block in BAD_HEADER_BLOCKS:
        peer.pub(inbox + b".424242", b"", b"", block)
    await peer.ping()
    await assert_serving(lattice, port)


async def test_a_flood_of_undeliverable_messages_is_dropped_counted_and_logged_rate_limited(
    make_lattice: MakeLattice, peer: RawPeer
) -> None:
    """2,000 health requests and 2,000 invocations whose reply subject is not UTF-8: the provider
    logs a few lines saying so (with how many it dropped), not thousands, and keeps answering."""
    lattice, port = await echo_provider(make_lattice)
    subjects = subjects_of(lattice)
    health, publish = subjects[0], subjects[5]
    since = lattice.process.total_lines
    for i in range(2000):
        peer.pub(health, b"", b"_INBOX.\xff%d" % i)
        peer.pub(publish, b"\x00", b"_INBOX.\xfe%d" % i)
    await peer.ping()
    await assert_serving(lattice, port)
    reports = [
        line
        for line in lines_since(lattice, since)
        if "dropped a message" in line or "since the last report" in line
    ]
    assert len(reports) <= 20, "\n".join(reports)
    assert any("dropped a message" in line and "not UTF-8" in line for line in reports), reports
    assert any(publish.decode() in line and "not UTF-8" in line for line in reports), reports
    answer = await lattice.host.health(lattice.provider, timeout=WAIT)  # type: ignore[union-attr]
    assert answer is not None
    dropped = re.search(r"nats\.not_utf8 (\d+)", answer["message"])
    assert dropped is not None, answer["message"]  # health tells the truth (issue 10 item 10)
    assert int(dropped.group(1)) >= 2000  # the health requests (the invocations count as served.*)


async def test_truncated_invocations_and_a_4_gib_list_do_not_delay_a_good_call(
    make_lattice: MakeLattice, peer: RawPeer
) -> None:
    """1,200 invocations whose params never complete (more than the provider's handler slots) and
    a stream into a list declared as 4 GiB: a good call is not held up behind them, and the
    provider's resident memory grows by less than 20 MiB. (make bench-wrpc --hostile measures the
    delay itself; this asserts a generous bound.)"""
    lattice = await make_lattice()
    assert lattice.transport is not None
    transport: WrpcTransport = lattice.transport
    target = prefix(lattice.lattice, lattice.provider_id)
    publish = invocation_subject(target, PUBLISH.instance, PUBLISH.name).encode()
    loop = asyncio.get_running_loop()

    async def good_call() -> float:
        started = loop.time()
        result = await transport.invoke(
            target, PUBLISH, BrokerMessage("ws.broadcast", b"x", None), headers={"source-id": "nobody"}
        )
        assert isinstance(result, Err)  # answered by the handler: no such link
        return loop.time() - started

    baseline = statistics.median([await good_call() for _ in range(20)])
    rss_before = resident_bytes(lattice.process.pid)
    peer.sub(b"_INBOX.big")
    peer.pub(publish, b"\x01a\xff\xff\xff\xff\x0f" + b"\x00" * 1000, reply=b"_INBOX.big")
    _, rs, _ = await peer.next_message()  # the handshake
    chunk = b"\x00" * (1 << 20)
    for _ in range(64):
        peer.pub(rs + b".params", chunk)
    for i in range(1200):
        peer.pub(publish, b"\x05ab", reply=b"_INBOX.truncated.%d" % i)
    await peer.ping()
    delays = [await good_call() - baseline for _ in range(10)]
    rss_growth = resident_bytes(lattice.process.pid) - rss_before
    assert max(delays) < 1.0, f"good call delayed by {max(delays) * 1e3:.0f} ms"
    assert rss_growth < 20 << 20, f"resident memory grew by {rss_growth / (1 << 20):.1f} MiB"
