"""Link configuration for server and client mode: one declarative key table per mode. Pure.

Each :class:`Key` says, once, what a config key is: its name, the settings field it sets,
its default (as a value and as the README shows it), how its text is read, whether it is a
credential, and the older names it is still accepted under. Parsing, the settings' defaults,
:meth:`differences`, the warnings for unknown and deprecated keys, the README's key tables
(checked by a test) and the local host all read these tables.

Every error names the key, the value (secrets redacted) and the reason, and a link with
any bad key is rejected whole (nothing of it is applied).
"""

from __future__ import annotations

import difflib
import enum
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
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


# --- readers: how one key's text becomes a value ------------------------------------------------------

Reader = Callable[[Config, "Key"], Any]
"""Reads one key from a config (its default when the key is absent or blank). Raises ConfigError."""


def _present(config: Config, key: Key) -> str | None:
    """The key's spelling in ``config`` (its name, or an older alias), if it is there."""
    for name in (key.name, *key.aliases):
        if name in config:
            return name
    return None


def _converted(convert: Callable[[str], T], reason: str) -> Reader:
    def read(config: Config, key: Key) -> Any:
        name = _present(config, key)
        if name is None or config[name].strip() == "":
            return key.default
        try:
            return convert(config[name].strip())
        except (ValueError, TypeError) as exc:
            # The converters' own messages name no value; a secret's value must never show.
            detail = f" ({exc})" if str(exc) and not config.is_secret(name) else ""
            raise _bad(config, name, reason + detail) from None

    return read


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


def _whole(low: int, high: int) -> Reader:
    return _converted(_ranged(int, low, high), "must be a whole number")


def _milliseconds(low: int, high: int) -> Reader:
    """A whole number of milliseconds, read as seconds."""
    whole = _ranged(int, low, high)
    return _converted(lambda text: whole(text) / 1000, "must be a whole number")


def _seconds(low: float, high: float, *, zero_is_off: bool = False) -> Reader:
    read_number = _converted(_ranged(float, low, high), "must be a number of seconds")

    def read(config: Config, key: Key) -> Any:
        value = read_number(config, key)
        return None if zero_is_off and value == 0 else value

    return read


def _choice(choices: dict[str, Any], reason: str) -> Reader:
    def convert(text: str) -> Any:
        if text.lower() not in choices:
            raise ValueError("")  # the value is in the message already
        return choices[text.lower()]

    return _converted(convert, reason)


def _enum(kind: type[E], reason: str) -> Reader:
    return _choice({member.value: member for member in kind}, reason)


_BOOL = {
    "1": True,
    "true": True,
    "yes": True,
    "on": True,
    "0": False,
    "false": False,
    "no": False,
    "off": False,
}


def _text(config: Config, key: Key) -> Any:
    name = _present(config, key)
    return (config[name].strip() if name else "") or key.default


def _optional_text(config: Config, key: Key) -> Any:
    name = _present(config, key)
    return (config[name] if name else "") or None


def _list(config: Config, key: Key) -> tuple[str, ...]:
    name = _present(config, key)
    return tuple(p.strip() for p in (config[name] if name else "").split(",") if p.strip())


def _credential(config: Config, key: Key) -> Any:
    """A token, key or certificate: ``None`` if the key is absent, an error if it is present but
    empty, so that a secret that resolved to nothing fails closed instead of turning auth off."""
    name = _present(config, key)
    if name is None:
        return None
    value = config[name]
    if not value.strip():
        raise ConfigError(f"{key.name} is set but empty: give it a value, or remove the key to go without it")
    return value


def _no_effect(config: Config, key: Key) -> Any:
    return None


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


def _path(config: Config, key: Key) -> Any:
    path = _text(config, key)
    if not path.startswith("/"):
        raise _bad(config, _present(config, key) or key.name, "must start with /")
    return path


