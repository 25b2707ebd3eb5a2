"""The wRPC value codec against the shared vectors, property round trips, and streaming."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provider.errors import CodecError, IncompleteValue, InvalidEncoding
from provider.wrpc.codec import (
    BYTES,
    STRING,
    U32,
    Codec,
    Err,
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
    PUBLISH,
    REQUEST,
    REQUEST_PARAMS,
    UNIT_RESULT,
    BrokerMessage,
    RequestParams,
)

VECTORS = json.loads((Path(__file__).parent.parent / "vectors" / "wrpc-vectors.json").read_text())

CODECS: dict[str, Codec[Any]] = {
    "u32": U32,
    "string": STRING,
    "list<u8>": BYTES,
    "option<string>": OptionOf(STRING),
    "broker-message": BROKER_MESSAGE,
    "result<_, string>": UNIT_RESULT,
    "result<broker-message, string>": MESSAGE_RESULT,
    "params(msg: broker-message)": PUBLISH.params,
    "params(subject: string, body: list<u8>, timeout-ms: u32)": REQUEST.params,
}


def _message(value: dict[str, Any]) -> BrokerMessage:
    return BrokerMessage(value["subject"], bytes.fromhex(value["body_hex"]), value["reply-to"])


def _python_value(type_: str, value: Any) -> Any:
    """The typed Python value a vector's JSON stands for."""
    if type_ == "list<u8>":
        return bytes.fromhex(value["bytes_hex"])
    if type_ in ("broker-message", "params(msg: broker-message)"):
        return _message(value)
    if type_.startswith("params(subject"):
        return RequestParams(value["subject"], bytes.fromhex(value["body_hex"]), value["timeout-ms"])
    if type_.startswith("result<"):
        if "ok" in value:
            ok = value["ok"]
            return Ok(_message(ok) if isinstance(ok, dict) else ok)
        return Err(value["err"])
    return value


def test_every_vector_type_has_a_codec() -> None:
    """No vector is skipped for want of a codec."""
    types = {v["type"] for v in VECTORS["valid"] + VECTORS["invalid"]}
    assert types <= CODECS.keys()


@pytest.mark.parametrize("vector", VECTORS["valid"], ids=lambda v: v["name"])
def test_valid_vector_round_trips_byte_exact(vector: dict[str, Any]) -> None:
    """Each valid vector encodes to exactly its bytes and decodes back to its value."""
    codec = CODECS[vector["type"]]
    value = _python_value(vector["type"], vector["value"])
    data = bytes.fromhex(vector["hex"])
    assert encode(codec, value).hex() == vector["hex"]
    assert decode(codec, data) == value


@pytest.mark.parametrize("vector", VECTORS["valid"], ids=lambda v: v["name"])
def test_every_strict_prefix_of_a_valid_vector_asks_for_more(vector: dict[str, Any]) -> None:
    """A truncated value is reported as incomplete, with a byte count beyond what was given."""
    codec = CODECS[vector["type"]]
    data = bytes.fromhex(vector["hex"])
    for cut in range(len(data)):
        with pytest.raises(IncompleteValue) as info:
            decode(codec, data[:cut])
        assert cut < info.value.needed <= len(data)


@pytest.mark.parametrize("vector", VECTORS["invalid"], ids=lambda v: v["name"])
def test_invalid_vector_raises_a_typed_error(vector: dict[str, Any]) -> None:
    """Invalid bytes raise the error class and message the vector names."""
    codec = CODECS[vector["type"]]
    expected = vector["error"]
    with pytest.raises(CodecError) as info:
        decode(codec, bytes.fromhex(vector["hex"]))
    if expected.startswith("need more bytes"):
        assert isinstance(info.value, IncompleteValue)
    else:
        assert isinstance(info.value, InvalidEncoding)
    assert expected.split(" (")[0] in str(info.value)


def test_trailing_bytes_are_rejected() -> None:
    """A value followed by stray bytes is not silently accepted."""
    with pytest.raises(InvalidEncoding, match="1 trailing byte"):
        decode(STRING, bytes.fromhex("016100"))


def test_u32_encoder_refuses_out_of_range() -> None:
    """Values outside u32 fail loudly at encode time."""
    with pytest.raises(ValueError, match="out of range"):
        encode(U32, 1 << 32)
    with pytest.raises(ValueError, match="out of range"):
        encode(U32, -1)


def test_result_encoder_refuses_a_bare_value() -> None:
    """A result must be Ok(...) or Err(...)."""
    bare: Any = None
    with pytest.raises(TypeError, match="Ok"):
        encode(UNIT_RESULT, bare)


