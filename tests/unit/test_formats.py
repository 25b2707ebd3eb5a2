"""The pure pieces of server mode: wire formats, reserved subjects, subject patterns, config."""

from __future__ import annotations

import base64
import contextlib
import json
import re

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from provider.errors import ConfigError
from provider.wasmcloud.config import Config, SecretValue
from provider.websocket.config import Mode, delivery, mode_of, server_settings
from provider.websocket.formats import Envelope, Format, FrameError, decode, encode, error_frame
from provider.websocket.subjects import (
    Broadcast,
    CloseSession,
    FrameType,
    ListSessions,
    Other,
    SubjectPattern,
    Subscriptions,
    ToConnection,
    ToSession,
    connection_subject,
    is_reserved,
    new_id,
    parse_target,
    session_subject,
    stable_id,
)

subjects = st.text(min_size=1, max_size=50)
envelopes = st.builds(Envelope, subjects, st.binary(max_size=300), st.none() | subjects)


@pytest.mark.parametrize("fmt", [Format.JSON, Format.MSGPACK])
def test_envelope_formats_round_trip(fmt: Format) -> None:
    """json and msgpack carry subject, any bytes and reply_to losslessly."""

    @given(envelopes)
    def check(envelope: Envelope) -> None:
        assert decode(fmt, encode(fmt, envelope), "unused") == envelope

    check()


@given(st.binary(max_size=300))
def test_raw_round_trips_any_body(body: bytes) -> None:
    """raw: the frame is the body; UTF-8 goes as text, anything else as binary."""
    frame = encode(Format.RAW, Envelope("ignored", body))
    assert isinstance(frame, str) == (_is_utf8(body))
    assert decode(Format.RAW, frame, "cfg.subject") == Envelope("cfg.subject", body)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_json_uses_body_for_text_and_body_base64_for_bytes() -> None:
    """The documented JSON shapes, byte for byte."""
    assert (
        encode(Format.JSON, Envelope("a", "héllo".encode(), "r"))
        == '{"subject":"a","body":"héllo","reply_to":"r"}'
    )
    assert encode(Format.JSON, Envelope("a", b"\xff")) == '{"subject":"a","body_base64":"/w=="}'
    incoming = json.dumps({"subject": "x", "body_base64": base64.b64encode(b"\x00\x01").decode()})
    assert decode(Format.JSON, incoming, "") == Envelope("x", b"\x00\x01")


@given(st.text(min_size=1), st.text(), st.none() | st.text())
def test_json_frames_are_the_standard_encoders_text(subject: str, body: str, reply: str | None) -> None:
    """orjson writes the frames: exactly what ``json`` with the same options writes."""
    frame = encode(Format.JSON, Envelope(subject, body.encode(), reply))
    obj = {"subject": subject, "body": body} | ({} if reply is None else {"reply_to": reply})
    assert frame == json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def test_every_code_point_is_written_as_the_standard_encoder_writes_it() -> None:
    """Every code point but the surrogates, 4,096 to a frame (as subject and, reversed, body)."""
    points = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    for start in range(0, len(points), 4096):
        text = "".join(points[start : start + 4096])
        frame = encode(Format.JSON, Envelope(text, text[::-1].encode(), "r"))
        obj = {"subject": text, "body": text[::-1], "reply_to": "r"}
        assert frame == json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def test_a_lone_surrogate_orjson_refuses_is_written_by_the_standard_encoder() -> None:
    frame = encode(Format.JSON, Envelope("\ud800", b"x"))
    assert frame == '{"subject":"\ud800","body":"x"}'


def test_msgpack_accepts_a_string_body() -> None:
    """Peers that pack the body as a string are understood."""
    frame = msgpack.packb({"subject": "s", "body": "text"})
    assert decode(Format.MSGPACK, frame, "") == Envelope("s", b"text")


@pytest.mark.parametrize(
    ("fmt", "frame", "message"),
    [
        (Format.JSON, "{oops", "invalid JSON"),
        (Format.JSON, "[1, 2]", "must be an object"),
        (Format.JSON, '{"body": "x"}', "'subject' must be a non-empty string"),
        (Format.JSON, '{"subject": "", "body": "x"}', "'subject' must be a non-empty string"),
        (Format.JSON, '{"subject": "s", "body": 5}', "'body' must be a string"),
        (Format.JSON, '{"subject": "s", "body": "a", "body_base64": "YQ=="}', "not both"),
        (Format.JSON, '{"subject": "s", "body_base64": "***"}', "not valid base64"),
        (Format.JSON, '{"subject": "s", "reply_to": 1}', "'reply_to' must be a string"),
        (Format.MSGPACK, "text frame", "expects binary frames"),
        (Format.MSGPACK, b"\xc1", "invalid msgpack"),
        (Format.MSGPACK, msgpack.packb([1]), "must hold a map"),
        (Format.MSGPACK, msgpack.packb({"subject": "s", "body": 3}), "'body' must be bytes or a string"),
    ],
)
def test_bad_frames_say_what_is_wrong(fmt: Format, frame: str | bytes, message: str) -> None:
    """Every malformed frame raises FrameError with a message fit for the peer."""
    with pytest.raises(FrameError, match=message):
        decode(fmt, frame, "default")


