"""Link definitions and the provider's table of links (protocol spec §2.2, §2.3). Pure.

A link runs from ``source_id`` (which imports an interface) to ``target`` (which exports
it). The provider learns its role from the ids: as the **source** it calls the component
(``handler``) and reads ``source_config`` / ``source_secrets``; as the **target** the
component calls it (``consumer``) and it reads ``target_config`` / ``target_secrets``.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from provider.errors import ConfigError
from provider.wasmcloud.config import Config, SecretValue, parse_secrets, parse_string_map
from provider.wasmcloud.xkeys import XKey

LinkKey = tuple[str, str, str, str, str]
"""(source_id, target, wit_namespace, wit_package, name): what makes two puts the same link."""


class Role(enum.Enum):
    """The provider's side of a link."""

    SOURCE = "source"
    TARGET = "target"


@dataclass(frozen=True)
class LinkDefinition:
    """``InterfaceLinkDefinition`` as the host sends it (sealed secrets still sealed)."""

    source_id: str
    target: str
    wit_namespace: str
    wit_package: str
    interfaces: tuple[str, ...]
    name: str = "default"
    source_config: Mapping[str, str] = field(default_factory=dict)
    target_config: Mapping[str, str] = field(default_factory=dict)
    source_secrets: bytes | None = field(default=None, repr=False)
    target_secrets: bytes | None = field(default=None, repr=False)

    @property
    def key(self) -> LinkKey:
        return (self.source_id, self.target, self.wit_namespace, self.wit_package, self.name)

    def describe(self) -> str:
        """``source -(ns:pkg/iface,… name)-> target``, for log lines."""
        interfaces = ",".join(self.interfaces)
        return (
            f"{self.source_id} -({self.wit_namespace}:{self.wit_package}/{interfaces} "
            f"link {self.name!r})-> {self.target}"
        )

    def to_json(self) -> dict[str, Any]:
        """The host's JSON form (sealed secrets as arrays of byte numbers)."""
        return {
            "source_id": self.source_id,
            "target": self.target,
            "name": self.name,
            "wit_namespace": self.wit_namespace,
            "wit_package": self.wit_package,
            "interfaces": list(self.interfaces),
            "source_config": dict(self.source_config),
            "target_config": dict(self.target_config),
            "source_secrets": list(self.source_secrets) if self.source_secrets else None,
            "target_secrets": list(self.target_secrets) if self.target_secrets else None,
        }


def check_interfaces(
    definition: LinkDefinition, role: Role, *, exports: frozenset[str], imports: frozenset[str]
) -> None:
    """Refuse a link whose interfaces cannot be right for a provider that ``exports`` (components
    call them: the provider is the link's target) and ``imports`` (the provider calls them on
    components: it is the source), saying which way each must go. Raises :class:`ConfigError`."""
    package = f"{definition.wit_namespace}:{definition.wit_package}"
    if not definition.interfaces:
        raise ConfigError(f"the link names no {package} interface")
    known = exports | imports
    for interface in definition.interfaces:
        if interface not in known:
            raise ConfigError(
                f"{package}/{interface} is not an interface of this provider: "
                + ", ".join(
                    [f"{i} (component → provider)" for i in sorted(exports)]
                    + [f"{i} (provider → component)" for i in sorted(imports)]
                )
            )
        if role is Role.TARGET and interface in imports:
            raise ConfigError(
                f"a {interface} link goes from the provider to the component (source: the provider, "
                f"target: the component), but this one points into the provider; the provider calls "
                f"{package}/{interface} on components"
            )
        if role is Role.SOURCE and interface in exports:
            raise ConfigError(
                f"a {interface} link goes from the component to the provider (source: the component, "
                f"target: the provider), but this one points out of the provider; components call "
                f"{package}/{interface} on the provider"
            )


def _required_str(raw: Mapping[str, Any], key: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"link definition: {key!r} must be a non-empty string, got {value!r}")
    return value


def _sealed(raw: Any, key: str) -> bytes | None:
    if raw is None or raw == []:
        return None
    if isinstance(raw, list) and all(isinstance(b, int) and 0 <= b <= 255 for b in raw):
        return bytes(raw)
    raise ConfigError(f"link definition: {key!r} must be null or an array of bytes")


