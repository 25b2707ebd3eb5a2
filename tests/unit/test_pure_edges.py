"""Edges of the pure modules that the main unit tests do not walk: error texts, the capability
seam, link tables, the key tables' warnings, the NATS framing helpers."""

from __future__ import annotations

import json

import pytest

from provider import errors
from provider.errors import ConfigError
from provider.wasmcloud.capability import Capability, Health, ReplacesLinks
from provider.wasmcloud.config import Config, SecretValue, parse_secrets, parse_string_map
from provider.wasmcloud.links import (
    LinkAnswer,
    LinkDefinition,
    LinkOp,
    LinkResolver,
    LinkTable,
    PutOutcome,
    Role,
    decode_link_definition,
    parse_link_definition,
)
from provider.websocket.config import (
    CLIENT_KEYS,
    SERVER_KEYS,
    Mode,
    client_settings,
    key_warnings,
    mode_of,
    server_settings,
)
from provider.wrpc.protocol import command, header_block, parse_headers, status_of, valid_subject
from provider.wrpc.subjects import chunks, invocation_subject, params_subject, prefix, results_subject

# --- errors -----------------------------------------------------------------------------------------


def test_error_messages_name_what_happened() -> None:
    assert "no responders for 'a.b'" in str(errors.NoResponders("a.b"))
    timeout = errors.InvocationTimeout("s", "the results", 1.5)
    assert str(timeout) == "timed out after 1.500s waiting for the results of 's'"
    assert (timeout.subject, timeout.waiting_for, timeout.timeout) == ("s", "the results", 1.5)
    incomplete = errors.IncompleteResults("s", 3)
    assert "ended its results after 3 byte(s)" in str(incomplete)
    assert incomplete.received == 3
    assert "at least 5 in all" in str(errors.IncompleteValue(5, "string"))
    assert str(errors.InvalidEncoding("bad tag", 2)) == "bad tag (at byte 2)"
    for cls in (errors.ProtocolViolation, errors.TransportClosed, errors.ConfigError):
        assert issubclass(cls, errors.ProviderError)


# --- the capability seam ------------------------------------------------------------------------------


def test_health_defaults_to_no_message() -> None:
    assert Health(True) == Health(True, None)


def test_replacing_capabilities_are_recognised() -> None:
    class Replaces:
        async def replace_link(self, previous: object, link: object) -> None:
            return None

    assert isinstance(Replaces(), ReplacesLinks)
    assert not isinstance(object(), ReplacesLinks)
    assert Capability is not None


