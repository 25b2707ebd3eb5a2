"""Several provider instances on one lattice share one set of sessions (design §7, issue 12).

Each instance is a real provider process, started the way a host starts it (its own host id,
instance id and xkey, the same provider id), with the links put on each, as every host of a
lattice applies every link to its own instance; each listens on its own port, as each host
would on its own address. A component's publish reaches one random instance (the queue group
``LATTICE.PROVIDER_ID``), so these tests run many calls and check where they went.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from provider.host.lattice import LocalLattice, consumer_link, handler_link
from provider.host.machine import free_port
from provider.host.native import NativeComponent
from provider.host.nats_server import NatsServer
from provider.wrpc.codec import Err, Ok
from provider.wrpc.messaging import BrokerMessage
from tests.conftest import Inbox, MakeLattice

PROVIDER = "websocket-provider"
WAIT = 10.0


async def start_instances(
    make_lattice: MakeLattice,
    count: int,
    component: str,
    *,
    consumer: bool = True,
    server: NatsServer | None = None,
    **config: str,
) -> list[tuple[LocalLattice, int]]:
    """``count`` instances of the provider, each serving ``component`` on a port of its own."""
    started = []
    for _ in range(count):
        lattice = await make_lattice(server)
        port = free_port()
        links = [handler_link(PROVIDER, component, MODE="server", URI=f"127.0.0.1:{port}", **config)]
        if consumer:
            links.append(consumer_link(component, PROVIDER, MODE="server"))
        for link in links:
            applied = await lattice.put_link(link)
            assert applied is not None
            assert "rejected link" not in applied, applied
        started.append((lattice, port))
    await wait_for_each_other([lattice for lattice, _ in started])
    return started


async def health(lattice: LocalLattice) -> str:
    """This instance's health message (the host's health subject is answered by any instance)."""
    message: str = (await lattice.instance_health())["message"]
    return message


def figure(message: str, pattern: str) -> int:
    found = re.search(pattern, message)
    assert found is not None, (pattern, message)
    return int(found.group(1))


async def wait_for_each_other(lattices: list[LocalLattice]) -> None:
    """Until every instance knows of the others (presence), asking health: no sleeping."""
    async with asyncio.timeout(WAIT):
        while True:
            counts = [figure(await health(lattice), r"with (\d+) other") for lattice in lattices]
            if all(count == len(lattices) - 1 for count in counts):
                return


async def open_ws(port: int) -> ClientConnection:
    return await connect(f"ws://127.0.0.1:{port}/ws", open_timeout=WAIT, compression=None)


async def hello(ws: ClientConnection, inbox: Inbox, count: int) -> str:
    """Send a frame so the component learns the session; the session's reply subject."""
    await ws.send(json.dumps({"subject": "hello", "body": ""}))
    messages = await inbox.wait_for(count)
    reply_to = messages[count - 1].reply_to
    assert reply_to is not None
    return reply_to


async def recv_json(ws: ClientConnection) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
    return result


async def test_publishes_to_a_session_reach_it_once_in_order_through_any_instance(
    make_lattice: MakeLattice,
) -> None:
    """50 sequential publishes to one session, each routed to a random instance: all arrive, once,
    in order, and the other instance forwarded some of them."""
    inbox = Inbox()
    (a, port_a), (b, _) = await start_instances(make_lattice, 2, "echo")
    component = await a.component("echo", inbox.record)
    async with await open_ws(port_a) as ws:
        session = await hello(ws, inbox, 1)
        assert session.startswith("ws.session.")
        for i in range(50):
            assert await component.publish(BrokerMessage(session, str(i).encode(), None)) == Ok(None)
        bodies = [(await recv_json(ws))["body"] for _ in range(50)]
        assert bodies == [str(i) for i in range(50)]
        with pytest.raises(TimeoutError):  # and nothing twice
            await asyncio.wait_for(ws.recv(), 0.3)
    forwarded_by_b = figure(await health(b), r"forwarded (\d+)")
    served_by_a = figure(await health(a), r"served (\d+) for others")
    assert forwarded_by_b > 0, "every publish landed on the instance holding the session"
    assert forwarded_by_b == served_by_a
    assert figure(await health(a), r"forwarded (\d+)") == 0  # a's own publishes stayed local


