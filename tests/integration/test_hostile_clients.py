"""Server mode under hostile and unusual clients: nothing is lost, nothing is silenced.

Each test names the behaviour it holds the provider to (issue 10): a busy session is never
dropped by its keepalive, every malformed frame gets ``ws.error`` and the session goes on,
clients cannot fake reserved subjects, no token reaches the log, odd HTTP requests get 4xx,
a long close reason still closes, health shows the counters, raw frames keep their type.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import resource
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from provider.host.lattice import LocalLattice, consumer_link, handler_link
from provider.host.machine import free_port
from provider.host.native import NativeComponent, echo
from provider.wasmcloud.links import LinkDefinition
from provider.wrpc.codec import Err, Ok
from provider.wrpc.messaging import BrokerMessage, UnitResult
from tests.conftest import Inbox, MakeLattice
from tests.integration.test_client_mode import Peer

PROVIDER = "websocket-provider"
WAIT = 10.0


async def serve(lattice: LocalLattice, component: str, port: int, **config: str) -> None:
    """Put the component's server-mode handler and consumer links on ``port``; both must apply."""
    for link in (
        handler_link(PROVIDER, component, MODE="server", URI=f"127.0.0.1:{port}", **config),
        consumer_link(component, PROVIDER, MODE="server"),
    ):
        applied = await lattice.put_link(link)
        assert applied is not None
        assert "rejected link" not in applied, applied


async def open_ws(port: int, path: str = "/ws", **options: Any) -> ClientConnection:
    options.setdefault("compression", None)
    return await connect(f"ws://127.0.0.1:{port}{path}", open_timeout=WAIT, **options)


async def recv_json(ws: ClientConnection) -> dict[str, Any]:
    frame = await asyncio.wait_for(ws.recv(), WAIT)
    result: dict[str, Any] = json.loads(frame)
    return result


async def health_message(lattice: LocalLattice) -> str:
    assert lattice.host is not None
    health = await lattice.host.health(lattice.provider)
    assert health is not None
    assert health["healthy"] is True
    message: str = health["message"]
    return message


async def health_showing(lattice: LocalLattice, text: str) -> str:
    """Health's message once it shows ``text`` (a close is counted when the provider's side of the
    session has ended, which can be just after the client saw it), or the last one after WAIT."""
    message = await health_message(lattice)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(WAIT):
            while text not in message:
                await asyncio.sleep(0.05)
                message = await health_message(lattice)
    return message


