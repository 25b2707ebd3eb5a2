"""Link configuration for server and client mode, parsed and checked. Pure.

Every error names the key, the value (secrets redacted) and the reason, and a link with
any bad key is rejected whole (nothing of it is applied).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlsplit

from provider.errors import ConfigError
from provider.wasmcloud.config import Config
from provider.websocket.formats import Format
from provider.websocket.subjects import Subscriptions

T = TypeVar("T")
E = TypeVar("E", bound=enum.Enum)

MIB = 1024 * 1024


class Mode(enum.Enum):
    SERVER = "server"
    CLIENT = "client"


def _bad(config: Config, key: str, reason: str) -> ConfigError:
    return ConfigError(f"{key}={config.shown(key)}: {reason}")


def _get(config: Config, key: str, default: T, convert: Callable[[str], T], reason: str) -> T:
    if key not in config or config[key].strip() == "":
        return default
    try:
        return convert(config[key].strip())
    except (ValueError, TypeError) as exc:
        # The converters' own messages name no value; a secret's value must never show.
        detail = f" ({exc})" if str(exc) and not config.is_secret(key) else ""
        raise _bad(config, key, reason + detail) from None


def _ranged(kind: Callable[[str], T], low: float, high: float) -> Callable[[str], T]:
    def convert(text: str) -> T:
        try:
            value = kind(text)
        except ValueError:
            raise ValueError("") from None  # int()'s message repeats the value
        if not low <= value <= high:  # type: ignore[operator]
            raise ValueError(f"must be between {low:g} and {high:g}")
        return value

    return convert


def _int(config: Config, key: str, default: int, low: int, high: int) -> int:
    return _get(config, key, default, _ranged(int, low, high), "must be a whole number")


def _seconds(config: Config, key: str, default: float, low: float, high: float) -> float:
    return _get(config, key, default, _ranged(float, low, high), "must be a number of seconds")


def _bool(config: Config, key: str, default: bool) -> bool:
    def convert(text: str) -> bool:
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError("")

    return _get(config, key, default, convert, "must be true or false")


def _format(config: Config) -> Format:
    return _get(config, "FORMAT", Format.JSON, _enum(Format), "must be raw, json or msgpack")


def _enum(kind: type[E]) -> Callable[[str], E]:
    def convert(text: str) -> E:
        try:
            return kind(text.lower())
        except ValueError:
            raise ValueError("") from None  # the enum's message repeats the value

    return convert


def _list(config: Config, key: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in config.get(key, "").split(",") if p.strip())


def mode_of(config: Config) -> Mode:
    """The link's ``MODE``; required."""
    if "MODE" not in config:
        raise ConfigError("MODE is missing: set MODE=server or MODE=client in the link config")
    return _get(config, "MODE", Mode.SERVER, _enum(Mode), "must be server or client")


def _compression(text: str) -> bool:
    choices = {"off": False, "none": False, "false": False, "deflate": True, "on": True}
    if text.lower() not in choices:
        raise ValueError("")
    return choices[text.lower()]


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError("expected host:port")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not port.isdigit():
        raise ValueError("the port must be a number")
    number = int(port)
    if not 0 < number < 65536:
        raise ValueError("the port must be 1..65535")
    return host, number


KEYS = {
    "host": "URI",
    "port": "URI",
    "headers": "HEADER_*",
    "connect_timeout": "CONNECT_TIMEOUT_SEC",
    "reconnect_min": "RECONNECT_MIN_MS",
    "reconnect_max": "RECONNECT_MAX_MS",
    "ping_interval": "PING_INTERVAL_SEC",
    "ping_timeout": "PING_TIMEOUT_SEC",
}
"""Settings whose config key is not simply the field's name in upper case."""


def differing_keys(a: ServerSettings | ClientSettings, b: ServerSettings | ClientSettings) -> list[str]:
    """The config keys whose settings differ between ``a`` and ``b`` (each key once, in field order)."""
    keys = [
        KEYS.get(name, name.upper())
        for name in a.__dataclass_fields__
        if getattr(a, name) != getattr(b, name)
    ]
    return list(dict.fromkeys(keys))


