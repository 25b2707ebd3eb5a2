"""Client mode through the real provider process, a real nats-server and real WebSocket servers.

The provider connects out to servers these tests run on 127.0.0.1: the websockets library's
(:class:`Peer`) and websocat's (a Rust program). Components are Python functions served over
wRPC exactly where a host serves a wasm component's exports.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request

from provider.host.lattice import LocalLattice, consumer_link, handler_link
from provider.host.machine import free_port
from provider.host.native import NativeComponent, accept, echo
from provider.wasmcloud.links import LinkDefinition
from provider.wrpc.codec import Err, Ok
from provider.wrpc.messaging import BrokerMessage, UnitResult
from tests.conftest import Inbox, MakeLattice

PROVIDER = "websocket-provider"
WAIT = 10.0
FAST_RECONNECT = {"RECONNECT_MIN_MS": "20", "RECONNECT_MAX_MS": "100"}
WEBSOCAT = os.path.join(os.path.dirname(sys.executable), "websocat")
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"

Frame = str | bytes
OnFrame = Callable[[ServerConnection, Frame], Awaitable[None]]


@dataclass
class Closed:
    """How a connection to a :class:`Peer` ended, seen from the server."""

    code: int | None
    reason: str | None
    by_provider: bool


class Peer:
    """A WebSocket server (the websockets library) on 127.0.0.1 for the provider to connect to.

    What it sees is queued (connections, frames, closes), so a test awaits each with a deadline.
    ``on_frame`` runs for every frame before it is queued (to answer requests, say). With
    ``hold_handshakes`` every opening handshake waits, before the server answers it, until the
    test sets the event queued with its request in :attr:`handshakes`.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        tls: Any = None,
        subprotocols: list[str] | None = None,
        on_frame: OnFrame | None = None,
        ping_interval: float | None = 20.0,
        hold_handshakes: bool = False,
    ) -> None:
        self.port = port or free_port()
        self.hold_handshakes = hold_handshakes
        self.handshakes: asyncio.Queue[tuple[Request, asyncio.Event]] = asyncio.Queue()
        self._held: list[asyncio.Event] = []
        self.ping_interval = ping_interval
        self.tls = tls
        self.subprotocols = subprotocols
        self.on_frame = on_frame
        self.connections: asyncio.Queue[ServerConnection] = asyncio.Queue()
        self.frames: asyncio.Queue[Frame] = asyncio.Queue()
        self.closed: asyncio.Queue[Closed] = asyncio.Queue()
        self._server: Server | None = None

    @property
    def uri(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://127.0.0.1:{self.port}/feed"

    async def start(self) -> Peer:
        self._server = await serve(
            self._handle,
            "127.0.0.1",
            self.port,
            ssl=self.tls,
            subprotocols=self.subprotocols,  # type: ignore[arg-type]
            compression=None,
            ping_interval=self.ping_interval,
            process_request=self._hold if self.hold_handshakes else None,
        )
        return self

    async def _hold(self, _conn: ServerConnection, request: Request) -> None:
        release = asyncio.Event()
        self._held.append(release)
        self.handshakes.put_nowait((request, release))
        await release.wait()

    async def handshake(self) -> tuple[Request, asyncio.Event]:
        return await asyncio.wait_for(self.handshakes.get(), WAIT)

    async def stop(self) -> None:
        """Stop listening and close every connection with 1001, as a server that restarts does."""
        for release in self._held:
            release.set()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, conn: ServerConnection) -> None:
        self.connections.put_nowait(conn)
        try:
            async for frame in conn:
                if self.on_frame is not None:
                    await self.on_frame(conn, frame)
                self.frames.put_nowait(frame)
        except ConnectionClosed:
            pass
        finally:
            rcvd = conn.protocol.close_rcvd
            by_provider = bool(conn.protocol.close_rcvd_then_sent)
            self.closed.put_nowait(
                Closed(rcvd.code if rcvd else None, rcvd.reason if rcvd else None, by_provider)
            )

    async def connection(self) -> ServerConnection:
        return await asyncio.wait_for(self.connections.get(), WAIT)

    async def frame(self) -> Frame:
        return await asyncio.wait_for(self.frames.get(), WAIT)

    async def json_frame(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(await self.frame())
        return result


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    """A started :class:`Peer`, stopped when the test ends."""
    server = await Peer().start()
    yield server
    await server.stop()


async def put_client_links(
    lattice: LocalLattice,
    component: str,
    uri: str,
    *,
    handler: bool = True,
    consumer: bool = True,
    secrets: dict[str, str | bytes] | None = None,
    name: str = "default",
    config: Mapping[str, str] | None = None,
    **settings: str,
) -> list[LinkDefinition]:
    """Put the component's client-mode links (handler and/or consumer) to ``uri`` with the same
    config (``config`` and ``settings``); each must be applied."""
    merged = {"MODE": "client", "URI": uri, **(config or {}), **settings}
    links = []
    if handler:
        links.append(handler_link(PROVIDER, component, name, **merged))
    if consumer:
        links.append(consumer_link(component, PROVIDER, name, **merged))
    for link in links:
        applied = await lattice.put_link(link, secrets)
        assert applied is not None
        assert "rejected link" not in applied, applied
    return links


async def health_message(lattice: LocalLattice) -> str:
    assert lattice.host is not None
    health = await lattice.host.health(lattice.provider)
    assert health is not None
    message: str = health["message"]
    return message


def envelope(subject: str, body: str, reply_to: str | None = None) -> str:
    obj = {"subject": subject, "body": body}
    if reply_to is not None:
        obj["reply_to"] = reply_to
    return json.dumps(obj)


# -- the handshake ------------------------------------------------------------------------------------


async def test_handshake_carries_token_headers_and_subprotocol(make_lattice: MakeLattice) -> None:
    """The server receives AUTH_TOKEN (a link secret) as a Bearer token, every HEADER_<Name>, the
    URI's path and query, and the SUBPROTOCOLS offer; the token never appears in the provider's log.
    The component's handler and consumer links share this one connection."""
    server = await Peer(subprotocols=["chat.v2"]).start()
    try:
        lattice = await make_lattice()
        await lattice.component("reader", accept)
        await put_client_links(
            lattice,
            "reader",
            server.uri + "?room=blue",
            secrets={"AUTH_TOKEN": "s3cret-token"},
            config={"HEADER_X-Tenant": "acme", "HEADER_X-Trace": "t 1", "SUBPROTOCOLS": "chat.v1, chat.v2"},
        )
        conn = await server.connection()
        headers = conn.request.headers if conn.request else None
        assert headers is not None
        assert headers["Authorization"] == "Bearer s3cret-token"
        assert headers["X-Tenant"] == "acme"
        assert headers["X-Trace"] == "t 1"
        assert headers["Sec-WebSocket-Protocol"] == "chat.v1, chat.v2"
        assert conn.subprotocol == "chat.v2"
        assert conn.request is not None
        assert conn.request.path == "/feed?room=blue"
        await lattice.process.wait_for_line(r"reader: connected to ws://127\.0\.0\.1", WAIT)
        assert "1/1 client connection(s) open" in await health_message(lattice)
        assert server.connections.empty(), "the two links opened two connections"
        assert "s3cret-token" not in lattice.process.output
    finally:
        await server.stop()


async def test_bad_client_config_is_rejected_with_the_key(make_lattice: MakeLattice, tmp_path: Path) -> None:
    """A client-mode link without URI, with a URI that is not ws(s)://, with a header the handshake
    owns, or with a TLS_CA that does not load, is rejected whole, naming the key."""
    lattice = await make_lattice()
    await lattice.component("broken", accept)
    cases = [
        ({}, "URI is missing"),
        ({"URI": "http://127.0.0.1:1/x"}, "URI='http://127.0.0.1:1/x': must be a ws:// or wss:// URL"),
        ({"URI": "ws://127.0.0.1:1/x", "HEADER_Upgrade": "h2c"}, "HEADER_Upgrade: the WebSocket handshake"),
        (
            {"URI": "ws://127.0.0.1:1/x", "RECONNECT_MIN_MS": "500", "RECONNECT_MAX_MS": "100"},
            "RECONNECT_MAX_MS",
        ),
        ({"URI": "wss://127.0.0.1:1/x", "TLS_CA": str(tmp_path / "nope.pem")}, "TLS_CA could not be loaded"),
    ]
    for config, expected in cases:
        line = await lattice.put_link(handler_link(PROVIDER, "broken", MODE="client", **config))
        assert line is not None
        assert "rejected link" in line, line
        assert expected in line, line
    assert "0/0 client connection(s) open" in await health_message(lattice)


# -- frames, publish, reply-to ------------------------------------------------------------------------


async def test_frames_reach_the_component_in_order_with_the_connection_as_reply_to(
    make_lattice: MakeLattice, peer: Peer
) -> None:
    """Every frame the server sends is delivered by handle-message, in order; reply-to is the
    connection's subject ws.conn.<id>, with the envelope's own reply_to appended when it had one."""
    lattice = await make_lattice()
    inbox = Inbox()
    await lattice.component("sink", inbox.record)
    await put_client_links(lattice, "sink", peer.uri, consumer=False)
    conn = await peer.connection()
    for i in range(200):
        await conn.send(envelope("ticks", str(i)))
    await conn.send(envelope("question", "?", reply_to="client-7.inbox"))
    messages = await inbox.wait_for(201)
    assert [m.body for m in messages[:200]] == [str(i).encode() for i in range(200)]
    assert {m.subject for m in messages[:200]} == {"ticks"}
    reply_to = messages[0].reply_to
    assert reply_to is not None
    assert re.fullmatch(r"ws\.conn\.[a-z2-7]{10}\.[0-9a-f]{32}", reply_to)
    assert all(m.reply_to == reply_to for m in messages[:200])
    assert messages[200].reply_to == f"{reply_to}.client-7.inbox"


async def test_publish_to_reply_to_goes_back_on_the_connection(make_lattice: MakeLattice, peer: Peer) -> None:
    """consumer.publish to a frame's reply-to sends on that connection; with the envelope's own
    reply_to, the frame sent back carries it as its subject."""
    lattice = await make_lattice()
    await lattice.component("echo", echo)
    await put_client_links(lattice, "echo", peer.uri)
    conn = await peer.connection()
    await conn.send(envelope("ping", "plain"))
    answer = await peer.json_frame()
    assert re.fullmatch(r"ws\.conn\.[a-z2-7]{10}\.[0-9a-f]{32}", answer["subject"])
    assert answer["body"] == "plain"
    await conn.send(envelope("ping", "with reply_to", reply_to="rpc.42"))
    assert await peer.json_frame() == {"subject": "rpc.42", "body": "with reply_to"}


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
async def test_publish_reaches_the_server(make_lattice: MakeLattice, peer: Peer, fmt: str) -> None:
    """consumer.publish on a client-mode consumer link sends an envelope with the subject, the body
    (bytes intact) and the component's reply_to."""
    lattice = await make_lattice()
    component = await lattice.component("sender", accept)
    await put_client_links(lattice, "sender", peer.uri, handler=False, FORMAT=fmt)
    assert await component.publish(BrokerMessage("orders.new", b"\x00\xffpayload", "inbox.7")) == Ok(None)
    frame = await peer.frame()
    if fmt == "json":
        assert isinstance(frame, str)
        assert json.loads(frame) == {
            "subject": "orders.new",
            "body_base64": "AP9wYXlsb2Fk",
            "reply_to": "inbox.7",
        }
    else:
        assert isinstance(frame, bytes)
        assert msgpack.unpackb(frame, raw=False) == {
            "subject": "orders.new",
            "body": b"\x00\xffpayload",
            "reply_to": "inbox.7",
        }


# -- request ------------------------------------------------------------------------------------------


def answering(fmt: str, noise_first: bool = False) -> OnFrame:
    """A server side that answers every envelope with a reply_to: body "answer to <body>" on the
    reply_to subject; with ``noise_first``, it first sends an unrelated frame on that subject's
    neighbour to show that only the correlation subject is taken as the answer."""

    async def on_frame(conn: ServerConnection, frame: Frame) -> None:
        if fmt == "json":
            request = json.loads(frame)
            if request.get("reply_to"):
                if noise_first:
                    await conn.send(envelope("unrelated", "noise"))
                await conn.send(envelope(request["reply_to"], f"answer to {request['body']}"))
        else:
            assert isinstance(frame, bytes)
            request = msgpack.unpackb(frame, raw=False)
            if request.get("reply_to"):
                body = b"answer to " + request["body"]
                await conn.send(
                    msgpack.packb({"subject": request["reply_to"], "body": body, "reply_to": None})
                )

    return on_frame


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
async def test_request_returns_the_answer_to_its_correlation_subject(
    make_lattice: MakeLattice, fmt: str
) -> None:
    """request sends an envelope whose reply_to is a fresh ws.req.<id> subject and returns the first
    frame addressed to it; an unrelated frame in between is delivered to the handler as usual."""
    server = await Peer(on_frame=answering(fmt, noise_first=fmt == "json")).start()
    try:
        lattice = await make_lattice()
        inbox = Inbox()
        component = await lattice.component("asker", inbox.record)
        await put_client_links(lattice, "asker", server.uri, FORMAT=fmt)
        first = await component.request("prices.get", b"EURUSD", 5000)
        second = await component.request("prices.get", b"GBPUSD", 5000)
        assert isinstance(first, Ok)
        assert isinstance(second, Ok)
        assert first.value.body == b"answer to EURUSD"
        assert second.value.body == b"answer to GBPUSD"
        assert re.fullmatch(r"ws\.req\.[0-9a-f]{32}", first.value.subject)
        assert first.value.subject != second.value.subject
        sent = [await server.frame(), await server.frame()]
        if fmt == "json":
            assert [json.loads(f)["reply_to"] for f in sent] == [first.value.subject, second.value.subject]
            assert [m.subject for m in await inbox.wait_for(2)] == ["unrelated", "unrelated"]
    finally:
        await server.stop()


async def test_request_times_out_and_a_late_answer_is_dropped(make_lattice: MakeLattice, peer: Peer) -> None:
    """Without an answer, request returns err("timeout …") after timeout-ms; an answer that comes
    later is logged and dropped, not delivered to the handler."""
    lattice = await make_lattice()
    inbox = Inbox()
    component = await lattice.component("asker", inbox.record)
    await put_client_links(lattice, "asker", peer.uri)
    conn = await peer.connection()
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await component.request("slow.service", b"?", 300)
    elapsed = loop.time() - started
    assert isinstance(result, Err)
    assert result.value.startswith("timeout after 300 ms waiting for an answer to 'slow.service'")
    assert 0.3 <= elapsed < 5
    request = await peer.json_frame()
    since = lattice.process.total_lines
    await conn.send(envelope(request["reply_to"], "too late"))
    await conn.send(envelope("after", "the late answer"))
    await lattice.process.wait_for_line(
        r"dropped an answer on 'ws\.req\.[0-9a-f]+'.*request is over", WAIT, since
    )
    assert [m.subject for m in await inbox.wait_for(1)] == ["after"]


async def test_a_component_can_request_while_it_handles_a_frame(make_lattice: MakeLattice) -> None:
    """A handler that calls request gets its answer even when the server sends other frames before
    answering: answers are matched as they are read, not queued behind deliveries."""

    async def on_frame(conn: ServerConnection, frame: Frame) -> None:
        request = json.loads(frame)
        if request.get("reply_to"):
            await conn.send(envelope(request["reply_to"], "the answer"))

    server = await Peer(on_frame=on_frame).start()
    try:
        lattice = await make_lattice()
        answers: asyncio.Queue[Any] = asyncio.Queue()

        async def ask_back(component: NativeComponent, msg: BrokerMessage) -> UnitResult:
            if msg.subject == "ask":
                answers.put_nowait(await component.request("lookup", msg.body, 5000))
            return Ok(None)

        await lattice.component("asker", ask_back)
        await put_client_links(lattice, "asker", server.uri)
        conn = await server.connection()
        await conn.send(envelope("ask", "q"))
        for i in range(5):  # while "ask" is being handled, so they wait in the backlog
            await conn.send(envelope("tick", str(i)))
        answer = await asyncio.wait_for(answers.get(), WAIT)
        assert isinstance(answer, Ok), answer
        assert answer.value.body == b"the answer"
    finally:
        await server.stop()


async def test_request_fails_at_once_when_the_connection_closes(make_lattice: MakeLattice) -> None:
    """A connection that closes before the answer comes fails its requests in flight with an err
    that says so, instead of letting them wait out their timeout."""

    async def hang_up(conn: ServerConnection, frame: Frame) -> None:
        await conn.close(4000, "maintenance")

    server = await Peer(on_frame=hang_up).start()
    try:
        lattice = await make_lattice()
        component = await lattice.component("asker", accept)
        await put_client_links(lattice, "asker", server.uri, handler=False, config=FAST_RECONNECT)
        loop = asyncio.get_running_loop()
        started = loop.time()
        result = await component.request("doomed", b"", 8000)
        assert isinstance(result, Err)
        assert (
            result.value == f"the connection to {server.uri} closed (4000 maintenance) before the answer came"
        )
        assert loop.time() - started < 4
    finally:
        await server.stop()


async def test_reply_to_works_with_a_server_mode_consumer_link(make_lattice: MakeLattice, peer: Peer) -> None:
    """A component that receives on a client-mode handler link can answer on reply-to even if its
    consumer link is MODE=server; another component cannot send on that connection."""
    lattice = await make_lattice()
    inbox = Inbox()

    async def record_and_echo(component: NativeComponent, msg: BrokerMessage) -> UnitResult:
        await inbox.record(component, msg)
        return await echo(component, msg)

    await lattice.component("echo", record_and_echo)
    intruder = await lattice.component("intruder", accept)
    await put_client_links(lattice, "echo", peer.uri, consumer=False)
    await lattice.put_link(consumer_link("echo", PROVIDER, MODE="server"))
    await lattice.put_link(consumer_link("intruder", PROVIDER, MODE="server"))
    conn = await peer.connection()
    await conn.send(envelope("ping", "answered"))
    assert (await peer.json_frame())["body"] == "answered"
    [received] = await inbox.wait_for(1)
    assert received.reply_to is not None
    result = await intruder.publish(BrokerMessage(received.reply_to, b"intrusion", None))
    assert isinstance(result, Err)
    assert "of component 'intruder'" in result.value


async def test_raw_format_frames_and_request_error(make_lattice: MakeLattice, peer: Peer) -> None:
    """FORMAT=raw: each frame is a body on SUBJECT, publish sends the bare body, and request returns
    an err that names the setting to change."""
    lattice = await make_lattice()
    inbox = Inbox()
    component = await lattice.component("raw", inbox.record)
    await put_client_links(lattice, "raw", peer.uri, FORMAT="raw", SUBJECT="feed.raw")
    conn = await peer.connection()
    await conn.send("text as is")
    await conn.send(b"\x00\x01")
    first, second = await inbox.wait_for(2)
    assert (first.subject, first.body, second.body) == ("feed.raw", b"text as is", b"\x00\x01")
    assert await component.publish(BrokerMessage("ignored.subject", b"bare body", None)) == Ok(None)
    assert await peer.frame() == "bare body"
    result = await component.request("x", b"", 1000)
    assert isinstance(result, Err)
    assert "set FORMAT=json or FORMAT=msgpack" in result.value


async def test_bad_and_unhandled_frames_are_reported(make_lattice: MakeLattice, peer: Peer) -> None:
    """A frame that does not parse is answered on ws.error and counted; with no handler link, frames
    are dropped with a log line; the connection carries on."""
    lattice = await make_lattice()
    component = await lattice.component("sender", accept)
    await put_client_links(lattice, "sender", peer.uri, handler=False)
    conn = await peer.connection()
    await conn.send("{not json")
    error = await peer.json_frame()
    assert error["subject"] == "ws.error"
    assert "invalid JSON" in error["body"]
    await conn.send(envelope("news", "nobody listens"))
    await lattice.process.wait_for_line(r"sender: dropped a frame on 'news' .*no handler link", WAIT)
    assert await component.publish(BrokerMessage("still", b"here", None)) == Ok(None)
    assert (await peer.json_frame())["body"] == "here"


# -- TLS ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca_pem: str
    ca_path: Path
    cert_path: Path
    key_path: Path


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throw-away CA and a server certificate for 127.0.0.1 it signed (openssl CLI)."""
    if not os.path.exists(OPENSSL):
        pytest.skip(f"{OPENSSL} is needed to make test certificates")
    d = tmp_path_factory.mktemp("pki")

    def run(*args: str) -> None:
        subprocess.run([OPENSSL, *args], check=True, capture_output=True, timeout=WAIT)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run(
        "req",
        "-x509",
        *ec,
        "-keyout",
        str(d / "ca.key"),
        "-out",
        str(d / "ca.pem"),
        "-days",
        "2",
        "-subj",
        "/CN=client-mode test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    run("req", *ec, "-keyout", str(d / "server.key"), "-out", str(d / "server.csr"), "-subj", "/CN=127.0.0.1")
    (d / "ext.cnf").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
        "basicConstraints=CA:FALSE\nauthorityKeyIdentifier=keyid\n"
    )
    run(
        "x509",
        "-req",
        "-in",
        str(d / "server.csr"),
        "-CA",
        str(d / "ca.pem"),
        "-CAkey",
        str(d / "ca.key"),
        "-CAcreateserial",
        "-out",
        str(d / "server.pem"),
        "-days",
        "2",
        "-extfile",
        str(d / "ext.cnf"),
    )
    return Pki((d / "ca.pem").read_text(), d / "ca.pem", d / "server.pem", d / "server.key")


async def test_wss_with_a_custom_ca(make_lattice: MakeLattice, pki: Pki) -> None:
    """wss:// to a server whose certificate a private CA signed: TLS_CA as PEM text from a link secret
    or as a file path is trusted; without TLS_CA (system CAs only) verification fails and is retried."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.cert_path, pki.key_path)
    server = await Peer(tls=context).start()
    try:
        lattice = await make_lattice()
        await lattice.component("secret-ca", echo)
        await lattice.component("file-ca", echo)
        await lattice.component("no-ca", accept)
        await put_client_links(lattice, "secret-ca", server.uri, secrets={"TLS_CA": pki.ca_pem})
        await put_client_links(lattice, "file-ca", server.uri, TLS_CA=str(pki.ca_path))
        for _ in range(2):
            conn = await server.connection()
            await conn.send(envelope("hello", "over tls"))
            assert (await server.json_frame())["body"] == "over tls"
        await put_client_links(lattice, "no-ca", server.uri, config=FAST_RECONNECT)
        line = await lattice.process.wait_for_line(r"no-ca: cannot connect to wss://", WAIT)
        assert "CERTIFICATE_VERIFY_FAILED" in line
        assert server.connections.empty()
    finally:
        await server.stop()


# -- reconnecting, giving up, closing -----------------------------------------------------------------


def delays(lines: list[str], pattern: str) -> list[float]:
    return [float(m.group(1)) for line in lines if (m := re.search(pattern, line))]


async def wait_line_after(lattice: LocalLattice, pattern: str, since: int) -> int:
    """Wait for a log line matching ``pattern`` after line ``since``; the count just past it."""
    line = await lattice.process.wait_for_line(pattern, WAIT, since)
    lines = list(lattice.process.lines)
    first = lattice.process.total_lines - len(lines)
    index = max(i for i, text in enumerate(lines, start=first) if text == line and i >= since)
    return index + 1


async def test_server_restart_reconnects_with_backoff(make_lattice: MakeLattice) -> None:
    """When the server goes away, the provider retries with growing, jittered delays within
    RECONNECT_MIN_MS..RECONNECT_MAX_MS, reconnects once the server is back, and delivers again
    with the same reply subject."""
    server = await Peer().start()
    port = server.port
    lattice = await make_lattice()
    inbox = Inbox()
    await lattice.component("sub", inbox.record)
    await put_client_links(lattice, "sub", server.uri, RECONNECT_MIN_MS="40", RECONNECT_MAX_MS="160")
    conn = await server.connection()
    await conn.send(envelope("before", "1"))
    [before] = await inbox.wait_for(1)
    since = lattice.process.total_lines
    await server.stop()
    await lattice.process.wait_for_line(r"sub: connection to .* closed \(1001", WAIT, since)
    for _ in range(4):  # four failed attempts while nothing listens
        since = await wait_line_after(lattice, r"sub: cannot connect to ws://.*retrying in", since)
    server = await Peer(port).start()
    try:
        conn = await server.connection()
        await conn.send(envelope("after", "2"))
        _, after = await inbox.wait_for(2)
        assert after.reply_to == before.reply_to
        waits = delays(list(lattice.process.lines), r"sub: .*(?:retrying|reconnecting) in ([0-9.]+)s")
        assert len(waits) >= 5
        assert all(0.04 <= w <= 0.16 for w in waits), waits
        # Step 1 waits 40..80 ms; from step 2 on the ceiling is 160 ms and the delay its upper half.
        assert waits[0] <= 0.08, waits
        assert min(waits[1:]) >= 0.08, f"the delays did not grow: {waits}"
    finally:
        await server.stop()


async def test_max_reconnect_attempts_gives_up_and_publish_says_so(make_lattice: MakeLattice) -> None:
    """With MAX_RECONNECT_ATTEMPTS=2 the provider stops after two failed reconnects (and a link whose
    server never answered, after its first attempt and one reconnect with =1); publish then returns
    at once an err saying it gave up, instead of waiting CONNECT_TIMEOUT_SEC."""
    server = await Peer().start()
    lattice = await make_lattice()
    component = await lattice.component("fragile", accept)
    await put_client_links(
        lattice,
        "fragile",
        server.uri,
        MAX_RECONNECT_ATTEMPTS="2",
        CONNECT_TIMEOUT_SEC="5",
        config=FAST_RECONNECT,
    )
    await server.connection()
    await server.stop()
    line = await lattice.process.wait_for_line(r"fragile: gave up", WAIT)
    assert "gave up after 2 reconnect attempt(s) (MAX_RECONNECT_ATTEMPTS=2)" in line
    assert len(re.findall(r"fragile: cannot connect", lattice.process.output)) == 1
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await component.publish(BrokerMessage("anything", b"", None))
    assert isinstance(result, Err)
    assert result.value.startswith("not connected to ws://127.0.0.1:")
    assert "gave up after 2 reconnect attempt(s)" in result.value
    assert loop.time() - started < 2
    assert "1 given up" in await health_message(lattice)

    await lattice.component("never", accept)
    await put_client_links(
        lattice, "never", f"ws://127.0.0.1:{free_port()}/", MAX_RECONNECT_ATTEMPTS="1", config=FAST_RECONNECT
    )
    line = await lattice.process.wait_for_line(r"never: gave up", WAIT)
    assert "gave up after 1 reconnect attempt(s)" in line


async def test_publish_while_disconnected_waits_then_errs(make_lattice: MakeLattice) -> None:
    """While not connected, publish waits up to CONNECT_TIMEOUT_SEC: with no server it then returns
    err("not connected …") (logged); a server that comes up within the wait gets the message."""
    port = free_port()
    lattice = await make_lattice()
    component = await lattice.component("early", accept)
    await put_client_links(
        lattice,
        "early",
        f"ws://127.0.0.1:{port}/",
        handler=False,
        CONNECT_TIMEOUT_SEC="0.5",
        config=FAST_RECONNECT,
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await component.publish(BrokerMessage("too.soon", b"1", None))
    elapsed = loop.time() - started
    assert isinstance(result, Err)
    assert result.value.startswith(f"not connected to ws://127.0.0.1:{port}/: no connection within ")
    assert "CONNECT_TIMEOUT_SEC=0.5s" in result.value
    assert 0.5 <= elapsed < 5, elapsed
    await lattice.process.wait_for_line(r"early: publish on 'too\.soon' dropped: not connected", WAIT)

    server = Peer(port)
    waiting = asyncio.create_task(component.publish(BrokerMessage("in.time", b"2", None)))
    await server.start()
    try:
        assert await asyncio.wait_for(waiting, WAIT) == Ok(None)
        assert await server.json_frame() == {"subject": "in.time", "body": "2"}
    finally:
        await server.stop()


async def test_link_delete_closes_with_1000_and_stops_reconnecting(
    make_lattice: MakeLattice, peer: Peer
) -> None:
    """The connection lives while either link does; deleting the last one closes it with 1000, and
    the provider does not connect again."""
    lattice = await make_lattice()
    inbox = Inbox()
    component = await lattice.component("leaver", inbox.record)
    handler, consumer = await put_client_links(lattice, "leaver", peer.uri, config=FAST_RECONNECT)
    conn = await peer.connection()
    await lattice.delete_link(handler)
    assert await component.publish(BrokerMessage("still.linked", b"", None)) == Ok(None)
    assert (await peer.json_frame())["subject"] == "still.linked"
    await conn.send(envelope("unheard", ""))
    await lattice.process.wait_for_line(r"leaver: dropped a frame on 'unheard'", WAIT)
    await lattice.delete_link(consumer)
    closed = await asyncio.wait_for(peer.closed.get(), WAIT)
    assert closed == Closed(1000, "link deleted", by_provider=True)
    assert "0/0 client connection(s) open" in await health_message(lattice)
    # RECONNECT_MAX_MS is 100 ms: ten times that without a new connection means none is coming.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(peer.connections.get(), 1.0)
    assert inbox.messages == []


async def test_shutdown_closes_every_connection_with_1000(make_lattice: MakeLattice, peer: Peer) -> None:
    """The host's shutdown request closes each client connection with 1000 and the process exits 0."""
    lattice = await make_lattice()
    for name in ("one", "two"):
        await lattice.component(name, accept)
        await put_client_links(lattice, name, peer.uri)
    await peer.connection()
    await peer.connection()
    assert await lattice.shutdown() == b"shutting down"
    assert await lattice.process.wait(5.0) == 0
    for _ in range(2):
        closed = await asyncio.wait_for(peer.closed.get(), WAIT)
        assert closed == Closed(1000, "provider shutting down", by_provider=True)


async def test_changed_config_of_both_links_reconnects_with_the_new_settings(
    make_lattice: MakeLattice, peer: Peer
) -> None:
    """When a manifest changes both links, the first re-put meets the other's old settings: the
    provider warns, reconnects with the link put last, and both links keep working."""
    lattice = await make_lattice()
    inbox = Inbox()
    component = await lattice.component("evolving", inbox.record)
    await put_client_links(lattice, "evolving", peer.uri, config={"HEADER_X-Version": "1"})
    first = await peer.connection()
    assert first.request is not None
    assert first.request.headers["X-Version"] == "1"
    await put_client_links(lattice, "evolving", peer.uri, config={"HEADER_X-Version": "2"})
    await lattice.process.wait_for_line(r"evolving: link 'default' .* sets HEADER_\* differently", WAIT)
    assert (await asyncio.wait_for(peer.closed.get(), WAIT)).code == 1000
    second = await peer.connection()
    assert second.request is not None
    assert second.request.headers["X-Version"] == "2"
    await second.send(envelope("news", "to the handler"))
    assert (await inbox.wait_for(1))[0].body == b"to the handler"
    assert await component.publish(BrokerMessage("from", b"the consumer", None)) == Ok(None)
    assert (await peer.json_frame())["body"] == "the consumer"
    assert "1/1 client connection(s) open" in await health_message(lattice)


@dataclass
class HeldChange:
    """A link change from ``X-Version: 1`` to ``2`` put while the first handshake is held."""

    release_first: asyncio.Event
    changing: asyncio.Task[list[LinkDefinition]]
    since: int  # the provider's output line count when the change began

    async def finish(self, peer: Peer) -> None:
        """Let the handshake with the new settings through and wait for the change to be applied."""
        request, release = await peer.handshake()
        assert request.headers["X-Version"] == "2"
        release.set()
        await asyncio.wait_for(self.changing, WAIT)


async def change_during_handshake(lattice: LocalLattice, peer: Peer, component: str) -> HeldChange:
    """Put ``component``'s client links, hold their first handshake, and start changing them."""
    await put_client_links(lattice, component, peer.uri, config={"HEADER_X-Version": "1"})
    request, release = await peer.handshake()
    assert request.headers["X-Version"] == "1"
    since = lattice.process.total_lines
    changing = asyncio.create_task(
        put_client_links(lattice, component, peer.uri, config={"HEADER_X-Version": "2"})
    )
    return HeldChange(release, changing, since)


async def test_a_change_during_the_opening_handshake_still_closes_with_1000(
    make_lattice: MakeLattice,
) -> None:
    """The server has accepted the connection but the provider has not read its answer yet when
    the link changes: the provider lets the handshake finish, closes that connection with 1000 and
    the reason (no connection the server counts open is dropped without a close frame), then
    connects with the new settings."""
    peer = await Peer(hold_handshakes=True).start()
    try:
        lattice = await make_lattice()
        inbox = Inbox()
        await lattice.component("evolving", inbox.record)
        held = await change_during_handshake(lattice, peer, "evolving")
        # The warning is logged just before the provider stops the connection being opened.
        changed = r"evolving: link 'default' .* sets HEADER_\* differently"
        await lattice.process.wait_for_line(changed, WAIT, held.since)
        held.release_first.set()
        first = await peer.connection()  # open on the server's side
        assert first.request is not None
        assert first.request.headers["X-Version"] == "1"
        closed = await asyncio.wait_for(peer.closed.get(), WAIT)
        assert closed == Closed(1000, "link config changed", by_provider=True)
        await held.finish(peer)
        second = await peer.connection()
        await second.send(envelope("news", "after the change"))
        assert (await inbox.wait_for(1))[0].body == b"after the change"
    finally:
        await peer.stop()


async def test_a_server_that_never_answers_the_handshake_does_not_hold_up_a_change(
    make_lattice: MakeLattice,
) -> None:
    """A server that never answers the provider's opening handshake: the change waits for it at
    most CLOSE_TIMEOUT (2 s), then the provider drops that attempt (and says so) and connects with
    the new settings."""
    peer = await Peer(hold_handshakes=True).start()
    try:
        lattice = await make_lattice()
        await lattice.component("evolving", accept)
        held = await change_during_handshake(lattice, peer, "evolving")
        await lattice.process.wait_for_line(
            r"evolving: dropped the connection being opened to .* before its handshake finished "
            r"\(link config changed\)",
            WAIT,
            held.since,
        )
        await held.finish(peer)
        await lattice.process.wait_for_line(r"evolving: connected to ", WAIT, held.since)
        assert "1/1 client connection(s) open" in await health_message(lattice)
    finally:
        await peer.stop()


# -- a third-party server -----------------------------------------------------------------------------


async def test_websocat_server(make_lattice: MakeLattice) -> None:
    """Against a server that is not the websockets library (websocat, in Rust): its frames reach the
    component, the answer on reply-to comes back, and a request is answered."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        WEBSOCAT,
        "--text",
        "--oneshot",
        f"ws-l:127.0.0.1:{port}",
        "-",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        lattice = await make_lattice()
        component = await lattice.component("echo", echo)
        # websocat may not listen yet: the provider retries until it does.
        await put_client_links(lattice, "echo", f"ws://127.0.0.1:{port}/", config=FAST_RECONNECT)
        await lattice.process.wait_for_line(rf"echo: connected to ws://127\.0\.0\.1:{port}/", WAIT)

        async def send_line(text: str) -> None:
            assert proc.stdin is not None
            proc.stdin.write(text.encode() + b"\n")
            await proc.stdin.drain()

        async def read_json() -> dict[str, Any]:
            assert proc.stdout is not None
            result: dict[str, Any] = json.loads(await asyncio.wait_for(proc.stdout.readline(), WAIT))
            return result

        await send_line(envelope("greet", "from websocat"))
        answer = await read_json()
        assert answer["body"] == "from websocat"
        assert answer["subject"].startswith("ws.conn.")

        pending = asyncio.create_task(component.request("lookup", b"key", 5000))
        request = await read_json()
        assert request["subject"] == "lookup"
        await send_line(envelope(request["reply_to"], "value"))
        result = await asyncio.wait_for(pending, WAIT)
        assert isinstance(result, Ok)
        assert result.value.body == b"value"
    finally:
        proc.kill()
        await proc.wait()
