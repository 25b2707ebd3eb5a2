"""A wadm manifest (``core.oam.dev/v1beta1`` ``Application``) as the local host runs it. Pure.

The local host runs what a lattice would run for this manifest, with one provider: this
one. So beyond checking the manifest's shape as wadm does (protocol spec §5), it accepts

* ``component`` entries (``properties.image``, optional ``id``; a ``spreadscaler`` or
  ``daemonscaler`` trait's ``instances`` sets how many instances serve it at once),
* exactly one ``capability`` entry: this provider, whose ``config`` becomes HostData's
  ``config`` and whose ``secrets`` HostData's ``secrets`` (its ``image`` is what a real
  lattice pulls; the local host runs its own launcher instead),
* ``link`` traits, declared on the link's **source**, between a component and the
  capability: ``wasmcloud:messaging`` ``consumer`` (component → provider, the provider
  reads the target side's config) or ``handler`` (provider → component, the provider
  reads the source side's config),
* ``spec.policies``; secret references (wadm-types' ``SecretProperty``: ``name`` and
  ``properties: {policy, key, field?, version?}``) must name a policy of type
  ``policy.secret.wasmcloud.dev/v1alpha1`` with a ``backend``, as wadm checks.

IDs are ``id`` if given, else ``<manifest name>-<entry name>``, both parts lower-cased
with every character other than an ASCII letter or digit replaced by ``_``.

**Configs.** An entry with ``properties`` is an inline config; wadm stores it in the
lattice's config store as ``<manifest name>-<config name>`` (normalized the same way). An
entry without ``properties`` names a config in that store, as is: the local host finds it
among this manifest's inline configs by their stored names, then in the named configs
given with :func:`load_named_configs` (``--config-file``). Configs merge in order, the
right-most value winning. As in wadm, two link configs with properties must not share a
name; and two inline configs stored under one name must not differ (one would overwrite
the other in the lattice).

**Secrets.** A reference's value comes from a :class:`LocalSecrets` (``--secret``,
``--secrets-file``, ``--secret-env``), looked up by ``key`` (and ``field``) as a secrets
backend would; the provider gets it under the reference's ``name``. :func:`resolve_secrets`
finds every value before anything starts. Values never appear in a ``repr`` or a message.

Anything else (a link to an entry that does not exist, a missing image, a config that is
nowhere, a secret with no value, a policy that is not a secret policy) is a
:class:`ManifestError` naming the file and line, raised before anything starts.
"""

from __future__ import annotations

import difflib
import json
import textwrap
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from provider.errors import ConfigError
from provider.wasmcloud.config import Config, SecretValue
from provider.wasmcloud.links import LinkDefinition

API_VERSION = "core.oam.dev/v1beta1"
KIND = "Application"
MESSAGING = ("wasmcloud", "messaging")
SCALERS = ("spreadscaler", "daemonscaler")
SECRET_POLICY = "policy.secret.wasmcloud.dev/v1alpha1"
SECRET_PROPERTIES = ("policy", "key", "field", "version")
MAX_INSTANCES = 16
"""Instances of one component the local host runs at most (each is a thread with its own Store)."""


class ManifestError(ConfigError):
    """A manifest the local host cannot run; the message names the file and line."""


# -- YAML with line numbers ---------------------------------------------------------------------------


class _Map(dict[str, Any]):
    """A YAML mapping that remembers its line and each key's line (1-based)."""

    def __init__(self, line: int = 0, **items: Any) -> None:
        super().__init__(items)
        self.line = line
        self.key_lines: dict[str, int] = {}


