"""``wasmcloud:messaging@0.2.0`` as wRPC functions: types, codecs, subjects. Pure.

The WIT (``wit/deps/messaging/messaging.wit``)::

    record broker-message { subject: string, body: list<u8>, reply-to: option<string> }
    handler.handle-message: func(msg: broker-message) -> result<_, string>
    consumer.request: func(subject: string, body: list<u8>, timeout-ms: u32) -> result<broker-message, string>
    consumer.publish: func(msg: broker-message) -> result<_, string>

A function's parameters encode as the tuple of all of them, so a one-parameter
function's params are exactly that parameter's encoding (spec §4.1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from provider.wrpc.codec import BYTES, STRING, U32, Codec, Err, Ok, OptionOf, RecordOf, ResultOf

P = TypeVar("P")
R = TypeVar("R")

PACKAGE = "wasmcloud:messaging@0.2.0"
HANDLER = "wasmcloud:messaging/handler@0.2.0"
CONSUMER = "wasmcloud:messaging/consumer@0.2.0"


@dataclass(frozen=True, slots=True)
class BrokerMessage:
    """``wasmcloud:messaging/types.broker-message``."""

    subject: str
    body: bytes
    reply_to: str | None = None


@dataclass(frozen=True, slots=True)
class RequestParams:
    """The parameters of ``consumer.request``."""

    subject: str
    body: bytes
    timeout_ms: int


@dataclass(frozen=True, slots=True)
class Function(Generic[P, R]):
    """One exported WIT function: where it lives and how its params and results encode."""

    instance: str
    name: str
    params: Codec[P]
    results: Codec[R]


BROKER_MESSAGE: Codec[BrokerMessage] = RecordOf(
    "broker-message",
    [("subject", STRING), ("body", BYTES), ("reply-to", OptionOf(STRING))],
    BrokerMessage,
)
REQUEST_PARAMS: Codec[RequestParams] = RecordOf(
    "params(subject: string, body: list<u8>, timeout-ms: u32)",
    [("subject", STRING), ("body", BYTES), ("timeout-ms", U32)],
    RequestParams,
)

UnitResult = Ok[None] | Err[str]
MessageResult = Ok[BrokerMessage] | Err[str]

UNIT_RESULT: Codec[UnitResult] = ResultOf(None, STRING)
MESSAGE_RESULT: Codec[MessageResult] = ResultOf(BROKER_MESSAGE, STRING)

HANDLE_MESSAGE: Function[BrokerMessage, UnitResult] = Function(
    HANDLER, "handle-message", BROKER_MESSAGE, UNIT_RESULT
)
PUBLISH: Function[BrokerMessage, UnitResult] = Function(CONSUMER, "publish", BROKER_MESSAGE, UNIT_RESULT)
REQUEST: Function[RequestParams, MessageResult] = Function(
    CONSUMER, "request", REQUEST_PARAMS, MESSAGE_RESULT
)
