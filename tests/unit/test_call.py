"""The wRPC call state machines (provider/wrpc/call.py), driven message by message: no sockets,
no clock. Each test feeds what a peer would send and checks what the machine publishes and
reports."""

from __future__ import annotations

from typing import Any

import pytest

from provider.errors import (
    IncompleteResults,
    InvalidEncoding,
    InvocationTimeout,
    NoResponders,
    Overloaded,
    ProtocolViolation,
    TransportClosed,
    ValueTooLarge,
)
from provider.wrpc.call import (
    Admission,
    ClientCall,
    Completed,
    Failed,
    Publish,
    ServedCall,
    ServedState,
    ServeLimits,
    Verdict,
)
from provider.wrpc.codec import Err, Ok, encode
from provider.wrpc.messaging import (
    BROKER_MESSAGE,
    MESSAGE_RESULT,
    PUBLISH,
    UNIT_RESULT,
    BrokerMessage,
    UnitResult,
)
from provider.wrpc.protocol import header_block

SUBJECT = "default.p.wrpc.0.0.1.wasmcloud:messaging/consumer@0.2.0.publish"
RC = "_INBOX.c.1"
RS = "_INBOX.s.7"
MESSAGE = BrokerMessage("a", b"\x01\x02", "r")
PARAMS = encode(BROKER_MESSAGE, MESSAGE)  # 01 61 02 01 02 01 01 72 (spec §4.3)
NO_RESPONDERS = b"NATS/1.0 503\r\n\r\n"


def client(
    params: bytes = PARAMS, *, max_payload: int = 1 << 20, headers: bytes = b"", **kw: Any
) -> ClientCall[Any]:
    call: ClientCall[Any] = ClientCall(
        SUBJECT, UNIT_RESULT, params, max_payload=max_payload, timeout=2.0, headers=headers, **kw
    )
    call.start(RC)
    return call


def served(
    data: bytes = PARAMS, reply: bytes = RC.encode(), **kw: Any
) -> ServedCall[BrokerMessage, UnitResult]:
    options: dict[str, Any] = {"max_payload": 1 << 20, "timeout": 1.5} | kw
    return ServedCall(SUBJECT, PUBLISH.params, PUBLISH.results, reply, data, None, **options)


def only_event(call: ClientCall[Any] | ServedCall[Any, Any]) -> Completed[Any] | Failed:
    events = call.events_received()
    assert len(events) == 1, events
    return events[0]


def failure(call: ClientCall[Any] | ServedCall[Any, Any]) -> Exception:
    event = only_event(call)
    assert isinstance(event, Failed), event
    return event.error


# --- the caller -------------------------------------------------------------------------------


def test_client_happy_path_sends_invocation_then_params_end_and_completes() -> None:
    """Invocation on start; the handshake names Rs, so the params' end goes to Rs.params; results complete."""
    block = header_block({"source-id": "p"})
    call = client(headers=block)
    assert call.data_to_send() == [Publish(SUBJECT, PARAMS, RC, block)]
    assert call.events_received() == ()
    call.receive(b"", RS.encode(), b"", None)
    assert call.state.name == "AWAITING_RESULTS"
    assert call.data_to_send() == [Publish(RS + ".params", b"")]
    call.receive(b"results", b"", b"\x00", None)
    assert only_event(call) == Completed(Ok(None))
    assert call.state.name == "DONE"


def test_client_chunks_params_by_max_payload() -> None:
    """The invocation carries max_payload − len(Rc) − header bytes; the rest goes in max_payload chunks."""
    params = bytes(range(256)) * 4  # 1024 bytes
    block = header_block({"k": "v"})
    call = client(params, max_payload=100, headers=block)
    [invocation] = call.data_to_send()
    first = 100 - len(RC) - len(block)
    assert invocation.payload == params[:first]
    call.receive(b"", RS.encode(), b"", None)
    rest = call.data_to_send()
    assert [m.subject for m in rest] == [RS + ".params"] * len(rest)
    assert all(len(m.payload) <= 100 for m in rest)
    assert rest[-1].payload == b""
    assert invocation.payload + b"".join(m.payload for m in rest) == params


def test_client_results_before_the_handshake_are_kept() -> None:
    """Results may overtake the handshake (different subscriptions): they still complete the call."""
    value = Ok(BrokerMessage("_INBOX.x", b"pong", None))
    encoded = encode(MESSAGE_RESULT, value)
    call: ClientCall[Any] = ClientCall(SUBJECT, MESSAGE_RESULT, b"", max_payload=1 << 20, timeout=1)
    call.start(RC)
    call.data_to_send()
    call.receive(b"results", b"", encoded[:3], None)
    assert call.events_received() == ()
    call.receive(b"results", b"", encoded[3:], None)
    assert only_event(call) == Completed(value)
    call.receive(b"", RS.encode(), b"", None)  # the late handshake changes nothing
    assert call.data_to_send() == ()
    assert call.events_received() == ()


