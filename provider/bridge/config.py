"""The bridge's command line, environment and secret files, parsed and checked. Pure.

``python -m provider bridge --nats URL [--log-level LEVEL] [--json-logs] [KEY=VALUE ...]``

Keys are the server-mode keys (``URI``, ``PATH``, ``FORMAT``, ``AUTH_TOKEN``, limits, TLS,
``LIFECYCLE_EVENTS``, ``STATIC_DIR``, …; see :func:`provider.websocket.config.server_settings`)
plus the bridge's own (:data:`BRIDGE_KEYS`). Each key may come from one of four places:

==============================  ===========================================================
``KEY=VALUE``                   on the command line (visible to anyone who can list processes)
``KEY_FILE=PATH``               on the command line: the value is the file's content
``WS_BRIDGE_KEY=VALUE``         in the environment
``WS_BRIDGE_KEY_FILE=PATH``     in the environment: the value is the file's content
==============================  ===========================================================

A file's content loses its trailing line break. A key given in two places is an error
(nothing is silently overridden). Values from the environment or from files, and
:data:`SECRET_KEYS` wherever they come from, are secrets: never shown in a log or an error.
Files are read through the ``read`` function the caller passes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from provider.bridge.subjects import DEFAULT_PREFIX, check_tokens
from provider.errors import ConfigError
from provider.wasmcloud.config import Config, SecretValue
from provider.websocket.config import (
    SERVER_KEYS,
    Delivery,
    ServerSettings,
    delivery,
    server_settings,
    sessions_timeout,
)

ENV_PREFIX = "WS_BRIDGE_"
FILE_SUFFIX = "_FILE"
DEFAULT_SUBJECT = "message"
"""The client subject of every frame in ``FORMAT=raw``: they are published on ``PREFIX.in.message``."""
DEFAULT_GATHER_MS = 300
LOG_LEVELS = ("trace", "debug", "info", "warn", "error")

BRIDGE_KEYS = {
    "PREFIX": f"the first token(s) of every subject the bridge uses (default {DEFAULT_PREFIX})",
    "NATS_CREDS": "the path of a NATS credentials file (user JWT and nkey seed), read at start",
    "NATS_TOKEN": "a NATS token",
    "NATS_USER": "a NATS user name (with NATS_PASSWORD)",
    "NATS_PASSWORD": "that user's password",
    "NATS_TLS_CA": "PEM text or a file: the only CA trusted for tls:// NATS servers",
}
SECRET_KEYS = frozenset({"AUTH_TOKEN", "TLS_KEY", "NATS_TOKEN", "NATS_PASSWORD"})
"""Keys whose values are secret even when given on the command line."""


def server_keys() -> frozenset[str]:
    """The server-mode keys the bridge takes: every key of server mode's table but ``MODE``."""
    return frozenset(key.name for key in SERVER_KEYS if key.name != "MODE")


USAGE = f"""\
usage: python -m provider bridge --nats URL [--log-level LEVEL] [--json-logs] [KEY=VALUE ...]

The WebSocket server of server mode as a bridge to plain NATS subjects, for wasmCloud 2.x
components and any NATS service. With PREFIX=ws: a client frame with subject s is published on
ws.in.s (reply subject: the session's ws.session.<id>); a publish to ws.session.<id> is a frame to
that session, ws.broadcast reaches every session of every bridge, ws.close.<id> closes one, a
request on ws.sessions lists them all.

  --nats URL         NATS server(s), comma-separated (nats://, tls://)
  --log-level LEVEL  {", ".join(LOG_LEVELS)} (default info)
  --json-logs        one JSON object per log line

Keys: the server-mode keys ({", ".join(sorted(server_keys()))})
and {", ".join(BRIDGE_KEYS)}.
A key may also come from KEY_FILE=PATH, or the environment: {ENV_PREFIX}KEY or {ENV_PREFIX}KEY_FILE.
"""


@dataclass(frozen=True)
class NatsOptions:
    """Where the bridge's NATS is and how to log in."""

    servers: tuple[str, ...]
    creds: str | None = field(default=None, repr=False)
    """The credentials file's content."""
    token: str | None = field(default=None, repr=False)
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    tls_ca: str | None = field(default=None, repr=False)

    @property
    def shown(self) -> str:
        """The servers fit for a log line: no user info (it may hold a password)."""
        return ",".join(_without_userinfo(url) for url in self.servers)


@dataclass(frozen=True)
class BridgeSettings:
    """Everything one bridge process runs with."""

    server: ServerSettings
    delivery: Delivery
    nats: NatsOptions
    prefix: str = DEFAULT_PREFIX
    gather_seconds: float = DEFAULT_GATHER_MS / 1000
    max_message_bytes_given: bool = False
    """Whether MAX_MESSAGE_BYTES was set (else it may be lowered to the NATS server's max_payload)."""
    log_level: str = "info"
    json_logs: bool = False

    def with_max_message_bytes(self, limit: int) -> BridgeSettings:
        """The same settings with a lower frame limit."""
        return dataclasses.replace(self, server=dataclasses.replace(self.server, max_message_bytes=limit))


class HelpRequested(Exception):
    """``-h`` / ``--help``: the caller prints :data:`USAGE`."""


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def _nats_url(url: str) -> str:
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    if parts.scheme not in ("nats", "tls") or not parts.hostname:
        raise ConfigError(f"--nats {_without_userinfo(url)!r}: expected nats://host:port or tls://host:port")
    try:
        _ = parts.port
    except ValueError:
        shown = _without_userinfo(url)
        raise ConfigError(f"--nats {shown!r}: the port is not a number in 0..65535") from None
    return parts.geturl()


