"""Server mode through the real provider process, a real nats-server and real WebSocket clients.

Components here are Python functions served over wRPC exactly where a host serves a wasm
component's exports, so the provider sees the same traffic as in a lattice.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import sys
from typing import Any

import msgpack
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from provider.host.lattice import LocalLattice, consumer_link, handler_link
from provider.host.machine import free_port, resident_bytes
from provider.host.native import NativeComponent, accept, echo
from provider.host.nats_server import NatsServer
from provider.wrpc.codec import Err, Ok
from provider.wrpc.messaging import BrokerMessage, UnitResult
from tests.conftest import Inbox, MakeLattice

PROVIDER = "websocket-provider"
WAIT = 10.0


async def serve_links(
    lattice: LocalLattice, component: str, port: int, *, consumer: bool = True, **config: str
) -> tuple[Any, Any]:
    """Put the handler (and consumer) links of a server-mode component on ``port``."""
    handler = handler_link(PROVIDER, component, MODE="server", URI=f"127.0.0.1:{port}", **config)
    applied = await lattice.put_link(handler)
    assert applied is not None
    assert "rejected link" not in applied, applied
    link = consumer_link(component, PROVIDER, MODE="server")
    if consumer:
        await lattice.put_link(link)
    return handler, link


async def open_ws(port: int, path: str = "/ws", **options: Any) -> ClientConnection:
    """A WebSocket client on the provider's server at ``port``."""
    return await connect(f"ws://127.0.0.1:{port}{path}", compression=None, open_timeout=WAIT, **options)


async def recv_json(ws: ClientConnection) -> dict[str, Any]:
    frame = await asyncio.wait_for(ws.recv(), WAIT)
    result: dict[str, Any] = json.loads(frame)
    return result


@pytest.fixture
async def echo_server(make_lattice: MakeLattice) -> tuple[LocalLattice, int]:
    """A provider serving one echo component on a fresh port, FORMAT=json."""
    lattice = await make_lattice()
    await lattice.component("echo", echo)
    port = free_port()
    await serve_links(lattice, "echo", port)
    return lattice, port


async def test_json_echo_via_reply_to(echo_server: tuple[LocalLattice, int]) -> None:
    """A JSON frame reaches the component, whose publish to reply-to comes back to that client."""
    _, port = echo_server
    async with await open_ws(port) as ws:
        await ws.send(json.dumps({"subject": "chat.hello", "body": "héllo"}))
        reply = await recv_json(ws)
        assert reply["body"] == "héllo"
        assert reply["subject"].startswith("ws.session.")
        await ws.send(json.dumps({"subject": "bin", "body_base64": base64.b64encode(b"\xff\x00").decode()}))
        assert base64.b64decode((await recv_json(ws))["body_base64"]) == b"\xff\x00"


async def test_raw_echo(make_lattice: MakeLattice) -> None:
    """FORMAT=raw: the frame is the body (text stays text, bytes stay bytes)."""
    lattice = await make_lattice()
    await lattice.component("echo", echo)
    port = free_port()
    await serve_links(lattice, "echo", port, FORMAT="raw", SUBJECT="raw.in")
    async with await open_ws(port) as ws:
        await ws.send("plain text")
        assert await asyncio.wait_for(ws.recv(), WAIT) == "plain text"
        await ws.send(b"\x00\xffbinary")
        assert await asyncio.wait_for(ws.recv(), WAIT) == b"\x00\xffbinary"


async def test_msgpack_echo(make_lattice: MakeLattice) -> None:
    """FORMAT=msgpack: binary maps in and out."""
    lattice = await make_lattice()
    inbox = Inbox()

    async def record_and_echo(component: NativeComponent, msg: BrokerMessage) -> UnitResult:
        await inbox.record(component, msg)
        return await echo(component, msg)

    await lattice.component("echo", record_and_echo)
    port = free_port()
    await serve_links(lattice, "echo", port, FORMAT="msgpack")
    async with await open_ws(port) as ws:
        await ws.send(msgpack.packb({"subject": "m.x", "body": b"\x01\x02"}, use_bin_type=True))
        reply = msgpack.unpackb(await asyncio.wait_for(ws.recv(), WAIT), raw=False)
        assert reply["body"] == b"\x01\x02"
        assert reply["subject"].startswith("ws.session.")
    assert inbox.messages[0].subject == "m.x"


