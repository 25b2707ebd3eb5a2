"""The bridge's pure parts: subjects and their check, the sessions listing, the command line, its sources."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provider.bridge.config import (
    DEFAULT_GATHER_MS,
    USAGE,
    HelpRequested,
    parse_command_line,
    server_keys,
)
from provider.bridge.subjects import (
    MAX_CLIENT_SUBJECT,
    BridgeSubjects,
    check_tokens,
    decode_listing,
    encode_listing,
)
from provider.errors import ConfigError
from provider.websocket.formats import Format
from provider.websocket.subjects import Ids, instance_tag
from provider.wrpc.protocol import valid_subject

NATS = ("--nats", "nats://127.0.0.1:4222")


def no_files(path: str) -> str:
    raise FileNotFoundError(2, "No such file or directory", path)


# -- subjects -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "subject", ["a", "chat.lobby", "a-b_c.D9", "x" * MAX_CLIENT_SUBJECT, "$odd.but~fine!"]
)
def test_literal_subjects_pass(subject: str) -> None:
    """Printable ASCII tokens without wildcards, joined by single dots, are client subjects."""
    assert check_tokens(subject, "subject") == subject


@pytest.mark.parametrize(
    ("subject", "reason"),
    [
        ("", "is empty"),
        ("a b", "a space"),
        ("a\tb", "U+0009"),
        ("a\r\nb", "U+000D"),
        ("nul\x00", "U+0000"),
        ("caf\u00e9", "non-ASCII"),
        ("\u2028", "U+2028"),
        (">", "wildcard '>'"),
        ("*", "wildcard '*'"),
        ("a.>", "wildcard '>'"),
        ("a*", "wildcard '*'"),
        ("a..b", "empty token"),
        (".a", "empty token"),
        ("a.", "empty token"),
        ("x" * (MAX_CLIENT_SUBJECT + 1), "characters long"),
    ],
)
def test_other_subjects_are_refused_with_the_reason(subject: str, reason: str) -> None:
    """Wildcards, whitespace, control characters, non-ASCII, empty tokens and excess length are refused."""
    with pytest.raises(ValueError, match="subject") as refused:
        check_tokens(subject, "subject")
    assert reason in str(refused.value)


@given(st.text(max_size=300))
def test_whatever_a_client_sends_stays_under_prefix_in(subject: str) -> None:
    """Any text either is refused, or becomes one valid literal NATS subject under ``ws.in.``."""
    names = BridgeSubjects("ws", "t1")
    try:
        delivered = names.delivered_subject(subject)
    except ValueError:
        return
    assert delivered == f"ws.in.{subject}"
    assert valid_subject(delivered)
    assert "*" not in delivered
    assert ">" not in delivered


def test_the_subjects_of_an_instance() -> None:
    """Everything under the prefix; the wildcard subscriptions name the instance's tag."""
    names = BridgeSubjects("app.ws", "beef0001")
    assert names.delivered_subject("chat") == "app.ws.in.chat"
    assert names.inbound == "app.ws.in.>"
    assert names.connected == "app.ws.event.connected"
    assert names.disconnected == "app.ws.event.disconnected"
    assert names.own_sessions == "app.ws.session.beef0001.>"
    assert names.own_closes == "app.ws.close.beef0001.>"
    assert names.broadcast == "app.ws.broadcast"
    assert names.sessions == "app.ws.sessions"
    assert names.gather == "app.ws.bridge.sessions"
    session_id = names.new_session_id()
    assert session_id.startswith("beef0001.")
    assert names.session_subject(session_id) == f"app.ws.session.{session_id}"


def test_only_this_instances_session_subjects_name_a_session() -> None:
    """``session_of`` / ``close_of`` accept ``<prefix>.session.<tag>.<rand>`` of this tag only."""
    names = BridgeSubjects("ws", "aaaa0000")
    assert names.session_of("ws.session.aaaa0000.ff") == "aaaa0000.ff"
    assert names.close_of("ws.close.aaaa0000.ff") == "aaaa0000.ff"
    for other in (
        "ws.session.bbbb0000.ff",  # another instance
        "ws.session.aaaa0000",  # no random part
        "ws.session.aaaa0000.",
        "ws.session.aaaa0000.ff.gg",  # one token too many
        "ws.close.aaaa0000.ff",  # a close is not a session
        "other.session.aaaa0000.ff",
    ):
        assert names.session_of(other) is None, other
    assert names.close_of("ws.session.aaaa0000.ff") is None


