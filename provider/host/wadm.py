"""A wadm manifest (``core.oam.dev/v1beta1`` ``Application``) as the local host runs it. Pure.

The local host runs what a lattice would run for this manifest, with one provider: this
one. So beyond checking the manifest's shape as wadm does (protocol spec §5), it accepts

* ``component`` entries (``properties.image``, optional ``id``; a ``spreadscaler`` or
  ``daemonscaler`` trait's ``instances`` sets how many instances serve it at once),
* exactly one ``capability`` entry: this provider, whose inline ``config`` becomes
  HostData's ``config`` (its ``image`` is what a real lattice pulls; the local host runs
  its own launcher instead),
* ``link`` traits, declared on the link's **source**, between a component and the
  capability: ``wasmcloud:messaging`` ``consumer`` (component → provider, the provider
  reads the target side's config) or ``handler`` (provider → component, the provider
  reads the source side's config).

IDs are ``id`` if given, else ``<manifest name>-<entry name>``, both parts lower-cased
with every character other than an ASCII letter or digit replaced by ``_``. Inline
configs merge in order, the right-most value winning. Anything else (a link to an entry
that does not exist, a missing image, a config reference without ``properties``,
secrets, which need a secret store) is a :class:`ManifestError` naming the file and line,
raised before anything starts: :func:`load` checks the whole manifest first.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from provider.errors import ConfigError
from provider.wasmcloud.links import LinkDefinition

API_VERSION = "core.oam.dev/v1beta1"
KIND = "Application"
MESSAGING = ("wasmcloud", "messaging")
SCALERS = ("spreadscaler", "daemonscaler")
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
class Component:
    """A ``component`` entry: a wasm component the local host runs."""

    name: str
    id: str
    image: str
    line: int
    instances: int = 1


@dataclass(frozen=True)
class Capability:
    """The ``capability`` entry: this provider. ``config`` becomes HostData's ``config``."""

    name: str
    id: str
    image: str
    line: int
    config: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Link:
    """A ``link`` trait: the manifest names of both ends, and the definition the host puts."""

    source: str
    target: str
    definition: LinkDefinition
    line: int


@dataclass(frozen=True)
class Application:
    """A checked manifest: its components, its one capability and its links."""

    name: str
    components: tuple[Component, ...]
    capability: Capability
    links: tuple[Link, ...]
    source: str = "wadm.yaml"

    def component(self, name: str) -> Component:
        """The component entry called ``name`` (a ``KeyError`` if there is none)."""
        for component in self.components:
            if component.name == name:
                return component
        raise KeyError(name)

    def links_of(self, component: Component) -> tuple[Link, ...]:
        """The links with ``component`` at one end."""
        return tuple(link for link in self.links if component.name in (link.source, link.target))


def normalize(text: str) -> str:
    """``text`` lower-cased, every character but an ASCII letter or digit replaced by ``_`` (as wadm does)."""
    return "".join(c if c.isascii() and c.isalnum() else "_" for c in text.lower())


def default_id(app_name: str, entry_name: str) -> str:
    """The id wadm gives an entry without ``id``: ``<manifest>-<entry>``, both normalized."""
    return f"{normalize(app_name)}-{normalize(entry_name)}"


# -- loading --------------------------------------------------------------------------------------------