def _strip_line_break(text: str) -> str:
    return text.removesuffix("\n").removesuffix("\r")


def _sources(
    items: Sequence[str], environ: Mapping[str, str], read: Callable[[str], str]
) -> tuple[dict[str, str], dict[str, SecretValue], dict[str, str]]:
    """Plain values, secret values, and where each key came from."""
    plain: dict[str, str] = {}
    secret: dict[str, SecretValue] = {}
    origin: dict[str, str] = {}

    def claim(key: str, where: str) -> None:
        if not key:
            raise ConfigError(f"{where}: the key is empty")
        if key in origin:
            raise ConfigError(f"{key} is given twice: by {origin[key]} and by {where}; give it once")

    def put(key: str, value: str, where: str, *, is_secret: bool) -> None:
        claim(key, where)
        origin[key] = where
        if is_secret or key in SECRET_KEYS:
            secret[key] = SecretValue(value)
        else:
            plain[key] = value

    def from_file(key: str, path: str, where: str) -> None:
        claim(key, where)  # before reading: a second source is an error whatever the file holds
        try:
            text = read(path)
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ConfigError(f"{where}: cannot read {path!r}: {reason}") from None
        put(key, _strip_line_break(text), where, is_secret=True)

    for name, value in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX) :].upper()
        where = f"the environment variable {name}"
        if key.endswith(FILE_SUFFIX):
            from_file(key.removesuffix(FILE_SUFFIX), value, where)
        else:
            put(key, value, where, is_secret=True)
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"{item!r}: expected KEY=VALUE (see --help)")
        key = key.strip().upper()
        if key.endswith(FILE_SUFFIX):
            from_file(key.removesuffix(FILE_SUFFIX), value, f"{key}= on the command line")
        else:
            put(key, value, f"{key}= on the command line", is_secret=False)
    return plain, secret, origin


def _check_keys(origin: Mapping[str, str]) -> None:
    known = server_keys() | set(BRIDGE_KEYS)
    if "MODE" in origin:
        raise ConfigError("MODE: the bridge is always a server (it takes the server-mode keys); drop MODE")
    unknown = sorted(set(origin) - known)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(unknown)} (given by {origin[unknown[0]]}); "
            f"the bridge takes {', '.join(sorted(known))}"
        )


def _nats_options(servers: tuple[str, ...], config: Config, read: Callable[[str], str]) -> NatsOptions:
    def get(key: str) -> str | None:
        return config.get(key) or None

    user, password = get("NATS_USER"), get("NATS_PASSWORD")
    if (user is None) != (password is None):
        raise ConfigError("NATS_USER and NATS_PASSWORD must be given together")
    ways = [k for k, v in (("NATS_CREDS", get("NATS_CREDS")), ("NATS_TOKEN", get("NATS_TOKEN"))) if v]
    if user:
        ways.append("NATS_USER/NATS_PASSWORD")
    if len(ways) > 1:
        raise ConfigError(f"give one way to log in to NATS, not {' and '.join(ways)}")
    creds = get("NATS_CREDS")
    if creds is not None:
        try:
            creds = read(creds)
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ConfigError(f"NATS_CREDS={config.shown('NATS_CREDS')}: cannot read it: {reason}") from None
    return NatsOptions(servers, creds, get("NATS_TOKEN"), user, password, get("NATS_TLS_CA"))


def parse_command_line(
    argv: Sequence[str], environ: Mapping[str, str], read: Callable[[str], str]
) -> BridgeSettings:
    """The settings ``argv`` (after ``bridge``) and ``environ`` ask for.

    Raises :class:`ConfigError` saying what is wrong, or :class:`HelpRequested`.
    """
    servers: tuple[str, ...] = ()
    log_level, json_logs = "info", False
    items: list[str] = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        option, eq, inline = arg.partition("=")
        if arg in ("-h", "--help"):
            raise HelpRequested
        if option in ("--nats", "--log-level"):
            if not eq:
                if not args:
                    raise ConfigError(f"{option} needs a value (see --help)")
                inline = args.pop(0)
            if option == "--nats":
                servers = tuple(_nats_url(url.strip()) for url in inline.split(",") if url.strip())
            else:
                log_level = inline.lower()
                if log_level not in LOG_LEVELS:
                    raise ConfigError(f"--log-level {inline!r}: expected one of {', '.join(LOG_LEVELS)}")
        elif arg == "--json-logs":
            json_logs = True
        elif arg.startswith("-"):
            raise ConfigError(f"unknown option {arg!r} (see --help)")
        else:
            items.append(arg)
    if not servers:
        raise ConfigError("--nats URL is required: the NATS server the v2 components use (see --help)")
    plain, secret, origin = _sources(items, environ, read)
    _check_keys(origin)
    # Raw frames have no subject of their own; server mode's default (ws.message) would make
    # them ws.in.ws.message here.
    defaults = {"SUBJECT": DEFAULT_SUBJECT}
    config = Config(defaults, plain, secret)
    prefix = config.get("PREFIX", "").strip() or DEFAULT_PREFIX
    try:
        check_tokens(prefix, "PREFIX")
        check_tokens(config["SUBJECT"].strip(), "SUBJECT")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return BridgeSettings(
        server=server_settings(config),
        delivery=delivery(config),
        nats=_nats_options(servers, config, read),
        prefix=prefix,
        gather_seconds=sessions_timeout(config, strict=True),
        max_message_bytes_given="MAX_MESSAGE_BYTES" in origin,
        log_level=log_level,
        json_logs=json_logs,
    )