def test_client_results_split_in_many_chunks() -> None:
    """A value cut into single bytes decodes once the last one is in."""
    encoded = encode(UNIT_RESULT, Err("x" * 50))
    call = client()
    call.receive(b"", RS.encode(), b"", None)
    for i in range(len(encoded) - 1):
        call.receive(b"results", b"", encoded[i : i + 1], None)
        assert call.events_received() == ()
    call.receive(b"results", b"", encoded[-1:], None)
    assert only_event(call) == Completed(Err("x" * 50))


def test_client_no_responders_status_fails_fast() -> None:
    """A 503 status message on Rc is NoResponders, and nothing more is sent."""
    call = client()
    call.data_to_send()
    call.receive(b"", b"", b"", NO_RESPONDERS)
    assert isinstance(failure(call), NoResponders)
    assert call.data_to_send() == ()


def test_client_other_status_is_a_protocol_violation() -> None:
    """Any other non-2xx status names itself."""
    call = client()
    call.receive(b"", b"", b"", b"NATS/1.0 408 Request Timeout\r\n\r\n")
    error = failure(call)
    assert isinstance(error, ProtocolViolation)
    assert "408 Request Timeout" in str(error)


@pytest.mark.parametrize(
    ("reply", "why"), [(b"", "did not specify a reply subject"), (b"_INBOX.\xff", "not UTF-8")]
)
def test_client_handshake_with_unusable_reply(reply: bytes, why: str) -> None:
    """A handshake without a reply subject, or with one that is not UTF-8, breaks the protocol."""
    call = client()
    call.receive(b"", reply, b"", None)
    error = failure(call)
    assert isinstance(error, ProtocolViolation)
    assert why in str(error)


def test_client_only_the_first_message_on_rc_is_the_handshake() -> None:
    """A second message on Rc does not send the params' end again."""
    call = client()
    call.data_to_send()
    call.receive(b"", RS.encode(), b"", None)
    assert len(call.data_to_send()) == 1
    call.receive(b"", b"_INBOX.other", b"", None)
    assert call.data_to_send() == ()


def test_client_empty_result_stream_is_a_trap() -> None:
    """End of stream before any value: IncompleteResults counting the bytes seen."""
    call = client()
    call.receive(b"", RS.encode(), b"", None)
    call.receive(b"results", b"", b"", None)
    error = failure(call)
    assert isinstance(error, IncompleteResults)
    assert error.received == 0


def test_client_early_end_after_some_bytes() -> None:
    """End of stream in the middle of a value reports how far it got."""
    call = client()
    call.receive(b"results", b"", b"\x01\x05ab", None)
    call.receive(b"results", b"", b"", None)
    error = failure(call)
    assert isinstance(error, IncompleteResults)
    assert error.received == 4


@pytest.mark.parametrize("garbage", [b"\x09", b"\x00\x00", b"\x01\x02\xc3\x28"])
def test_client_garbage_results(garbage: bytes) -> None:
    """Results that can never decode (bad tag, trailing bytes, bad UTF-8) are a protocol violation."""
    call = client()
    call.receive(b"results", b"", garbage, None)
    assert isinstance(failure(call), ProtocolViolation)


def test_client_results_declared_too_large_fail_at_once() -> None:
    """An err string declared longer than the results limit fails the call at its first chunk."""
    call = client(limit=1000)
    call.receive(b"results", b"", b"\x01\xff\xff\xff\xff\x0f" + b"x" * 10, None)
    error = failure(call)
    assert isinstance(error, ProtocolViolation)
    assert "limit of 1000" in str(error)


@pytest.mark.parametrize(("handshaken", "waiting_for"), [(False, "the handshake"), (True, "the results")])
def test_client_deadline_says_what_it_waited_for(handshaken: bool, waiting_for: str) -> None:
    """expire() ends the call with InvocationTimeout naming the missing step; later input is ignored."""
    call = client()
    if handshaken:
        call.receive(b"", RS.encode(), b"", None)
    call.expire()
    error = failure(call)
    assert isinstance(error, InvocationTimeout)
    assert error.waiting_for == waiting_for
    call.receive(b"results", b"", b"\x00", None)
    call.expire()
    assert call.events_received() == ()