@dataclass(frozen=True)
class ServerSettings:
    """What one listen address serves; every handler link on that address must agree on it."""

    host: str = "127.0.0.1"
    port: int = 8080
    path: str = "/ws"
    format: Format = Format.JSON
    subject: str = "ws.message"
    auth_token: str | None = field(default=None, repr=False)
    allowed_origins: tuple[str, ...] = ()
    max_connections: int = 10_000
    max_message_bytes: int = MIB
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    send_queue_limit: int = MIB
    rate_limit: float = 0.0
    delivery_window: int = 1
    tls_cert: str | None = None
    tls_key: str | None = field(default=None, repr=False)
    compression: bool = False
    static_dir: str | None = None

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def differences(self, other: ServerSettings) -> list[str]:
        """The config keys in which two links on one address disagree (values not shown)."""
        return differing_keys(self, other)


@dataclass(frozen=True)
class Delivery:
    """What one handler link receives from a server: its subjects, and whether lifecycle events."""

    subscriptions: Subscriptions = field(default_factory=Subscriptions)
    lifecycle_events: bool = False


def server_settings(config: Config) -> ServerSettings:
    """Parse the server-mode keys of a handler link. Raises :class:`ConfigError`."""
    host, port = _get(config, "URI", ("127.0.0.1", 8080), _host_port, "must be host:port to listen on")
    path = config.get("PATH", "/ws").strip() or "/ws"
    if not path.startswith("/"):
        raise _bad(config, "PATH", "must start with /")
    ping = _seconds(config, "PING_INTERVAL_SEC", 20.0, 0, 3600)
    ping_timeout = _seconds(config, "PING_TIMEOUT_SEC", 20.0, 0, 3600)
    cert, key = config.get("TLS_CERT") or None, config.get("TLS_KEY") or None
    if (cert is None) != (key is None):
        raise ConfigError("TLS_CERT and TLS_KEY must be given together (both PEM text or file paths)")
    compression = _get(config, "COMPRESSION", False, _compression, "must be off or deflate")
    return ServerSettings(
        host=host,
        port=port,
        path=path,
        format=_format(config),
        subject=config.get("SUBJECT", "").strip() or "ws.message",
        auth_token=config.get("AUTH_TOKEN") or None,
        allowed_origins=_list(config, "ALLOWED_ORIGINS"),
        max_connections=_int(config, "MAX_CONNECTIONS", 10_000, 1, 1_000_000),
        max_message_bytes=_int(config, "MAX_MESSAGE_BYTES", MIB, 1, 64 * MIB),
        ping_interval=ping or None,
        ping_timeout=ping_timeout or None,
        send_queue_limit=_int(config, "SEND_QUEUE_LIMIT", MIB, 1024, 256 * MIB),
        rate_limit=_get(config, "RATE_LIMIT", 0.0, _ranged(float, 0, 1e6), "must be messages per second"),
        delivery_window=_int(config, "DELIVERY_WINDOW", 1, 1, 1024),
        tls_cert=cert,
        tls_key=key,
        compression=compression,
        static_dir=config.get("STATIC_DIR") or None,
    )


def delivery(config: Config) -> Delivery:
    """Parse the per-component keys of a handler link. Raises :class:`ConfigError`."""
    subscriptions = _get(
        config,
        "SUBSCRIPTIONS",
        Subscriptions(),
        Subscriptions.parse,
        "must be comma-separated subject patterns",
    )
    return Delivery(subscriptions, _bool(config, "LIFECYCLE_EVENTS", False))


@dataclass(frozen=True)
class ClientSettings:
    """One outgoing connection: where, how to authenticate, how to reconnect, how to frame."""

    uri: str
    auth_token: str | None = field(default=None, repr=False)
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    subprotocols: tuple[str, ...] = ()
    connect_timeout: float = 10.0
    reconnect_min: float = 0.25
    reconnect_max: float = 30.0
    max_reconnect_attempts: int = 0
    ping_interval: float | None = 20.0
    tls_ca: str | None = field(default=None, repr=False)
    format: Format = Format.JSON
    subject: str = "ws.message"
    max_message_bytes: int = MIB
    send_queue_limit: int = MIB
    delivery_window: int = 1

    @property
    def secure(self) -> bool:
        """Whether the URI is ``wss://`` (TLS)."""
        return urlsplit(self.uri).scheme == "wss"

    @property
    def where(self) -> str:
        """The URI fit for a log line or an error: no user info, no query (either may hold a secret)."""
        parts = urlsplit(self.uri)
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host
        port = f":{parts.port}" if parts.port is not None else ""
        return f"{parts.scheme}://{host}{port}{parts.path}"

    def differences(self, other: ClientSettings) -> list[str]:
        """The config keys in which two links' settings for one connection disagree (values not shown)."""
        return differing_keys(self, other)