def test_functions_name_their_wit_instances() -> None:
    """The three functions live where wasmCloud serves them."""
    assert (HANDLE_MESSAGE.instance, HANDLE_MESSAGE.name) == (
        "wasmcloud:messaging/handler@0.2.0",
        "handle-message",
    )
    assert (PUBLISH.instance, PUBLISH.name) == ("wasmcloud:messaging/consumer@0.2.0", "publish")
    assert (REQUEST.instance, REQUEST.name) == ("wasmcloud:messaging/consumer@0.2.0", "request")
    assert REQUEST.params is REQUEST_PARAMS


# --- properties --------------------------------------------------------------------------------

u32s = st.integers(min_value=0, max_value=0xFFFF_FFFF)
texts = st.text(max_size=300)
blobs = st.binary(max_size=2000)
messages = st.builds(BrokerMessage, texts, blobs, st.none() | texts)
unit_results = st.builds(Ok, st.none()) | st.builds(Err, texts)
message_results = st.builds(Ok, messages) | st.builds(Err, texts)
request_params = st.builds(RequestParams, texts, blobs, u32s)

CASES: list[tuple[Codec[Any], st.SearchStrategy[Any]]] = [
    (U32, u32s),
    (STRING, texts),
    (BYTES, blobs),
    (OptionOf(STRING), st.none() | texts),
    (BROKER_MESSAGE, messages),
    (UNIT_RESULT, unit_results),
    (MESSAGE_RESULT, message_results),
    (REQUEST_PARAMS, request_params),
    (ResultOf(U32, None), st.builds(Ok, u32s) | st.builds(Err, st.none())),
]


@pytest.mark.parametrize(("codec", "values"), CASES, ids=[c.wit for c, _ in CASES])
def test_round_trip_arbitrary_values(codec: Codec[Any], values: st.SearchStrategy[Any]) -> None:
    """decode(encode(v)) == v for arbitrary values of every type."""

    @given(values)
    def check(value: Any) -> None:
        assert decode(codec, encode(codec, value)) == value

    check()


@given(message_results, st.lists(st.integers(min_value=1, max_value=64), max_size=40))
def test_stream_decoder_reassembles_any_split(value: Any, sizes: list[int]) -> None:
    """However the bytes are cut into chunks, the value decodes once the last one arrives."""
    data = encode(MESSAGE_RESULT, value)
    decoder = StreamDecoder(MESSAGE_RESULT)
    pos = 0
    for size in sizes:
        if pos + size >= len(data):
            break
        assert decoder.feed(data[pos : pos + size]) is False
        pos += size
    assert decoder.feed(data[pos:]) is True
    assert decoder.value == value


@given(st.binary(max_size=64))
def test_arbitrary_bytes_never_crash_the_decoder(data: bytes) -> None:
    """Garbage either decodes or raises a CodecError: nothing else escapes."""
    codecs: list[Codec[Any]] = [BROKER_MESSAGE, MESSAGE_RESULT, REQUEST_PARAMS]
    for codec in codecs:
        with contextlib.suppress(CodecError):
            decode(codec, data)


class _Counting:
    """Wraps a codec and counts decode attempts."""

    def __init__(self, inner: Codec[Any]) -> None:
        self.inner = inner
        self.wit = inner.wit
        self.attempts = 0

    def encode_into(self, value: Any, out: bytearray) -> None:
        self.inner.encode_into(value, out)

    def decode_from(self, buf: memoryview, pos: int) -> tuple[Any, int]:
        self.attempts += 1
        return self.inner.decode_from(buf, pos)


def test_stream_decoder_skips_retries_until_enough_bytes() -> None:
    """A large body split in small chunks is decoded a handful of times, not once per chunk."""
    data = encode(BROKER_MESSAGE, BrokerMessage("s", b"x" * 100_000, None))
    counting = _Counting(BROKER_MESSAGE)
    decoder = StreamDecoder(counting)
    for start in range(0, len(data), 1000):
        decoder.feed(data[start : start + 1000])
    assert decoder.value.body == b"x" * 100_000
    assert counting.attempts <= 3


def test_stream_decoder_rejects_bytes_after_the_value() -> None:
    """Bytes beyond a complete value are an error, in the same chunk or a later one."""
    decoder = StreamDecoder(UNIT_RESULT)
    assert decoder.feed(b"\x00") is True
    with pytest.raises(InvalidEncoding, match="after a complete"):
        decoder.feed(b"\x00")
    with pytest.raises(InvalidEncoding, match="trailing"):
        StreamDecoder(UNIT_RESULT).feed(b"\x00\x00")


def test_stream_decoder_value_before_completion_is_an_error() -> None:
    """Reading the value early is a programming error, reported as such."""
    decoder = StreamDecoder(STRING)
    decoder.feed(b"\x05ab")
    with pytest.raises(RuntimeError, match="before it was complete"):
        _ = decoder.value