class _Seq(list[Any]):
    """A YAML sequence that remembers its line (1-based)."""

    line: int = 0


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps line numbers and rejects duplicate keys (serde_yaml, which wadm uses, does)."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> _Map:
    loader.flatten_mapping(node)
    result = _Map(node.start_mark.line + 1)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if not isinstance(key, str):
            raise yaml.constructor.ConstructorError(
                None, None, f"line {line}: keys must be strings, got {key!r}", key_node.start_mark
            )
        if key in result:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"line {line}: duplicate key {key!r} (first on line {result.key_lines[key]})",
                key_node.start_mark,
            )
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = line
    return result


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> _Seq:
    result = _Seq(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


# -- the model ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigSource:
    """One config entry, resolved: its name as the manifest gives it, its properties and
    where they are defined (``wadm.yaml:25``, ``configs.yaml:3``)."""

    name: str
    properties: Mapping[str, str]
    origin: str


@dataclass(frozen=True)
class SecretRef:
    """A secret reference: the provider (or component) gets the value under ``name``; the
    value is the one stored under ``key`` (``field`` of it, if given) in ``policy``'s backend."""

    name: str
    policy: str
    key: str
    field: str | None
    version: str | None
    line: int
    where: str

    def describe(self) -> str:
        """``'NAME' (policy 'p', key 'k', field 'f')``, for messages."""
        parts = [f"policy {self.policy!r}", f"key {self.key!r}"]
        if self.field is not None:
            parts.append(f"field {self.field!r}")
        if self.version is not None:
            parts.append(f"version {self.version!r}")
        return f"{self.name!r} ({', '.join(parts)})"


@dataclass(frozen=True)
class Side:
    """The configs (in merge order) and secret references of one side of a link, or of an entry."""

    configs: tuple[ConfigSource, ...] = ()
    secrets: tuple[SecretRef, ...] = ()

    @property
    def config(self) -> dict[str, str]:
        """The configs merged, right-most winning (what a host sends)."""
        merged: dict[str, str] = {}
        for source in self.configs:
            merged.update(source.properties)
        return merged


@dataclass(frozen=True)
class Policy:
    """A ``spec.policies`` entry."""

    name: str
    type: str
    properties: Mapping[str, str]
    line: int


@dataclass(frozen=True)
class Component:
    """A ``component`` entry: a wasm component the local host runs."""

    name: str
    id: str
    image: str
    line: int
    instances: int = 1
    own: Side = field(default_factory=Side)
    """Its own configs and secrets: resolved and checked, unused (this world imports neither)."""


@dataclass(frozen=True)
class Capability:
    """The ``capability`` entry: this provider. Its configs and secrets become HostData's."""

    name: str
    id: str
    image: str
    line: int
    config: Mapping[str, str] = field(default_factory=dict)
    own: Side = field(default_factory=Side)
    instances: int = 1
    """Provider processes the local host runs (a scaler's ``instances``): they share sessions as
    a lattice's instances do (design §7), and one listening port, with ``REUSE_PORT``."""


@dataclass(frozen=True)
class Link:
    """A ``link`` trait: the manifest names of both ends, the definition the host puts (secrets
    still references, in ``source_side`` / ``target_side``), and which end is the provider."""

    source: str
    target: str
    definition: LinkDefinition
    line: int
    source_side: Side = field(default_factory=Side)
    target_side: Side = field(default_factory=Side)
    provider_is_source: bool = False

    @property
    def provider_side(self) -> Side:
        """The side the provider reads: a handler link's source side, a consumer link's target side."""
        return self.source_side if self.provider_is_source else self.target_side

    @property
    def provider_side_name(self) -> str:
        return "source" if self.provider_is_source else "target"


@dataclass(frozen=True)
class Application:
    """A checked manifest: its components, its one capability, its links and policies."""

    name: str
    components: tuple[Component, ...]
    capability: Capability
    links: tuple[Link, ...]
    source: str = "wadm.yaml"
    policies: tuple[Policy, ...] = ()
    warnings: tuple[str, ...] = ()
    """What wadm accepts but the local host thinks is a mistake (``file:line: …``)."""

    def component(self, name: str) -> Component:
        """The component entry called ``name`` (a ``KeyError`` if there is none)."""
        for component in self.components:
            if component.name == name:
                return component
        raise KeyError(name)

    def links_of(self, component: Component) -> tuple[Link, ...]:
        """The links with ``component`` at one end."""
        return tuple(link for link in self.links if component.name in (link.source, link.target))

    def secret_refs(self) -> Iterator[SecretRef]:
        """Every secret reference in the manifest: the provider's, the components', the links'."""
        yield from self.capability.own.secrets
        for component in self.components:
            yield from component.own.secrets
        for link in self.links:
            yield from link.source_side.secrets
            yield from link.target_side.secrets


def normalize(text: str) -> str:
    """``text`` lower-cased, every character but an ASCII letter or digit replaced by ``_`` (as wadm does)."""
    return "".join(c if c.isascii() and c.isalnum() else "_" for c in text.lower())


def default_id(app_name: str, entry_name: str) -> str:
    """The id wadm gives an entry without ``id``: ``<manifest>-<entry>``, both normalized."""
    return f"{normalize(app_name)}-{normalize(entry_name)}"


def stored_config_name(app_name: str, config_name: str) -> str:
    """The name wadm stores an inline config under in the lattice's config store (as an id)."""
    return default_id(app_name, config_name)


def stored_secret_name(app_name: str, secret_name: str) -> str:
    """The config-store name wadm keeps a secret reference under (``SECRET_<manifest>-<name>``)."""
    return f"SECRET_{default_id(app_name, secret_name)}"


# -- named configs (--config-file) and local secrets (--secret, --secrets-file, --secret-env) ---------


@dataclass(frozen=True)
class NamedConfigs:
    """Named configs from local files: the stand-in for the lattice's config store.

    ``configs`` maps a config name, used as is (as ``wash config put`` stores it), to it;
    ``files`` are where they were read from, for messages.
    """

    configs: Mapping[str, ConfigSource] = field(default_factory=dict)
    files: tuple[str, ...] = ()

    def merged(self, other: NamedConfigs) -> NamedConfigs:
        """These and ``other``'s, ``other`` winning for a name both have."""
        return NamedConfigs({**self.configs, **other.configs}, (*self.files, *other.files))


def load_named_configs(text: str, source: str) -> NamedConfigs:
    """A ``--config-file``: a YAML (or JSON) mapping of config name → mapping of string values.

    Raises :class:`ManifestError` naming ``source`` and the line.
    """
    check = _Checker(source)
    doc = check.document(text, "a config file (config name → its properties)")
    configs: dict[str, ConfigSource] = {}
    for name, properties in doc.items():
        line = check.line_of(doc, name)
        where = f"config {name!r}"
        if not name.strip():
            raise check.error(line, "a config name must not be empty")
        properties = check.mapping(properties, f"{where}: its properties", line)
        configs[name] = ConfigSource(name, check.strings(properties, where), f"{source}:{line}")
    return NamedConfigs(configs, (source,))


@dataclass(frozen=True, repr=False)
class StoredSecret:
    """A secret value the user gave the local host (text, or fields of text), and where from.
    Its ``repr`` never shows the value."""

    value: str | Mapping[str, str]
    origin: str

    def __repr__(self) -> str:
        return f"StoredSecret(from {self.origin}, redacted)"


@dataclass(frozen=True)
class LocalSecrets:
    """The local stand-in for every secrets backend: values by key, and the places that were
    searched (``--secret``, a file, …) for messages about a key that is in none of them."""

    values: Mapping[str, StoredSecret] = field(default_factory=dict)
    looked_in: tuple[str, ...] = ()

    @classmethod
    def layered(cls, *layers: tuple[str, Mapping[str, StoredSecret]]) -> LocalSecrets:
        """Secrets from ``(where, values)`` layers, later layers winning for a key both have."""
        values: dict[str, StoredSecret] = {}
        for _, layer in layers:
            values.update(layer)
        return cls(values, tuple(where for where, _ in layers))


def parse_secret_args(args: Sequence[str], option: str = "--secret") -> dict[str, StoredSecret]:
    """``KEY=VALUE`` arguments (later ones win). An argument without ``=`` is a
    :class:`ConfigError` that does not show it (it may be the value itself)."""
    values: dict[str, StoredSecret] = {}
    for index, arg in enumerate(args, start=1):
        key, sep, value = arg.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"{option} #{index}: expected KEY=VALUE, the KEY being the secret reference's "
                "properties.key (the argument is not shown: it may hold the value)"
            )
        values[key.strip()] = StoredSecret(value, option)
    return values


