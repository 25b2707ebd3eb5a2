"""Configuration values and secrets as the provider sees them. Pure.

Where a value comes from, lowest precedence first (the first two are the provider's,
from HostData and ``config.update``; the last two the link's own side):

1. provider config, 2. provider secrets, 3. link config, 4. link secrets.

So a link's own value wins over a provider default, and at each level a secret wins
over plain config. Keys are case-insensitive (``mode`` and ``MODE`` are one key).
Secret values never appear in a ``repr`` or a log line.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from provider.errors import ConfigError


@dataclass(frozen=True, repr=False)
class SecretValue:
    """A wasmCloud ``SecretValue``: text or bytes. Its ``repr`` never shows the value."""

    value: str | bytes

    def __repr__(self) -> str:
        return f"SecretValue({type(self.value).__name__}, redacted)"

    def as_text(self, name: str) -> str:
        """The value as config text; bytes must be UTF-8."""
        if isinstance(self.value, str):
            return self.value
        try:
            return self.value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"secret {name!r} holds bytes that are not UTF-8 text") from exc


def parse_secrets(raw: Any, where: str) -> dict[str, SecretValue]:
    """``{"name": {"kind": "String"|"Bytes", "value": …}}`` → secrets. Raises :class:`ConfigError`."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: secrets must be a JSON object, got {type(raw).__name__}")
    secrets: dict[str, SecretValue] = {}
    for name, entry in raw.items():
        kind = entry.get("kind") if isinstance(entry, dict) else None
        value = entry.get("value") if isinstance(entry, dict) else None
        if isinstance(kind, str) and kind.lower() == "string" and isinstance(value, str):
            secrets[name] = SecretValue(value)
        elif (
            isinstance(kind, str)
            and kind.lower() == "bytes"
            and isinstance(value, list)
            and all(isinstance(b, int) and 0 <= b <= 255 for b in value)
        ):
            secrets[name] = SecretValue(bytes(value))
        else:
            raise ConfigError(
                f"{where}: secret {name!r} must be {{'kind': 'String'|'Bytes', 'value': …}} (value not shown)"
            )
    return secrets


def parse_string_map(raw: Any, where: str) -> dict[str, str]:
    """A JSON object of string values (``null`` is empty). Raises :class:`ConfigError`."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a JSON object of strings, got {type(raw).__name__}")
    for key, value in raw.items():
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    return dict(raw)


class Config(Mapping[str, str]):
    """Merged, case-insensitive, read-only config. Values that came from secrets are masked in ``repr``."""

    __slots__ = ("_names", "_secret", "_values")

    def __init__(
        self,
        *layers: Mapping[str, str] | Mapping[str, SecretValue] | Mapping[str, str | SecretValue],
    ) -> None:
        values: dict[str, str] = {}
        names: dict[str, str] = {}
        secret: set[str] = set()
        for layer in layers:
            for key, value in layer.items():
                upper = key.upper()
                names[upper] = key
                if isinstance(value, SecretValue):
                    values[upper] = value.as_text(key)
                    secret.add(upper)
                else:
                    values[upper] = value
                    secret.discard(upper)
        self._values = values
        self._names = names
        self._secret = frozenset(secret)

    @classmethod
    def layered(cls, *configs: Config) -> Config:
        """``configs`` merged in order (a later one wins a key), values from secrets still secret."""
        layers = [
            {
                c._names[key]: SecretValue(value) if key in c._secret else value
                for key, value in c._values.items()
            }
            for c in configs
        ]
        return cls(*layers)

    def __getitem__(self, key: str) -> str:
        return self._values[key.upper()]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.upper() in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def spelled(self, key: str) -> str:
        """``key`` as the config spelled it (iteration gives keys in upper case)."""
        return self._names[key.upper()]

    def is_secret(self, key: str) -> bool:
        """Whether the value of ``key`` came from a secret (and must not be shown)."""
        return key.upper() in self._secret

    def secret_values(self) -> list[str]:
        """The values that came from secrets (for the log's redactor)."""
        return [self._values[key] for key in self._secret]

    def shown(self, key: str) -> str:
        """The value of ``key`` fit for a log line: secrets are redacted."""
        return "<redacted>" if self.is_secret(key) else repr(self[key])

    def __repr__(self) -> str:
        items = ", ".join(f"{key}={self.shown(key)}" for key in self._values)
        return f"Config({items})"