def test_session_ids_name_their_instance() -> None:
    """``<tag>.<rand>``: a short tag per process (server mode's scheme), 128 random bits per session."""
    tag = instance_tag()
    assert len(tag) == 10
    ids = Ids(tag)
    first, second = ids.session(), ids.session()
    assert first != second
    assert first.split(".")[0] == tag
    assert len(first.split(".")[1]) == 32


def test_a_bad_prefix_is_refused() -> None:
    with pytest.raises(ValueError, match="PREFIX"):
        BridgeSubjects("ws.*", "t")


# -- the sessions listing ----------------------------------------------------------------------------------


def test_a_listing_round_trips_and_is_cut_to_fit() -> None:
    """As many sessions as fit the limit, as JSON; the rest counted as left out."""
    sessions = [{"id": f"t.{i:032x}", "reply_to": f"ws.session.t.{i:032x}"} for i in range(100)]
    body, left_out = encode_listing(sessions, 1 << 20)
    assert left_out == 0
    assert decode_listing(body) == sessions
    body, left_out = encode_listing(sessions, 1000)
    assert len(body) <= 1000
    kept = decode_listing(body)
    assert kept == sessions[: len(kept)]
    assert left_out == 100 - len(kept) > 0
    assert encode_listing([], 2) == (b"[]", 0)


@pytest.mark.parametrize("body", [b"\xff", b"{}", b"[1]", b'"x"', b"[{}, 2]", b""])
def test_a_listing_that_is_not_a_list_of_objects_is_refused(body: bytes) -> None:
    with pytest.raises(ValueError, match="not"):
        decode_listing(body)


# -- the command line ----------------------------------------------------------------------------------------


def test_defaults() -> None:
    """Server mode's defaults, raw frames on ws.in.message, prefix ws, gather window 300 ms."""
    settings = parse_command_line(NATS, {}, no_files)
    assert settings.prefix == "ws"
    assert settings.nats.servers == ("nats://127.0.0.1:4222",)
    assert settings.server.host == "127.0.0.1"
    assert settings.server.port == 8080
    assert settings.server.subject == "message"
    assert settings.server.format is Format.JSON
    assert not settings.delivery.lifecycle_events
    assert settings.gather_seconds == DEFAULT_GATHER_MS / 1000
    assert not settings.max_message_bytes_given


def test_keys_from_every_source() -> None:
    """KEY=VALUE, KEY_FILE=PATH, WS_BRIDGE_KEY and WS_BRIDGE_KEY_FILE each set a key (case-insensitive)."""
    files = {"/run/token": "s3cret\n", "/run/pw": "pa55\r\n"}
    settings = parse_command_line(
        [*NATS, "uri=0.0.0.0:9000", "FORMAT=msgpack", "AUTH_TOKEN_FILE=/run/token", "--log-level=debug"],
        {
            "WS_BRIDGE_PREFIX": "app.ws",
            "WS_BRIDGE_NATS_USER": "bridge",
            "WS_BRIDGE_NATS_PASSWORD_FILE": "/run/pw",
            "UNRELATED": "x",
        },
        files.__getitem__,
    )
    assert settings.server.address == ("0.0.0.0", 9000)
    assert settings.server.format is Format.MSGPACK
    assert settings.server.auth_token == "s3cret"
    assert settings.prefix == "app.ws"
    assert settings.nats.user == "bridge"
    assert settings.nats.password == "pa55"
    assert settings.log_level == "debug"
    assert "s3cret" not in repr(settings)
    assert "pa55" not in repr(settings)


def test_a_secret_never_shows_in_an_error() -> None:
    """A bad value that came from the environment is named but not shown."""
    with pytest.raises(ConfigError) as bad:
        parse_command_line(NATS, {"WS_BRIDGE_MAX_CONNECTIONS": "lots-of-them"}, no_files)
    assert "MAX_CONNECTIONS" in str(bad.value)
    assert "lots-of-them" not in str(bad.value)
    assert "<redacted>" in str(bad.value)