def test_client_fail_and_unknown_channels() -> None:
    """Messages on other sub-subjects are ignored; fail() ends the call once."""
    call = client()
    call.receive(b"results.0", b"", b"\x00", None)
    call.receive(b"error", b"", b"boom", None)
    assert call.events_received() == ()
    call.fail(TransportClosed("closing"))
    call.fail(TransportClosed("again"))
    assert isinstance(failure(call), TransportClosed)


def test_client_start_twice_is_a_programming_error() -> None:
    """start() sends the invocation once."""
    call = client()
    with pytest.raises(RuntimeError, match="start"):
        call.start(RC)


# --- the callee -------------------------------------------------------------------------------


def test_served_whole_params_handshake_results_and_end() -> None:
    """Params whole in the invocation: handshake, Completed(params); results then their end of stream."""
    call = served()
    assert not call.needs_params
    call.accept(RS)
    assert call.data_to_send() == [Publish(RC, b"", RS)]
    assert only_event(call) == Completed(MESSAGE)
    assert call.params == MESSAGE
    call.send_results(Ok(None))
    assert call.data_to_send() == [Publish(RC + ".results", b"\x00"), Publish(RC + ".results", b"")]
    assert call.state is ServedState.DONE


def test_served_chunked_params_arrive_on_rs_params() -> None:
    """Params that go on past the first message are fed from Rs.params until whole."""
    call = served(PARAMS[:3])
    assert call.needs_params
    call.accept(RS)
    assert call.data_to_send() == [Publish(RC, b"", RS)]
    assert call.events_received() == ()
    call.receive(b"params", b"", PARAMS[3:5], None)
    assert call.events_received() == ()
    call.receive(b"", b"", b"ignored", None)  # only Rs.params carries params
    call.receive(b"params", b"", PARAMS[5:], None)
    assert only_event(call) == Completed(MESSAGE)
    assert call.size == len(PARAMS)
    call.receive(b"params", b"", b"", None)  # the caller's end of stream, after the value: fine
    assert call.events_received() == ()


def test_served_results_are_chunked_by_max_payload() -> None:
    """Results larger than max_payload go out in chunks, then the end of stream."""
    call = served(max_payload=8)
    call.accept(RS)
    call.data_to_send()
    call.events_received()
    call.send_results(Err("e" * 30))
    out = call.data_to_send()
    assert all(len(m.payload) <= 8 for m in out)
    assert out[-1] == Publish(RC + ".results", b"")
    assert b"".join(m.payload for m in out) == encode(UNIT_RESULT, Err("e" * 30))


@pytest.mark.parametrize(("reply", "why"), [(b"", "did not specify"), (b"\xfe\xff", "not UTF-8")])
def test_served_invocation_without_usable_reply_is_dropped(reply: bytes, why: str) -> None:
    """Nothing can be answered: the call is dropped at once, and saying why."""
    call = served(reply=reply)
    assert call.state is ServedState.DROPPED
    error = failure(call)
    assert isinstance(error, ProtocolViolation)
    assert why in str(error)
    assert call.data_to_send() == ()


def test_served_garbage_params_get_handshake_and_empty_result_stream() -> None:
    """Invalid first params: the handshake still goes out, then only the end of stream."""
    call = served(bytes.fromhex("01610007"))
    call.accept(RS)
    assert call.data_to_send() == [Publish(RC, b"", RS), Publish(RC + ".results", b"")]
    assert isinstance(failure(call), InvalidEncoding)


def test_served_garbage_on_the_params_channel() -> None:
    """Invalid UTF-8 arriving on Rs.params rejects the call."""
    call = served(b"\x02")
    call.accept(RS)
    call.data_to_send()
    call.receive(b"params", b"", b"\xc3\x28", None)
    assert isinstance(failure(call), InvalidEncoding)
    assert call.data_to_send() == [Publish(RC + ".results", b"")]


def test_served_params_end_before_a_value() -> None:
    """An empty Rs.params message before the value is whole is a protocol violation."""
    call = served(b"\x05ab")
    call.accept(RS)
    call.receive(b"params", b"", b"", None)
    error = failure(call)
    assert isinstance(error, ProtocolViolation)
    assert "after 3 byte(s)" in str(error)


def test_served_list_declared_as_4_gib_is_rejected_at_once() -> None:
    """A body declared larger than the limit rejects the call on the first message: nothing is buffered."""
    call = served(b"\x01a" + b"\xff\xff\xff\xff\x0f" + b"x" * 100, limit=4 << 20)
    assert not call.needs_params
    call.accept(RS)
    error = failure(call)
    assert isinstance(error, ValueTooLarge)
    assert error.needed > 4 << 30
    assert call.data_to_send()[-1] == Publish(RC + ".results", b"")


