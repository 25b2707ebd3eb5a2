"""HostData: what the host writes on the provider's stdin (protocol spec §1.2, §1.3). Pure.

One line: base64 (standard alphabet, padded) of the JSON object, then ``\\r\\n``.
Parsing is lenient as the SDKs are: every key is optional, unknown keys are ignored;
only ``provider_key`` must be there, since nothing works without it. A key of the wrong
type is an error; a link definition that does not parse is skipped and reported.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from provider.errors import ConfigError
from provider.wasmcloud.config import SecretValue, parse_secrets, parse_string_map
from provider.wasmcloud.links import LinkDefinition, parse_link_definition

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
LOG_LEVELS = ("trace", "debug", "info", "warn", "error", "critical")


@dataclass(frozen=True)
class HostData:
    """The host's start-up data. Credentials and keys are left out of ``repr``."""

    provider_key: str
    host_id: str = ""
    lattice_rpc_prefix: str = "default"
    lattice_rpc_url: str = DEFAULT_NATS_URL
    lattice_rpc_user_jwt: str = field(default="", repr=False)
    lattice_rpc_user_seed: str = field(default="", repr=False)
    instance_id: str = ""
    link_definitions: tuple[LinkDefinition, ...] = ()
    link_errors: tuple[str, ...] = ()
    """Entries of ``link_definitions`` that could not be parsed (skipped, to be logged)."""
    config: Mapping[str, str] = field(default_factory=dict)
    secrets: Mapping[str, SecretValue] = field(default_factory=dict)
    host_xkey_public_key: str = ""
    provider_xkey_private_key: str = field(default="", repr=False)
    default_rpc_timeout_ms: int = 2000
    structured_logging: bool = False
    log_level: str = "info"
    otel_config: Mapping[str, Any] = field(default_factory=dict)

    @property
    def lattice(self) -> str:
        return self.lattice_rpc_prefix

    @property
    def has_xkeys(self) -> bool:
        """Both xkeys present: link puts arrive on the xkey subject and may carry secrets (host ≥ 1.1)."""
        return bool(self.host_xkey_public_key and self.provider_xkey_private_key)

    def to_json(self) -> dict[str, Any]:
        """The host's JSON form, keys in the host's order."""
        return {
            "host_id": self.host_id,
            "lattice_rpc_prefix": self.lattice_rpc_prefix,
            "link_name": "default",
            "lattice_rpc_user_jwt": self.lattice_rpc_user_jwt,
            "lattice_rpc_user_seed": self.lattice_rpc_user_seed,
            "lattice_rpc_url": self.lattice_rpc_url,
            "provider_key": self.provider_key,
            "env_values": {},
            "instance_id": self.instance_id,
            "link_definitions": [link.to_json() for link in self.link_definitions],
            "cluster_issuers": [],
            "config": dict(self.config),
            "secrets": {name: _secret_json(value) for name, value in self.secrets.items()},
            "host_xkey_public_key": self.host_xkey_public_key,
            "provider_xkey_private_key": self.provider_xkey_private_key,
            "default_rpc_timeout_ms": self.default_rpc_timeout_ms,
            "structured_logging": self.structured_logging,
            "log_level": self.log_level,
            "otel_config": dict(self.otel_config)
            or {
                "enable_observability": False,
                "protocol": "Http",
                "additional_ca_paths": [],
                "trace_level": "info",
            },
        }

    def encode(self) -> bytes:
        """The stdin line a host writes: base64 of the compact JSON, then CRLF."""
        data = json.dumps(self.to_json(), separators=(",", ":")).encode()
        return base64.b64encode(data) + b"\r\n"


def _secret_json(value: SecretValue) -> dict[str, Any]:
    if isinstance(value.value, str):
        return {"kind": "String", "value": value.value}
    return {"kind": "Bytes", "value": list(value.value)}


def _get(raw: Mapping[str, Any], key: str, kind: type, default: Any) -> Any:
    value = raw.get(key)
    if value is None:
        return default
    if kind is int and isinstance(value, bool):
        raise ConfigError(f"HostData: {key!r} must be {kind.__name__}, got bool")
    if not isinstance(value, kind):
        raise ConfigError(f"HostData: {key!r} must be {kind.__name__}, got {type(value).__name__}")
    return value


def decode_host_data(line: bytes | str) -> HostData:
    """Parse the stdin line. Raises :class:`ConfigError` saying what is wrong with it."""
    text = line.strip() if isinstance(line, bytes) else line.strip().encode()
    if not text:
        raise ConfigError("HostData: stdin was empty (the host writes one base64 line)")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConfigError(f"HostData: not valid base64 ({exc})") from exc
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"HostData: the base64 does not hold JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"HostData: expected a JSON object, got {type(raw).__name__}")
    return parse_host_data(raw)


def parse_host_data(raw: Mapping[str, Any]) -> HostData:
    """HostData from its decoded JSON object."""
    provider_key = _get(raw, "provider_key", str, "")
    if not provider_key:
        raise ConfigError("HostData: 'provider_key' (the provider id) is missing or empty")
    links = _get(raw, "link_definitions", list, [])
    parsed_links = []
    link_errors = []
    for index, link in enumerate(links):
        try:
            parsed_links.append(parse_link_definition(link))
        except ConfigError as exc:  # one bad link must not stop the provider: it is reported and skipped
            link_errors.append(f"HostData link_definitions[{index}]: {exc}")
    log_level = str(_get(raw, "log_level", str, "info")).lower()
    if log_level not in LOG_LEVELS:
        raise ConfigError(f"HostData: 'log_level' must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
    return HostData(
        provider_key=provider_key,
        host_id=_get(raw, "host_id", str, ""),
        lattice_rpc_prefix=_get(raw, "lattice_rpc_prefix", str, "") or "default",
        lattice_rpc_url=_get(raw, "lattice_rpc_url", str, "") or DEFAULT_NATS_URL,
        lattice_rpc_user_jwt=_get(raw, "lattice_rpc_user_jwt", str, ""),
        lattice_rpc_user_seed=_get(raw, "lattice_rpc_user_seed", str, ""),
        instance_id=_get(raw, "instance_id", str, ""),
        link_definitions=tuple(parsed_links),
        link_errors=tuple(link_errors),
        config=parse_string_map(raw.get("config"), "HostData config"),
        secrets=parse_secrets(raw.get("secrets"), "HostData secrets"),
        host_xkey_public_key=_get(raw, "host_xkey_public_key", str, ""),
        provider_xkey_private_key=_get(raw, "provider_xkey_private_key", str, ""),
        default_rpc_timeout_ms=_get(raw, "default_rpc_timeout_ms", int, 2000),
        structured_logging=_get(raw, "structured_logging", bool, False),
        log_level=log_level,
        otel_config=_get(raw, "otel_config", dict, {}),
    )
