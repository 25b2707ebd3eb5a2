"""The wadm manifest loader (``provider.host.wadm``) and image resolution (``provider.host.build``).

Every error names the file and the line; a manifest is checked whole before the local host
starts anything. The spec's example (protocol spec §5) gives the link definitions a host puts.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from provider.host import wadm
from provider.host.build import BuildError, ComponentSource, inputs_digest, resolve_image
from provider.host.wadm import ManifestError, load
from provider.wasmcloud.links import LinkDefinition

ROOT = Path(__file__).resolve().parents[2]

SPEC_EXAMPLE = """\
apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: py-messaging-demo
  annotations:
    version: v0.0.1
spec:
  components:
    - name: echo
      type: component
      properties:
        image: file://./build/echo_s.wasm
        id: echo
      traits:
        - type: spreadscaler
          properties:
            instances: 1
        - type: link
          properties:
            namespace: wasmcloud
            package: messaging
            interfaces: [consumer]
            target:
              name: pymsg
              config:
                - name: pymsg-consumer
                  properties:
                    MODE: server

    - name: pymsg
      type: capability
      properties:
        image: file:///opt/pymsg/build/pymsg.par.gz
        id: pymsg
        config:
          - name: pymsg-defaults
            properties:
              nats_url: nats://127.0.0.1:4222
      traits:
        - type: link
          properties:
            namespace: wasmcloud
            package: messaging
            interfaces: [handler]
            target:
              name: echo
            source:
              config:
                - name: pymsg-handler
                  properties:
                    MODE: server
                    subscriptions: demo.echo
"""


def manifest(components: str, name: str = "demo") -> str:
    """A manifest around ``components`` (YAML list items, indented as under ``components:``)."""
    return (
        "apiVersion: core.oam.dev/v1beta1\n"
        "kind: Application\n"
        f"metadata:\n  name: {name}\n"
        "spec:\n  components:\n" + textwrap.indent(textwrap.dedent(components).strip("\n"), "    ") + "\n"
    )


PROVIDER = """
- name: ws
  type: capability
  properties:
    image: file://./provider.par.gz
