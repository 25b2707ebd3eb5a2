"""What ``make fuzz`` runs on every input: the wRPC codec, both call state machines and the
NATS server-stream splitter.

Each input picks a target and is read as a sequence of choices (atheris's
``FuzzedDataProvider``). A target fails — a crash for the fuzzer — when anything but the
project's typed errors escapes a decoder, when a state machine raises on input at all, or
when one of its invariants breaks (one terminal event, handshake first, end of stream last,
chunks within ``max_payload``, params passed on byte for byte), or when the NATS stream
splitter accepts bytes that nats-py's own parser reads otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from nats.errors import ProtocolError
from nats.protocol.parser import Parser

from provider.errors import CodecError, NatsProtocolError, Overloaded, TransportClosed
from provider.wrpc.call import (
    ClientCall,
    ClientState,
    Completed,
    Failed,
    Publish,
    ServedCall,
    ServedState,
)
from provider.wrpc.codec import (
    BYTES,
    STRING,
    U32,
    Codec,
    Ok,
    OptionOf,
    ResultOf,
    StreamDecoder,
    decode,
    encode,
)
from provider.wrpc.messaging import (
    BROKER_MESSAGE,
    HANDLE_MESSAGE,
    MESSAGE_RESULT,
    REQUEST,
    UNIT_RESULT,
)
from provider.wrpc.protocol import ServerStream, parse_headers, status_of


class Data(Protocol):
    """The part of atheris.FuzzedDataProvider the targets use."""

    def ConsumeIntInRange(self, low: int, high: int) -> int: ...
    def ConsumeBytes(self, count: int) -> bytes: ...
    def ConsumeBool(self) -> bool: ...
    def remaining_bytes(self) -> int: ...


CODECS: list[Codec[Any]] = [
    U32,
    STRING,
    BYTES,
    OptionOf(STRING),
    BROKER_MESSAGE,
    UNIT_RESULT,
    MESSAGE_RESULT,
    REQUEST.params,
    ResultOf(U32, None),
]
RESULT_CODECS: list[Codec[Any]] = [UNIT_RESULT, MESSAGE_RESULT]
CHANNELS = [b"", b"results", b"params", b"results.0", b"params.x"]
HEADERS = [None, b"NATS/1.0 503\r\n\r\n", b"NATS/1.0 200\r\n\r\n", b"NATS/1.0 408 Timeout\r\n\r\n"]
RC = "_INBOX.fuzz.1"
RS = "_INBOX.fuzz.2"


def _bytes(data: Data, most: int = 64) -> bytes:
    return data.ConsumeBytes(data.ConsumeIntInRange(0, most))


def _channel(data: Data) -> bytes:
    pick = data.ConsumeIntInRange(0, len(CHANNELS))
    return CHANNELS[pick] if pick < len(CHANNELS) else _bytes(data, 8)


def _headers(data: Data) -> bytes | None:
    pick = data.ConsumeIntInRange(0, len(HEADERS))
    return HEADERS[pick] if pick < len(HEADERS) else _bytes(data, 40)


def codec_target(data: Data) -> None:
    """Decoding arbitrary bytes, whole and in arbitrary chunks under an arbitrary limit."""
    codec = CODECS[data.ConsumeIntInRange(0, len(CODECS) - 1)]
    limit = data.ConsumeIntInRange(0, 300) if data.ConsumeBool() else None
    payload = _bytes(data, 200)
    try:
        whole = decode(codec, payload)
    except CodecError:
        whole = None
        failed = True
    else:
        failed = False
        assert decode(codec, encode(codec, whole)) == whole, "round trip"
    decoder = StreamDecoder(codec, limit)
    done = False
    pos = 0
    try:
        while pos < len(payload):
            size = data.ConsumeIntInRange(1, 40)
            done = decoder.feed(payload[pos : pos + size])
            pos += size
    except CodecError:
        assert failed or (limit is not None and len(payload) > limit), "stream refused a valid value"
        return
    if done:
        assert not failed, "stream accepted what decode refused"
        assert decoder.value == whole, "stream and whole disagree"
    status_of(payload)
    parse_headers(payload)


def _check_terminal(events: list[Any]) -> None:
    terminal = [e for e in events if isinstance(e, (Completed, Failed))]
    assert len(terminal) <= 1, f"more than one terminal event: {events}"


def client_target(data: Data) -> None:
    """A caller fed arbitrary messages on Rc and its sub-subjects, deadlines and failures."""
    params = _bytes(data, 300)
    max_payload = data.ConsumeIntInRange(1, 120)
    block = _bytes(data, 30) if data.ConsumeBool() else b""
    codec: Codec[Any] = RESULT_CODECS[data.ConsumeIntInRange(0, 1)]
    limit = data.ConsumeIntInRange(0, 500) if data.ConsumeBool() else None
    call: ClientCall[Any] = ClientCall(
        "s.wrpc.f", codec, params, max_payload=max_payload, timeout=1.0, headers=block, limit=limit
    )
    call.start(RC)
    out: list[Publish] = list(call.data_to_send())
    assert len(out) == 1, out
    assert (out[0].reply, out[0].headers) == (RC, block), out
    events: list[Any] = []
    for _ in range(data.ConsumeIntInRange(0, 12)):
        action = data.ConsumeIntInRange(0, 9)
        if action == 8:
            call.expire()
        elif action == 9:
            call.fail(TransportClosed("fuzz"))
        else:
            call.receive(_channel(data), _bytes(data, 20), _bytes(data, 60), _headers(data))
        sent = call.data_to_send()
        if call.state is ClientState.DONE and events:
            assert not sent, "sent after the call was over"
        out.extend(sent)
        events.extend(call.events_received())
        _check_terminal(events)
    tail = out[1:]
    if tail:
        assert all(m.payload == b"" or len(m.payload) <= max_payload for m in tail)
        assert tail[-1].payload == b"", "params not ended"
        assert out[0].payload + b"".join(m.payload for m in tail) == params, "params changed"
    if call.state is ClientState.DONE:
        assert len([e for e in events if isinstance(e, (Completed, Failed))]) == 1


def served_target(data: Data) -> None:
    """A callee fed an arbitrary invocation, then arbitrary messages, deadlines and refusals."""
    reply = RC.encode() if data.ConsumeBool() else _bytes(data, 10)
    first = _bytes(data, 80)
    max_payload = data.ConsumeIntInRange(1, 64)
    limit = data.ConsumeIntInRange(0, 400) if data.ConsumeBool() else None
    call: ServedCall[Any, Any] = ServedCall(
        "s.wrpc.f",
        HANDLE_MESSAGE.params,
        HANDLE_MESSAGE.results,
        reply,
        first,
        _headers(data),
        max_payload=max_payload,
        timeout=1.0,
        limit=limit,
    )
    events: list[Any] = list(call.events_received())
    if call.state is ServedState.DROPPED:
        assert len(events) == 1
        assert isinstance(events[0], Failed)
        assert not call.data_to_send()
        return
    call.accept(RS)
    out: list[Publish] = list(call.data_to_send())
    assert out[0] == Publish(call.reply, b"", RS), "handshake first"
    events.extend(call.events_received())
    for _ in range(data.ConsumeIntInRange(0, 12)):
        action = data.ConsumeIntInRange(0, 11)
        if action == 8:
            call.expire()
        elif action == 9:
            call.reject(Overloaded("fuzz"))
        elif action == 10:
            if call.state is ServedState.READY:
                call.send_results(Ok(None))
        elif action == 11:
            call.trap()
        else:
            call.receive(_channel(data), _bytes(data, 10), _bytes(data, 60), _headers(data))
        out.extend(call.data_to_send())
        events.extend(call.events_received())
        _check_terminal([e for e in events if isinstance(e, Failed)])
    ends = [i for i, m in enumerate(out) if m.subject == call.reply + ".results" and m.payload == b""]
    assert len(ends) <= 1, "more than one end of stream"
    if ends:
        assert ends[0] == len(out) - 1, "something sent after the end of stream"
        assert call.state is ServedState.DONE
    assert all(len(m.payload) <= max_payload for m in out[1:]), "chunk over max_payload"


def _complete(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine that never waits (nats-py's parser with a recorder) without a loop."""
    try:
        coroutine.send(None)
    except StopIteration:
        return
    raise AssertionError("the parser waited")


