"""wRPC over a real nats-server: the wire sequence, chunking, concurrency and every failure path."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from provider.errors import (
    IncompleteResults,
    InvocationTimeout,
    NoResponders,
    OutboundBufferFull,
    ProtocolViolation,
    ProviderError,
    TransportClosed,
)
from provider.host.nats_server import NatsServer
from provider.wrpc.call import ServeLimits
from provider.wrpc.codec import Err, Ok, decode, encode
from provider.wrpc.connection import connect as connect_nats
from provider.wrpc.messaging import (
    BROKER_MESSAGE,
    HANDLE_MESSAGE,
    MESSAGE_RESULT,
    PUBLISH,
    REQUEST,
    BrokerMessage,
    MessageResult,
    RequestParams,
    UnitResult,
)
from provider.wrpc.nats import Headers, Inbox, PerCallInbox, SharedInbox, WrpcTransport, ensure_active
from provider.wrpc.protocol import header_block
from provider.wrpc.subjects import invocation_subject
from tests.conftest import Connect

PREFIX = "default.pymsg"
PUBLISH_SUBJECT = invocation_subject(PREFIX, PUBLISH.instance, PUBLISH.name)
REQUEST_SUBJECT = invocation_subject(PREFIX, REQUEST.instance, REQUEST.name)
WAIT = 5.0

InboxFactory = Callable[[NatsClient], Inbox]


@pytest.fixture(params=[SharedInbox, PerCallInbox], ids=["shared-inbox", "per-call-inbox"])
def inbox_factory(request: pytest.FixtureRequest) -> InboxFactory:
    """Both inbox strategies must behave the same on the wire."""
    factory: InboxFactory = request.param
    return factory


@pytest.fixture
async def pair(
    connect: Connect, nats_server: NatsServer, inbox_factory: InboxFactory
) -> AsyncIterator[tuple[WrpcTransport, WrpcTransport]]:
    """A caller and a callee transport, each on its own connection."""
    async for transports in _pair(connect, nats_server, inbox_factory):
        yield transports


@pytest.fixture
async def small_pair(
    connect: Connect, small_nats_server: NatsServer, inbox_factory: InboxFactory
) -> AsyncIterator[tuple[WrpcTransport, WrpcTransport]]:
    """The same on a server whose max_payload is 4096."""
    async for transports in _pair(connect, small_nats_server, inbox_factory):
        yield transports


async def _pair(
    connect: Connect, server: NatsServer, inbox_factory: InboxFactory
) -> AsyncIterator[tuple[WrpcTransport, WrpcTransport]]:
    caller_nc, callee_nc = await connect(server), await connect(server)
    caller = WrpcTransport(caller_nc, inbox=inbox_factory(caller_nc))
    callee = WrpcTransport(callee_nc, inbox=inbox_factory(callee_nc))
    await caller.start()
    await callee.start()
    yield caller, callee
    await caller.close()
    await callee.close()


async def echo_request(params: RequestParams, headers: Headers) -> MessageResult:
    """Answers a request with its own body, the subject reversed, and the caller's source-id."""
    return Ok(BrokerMessage(params.subject[::-1], params.body, headers.get("source-id")))


async def accept_publish(msg: BrokerMessage, headers: Headers) -> UnitResult:
    return Ok(None) if msg.subject != "refuse" else Err(f"refused {len(msg.body)} bytes")


async def test_request_round_trip_carries_headers(pair: tuple[WrpcTransport, WrpcTransport]) -> None:
    """Params reach the handler, headers (incl. trace context) pass through, results come back."""
    caller, callee = pair
    seen: list[dict[str, str]] = []

    async def handler(params: RequestParams, headers: Headers) -> MessageResult:
        seen.append(dict(headers))
        return await echo_request(params, headers)

    await callee.serve(PREFIX, REQUEST, handler)
    headers = {
        "source-id": "echo",
        "link-name": "default",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "tracestate": "congo=t61rcWkgMzE",
    }
    result = await caller.invoke(PREFIX, REQUEST, RequestParams("abc", b"ping", 500), headers=headers)
    assert result == Ok(BrokerMessage("cba", b"ping", "echo"))
    assert seen == [headers]


async def test_wit_error_is_a_value(pair: tuple[WrpcTransport, WrpcTransport]) -> None:
    """A handler's Err(...) reaches the caller as a value, not an exception."""
    caller, callee = pair
    await callee.serve(PREFIX, PUBLISH, accept_publish)
    assert await caller.invoke(PREFIX, PUBLISH, BrokerMessage("ok", b"", None)) == Ok(None)
    assert await caller.invoke(PREFIX, PUBLISH, BrokerMessage("refuse", b"xyz", None)) == Err(
        "refused 3 bytes"
    )