async def raw_http(port: int, request: bytes) -> str:
    """Send ``request`` as it is on a fresh TCP connection; the status line of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        return (await asyncio.wait_for(reader.readline(), WAIT)).decode(errors="replace")
    finally:
        writer.close()


@pytest.fixture
async def echo_on(make_lattice: MakeLattice) -> Callable[..., Awaitable[tuple[LocalLattice, int]]]:
    """A provider with an echo component on a fresh port, with the given handler-link keys."""

    async def start(**config: str) -> tuple[LocalLattice, int]:
        lattice = await make_lattice()
        await lattice.component("echo", echo)
        port = free_port()
        await serve(lattice, "echo", port, **config)
        return lattice, port

    return start


# -- 4. keepalive --------------------------------------------------------------------------------------


@pytest.mark.timeout(420)
async def test_keepalive_never_drops_a_busy_session_or_connection(make_lattice: MakeLattice) -> None:
    """20,000 frames as fast as possible to a component that takes 5 ms each, with the default
    DELIVERY_WINDOW=1 and 1-second pings, from a client of the provider's server and from a server
    the provider connects to, at once. The provider stops reading while it delivers, so the peers'
    pongs wait behind unread frames; still every frame is delivered, in order, and neither is
    closed for a keepalive timeout."""
    lattice = await make_lattice()
    total = 20_000
    received: dict[str, list[int]] = {"server": [], "client": []}
    done = {side: asyncio.Event() for side in received}

    def slow(side: str) -> Callable[[NativeComponent, BrokerMessage], Awaitable[UnitResult]]:
        async def handle(component: NativeComponent, msg: BrokerMessage) -> UnitResult:
            await asyncio.sleep(0.005)
            received[side].append(int(msg.body))
            if len(received[side]) == total:
                done[side].set()
            return Ok(None)

        return handle

    await lattice.component("slow-server", slow("server"))
    await lattice.component("slow-client", slow("client"))
    port = free_port()
    await serve(lattice, "slow-server", port, PING_INTERVAL_SEC="1", PING_TIMEOUT_SEC="1")
    # Neither peer pings the provider: while the provider works through the frames a peer already
    # sent, it cannot read (and answer) a ping queued behind them. Browsers do not ping.
    peer = await Peer(ping_interval=None).start()
    try:
        for link in (
            handler_link(PROVIDER, "slow-client", MODE="client", URI=peer.uri, PING_INTERVAL_SEC="1"),
            consumer_link("slow-client", PROVIDER, MODE="client", URI=peer.uri, PING_INTERVAL_SEC="1"),
        ):
            await lattice.put_link(link)
        server_side = await peer.connection()
        async with await open_ws(port, ping_interval=None) as ws:

            async def burst(send: Callable[[str], Awaitable[None]]) -> None:
                for i in range(total):
                    await send(json.dumps({"subject": "burst", "body": str(i)}))

            await asyncio.gather(burst(ws.send), burst(server_side.send))
            # Done when both have everything, or early when a peer is closed (frames then are lost).
            waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(e.wait()) for e in done.values()]
            closes: list[asyncio.Future[Any]] = [
                asyncio.ensure_future(c.wait_closed()) for c in (ws, server_side)
            ]
            everything: asyncio.Future[Any] = asyncio.ensure_future(asyncio.gather(*waits))
            await asyncio.wait([everything, *closes], timeout=360, return_when=asyncio.FIRST_COMPLETED)
            for future in (everything, *waits, *closes):
                future.cancel()
            counts = {side: len(frames) for side, frames in received.items()}
            print(f"delivered of {total}: {counts}; closes: {ws.close_code}, {server_side.close_code}")
            assert ws.close_code is None, f"the session was closed ({ws.close_code}); delivered {counts}"
        assert server_side.close_code is None, f"the connection was closed; delivered {counts}"
    finally:
        await peer.stop()
    assert received["server"] == list(range(total)), counts
    assert received["client"] == list(range(total)), counts
    assert "keepalive" not in await health_message(lattice)


async def test_keepalive_closes_a_silent_peer(make_lattice: MakeLattice) -> None:
    """A client that stops answering (its TCP stays open, nothing is read from or sent by it) is
    closed with 1011 after the ping timeout, logged and counted."""
    lattice = await make_lattice()
    await lattice.component("echo", echo)
    port = free_port()
    await serve(lattice, "echo", port, PING_INTERVAL_SEC="0.2", PING_TIMEOUT_SEC="0.3")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    assert (await asyncio.wait_for(reader.readline(), WAIT)).startswith(b"HTTP/1.1 101")
    # Never answer the pings: the provider must give up on this session.
    await lattice.process.wait_for_line(r"closed by the provider: 1011 keepalive ping timeout", WAIT)
    assert "1011 keepalive ping timeout 1" in await health_message(lattice)
    writer.close()


# -- 5. malformed frames -------------------------------------------------------------------------------


MALFORMED_JSON = [
    "[" * 100_000 + "]" * 100_000,
    '{"subject": ' + "[" * 100_000,
    '{"subject": "s", "body": "x", "n": ' + "1" * 5000 + "}",
    '{"subject": "\\ud800", "body": "x"}',
    '{"subject": "s", "body": "\\udfff"}',
    '{"subject": 5, "body": "x"}',
    '{"subject": ["s"], "body": "x"}',
    '{"subject": null}',
    "null",
    '"just a string"',
    "",
    "{" * 3,
]


async def test_every_malformed_json_frame_gets_ws_error_and_the_session_carries_on(
    echo_on: Callable[..., Awaitable[tuple[LocalLattice, int]]],
) -> None:
    """Deep nesting, 5,000-digit numbers, lone surrogates, a subject that is not a string: each frame
    is answered with ws.error (never 1011) and the next good frame is echoed; no traceback."""
    lattice, port = await echo_on()
    async with await open_ws(port, max_size=None) as ws:
        for frame in MALFORMED_JSON:
            await ws.send(frame)
            answer = await recv_json(ws)
            assert answer["subject"] == "ws.error", (frame[:40], answer)
        await ws.send(json.dumps({"subject": "ok", "body": "still here"}))
        assert (await recv_json(ws))["body"] == "still here"
    assert "Traceback" not in lattice.process.output
    assert f"bad frame {len(MALFORMED_JSON)}" in await health_message(lattice)


async def test_every_malformed_msgpack_frame_gets_ws_error_and_the_session_carries_on(
    echo_on: Callable[..., Awaitable[tuple[LocalLattice, int]]],
) -> None:
    """msgpack with the wrong types, bad bytes, deep nesting or invalid UTF-8: ws.error, then on."""
    lattice, port = await echo_on(FORMAT="msgpack")
    frames = [
        msgpack.packb({"subject": 1, "body": b"x"}),
        msgpack.packb({"subject": "s", "body": 3.5}),
        msgpack.packb({"subject": "s", "body": b"x", "reply_to": [1]}),
        msgpack.packb({1: "s"}),
        msgpack.packb(["subject", "s"]),
        b"\x91" * 100_000 + b"\xc0",
        b"\xa2\xff\xfe",  # a str of invalid UTF-8
        b"\x81\xa7subject\xa1s\xc1",  # trailing garbage
        b"",
    ]
    async with await open_ws(port) as ws:
        for frame in frames:
            await ws.send(frame)
            answer = msgpack.unpackb(await asyncio.wait_for(ws.recv(), WAIT))
            assert answer["subject"] == "ws.error", (frame[:20], answer)
        await ws.send("a text frame")
        assert msgpack.unpackb(await asyncio.wait_for(ws.recv(), WAIT))["subject"] == "ws.error"
        await ws.send(msgpack.packb({"subject": "ok", "body": b"fine"}))
        assert msgpack.unpackb(await asyncio.wait_for(ws.recv(), WAIT))["body"] == b"fine"
    assert "Traceback" not in lattice.process.output


# -- 6. reserved subjects ------------------------------------------------------------------------------


async def test_clients_cannot_send_on_reserved_subjects(make_lattice: MakeLattice) -> None:
    """A frame on ws.connected, ws.disconnected, ws.session.<id>… gets ws.error and reaches no
    component, so a component can trust that a ws.connected came from the provider."""
    lattice = await make_lattice()
    inbox = Inbox()
    await lattice.component("trusting", inbox.record)
    port = free_port()
    await serve(lattice, "trusting", port, LIFECYCLE_EVENTS="true")
    async with await open_ws(port) as ws:
        [connected] = await inbox.wait_for(1)
        assert connected.subject == "ws.connected"
        reserved = [
            "ws.connected",
            "ws.disconnected",
            "ws.error",
            "ws.broadcast",
            "ws.sessions",
            "ws.session.x",
            "ws.close.x",
            "ws.conn.x",
            "ws.req.x",
            "ws.event.connected",
        ]
        for subject in reserved:
            await ws.send(json.dumps({"subject": subject, "body": "{}"}))
            answer = await recv_json(ws)
            assert answer["subject"] == "ws.error"
            assert "reserved" in answer["body"]
        await ws.send(json.dumps({"subject": "ws.message", "body": "an ordinary subject"}))
        [_, ordinary] = await inbox.wait_for(2)
        assert ordinary.subject == "ws.message"
    assert [m.subject for m in await inbox.wait_for(3)] == ["ws.connected", "ws.message", "ws.disconnected"]
    assert f"reserved subject {len(reserved)}" in await health_message(lattice)


# -- 7. secrets and auth -------------------------------------------------------------------------------


async def test_no_token_reaches_the_log_even_at_trace_level(make_lattice: MakeLattice) -> None:
    """At log level trace websockets logs every request line and header; the server's token, a
    client's wrong one (header or ?token=) and a client-mode token are all redacted."""
    lattice = await make_lattice(log_level="trace")
    await lattice.component("echo", echo)
    port = free_port()
    token = "server-side-s3cret"
    await serve(lattice, "echo", port, AUTH_TOKEN=token)
    async with await open_ws(port, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        await ws.send(json.dumps({"subject": "x", "body": "y"}))
        await recv_json(ws)
    async with await open_ws(port, path=f"/ws?token={token}") as ws:
        await ws.send(json.dumps({"subject": "x", "body": "y"}))
        await recv_json(ws)
    for wrong in ("Bearer wrong-guess-1234", "Basic d3JvbmctZ3Vlc3M="):
        with pytest.raises(InvalidStatus):
            await open_ws(port, additional_headers={"Authorization": wrong})
    with pytest.raises(InvalidStatus):
        await open_ws(port, path="/ws?token=wrong-guess-5678")
    await health_message(lattice)
    output = lattice.process.output
    assert "GET /ws" in output, "the trace log should show the request lines"
    for leaked in (token, "wrong-guess-1234", "d3JvbmctZ3Vlc3M=", "wrong-guess-5678"):
        assert leaked not in output


@pytest.mark.parametrize(
    ("mode", "key"),
    [("server", "AUTH_TOKEN"), ("server", "TLS_KEY"), ("client", "AUTH_TOKEN"), ("client", "TLS_CA")],
)
async def test_an_empty_credential_rejects_the_link(make_lattice: MakeLattice, mode: str, key: str) -> None:
    """AUTH_TOKEN, TLS_KEY or TLS_CA present but empty (a secret that resolved to nothing) rejects
    the link with a clear error, instead of turning auth or TLS off."""
    lattice = await make_lattice()
    port = free_port()
    uri = f"127.0.0.1:{port}" if mode == "server" else f"wss://127.0.0.1:{port}/x"
    config = {"MODE": mode, "URI": uri, key: " "}
    if key == "TLS_KEY":
        config["TLS_CERT"] = "/dev/null"
    applied = await lattice.put_link(handler_link(PROVIDER, "echo", **config))
    assert applied is not None
    assert "rejected link" in applied
    assert f"{key} is set but empty" in applied
    if mode == "server":
        with pytest.raises(ConnectionRefusedError):
            await open_ws(port)


# -- 8. odd HTTP requests ------------------------------------------------------------------------------


async def test_odd_requests_get_4xx_and_no_traceback(make_lattice: MakeLattice, tmp_path: Path) -> None:
    """A NUL byte, an over-long name, bad percent-encoding, a header the server cannot parse: each
    gets a 4xx; percent-encoded names are served (/a%20b.txt is "a b.txt"); nothing outside
    STATIC_DIR, ever; and the log holds no traceback."""
    static = tmp_path / "static"
    static.mkdir()
    (static / "a b.txt").write_text("spaced")
    (static / "index.html").write_text("home")
    (tmp_path / "outside.txt").write_text("never")
    lattice = await make_lattice()
    await lattice.component("echo", echo)
    port = free_port()
    await serve(lattice, "echo", port, STATIC_DIR=str(static))
    assert (await raw_http(port, b"GET /a%20b.txt HTTP/1.1\r\nHost: x\r\n\r\n")).startswith("HTTP/1.1 200")
    odd = {
        "/a%00b": "400",
        "/%00": "400",
        "/" + "n" * 5000: "404",
        "/" + "/".join(["d" * 250] * 30): "404",
        "/%ff%fe": "400",
        "/%2e%2e/outside.txt": "404",
        "/..%2foutside.txt": "404",
        "/%2e%2e%2foutside.txt": "404",
        "/static/../../outside.txt": "404",
    }
    for path, status in odd.items():
        line = await raw_http(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert line.startswith(f"HTTP/1.1 {status}"), (path[:60], line)
    line = await raw_http(
        port, b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    )
    assert line.startswith("HTTP/1.1 4"), line
    async with await open_ws(port) as ws:  # the server is still fine
        await ws.send(json.dumps({"subject": "x", "body": "after"}))
        assert (await recv_json(ws))["body"] == "after"
    assert "Traceback" not in lattice.process.output
    assert "never" not in lattice.process.output


async def test_the_open_file_limit_is_raised_to_the_hard_limit_at_start(make_lattice: MakeLattice) -> None:
    """The provider raises its soft RLIMIT_NOFILE to the hard limit (so MAX_CONNECTIONS=10000 can be
    reached) and says so."""
    lattice = await make_lattice()
    soft, hard = resource.prlimit(lattice.process.pid, resource.RLIMIT_NOFILE)
    assert soft == min(hard, 1 << 20)
    assert re.search(
        r"open files: (raised the soft limit from \d+ to|the limit is) \d+", lattice.process.output
    )


@pytest.mark.parametrize(
    "environment", [{}, {"WASMCLOUD_WS_EVENT_LOOP": "asyncio"}], ids=["uvloop", "asyncio"]
)
async def test_accept_errors_are_logged_once_per_interval(
    make_lattice: MakeLattice, environment: dict[str, str]
) -> None:
    """Out of file descriptors, accept() fails for every new client; the provider logs that once per
    interval, not once per attempt, and serves again once descriptors are free. (asyncio reports
    each failed accept(); libuv closes each new connection unseen, and the provider's own look at
    its descriptors reports it.)"""
    lattice = await make_lattice(environment=environment)
    await lattice.component("echo", echo)
    port = free_port()
    await serve(lattice, "echo", port)
    pid = lattice.process.pid
    before = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    used = len(os.listdir(f"/proc/{pid}/fd"))
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (used, before[1]))
    since = lattice.process.total_lines
    sockets = []
    try:
        for _ in range(40):
            sockets.append(await asyncio.open_connection("127.0.0.1", port))
        # asyncio retries accept() once a second: three seconds give three failures at least.
        await lattice.process.wait_for_line(r"accept\(\)", WAIT, since)
        await asyncio.sleep(3.5)  # time passing is the point here: failures pile up meanwhile
        health = await health_message(lattice)  # NATS is unaffected
        assert "server(s)" in health
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, before)
        for _, writer in sockets:
            writer.close()
    lines = [line for line in list(lattice.process.lines)[-(lattice.process.total_lines - since) :]]
    assert len([line for line in lines if "accept()" in line]) == 1, lines
    async with await open_ws(port) as ws:
        await ws.send(json.dumps({"subject": "x", "body": "served again"}))
        assert (await recv_json(ws))["body"] == "served again"