class NatsPyCalls:
    """What nats-py's parser calls on its client, in order (a stand-in client for it)."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, hdr: bytes | None
    ) -> None:
        self.calls.append((sid, subject, reply, data, hdr))

    async def _process_ping(self) -> None:
        self.calls.append("PING")

    async def _process_pong(self) -> None:
        self.calls.append("PONG")

    async def _process_info(self, info: Any) -> None:
        self.calls.append(("INFO", info))

    async def _process_err(self, err: str) -> None:
        self.calls.append(("ERR", err))


def split_as_the_connection_does(chunks: list[bytes]) -> list[Any]:
    """The chunks through :class:`ServerStream`, every operation but a message handed to
    nats-py's parser as ``NatsConnection`` hands it: the messages and nats-py's calls, in
    order. Raises ``NatsProtocolError``, nats-py's ``ProtocolError`` (also for a line its
    parser does not take whole) or ``ValueError`` (nats-py reading an ``INFO`` or ``-ERR``)."""
    recorder = NatsPyCalls()
    parser = Parser(recorder)
    stream = ServerStream()
    out: list[Any] = []
    for chunk in chunks:
        for op in stream.feed(chunk):
            if isinstance(op, bytes):
                _complete(parser.parse(op))
                if parser.buf:
                    raise ProtocolError()
                out.extend(recorder.calls)
                recorder.calls.clear()
            else:
                out.append(op)
    return out


def read_by_nats_py(data: bytes) -> list[Any]:
    """What nats-py's own parser calls reading ``data`` whole."""
    recorder = NatsPyCalls()
    _complete(Parser(recorder).parse(data))
    return recorder.calls