async def test_wire_sequence_is_exactly_the_protocol(
    connect: Connect, nats_server: NatsServer, pair: tuple[WrpcTransport, WrpcTransport]
) -> None:
    """Invocation, handshake, params EOF, results, results EOF: subjects, replies and bytes (spec §3.2)."""
    caller, callee = pair
    await callee.serve(PREFIX, PUBLISH, accept_publish)
    spy = await connect(nats_server)
    wire: list[Msg] = []
    done = asyncio.Event()

    async def record(msg: Msg) -> None:
        wire.append(msg)
        if len(wire) == 5:
            done.set()

    await spy.subscribe(">", cb=record)
    await spy.flush()
    await spy.flush()
    message = BrokerMessage("wasmcloud.echo", b"hello", None)
    await caller.invoke(PREFIX, PUBLISH, message, headers={"source-id": "echo"})
    await asyncio.wait_for(done.wait(), WAIT)
    await spy.flush()
    # The caller's params EOF and the callee's results are independent streams: sort by role.
    invocation, handshake = wire[0], wire[1]
    rc, rs = invocation.reply, handshake.reply
    by_subject = {m.subject: m for m in wire[2:]}
    assert invocation.subject == PUBLISH_SUBJECT
    assert invocation.data.hex() == "0e7761736d636c6f75642e6563686f0568656c6c6f00"
    assert invocation.headers == {"source-id": "echo"}
    assert handshake.subject == rc
    assert handshake.data == b""
    assert rs
    assert rs != rc
    assert by_subject[f"{rs}.params"].data == b""
    results = [m for m in wire if m.subject == f"{rc}.results"]
    assert [m.data for m in results] == [b"\x00", b""]
    assert len(wire) == 5