def parse_link_definition(raw: Any) -> LinkDefinition:
    """A link definition from decoded JSON. Raises :class:`ConfigError` naming the bad field."""
    if not isinstance(raw, dict):
        raise ConfigError(f"link definition must be a JSON object, got {type(raw).__name__}")
    source_id = _required_str(raw, "source_id")
    target = _required_str(raw, "target")
    wit_namespace = _required_str(raw, "wit_namespace")
    wit_package = _required_str(raw, "wit_package")
    interfaces = raw.get("interfaces")
    if not isinstance(interfaces, list) or not all(isinstance(i, str) for i in interfaces):
        raise ConfigError(f"link definition: 'interfaces' must be a list of strings, got {interfaces!r}")
    name = raw.get("name") or "default"
    if not isinstance(name, str):
        raise ConfigError(f"link definition: 'name' must be a string, got {name!r}")
    return LinkDefinition(
        source_id=source_id,
        target=target,
        wit_namespace=wit_namespace,
        wit_package=wit_package,
        interfaces=tuple(interfaces),
        name=name,
        source_config=parse_string_map(raw.get("source_config"), "link source_config"),
        target_config=parse_string_map(raw.get("target_config"), "link target_config"),
        source_secrets=_sealed(raw.get("source_secrets"), "source_secrets"),
        target_secrets=_sealed(raw.get("target_secrets"), "target_secrets"),
    )


def decode_link_definition(payload: bytes) -> LinkDefinition:
    """A link definition from a ``linkdefs.put`` / ``linkdefs.del`` payload."""
    try:
        raw = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"link definition is not JSON: {exc}") from exc
    return parse_link_definition(raw)


@dataclass(frozen=True)
class Link:
    """A link as the provider uses it: its role, the other side, and its effective config.

    ``config`` is everything the link sees (provider defaults under the link's own values);
    ``own`` is only what the link itself sets (its side's config and secrets), for when two
    links share one resource and neither may undo what the other set.
    """

    definition: LinkDefinition
    role: Role
    config: Config
    own: Config = field(default_factory=Config)

    @property
    def key(self) -> LinkKey:
        return self.definition.key

    @property
    def component_id(self) -> str:
        """The component at the other end of the link."""
        d = self.definition
        return d.target if self.role is Role.SOURCE else d.source_id

    @property
    def name(self) -> str:
        return self.definition.name

    def same_as(self, other: Link) -> bool:
        """Equal in everything that matters (sealed bytes differ on every put: compare the opened config)."""
        a, b = self.definition, other.definition
        return (
            self.role is other.role
            and a.key == b.key
            and a.interfaces == b.interfaces
            and self.config == other.config
            and self.own == other.own
        )


@dataclass(frozen=True)
class LinkResolver:
    """Turns a definition into a :class:`Link` for one provider: role, opened secrets, merged config."""

    provider_id: str
    provider_config: Mapping[str, str]
    provider_secrets: Mapping[str, SecretValue]
    xkey: XKey | None = None
    host_xkey_public: str = ""

    def role(self, definition: LinkDefinition) -> Role | None:
        """The provider's role in ``definition``, or ``None`` if it names neither side as this provider."""
        source = definition.source_id == self.provider_id
        target = definition.target == self.provider_id
        if source == target:  # neither side, or (nonsensically) both
            return None
        return Role.SOURCE if source else Role.TARGET

    def resolve(self, definition: LinkDefinition, role: Role) -> Link:
        """The link with its effective config.

        Raises :class:`ConfigError` for secrets that cannot be opened.
        """
        if role is Role.SOURCE:
            own_config, sealed = definition.source_config, definition.source_secrets
        else:
            own_config, sealed = definition.target_config, definition.target_secrets
        own_secrets = self.open_secrets(sealed)
        config = Config(self.provider_config, self.provider_secrets, own_config, own_secrets)
        return Link(definition, role, config, Config(own_config, own_secrets))

    def open_secrets(self, sealed: bytes | None) -> dict[str, SecretValue]:
        """Open an ``xkv1`` box of link secrets (JSON ``{"name": SecretValue}``)."""
        if not sealed:
            return {}
        if self.xkey is None or not self.host_xkey_public:
            raise ConfigError("the link carries sealed secrets but HostData has no xkeys to open them")
        plaintext = self.xkey.open(sealed, self.host_xkey_public)
        try:
            raw = json.loads(plaintext)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError("opened link secrets are not JSON") from exc
        return parse_secrets(raw, "link secrets")

    def with_provider_config(self, config: Mapping[str, str]) -> LinkResolver:
        """The same resolver after a ``config.update``."""
        return LinkResolver(
            self.provider_id, dict(config), self.provider_secrets, self.xkey, self.host_xkey_public
        )