# --- config and links -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([], "secrets must be a JSON object"),
        ({"a": {"kind": "Bytes", "value": [300]}}, "secret 'a' must be"),
        ({"a": "plain"}, "secret 'a' must be"),
    ],
)
def test_bad_secrets_are_refused(raw: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_secrets(raw, "here")


def test_string_maps_must_hold_strings() -> None:
    assert parse_string_map(None, "x") == {}
    with pytest.raises(ConfigError, match="must be a JSON object"):
        parse_string_map([1], "x")
    with pytest.raises(ConfigError, match="'k' must be a string"):
        parse_string_map({"k": 1}, "x")


def test_config_reads_case_insensitively_and_shows_secrets_redacted() -> None:
    config = Config({"Mode": "server"}, {"Token": SecretValue(b"bytes-secret")})
    assert "mode" in config
    assert 5 not in config  # type: ignore[comparison-overlap]
    assert len(config) == 2
    assert list(config) == ["MODE", "TOKEN"]
    assert config.shown("token") == "<redacted>"
    assert config.shown("mode") == "'server'"
    assert repr(config) == "Config(MODE='server', TOKEN=<redacted>)"
    assert repr(SecretValue("x")) == "SecretValue(str, redacted)"


def test_link_definitions_describe_themselves_and_round_trip() -> None:
    definition = LinkDefinition(
        "a", "b", "wasmcloud", "messaging", ("consumer",), "n", source_secrets=b"\x01"
    )
    assert definition.describe() == "a -(wasmcloud:messaging/consumer link 'n')-> b"
    again = parse_link_definition(json.loads(json.dumps(definition.to_json())))
    assert again == definition
    with pytest.raises(ConfigError, match="must be a JSON object"):
        parse_link_definition([])
    with pytest.raises(ConfigError, match="'name' must be a string"):
        parse_link_definition({**definition.to_json(), "name": 5})
    with pytest.raises(ConfigError, match="null or an array of bytes"):
        parse_link_definition({**definition.to_json(), "source_secrets": "sealed"})
    with pytest.raises(ConfigError, match="not JSON"):
        decode_link_definition(b"\xff")


def test_the_link_table_records_finds_and_removes() -> None:
    resolver = LinkResolver("p", {}, {})
    definition = LinkDefinition(
        "c", "p", "wasmcloud", "messaging", ("consumer",), target_config={"MODE": "server"}
    )
    link = resolver.resolve(definition, Role.TARGET)
    table = LinkTable()
    assert table.outcome(link) is PutOutcome.NEW
    table.record(link)
    assert table.get(link.key) is link
    assert table.target_link("c", "default") is link
    assert list(table) == [link]
    assert len(table) == 1
    assert table.remove(link.key) is link
    assert table.target_link("c", "default") is None
    assert table.remove(link.key) is None
    assert resolver.role(LinkDefinition("p", "p", "w", "m", ("x",))) is None  # both sides: nonsense
    updated = resolver.with_provider_config({"X": "1"})
    assert updated.resolve(definition, Role.TARGET).config["X"] == "1"


def test_link_answers_round_trip_and_refuse_garbage() -> None:
    answer = LinkAnswer(LinkOp.PUT, False, "a -> b", "bad")
    assert LinkAnswer.decode(answer.encode()) == answer
    for raw, message in [
        (b"[]", "must be a JSON object"),
        (b'{"op": "x"}', "'op' must be"),
        (b'{"op": "put", "applied": 1}', "'applied' must be"),
        (b'{"op": "put", "applied": true, "link": 1}', "'link' must be"),
        (b'{"op": "put", "applied": false, "link": "l", "error": 2}', "'error' must be"),
    ]:
        with pytest.raises(ConfigError, match=message):
            LinkAnswer.decode(raw)
    assert LinkAnswer.decode(b'{"op": "delete", "applied": false, "link": "l"}').error == "no reason given"


# --- the key tables -----------------------------------------------------------------------------------


def test_key_warnings_name_the_nearest_key_and_deprecated_names() -> None:
    warnings = key_warnings(
        Config(
            {
                "MODE": "server",
                "SUBSCRIPTION": "a",
                "RECONNECT_MIN_MS": "5",
                "ENABLE_SESSION_TRACKING": "true",
                "zzz": "1",
            }
        ),
        Mode.SERVER,
    )
    assert "SUBSCRIPTION: unknown key; did you mean SUBSCRIPTIONS?" in warnings
    assert "RECONNECT_MIN_MS: a MODE=client key, ignored with MODE=server" in warnings
    assert any(w.startswith("ENABLE_SESSION_TRACKING: has no effect") for w in warnings)
    assert "zzz: unknown key" in warnings
    client = key_warnings(
        Config({"websocket_url": "ws://x/", "HEADER_X-A": "1", "URI": "ws://x/"}), Mode.CLIENT
    )
    assert client == ["websocket_url: deprecated name (from an older WebSocket provider); use URI"]


def test_the_older_client_providers_keys_still_work() -> None:
    config = Config(
        {
            "websocket_url": "ws://example.com/feed",
            "initial_reconnect_delay_ms": "100",
            "max_reconnect_delay_ms": "2000",
            "max_reconnect_attempts": "3",
            "max_message_size": "4096",
        }
    )
    assert mode_of(config) is Mode.CLIENT
    settings = client_settings(config)
    assert (settings.uri, settings.reconnect_min, settings.reconnect_max) == (
        "ws://example.com/feed",
        0.1,
        2.0,
    )
    assert (settings.max_reconnect_attempts, settings.max_message_bytes) == (3, 4096)


def test_tables_know_their_keys_fields_and_defaults() -> None:
    assert SERVER_KEYS.mode is Mode.SERVER
    assert len(SERVER_KEYS) == len(SERVER_KEYS.names())
    assert SERVER_KEYS[0].name == "MODE"
    assert SERVER_KEYS.key_of("address") == "URI"
    assert CLIENT_KEYS.key_of("headers") == "HEADER_*"
    assert CLIENT_KEYS.known("HEADER_X-ANYTHING") is not None
    assert CLIENT_KEYS.known("WEBSOCKET_URL") is not None
    assert SERVER_KEYS.known("NOPE") is None
    assert server_settings(Config({})).address == SERVER_KEYS.default("address")
    with pytest.raises(ConfigError, match="the port must be a number"):
        server_settings(Config({"URI": "h:x"}))
    with pytest.raises(ConfigError, match="expected host:port"):
        server_settings(Config({"URI": ":80"}))


# --- NATS framing helpers -----------------------------------------------------------------------------


def test_header_blocks_and_commands() -> None:
    assert header_block({}) == b""
    block = header_block({"source-id": "a", "k": "v"})
    assert block == b"NATS/1.0\r\nsource-id: a\r\nk: v\r\n\r\n"
    assert parse_headers(block) == {"source-id": "a", "k": "v"}
    assert parse_headers(None) == {}
    with pytest.raises(ValueError, match="invalid NATS header name"):
        header_block({"bad:key": "v"})
    with pytest.raises(ValueError, match="line break"):
        header_block({"k": "a\r\nb"})
    assert command("s", "r", b"xy") == b"PUB s r 2\r\nxy\r\n"
    assert (
        command("s", "", b"xy", block)
        == b"HPUB s  %d %d\r\n" % (len(block), len(block) + 2) + block + b"xy\r\n"
    )
    assert status_of(b"NATS/1.0 503\r\n\r\n") == ("503", "")
    assert status_of(b"NATS/1.0 408 Request Timeout\r\n\r\n") == ("408", "Request Timeout")
    assert status_of(block) == (None, "")
    assert status_of(None) == (None, "")


@pytest.mark.parametrize(
    ("subject", "valid"),
    [("a.b", True), ("a", True), ("", False), ("a..b", False), (".a", False), ("a.", False), ("a b", False)],
)
def test_valid_subjects(subject: str, valid: bool) -> None:
    assert valid_subject(subject) is valid


def test_wrpc_subjects_and_chunks() -> None:
    assert prefix("default", "p") == "default.p"
    assert invocation_subject("default.p", "wasmcloud:messaging/consumer@0.2.0", "publish") == (
        "default.p.wrpc.0.0.1.wasmcloud:messaging/consumer@0.2.0.publish"
    )
    assert invocation_subject("", "", "f") == "wrpc.0.0.1.f"
    assert params_subject("rs") == "rs.params"
    assert results_subject("rc") == "rc.results"
    assert [bytes(c) for c in chunks(b"abcde", 2)] == [b"ab", b"cd", b"e"]
    assert list(chunks(b"", 2)) == []
    with pytest.raises(ValueError, match="positive"):
        list(chunks(b"x", 0))


def test_parsed_header_blocks_are_read_only_and_large_ones_are_not_remembered() -> None:
    """parse_headers remembers small blocks (one caller's calls repeat theirs), never a large one:
    distinct hostile blocks of 1 KiB each leave the cache as it was; what it returns is read-only."""
    from provider.wrpc import protocol

    small = protocol.parse_headers(b"NATS/1.0\r\nsource-id: a\r\n\r\n")
    assert small == {"source-id": "a"}
    assert protocol.parse_headers(b"NATS/1.0\r\nsource-id: a\r\n\r\n") is small
    with pytest.raises(TypeError):
        small["source-id"] = "b"  # type: ignore[index]
    before = protocol._parse_cached.cache_info().currsize
    for i in range(2000):
        block = b"NATS/1.0\r\nk: " + str(i).encode() + b"x" * 1024 + b"\r\n\r\n"
        assert protocol.parse_headers(block)["k"].startswith(str(i))
    assert protocol._parse_cached.cache_info().currsize == before