# -- 9. close reasons ----------------------------------------------------------------------------------


async def test_close_with_a_long_non_ascii_reason_still_closes(make_lattice: MakeLattice) -> None:
    """ws.close.<id> with a 200-character non-ASCII reason closes the session with 1000; the reason
    is cut to 123 bytes at a UTF-8 boundary."""
    lattice = await make_lattice()
    inbox = Inbox()
    component = await lattice.component("closer", inbox.record)
    port = free_port()
    await serve(lattice, "closer", port)
    async with await open_ws(port) as ws:
        await ws.send(json.dumps({"subject": "hello", "body": ""}))
        [hello] = await inbox.wait_for(1)
        assert hello.reply_to is not None
        session = hello.reply_to.removeprefix("ws.session.")
        reason = "é" * 200
        assert await component.publish(BrokerMessage(f"ws.close.{session}", reason.encode(), None)) == Ok(
            None
        )
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), WAIT)
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == 1000
    sent = info.value.rcvd.reason
    assert len(sent.encode()) <= 123
    assert sent == "é" * 61
    assert "1000 closed by a component 1" in await health_showing(lattice, "1000 closed by a component")


# -- 10. health ----------------------------------------------------------------------------------------


async def test_health_shows_the_counters(make_lattice: MakeLattice) -> None:
    """Health's message carries what the README promises: frames, deliveries, component errors,
    delivery failures, publish errors, drops by reason, closes by reason."""
    lattice = await make_lattice()

    async def picky(component: NativeComponent, msg: BrokerMessage) -> UnitResult:
        return Err("no") if msg.subject == "bad" else await echo(component, msg)

    component = await lattice.component("picky", picky)
    port = free_port()
    await serve(lattice, "picky", port, SUBSCRIPTIONS="bad,good,ghost")
    await lattice.put_link(
        handler_link(PROVIDER, "ghost", MODE="server", URI=f"127.0.0.1:{port}", SUBSCRIPTIONS="ghost")
    )
    async with await open_ws(port) as ws:
        await ws.send("{not json")
        await recv_json(ws)
        await ws.send(json.dumps({"subject": "nobody", "body": ""}))
        await recv_json(ws)
        await ws.send(json.dumps({"subject": "bad", "body": ""}))
        await ws.send(json.dumps({"subject": "ghost", "body": ""}))
        await ws.send(json.dumps({"subject": "good", "body": "fine"}))
        while (await recv_json(ws))["body"] != "fine":  # the echo of "ghost" comes first
            pass
        assert isinstance(await component.publish(BrokerMessage("ws.session.none", b"", None)), Err)
    message = await health_message(lattice)
    for expected in (
        "frames in 5",
        "delivered 2",  # ghost and good to picky; bad is a component error
        "component errors 1",
        "delivery failures 1",  # ghost has no responders
        "publish errors 1",
        "bad frame 1",
        "no subscriber 1",
    ):
        assert expected in message, (expected, message)