async def test_client_supplied_reply_to_is_ignored(make_lattice: MakeLattice) -> None:
    """Whatever reply_to a client writes, the component sees the session's own reply subject."""
    lattice = await make_lattice()
    inbox = Inbox()
    await lattice.component("spy", inbox.record)
    port = free_port()
    await serve_links(lattice, "spy", port)
    async with await open_ws(port) as first, await open_ws(port) as second:
        await second.send(json.dumps({"subject": "a", "body": "who am i"}))
        [seen] = await inbox.wait_for(1)
        await first.send(json.dumps({"subject": "a", "body": "spoof", "reply_to": seen.reply_to}))
        messages = await inbox.wait_for(2)
    assert messages[1].reply_to != seen.reply_to
    assert all(m.reply_to and m.reply_to.startswith("ws.session.") for m in messages)
    # <instance tag>.<128 random bits>: the id names the instance that holds the session (design §7)
    assert re.fullmatch(r"ws\.session\.[a-z2-7]{10}\.[0-9a-f]{32}", messages[0].reply_to or "")


async def test_bad_json_gets_an_error_frame_and_the_session_goes_on(
    echo_server: tuple[LocalLattice, int],
) -> None:
    """An unparsable frame is answered on ws.error; the next good frame still works."""
    _, port = echo_server
    async with await open_ws(port) as ws:
        await ws.send("{not json")
        error = await recv_json(ws)
        assert error["subject"] == "ws.error"
        assert "invalid JSON" in error["body"]
        await ws.send(json.dumps({"body": "no subject"}))
        assert "'subject' must be a non-empty string" in (await recv_json(ws))["body"]
        await ws.send(json.dumps({"subject": "ok", "body": "still here"}))
        assert (await recv_json(ws))["body"] == "still here"


async def test_oversize_frame_closes_with_1009(make_lattice: MakeLattice) -> None:
    """A frame over MAX_MESSAGE_BYTES closes the session with 1009 (message too big)."""
    lattice = await make_lattice()
    await lattice.component("echo", echo)
    port = free_port()
    await serve_links(lattice, "echo", port, MAX_MESSAGE_BYTES="1024")
    async with await open_ws(port) as ws:
        await ws.send("x" * 2000)
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), WAIT)
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == 1009


async def test_invalid_utf8_text_closes_with_1007(echo_server: tuple[LocalLattice, int]) -> None:
    """A text frame that is not UTF-8 closes the session with 1007, as RFC 6455 demands."""
    _, port = echo_server
    async with await open_ws(port) as ws:
        await ws.send(b"\xc3\x28", text=True)
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), WAIT)
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == 1007


async def test_token_is_required_and_accepted(make_lattice: MakeLattice) -> None:
    """With AUTH_TOKEN set, no or a wrong token gets HTTP 401; the header or the query parameter works."""
    lattice = await make_lattice()
    await lattice.component("echo", echo)
    port = free_port()
    await serve_links(lattice, "echo", port, AUTH_TOKEN="s3cret-token")
    async with await open_ws(port, additional_headers={"Authorization": "Bearer s3cret-token"}) as ws:
        await ws.send(json.dumps({"subject": "a", "body": "via header"}))
        assert (await recv_json(ws))["body"] == "via header"
    async with await open_ws(port, path="/ws?token=s3cret-token&room=1") as ws:
        await ws.send(json.dumps({"subject": "a", "body": "via query"}))
        assert (await recv_json(ws))["body"] == "via query"
    options: list[dict[str, Any]] = [{}, {"additional_headers": {"Authorization": "Bearer wrong"}}]
    for option in options:
        with pytest.raises(InvalidStatus) as info:
            await open_ws(port, **option)
        assert info.value.response.status_code == 401
    with pytest.raises(InvalidStatus) as info:
        await open_ws(port, path="/ws?token=s3cret-tokem")
    assert info.value.response.status_code == 401
    assert "s3cret-token" not in lattice.process.output