def parse_secret_env(
    args: Sequence[str], environ: Mapping[str, str], option: str = "--secret-env"
) -> dict[str, StoredSecret]:
    """``KEY=VARIABLE`` arguments: the value of ``KEY`` is environment variable ``VARIABLE``'s."""
    values: dict[str, StoredSecret] = {}
    for index, arg in enumerate(args, start=1):
        key, sep, variable = (part.strip() for part in arg.partition("="))
        if not sep or not key or not variable:
            raise ConfigError(f"{option} #{index}: expected KEY=VARIABLE, got {arg!r}")
        if variable not in environ:
            raise ConfigError(f"{option} {key}={variable}: environment variable {variable} is not set")
        values[key] = StoredSecret(environ[variable], f"{option} (${variable})")
    return values


def load_secrets_file(text: str, source: str) -> dict[str, StoredSecret]:
    """A ``--secrets-file``: a YAML (or JSON) mapping of key → value, or key → mapping of
    field → value for references with a ``field``. Values must be strings.

    Raises :class:`ManifestError` naming ``source`` and the line, never a value.
    """
    check = _Checker(source)
    doc = check.document(text, "a secrets file (key → value)")
    values: dict[str, StoredSecret] = {}
    for key, value in doc.items():
        line = check.line_of(doc, key)
        if isinstance(value, _Map):
            fields = {}
            for name, item in value.items():
                if not isinstance(item, str):
                    raise check.error(
                        check.line_of(value, name),
                        f"secret {key!r}: field {name!r} is {_kind(item)}; secret values are strings: "
                        "quote it",
                    )
                fields[name] = item
            values[key] = StoredSecret(fields, f"{source}:{line}")
        elif isinstance(value, str):
            values[key] = StoredSecret(value, f"{source}:{line}")
        else:
            raise check.error(
                line,
                f"secret {key!r} is {_kind(value)}; a secret is a string (quote it), "
                "or a mapping of field → string",
            )
    return values


@dataclass(frozen=True, repr=False)
class ResolvedSecret:
    """A reference's value and where it was found. Its ``repr`` never shows the value."""

    value: str
    origin: str

    def __repr__(self) -> str:
        return f"ResolvedSecret(from {self.origin}, redacted)"


Resolved = Mapping[SecretRef, ResolvedSecret]


def resolve_secrets(app: Application, store: LocalSecrets) -> dict[SecretRef, ResolvedSecret]:
    """The value of every secret reference in ``app``, from ``store``.

    Raises one :class:`ManifestError` listing every reference without a value, each with its
    manifest line, the key it needs and where that key was looked for; never a value.
    """
    resolved: dict[SecretRef, ResolvedSecret] = {}
    problems: list[str] = []
    for ref in sorted(app.secret_refs(), key=lambda ref: ref.line):
        found = _lookup(ref, store)
        if isinstance(found, ResolvedSecret):
            resolved[ref] = found
        else:
            problems.append(f"{app.source}:{ref.line}: {ref.where}: secret {ref.describe()} {found}")
    if problems:
        raise ManifestError("\n".join(problems))
    return resolved