# -- 11. raw frame types -------------------------------------------------------------------------------


async def test_raw_format_keeps_the_frame_type(make_lattice: MakeLattice) -> None:
    """FORMAT=raw: a binary frame comes back binary and a text frame text, including an empty binary
    frame and a binary frame that happens to be UTF-8; a component picks the type of a frame it
    sends unprompted with a .binary or .text suffix."""
    lattice = await make_lattice()
    inbox = Inbox()

    async def echo_and_record(component: NativeComponent, msg: BrokerMessage) -> UnitResult:
        await inbox.record(component, msg)
        return await echo(component, msg)

    component = await lattice.component("echo", echo_and_record)
    port = free_port()
    await serve(lattice, "echo", port, FORMAT="raw")
    async with await open_ws(port) as ws:
        for frame in (b"", b"utf-8 bytes", b"\xff\x00", "", "text", "tëxt"):
            await ws.send(frame)
            answer = await asyncio.wait_for(ws.recv(), WAIT)
            assert type(answer) is type(frame), (frame, answer)
            assert answer == frame
        base = (inbox.messages[-1].reply_to or "").removesuffix(".binary")
        assert base.startswith("ws.session.")
        sends: list[tuple[str, bytes, type]] = [
            (base, b"auto", str),
            (base, b"\xfe", bytes),
            (f"{base}.binary", b"forced", bytes),
            (f"{base}.text", b"forced", str),
        ]
        for subject, body, kind in sends:
            assert await component.publish(BrokerMessage(subject, body, None)) == Ok(None)
            answer = await asyncio.wait_for(ws.recv(), WAIT)
            assert type(answer) is kind, (subject, answer)
        refused = await component.publish(BrokerMessage(f"{base}.text", b"\xfe", None))
        assert isinstance(refused, Err)
        assert "UTF-8" in refused.value