def test_error_frames() -> None:
    """Errors go out as envelopes on ws.error; raw peers get none."""
    assert json.loads(error_frame(Format.JSON, "bad") or "") == {"subject": "ws.error", "body": "bad"}
    packed = error_frame(Format.MSGPACK, "bad")
    assert isinstance(packed, bytes)
    assert msgpack.unpackb(packed)["subject"] == "ws.error"
    assert error_frame(Format.RAW, "bad") is None


# --- subjects ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "target"),
    [
        ("ws.session.abc", ToSession("abc")),
        ("ws.broadcast", Broadcast()),
        ("ws.sessions", ListSessions()),
        ("ws.close.abc", CloseSession("abc")),
        ("ws.conn.c1", ToConnection("c1", None)),
        ("ws.conn.t.c1", ToConnection("t.c1", None)),
        ("ws.conn.t.c1.their.reply", ToConnection("t.c1", "their.reply")),
        ("ws.session.", Other("ws.session.")),
        ("ws.session.a.b", ToSession("a.b")),
        ("ws.session.a.b.c", Other("ws.session.a.b.c")),
        ("chat.room", Other("chat.room")),
    ],
)
def test_parse_target(subject: str, target: object) -> None:
    """What a component means by each subject it publishes to."""
    assert parse_target(subject) == target


def test_connection_subject_carries_the_peer_reply() -> None:
    """A frame with its own reply_to gets a reply subject that leads back to it."""
    assert connection_subject("t.c1") == "ws.conn.t.c1"
    assert parse_target(connection_subject("t.c1", "_INBOX.x")) == ToConnection("t.c1", "_INBOX.x")