def _ws_uri(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError("expected ws://host[:port]/path or wss://…")
    _ = parts.port  # raises ValueError for a port that is not a number in 0..65535
    if parts.fragment:
        raise ValueError("a WebSocket URI has no #fragment")
    return text


def _client_uri(config: Config, key: Key) -> Any:
    name = _present(config, key)
    if name is None or not config[name].strip():
        raise ConfigError("URI is missing: client mode needs URI=ws://host:port/path (or wss://)")
    return _converted(_ws_uri, "must be a ws:// or wss:// URL")(config, key)


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
HEADER_PREFIX = "HEADER_"


def _is_token(text: str) -> bool:
    """An HTTP token (RFC 9110 §5.6.2): header names and subprotocols are tokens."""
    return bool(text) and all(c in _TOKEN_CHARS for c in text)


def _is_field_value(text: str) -> bool:
    """No control characters (CR and LF would split the header; RFC 9110 §5.5), tab allowed."""
    return all(c == "\t" or (c >= " " and c != "\x7f") for c in text)


def _headers(config: Config, key: Key) -> Any:
    headers: list[tuple[str, str]] = []
    for upper in config:
        if not upper.startswith(HEADER_PREFIX):
            continue
        spelled = config.spelled(upper)
        name = spelled[len(HEADER_PREFIX) :]
        if not _is_token(name):
            raise ConfigError(f"{spelled}: {name!r} is not an HTTP header name")
        if name.lower() in _HANDSHAKE_HEADERS:
            hint = _HANDSHAKE_HEADERS[name.lower()]
            raise ConfigError(f"{spelled}: the WebSocket handshake sets {name} itself{hint}")
        if name.lower() == "authorization" and config.get("AUTH_TOKEN"):
            raise ConfigError(f"{spelled}: AUTH_TOKEN already sends Authorization; set one of them")
        if not _is_field_value(config[upper]):
            raise _bad(config, spelled, "a header value cannot hold control characters such as CR or LF")
        headers.append((name, config[upper]))
    return tuple(headers)


def _subprotocols(config: Config, key: Key) -> Any:
    names = _list(config, key)
    for name in names:
        if not _is_token(name):
            raise _bad(config, key.name, f"{name!r} is not a subprotocol name (an HTTP token)")
    return names


def _auth_header_token(config: Config, key: Key) -> Any:
    token = _credential(config, key)
    if token is not None and not _is_field_value(token):
        raise _bad(config, key.name, "cannot hold control characters such as CR or LF")
    return token


# --- the tables -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    """One config key: what it sets, its default, how it is read."""

    name: str
    field: str | None
    """The settings field it sets; ``None`` for keys read elsewhere (``MODE``, per-link delivery)."""
    default: Any
    shown: str
    """The default as the README's key table shows it."""
    read: Reader
    secret: bool = False
    """A credential: put it in a secret (never shown in errors or a repr)."""
    aliases: tuple[str, ...] = ()
    """Older names (of the earlier WebSocket providers), accepted with a deprecation warning."""
    prefix: bool = False
    """A family of keys (``HEADER_<Name>``)."""
    note: str = ""
    """Said when the key is used (``ENABLE_SESSION_TRACKING`` has no effect)."""


class KeyTable(Sequence[Key]):
    """The keys of one mode, in the order of their settings fields."""

    def __init__(self, mode: Mode, keys: Sequence[Key]) -> None:
        self.mode = mode
        self._keys = tuple(keys)
        self._by_field = {k.field: k for k in self._keys if k.field is not None}

    def __getitem__(self, index: int) -> Key:  # type: ignore[override]
        return self._keys[index]

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[Key]:
        return iter(self._keys)

    def default(self, field_name: str) -> Any:
        """The default of the settings field ``field_name``."""
        return self._by_field[field_name].default

    def key_of(self, field_name: str) -> str:
        """The config key a settings field comes from (``HEADER_*`` for the header family)."""
        key = self._by_field[field_name]
        return f"{key.name}*" if key.prefix else key.name

    def read(self, config: Config) -> dict[str, Any]:
        """Every field's value from ``config``. Raises :class:`ConfigError`."""
        return {k.field: k.read(config, k) for k in self._keys if k.field is not None}

    def names(self) -> list[str]:
        return [k.name for k in self._keys]

    def known(self, upper: str) -> Key | None:
        """The key ``upper`` (a config key in upper case) is, by name, alias or prefix."""
        for key in self._keys:
            if upper == key.name or any(upper == alias.upper() for alias in key.aliases):
                return key
            if key.prefix and upper.startswith(key.name):
                return key
        return None


MODE_KEY = Key("MODE", None, None, "— (required)", _enum(Mode, "must be server or client"))
SESSION_TRACKING = Key(
    "ENABLE_SESSION_TRACKING",
    None,
    None,
    "—",
    _no_effect,
    note="has no effect: every session is tracked (ws.sessions lists them); remove the key",
)

SERVER_KEYS = KeyTable(
    Mode.SERVER,
    [
        MODE_KEY,
        Key(
            "URI",
            "address",
            ("127.0.0.1", 8080),
            "127.0.0.1:8080",
            _converted(_host_port, "must be host:port to listen on"),
        ),
        Key("PATH", "path", "/ws", "/ws", _path),
        Key("FORMAT", "format", Format.JSON, "json", _enum(Format, "must be raw, json or msgpack")),
        Key("SUBJECT", "subject", "ws.message", "ws.message", _text),
        Key(
            "SUBSCRIPTIONS",
            None,
            Subscriptions(),
            "all",
            _converted(Subscriptions.parse, "must be comma-separated subject patterns"),
        ),
        Key("AUTH_TOKEN", "auth_token", None, "none", _credential, secret=True),
        Key("ALLOWED_ORIGINS", "allowed_origins", (), "any", _list),
        Key("MAX_CONNECTIONS", "max_connections", 10_000, "10000", _whole(1, 1_000_000)),
        Key("MAX_MESSAGE_BYTES", "max_message_bytes", MIB, "1048576", _whole(1, 64 * MIB)),
        Key("PING_INTERVAL_SEC", "ping_interval", 20.0, "20", _seconds(0, 3600, zero_is_off=True)),
        Key("PING_TIMEOUT_SEC", "ping_timeout", 20.0, "20", _seconds(0, 3600, zero_is_off=True)),
        Key("SEND_QUEUE_LIMIT", "send_queue_limit", MIB, "1048576", _whole(1024, 256 * MIB)),
        Key(
            "RATE_LIMIT",
            "rate_limit",
            0.0,
            "0",
            _converted(_ranged(float, 0, 1e6), "must be messages per second"),
        ),
        Key("DELIVERY_WINDOW", "delivery_window", 1, "1", _whole(1, 1024)),
        Key("TLS_CERT", "tls_cert", None, "none", _credential),
        Key("TLS_KEY", "tls_key", None, "none", _credential, secret=True),
        Key(
            "COMPRESSION",
            "compression",
            False,
            "off",
            _choice(
                {"off": False, "none": False, "false": False, "deflate": True, "on": True},
                "must be off or deflate",
            ),
        ),
        Key("LIFECYCLE_EVENTS", None, False, "false", _choice(_BOOL, "must be true or false")),
        Key("SESSIONS_TIMEOUT_MS", None, 300, "300", _whole(1, 60_000)),
        Key("STATIC_DIR", "static_dir", None, "none", _optional_text),
        Key("REUSE_PORT", "reuse_port", False, "false", _choice(_BOOL, "must be true or false")),
        SESSION_TRACKING,
    ],
)

CLIENT_KEYS = KeyTable(
    Mode.CLIENT,
    [
        MODE_KEY,
        Key("URI", "uri", "", "required", _client_uri, aliases=("websocket_url",)),
        Key("AUTH_TOKEN", "auth_token", None, "none", _auth_header_token, secret=True),
        Key(HEADER_PREFIX, "headers", (), "none", _headers, secret=True, prefix=True),
        Key("SUBPROTOCOLS", "subprotocols", (), "none", _subprotocols),
        Key("CONNECT_TIMEOUT_SEC", "connect_timeout", 10.0, "10", _seconds(0.1, 600)),
        Key(
            "RECONNECT_MIN_MS",
            "reconnect_min",
            0.25,
            "250",
            _milliseconds(1, 3_600_000),
            aliases=("initial_reconnect_delay_ms",),
        ),
        Key(
            "RECONNECT_MAX_MS",
            "reconnect_max",
            30.0,
            "30000",
            _milliseconds(1, 3_600_000),
            aliases=("max_reconnect_delay_ms",),
        ),
        Key(
            "MAX_RECONNECT_ATTEMPTS",
            "max_reconnect_attempts",
            0,
            "0",
            _whole(0, 1_000_000),
        ),
        Key("PING_INTERVAL_SEC", "ping_interval", 20.0, "20", _seconds(0, 3600, zero_is_off=True)),
        Key("TLS_CA", "tls_ca", None, "system CAs", _credential),
        Key("FORMAT", "format", Format.JSON, "json", _enum(Format, "must be raw, json or msgpack")),
        Key("SUBJECT", "subject", "ws.message", "ws.message", _text),
        Key(
            "MAX_MESSAGE_BYTES",
            "max_message_bytes",
            MIB,
            "1048576",
            _whole(1, 64 * MIB),
            aliases=("max_message_size",),
        ),
        Key("SEND_QUEUE_LIMIT", "send_queue_limit", MIB, "1048576", _whole(1024, 256 * MIB)),
        Key("DELIVERY_WINDOW", "delivery_window", 1, "1", _whole(1, 1024)),
        Key(
            "CONNECTIONS",
            "connections",
            "one",
            "one",
            _choice({"one": "one", "every": "every"}, "must be one or every"),
        ),
        SESSION_TRACKING,
    ],
)

TABLES = {Mode.SERVER: SERVER_KEYS, Mode.CLIENT: CLIENT_KEYS}


def mode_of(config: Config) -> Mode:
    """The link's ``MODE``; required (a link with the older ``websocket_url`` key and no ``MODE`` is
    client mode, as under the client-only provider it comes from)."""
    if "MODE" not in config:
        if "WEBSOCKET_URL" in config:
            return Mode.CLIENT
        raise ConfigError("MODE is missing: set MODE=server or MODE=client in the link config")
    mode: Mode = MODE_KEY.read(config, MODE_KEY) or Mode.SERVER
    return mode


def key_warnings(config: Config, mode: Mode) -> list[str]:
    """What to tell the user about the keys a link sets: unknown ones (with the nearest known key),
    older names still accepted, keys that do nothing, keys of the other mode."""
    table = TABLES[mode]
    other = TABLES[Mode.CLIENT if mode is Mode.SERVER else Mode.SERVER]
    warnings: list[str] = []
    for upper in config:
        spelled = config.spelled(upper)
        key = table.known(upper)
        if key is not None:
            if upper != key.name and not key.prefix:
                warnings.append(
                    f"{spelled}: deprecated name (from an older WebSocket provider); use {key.name}"
                )
            if key.note:
                warnings.append(f"{spelled}: {key.note}")
            continue
        if other.known(upper) is not None:
            warnings.append(f"{spelled}: a MODE={other.mode.value} key, ignored with MODE={mode.value}")
            continue
        nearest = difflib.get_close_matches(upper, [k.name for k in table if not k.prefix], n=1, cutoff=0.6)
        hint = f"; did you mean {nearest[0]}?" if nearest else ""
        warnings.append(f"{spelled}: unknown key{hint}")
    return warnings


def differing_keys(table: KeyTable, a: object, b: object) -> list[str]:
    """The config keys whose settings differ between ``a`` and ``b`` (each key once, in field order)."""
    fields = a.__dataclass_fields__  # type: ignore[attr-defined]
    keys = [table.key_of(name) for name in fields if getattr(a, name) != getattr(b, name)]
    return list(dict.fromkeys(keys))


# --- the settings ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerSettings:
    """What one listen address serves; every handler link on that address must agree on it."""

    address: tuple[str, int] = SERVER_KEYS.default("address")
    path: str = SERVER_KEYS.default("path")
    format: Format = SERVER_KEYS.default("format")  # noqa: RUF009  (an Enum member: immutable)
    subject: str = SERVER_KEYS.default("subject")
    auth_token: str | None = field(default=SERVER_KEYS.default("auth_token"), repr=False)
    allowed_origins: tuple[str, ...] = SERVER_KEYS.default("allowed_origins")
    max_connections: int = SERVER_KEYS.default("max_connections")
    max_message_bytes: int = SERVER_KEYS.default("max_message_bytes")
    ping_interval: float | None = SERVER_KEYS.default("ping_interval")
    ping_timeout: float | None = SERVER_KEYS.default("ping_timeout")
    send_queue_limit: int = SERVER_KEYS.default("send_queue_limit")
    rate_limit: float = SERVER_KEYS.default("rate_limit")
    delivery_window: int = SERVER_KEYS.default("delivery_window")
    tls_cert: str | None = field(default=SERVER_KEYS.default("tls_cert"), repr=False)
    tls_key: str | None = field(default=SERVER_KEYS.default("tls_key"), repr=False)
    compression: bool = SERVER_KEYS.default("compression")
    static_dir: str | None = SERVER_KEYS.default("static_dir")
    reuse_port: bool = SERVER_KEYS.default("reuse_port")

    @property
    def host(self) -> str:
        return self.address[0]

    @property
    def port(self) -> int:
        return self.address[1]

    def differences(self, other: ServerSettings) -> list[str]:
        """The config keys in which two links on one address disagree (values not shown)."""
        return differing_keys(SERVER_KEYS, self, other)


@dataclass(frozen=True)
class Delivery:
    """What one handler link receives from a server: its subjects, and whether lifecycle events."""

    subscriptions: Subscriptions = field(default_factory=Subscriptions)
    lifecycle_events: bool = False


def server_settings(config: Config) -> ServerSettings:
    """Parse the server-mode keys of a handler link. Raises :class:`ConfigError`."""
    values = SERVER_KEYS.read(config)
    if (values["tls_cert"] is None) != (values["tls_key"] is None):
        raise ConfigError("TLS_CERT and TLS_KEY must be given together (both PEM text or file paths)")
    return ServerSettings(**values)


_SUBSCRIPTIONS = next(k for k in SERVER_KEYS if k.name == "SUBSCRIPTIONS")
_LIFECYCLE = next(k for k in SERVER_KEYS if k.name == "LIFECYCLE_EVENTS")


_SESSIONS_TIMEOUT = next(k for k in SERVER_KEYS if k.name == "SESSIONS_TIMEOUT_MS")


def sessions_timeout(config: Config, *, strict: bool = False) -> float:
    """Seconds ``ws.sessions`` waits for the other instances (``SESSIONS_TIMEOUT_MS``: a consumer
    link's key, or the provider's). A bad value is the default, or with ``strict`` a ConfigError."""
    try:
        milliseconds: int = _SESSIONS_TIMEOUT.read(config, _SESSIONS_TIMEOUT)
    except ConfigError:
        if strict:
            raise
        milliseconds = _SESSIONS_TIMEOUT.default
    return milliseconds / 1000


def delivery(config: Config) -> Delivery:
    """Parse the per-component keys of a handler link. Raises :class:`ConfigError`."""
    return Delivery(_SUBSCRIPTIONS.read(config, _SUBSCRIPTIONS), _LIFECYCLE.read(config, _LIFECYCLE))


@dataclass(frozen=True)
class ClientSettings:
    """One outgoing connection: where, how to authenticate, how to reconnect, how to frame."""

    uri: str
    auth_token: str | None = field(default=CLIENT_KEYS.default("auth_token"), repr=False)
    headers: tuple[tuple[str, str], ...] = field(default=CLIENT_KEYS.default("headers"), repr=False)
    subprotocols: tuple[str, ...] = CLIENT_KEYS.default("subprotocols")
    connect_timeout: float = CLIENT_KEYS.default("connect_timeout")
    reconnect_min: float = CLIENT_KEYS.default("reconnect_min")
    reconnect_max: float = CLIENT_KEYS.default("reconnect_max")
    max_reconnect_attempts: int = CLIENT_KEYS.default("max_reconnect_attempts")
    ping_interval: float | None = CLIENT_KEYS.default("ping_interval")
    tls_ca: str | None = field(default=CLIENT_KEYS.default("tls_ca"), repr=False)
    format: Format = CLIENT_KEYS.default("format")  # noqa: RUF009  (an Enum member: immutable)
    subject: str = CLIENT_KEYS.default("subject")
    max_message_bytes: int = CLIENT_KEYS.default("max_message_bytes")
    send_queue_limit: int = CLIENT_KEYS.default("send_queue_limit")
    delivery_window: int = CLIENT_KEYS.default("delivery_window")
    connections: str = CLIENT_KEYS.default("connections")

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
        return differing_keys(CLIENT_KEYS, self, other)


def client_settings(config: Config) -> ClientSettings:
    """Parse the client-mode keys of a link. Raises :class:`ConfigError`."""
    values = CLIENT_KEYS.read(config)
    if values["reconnect_max"] < values["reconnect_min"]:
        name = (
            _present(config, next(k for k in CLIENT_KEYS if k.field == "reconnect_max")) or "RECONNECT_MAX_MS"
        )
        raise _bad(config, name, "must not be below RECONNECT_MIN_MS")
    return ClientSettings(**values)