async def test_wrong_origin_is_refused(make_lattice: MakeLattice) -> None:
    """ALLOWED_ORIGINS refuses a browser from elsewhere with 403 and admits the listed one."""
    lattice = await make_lattice()
    await lattice.component("echo", echo)
    port = free_port()
    await serve_links(lattice, "echo", port, ALLOWED_ORIGINS="https://app.example")
    with pytest.raises(InvalidStatus) as info:
        await open_ws(port, origin="https://evil.example")
    assert info.value.response.status_code == 403
    async with await open_ws(port, origin="https://app.example") as ws:
        await ws.send(json.dumps({"subject": "a", "body": "ok"}))
        assert (await recv_json(ws))["body"] == "ok"


async def test_unknown_path_is_404(echo_server: tuple[LocalLattice, int]) -> None:
    """Only PATH accepts WebSocket connections."""
    _, port = echo_server
    await open_ws(port)  # the server is up
    with pytest.raises(InvalidStatus) as info:
        await connect(f"ws://127.0.0.1:{port}/elsewhere")
    assert info.value.response.status_code == 404


async def test_broadcast_reaches_fifty_sessions(make_lattice: MakeLattice) -> None:
    """A publish to ws.broadcast goes to every session of the servers that deliver to the component."""
    lattice = await make_lattice()

    async def shout(component: NativeComponent, msg: BrokerMessage) -> UnitResult:
        return await component.publish(BrokerMessage("ws.broadcast", msg.body, None))

    await lattice.component("chat", shout)
    port = free_port()
    await serve_links(lattice, "chat", port)
    clients = [await open_ws(port) for _ in range(50)]
    try:
        await clients[7].send(json.dumps({"subject": "room", "body": "to all"}))
        for ws in clients:
            assert (await recv_json(ws))["body"] == "to all"
    finally:
        for ws in clients:
            await ws.close()


async def test_list_and_close_sessions(make_lattice: MakeLattice) -> None:
    """request('ws.sessions') lists id, remote, connected-at, path and query; ws.close.<id> closes one."""
    lattice = await make_lattice()
    inbox = Inbox()
    component = await lattice.component("admin", inbox.record)
    port = free_port()
    await serve_links(lattice, "admin", port)
    async with await open_ws(port, path="/ws?room=blue") as ws:
        await ws.send(json.dumps({"subject": "hello", "body": ""}))
        [hello] = await inbox.wait_for(1)
        listing = await component.request("ws.sessions", b"")
        assert isinstance(listing, Ok)
        [entry] = json.loads(listing.value.body)
        assert entry["reply_to"] == hello.reply_to
        assert entry["path"] == "/ws"
        assert entry["query"] == "room=blue"
        assert entry["remote"].startswith("127.0.0.1:")
        assert entry["connected_at"].endswith("Z")
        assert await component.publish(BrokerMessage(f"ws.close.{entry['id']}", b"bye now", None)) == Ok(None)
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), WAIT)
    assert info.value.rcvd is not None
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (1000, "bye now")


async def test_bad_publishes_say_why(echo_server: tuple[LocalLattice, int]) -> None:
    """Unknown sessions, unreserved subjects and publish-to-list all get an err that explains."""
    lattice, _ = echo_server
    component = await lattice.component("other", accept)
    await lattice.put_link(consumer_link("other", PROVIDER, MODE="server"))
    echo_component = lattice._components[0]
    for comp, subject, expected in [
        (echo_component, "ws.session.nosuchsession", "no session 'nosuchsession'"),
        (echo_component, "chat.room", "in server mode, publish to a session's reply subject"),
        (echo_component, "ws.sessions", "answers consumer.request, not publish"),
        (component, "ws.broadcast", "receives from no WebSocket server"),
    ]:
        result = await comp.publish(BrokerMessage(subject, b"", None))
        assert isinstance(result, Err)
        assert expected in result.value