async def test_a_publish_too_large_to_forward_errs_saying_so(
    make_lattice: MakeLattice, small_nats_server: NatsServer
) -> None:
    """On a NATS server with max_payload 4096, a 10 KiB publish reaches a local session (wRPC
    chunks it) but cannot be forwarded in one message: the component gets err saying why."""
    inbox = Inbox()
    (a, port_a), _ = await start_instances(make_lattice, 2, "echo", server=small_nats_server)
    component = await a.component("echo", inbox.record)
    body = b"z" * 10_240
    async with await open_ws(port_a) as ws:
        session = await hello(ws, inbox, 1)
        results = [await component.publish(BrokerMessage(session, body, None)) for _ in range(20)]
        errs = [r.value for r in results if isinstance(r, Err)]
        assert errs, "every publish landed on the instance holding the session"
        assert all("too large to forward" in e and "max_payload 4096" in e for e in errs), set(errs)
        delivered = [await asyncio.wait_for(ws.recv(), WAIT) for _ in range(len(results) - len(errs))]
        assert all(json.loads(frame)["body"] == body.decode() for frame in delivered)


async def test_a_local_publish_sends_nothing_over_the_lattice(
    make_lattice: MakeLattice, nats_server: NatsServer, connect: Any
) -> None:
    """Publishes that land on the instance holding the session cause no forwarding message: the only
    messages on the forwarding subjects are the ones the other instance forwarded."""
    inbox = Inbox()
    (a, port_a), (b, _) = await start_instances(make_lattice, 2, "echo")
    component = await a.component("echo", inbox.record)
    watcher = await connect(nats_server)
    seen: list[str] = []

    async def count(msg: Any) -> None:
        seen.append(msg.subject)

    await watcher.subscribe(f"default.{PROVIDER}.ws.*.publish", cb=count)
    await watcher.flush()
    async with await open_ws(port_a) as ws:
        session = await hello(ws, inbox, 1)
        for i in range(40):
            assert await component.publish(BrokerMessage(session, str(i).encode(), None)) == Ok(None)
        for _ in range(40):
            await recv_json(ws)
    await watcher.flush()
    forwarded = figure(await health(b), r"forwarded (\d+)")
    assert len(seen) == forwarded < 40
    assert figure(await health(a), r"forwarded (\d+)") == 0


async def test_broadcast_sessions_and_close_reach_every_instance(make_lattice: MakeLattice) -> None:
    """Broadcast reaches every client on every instance exactly once; ws.sessions lists all of them
    with their instance; ws.close.<id> closes a session with 1000 whichever instance the call hits."""
    inbox = Inbox()
    instances = await start_instances(make_lattice, 3, "chat")
    component = await instances[0][0].component("chat", inbox.record)
    clients = [await open_ws(port) for _, port in instances for _ in range(2)]
    try:
        sessions = [await hello(ws, inbox, i + 1) for i, ws in enumerate(clients)]
        for i in range(5):
            assert await component.publish(BrokerMessage("ws.broadcast", f"all {i}".encode(), None)) == Ok(
                None
            )
        for ws in clients:
            assert [(await recv_json(ws))["body"] for _ in range(5)] == [f"all {i}" for i in range(5)]
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.2)
        listing = await component.request("ws.sessions", b"")
        assert isinstance(listing, Ok)
        assert listing.value.subject == "ws.sessions"
        entries = json.loads(listing.value.body)
        assert sorted(e["reply_to"] for e in entries) == sorted(sessions)
        assert len({e["instance"] for e in entries}) == 3
        for ws, session in zip(clients, sessions, strict=True):
            closing = session.replace("ws.session.", "ws.close.")
            assert await component.publish(BrokerMessage(closing, b"bye", None)) == Ok(None)
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), WAIT)
            assert info.value.rcvd is not None
            assert (info.value.rcvd.code, info.value.rcvd.reason) == (1000, "bye")
    finally:
        for ws in clients:
            await ws.close()
    assert sum([figure(await health(lattice), r"forwarded (\d+)") for lattice, _ in instances]) > 0


