"""One wRPC 0.0.1 invocation as a state machine, caller side and callee side (spec §3.2). Pure.

Sans-I/O, in the shape of websockets' protocol objects: the transport feeds every message
that arrives on a call's inbox to ``receive(channel, reply, data, headers)`` — a deadline
that passed comes in as ``expire()``, a closing transport as ``fail(exc)`` — then publishes
what ``data_to_send()`` returns, in order, and acts on what ``events_received()`` returns:

* :class:`Completed` — the value this side waits for is whole (the caller's results, the
  callee's params);
* :class:`Failed` — the call is over without it; the error says why.

Nothing here reads a clock or touches a socket, so every path (handshake, chunking, results
before the handshake, early end of stream, garbage, deadlines) is tested by feeding bytes
(``tests/unit/test_call.py``) and fuzzed (``make fuzz``). Every byte is hostile: whatever
arrives as data, reply subject or header block, a call never raises; it ends with a typed
error in a :class:`Failed` event.

:class:`Admission` decides, for one served function, which calls run, which wait for a
handler slot and which are turned away (:class:`ServeLimits`).
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, NamedTuple, TypeVar

from provider.errors import (
    CodecError,
    IncompleteResults,
    IncompleteValue,
    InvocationTimeout,
    NoResponders,
    ProtocolViolation,
    ProviderError,
    WrpcError,
)
from provider.wrpc.codec import Codec, StreamDecoder, check_limit, decode, encode
from provider.wrpc.protocol import status_of
from provider.wrpc.subjects import PARAMS, RESULTS, chunks, params_subject, results_subject

T = TypeVar("T")
P = TypeVar("P")
R = TypeVar("R")

_PARAMS = PARAMS.encode()
_RESULTS = RESULTS.encode()

MiB = 1024 * 1024
DEFAULT_MAX_VALUE_BYTES = 4 * MiB + 64 * 1024
"""The largest params (callee) or results (caller) value accepted unless told otherwise: a few
MiB of body plus room for its subject and reply-to. A larger declared length fails the call
as soon as it is seen."""


class Publish(NamedTuple):
    """A message the transport must publish, in the order given."""

    subject: str
    payload: bytes
    reply: str = ""
    headers: bytes = b""


@dataclass(frozen=True, slots=True)
class Completed(Generic[T]):
    """The value this side waits for is whole: the caller's results, or the callee's params."""

    value: T


@dataclass(frozen=True, slots=True)
class Failed:
    """The call is over without that value. On the callee's side its caller has been sent the
    empty result stream (a trap), unless the invocation had no usable reply subject."""

    error: ProviderError


Event = Completed[T] | Failed

_NOTHING: tuple[()] = ()


def status_error(subject: str, headers: bytes | None) -> WrpcError | None:
    """The error a NATS status message on ``Rc`` stands for, or ``None`` if it is not one."""
    status, description = status_of(headers)
    if status is None or status.startswith("2"):
        return None
    if status == "503":
        return NoResponders(subject)
    return ProtocolViolation(f"NATS answered {subject!r} with status {status} {description}".rstrip())


def _reply_subject(subject: str, reply: bytes, what: str) -> str | ProtocolViolation:
    """``reply`` as a subject to publish to, or the violation that makes it unusable."""
    if not reply:
        return ProtocolViolation(f"{subject!r}: {what} did not specify a reply subject")
    try:
        return reply.decode()
    except UnicodeDecodeError:
        return ProtocolViolation(f"{subject!r}: {what} has a reply subject that is not UTF-8")


class _Machine(Generic[T]):
    """What both sides share: the outgoing messages and the events, each taken once."""

    __slots__ = ("_events", "_out", "subject")

    def __init__(self, subject: str) -> None:
        self.subject = subject
        self._out: list[Publish] = []
        self._events: list[Event[T]] = []

    def data_to_send(self) -> Sequence[Publish]:
        """The messages to publish now, in order (each returned once)."""
        out = self._out
        if not out:
            return _NOTHING
        self._out = []
        return out

    def events_received(self) -> Sequence[Event[T]]:
        """What happened since the last call (each event returned once)."""
        events = self._events
        if not events:
            return _NOTHING
        self._events = []
        return events


# --- the caller ------------------------------------------------------------------------------


class ClientState(enum.Enum):
    """Where a :class:`ClientCall` is."""

    NEW = "not started"
    AWAITING_HANDSHAKE = "awaiting the handshake"
    AWAITING_RESULTS = "awaiting the results"
    DONE = "done"


class ClientCall(_Machine[R]):
    """The caller's side of one invocation.

    Built with the encoded params; :meth:`start` sends the invocation, carrying as many
    param bytes as fit in ``max_payload`` less the reply subject and the header block (as
    the reference client does). The first message on ``Rc`` is the handshake: it names
    ``Rs``, and the rest of the params and their end of stream go there. Results on
    ``Rc.results`` are decoded whenever they come, before the handshake too (spec §3.2).
    """

    __slots__ = ("_decoder", "_headers", "_limit", "_results", "_tail", "max_payload", "state", "timeout")

    def __init__(
        self,
        subject: str,
        results: Codec[R],
        params: bytes,
        *,
        max_payload: int,
        timeout: float,
        headers: bytes = b"",
        limit: int | None = DEFAULT_MAX_VALUE_BYTES,
    ) -> None:
        super().__init__(subject)
        self._results = results
        self._limit = limit
        self._headers = headers
        self._decoder: StreamDecoder[R] | None = None
        self._tail = params
        self.max_payload = max_payload
        self.timeout = timeout
        self.state = ClientState.NEW

    def start(self, rc: str) -> None:
        """Send the invocation, with ``rc`` (already receiving) as its reply subject."""
        if self.state is not ClientState.NEW:
            raise RuntimeError(f"start() on a call that is {self.state.value}")
        self.state = ClientState.AWAITING_HANDSHAKE
        params = self._tail
        first = max(0, self.max_payload - len(rc) - len(self._headers))
        self._tail = params[first:]
        self._out.append(Publish(self.subject, params[:first], rc, self._headers))

    def receive(self, channel: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        """A message on ``Rc`` (``channel == b""``) or one of its sub-subjects."""
        if self.state is ClientState.DONE or self.state is ClientState.NEW:
            return
        if not channel:
            if self.state is ClientState.AWAITING_HANDSHAKE:  # later messages on Rc are not handshakes
                self._handshake(reply, headers)
        elif channel == _RESULTS:
            self._on_results(data)

    def _handshake(self, reply: bytes, headers: bytes | None) -> None:
        error = status_error(self.subject, headers)
        rs = _reply_subject(self.subject, reply, "the handshake") if error is None else error
        if isinstance(rs, WrpcError):
            self._finish(Failed(rs))
            return
        self.state = ClientState.AWAITING_RESULTS
        tail, self._tail = self._tail, b""
        subject = params_subject(rs)
        out = self._out
        if tail:  # the usual case is none: all params fitted in the invocation
            out.extend(Publish(subject, bytes(chunk)) for chunk in chunks(tail, self.max_payload))
        out.append(Publish(subject, b""))

    def _on_results(self, data: bytes) -> None:
        if not data:
            received = self._decoder.received if self._decoder is not None else 0
            self._finish(Failed(IncompleteResults(self.subject, received)))
            return
        try:
            if self._decoder is None:
                try:  # the usual case: the whole value in one message, no stream decoder needed
                    self._finish(Completed(decode(self._results, data)))
                    return
                except IncompleteValue as exc:
                    check_limit(exc, self._limit, self._results.wit)
                    self._decoder = StreamDecoder(self._results, self._limit)
            if self._decoder.feed(data):
                self._finish(Completed(self._decoder.value))
        except CodecError as exc:
            self._finish(Failed(ProtocolViolation(f"{self.subject!r} sent invalid results: {exc}")))

    def expire(self) -> None:
        """The call's deadline passed: unless it is over, it fails saying what it waited for."""
        if self.state is not ClientState.DONE:
            waiting_for = "the results" if self.state is ClientState.AWAITING_RESULTS else "the handshake"
            self._finish(Failed(InvocationTimeout(self.subject, waiting_for, self.timeout)))

    def fail(self, error: ProviderError) -> None:
        """End the call with ``error`` (the transport closed, a publish failed), unless it is over."""
        if self.state is not ClientState.DONE:
            self._finish(Failed(error))

    def _finish(self, event: Event[R]) -> None:
        self.state = ClientState.DONE
        self._tail = b""
        self._decoder = None
        self._events.append(event)