async def test_a_component_reaches_only_sessions_of_servers_that_deliver_to_it(
    make_lattice: MakeLattice,
) -> None:
    """Component B cannot publish to, or list, a session of A's server."""
    lattice = await make_lattice()
    inbox = Inbox()
    await lattice.component("a", inbox.record)
    b = await lattice.component("b", accept)
    port_a, port_b = free_port(), free_port()
    await serve_links(lattice, "a", port_a)
    await serve_links(lattice, "b", port_b)
    async with await open_ws(port_a) as ws:
        await ws.send(json.dumps({"subject": "x", "body": ""}))
        [msg] = await inbox.wait_for(1)
        assert msg.reply_to is not None
        result = await b.publish(BrokerMessage(msg.reply_to, b"intrusion", None))
        assert isinstance(result, Err)
        listing = await b.request("ws.sessions", b"")
        assert isinstance(listing, Ok)
        assert json.loads(listing.value.body) == []


async def test_subscriptions_route_frames_and_a_deleted_link_stops_delivery(
    make_lattice: MakeLattice,
) -> None:
    """Two components share one address; SUBSCRIPTIONS picks who gets what; unlinking one stops only it."""
    lattice = await make_lattice()
    orders, chat = Inbox(), Inbox()
    await lattice.component("orders", orders.record)
    await lattice.component("chat", chat.record)
    port = free_port()
    orders_link, _ = await serve_links(lattice, "orders", port, SUBSCRIPTIONS="orders.>")
    await serve_links(lattice, "chat", port, SUBSCRIPTIONS="chat.*,lobby")
    async with await open_ws(port) as ws:
        for subject in ("orders.eu.new", "chat.room1", "lobby", "nobody.here"):
            await ws.send(json.dumps({"subject": subject, "body": subject}))
        error = await recv_json(ws)
        assert error == {"subject": "ws.error", "body": "no component subscribes to subject 'nobody.here'"}
        assert [m.subject for m in await orders.wait_for(1)] == ["orders.eu.new"]
        assert [m.subject for m in await chat.wait_for(2)] == ["chat.room1", "lobby"]
        await lattice.delete_link(orders_link)
        await ws.send(json.dumps({"subject": "orders.x", "body": ""}))
        assert (await recv_json(ws))["body"] == "no component subscribes to subject 'orders.x'"
        await ws.send(json.dumps({"subject": "chat.after", "body": ""}))
        assert (await chat.wait_for(3))[-1].subject == "chat.after"
    assert len(orders.messages) == 1


async def test_lifecycle_events(make_lattice: MakeLattice) -> None:
    """With LIFECYCLE_EVENTS on, the component hears ws.connected and ws.disconnected with metadata."""
    lattice = await make_lattice()
    inbox = Inbox()
    await lattice.component("watcher", inbox.record)
    port = free_port()
    await serve_links(lattice, "watcher", port, LIFECYCLE_EVENTS="true")
    async with await open_ws(port, path="/ws?name=ann") as ws:
        await ws.send(json.dumps({"subject": "hi", "body": ""}))
        await inbox.wait_for(2)
    connected, hi, disconnected = await inbox.wait_for(3)
    assert connected.subject == "ws.connected"
    assert hi.subject == "hi"
    assert disconnected.subject == "ws.disconnected"
    info = json.loads(connected.body)
    assert info["query"] == "name=ann"
    assert connected.reply_to == hi.reply_to == disconnected.reply_to == info["reply_to"]
    assert json.loads(disconnected.body)["code"] == 1000