@pytest.mark.parametrize("size", [10 * 1024, 1024 * 1024], ids=["10KiB", "1MiB"])
async def test_chunked_both_directions_under_max_payload_4096(
    size: int,
    connect: Connect,
    small_nats_server: NatsServer,
    small_pair: tuple[WrpcTransport, WrpcTransport],
) -> None:
    """Params and results far above max_payload travel in chunks, none over 4096 bytes with headers."""
    caller, callee = small_pair
    await callee.serve(PREFIX, REQUEST, echo_request)
    spy = await connect(small_nats_server)
    largest = 0

    async def measure(msg: Msg) -> None:
        nonlocal largest
        raw_headers = len(header_block(msg.headers)) if msg.headers else 0
        largest = max(largest, len(msg.data) + raw_headers)

    await spy.subscribe(">", cb=measure)
    await spy.flush()
    await spy.flush()
    body = bytes(range(256)) * (size // 256)
    result = await caller.invoke(
        PREFIX, REQUEST, RequestParams("big", body, 1000), headers={"source-id": "c"}, timeout=30
    )
    assert isinstance(result, Ok)
    assert result.value.body == body
    await spy.flush()
    assert 3000 < largest <= 4096


async def test_first_chunk_fills_the_invocation_message(
    connect: Connect, small_nats_server: NatsServer, small_pair: tuple[WrpcTransport, WrpcTransport]
) -> None:
    """The invocation carries max_payload − len(Rc) − header bytes of params, the rest follows."""
    caller, callee = small_pair
    await callee.serve(PREFIX, PUBLISH, accept_publish)
    spy = await connect(small_nats_server)
    first: list[Msg] = []

    async def record(msg: Msg) -> None:
        first.append(msg)

    await spy.subscribe(PUBLISH_SUBJECT, cb=record)
    await spy.flush()
    await spy.flush()
    headers = {"source-id": "component-a", "link-name": "default"}
    message = BrokerMessage("s", b"z" * 9000, None)
    assert await caller.invoke(PREFIX, PUBLISH, message, headers=headers) == Ok(None)
    await spy.flush()
    [invocation] = first
    assert len(invocation.data) == 4096 - len(invocation.reply) - len(header_block(headers))
    assert encode(BROKER_MESSAGE, message).startswith(invocation.data)


async def test_a_thousand_concurrent_invocations_all_answered(
    pair: tuple[WrpcTransport, WrpcTransport],
) -> None:
    """1,000 calls in flight at once each get their own answer."""
    caller, callee = pair
    await callee.serve(PREFIX, REQUEST, echo_request)

    async def one(i: int) -> None:
        result = await caller.invoke(
            PREFIX, REQUEST, RequestParams(f"s{i}", str(i).encode(), 10), headers={"source-id": f"c{i}"}
        )
        assert result == Ok(BrokerMessage(f"s{i}"[::-1], str(i).encode(), f"c{i}"))

    await asyncio.gather(*(one(i) for i in range(1000)))


async def test_no_responders_is_a_clear_error(pair: tuple[WrpcTransport, WrpcTransport]) -> None:
    """Invoking a subject nobody serves fails fast with NoResponders, naming the subject."""
    caller, _ = pair
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(NoResponders, match=r"default\.nobody\.wrpc\.0\.0\.1"):
        await caller.invoke("default.nobody", PUBLISH, BrokerMessage("a", b"", None), timeout=WAIT)
    assert loop.time() - started < WAIT / 2


async def test_deadline_exceeded(pair: tuple[WrpcTransport, WrpcTransport]) -> None:
    """A callee that never answers makes the call fail at its deadline, saying what it waited for."""
    caller, callee = pair
    never = asyncio.Event()

    async def stuck(msg: BrokerMessage, headers: Headers) -> UnitResult:
        await never.wait()
        return Ok(None)

    await callee.serve(PREFIX, PUBLISH, stuck)
    with pytest.raises(InvocationTimeout, match="the results"):
        await caller.invoke(PREFIX, PUBLISH, BrokerMessage("a", b"", None), timeout=0.3)


async def test_handler_that_raises_gives_incomplete_results_and_serving_goes_on(
    pair: tuple[WrpcTransport, WrpcTransport], caplog: pytest.LogCaptureFixture
) -> None:
    """A failing handler is a trap for the caller (empty result stream); the next call works."""
    caller, callee = pair

    async def flaky(msg: BrokerMessage, headers: Headers) -> UnitResult:
        if msg.subject == "boom":
            raise RuntimeError("handler exploded")
        return Ok(None)

    served = await callee.serve(PREFIX, PUBLISH, flaky)
    with pytest.raises(IncompleteResults, match="trapped"):
        await caller.invoke(PREFIX, PUBLISH, BrokerMessage("boom", b"", None))
    assert await caller.invoke(PREFIX, PUBLISH, BrokerMessage("fine", b"", None)) == Ok(None)
    assert served.stats.handler_failures == 1
    assert "handler exploded" in caplog.text


async def test_a_handler_may_answer_at_once_wait_or_raise_at_once(
    pair: tuple[WrpcTransport, WrpcTransport], caplog: pytest.LogCaptureFixture
) -> None:
    """A plain function's results are sent from the reader, with no task; an awaitable it
    returns is awaited; raising before returning anything is a trap like any other; calls
    queued behind answers given at once all run (the slot passes on without a task)."""
    caller, callee = pair
    tasks_seen: list[str] = []

    def handler(msg: BrokerMessage, headers: Headers) -> UnitResult | Awaitable[UnitResult]:
        if msg.subject == "boom":
            raise RuntimeError("raised at once")
        if msg.subject == "later":

            async def later() -> UnitResult:
                await asyncio.sleep(0.01)
                return Err("answered later")

            return later()
        task = asyncio.current_task()  # answered in the socket's read callback: in no task at all
        tasks_seen.append(getattr(task.get_coro(), "__qualname__", "?") if task else "")
        return Ok(None)

    served = await callee.serve(PREFIX, PUBLISH, handler, limits=ServeLimits(max_in_flight=1))
    assert await caller.invoke(PREFIX, PUBLISH, BrokerMessage("now", b"", None)) == Ok(None)
    assert tasks_seen == [""]
    assert await caller.invoke(PREFIX, PUBLISH, BrokerMessage("later", b"", None)) == Err("answered later")
    with pytest.raises(IncompleteResults, match="trapped"):
        await caller.invoke(PREFIX, PUBLISH, BrokerMessage("boom", b"", None))
    assert "raised at once" in caplog.text
    results = await asyncio.gather(
        *(caller.invoke(PREFIX, PUBLISH, BrokerMessage(s, b"", None)) for s in ["later", "now"] * 20)
    )
    assert results == [Err("answered later"), Ok(None)] * 20
    assert served.stats.served == 42
    assert served.stats.handler_failures == 1
    assert served.stats.in_flight == 0


async def test_calls_do_not_look_the_event_loop_up_again(
    connect: Connect, nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Python 3.11 each ``asyncio.get_running_loop()`` (so each ``asyncio.create_task``) is a
    ``getpid()`` system call: once warm, calls and their serving (an awaited handler's task
    included) use the loop the transport already knows. With the shared inbox, the provider's
    (a per-call inbox subscribes through nats-py for every call, which looks the loop up itself)."""

    async def handler(msg: BrokerMessage, headers: Headers) -> UnitResult:
        return Ok(None)

    lookups = 0
    real = asyncio.get_running_loop

    def counted() -> asyncio.AbstractEventLoop:
        nonlocal lookups
        lookups += 1
        return real()

    shared: InboxFactory = SharedInbox  # type: ignore[assignment]  # as the fixture's params, which take a NatsConnection
    async for caller, callee in _pair(connect, nats_server, shared):
        await callee.serve(PREFIX, PUBLISH, handler)
        assert await caller.invoke(PREFIX, PUBLISH, BrokerMessage("warm", b"", None)) == Ok(None)
        with monkeypatch.context() as patched:
            patched.setattr(asyncio, "get_running_loop", counted)
            patched.setattr(asyncio.events, "get_running_loop", counted)
            for _ in range(20):
                assert await caller.invoke(PREFIX, PUBLISH, BrokerMessage("again", b"", None)) == Ok(None)
        assert lookups == 0


async def test_a_handler_s_own_call_leaves_in_the_same_write_as_its_handshake(
    pair: tuple[WrpcTransport, WrpcTransport], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A served handler that calls out (a component answering a delivery with a publish) starts
    before the handshake is flushed: handshake and its own invocation go in one write."""
    caller, callee = pair
    await caller.serve("default.back", PUBLISH, accept_publish)

    async def handle(msg: BrokerMessage, headers: Headers) -> UnitResult:
        result: UnitResult = await callee.invoke("default.back", PUBLISH, msg)
        return result

    await callee.serve(PREFIX, HANDLE_MESSAGE, handle)
    transport = callee.nats._transport
    assert transport is not None
    writes: list[list[bytes]] = []
    write = transport.writelines

    def counted(lines: list[bytes]) -> None:
        writes.append(list(lines))
        write(lines)

    monkeypatch.setattr(transport, "writelines", counted)
    for _ in range(3):
        writes.clear()
        assert await caller.invoke(PREFIX, HANDLE_MESSAGE, BrokerMessage("ok", b"x", None)) == Ok(None)
        first = b"".join(writes[0])
        assert first.count(b"PUB ") >= 2, writes  # the handshake and the handler's own invocation
        assert b"default.back" in first


async def raw_caller(connect: Connect, server: NatsServer) -> tuple[NatsClient, str, asyncio.Queue[Msg]]:
    """A hand-made wRPC caller: a plain NATS connection, an inbox ``Rc`` and a queue receiving
    what arrives on ``Rc`` and ``Rc.results``."""
    raw = await connect(server)
    inbox = raw.new_inbox()
    got: asyncio.Queue[Msg] = asyncio.Queue()

    async def collect(msg: Msg) -> None:
        await got.put(msg)

    await raw.subscribe(inbox, cb=collect)
    await raw.subscribe(inbox + ".results", cb=collect)
    return raw, inbox, got


async def test_garbage_params_get_a_handshake_and_an_empty_result_stream(
    connect: Connect, nats_server: NatsServer, pair: tuple[WrpcTransport, WrpcTransport]
) -> None:
    """Invalid params (here a bad option tag) are logged, answered with EOF only, and serving goes on."""
    caller, callee = pair
    served = await callee.serve(PREFIX, PUBLISH, accept_publish)
    raw, inbox, got = await raw_caller(connect, nats_server)
    await raw.publish(PUBLISH_SUBJECT, bytes.fromhex("016100" + "07"), reply=inbox)
    handshake = await asyncio.wait_for(got.get(), WAIT)
    eof = await asyncio.wait_for(got.get(), WAIT)
    assert (handshake.subject, handshake.data) == (inbox, b"")
    assert handshake.reply
    assert (eof.subject, eof.data) == (inbox + ".results", b"")
    assert served.stats.bad_params == 1
    assert await caller.invoke(PREFIX, PUBLISH, BrokerMessage("after", b"", None)) == Ok(None)


async def test_garbage_on_the_params_channel(
    connect: Connect, nats_server: NatsServer, pair: tuple[WrpcTransport, WrpcTransport]
) -> None:
    """A truncated first chunk followed by invalid UTF-8 on Rs.params is rejected cleanly."""
    caller, callee = pair
    served = await callee.serve(PREFIX, PUBLISH, accept_publish)
    raw, inbox, got = await raw_caller(connect, nats_server)
    await raw.publish(PUBLISH_SUBJECT, b"\x02", reply=inbox)  # a 2-byte subject, not yet sent
    handshake = await asyncio.wait_for(got.get(), WAIT)
    await raw.publish(handshake.reply + ".params", b"\xc3\x28")  # invalid UTF-8
    eof = await asyncio.wait_for(got.get(), WAIT)
    assert (eof.subject, eof.data) == (inbox + ".results", b"")
    assert served.stats.bad_params == 1
    assert await caller.invoke(PREFIX, PUBLISH, BrokerMessage("after", b"", None)) == Ok(None)


async def test_params_eof_before_a_complete_value(
    connect: Connect, nats_server: NatsServer, pair: tuple[WrpcTransport, WrpcTransport]
) -> None:
    """An empty params message before the value is complete is an error, not a hang."""
    _, callee = pair
    served = await callee.serve(PREFIX, PUBLISH, accept_publish)
    raw, inbox, got = await raw_caller(connect, nats_server)
    await raw.publish(PUBLISH_SUBJECT, b"\x05ab", reply=inbox)
    handshake = await asyncio.wait_for(got.get(), WAIT)
    await raw.publish(handshake.reply + ".params", b"")
    eof = await asyncio.wait_for(got.get(), WAIT)
    assert eof.data == b""
    assert served.stats.bad_params == 1


async def fake_callee(raw: NatsClient, behaviour: Callable[[Msg], Any]) -> None:
    """Serve the request subject with raw NATS, doing whatever ``behaviour`` does."""

    async def on_invocation(msg: Msg) -> None:
        await behaviour(msg)

    await raw.subscribe(REQUEST_SUBJECT, cb=on_invocation)
    await raw.flush()
    await raw.flush()


async def test_results_before_the_handshake_are_kept(
    connect: Connect, nats_server: NatsServer, pair: tuple[WrpcTransport, WrpcTransport]
) -> None:
    """A callee that streams its results ahead of the handshake is still understood (spec §3.2)."""
    caller, _ = pair
    raw = await connect(nats_server)
    answer = Ok(BrokerMessage("_INBOX.x", b"pong", None))
    encoded = encode(MESSAGE_RESULT, answer)

    async def results_first(msg: Msg) -> None:
        await raw.publish(msg.reply + ".results", encoded[:3])
        await raw.publish(msg.reply + ".results", encoded[3:])
        await raw.publish(msg.reply + ".results", b"")
        await raw.publish(msg.reply, b"", reply=raw.new_inbox())

    await fake_callee(raw, results_first)
    assert await caller.invoke(PREFIX, REQUEST, RequestParams("svc", b"ping", 5000)) == answer


async def test_handshake_without_reply_subject(
    connect: Connect, nats_server: NatsServer, pair: tuple[WrpcTransport, WrpcTransport]
) -> None:
    """A handshake with no reply subject breaks the protocol and is reported as such."""
    caller, _ = pair
    raw = await connect(nats_server)

    async def no_reply(msg: Msg) -> None:
        await raw.publish(msg.reply, b"")

    await fake_callee(raw, no_reply)
    with pytest.raises(ProtocolViolation, match="reply subject"):
        await caller.invoke(PREFIX, REQUEST, RequestParams("svc", b"", 1), timeout=WAIT)


async def test_empty_result_stream_is_a_trap(
    connect: Connect, nats_server: NatsServer, pair: tuple[WrpcTransport, WrpcTransport]
) -> None:
    """Handshake then EOF alone, as a Rust server sends for a trap, is IncompleteResults."""
    caller, _ = pair
    raw = await connect(nats_server)

    async def trap(msg: Msg) -> None:
        await raw.publish(msg.reply, b"", reply=raw.new_inbox())
        await raw.publish(msg.reply + ".results", b"")

    await fake_callee(raw, trap)
    with pytest.raises(IncompleteResults, match="after 0 byte"):
        await caller.invoke(PREFIX, REQUEST, RequestParams("svc", b"", 1), timeout=WAIT)


async def test_invalid_results_are_a_protocol_violation(
    connect: Connect, nats_server: NatsServer, pair: tuple[WrpcTransport, WrpcTransport]
) -> None:
    """Results that can never decode fail the call with a clear error."""
    caller, _ = pair
    raw = await connect(nats_server)

    async def garbage(msg: Msg) -> None:
        await raw.publish(msg.reply, b"", reply=raw.new_inbox())
        await raw.publish(msg.reply + ".results", b"\x09")

    await fake_callee(raw, garbage)
    with pytest.raises(ProtocolViolation, match="invalid result tag"):
        await caller.invoke(PREFIX, REQUEST, RequestParams("svc", b"", 1), timeout=WAIT)


async def test_close_fails_calls_in_flight(pair: tuple[WrpcTransport, WrpcTransport]) -> None:
    """Closing the caller's transport ends its pending calls with TransportClosed."""
    caller, callee = pair
    entered = asyncio.Event()
    never = asyncio.Event()

    async def stuck(msg: BrokerMessage, headers: Headers) -> UnitResult:
        entered.set()
        await never.wait()
        return Ok(None)

    await callee.serve(PREFIX, PUBLISH, stuck)
    call = asyncio.create_task(caller.invoke(PREFIX, PUBLISH, BrokerMessage("a", b"", None)))
    await asyncio.wait_for(entered.wait(), WAIT)
    await caller.close()
    with pytest.raises(TransportClosed):
        await asyncio.wait_for(call, WAIT)


async def test_queue_group_spreads_calls_over_instances(
    connect: Connect, nats_server: NatsServer, inbox_factory: InboxFactory
) -> None:
    """Two servers of one provider id share the queue group: each call is served exactly once."""
    transports = []
    for _ in range(3):
        nc = await connect(nats_server)
        transport = WrpcTransport(nc, inbox=inbox_factory(nc))
        await transport.start()
        transports.append(transport)
    caller, first, second = transports
    served = [
        await first.serve(PREFIX, PUBLISH, accept_publish),
        await second.serve(PREFIX, PUBLISH, accept_publish),
    ]
    for _ in range(200):
        assert await caller.invoke(PREFIX, PUBLISH, BrokerMessage("a", b"", None)) == Ok(None)
    counts = [s.stats.served for s in served]
    assert sum(counts) == 200
    assert all(count > 0 for count in counts)
    for transport in transports:
        await transport.close()


def test_decoded_request_params_vector_matches_the_spec() -> None:
    """Sanity: the request vector from spec §4.3 decodes to the params the tests send."""
    params = decode(REQUEST.params, bytes.fromhex("037376630470696e678827"))
    assert params == RequestParams("svc", b"ping", 5000)


async def test_publish_now_while_disconnected_is_bounded_and_raises_outbound_buffer_full() -> None:
    """With NATS down, publish_now queues up to the reconnect buffer (pending_size) and then raises
    OutboundBufferFull, a ProviderError naming the limit; once NATS is back, publishing works again."""
    server = NatsServer().start()
    port = server.port
    disconnected, reconnected = asyncio.Event(), asyncio.Event()

    async def on_disconnected() -> None:
        disconnected.set()

    async def on_reconnected() -> None:
        reconnected.set()

    limit = 64 * 1024
    nc = await connect_nats(
        server.url,
        pending_size=limit,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.05,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
    )
    restarted: NatsServer | None = None
    try:
        server.stop()
        await asyncio.wait_for(disconnected.wait(), WAIT)
        queued, refusal = 0, None
        for _ in range(10_000):  # 10 MiB if nothing stopped it
            try:
                nc.publish_now("bounded.subject", b"x" * 1024)
            except OutboundBufferFull as exc:
                refusal = exc
                break
            queued += 1
        assert isinstance(refusal, ProviderError), f"{queued} KiB queued and no error"
        assert "limit of 65536" in str(refusal)
        assert nc.pending_data_size <= limit
        assert 0 < queued * 1024 <= limit
        assert nc.publishes_refused == 1
        restarted = NatsServer(port=port).start()
        await asyncio.wait_for(reconnected.wait(), WAIT)
        got: asyncio.Queue[Msg] = asyncio.Queue()

        async def collect(msg: Msg) -> None:
            await got.put(msg)

        await nc.subscribe("after.reconnect", cb=collect)
        await ensure_active(nc)
        nc.publish_now("after.reconnect", b"back")
        assert (await asyncio.wait_for(got.get(), WAIT)).data == b"back"
    finally:
        await nc.close()
        server.stop()
        if restarted is not None:
            restarted.stop()