async def test_a_killed_instance_s_sessions_err_at_once_and_the_rest_carry_on(
    make_lattice: MakeLattice,
) -> None:
    """kill -9 one instance: a publish to its sessions errs within 1 s (no responders), ws.sessions
    still answers with the rest (partial until presence expires); after a restart the old ids err
    and new sessions work."""
    inbox = Inbox()
    (a, port_a), (b, port_b) = await start_instances(make_lattice, 2, "echo")
    component = await a.component("echo", inbox.record)
    async with await open_ws(port_a) as ws_a:
        await hello(ws_a, inbox, 1)
        ws_b = await open_ws(port_b)
        on_b = await hello(ws_b, inbox, 2)
        await b.process.kill()
        loop = asyncio.get_running_loop()
        started = loop.time()
        result = await component.publish(BrokerMessage(on_b, b"anyone?", None))
        took = loop.time() - started
        assert isinstance(result, Err)
        assert "is gone" in result.value
        assert took < 1.0, f"the error took {took:.2f}s"
        listing = await component.request("ws.sessions", b"")
        assert isinstance(listing, Ok)
        assert [e["reply_to"] for e in json.loads(listing.value.body)] == [inbox.messages[0].reply_to]
        # Restart b as its host would: a new instance id, so new ids; the old one stays gone.
        restarted = await make_lattice()
        port_c = free_port()
        for link in (
            handler_link(PROVIDER, "echo", MODE="server", URI=f"127.0.0.1:{port_c}"),
            consumer_link("echo", PROVIDER, MODE="server"),
        ):
            await restarted.put_link(link)
        await wait_for_each_other([a, restarted])
        assert isinstance(await component.publish(BrokerMessage(on_b, b"still?", None)), Err)
        async with await open_ws(port_c) as ws_c:
            on_c = await hello(ws_c, inbox, 3)
            for i in range(10):
                assert await component.publish(BrokerMessage(on_c, str(i).encode(), None)) == Ok(None)
            assert [(await recv_json(ws_c))["body"] for _ in range(10)] == [str(i) for i in range(10)]


async def test_a_component_not_linked_to_a_server_cannot_reach_its_sessions_anywhere(
    make_lattice: MakeLattice,
) -> None:
    """Isolation holds on every instance: an intruder with a consumer link but no handler link from
    that server gets err for its sessions whichever instance its publish lands on."""
    inbox = Inbox()
    instances = await start_instances(make_lattice, 2, "owner")
    for lattice, _ in instances:
        await lattice.put_link(consumer_link("intruder", PROVIDER, MODE="server"))
    await instances[0][0].component("owner", inbox.record)
    intruder = await instances[0][0].component("intruder", inbox.record)
    async with await open_ws(instances[0][1]) as ws:
        session = await hello(ws, inbox, 1)
        for _ in range(20):
            result = await intruder.publish(BrokerMessage(session, b"sneaky", None))
            assert isinstance(result, Err)
            assert "can reach" in result.value or "not held" in result.value
            closing = await intruder.publish(BrokerMessage(session.replace("session", "close"), b"", None))
            assert isinstance(closing, Err)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.3)
        listing = await intruder.request("ws.sessions", b"")
        assert isinstance(listing, Ok)
        assert json.loads(listing.value.body) == []
    assert sum([figure(await health(lattice), r"forwarded (\d+)") for lattice, _ in instances]) > 0


async def test_hostile_messages_on_the_forwarding_subjects_change_nothing(
    make_lattice: MakeLattice, nats_server: NatsServer, connect: Any
) -> None:
    """Garbage, empty and huge payloads, unknown operations and missing reply subjects on every
    forwarding subject are dropped and counted; the instance keeps serving."""
    inbox = Inbox()
    [(a, port)] = await start_instances(make_lattice, 1, "echo")
    component: NativeComponent = await a.component("echo", inbox.record)
    peer = await connect(nats_server)
    message = await health(a)
    found = re.search(r"instance ([a-z2-7]{10}) ", message)
    assert found is not None
    tag = found.group(1)
    base = f"default.{PROVIDER}.ws"
    payloads = [b"", b"\xff" * 10, b"\x05" + b"\xff\xfe\xfd\xfc\xfb", b"\xff\xff\xff\xff\x0f", b"x" * 500_000]
    subjects = [f"{base}.{tag}.{op}" for op in ("publish", "request", "nope", "answer-1")]
    subjects += [f"{base}.all.{op}" for op in ("broadcast", "sessions", "here", "gone", "x.y")]
    for subject in subjects:
        for payload in payloads:
            await peer.publish(subject, payload, reply="_INBOX.hostile")
            await peer.publish(subject, payload)
    answer = await peer.request(f"{base}.{tag}.publish", b"\x01", timeout=WAIT)
    assert answer.data.startswith(b"\x01")  # err("… does not parse …"), not silence
    await peer.flush()
    async with await open_ws(port) as ws:
        session = await hello(ws, inbox, 1)
        assert await component.publish(BrokerMessage(session, b"fine", None)) == Ok(None)
        assert (await recv_json(ws))["body"] == "fine"
    assert figure(await health(a), r"bad lattice message (\d+)") > 0


# -- client mode across instances ------------------------------------------------------------------