async def test_a_thousand_messages_from_one_client_arrive_in_order(make_lattice: MakeLattice) -> None:
    """Per session, frames reach the component in the order they were sent."""
    lattice = await make_lattice()
    inbox = Inbox()
    await lattice.component("sink", inbox.record)
    port = free_port()
    await serve_links(lattice, "sink", port)
    async with await open_ws(port) as ws:
        for i in range(1000):
            await ws.send(json.dumps({"subject": "seq", "body": str(i)}))
        messages = await inbox.wait_for(1000, timeout=60)
    assert [int(m.body) for m in messages] == list(range(1000))


async def _drain(ws: ClientConnection) -> None:
    """Read until the connection closes (which raises ConnectionClosed)."""
    while True:
        await ws.recv()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
async def test_a_client_that_never_reads_is_closed_and_memory_stays_bounded(
    make_lattice: MakeLattice,
) -> None:
    """Publishing far more than SEND_QUEUE_LIMIT to a client that does not read closes it (1008);
    the provider's memory does not grow with what was published."""
    lattice = await make_lattice()
    inbox = Inbox()
    component = await lattice.component("firehose", inbox.record)
    port = free_port()
    await serve_links(lattice, "firehose", port, SEND_QUEUE_LIMIT="262144")
    ws = await open_ws(port, max_queue=1)  # takes one frame, then stops reading the socket
    await ws.send(json.dumps({"subject": "start", "body": ""}))
    [start] = await inbox.wait_for(1)
    assert start.reply_to is not None
    before = resident_bytes(lattice.process.pid)
    chunk = b"z" * 65536
    published = 0
    result: UnitResult = Ok(None)
    while isinstance(result, Ok) and published < 4000:  # at most 250 MiB
        result = await component.publish(BrokerMessage(start.reply_to, chunk, None))
        published += 1
    grown = resident_bytes(lattice.process.pid) - before
    print(f"published {published} frames of 64 KiB; provider RSS grew {grown / 2**20:.1f} MiB")
    assert isinstance(result, Err), "the provider kept accepting frames for a client that does not read"
    assert "not reading" in result.value or "closed" in result.value
    assert grown < 48 * 1024 * 1024, f"provider memory grew by {grown / 2**20:.0f} MiB"
    with pytest.raises(ConnectionClosed) as info:
        await asyncio.wait_for(_drain(ws), WAIT)
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == 1008
    assert "closing it (1008)" in lattice.process.output


async def test_deleting_the_last_link_closes_the_server_with_1001(make_lattice: MakeLattice) -> None:
    """No handler link left on an address: its clients get 1001 and it stops listening."""
    lattice = await make_lattice()
    await lattice.component("echo", echo)
    port = free_port()
    handler, _ = await serve_links(lattice, "echo", port)
    ws = await open_ws(port)
    await lattice.delete_link(handler)
    with pytest.raises(ConnectionClosed) as info:
        await asyncio.wait_for(ws.recv(), WAIT)
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == 1001
    with pytest.raises(ConnectionRefusedError):
        await connect(f"ws://127.0.0.1:{port}/ws", open_timeout=2)


async def test_shutdown_closes_clients_with_1001_and_exits_in_time(make_lattice: MakeLattice) -> None:
    """The host's shutdown request is answered within 300 ms, clients get 1001, the process exits 0."""
    lattice = await make_lattice()
    await lattice.component("echo", echo)
    port = free_port()
    await serve_links(lattice, "echo", port)
    clients = [await open_ws(port) for _ in range(5)]
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await lattice.shutdown() == b"shutting down"
    answered = loop.time() - started
    assert await lattice.process.wait(2.0) == 0
    exited = loop.time() - started
    for ws in clients:
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), WAIT)
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 1001
    assert answered < 0.3
    assert exited < 0.3 + 0.2, f"exited {exited * 1000:.0f} ms after the request"