class _Checker:
    """Walks the parsed YAML, raising :class:`ManifestError` at the first problem, with its line."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, line: int, message: str) -> ManifestError:
        return ManifestError(f"{self.source}:{line}: {message}")

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

    def configs(self, parent: _Map, key: str, where: str) -> dict[str, str]:
        """A ``config`` list, merged in order (right-most wins)."""
        merged: dict[str, str] = {}
        for entry in self.optional_list(parent, key, where):
            line = self.line_of(entry)
            entry = self.mapping(entry, f"{where}: a {key!r} entry", line)
            name = self.string(entry, "name", f"{where}: config entry")
            properties = entry.get("properties")
            if properties is None:
                raise self.error(
                    entry.line,
                    f"{where}: config {name!r} has no 'properties': it refers to a named config in the "
                    "lattice's config store, which the local host does not have; give its properties inline",
                )
            properties = self.mapping(properties, f"{where}: config {name!r} properties", entry.line)
            for prop, value in properties.items():
                if not isinstance(value, str):
                    shown = str(value).lower() if isinstance(value, bool) else str(value)  # as YAML spells it
                    raise self.error(
                        self.line_of(properties, prop),
                        f"{where}: config {name!r}: {prop}: {shown} is {_kind(value)}; config values are "
                        f'strings (wadm rejects anything else): quote it, {prop}: "{shown}"',
                    )
                merged[prop] = value
        return merged

    def no_secrets(self, parent: _Map, where: str) -> None:
        if parent.get("secrets"):
            raise self.error(
                self.line_of(parent, "secrets"),
                f"{where}: secrets need a secret store, which the local host does not have; "
                "for local runs give the value as config (the provider reads both)",
            )


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


def load(text: str, source: str = "wadm.yaml") -> Application:
    """Parse and check a manifest; ``source`` names it in error messages. Raises :class:`ManifestError`."""
    check = _Checker(source)
    try:
        raw = yaml.load(text, Loader=_Loader)  # a SafeLoader: builds plain data only
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        raise check.error(line, f"not valid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise check.error(0, f"not valid YAML: {exc}") from None
    doc = check.mapping(raw, "the manifest", 1)
    if doc.get("apiVersion") != API_VERSION:
        raise check.error(
            check.line_of(doc, "apiVersion"),
            f"apiVersion must be {API_VERSION!r}, got {doc.get('apiVersion')!r}",
        )
    if doc.get("kind") != KIND:
        raise check.error(check.line_of(doc, "kind"), f"kind must be {KIND!r}, got {doc.get('kind')!r}")
    metadata = check.mapping(doc.get("metadata"), "metadata", check.line_of(doc, "metadata"))
    app_name = check.string(metadata, "name", "metadata")
    spec = check.mapping(doc.get("spec"), "spec", check.line_of(doc, "spec"))
    raw_entries = check.sequence(spec.get("components"), "spec.components", check.line_of(spec, "components"))

    entries = _entries(check, app_name, raw_entries)
    capability = _capability(check, entries)
    components = tuple(_component(check, e) for e in entries.values() if e.type == "component")
    links = _links(check, entries, capability)
    return Application(app_name, components, capability, links, source)


def _entries(check: _Checker, app_name: str, raw_entries: _Seq) -> dict[str, _Entry]:
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
        check.no_secrets(properties, where)
        traits = [
            check.mapping(t, f"{where}: a trait", check.line_of(t) or entry.line)
            for t in check.optional_list(entry, "traits", where)
        ]
        entries[name] = _Entry(name, kind, entry_id, properties, traits, entry.line)
    if not entries:
        raise check.error(raw_entries.line, "spec.components is empty")
    return entries


def _capability(check: _Checker, entries: Mapping[str, _Entry]) -> Capability:
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
    entry = found[0]
    where = f"capability {entry.name!r}"
    config = check.configs(entry.properties, "config", where)
    return Capability(entry.name, entry.id, entry.properties["image"].strip(), entry.line, config)


def _component(check: _Checker, entry: _Entry) -> Component:
    where = f"component {entry.name!r}"
    check.configs(entry.properties, "config", where)  # checked, then unused: this world imports no config
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
    return Component(entry.name, entry.id, entry.properties["image"].strip(), entry.line, instances)


def _links(check: _Checker, entries: Mapping[str, _Entry], capability: Capability) -> tuple[Link, ...]:
    links: list[Link] = []
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
            link = _link(check, entries, capability, entry, trait)
            key = (*link.definition.key,)
            if key in seen:
                raise check.error(link.line, f"the same link is declared twice (first on line {seen[key]})")
            seen[key] = link.line
            links.append(link)
    return tuple(links)


def _link(
    check: _Checker, entries: Mapping[str, _Entry], capability: Capability, source: _Entry, trait: _Map
) -> Link:
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
    check.no_secrets(target_spec, f"{where}: target")
    check.no_secrets(source_spec, f"{where}: source")
    # Deprecated top-level source_config / target_config (still accepted by wadm) come first.
    source_config = {
        **check.configs(props, "source_config", where),
        **check.configs(source_spec, "config", f"{where}: source"),
    }
    target_config = {
        **check.configs(props, "target_config", where),
        **check.configs(target_spec, "config", f"{where}: target"),
    }
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
    definition = LinkDefinition(
        source_id=source.id,
        target=target.id,
        wit_namespace=namespace,
        wit_package=package,
        interfaces=interfaces,
        name=link_name,
        source_config=source_config,
        target_config=target_config,
    )
    return Link(source.name, target.name, definition, line)


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
) -> str:
    """A manifest running ``wasm`` as ``component``, linked both ways with this provider:
    ``handler`` is the provider's source config, ``consumer`` its target config. What the
    local-host tests and ``make bench`` run."""
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
      traits:
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