# --- the callee ------------------------------------------------------------------------------


class ServedState(enum.Enum):
    """Where a :class:`ServedCall` is."""

    NEW = "not yet accepted"
    AWAITING_PARAMS = "awaiting the params"
    READY = "params complete"
    DONE = "answered"
    DROPPED = "dropped"


class ServedCall(_Machine[P], Generic[P, R]):
    """The callee's side of one invocation, from the invocation message on.

    The constructor reads the invocation. With no usable reply subject nothing can be sent:
    the call is :attr:`~ServedState.DROPPED` at once, with a :class:`Failed` event. Otherwise
    the transport picks ``Rs`` — an inbox when :attr:`needs_params` (the params go on past
    the first message) — and calls :meth:`accept`, which sends the handshake: always, as the
    Rust client waits for it before it sends its params' end of stream. Then the call is
    :class:`Completed` with its params, or :class:`Failed` and answered with the empty result
    stream: invalid bytes, an end of stream before a whole value, a declared size beyond
    ``limit``, its deadline (:meth:`expire`), or the transport's own refusal (:meth:`reject`).
    Once the handler has run, :meth:`send_results` or :meth:`trap` answers.
    """

    __slots__ = ("_decoder", "_error", "_limit", "_results", "_value", "headers", "max_payload", "reply",
                 "size", "state", "timeout")  # fmt: skip

    def __init__(
        self,
        subject: str,
        params: Codec[P],
        results: Codec[R],
        reply: bytes,
        data: bytes,
        headers: bytes | None,
        *,
        max_payload: int,
        timeout: float,
        limit: int | None = DEFAULT_MAX_VALUE_BYTES,
    ) -> None:
        super().__init__(subject)
        self._results = results
        self._limit = limit
        self.max_payload = max_payload
        self.timeout = timeout
        self.headers = headers
        self.size = len(data)
        """Param bytes received so far (the first message's and those on ``Rs.params``)."""
        self._decoder: StreamDecoder[P] | None = None
        self._value: P | None = None
        self._error: ProviderError | None = None
        self.state = ServedState.NEW
        self.reply = ""
        reply_subject = _reply_subject(subject, reply, "the invocation")
        if isinstance(reply_subject, ProtocolViolation):
            self.state = ServedState.DROPPED
            self._events.append(Failed(reply_subject))
            return
        self.reply = reply_subject
        try:
            self._value = decode(params, data)  # the usual case: all params in the first message
        except IncompleteValue as exc:
            try:
                check_limit(exc, limit, params.wit)
            except CodecError as too_large:
                self._error = too_large
            else:
                self._decoder = StreamDecoder(params, limit)
                self._decoder.feed(data)
        except CodecError as exc:
            self._error = exc

    @property
    def needs_params(self) -> bool:
        """Whether more params must come on ``Rs.params`` (so ``Rs`` must be an inbox)."""
        return self._decoder is not None and self.state in (ServedState.NEW, ServedState.AWAITING_PARAMS)

    @property
    def params(self) -> P:
        """The decoded params, once :class:`Completed` was reported."""
        if self.state is not ServedState.READY:
            raise RuntimeError(f"params read while the call is {self.state.value}")
        return self._value  # type: ignore[return-value]  # set whenever the state is READY

    def accept(self, rs: str) -> None:
        """Send the handshake naming ``rs``, then go on from what the invocation held."""
        if self.state is not ServedState.NEW:
            raise RuntimeError(f"accept() on a call that is {self.state.value}")
        self._out.append(Publish(self.reply, b"", rs))
        if self._error is not None:
            self._reject(self._error)
        elif self._decoder is not None:
            self.state = ServedState.AWAITING_PARAMS
        else:
            self._ready()

    def receive(self, channel: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        """A message on ``Rs`` or one of its sub-subjects: only ``Rs.params`` means anything."""
        if self.state is not ServedState.AWAITING_PARAMS or channel != _PARAMS:
            return
        decoder = self._decoder
        assert decoder is not None  # AWAITING_PARAMS always has one
        if not data:  # end of stream: only fine once the value is complete
            self._reject(
                ProtocolViolation(
                    f"{self.subject!r}: params ended after {decoder.received} byte(s), "
                    "before a complete value"
                )
            )
            return
        self.size += len(data)
        try:
            complete = decoder.feed(data)
        except CodecError as exc:
            self._reject(exc)
            return
        if complete:
            self._value = decoder.value
            self._ready()

    def expire(self) -> None:
        """The params' deadline passed: a call still waiting for them is answered with no results."""
        if self.state is ServedState.AWAITING_PARAMS:
            self._reject(InvocationTimeout(self.subject, "the params", self.timeout))

    def reject(self, error: ProviderError) -> None:
        """Answer with the empty result stream (the transport is over a limit, or closing)."""
        if self.state is ServedState.NEW:
            raise RuntimeError("reject() before accept(): the caller must get the handshake first")
        if self.state in (ServedState.AWAITING_PARAMS, ServedState.READY):
            self._reject(error)

    fail = reject

    def send_results(self, value: R) -> None:
        """Send the handler's results, in chunks of at most ``max_payload``, and their end.

        Raises what the codec raises for a value of the wrong type (the call stays ready, so
        the transport can still :meth:`trap`)."""
        if self.state is not ServedState.READY:
            raise RuntimeError(f"send_results() on a call that is {self.state.value}")
        payload = encode(self._results, value)
        subject = results_subject(self.reply)
        if len(payload) <= self.max_payload:  # the usual case: one message
            self._out.append(Publish(subject, payload))
        else:
            self._out.extend(Publish(subject, bytes(chunk)) for chunk in chunks(payload, self.max_payload))
        self.state = ServedState.DONE
        self._out.append(Publish(subject, b""))

    def trap(self) -> None:
        """The handler failed: send only the end of the result stream (spec §3.4)."""
        if self.state is ServedState.READY:
            self._end()

    def _ready(self) -> None:
        self.state = ServedState.READY
        self._decoder = None
        self._events.append(Completed(self._value))  # type: ignore[arg-type]  # _value is set

    def _reject(self, error: ProviderError) -> None:
        self._decoder = None
        self._value = None
        self._events.append(Failed(error))
        self._end()

    def _end(self) -> None:
        self.state = ServedState.DONE
        self._out.append(Publish(results_subject(self.reply), b""))


# --- admission -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServeLimits:
    """What one served function holds at most. Everything past a limit is answered at once
    with the empty result stream and counted, never buffered."""

    max_in_flight: int = 1024
    """Handlers running at once (a handler slot is taken only once the params are whole)."""
    max_queued: int = 1024
    """Calls with whole params waiting for a slot, in arrival order."""
    max_awaiting_params: int = 128
    """Calls whose params go on past the invocation message, still arriving."""
    params_timeout: float = 5.0
    """Seconds a call may take, from its invocation, to send the rest of its params."""
    max_params_bytes: int = DEFAULT_MAX_VALUE_BYTES
    """The largest params value; a declared length beyond it rejects the call at once."""
    max_held_bytes: int = 2 * DEFAULT_MAX_VALUE_BYTES
    """Param bytes held in all by calls not running yet (arriving or queued)."""

    def __post_init__(self) -> None:
        for name in ("max_in_flight", "max_queued", "max_awaiting_params", "max_params_bytes"):
            if getattr(self, name) < (1 if name == "max_in_flight" else 0):
                raise ValueError(f"ServeLimits.{name} is out of range: {getattr(self, name)}")
        if not self.params_timeout > 0:
            raise ValueError(f"ServeLimits.params_timeout must be positive, got {self.params_timeout}")


class Verdict(enum.Enum):
    """What :meth:`Admission.admit` decided."""

    RUN = "run now"
    QUEUED = "queued for a slot"
    REFUSED = "refused"


class Admission(Generic[T]):
    """Handler slots, the queue for them and the calls still receiving params, for one served
    function. The transport asks before each step; whatever this refuses it answers at once."""

    __slots__ = ("_queue", "awaiting", "held_bytes", "in_flight", "limits")

    def __init__(self, limits: ServeLimits) -> None:
        self.limits = limits
        self.in_flight = 0
        self.awaiting = 0
        self.held_bytes = 0
        self._queue: collections.deque[tuple[T, int]] = collections.deque()

    @property
    def queued(self) -> int:
        """Calls waiting for a handler slot."""
        return len(self._queue)

    def start_awaiting(self, size: int) -> str | None:
        """A call's params go on past its first message: ``None`` if it may wait for them
        (``size`` bytes held so far), else why not."""
        limits = self.limits
        if self.awaiting >= limits.max_awaiting_params:
            return f"{self.awaiting} calls already wait for their params (limit {limits.max_awaiting_params})"
        if self.held_bytes + size > limits.max_held_bytes:
            return f"{self.held_bytes} param bytes already held (limit {limits.max_held_bytes})"
        self.awaiting += 1
        self.held_bytes += size
        return None

    def grow(self, delta: int) -> str | None:
        """An awaiting call now holds ``delta`` more bytes: ``None`` if that fits, else why not
        (the bytes stay counted until :meth:`stop_awaiting`)."""
        self.held_bytes += delta
        if self.held_bytes > self.limits.max_held_bytes:
            return f"{self.held_bytes} param bytes held (limit {self.limits.max_held_bytes})"
        return None

    def stop_awaiting(self, size: int) -> None:
        """An awaiting call is done receiving (whole, failed or refused); it held ``size`` bytes."""
        self.awaiting -= 1
        self.held_bytes -= size

    def admit(self, call: T, size: int) -> Verdict:
        """A call whose params are whole (``size`` bytes): run it, queue it, or refuse it."""
        limits = self.limits
        if self.in_flight < limits.max_in_flight:
            self.in_flight += 1
            return Verdict.RUN
        if len(self._queue) >= limits.max_queued or self.held_bytes + size > limits.max_held_bytes:
            return Verdict.REFUSED
        self._queue.append((call, size))
        self.held_bytes += size
        return Verdict.QUEUED

    def finished(self) -> T | None:
        """A handler finished: the next queued call, which now holds its slot, if any."""
        if self._queue:
            call, size = self._queue.popleft()
            self.held_bytes -= size
            return call
        self.in_flight -= 1
        return None

    def drain(self) -> list[T]:
        """Empty the queue (the function stops being served): the calls that waited in it."""
        calls = []
        while self._queue:
            call, size = self._queue.popleft()
            self.held_bytes -= size
            calls.append(call)
        return calls