OTHER_OPERATIONS = [b"PING\r\n", b"PONG\r\n", b"+OK\r\n", b"-ERR 'Authorization Violation'\r\n",
                    b'INFO {"max_payload":1048576}\r\n']  # fmt: skip


def _token(text: bytes) -> bool:
    return bool(text) and all(0x21 <= b <= 0x7E for b in text)


def _server_stream(data: Data) -> tuple[bytes, bool]:
    """Messages and other operations as a server writes them, of fuzzed fields, maybe one byte
    changed: mostly valid, sometimes just wrong; and whether it is all valid."""
    ops = []
    valid = True
    for _ in range(data.ConsumeIntInRange(0, 8)):
        kind = data.ConsumeIntInRange(0, 4)
        subject = _bytes(data, 10) or b"a.b"
        reply = b" " + (_bytes(data, 8) or b"r") if data.ConsumeBool() else b""
        body = _bytes(data, 40)
        sid = data.ConsumeIntInRange(0, 99)
        valid = valid and _token(subject) and (not reply or _token(reply[1:])) and kind < 3
        if kind == 0:
            ops.append(b"MSG %s %d%s %d\r\n%s\r\n" % (subject, sid, reply, len(body), body))
        elif kind == 1:
            head = b"NATS/1.0" + _bytes(data, 12) + b"\r\n\r\n"
            total = len(head) + len(body)
            ops.append(
                b"HMSG %s %d%s %d %d\r\n%s%s\r\n" % (subject, sid, reply, len(head), total, head, body)
            )
        elif kind == 2:
            ops.append(OTHER_OPERATIONS[data.ConsumeIntInRange(0, len(OTHER_OPERATIONS) - 1)])
        else:
            ops.append(_bytes(data, 16))
    stream = bytearray(b"".join(ops))
    if stream and data.ConsumeBool():
        stream[data.ConsumeIntInRange(0, len(stream) - 1)] = data.ConsumeIntInRange(0, 255)
        valid = False
    return bytes(stream), valid


def nats_stream_target(data: Data) -> None:
    """A server stream (:func:`_server_stream`) cut anywhere: ServerStream either refuses it by
    name or splits it as nats-py's parser reads it whole (where nats-py reads it without error
    and its header blocks start with ``NATS/1.0`` — nats-py's regular expressions misread some
    others); a stream of valid operations it must take."""
    stream_bytes, valid = _server_stream(data)
    cuts = sorted(data.ConsumeIntInRange(0, len(stream_bytes)) for _ in range(data.ConsumeIntInRange(0, 4)))
    chunks = [stream_bytes[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream_bytes)], strict=True)]
    try:
        ours = split_as_the_connection_does(chunks)
    except (NatsProtocolError, ProtocolError, ValueError):
        assert not valid, f"ServerStream refused a valid stream {stream_bytes!r}"
        return
    try:
        theirs = read_by_nats_py(stream_bytes)
    except (ProtocolError, ValueError):
        return
    if any(isinstance(c, tuple) and len(c) == 5 and c[4] is not None and not c[4].startswith(b"NATS/1.0")
           for c in theirs + ours):  # fmt: skip
        return
    assert ours == theirs, f"ServerStream split {stream_bytes!r} otherwise than nats-py"


TARGETS: list[Callable[[Data], None]] = [codec_target, client_target, served_target, nats_stream_target]


def one_input(data: Data) -> None:
    """Run the target the first choice picks."""
    TARGETS[data.ConsumeIntInRange(0, len(TARGETS) - 1)](data)