async def start_client_instances(
    make_lattice: MakeLattice, count: int, component: str, uri: str, **config: str
) -> list[LocalLattice]:
    started = []
    for _ in range(count):
        lattice = await make_lattice()
        for link in (
            handler_link(PROVIDER, component, MODE="client", URI=uri, **config),
            consumer_link(component, PROVIDER, MODE="client", URI=uri, **config),
        ):
            applied = await lattice.put_link(link)
            assert applied is not None
            assert "rejected link" not in applied, applied
        started.append(lattice)
    await wait_for_each_other(started)
    return started


async def test_one_instance_connects_and_every_instance_sends_through_it(make_lattice: MakeLattice) -> None:
    """CONNECTIONS=one (the default): of two instances only one connects out; the server's frames
    reach the component once; publishes, replies to ws.conn.<id> and requests through either
    instance reach the server on that one connection."""
    from tests.integration.test_client_mode import Peer, envelope

    async def answer_requests(conn: Any, frame: str | bytes) -> None:
        message = json.loads(frame)
        if message.get("reply_to", "").startswith("ws.req."):
            await conn.send(envelope(message["reply_to"], "answered " + message["body"]))

    peer = await Peer(on_frame=answer_requests).start()
    try:
        inbox = Inbox()
        a, b = await start_client_instances(make_lattice, 2, "feed", peer.uri)
        component = await a.component("feed", inbox.record)
        conn = await peer.connection()
        for i in range(5):
            await conn.send(envelope("tick", str(i)))
        messages = await inbox.wait_for(5)
        assert [m.body for m in messages] == [str(i).encode() for i in range(5)]
        with pytest.raises(TimeoutError):  # once, not once per instance; and no second connection
            await asyncio.wait_for(peer.connections.get(), 0.5)
        assert len(inbox.messages) == 5
        reply_to = messages[0].reply_to
        assert reply_to is not None
        for i in range(20):
            assert await component.publish(BrokerMessage("out", f"p{i}".encode(), None)) == Ok(None)
            assert await component.publish(BrokerMessage(reply_to, f"r{i}".encode(), None)) == Ok(None)
        bodies = [(await peer.json_frame())["body"] for _ in range(40)]
        assert bodies == [f"{kind}{i}" for i in range(20) for kind in ("p", "r")]
        for i in range(10):
            result = await component.request("ask", f"q{i}".encode(), 5000)
            assert isinstance(result, Ok), result
            assert result.value.body == f"answered q{i}".encode()
        holders = [await health(lattice) for lattice in (a, b)]
        assert sum("1/1 client connection(s) open" in h for h in holders) == 1
        assert sum("held by another instance" in h for h in holders) == 1
        assert sum([figure(h, r"forwarded (\d+)") for h in holders]) > 0
    finally:
        await peer.stop()


async def test_when_the_holder_is_killed_another_instance_connects(make_lattice: MakeLattice) -> None:
    """kill -9 the instance that holds a connection: once its lease expires another instance
    connects, and the component receives and sends again (the time it took is printed)."""
    from tests.integration.test_client_mode import Peer, envelope

    peer = await Peer().start()
    try:
        inbox = Inbox()
        lattices = await start_client_instances(make_lattice, 2, "feed", peer.uri)
        component = await lattices[0].component("feed", inbox.record)
        await peer.connection()
        open_ = [lattice for lattice in lattices if "1/1 client connection(s) open" in await health(lattice)]
        assert len(open_) == 1
        holder = open_[0]
        other = next(lattice for lattice in lattices if lattice is not holder)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await holder.process.kill()
        conn = await peer.connection()
        took = loop.time() - started
        print(f"failover: the other instance connected {took:.2f}s after the holder was killed")
        assert took < 8.0
        await conn.send(envelope("after", "failover"))
        [after] = await inbox.wait_for(1)
        assert after.body == b"failover"
        assert await component.publish(BrokerMessage(after.reply_to or "", b"back", None)) == Ok(None)
        assert (await peer.json_frame())["body"] == "back"
        assert "1/1 client connection(s) open" in await health(other)
    finally:
        await peer.stop()


async def test_connections_every_connects_from_every_instance(make_lattice: MakeLattice) -> None:
    """CONNECTIONS=every: each instance connects, so each frame reaches the component once per instance."""
    from tests.integration.test_client_mode import Peer, envelope

    peer = await Peer().start()
    try:
        inbox = Inbox()
        lattices = await start_client_instances(make_lattice, 2, "feed", peer.uri, CONNECTIONS="every")
        await lattices[0].component("feed", inbox.record)
        first, second = await peer.connection(), await peer.connection()
        await first.send(envelope("tick", "1"))
        await second.send(envelope("tick", "2"))
        assert sorted(m.body for m in await inbox.wait_for(2)) == [b"1", b"2"]
    finally:
        await peer.stop()