def _lookup(ref: SecretRef, store: LocalSecrets) -> ResolvedSecret | str:
    """The reference's value, or why there is none (a message fragment)."""
    stored = store.values.get(ref.key)
    if stored is None:
        places = _and(store.looked_in) if store.looked_in else "nowhere: no secrets were given"
        close = difflib.get_close_matches(ref.key, list(store.values), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return (
            f"has no value: key {ref.key!r} was looked for in {places}{hint}; give it with "
            f"--secret {ref.key}=VALUE, in a --secrets-file or with --secret-env {ref.key}=VARIABLE"
        )
    if ref.field is None:
        if isinstance(stored.value, str):
            return ResolvedSecret(stored.value, stored.origin)
        return (
            f"names no field, but key {ref.key!r} ({stored.origin}) holds fields "
            f"({', '.join(map(repr, stored.value))}): add field: to the reference"
        )
    if isinstance(stored.value, str):
        return (
            f"asks for field {ref.field!r}, but key {ref.key!r} ({stored.origin}) is a single value: "
            f"give it as a mapping in a --secrets-file ({ref.key}: {{{ref.field}: …}})"
        )
    if ref.field not in stored.value:
        return (
            f"asks for field {ref.field!r}, which key {ref.key!r} ({stored.origin}) does not have "
            f"(it has {', '.join(map(repr, stored.value))})"
        )
    return ResolvedSecret(stored.value[ref.field], f"{stored.origin}, field {ref.field!r}")


def secret_values(refs: Iterable[SecretRef], resolved: Resolved) -> dict[str, str]:
    """``name → value`` of ``refs``, as a host hands them over (HostData ``secrets``, sealed link secrets)."""
    return {ref.name: resolved[ref].value for ref in refs}


# -- what the provider gets ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One key of a link's effective config: as spelled, its value fit to show (secrets
    redacted), and the layer it came from."""

    key: str
    shown: str
    origin: str


def effective_config(app: Application, link: Link, resolved: Resolved) -> tuple[Config, list[Setting]]:
    """The config the provider uses for ``link``, merged as the provider merges it (provider
    config < provider secrets < link config < link secrets, keys case-insensitive), and each
    key with where its value came from."""
    layers: list[tuple[str, Mapping[str, str] | Mapping[str, SecretValue]]] = []
    for source in app.capability.own.configs:
        layers.append((f"provider config {source.name!r} ({source.origin})", dict(source.properties)))
    for ref in app.capability.own.secrets:
        layers.append(
            (_secret_origin("provider", ref, resolved), {ref.name: SecretValue(resolved[ref].value)})
        )
    side = link.provider_side
    for source in side.configs:
        layers.append((f"link config {source.name!r} ({source.origin})", dict(source.properties)))
    for ref in side.secrets:
        layers.append((_secret_origin("link", ref, resolved), {ref.name: SecretValue(resolved[ref].value)}))
    config = Config(*(values for _, values in layers))
    settings = []
    for key in config:
        origin = next(label for label, values in reversed(layers) if key in {k.upper() for k in values})
        settings.append(Setting(config.spelled(key), config.shown(key), origin))
    return config, settings


def _secret_origin(level: str, ref: SecretRef, resolved: Resolved) -> str:
    return f"{level} secret {ref.name!r} (key {ref.key!r}, from {resolved[ref].origin})"


# -- loading --------------------------------------------------------------------------------------------


@dataclass
class _ConfigEntry:
    """A config entry as written: inline (``properties`` given) or a reference (``None``)."""

    name: str
    properties: dict[str, str] | None
    line: int
    where: str


class _Checker:
    """Walks the parsed YAML, raising :class:`ManifestError` at the first problem, with its line."""

    def __init__(self, source: str, app_name: str = "") -> None:
        self.source = source
        self.app_name = app_name
        self.inline: dict[str, _ConfigEntry] = {}  # by stored name
        self.link_configs: dict[str, int] = {}  # inline link config name → its line
        self.warnings: list[str] = []

    def error(self, line: int, message: str) -> ManifestError:
        return ManifestError(f"{self.source}:{line}: {message}")

    def warn(self, line: int, message: str) -> None:
        self.warnings.append(f"{self.source}:{line}: {message}")

    def document(self, text: str, what: str) -> _Map:
        """``text`` parsed as YAML (JSON is YAML), which must be a mapping."""
        if "\t" in text and text.lstrip()[:1] in ("{", "["):
            try:
                json.loads(text)
            except ValueError:
                pass
            else:  # valid JSON has tabs only as whitespace, which YAML refuses as indentation
                text = text.replace("\t", " ")
        try:
            raw = yaml.load(text, Loader=_Loader)  # a SafeLoader: builds plain data only
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else 0
            # Only the problem, never the snippet: the text may be a secrets file.
            raise self.error(line, f"not valid YAML: {exc.problem or exc.context or 'unreadable'}") from None
        except yaml.YAMLError as exc:
            raise self.error(0, f"not valid YAML: {type(exc).__name__}") from None
        if raw is None:
            raw = _Map(1)
        return self.mapping(raw, what, 1)

    def line_of(self, parent: Any, key: str | None = None) -> int:
        if isinstance(parent, _Map) and key is not None and key in parent.key_lines:
            return parent.key_lines[key]
        return int(getattr(parent, "line", 0))

    def mapping(self, value: Any, where: str, line: int) -> _Map:
        if not isinstance(value, _Map):
            raise self.error(line, f"{where} must be a mapping, got {_kind(value)}")
        return value

    def sequence(self, value: Any, where: str, line: int) -> _Seq:
        if not isinstance(value, _Seq):
            raise self.error(line, f"{where} must be a list, got {_kind(value)}")
        return value

    def string(self, parent: _Map, key: str, where: str) -> str:
        """``parent[key]``, a non-empty string (stripped)."""
        value = self.optional_string(parent, key, where)
        if value is None:
            raise self.error(parent.line, f"{where} has no {key!r}")
        return value

    def optional_string(self, parent: _Map, key: str, where: str) -> str | None:
        """``parent[key]`` if present: then a non-empty string (stripped)."""
        value = parent.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.error(
                self.line_of(parent, key), f"{where}: {key!r} must be a non-empty string, got {value!r}"
            )
        return value.strip()

    def optional_list(self, parent: _Map, key: str, where: str) -> _Seq:
        value = parent.get(key)
        if value is None:
            empty = _Seq()
            empty.line = parent.line
            return empty
        return self.sequence(value, f"{where}: {key!r}", self.line_of(parent, key))

    def strings(self, properties: _Map, where: str) -> dict[str, str]:
        """A mapping whose values must be strings (wadm rejects anything else): YAML's ``true``
        or ``8080`` gets an error saying to quote it, at the value's line."""
        for prop, value in properties.items():
            if not isinstance(value, str):
                shown = str(value).lower() if isinstance(value, bool) else str(value)  # as YAML spells it
                raise self.error(
                    self.line_of(properties, prop),
                    f"{where}: {prop}: {shown} is {_kind(value)}; config values are "
                    f'strings (wadm rejects anything else): quote it, {prop}: "{shown}"',
                )
        return dict(properties)

    def configs(self, parent: _Map, key: str, where: str, *, link: bool = False) -> list[_ConfigEntry]:
        """A ``config`` list as written; inline entries are recorded by the name wadm stores them under."""
        entries = []
        for raw in self.optional_list(parent, key, where):
            entry = self.mapping(raw, f"{where}: a {key!r} entry", self.line_of(raw) or parent.line)
            name = self.string(entry, "name", f"{where}: config entry")
            properties = entry.get("properties")
            if properties is None:
                entries.append(_ConfigEntry(name, None, entry.line, where))
                continue
            properties = self.mapping(properties, f"{where}: config {name!r} properties", entry.line)
            parsed = _ConfigEntry(
                name, self.strings(properties, f"{where}: config {name!r}"), entry.line, where
            )
            self._define(parsed, link)
            entries.append(parsed)
        return entries

    def _define(self, entry: _ConfigEntry, link: bool) -> None:
        stored = stored_config_name(self.app_name, entry.name)
        if link:
            first = self.link_configs.setdefault(entry.name, entry.line)
            if first != entry.line:
                raise self.error(
                    entry.line,
                    f"{entry.where}: config {entry.name!r} is defined on line {first} too; wadm rejects two "
                    "link configs with properties under one name. Define it once and refer to it elsewhere "
                    f"by the name wadm stores it under: - name: {stored}",
                )
        other = self.inline.setdefault(stored, entry)
        if other is not entry and other.properties != entry.properties:
            raise self.error(
                entry.line,
                f"{entry.where}: config {entry.name!r} and config {other.name!r} (line {other.line}) are "
                f"both stored by wadm as {stored!r}, with different properties: one would overwrite the "
                "other in the lattice; give one another name",
            )

    def resolve(self, entries: list[_ConfigEntry], named: NamedConfigs) -> tuple[ConfigSource, ...]:
        """The entries with every reference's properties found (this manifest first, then ``named``)."""
        resolved = []
        for entry in entries:
            if entry.properties is not None:
                resolved.append(ConfigSource(entry.name, entry.properties, f"{self.source}:{entry.line}"))
                continue
            inline = self.inline.get(entry.name)
            if inline is not None and inline.properties is not None:
                origin = f"{self.source}:{inline.line} as {inline.name!r}"
                resolved.append(ConfigSource(entry.name, inline.properties, origin))
            elif entry.name in named.configs:
                resolved.append(named.configs[entry.name])
            else:
                raise self.error(
                    entry.line, f"{entry.where}: config {entry.name!r} {self._nowhere(entry, named)}"
                )
        return tuple(resolved)

    def _nowhere(self, entry: _ConfigEntry, named: NamedConfigs) -> str:
        """Why a reference resolves to nothing, and what it might have meant."""
        stored = sorted(self.inline)
        here = (
            f"this manifest's inline configs ({', '.join(map(repr, stored))})" if stored else "this manifest"
        )
        files = f"--config-file {_and(named.files)}" if named.files else "no --config-file (none given)"
        message = (
            "has no 'properties', so it names a config in the lattice's config store; the local host "
            f"looked for it in {here}, stored by wadm as '<manifest>-<config>', and in {files}"
        )
        same = next((e for e in self.inline.values() if e.name == entry.name), None)
        if same is not None:
            return (
                f"{message}. The config {entry.name!r} on line {same.line} is stored as "
                f"{stored_config_name(self.app_name, same.name)!r}: refer to it by that name"
            )
        close = difflib.get_close_matches(entry.name, [*self.inline, *named.configs], n=1)
        return f"{message}{f' (did you mean {close[0]!r}?)' if close else ''}"

    def secrets(self, parent: _Map, where: str, policies: Mapping[str, Policy]) -> tuple[SecretRef, ...]:
        """A ``secrets`` list: each a reference to a secret policy of this manifest."""
        refs = []
        for raw in self.optional_list(parent, "secrets", where):
            entry = self.mapping(raw, f"{where}: a 'secrets' entry", self.line_of(raw) or parent.line)
            name = self.string(entry, "name", f"{where}: secret entry")
            what = f"{where}: secret {name!r}"
            if "properties" not in entry:
                raise self.error(entry.line, f"{what} has no 'properties' (policy and key, at least)")
            props = self.mapping(entry["properties"], f"{what} properties", self.line_of(entry, "properties"))
            for unknown in sorted(set(props) - set(SECRET_PROPERTIES)):
                self.warn(
                    self.line_of(props, unknown),
                    f"{what}: unknown property {unknown!r} (a secret reference has "
                    f"{', '.join(SECRET_PROPERTIES)}); wadm ignores it",
                )
            policy = self.string(props, "policy", what)
            self._check_policy(policy, policies, self.line_of(props, "policy"), what)
            refs.append(
                SecretRef(
                    name=name,
                    policy=policy,
                    key=self.string(props, "key", what),
                    field=self.optional_string(props, "field", what),
                    version=self.optional_string(props, "version", what),
                    line=entry.line,
                    where=where,
                )
            )
        return tuple(refs)

    def _check_policy(self, name: str, policies: Mapping[str, Policy], line: int, what: str) -> None:
        """wadm's checks of a secret's policy: it exists, is a secret policy, names a backend."""
        policy = policies.get(name)
        if policy is None:
            known = ", ".join(repr(p) for p in policies) or "none"
            raise self.error(line, f"{what} is mapped to unknown policy {name!r} (spec.policies has {known})")
        if policy.type != SECRET_POLICY:
            raise self.error(
                line,
                f"{what} is mapped to policy {name!r} (line {policy.line}), which is not a secret policy: "
                f"its type is {policy.type!r}, expected {SECRET_POLICY!r}",
            )
        if "backend" not in policy.properties:
            raise self.error(
                line,
                f"{what} is mapped to policy {name!r} (line {policy.line}), which has no 'backend' property",
            )


