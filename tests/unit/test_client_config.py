"""Client-mode link config (``client_settings``) and the reconnect delay (``backoff``): pure pieces."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provider.errors import ConfigError
from provider.wasmcloud.config import Config, SecretValue
from provider.websocket.client import backoff
from provider.websocket.config import ClientSettings, client_settings
from provider.websocket.formats import Format

URI = "ws://127.0.0.1:9000/feed"


def settings(**config: str) -> ClientSettings:
    return client_settings(Config({"MODE": "client", "URI": URI, **config}))


# -- backoff ------------------------------------------------------------------------------------------


@given(
    step=st.integers(min_value=1, max_value=10_000),
    low=st.floats(min_value=0.001, max_value=60),
    factor=st.floats(min_value=1, max_value=1000),
)
def test_backoff_stays_within_min_and_max(step: int, low: float, factor: float) -> None:
    """Whatever the step (even one reached after days of retrying), the delay is in [low, high]."""
    high = low * factor
    delay = backoff(step, low, high)
    assert low <= delay <= high


def test_backoff_doubles_then_stays_in_the_upper_half_of_max() -> None:
    """Step k draws from [low·2^(k-1), low·2^k] until that passes high; then from [high/2, high]."""
    low, high = 0.1, 3.0
    for step, (floor, ceiling) in {
        1: (0.1, 0.2),
        2: (0.2, 0.4),
        3: (0.4, 0.8),
        5: (1.5, 3.0),
        60: (1.5, 3.0),
    }.items():
        samples = [backoff(step, low, high) for _ in range(200)]
        assert all(floor <= s <= ceiling for s in samples), (step, min(samples), max(samples))
        assert len(set(samples)) > 100, "no jitter"


def test_backoff_with_equal_min_and_max_is_constant() -> None:
    """RECONNECT_MIN_MS = RECONNECT_MAX_MS: a fixed delay."""
    assert {backoff(step, 0.5, 0.5) for step in (1, 2, 50)} == {0.5}


# -- client_settings ----------------------------------------------------------------------------------


def test_defaults() -> None:
    """Only URI is needed; the rest has the documented defaults."""
    s = settings()
    assert s == ClientSettings(uri=URI)
    assert (s.connect_timeout, s.reconnect_min, s.reconnect_max, s.max_reconnect_attempts) == (
        10.0,
        0.25,
        30.0,
        0,
    )
    assert (s.ping_interval, s.format, s.subject, s.max_message_bytes) == (
        20.0,
        Format.JSON,
        "ws.message",
        2**20,
    )
    assert not s.secure


def test_every_key_is_parsed() -> None:
    """Milliseconds become seconds, header names keep their spelling, PING_INTERVAL_SEC=0 turns pings off."""
    s = settings(
        **{
            "URI": "WSS://example.com:8443/stream?x=1",
            "auth_token": "tok",
            "HEADER_X-Api-Key": "k",
            "header_Accept-Language": "fr",
            "SUBPROTOCOLS": " graphql-ws , v2 ",
            "CONNECT_TIMEOUT_SEC": "2.5",
            "RECONNECT_MIN_MS": "100",
            "RECONNECT_MAX_MS": "5000",
            "MAX_RECONNECT_ATTEMPTS": "7",
            "PING_INTERVAL_SEC": "0",
            "TLS_CA": "/etc/ca.pem",
            "FORMAT": "MsgPack",
            "SUBJECT": "feed.in",
            "MAX_MESSAGE_BYTES": "4096",
            "SEND_QUEUE_LIMIT": "65536",
        }
    )
    assert s.secure
    assert s.auth_token == "tok"
    assert set(s.headers) == {("X-Api-Key", "k"), ("Accept-Language", "fr")}
    assert s.subprotocols == ("graphql-ws", "v2")
    assert (s.connect_timeout, s.reconnect_min, s.reconnect_max) == (2.5, 0.1, 5.0)
    assert (s.max_reconnect_attempts, s.ping_interval, s.tls_ca) == (7, None, "/etc/ca.pem")
    assert (s.format, s.subject, s.max_message_bytes, s.send_queue_limit) == (
        Format.MSGPACK,
        "feed.in",
        4096,
        65536,
    )


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"URI": ""}, "URI is missing: client mode needs URI=ws://host:port/path"),
        ({"URI": "127.0.0.1:9000"}, "URI='127.0.0.1:9000': must be a ws:// or wss:// URL"),
        ({"URI": "https://example.com/"}, "must be a ws:// or wss:// URL"),
        ({"URI": "ws://example.com:99999/"}, "URI='ws://example.com:99999/': must be a ws:// or wss:// URL"),
        ({"URI": "ws://example.com/#top"}, "a WebSocket URI has no #fragment"),
        ({"RECONNECT_MIN_MS": "0"}, "RECONNECT_MIN_MS='0': must be a whole number (must be between 1"),
        (
            {"RECONNECT_MIN_MS": "2000", "RECONNECT_MAX_MS": "1000"},
            "RECONNECT_MAX_MS='1000': must not be below",
        ),
        ({"MAX_RECONNECT_ATTEMPTS": "-1"}, "MAX_RECONNECT_ATTEMPTS='-1'"),
        ({"MAX_RECONNECT_ATTEMPTS": "three"}, "MAX_RECONNECT_ATTEMPTS='three': must be a whole number"),
        ({"CONNECT_TIMEOUT_SEC": "0"}, "CONNECT_TIMEOUT_SEC='0': must be a number of seconds"),
        ({"PING_INTERVAL_SEC": "soon"}, "PING_INTERVAL_SEC='soon'"),
        ({"FORMAT": "xml"}, "FORMAT='xml': must be raw, json or msgpack"),
        ({"SEND_QUEUE_LIMIT": "10"}, "SEND_QUEUE_LIMIT='10'"),
        ({"HEADER_": "x"}, "HEADER_: '' is not an HTTP header name"),
        ({"HEADER_Bad Name": "x"}, "HEADER_Bad Name: 'Bad Name' is not an HTTP header name"),
        (
            {"HEADER_X-Evil": "a\r\nHost: evil"},
            "HEADER_X-Evil='a\\r\\nHost: evil': a header value cannot hold",
        ),
        ({"HEADER_Sec-WebSocket-Protocol": "v1"}, "sets Sec-WebSocket-Protocol itself; use SUBPROTOCOLS"),
        ({"HEADER_host": "elsewhere"}, "HEADER_host: the WebSocket handshake sets host itself"),
        ({"AUTH_TOKEN": "t", "HEADER_Authorization": "Basic x"}, "AUTH_TOKEN already sends Authorization"),
        ({"SUBPROTOCOLS": "ok, not ok"}, "SUBPROTOCOLS='ok, not ok': 'not ok' is not a subprotocol name"),
    ],
)
def test_bad_values_name_the_key_and_the_reason(config: dict[str, str], message: str) -> None:
    """Each bad key is refused with its name, its value and why."""
    with pytest.raises(ConfigError) as info:
        settings(**config)
    assert message in str(info.value)


def test_secrets_stay_out_of_errors_and_repr() -> None:
    """An AUTH_TOKEN from a secret is redacted in errors; tokens, headers and the CA are not in the repr."""
    bad = Config({"MODE": "client", "URI": URI}, {"AUTH_TOKEN": SecretValue("s3cret\nx")})
    with pytest.raises(ConfigError) as info:
        client_settings(bad)
    assert "s3cret" not in str(info.value)
    assert "AUTH_TOKEN=<redacted>" in str(info.value)
    good = settings(
        AUTH_TOKEN="s3cret", **{"HEADER_X-Key": "hidden", "TLS_CA": "-----BEGIN CERTIFICATE-----"}
    )
    assert "s3cret" not in repr(good)
    assert "hidden" not in repr(good)
    assert "BEGIN" not in repr(good)


def test_where_leaves_out_user_info_and_query() -> None:
    """Log lines and errors show the URI without the parts that can carry credentials."""
    assert settings(URI="wss://user:pw@example.com:8443/a/b?token=t").where == "wss://example.com:8443/a/b"
    assert settings(URI="ws://[::1]:9000/x").where == "ws://[::1]:9000/x"
    assert settings(URI="ws://example.com").where == "ws://example.com"


def test_differences_name_the_config_keys() -> None:
    """What two links of one connection disagree on, as the keys to fix (values not shown)."""
    a = settings(AUTH_TOKEN="one", RECONNECT_MAX_MS="1000", **{"HEADER_X-A": "1"})
    b = settings(AUTH_TOKEN="two", RECONNECT_MAX_MS="2000", **{"HEADER_X-A": "2"})
    assert a.differences(b) == ["AUTH_TOKEN", "HEADER_*", "RECONNECT_MAX_MS"]
    assert a.differences(a) == []