class PutOutcome(enum.Enum):
    """What a link put means for the table."""

    NEW = "new"
    CHANGED = "changed"
    DUPLICATE = "duplicate"


class LinkTable:
    """The links currently applied, by key; and the target links by (component, link name)."""

    def __init__(self) -> None:
        self._links: dict[LinkKey, Link] = {}
        self._targets: dict[tuple[str, str], Link] = {}  # (component, link name): the data-plane lookup

    def outcome(self, link: Link) -> PutOutcome:
        """Whether putting ``link`` adds, changes or repeats what the table holds."""
        current = self._links.get(link.key)
        if current is None:
            return PutOutcome.NEW
        return PutOutcome.DUPLICATE if current.same_as(link) else PutOutcome.CHANGED

    def record(self, link: Link) -> None:
        self._links[link.key] = link
        if link.role is Role.TARGET:
            self._targets[(link.component_id, link.name)] = link

    def remove(self, key: LinkKey) -> Link | None:
        link = self._links.pop(key, None)
        if link is not None and link.role is Role.TARGET:
            self._targets.pop((link.component_id, link.name), None)
        return link

    def get(self, key: LinkKey) -> Link | None:
        return self._links.get(key)

    def target_link(self, component_id: str, name: str) -> Link | None:
        """The link through which ``component_id`` calls this provider under link name ``name``."""
        return self._targets.get((component_id, name))

    def __iter__(self) -> Iterator[Link]:
        return iter(list(self._links.values()))

    def __len__(self) -> int:
        return len(self._links)


# -- answers to link puts and deletes -------------------------------------------------------------------

ANSWER_LIMIT = 16 * 1024
"""Bytes an answer may have; a longer one is not an answer this provider sends."""
ERROR_LIMIT = 4096
"""Characters of a reason an answer carries (longer reasons are cut, saying so)."""


class LinkOp(enum.Enum):
    """What a control message asked of a link."""

    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True)
class LinkAnswer:
    """What the provider made of one link put or delete.

    A wasmCloud host publishes puts and deletes without a reply subject and expects no answer
    (protocol spec §2.3). When one comes *with* a reply subject (the local host asks that way),
    the provider answers with this, as JSON, once the link is applied or refused:
    ``{"op": "put"|"delete", "applied": bool, "link": "<describe()>", "error": "<why not>"}``.
    ``error`` is present only when ``applied`` is false. So whoever asks learns the outcome from
    a structured answer, never from a log line.
    """

    op: LinkOp
    applied: bool
    link: str
    error: str = ""

    def encode(self) -> bytes:
        """The JSON answer (``error`` cut to :data:`ERROR_LIMIT` characters)."""
        body: dict[str, Any] = {"op": self.op.value, "applied": self.applied, "link": self.link}
        if not self.applied:
            error = self.error or "no reason given"
            if len(error) > ERROR_LIMIT:
                error = error[:ERROR_LIMIT] + f"… ({len(error) - ERROR_LIMIT} more characters)"
            body["error"] = error
        return json.dumps(body).encode()

    @classmethod
    def decode(cls, payload: bytes) -> LinkAnswer:
        """Parse an answer. Raises :class:`ConfigError` for anything that is not exactly one."""
        if len(payload) > ANSWER_LIMIT:
            raise ConfigError(f"link answer: {len(payload)} bytes, more than an answer's {ANSWER_LIMIT}")
        try:
            raw = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"link answer is not JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"link answer must be a JSON object, got {type(raw).__name__}")
        try:
            op = LinkOp(raw.get("op"))
        except ValueError:
            raise ConfigError(f"link answer: 'op' must be 'put' or 'delete', got {raw.get('op')!r}") from None
        applied, link, error = raw.get("applied"), raw.get("link"), raw.get("error", "")
        if not isinstance(applied, bool):
            raise ConfigError(f"link answer: 'applied' must be true or false, got {applied!r}")
        if not isinstance(link, str):
            raise ConfigError(f"link answer: 'link' must be a string, got {link!r}")
        if not isinstance(error, str):
            raise ConfigError(f"link answer: 'error' must be a string, got {error!r}")
        return cls(op, applied, link, "" if applied else error or "no reason given")

    def text(self) -> str:
        """One line saying what happened: ``put link …``, ``rejected link …: <why>``,
        ``deleted link …`` or ``did not delete link …: <why>``."""
        if self.applied:
            return f"{'put' if self.op is LinkOp.PUT else 'deleted'} link {self.link}"
        refused = "rejected" if self.op is LinkOp.PUT else "did not delete"
        return f"{refused} link {self.link}: {self.error}"