def _and(items: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        _Map: "a mapping",
        _Seq: "a list",
    }.get(type(value), type(value).__name__)


@dataclass
class _Entry:
    name: str
    type: str
    id: str
    properties: _Map
    traits: list[_Map]
    line: int
    configs: list[_ConfigEntry]
    secrets: tuple[SecretRef, ...]


@dataclass
class _LinkDraft:
    """A link before its config references are resolved (they may point further down the file)."""

    source: _Entry
    target: _Entry
    namespace: str
    package: str
    interfaces: tuple[str, ...]
    name: str
    source_configs: list[_ConfigEntry]
    target_configs: list[_ConfigEntry]
    source_secrets: tuple[SecretRef, ...]
    target_secrets: tuple[SecretRef, ...]
    line: int


def load(text: str, source: str = "wadm.yaml", *, named_configs: NamedConfigs | None = None) -> Application:
    """Parse and check a manifest; ``source`` names it in error messages; config references
    without properties may also name ``named_configs``. Raises :class:`ManifestError`."""
    check = _Checker(source)
    doc = check.document(text, "the manifest")
    if doc.get("apiVersion") != API_VERSION:
        raise check.error(
            check.line_of(doc, "apiVersion"),
            f"apiVersion must be {API_VERSION!r}, got {doc.get('apiVersion')!r}",
        )
    if doc.get("kind") != KIND:
        raise check.error(check.line_of(doc, "kind"), f"kind must be {KIND!r}, got {doc.get('kind')!r}")
    metadata = check.mapping(doc.get("metadata"), "metadata", check.line_of(doc, "metadata"))
    app_name = check.string(metadata, "name", "metadata")
    check.app_name = app_name
    spec = check.mapping(doc.get("spec"), "spec", check.line_of(doc, "spec"))
    raw_entries = check.sequence(spec.get("components"), "spec.components", check.line_of(spec, "components"))

    policies = _policies(check, spec)
    entries = _entries(check, app_name, raw_entries, policies)
    capability_entry = _capability(check, entries)
    drafts = _links(check, entries, capability_entry, policies)
    # Every inline config is known now: references may name one defined further down.
    named = named_configs or NamedConfigs()
    capability_side = Side(check.resolve(capability_entry.configs, named), capability_entry.secrets)
    capability = Capability(
        capability_entry.name,
        capability_entry.id,
        capability_entry.properties["image"].strip(),
        capability_entry.line,
        capability_side.config,
        capability_side,
        _instances(check, capability_entry, f"capability {capability_entry.name!r}"),
    )
    components = tuple(_component(check, e, named) for e in entries.values() if e.type == "component")
    links = tuple(_finish_link(check, draft, named) for draft in drafts)
    _check_secret_names(check, app_name, [*capability_side.secrets, *_all_secrets(components, links)])
    return Application(
        app_name, components, capability, links, source, tuple(policies.values()), tuple(check.warnings)
    )