def test_nats_credentials_are_read_at_start() -> None:
    settings = parse_command_line([*NATS, "NATS_CREDS=/etc/b.creds"], {}, {"/etc/b.creds": "JWT+SEED"}.get)  # type: ignore[arg-type]
    assert settings.nats.creds == "JWT+SEED"
    assert "JWT+SEED" not in repr(settings)


@pytest.mark.parametrize(
    ("argv", "environ", "said"),
    [
        ((), {}, "--nats URL is required"),
        (("--nats", "http://x"), {}, "expected nats://host:port"),
        (("--nats", "nats://u:pw@h:99999"), {}, "the port is not a number"),
        ((*NATS, "--what"), {}, "unknown option '--what'"),
        ((*NATS, "--log-level", "loud"), {}, "--log-level 'loud'"),
        ((*NATS, "MODE=server"), {}, "drop MODE"),
        ((*NATS, "SUBSCRIPTION=a"), {}, "unknown key(s) SUBSCRIPTION"),
        ((*NATS, "PREFIX=a b"), {}, "PREFIX 'a b' has a space"),
        ((*NATS, "SUBJECT=a.>"), {}, "SUBJECT 'a.>' has the wildcard"),
        ((*NATS, "AUTH_TOKEN=x"), {"WS_BRIDGE_AUTH_TOKEN": "y"}, "AUTH_TOKEN is given twice"),
        ((*NATS, "TLS_KEY_FILE=/none"), {}, "cannot read '/none'"),
        ((*NATS, "NATS_CREDS=/none"), {}, "NATS_CREDS='/none': cannot read it"),
        ((*NATS, "NATS_USER=a"), {}, "NATS_USER and NATS_PASSWORD must be given together"),
        ((*NATS, "NATS_TOKEN=t", "NATS_USER=a", "NATS_PASSWORD=b"), {}, "one way to log in"),
        ((*NATS, "SESSIONS_TIMEOUT_MS=0"), {}, "SESSIONS_TIMEOUT_MS='0': must be a whole number"),
        ((*NATS, "=x"), {}, "the key is empty"),
        ((*NATS, "noequals"), {}, "expected KEY=VALUE"),
        ((*NATS, "URI=nowhere"), {}, "URI='nowhere'"),
    ],
)
def test_bad_command_lines_say_what_is_wrong(
    argv: tuple[str, ...], environ: dict[str, str], said: str
) -> None:
    with pytest.raises(ConfigError) as bad:
        parse_command_line(argv, environ, no_files)
    assert said in str(bad.value)


def test_a_nats_password_in_the_url_is_not_shown() -> None:
    settings = parse_command_line(["--nats", "nats://user:hunter2@127.0.0.1:4222"], {}, no_files)
    assert settings.nats.shown == "nats://127.0.0.1:4222"
    with pytest.raises(ConfigError) as bad:
        parse_command_line(["--nats", "http://user:hunter2@h"], {}, no_files)
    assert "hunter2" not in str(bad.value)


def test_help() -> None:
    with pytest.raises(HelpRequested):
        parse_command_line(["--help"], {}, no_files)
    for key in ("PREFIX", "AUTH_TOKEN", "LIFECYCLE_EVENTS", "NATS_CREDS", "WS_BRIDGE_KEY_FILE"):
        assert key in USAGE


def test_the_server_keys_are_server_modes() -> None:
    """The bridge takes exactly the keys a server-mode handler link takes (but MODE)."""
    assert {
        "URI",
        "PATH",
        "FORMAT",
        "SUBJECT",
        "AUTH_TOKEN",
        "ALLOWED_ORIGINS",
        "MAX_CONNECTIONS",
    } <= server_keys()
    assert {"MAX_MESSAGE_BYTES", "PING_INTERVAL_SEC", "TLS_CERT", "TLS_KEY", "STATIC_DIR"} <= server_keys()
    assert {"SUBSCRIPTIONS", "LIFECYCLE_EVENTS", "DELIVERY_WINDOW", "RATE_LIMIT"} <= server_keys()
    assert "HOST" not in server_keys()
    assert "PORT" not in server_keys()


def test_listing_keys_are_json() -> None:
    """The listing encoder writes compact JSON the host's components can read."""
    body, _ = encode_listing([{"id": "t.x", "query": "a=é"}], 100)
    assert json.loads(body) == [{"id": "t.x", "query": "a=é"}]