# -- 13. links that cannot be right --------------------------------------------------------------------


async def test_links_in_the_wrong_direction_are_rejected_saying_which_way(make_lattice: MakeLattice) -> None:
    """A handler link pointing into the provider (the direction older WebSocket providers used), a
    consumer link out of it, or an interface the provider lacks: each is rejected with an error
    that says which way the link must go, and nothing of it is applied."""
    lattice = await make_lattice()
    port = free_port()
    wrong = [
        (
            LinkDefinition(
                "chat",
                PROVIDER,
                "wasmcloud",
                "messaging",
                ("handler",),
                target_config={"MODE": "server", "URI": f"127.0.0.1:{port}"},
            ),
            "a handler link goes from the provider to the component",
        ),
        (
            LinkDefinition(
                PROVIDER, "chat", "wasmcloud", "messaging", ("consumer",), source_config={"MODE": "server"}
            ),
            "a consumer link goes from the component to the provider",
        ),
        (
            LinkDefinition(
                "chat", PROVIDER, "wasmcloud", "messaging", ("publisher",), target_config={"MODE": "server"}
            ),
            "is not an interface of this provider",
        ),
    ]
    for link, message in wrong:
        applied = await lattice.put_link(link)
        assert applied is not None
        assert "rejected link" in applied
        assert message in applied
    with pytest.raises(ConnectionRefusedError):
        await open_ws(port)
    assert "0 server(s)" in await health_message(lattice)