def test_served_size_past_the_limit_on_a_later_chunk() -> None:
    """A declared length that only shows on Rs.params is refused there."""
    call = served(b"\x01", limit=1000)
    call.accept(RS)
    call.receive(b"params", b"", b"a\x80\x10", None)  # body: 2048 bytes declared
    assert isinstance(failure(call), ValueTooLarge)


def test_served_deadline_only_while_awaiting_params() -> None:
    """expire() rejects a call still waiting for params; a ready call is not touched."""
    waiting = served(b"\x01")
    waiting.accept(RS)
    waiting.data_to_send()
    waiting.expire()
    error = failure(waiting)
    assert isinstance(error, InvocationTimeout)
    assert error.waiting_for == "the params"
    assert waiting.data_to_send() == [Publish(RC + ".results", b"")]
    ready = served()
    ready.accept(RS)
    ready.events_received()
    ready.expire()
    assert ready.events_received() == ()
    assert ready.state is ServedState.READY


def test_served_reject_and_trap() -> None:
    """reject() answers with no results (a limit, closing); trap() after a failed handler does the same."""
    refused = served()
    refused.accept(RS)
    refused.events_received()
    refused.reject(Overloaded("full"))
    assert isinstance(failure(refused), Overloaded)
    trapped = served()
    trapped.accept(RS)
    trapped.data_to_send()
    trapped.trap()
    assert trapped.data_to_send() == [Publish(RC + ".results", b"")]
    trapped.trap()  # idempotent
    assert trapped.data_to_send() == ()


def test_served_misuse_is_a_programming_error() -> None:
    """Steps out of order raise RuntimeError: they are bugs of the transport, not input."""
    call = served()
    with pytest.raises(RuntimeError):
        call.reject(Overloaded("x"))
    with pytest.raises(RuntimeError):
        _ = call.params
    call.accept(RS)
    with pytest.raises(RuntimeError):
        call.accept(RS)
    call.send_results(Ok(None))
    with pytest.raises(RuntimeError):
        call.send_results(Ok(None))


def test_served_results_of_the_wrong_type_raise_and_can_still_trap() -> None:
    """A handler value that does not encode raises; the call stays ready for trap()."""
    call = served()
    call.accept(RS)
    call.data_to_send()
    wrong: Any = "not a result"
    with pytest.raises(TypeError):
        call.send_results(wrong)
    call.trap()
    assert call.data_to_send() == [Publish(RC + ".results", b"")]


# --- admission --------------------------------------------------------------------------------


def test_admission_runs_queues_and_refuses() -> None:
    """Slots first, then the queue in order, then refusal; finishing hands the slot on."""
    admission: Admission[str] = Admission(ServeLimits(max_in_flight=1, max_queued=1))
    assert admission.admit("a", 10) is Verdict.RUN
    assert admission.admit("b", 10) is Verdict.QUEUED
    assert admission.admit("c", 10) is Verdict.REFUSED
    assert admission.held_bytes == 10
    assert admission.finished() == "b"
    assert admission.in_flight == 1
    assert admission.held_bytes == 0
    assert admission.finished() is None
    assert admission.in_flight == 0


def test_admission_bounds_calls_awaiting_params_by_count_and_bytes() -> None:
    """Awaiting calls are limited in number and in the bytes they hold; stop_awaiting frees both."""
    admission: Admission[str] = Admission(ServeLimits(max_awaiting_params=2, max_held_bytes=100))
    assert admission.start_awaiting(10) is None
    assert admission.start_awaiting(10) is None
    assert "limit 2" in (admission.start_awaiting(10) or "")
    assert admission.grow(50) is None
    assert "limit 100" in (admission.grow(40) or "")
    admission.stop_awaiting(100)
    admission.stop_awaiting(10)
    assert (admission.awaiting, admission.held_bytes) == (0, 0)
    assert "limit 100" in (admission.start_awaiting(101) or "")


def test_admission_drain_returns_the_queue() -> None:
    """Draining hands back every queued call and frees their bytes."""
    admission: Admission[str] = Admission(ServeLimits(max_in_flight=1))
    admission.admit("a", 1)
    admission.admit("b", 5)
    admission.admit("c", 7)
    assert admission.drain() == ["b", "c"]
    assert admission.held_bytes == 0


@pytest.mark.parametrize(
    "bad", [{"max_in_flight": 0}, {"max_queued": -1}, {"params_timeout": 0}, {"max_params_bytes": -5}]
)
def test_serve_limits_refuse_nonsense(bad: dict[str, Any]) -> None:
    """Limits that cannot work are refused when made."""
    with pytest.raises(ValueError, match="ServeLimits"):
        ServeLimits(**bad)