async def test_a_frame_larger_than_max_payload_arrives_whole(
    make_lattice: MakeLattice, small_nats_server: NatsServer
) -> None:
    """On a NATS server with max_payload 4096, a 20 KiB frame is chunked by wRPC and arrives intact."""
    lattice = await make_lattice(small_nats_server)
    await lattice.component("echo", echo)
    port = free_port()
    await serve_links(lattice, "echo", port, FORMAT="raw")
    body = os.urandom(20 * 1024)
    async with await open_ws(port) as ws:
        await ws.send(body)
        assert await asyncio.wait_for(ws.recv(), WAIT) == body


async def test_a_component_that_fails_is_logged_and_the_session_stays(make_lattice: MakeLattice) -> None:
    """A component that returns err, or has no responders, is logged and counted; the client carries on."""
    lattice = await make_lattice()

    async def picky(component: NativeComponent, msg: BrokerMessage) -> UnitResult:
        if msg.subject == "bad":
            return Err("I do not like 'bad'")
        return await echo(component, msg)

    await lattice.component("picky", picky)
    port = free_port()
    await serve_links(lattice, "picky", port, SUBSCRIPTIONS="bad,good")
    await lattice.put_link(
        handler_link(PROVIDER, "ghost", MODE="server", URI=f"127.0.0.1:{port}", SUBSCRIPTIONS="ghost")
    )
    async with await open_ws(port) as ws:
        await ws.send(json.dumps({"subject": "bad", "body": ""}))
        await ws.send(json.dumps({"subject": "ghost", "body": ""}))
        await ws.send(json.dumps({"subject": "good", "body": "fine"}))
        assert (await recv_json(ws))["body"] == "fine"
    await lattice.process.wait_for_line(r"returned an error for 'bad': I do not like 'bad'")
    await lattice.process.wait_for_line(r"not delivered to ghost: no responders")
    health = await lattice.host.health(lattice.provider)  # type: ignore[union-attr]
    assert health is not None
    assert health["healthy"] is True


async def test_websocat_client(echo_server: tuple[LocalLattice, int]) -> None:
    """A client that is not the websockets library (websocat, in Rust) echoes through the provider."""
    _, port = echo_server
    await (await open_ws(port)).close()  # the server is up
    websocat = os.path.join(os.path.dirname(sys.executable), "websocat")
    proc = await asyncio.create_subprocess_exec(
        websocat,
        "--text",
        f"ws://127.0.0.1:{port}/ws",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        proc.stdin.write(json.dumps({"subject": "cli", "body": "from websocat"}).encode() + b"\n")
        await proc.stdin.drain()
        line = await asyncio.wait_for(proc.stdout.readline(), WAIT)
        assert json.loads(line)["body"] == "from websocat"
    finally:
        proc.kill()
        await proc.wait()


async def test_static_dir_serves_files_and_nothing_outside(make_lattice: MakeLattice, tmp_path: Any) -> None:
    """STATIC_DIR answers plain GETs (index.html at /, one Content-Length) and refuses paths outside it."""
    (tmp_path / "index.html").write_text("<h1>chat</h1>")
    (tmp_path.parent / "secret.txt").write_text("do not serve")
    lattice = await make_lattice()
    await lattice.component("echo", echo)
    port = free_port()
    await serve_links(lattice, "echo", port, STATIC_DIR=str(tmp_path))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)).decode()
    length = [line for line in head.split("\r\n") if line.lower().startswith("content-length")]
    assert head.startswith("HTTP/1.1 200")
    assert length == ["Content-Length: 13"]
    assert "Content-Type: text/html" in head
    assert await asyncio.wait_for(reader.readexactly(13), WAIT) == b"<h1>chat</h1>"
    writer.close()
    for path in ("/../secret.txt", "/%2e%2e/secret.txt", "/missing.html"):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        status = (await asyncio.wait_for(reader.readline(), WAIT)).decode()
        assert status.startswith("HTTP/1.1 404"), (path, status)
        writer.close()
