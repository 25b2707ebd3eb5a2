"""Client mode: the two links of a connection never undo each other; raw frames keep their type.

The provider connects out to a :class:`~tests.integration.test_client_mode.Peer` (a websockets
server on loopback); components are Python functions served over wRPC.
"""

from __future__ import annotations

from provider.host.lattice import LocalLattice, consumer_link, handler_link
from provider.host.native import NativeComponent, echo
from provider.wrpc.codec import Ok
from provider.wrpc.messaging import BrokerMessage, UnitResult
from tests.conftest import Inbox, MakeLattice
from tests.integration.test_client_mode import PROVIDER, WAIT, Peer, envelope, health_message
from tests.integration.test_client_mode import peer as peer  # the fixture


async def put(lattice: LocalLattice, link: object) -> str:
    applied = await lattice.put_link(link)  # type: ignore[arg-type]
    assert applied is not None
    assert "rejected link" not in applied, applied
    return applied


async def test_a_link_that_does_not_mention_a_credential_never_drops_it(
    make_lattice: MakeLattice, peer: Peer
) -> None:
    """A handler link with AUTH_TOKEN and HEADER_*, then a consumer link naming only MODE, URI and
    FORMAT: the connection keeps the token and header (no reconnect without them), and the reply
    subject the component already holds keeps working."""
    lattice = await make_lattice()
    inbox = Inbox()
    component = await lattice.component("holder", inbox.record)
    full = {
        "MODE": "client",
        "URI": peer.uri,
        "FORMAT": "json",
        "AUTH_TOKEN": "t0ken-1",
        "HEADER_X-Trace": "a",
    }
    await put(lattice, handler_link(PROVIDER, "holder", **full))
    first = await peer.connection()
    assert first.request is not None
    assert first.request.headers["Authorization"] == "Bearer t0ken-1"
    await first.send(envelope("news", "1"))
    [news] = await inbox.wait_for(1)
    assert news.reply_to is not None
    await put(lattice, consumer_link("holder", PROVIDER, MODE="client", URI=peer.uri, FORMAT="json"))
    # Same connection: the answer to the held reply subject arrives on it, and no other connection came.
    assert await component.publish(BrokerMessage(news.reply_to, b"answer", None)) == Ok(None)
    assert (await peer.json_frame())["body"] == "answer"
    assert await component.publish(BrokerMessage("out", b"via consumer", None)) == Ok(None)
    assert (await peer.json_frame())["body"] == "via consumer"
    assert peer.connections.empty()
    assert "1/1 client connection(s) open" in await health_message(lattice)


async def test_a_connection_keeps_its_reply_subject_across_config_changes(
    make_lattice: MakeLattice, peer: Peer
) -> None:
    """A changed link reconnects with the new settings in place: the reply subject stays valid, the
    other link's credential stays, and a real conflict is reported with the key named."""
    lattice = await make_lattice()
    inbox = Inbox()
    component = await lattice.component("evolving", inbox.record)
    await put(lattice, handler_link(PROVIDER, "evolving", MODE="client", URI=peer.uri, AUTH_TOKEN="keep-me"))
    await peer.connection()  # the first, without X-V: the consumer link adds it
    await put(
        lattice, consumer_link("evolving", PROVIDER, MODE="client", URI=peer.uri, **{"HEADER_X-V": "1"})
    )
    second = await peer.connection()
    assert second.request is not None
    assert second.request.headers["X-V"] == "1"
    assert second.request.headers["Authorization"] == "Bearer keep-me"
    await second.send(envelope("news", "1"))
    [news] = await inbox.wait_for(1)
    # The consumer link changes its header: a reconnect, same id, the token still there.
    await put(
        lattice, consumer_link("evolving", PROVIDER, MODE="client", URI=peer.uri, **{"HEADER_X-V": "2"})
    )
    third = await peer.connection()
    assert third.request is not None
    assert third.request.headers["X-V"] == "2"
    assert third.request.headers["Authorization"] == "Bearer keep-me"
    assert await component.publish(BrokerMessage(news.reply_to or "", b"still valid", None)) == Ok(None)
    assert (await peer.json_frame())["body"] == "still valid"
    # A real conflict: both links set AUTH_TOKEN, to different values. The link put last wins, said so.
    since = lattice.process.total_lines
    await put(
        lattice,
        consumer_link(
            "evolving", PROVIDER, MODE="client", URI=peer.uri, AUTH_TOKEN="0ther-t0ken", **{"HEADER_X-V": "2"}
        ),
    )
    line = await lattice.process.wait_for_line(
        r"evolving: link 'default' .* sets AUTH_TOKEN differently", WAIT, since
    )
    assert "0ther-t0ken" not in line
    fourth = await peer.connection()
    assert fourth.request is not None
    assert fourth.request.headers["Authorization"] == "Bearer 0ther-t0ken"
    await fourth.send(envelope("later", "2"))
    _, later = await inbox.wait_for(2)
    assert later.reply_to == news.reply_to


async def test_raw_client_connection_keeps_the_frame_type(make_lattice: MakeLattice, peer: Peer) -> None:
    """FORMAT=raw in client mode: what the server sends binary comes back binary, text as text,
    an empty binary frame and UTF-8 bytes included; ws.conn.<id>.text|.binary pick the type."""
    lattice = await make_lattice()
    inbox = Inbox()

    async def echo_and_record(component: NativeComponent, msg: BrokerMessage) -> UnitResult:
        await inbox.record(component, msg)
        return await echo(component, msg)

    component = await lattice.component("rawecho", echo_and_record)
    for link in (
        handler_link(PROVIDER, "rawecho", MODE="client", URI=peer.uri, FORMAT="raw"),
        consumer_link("rawecho", PROVIDER, MODE="client", URI=peer.uri, FORMAT="raw"),
    ):
        await put(lattice, link)
    conn = await peer.connection()
    for frame in (b"", b"utf-8 bytes", b"\xff", "", "text"):
        await conn.send(frame)
        answer = await peer.frame()
        assert type(answer) is type(frame), (frame, answer)
        assert answer == frame
    base = (inbox.messages[-1].reply_to or "").removesuffix(".binary")
    assert await component.publish(BrokerMessage(f"{base}.binary", b"forced", None)) == Ok(None)
    assert await peer.frame() == b"forced"
    assert await component.publish(BrokerMessage(f"{base}.text", b"forced", None)) == Ok(None)
    assert await peer.frame() == "forced"