def _all_secrets(components: Iterable[Component], links: Iterable[Link]) -> Iterator[SecretRef]:
    for component in components:
        yield from component.own.secrets
    for link in links:
        yield from link.source_side.secrets
        yield from link.target_side.secrets


def _check_secret_names(check: _Checker, app_name: str, refs: Iterable[SecretRef]) -> None:
    """wadm keeps each reference under ``SECRET_<manifest>-<name>``: two that share it must agree."""
    seen: dict[str, SecretRef] = {}
    for ref in refs:
        stored = stored_secret_name(app_name, ref.name)
        first = seen.setdefault(stored, ref)
        if (first.policy, first.key, first.field, first.version) != (
            ref.policy,
            ref.key,
            ref.field,
            ref.version,
        ):
            raise check.error(
                ref.line,
                f"{ref.where}: secret {ref.describe()} and secret {first.describe()} (line {first.line}) "
                f"are both kept by wadm as {stored!r} but refer to different values: one would overwrite "
                "the other in the lattice; give one another name",
            )


def _policies(check: _Checker, spec: _Map) -> dict[str, Policy]:
    policies: dict[str, Policy] = {}
    for raw in check.optional_list(spec, "policies", "spec"):
        entry = check.mapping(raw, "a spec.policies entry", check.line_of(raw) or spec.line)
        name = check.string(entry, "name", "a spec.policies entry")
        where = f"policy {name!r}"
        if name in policies:
            raise check.error(entry.line, f"{where} is declared twice (first on line {policies[name].line})")
        kind = check.string(entry, "type", where)
        if "properties" not in entry:
            raise check.error(entry.line, f"{where} has no 'properties' (wadm requires them)")
        properties = check.mapping(
            entry["properties"], f"{where}: properties", check.line_of(entry, "properties")
        )
        policies[name] = Policy(name, kind, check.strings(properties, where), entry.line)
    return policies