def test_ids_are_128_bits_of_hex() -> None:
    """Session ids: 32 hex characters, never repeated."""
    ids = {new_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


@pytest.mark.parametrize(
    ("pattern", "subject", "matches"),
    [
        ("chat.*", "chat.room", True),
        ("chat.*", "chat.room.x", False),
        ("chat.*", "chat", False),
        ("chat.>", "chat.room.x", True),
        ("chat.>", "chat", False),
        (">", "anything.at.all", True),
        ("a.*.c", "a.b.c", True),
        ("a.*.c", "a.b.d", False),
        ("exact", "exact", True),
        ("exact", "exactly", False),
    ],
)
def test_subject_patterns(pattern: str, subject: str, matches: bool) -> None:
    """NATS wildcard semantics: * is one token, a final > is one or more."""
    assert SubjectPattern(pattern).matches(subject) is matches


@pytest.mark.parametrize("bad", ["", "a..b", "a.>.b", "a*", "a.b>"])
def test_bad_patterns_are_refused(bad: str) -> None:
    """Malformed patterns fail at config time, not silently at match time."""
    with pytest.raises(ValueError, match=r"pattern|token"):
        SubjectPattern(bad)


def test_no_subscriptions_means_everything() -> None:
    assert Subscriptions().matches("whatever")
    assert Subscriptions.parse(" a.*, b ").matches("b")
    assert not Subscriptions.parse("a.*").matches("b")


# --- server-mode config ------------------------------------------------------------------------


def test_server_defaults() -> None:
    """Nothing but MODE: loopback 8080, /ws, json, window 1."""
    settings = server_settings(Config({"MODE": "server"}))
    assert (settings.host, settings.port, settings.path, settings.format) == (
        "127.0.0.1",
        8080,
        "/ws",
        Format.JSON,
    )
    assert settings.delivery_window == 1
    assert settings.compression is False


def test_server_keys_are_parsed() -> None:
    """Every key reaches its setting; keys are case-insensitive; IPv6 hosts take brackets."""
    settings = server_settings(
        Config(
            {
                "uri": "[::1]:9000",
                "Path": "/chat",
                "FORMAT": "MsgPack",
                "ALLOWED_ORIGINS": "https://a, https://b",
                "PING_INTERVAL_SEC": "0",
                "COMPRESSION": "deflate",
                "RATE_LIMIT": "2.5",
            }
        )
    )
    assert (settings.host, settings.port, settings.path) == ("::1", 9000, "/chat")
    assert settings.format is Format.MSGPACK
    assert settings.allowed_origins == ("https://a", "https://b")
    assert settings.ping_interval is None
    assert settings.compression is True
    assert settings.rate_limit == 2.5


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"URI": "nowhere"}, "URI='nowhere': must be host:port"),
        ({"URI": "h:70000"}, "the port must be 1..65535"),
        ({"PATH": "ws"}, "PATH='ws': must start with /"),
        ({"FORMAT": "xml"}, "FORMAT='xml': must be raw, json or msgpack"),
        ({"MAX_CONNECTIONS": "0"}, "must be between 1 and"),
        ({"DELIVERY_WINDOW": "many"}, "DELIVERY_WINDOW='many': must be a whole number"),
        ({"TLS_CERT": "cert"}, "TLS_CERT and TLS_KEY must be given together"),
        ({"COMPRESSION": "gzip"}, "must be off or deflate"),
        ({"SUBSCRIPTIONS": "a..b"}, "SUBSCRIPTIONS='a..b': must be comma-separated subject patterns"),
        ({"LIFECYCLE_EVENTS": "maybe"}, "must be true or false"),
    ],
)
def test_bad_server_config_names_key_value_and_reason(config: dict[str, str], message: str) -> None:
    """ConfigError says which key, which value and why."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        _parse_handler_link(Config(config))


def _parse_handler_link(config: Config) -> None:
    server_settings(config)
    delivery(config)


def test_secret_values_are_redacted_in_errors() -> None:
    """A bad value that came from a secret is not shown."""
    with pytest.raises(ConfigError) as info:
        server_settings(Config({}, {"MAX_CONNECTIONS": SecretValue("hunter2")}))
    assert "hunter2" not in str(info.value)
    assert "<redacted>" in str(info.value)


def test_mode_is_required_and_checked() -> None:
    assert mode_of(Config({"mode": "Client"})) is Mode.CLIENT
    with pytest.raises(ConfigError, match="MODE is missing"):
        mode_of(Config({}))
    with pytest.raises(ConfigError, match="must be server or client"):
        mode_of(Config({"MODE": "both"}))


def test_links_sharing_an_address_must_agree() -> None:
    """differences() names the keys two handler links on one address disagree on."""
    a = server_settings(Config({"URI": "127.0.0.1:1", "FORMAT": "raw"}))
    b = server_settings(Config({"URI": "127.0.0.1:1", "FORMAT": "json", "AUTH_TOKEN": "x"}))
    assert a.differences(a) == []
    assert a.differences(b) == ["FORMAT", "AUTH_TOKEN"]


# --- hostile frames (issue 10) -----------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(Format))
def test_decoders_raise_only_frame_error_on_any_input(fmt: Format) -> None:
    """Whatever bytes or text a peer sends, decode() returns an envelope or raises FrameError."""

    @given(st.one_of(st.binary(max_size=400), st.text(max_size=400)))
    def check(frame: str | bytes) -> None:
        try:
            envelope = decode(fmt, frame, "default")
        except FrameError:
            return
        envelope.subject.encode("utf-8")  # whatever decoded is real text
        if envelope.reply_to is not None:
            envelope.reply_to.encode("utf-8")

    check()


@pytest.mark.parametrize("fmt", [Format.JSON, Format.MSGPACK])
def test_decoders_survive_structured_garbage(fmt: Format) -> None:
    """Objects of every JSON/msgpack shape, nested, with any keys and values: FrameError or an envelope."""
    leaves = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats()
        | st.text(max_size=20)
        | st.binary(max_size=20)
    )
    keys = st.sampled_from(["subject", "body", "body_base64", "reply_to", "x"]) | st.text(max_size=5)
    values = st.recursive(
        leaves, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3)
    )

    @given(st.dictionaries(keys, values, max_size=5))
    def check(obj: dict[str, object]) -> None:
        if fmt is Format.JSON:
            try:
                frame: str | bytes = json.dumps(obj, default=lambda b: b.hex())
            except ValueError:
                return
        else:
            try:
                frame = msgpack.packb(obj, use_bin_type=True)
            except OverflowError:  # an integer msgpack cannot carry: nothing a peer could send
                return
        with contextlib.suppress(FrameError):
            decode(fmt, frame, "default")

    check()


@pytest.mark.parametrize(
    "frame",
    [
        "[" * 100_000 + "]" * 100_000,
        '{"subject": "s", "n": ' + "9" * 5000 + "}",
        '{"subject": "\\ud800"}',
        '{"subject": "s", "body": "\\udc00"}',
        '{"subject": "s", "reply_to": "\\ud834"}',
    ],
    ids=["deep", "huge-number", "surrogate-subject", "surrogate-body", "surrogate-reply"],
)
def test_pathological_json_is_a_frame_error(frame: str) -> None:
    """Deep nesting, over-long numbers and lone surrogates are the peer's error, not the provider's."""
    with pytest.raises(FrameError):
        decode(Format.JSON, frame, "default")


def test_raw_encode_takes_the_frame_type_asked_for() -> None:
    """FORMAT=raw: .binary forces binary, .text forces text (UTF-8 only), none picks by content;
    json and msgpack refuse the type they do not send."""
    assert encode(Format.RAW, Envelope("s", b"hi"), FrameType.BINARY) == b"hi"
    assert encode(Format.RAW, Envelope("s", b""), FrameType.BINARY) == b""
    assert encode(Format.RAW, Envelope("s", b"hi"), FrameType.TEXT) == "hi"
    assert encode(Format.RAW, Envelope("s", b"hi")) == "hi"
    assert encode(Format.RAW, Envelope("s", b"\xff")) == b"\xff"
    with pytest.raises(FrameError, match="UTF-8"):
        encode(Format.RAW, Envelope("s", b"\xff"), FrameType.TEXT)
    assert isinstance(encode(Format.JSON, Envelope("s", b"x"), FrameType.TEXT), str)
    with pytest.raises(FrameError, match="FORMAT=json sends text frames only"):
        encode(Format.JSON, Envelope("s", b"x"), FrameType.BINARY)
    with pytest.raises(FrameError, match="FORMAT=msgpack sends binary frames only"):
        encode(Format.MSGPACK, Envelope("s", b"x"), FrameType.TEXT)


@pytest.mark.parametrize(
    ("subject", "target"),
    [
        ("ws.session.abc.binary", ToSession("abc", FrameType.BINARY)),
        ("ws.session.abc.text", ToSession("abc", FrameType.TEXT)),
        ("ws.session.t.abc.other", Other("ws.session.t.abc.other")),
        ("ws.session.t.abc.binary", ToSession("t.abc", FrameType.BINARY)),
        ("ws.session..binary", Other("ws.session..binary")),
    ],
)
def test_session_subjects_may_name_a_frame_type(subject: str, target: object) -> None:
    assert parse_target(subject) == target
    assert session_subject("abc", FrameType.BINARY) == "ws.session.abc.binary"


@pytest.mark.parametrize(
    ("subject", "reserved"),
    [
        ("ws.connected", True),
        ("ws.disconnected", True),
        ("ws.error", True),
        ("ws.broadcast", True),
        ("ws.sessions", True),
        ("ws.session.x", True),
        ("ws.close.x", True),
        ("ws.conn.x.y", True),
        ("ws.req.x", True),
        ("ws.message", False),
        ("ws.connectedness", False),
        ("chat.ws.connected", False),
    ],
)
def test_reserved_subjects(subject: str, reserved: bool) -> None:
    """The subjects the provider gives meaning to; others under ws. stay free for applications."""
    assert is_reserved(subject) is reserved


def test_stable_ids_are_stable_and_distinct() -> None:
    """The same parts give the same id in one process; other parts another; 128 bits of hex."""
    assert stable_id("c", "ws://x", "default") == stable_id("c", "ws://x", "default")
    assert stable_id("c", "ws://x", "default") != stable_id("c", "ws://x", "other")
    assert stable_id("c", "ws://x", "default") != stable_id("c", "ws://xdefault", "")
    assert len(stable_id("a")) == 32
    int(stable_id("a"), 16)


@pytest.mark.parametrize("key", ["AUTH_TOKEN", "TLS_CERT", "TLS_KEY"])
def test_an_empty_credential_is_an_error_not_off(key: str) -> None:
    """A token or TLS key that is present but empty fails closed."""
    config = {"TLS_CERT": "c.pem", "TLS_KEY": "k.pem", key: "  "}
    with pytest.raises(ConfigError, match=f"{key} is set but empty"):
        server_settings(Config(config))


def test_server_settings_repr_shows_no_secret() -> None:
    settings = server_settings(Config({}, {"AUTH_TOKEN": SecretValue("tok3n-value")}))
    assert "tok3n-value" not in repr(settings)