# Headers that the WebSocket handshake itself writes: a HEADER_ key for one of them would send it
# twice or break the upgrade, so it is refused with the key that does the job instead, if any.
_HANDSHAKE_HEADERS = {
    "host": "",
    "connection": "",
    "upgrade": "",
    "sec-websocket-key": "",
    "sec-websocket-version": "",
    "sec-websocket-extensions": "",
    "sec-websocket-accept": "",
    "sec-websocket-protocol": "; use SUBPROTOCOLS",
}
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _is_token(text: str) -> bool:
    """An HTTP token (RFC 9110 §5.6.2): header names and subprotocols are tokens."""
    return bool(text) and all(c in _TOKEN_CHARS for c in text)


def _is_field_value(text: str) -> bool:
    """No control characters (CR and LF would split the header; RFC 9110 §5.5), tab allowed."""
    return all(c == "\t" or (c >= " " and c != "\x7f") for c in text)


def _ws_uri(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError("expected ws://host[:port]/path or wss://…")
    _ = parts.port  # raises ValueError for a port that is not a number in 0..65535
    if parts.fragment:
        raise ValueError("a WebSocket URI has no #fragment")
    return text


def _headers(config: Config) -> tuple[tuple[str, str], ...]:
    headers: list[tuple[str, str]] = []
    for key in config:
        if not key.startswith("HEADER_"):
            continue
        name = config.spelled(key)[len("HEADER_") :]
        if not _is_token(name):
            raise ConfigError(f"{config.spelled(key)}: {name!r} is not an HTTP header name")
        if name.lower() in _HANDSHAKE_HEADERS:
            hint = _HANDSHAKE_HEADERS[name.lower()]
            raise ConfigError(f"{config.spelled(key)}: the WebSocket handshake sets {name} itself{hint}")
        if name.lower() == "authorization" and config.get("AUTH_TOKEN"):
            raise ConfigError(
                f"{config.spelled(key)}: AUTH_TOKEN already sends Authorization; set one of them"
            )
        if not _is_field_value(config[key]):
            raise _bad(
                config, config.spelled(key), "a header value cannot hold control characters such as CR or LF"
            )
        headers.append((name, config[key]))
    return tuple(headers)


def client_settings(config: Config) -> ClientSettings:
    """Parse the client-mode keys of a link. Raises :class:`ConfigError`."""
    if not config.get("URI", "").strip():
        raise ConfigError("URI is missing: client mode needs URI=ws://host:port/path (or wss://)")
    uri = _get(config, "URI", "", _ws_uri, "must be a ws:// or wss:// URL")
    reconnect_min = _int(config, "RECONNECT_MIN_MS", 250, 1, 3_600_000) / 1000
    reconnect_max = _int(config, "RECONNECT_MAX_MS", 30_000, 1, 3_600_000) / 1000
    if reconnect_max < reconnect_min:
        raise _bad(config, "RECONNECT_MAX_MS", "must not be below RECONNECT_MIN_MS")
    token = config.get("AUTH_TOKEN") or None
    if token is not None and not _is_field_value(token):
        raise _bad(config, "AUTH_TOKEN", "cannot hold control characters such as CR or LF")
    subprotocols = _list(config, "SUBPROTOCOLS")
    for name in subprotocols:
        if not _is_token(name):
            raise _bad(config, "SUBPROTOCOLS", f"{name!r} is not a subprotocol name (an HTTP token)")
    ping = _seconds(config, "PING_INTERVAL_SEC", 20.0, 0, 3600)
    return ClientSettings(
        uri=uri,
        auth_token=token,
        headers=_headers(config),
        subprotocols=subprotocols,
        connect_timeout=_seconds(config, "CONNECT_TIMEOUT_SEC", 10.0, 0.1, 600),
        reconnect_min=reconnect_min,
        reconnect_max=reconnect_max,
        max_reconnect_attempts=_int(config, "MAX_RECONNECT_ATTEMPTS", 0, 0, 1_000_000),
        ping_interval=ping or None,
        tls_ca=config.get("TLS_CA") or None,
        format=_format(config),
        subject=config.get("SUBJECT", "").strip() or "ws.message",
        max_message_bytes=_int(config, "MAX_MESSAGE_BYTES", MIB, 1, 64 * MIB),
        send_queue_limit=_int(config, "SEND_QUEUE_LIMIT", MIB, 1024, 256 * MIB),
        delivery_window=_int(config, "DELIVERY_WINDOW", 1, 1, 1024),
    )