def _entries(
    check: _Checker, app_name: str, raw_entries: _Seq, policies: Mapping[str, Policy]
) -> dict[str, _Entry]:
    entries: dict[str, _Entry] = {}
    ids: dict[str, str] = {}
    for raw in raw_entries:
        entry = check.mapping(raw, "a spec.components entry", check.line_of(raw) or raw_entries.line)
        name = check.string(entry, "name", "a spec.components entry")
        where = f"component {name!r}"
        if name in entries:
            raise check.error(entry.line, f"{where} is declared twice (first on line {entries[name].line})")
        kind = check.string(entry, "type", where)
        if kind not in ("component", "capability"):
            raise check.error(
                check.line_of(entry, "type"), f"{where}: type must be component or capability, got {kind!r}"
            )
        properties = check.mapping(entry.get("properties"), f"{where}: properties", entry.line)
        if not isinstance(properties.get("image"), str) or not properties["image"].strip():
            raise check.error(
                check.line_of(properties, "image") if "image" in properties else properties.line,
                f"{where} has no image: set properties.image (a file:// path or an OCI reference)",
            )
        given_id = check.optional_string(properties, "id", where)
        entry_id = given_id or default_id(app_name, name)
        if any(c in entry_id for c in ".*> \t"):
            raise check.error(
                check.line_of(properties, "id"),
                f"{where}: id {entry_id!r} must not contain '.', '*', '>' or spaces",
            )
        if entry_id in ids:
            raise check.error(entry.line, f"{where} has the id {entry_id!r} of component {ids[entry_id]!r}")
        ids[entry_id] = name
        configs = check.configs(properties, "config", where)
        secrets = check.secrets(properties, where, policies)
        traits = [
            check.mapping(t, f"{where}: a trait", check.line_of(t) or entry.line)
            for t in check.optional_list(entry, "traits", where)
        ]
        entries[name] = _Entry(name, kind, entry_id, properties, traits, entry.line, configs, secrets)
    if not entries:
        raise check.error(raw_entries.line, "spec.components is empty")
    return entries


def _capability(check: _Checker, entries: Mapping[str, _Entry]) -> _Entry:
    found = [e for e in entries.values() if e.type == "capability"]
    if not found:
        raise check.error(
            1, "the manifest has no capability: the local host runs this provider as its one capability entry"
        )
    if len(found) > 1:
        raise check.error(
            found[1].line,
            f"a second capability {found[1].name!r} (the first is {found[0].name!r}): "
            "the local host runs one provider, this one",
        )
    return found[0]


def _component(check: _Checker, entry: _Entry, named: NamedConfigs) -> Component:
    where = f"component {entry.name!r}"
    own = Side(check.resolve(entry.configs, named), entry.secrets)  # checked, then unused
    return Component(
        entry.name,
        entry.id,
        entry.properties["image"].strip(),
        entry.line,
        _instances(check, entry, where),
        own,
    )


def _instances(check: _Checker, entry: _Entry, where: str) -> int:
    """A scaler trait's ``instances`` (1 without one), at most :data:`MAX_INSTANCES`."""
    instances = 1
    for trait in entry.traits:
        if trait.get("type") in SCALERS:
            props = check.mapping(
                trait.get("properties", _Map(trait.line)), f"{where}: scaler properties", trait.line
            )
            value = props.get("instances", 1)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise check.error(
                    check.line_of(props, "instances"),
                    f"{where}: instances must be a whole number of at least 1, got {value!r}",
                )
            instances = min(value, MAX_INSTANCES)
    return instances


def _links(
    check: _Checker, entries: Mapping[str, _Entry], capability: _Entry, policies: Mapping[str, Policy]
) -> list[_LinkDraft]:
    links: list[_LinkDraft] = []
    seen: dict[tuple[str, ...], int] = {}
    for entry in entries.values():
        for trait in entry.traits:
            kind = trait.get("type")
            if kind in SCALERS:
                continue
            if kind != "link":
                raise check.error(
                    check.line_of(trait, "type"),
                    f"component {entry.name!r}: unknown trait type {kind!r} "
                    "(the local host knows spreadscaler, daemonscaler and link)",
                )
            link = _link(check, entries, capability, entry, trait, policies)
            key = (link.source.id, link.target.id, link.namespace, link.package, link.name)
            if key in seen:
                raise check.error(link.line, f"the same link is declared twice (first on line {seen[key]})")
            seen[key] = link.line
            links.append(link)
    return links