"""


def error_of(text: str) -> str:
    with pytest.raises(ManifestError) as info:
        load(text, source="app.yaml")
    return str(info.value)


# -- what a good manifest becomes ----------------------------------------------------------------------


def test_spec_example_gives_the_spec_link_definitions() -> None:
    """The example of protocol spec §5 yields exactly the two link definitions the spec lists."""
    app = load(SPEC_EXAMPLE)
    assert [link.definition for link in app.links] == [
        LinkDefinition(
            "echo", "pymsg", "wasmcloud", "messaging", ("consumer",), "default", {}, {"MODE": "server"}
        ),
        LinkDefinition(
            "pymsg",
            "echo",
            "wasmcloud",
            "messaging",
            ("handler",),
            "default",
            {"MODE": "server", "subscriptions": "demo.echo"},
            {},
        ),
    ]
    assert app.capability.config == {"nats_url": "nats://127.0.0.1:4222"}
    assert app.capability.id == "pymsg"
    assert [c.name for c in app.components] == ["echo"]


def test_ids_default_to_the_normalized_manifest_and_entry_names() -> None:
    """No ``id``: ``<manifest>-<entry>``, lower-cased, non-alphanumerics as ``_`` (wadm's rule)."""
    assert wadm.default_id("py-messaging-demo", "pymsg") == "py_messaging_demo-pymsg"
    assert wadm.default_id("My App.v2", "Chat Room") == "my_app_v2-chat_room"
    app = load(SPEC_EXAMPLE.replace("        id: echo\n", "").replace("        id: pymsg\n", ""))
    assert app.component("echo").id == "py_messaging_demo-echo"
    assert app.capability.id == "py_messaging_demo-pymsg"
    assert app.links[0].definition.source_id == "py_messaging_demo-echo"
    assert app.links[0].definition.target == "py_messaging_demo-pymsg"


def test_configs_merge_right_most_wins_and_deprecated_keys_come_first() -> None:
    """Inline configs merge in order; the deprecated top-level ``source_config`` yields to ``source``."""
    app = load(
        manifest(
            PROVIDER
            + """
  traits:
    - type: link
      properties:
        namespace: wasmcloud
        package: messaging
        interfaces: [handler]
        name: second
        source_config:
          - name: old
            properties: {MODE: client, KEEP: "1"}
        source:
          config:
            - name: a
              properties: {MODE: server, URI: "127.0.0.1:1"}
            - name: b
              properties: {URI: "127.0.0.1:2"}
        target:
          name: c
- name: c
  type: component
  properties:
    image: file://./c.wasm
"""
        )
    )
    [link] = app.links
    assert link.definition.source_config == {"MODE": "server", "KEEP": "1", "URI": "127.0.0.1:2"}
    assert link.definition.name == "second"


def test_scaler_instances_set_the_instance_count_up_to_the_cap() -> None:
    """``spreadscaler.instances`` is how many instances serve the component, up to a cap."""
    text = manifest(
        PROVIDER
        + """
- name: c
  type: component
  properties:
    image: file://./c.wasm
  traits:
    - type: spreadscaler
      properties:
        instances: 1000
"""
    )
    assert load(text).component("c").instances == wadm.MAX_INSTANCES
    assert load(text.replace("instances: 1000", "instances: 3")).component("c").instances == 3


def test_the_repository_manifest_links_the_right_way() -> None:
    """wadm.yaml: chat → provider is consumer (target config); provider → chat is handler (source config)."""
    app = load((ROOT / "wadm.yaml").read_text())
    consumer = next(link for link in app.links if link.definition.interfaces == ("consumer",))
    handler = next(link for link in app.links if link.definition.interfaces == ("handler",))
    assert (consumer.source, consumer.target) == ("chat", app.capability.name)
    assert consumer.definition.target_config == {"MODE": "server"}
    assert (handler.source, handler.target) == (app.capability.name, "chat")
    assert handler.definition.source_config["URI"] == "127.0.0.1:8080"
    assert handler.definition.source_config["PATH"] == "/ws"
    assert handler.definition.source_config["FORMAT"] == "json"
    assert handler.definition.source_config["LIFECYCLE_EVENTS"] == "true"
    assert handler.definition.target_config == {}


# -- errors: each names the file and line -----------------------------------------------------------------


def test_link_to_an_unknown_component() -> None:
    """A link whose target is not in the manifest names the target, the line and what exists."""
    message = error_of(
        SPEC_EXAMPLE.replace("name: pymsg\n              config", "name: nobody\n              config")
    )
    assert message.startswith("app.yaml:24: component 'echo': link to 'nobody', which is not a component")
    assert "'echo', 'pymsg'" in message


def test_link_without_a_target() -> None:
    """A link trait with no ``target`` is a link to nothing."""
    text = SPEC_EXAMPLE.replace("            target:\n              name: echo\n", "")
    assert error_of(text).startswith("app.yaml:40: component 'pymsg': link has no target")


def test_link_target_without_a_name() -> None:
    text = SPEC_EXAMPLE.replace("            target:\n              name: echo\n", "            target: {}\n")
    assert "link: target has no 'name'" in error_of(text)


def test_component_without_an_image() -> None:
    """A missing image names the component and its properties' line."""
    message = error_of(SPEC_EXAMPLE.replace("        image: file://./build/echo_s.wasm\n", ""))
    assert message.startswith("app.yaml:12: component 'echo' has no image")


def test_capability_with_an_empty_image() -> None:
    message = error_of(SPEC_EXAMPLE.replace("image: file:///opt/pymsg/build/pymsg.par.gz", 'image: ""'))
    assert message.startswith("app.yaml:33: component 'pymsg' has no image")


def test_unknown_entry_type() -> None:
    message = error_of(SPEC_EXAMPLE.replace("type: component", "type: actor"))
    assert message.startswith(
        "app.yaml:10: component 'echo': type must be component or capability, got 'actor'"
    )


def test_no_capability() -> None:
    message = error_of(manifest("- name: c\n  type: component\n  properties:\n    image: file://./c.wasm\n"))
    assert "the manifest has no capability" in message


def test_two_capabilities() -> None:
    second = PROVIDER.replace("name: ws", "name: other")
    message = error_of(manifest(PROVIDER + second))
    assert message.startswith("app.yaml:12: a second capability 'other' (the first is 'ws')")


def test_duplicate_entry_names_and_ids() -> None:
    assert "app.yaml:12: component 'ws' is declared twice (first on line 7)" in error_of(
        manifest(PROVIDER + PROVIDER)
    )
    clash = manifest(
        PROVIDER
        + "- name: c\n  type: component\n  properties:\n    image: file://./c.wasm\n    id: demo-ws\n"
    )
    assert "component 'c' has the id 'demo-ws' of component 'ws'" in error_of(clash)


def test_id_that_cannot_be_in_a_subject() -> None:
    bad = manifest(
        PROVIDER + "- name: c\n  type: component\n  properties:\n    image: file://./c.wasm\n    id: a.b\n"
    )
    assert "id 'a.b' must not contain '.'" in error_of(bad)


def test_config_value_that_is_not_a_string() -> None:
    """YAML's ``true`` is a boolean; wadm wants strings: the error says to quote it, at the value's line."""
    text = SPEC_EXAMPLE.replace("subscriptions: demo.echo", "LIFECYCLE_EVENTS: true")
    message = error_of(text)
    assert message.startswith("app.yaml:52: component 'pymsg': link: source: config 'pymsg-handler'")
    assert "LIFECYCLE_EVENTS: true is a boolean" in message
    assert 'quote it, LIFECYCLE_EVENTS: "true"' in message


def test_config_reference_without_properties() -> None:
    """A config entry without properties names a config-store entry; the local host has no config store."""
    entry = "                - name: pymsg-consumer\n"
    text = SPEC_EXAMPLE.replace(
        entry + "                  properties:\n                    MODE: server\n", entry
    )
    message = error_of(text)
    assert message.startswith("app.yaml:26: component 'echo': link: target: config 'pymsg-consumer' has no")
    assert "give its properties inline" in message


def test_secrets_are_refused() -> None:
    text = SPEC_EXAMPLE.replace(
        "            source:\n",
        "            source:\n              secrets:\n                - name: token\n",
    )
    assert "link: source: secrets need a secret store" in error_of(text)


def test_links_the_local_host_cannot_run() -> None:
    """Other interfaces, component-to-component links, wrong directions and self-links are refused."""
    other = SPEC_EXAMPLE.replace(
        "namespace: wasmcloud\n            package: messaging\n            interfaces: [consumer]",
        "namespace: wasi\n            package: http\n            interfaces: [outgoing-handler]",
    )
    assert "wasi:http/outgoing-handler: the local host runs only wasmcloud:messaging links" in error_of(other)
    backwards = SPEC_EXAMPLE.replace("interfaces: [consumer]", "interfaces: [handler]")
    message = error_of(backwards)
    assert message.startswith("app.yaml:22: component 'echo': link to 'pymsg' has interfaces ['handler']")
    assert "interfaces: [consumer]" in message
    to_self = SPEC_EXAMPLE.replace("name: pymsg\n              config", "name: echo\n              config")
    assert "component 'echo': link to itself" in error_of(to_self)
    two_components = manifest(
        PROVIDER
        + """
- name: a
  type: component
  properties: {image: file://./a.wasm}
  traits:
    - type: link
      properties: {namespace: wasmcloud, package: messaging, interfaces: [consumer], target: {name: b}}
- name: b
  type: component
  properties: {image: file://./b.wasm}
"""
    )
    assert (
        "from component 'a' to component 'b': the local host links components only with the provider"
        in error_of(two_components)
    )


def test_the_same_link_twice() -> None:
    link = (
        "    - type: link\n"
        "      properties: {namespace: wasmcloud, package: messaging, interfaces: [consumer],\n"
        "                   target: {name: ws}}\n"
    )
    component = "- name: a\n  type: component\n  properties: {image: file://./a.wasm}\n  traits:\n"
    text = manifest(PROVIDER + component + link + link)
    assert "app.yaml:18: the same link is declared twice (first on line 15)" in error_of(text)


def test_unknown_trait_and_bad_instances() -> None:
    component = "- name: a\n  type: component\n  properties: {image: file://./a.wasm}\n  traits:\n"
    base = manifest(PROVIDER + component + "    - type: TRAIT\n      properties: {instances: COUNT}\n")
    assert "unknown trait type 'autoscaler'" in error_of(
        base.replace("TRAIT", "autoscaler").replace("COUNT", "1")
    )
    assert "instances must be a whole number of at least 1, got 0" in error_of(
        base.replace("TRAIT", "spreadscaler").replace("COUNT", "0")
    )


def test_shape_errors() -> None:
    """Not YAML, the wrong apiVersion or kind, no name, no components, duplicate keys."""
    assert error_of("a: [b\n").startswith("app.yaml:2: not valid YAML")
    assert error_of(SPEC_EXAMPLE.replace("v1beta1", "v1")).startswith("app.yaml:1: apiVersion must be")
    assert error_of(SPEC_EXAMPLE.replace("kind: Application", "kind: Deployment")).startswith(
        "app.yaml:2: kind"
    )
    assert error_of(SPEC_EXAMPLE.replace("  name: py-messaging-demo\n", "")).startswith(
        "app.yaml:4: metadata has no 'name'"
    )
    assert "spec.components is empty" in error_of(manifest("[]").replace("    []", "    []"))
    assert "duplicate key 'image' (first on line 12)" in error_of(
        SPEC_EXAMPLE.replace("        id: echo\n", "        image: other.wasm\n")
    )
    assert error_of("- a\n- b\n") == "app.yaml:1: the manifest must be a mapping, got a list"


# -- images -----------------------------------------------------------------------------------------------


def test_image_resolution(tmp_path: Path) -> None:
    """file:// paths are relative to the manifest; build/components/<n>.wasm builds from components/<n>/."""
    (tmp_path / "components" / "hello").mkdir(parents=True)
    (tmp_path / "components" / "hello" / "app.py").write_text("# a component\n")
    image = resolve_image("file://./build/components/hello.wasm", tmp_path)
    assert image.path == tmp_path / "build" / "components" / "hello.wasm"
    assert image.source == ComponentSource("hello", tmp_path / "components" / "hello", tmp_path / "wit")

    prebuilt = tmp_path / "prebuilt.wasm"
    prebuilt.write_bytes(b"\0asm")
    assert resolve_image(f"file://{prebuilt}", Path("/elsewhere")).source is None
    assert resolve_image("file://prebuilt.wasm", tmp_path).path == prebuilt

    with pytest.raises(BuildError, match="the local host runs file:// images only"):
        resolve_image("ghcr.io/wasmcloud/components/echo:0.1.0", tmp_path)
    with pytest.raises(BuildError, match=r"missing\.wasm does not exist$"):
        resolve_image("file://./missing.wasm", tmp_path)
    with pytest.raises(BuildError, match=r"there is no .*components/nope/app\.py to build it from"):
        resolve_image("file://./build/components/nope.wasm", tmp_path)


def test_build_inputs_digest_follows_the_sources_not_the_bytecode(tmp_path: Path) -> None:
    """The build key changes with a source or WIT file; __pycache__ (builds leave it) is not an input."""
    (tmp_path / "wit").mkdir()
    (tmp_path / "wit" / "world.wit").write_text("package a:b;\n")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "app.py").write_text("x = 1\n")
    source = ComponentSource("c", tmp_path / "c", tmp_path / "wit")
    first = inputs_digest(source)
    (tmp_path / "c" / "__pycache__").mkdir()
    (tmp_path / "c" / "__pycache__" / "app.cpython-314.py").write_text("junk\n")
    assert inputs_digest(source) == first
    (tmp_path / "c" / "app.py").write_text("x = 2\n")
    second = inputs_digest(source)
    assert second != first
    (tmp_path / "wit" / "world.wit").write_text("package a:c;\n")
    assert inputs_digest(source) != second