def _link(
    check: _Checker,
    entries: Mapping[str, _Entry],
    capability: _Entry,
    source: _Entry,
    trait: _Map,
    policies: Mapping[str, Policy],
) -> _LinkDraft:
    where = f"component {source.name!r}: link"
    props = check.mapping(trait.get("properties"), f"{where} properties", trait.line)
    namespace = check.string(props, "namespace", where)
    package = check.string(props, "package", where)
    interfaces = _interfaces(check, props, where)
    link_name = check.optional_string(props, "name", where) or "default"
    target_spec = props.get("target")
    if target_spec is None:
        raise check.error(
            trait.line, f"{where} has no target: set target.name to a component of this manifest"
        )
    if isinstance(target_spec, str):  # wadm's older shorthand: the target's name alone
        target_spec = _Map(check.line_of(props, "target"), name=target_spec)
    target_spec = check.mapping(target_spec, f"{where}: target", check.line_of(props, "target"))
    target_name = check.string(target_spec, "name", f"{where}: target")
    target = entries.get(target_name)
    if target is None:
        raise check.error(
            check.line_of(target_spec, "name"),
            f"{where} to {target_name!r}, which is not a component of this manifest "
            f"(it has {', '.join(repr(n) for n in entries)})",
        )
    source_spec = props.get("source")
    source_spec = (
        check.mapping(source_spec, f"{where}: source", check.line_of(props, "source"))
        if source_spec is not None
        else _Map(props.line)
    )
    # Deprecated top-level source_config / target_config (still accepted by wadm) come first.
    source_configs = [
        *check.configs(props, "source_config", where, link=True),
        *check.configs(source_spec, "config", f"{where}: source", link=True),
    ]
    target_configs = [
        *check.configs(props, "target_config", where, link=True),
        *check.configs(target_spec, "config", f"{where}: target", link=True),
    ]
    source_secrets = check.secrets(source_spec, f"{where}: source", policies)
    target_secrets = check.secrets(target_spec, f"{where}: target", policies)
    line = trait.line
    if target.name == source.name:
        raise check.error(line, f"{where} to itself")
    if (namespace, package) != MESSAGING:
        raise check.error(
            check.line_of(props, "namespace"),
            f"{where} {namespace}:{package}/{','.join(interfaces)}: the local host runs only "
            "wasmcloud:messaging links between components and the provider",
        )
    if source.type == "component" and target.type == "capability":
        expected = ("consumer",)
    elif source.type == "capability" and target.type == "component":
        expected = ("handler",)
    else:
        raise check.error(
            line,
            f"{where} from {source.type} {source.name!r} to {target.type} {target.name!r}: the local host "
            f"links components only with the provider {capability.name!r}",
        )
    if interfaces != expected:
        direction = (
            "component → provider links import consumer"
            if expected == ("consumer",)
            else "provider → component links call handler"
        )
        raise check.error(
            check.line_of(props, "interfaces"),
            f"{where} to {target.name!r} has interfaces {list(interfaces)}; {direction}: "
            f"interfaces: [{expected[0]}]",
        )
    return _LinkDraft(
        source,
        target,
        namespace,
        package,
        interfaces,
        link_name,
        source_configs,
        target_configs,
        source_secrets,
        target_secrets,
        line,
    )


def _finish_link(check: _Checker, draft: _LinkDraft, named: NamedConfigs) -> Link:
    source_side = Side(check.resolve(draft.source_configs, named), draft.source_secrets)
    target_side = Side(check.resolve(draft.target_configs, named), draft.target_secrets)
    definition = LinkDefinition(
        source_id=draft.source.id,
        target=draft.target.id,
        wit_namespace=draft.namespace,
        wit_package=draft.package,
        interfaces=draft.interfaces,
        name=draft.name,
        source_config=source_side.config,
        target_config=target_side.config,
    )
    return Link(
        draft.source.name,
        draft.target.name,
        definition,
        draft.line,
        source_side,
        target_side,
        provider_is_source=draft.source.type == "capability",
    )


def _interfaces(check: _Checker, props: _Map, where: str) -> tuple[str, ...]:
    value = props.get("interfaces")
    line = check.line_of(props, "interfaces") if "interfaces" in props else props.line
    if not isinstance(value, _Seq) or not value or not all(isinstance(i, str) and i for i in value):
        raise check.error(line, f"{where}: interfaces must be a non-empty list of names, got {value!r}")
    return tuple(value)


# -- writing one -----------------------------------------------------------------------------------------


def _properties(config: Mapping[str, str], indent: int) -> str:
    lines = "\n".join(f"{key}: {value!r}" for key, value in config.items())
    return textwrap.indent(lines, " " * indent)


def linked_component_manifest(
    component: str,
    wasm: Path,
    *,
    handler: Mapping[str, str],
    consumer: Mapping[str, str],
    instances: int = 1,
    name: str = "test-app",
    provider_instances: int = 1,
) -> str:
    """A manifest running ``wasm`` as ``component``, linked both ways with this provider:
    ``handler`` is the provider's source config, ``consumer`` its target config, each run as
    ``instances`` / ``provider_instances``. What the local-host tests and ``make bench`` run."""
    scaler = ""
    if provider_instances > 1:
        scaler = "\n        - type: daemonscaler\n          properties:\n"
        scaler += f"            instances: {provider_instances}"
    return f"""\
apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: {name}
spec:
  components:
    - name: {component}
      type: component
      properties:
        image: file://{wasm}
        id: {component}
      traits:
        - type: spreadscaler
          properties:
            instances: {instances}
        - type: link
          properties:
            namespace: wasmcloud
            package: messaging
            interfaces: [consumer]
            target:
              name: websocket
              config:
                - name: consumer
                  properties:
{_properties(consumer, 20)}
    - name: websocket
      type: capability
      properties:
        image: file://./unused.par.gz
        id: websocket-provider
      traits:{scaler}
        - type: link
          properties:
            namespace: wasmcloud
            package: messaging
            interfaces: [handler]
            target:
              name: {component}
            source:
              config:
                - name: handler
                  properties:
{_properties(handler, 20)}
"""
