"""The wadm manifest loader (``provider.host.wadm``) and image resolution (``provider.host.build``).

Every error names the file and the line; a manifest is checked whole before the local host
starts anything. The spec's example (protocol spec §5) gives the link definitions a host puts.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from provider.errors import ConfigError
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


# -- named configs ----------------------------------------------------------------------------------------

CLIENT = """\
apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: prices
spec:
  policies:
    - name: ws-secrets
      type: policy.secret.wasmcloud.dev/v1alpha1
      properties: {backend: nats-kv}
  components:
    - name: requester
      type: component
      properties:
        image: file://./requester.wasm
      traits:
        - type: link
          properties:
            namespace: wasmcloud
            package: messaging
            interfaces: [consumer]
            target:
              name: websocket
              config:
                - name: prices-client
                  properties: {MODE: client, URI: "ws://127.0.0.1:1/ws"}
              secrets:
                - name: AUTH_TOKEN
                  properties: {policy: ws-secrets, key: prices-token}
    - name: websocket
      type: capability
      properties:
        image: file://./provider.par.gz
        config:
          - name: defaults
            properties: {FORMAT: json, auth_token: from-config, SUBJECT: provider}
        secrets:
          - name: SUBJECT
            properties: {policy: ws-secrets, key: limits, field: subject}
      traits:
        - type: link
          properties:
            namespace: wasmcloud
            package: messaging
            interfaces: [handler]
            target: {name: requester}
            source:
              config:
                - name: prices-prices_client
              secrets:
                - name: AUTH_TOKEN
                  properties: {policy: ws-secrets, key: prices-token}
"""
"""The README's client-mode shape: a secret policy, a config defined once and referred to by the
name wadm stores it under, the token a secret on both links, and a provider-level secret."""

SECRETS = wadm.LocalSecrets.layered(
    ("--secret", wadm.parse_secret_args(["prices-token=t0ken-value"])),
    ("secrets.yaml", wadm.load_secrets_file("limits: {subject: from-secret}\n", "secrets.yaml")),
)


def named(text: str, source: str = "configs.yaml") -> wadm.NamedConfigs:
    return wadm.load_named_configs(text, source)


def load_error(text: str, configs: wadm.NamedConfigs | None = None) -> str:
    with pytest.raises(ManifestError) as info:
        load(text, source="app.yaml", named_configs=configs)
    return str(info.value)


def test_a_reference_names_an_inline_config_by_the_name_wadm_stores_it_under() -> None:
    """``prices-prices_client`` (``<manifest>-<config>``, normalized) is the handler link's name for
    the consumer link's inline ``prices-client``: both links get the same keys."""
    app = load(CLIENT, source="app.yaml")
    consumer, handler = app.links
    assert consumer.definition.target_config == {"MODE": "client", "URI": "ws://127.0.0.1:1/ws"}
    assert handler.definition.source_config == consumer.definition.target_config
    [source] = handler.source_side.configs
    assert (source.name, source.origin) == ("prices-prices_client", "app.yaml:24 as 'prices-client'")
    assert wadm.stored_config_name("My App", "prices-client") == "my_app-prices_client"


def test_a_reference_may_come_before_the_config_it_names() -> None:
    """References are resolved once the whole manifest is read: the consumer link (first in the
    file) names the config the handler link defines further down."""
    text = CLIENT.replace(
        '                - name: prices-client\n                  properties: {MODE: client, URI: "ws://127.0.0.1:1/ws"}\n',
        "                - name: prices-shared\n",
    ).replace(
        "- name: prices-prices_client", "- name: shared\n                  properties: {MODE: client, URI: x}"
    )
    consumer, handler = load(text).links
    assert (
        consumer.definition.target_config
        == handler.definition.source_config
        == {"MODE": "client", "URI": "x"}
    )


def test_a_reference_resolves_from_a_config_file_with_its_line() -> None:
    """A name the manifest does not define comes from ``--config-file``, as is; values must be strings."""
    text = CLIENT.replace("- name: prices-prices_client", "- name: shared-client")
    configs = named("shared-client:\n  MODE: client\n  URI: ws://elsewhere/\n")
    [link] = [link for link in load(text, named_configs=configs).links if link.provider_is_source]
    assert link.definition.source_config == {"MODE": "client", "URI": "ws://elsewhere/"}
    assert link.source_side.configs[0].origin == "configs.yaml:1"
    json_configs = named(json.dumps({"shared-client": {"MODE": "client"}}, indent="\t"), "configs.json")
    assert load(text, named_configs=json_configs).links[1].definition.source_config == {"MODE": "client"}


def test_the_manifest_wins_over_a_config_file_for_a_stored_name() -> None:
    """wadm puts its inline configs into the config store, over what was there."""
    configs = named("prices-prices_client: {MODE: server}\n")
    assert load(CLIENT, named_configs=configs).links[1].definition.source_config["MODE"] == "client"


def test_a_config_that_is_nowhere_names_its_line_and_where_it_was_looked_for() -> None:
    text = CLIENT.replace("- name: prices-prices_client", "- name: prices-clinet")
    message = load_error(text)
    assert message.startswith(
        "app.yaml:48: component 'websocket': link: source: config 'prices-clinet' has no 'properties'"
    )
    assert "this manifest's inline configs ('prices-defaults', 'prices-prices_client')" in message
    assert "no --config-file (none given)" in message
    assert "did you mean 'prices-prices_client'?" in message
    with_file = load_error(text, named("other: {A: b}\n"))
    assert "and in --config-file configs.yaml" in with_file


def test_a_reference_by_the_bare_name_of_an_inline_config_says_how_to_name_it() -> None:
    """In a lattice ``prices-client`` would be looked up as is, and not found: say the stored name."""
    message = load_error(CLIENT.replace("- name: prices-prices_client", "- name: prices-client"))
    assert message.startswith("app.yaml:48: component 'websocket': link: source: config 'prices-client'")
    assert "The config 'prices-client' on line 24 is stored as 'prices-prices_client'" in message


def test_two_link_configs_with_properties_may_not_share_a_name() -> None:
    """wadm rejects it ("Duplicate link config name found"); the error shows the stored name to use."""
    text = CLIENT.replace(
        "                - name: prices-prices_client\n",
        "                - name: prices-client\n                  properties: {MODE: client}\n",
    )
    message = load_error(text)
    assert message.startswith(
        "app.yaml:48: component 'websocket': link: source: config 'prices-client' is defined on line 24 too"
    )
    assert "- name: prices-prices_client" in message


def test_two_inline_configs_stored_under_one_name_must_agree() -> None:
    """``Defaults`` and ``defaults`` are both stored as ``prices-defaults``: with other keys, one
    would overwrite the other."""
    text = CLIENT.replace(
        "        image: file://./requester.wasm\n",
        "        image: file://./requester.wasm\n        config:\n"
        "          - name: Defaults\n            properties: {FORMAT: raw}\n",
    )
    message = load_error(text)
    assert message.startswith(
        "app.yaml:37: component 'websocket': config 'defaults' and config 'Defaults' (line 16) are both"
    )
    assert "both stored by wadm as 'prices-defaults', with different properties" in message
    same = text.replace("{FORMAT: raw}", "{FORMAT: json, auth_token: from-config, SUBJECT: provider}")
    assert load(same).component("requester").own.configs[0].name == "Defaults"


def test_config_file_errors_name_the_file_and_line() -> None:
    def error(text: str) -> str:
        with pytest.raises(ManifestError) as info:
            named(text)
        return str(info.value)

    assert (
        error("- a\n")
        == "configs.yaml:1: a config file (config name → its properties) must be a mapping, got a list"
    )
    assert error("a:\n  PORT: 8080\n").startswith("configs.yaml:2: config 'a': PORT: 8080 is a number")
    assert error("a: text\n") == "configs.yaml:1: config 'a': its properties must be a mapping, got a string"
    assert error("a: {B: [c\n").startswith("configs.yaml:2: not valid YAML")
    assert error("a: {}\na: {}\n").startswith("configs.yaml:2: not valid YAML")  # duplicate keys
    assert named("").configs == {}


# -- secrets ------------------------------------------------------------------------------------------


def test_secrets_resolve_by_key_and_field_and_reach_both_levels() -> None:
    """Link secrets by the reference's key, a provider secret by key and field; what a host hands
    over is ``name → value``."""
    app = load(CLIENT)
    resolved = wadm.resolve_secrets(app, SECRETS)
    consumer, handler = app.links
    assert wadm.secret_values(consumer.target_side.secrets, resolved) == {"AUTH_TOKEN": "t0ken-value"}
    assert wadm.secret_values(handler.source_side.secrets, resolved) == {"AUTH_TOKEN": "t0ken-value"}
    assert wadm.secret_values(app.capability.own.secrets, resolved) == {"SUBJECT": "from-secret"}
    assert [p.name for p in app.policies] == ["ws-secrets"]
    assert "t0ken-value" not in repr(resolved)
    assert "t0ken-value" not in repr(SECRETS)
    assert "from-secret" not in repr(SECRETS)


def test_effective_config_merges_as_the_provider_does_with_secrets_redacted() -> None:
    """provider config < provider secrets < link config < link secrets, keys case-insensitive;
    each key says where it came from, and no secret value is shown."""
    app = load(CLIENT, source="app.yaml")
    resolved = wadm.resolve_secrets(app, SECRETS)
    config, settings = wadm.effective_config(app, app.links[1], resolved)
    assert config["auth_token"] == "t0ken-value"  # the link secret beats the provider config
    assert config["SUBJECT"] == "from-secret"  # a provider secret beats the provider config
    assert config["MODE"] == "client"
    rows = {s.key: (s.shown, s.origin) for s in settings}
    assert rows["AUTH_TOKEN"] == (
        "<redacted>",
        "link secret 'AUTH_TOKEN' (key 'prices-token', from --secret)",
    )
    assert rows["SUBJECT"] == (
        "<redacted>",
        "provider secret 'SUBJECT' (key 'limits', from secrets.yaml:1, field 'subject')",
    )
    assert rows["FORMAT"] == ("'json'", "provider config 'defaults' (app.yaml:34)")
    assert rows["MODE"] == ("'client'", "link config 'prices-prices_client' (app.yaml:24 as 'prices-client')")
    assert not any("t0ken-value" in s.shown or "from-secret" in s.shown for s in settings)


def test_every_missing_secret_is_reported_with_its_line_and_where_it_was_looked_for() -> None:
    app = load(CLIENT, source="app.yaml")
    store = wadm.LocalSecrets.layered(
        ("--secrets-file s.yaml", wadm.load_secrets_file("prices_token: nope\n", "s.yaml")),
        ("--secret", {}),
    )
    with pytest.raises(ManifestError) as info:
        wadm.resolve_secrets(app, store)
    lines = str(info.value).splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == ["app.yaml:27", "app.yaml:37", "app.yaml:50"]
    assert lines[0].startswith(
        "app.yaml:27: component 'requester': link: target: secret 'AUTH_TOKEN' "
        "(policy 'ws-secrets', key 'prices-token') has no value: key 'prices-token' was looked for in "
        "--secrets-file s.yaml and --secret (did you mean 'prices_token'?)"
    )
    assert "nope" not in str(info.value)
    with pytest.raises(ManifestError, match="looked for in nowhere: no secrets were given"):
        wadm.resolve_secrets(app, wadm.LocalSecrets())


def test_fields_must_match_what_the_store_holds() -> None:
    app = load(CLIENT, source="app.yaml")

    def error(secrets_yaml: str) -> str:
        store = wadm.LocalSecrets.layered(
            ("f", wadm.load_secrets_file(secrets_yaml, "f.yaml")),
            ("--secret", wadm.parse_secret_args(["prices-token=x"])),
        )
        with pytest.raises(ManifestError) as info:
            wadm.resolve_secrets(app, store)
        return str(info.value)

    assert "asks for field 'subject', but key 'limits' (f.yaml:1) is a single value" in error(
        "limits: v4lue\n"
    )
    assert "which key 'limits' (f.yaml:1) does not have (it has 'other')" in error("limits: {other: v4lue}\n")
    app_no_field = load(CLIENT.replace(", field: subject", ""), source="app.yaml")
    store = wadm.LocalSecrets.layered(("f", wadm.load_secrets_file("limits: {a: v4lue}\n", "f.yaml")))
    with pytest.raises(
        ManifestError, match=r"names no field, but key 'limits' \(f\.yaml:1\) holds fields \('a'\)"
    ):
        wadm.resolve_secrets(app_no_field, store)
    assert "v4lue" not in error("limits: v4lue\n") + error("limits: {other: v4lue}\n")


def test_secret_references_must_name_a_secret_policy_with_a_backend() -> None:
    """wadm's policy checks: the policy exists, has the secret type, and a backend."""
    unknown = load_error(
        CLIENT.replace("{policy: ws-secrets, key: prices-token}", "{policy: vault, key: k}", 1)
    )
    assert unknown.startswith(
        "app.yaml:28: component 'requester': link: target: secret 'AUTH_TOKEN' is mapped to unknown "
        "policy 'vault'"
    )
    assert "(spec.policies has 'ws-secrets')" in unknown
    other_type = load_error(
        CLIENT.replace("type: policy.secret.wasmcloud.dev/v1alpha1", "type: policy.k8s/v1")
    )
    assert (
        "mapped to policy 'ws-secrets' (line 7), which is not a secret policy: its type is 'policy.k8s/v1'"
        in other_type
    )
    no_backend = load_error(CLIENT.replace("{backend: nats-kv}", "{region: eu}"))
    assert "policy 'ws-secrets' (line 7), which has no 'backend' property" in no_backend
    no_policies = load_error(CLIENT.replace("  policies:\n", "  unused:\n"))
    assert "unknown policy 'ws-secrets' (spec.policies has none)" in no_policies


def test_policy_shape_errors() -> None:
    twice = CLIENT.replace(
        "  components:\n",
        "    - name: ws-secrets\n      type: x\n      properties: {}\n  components:\n",
    )
    assert load_error(twice).startswith(
        "app.yaml:10: policy 'ws-secrets' is declared twice (first on line 7)"
    )
    no_props = load_error(CLIENT.replace("      properties: {backend: nats-kv}\n", ""))
    assert no_props.startswith("app.yaml:7: policy 'ws-secrets' has no 'properties' (wadm requires them)")
    number = load_error(CLIENT.replace("{backend: nats-kv}", "{backend: nats-kv, ttl: 30}"))
    assert number.startswith("app.yaml:9: policy 'ws-secrets': ttl: 30 is a number")
    assert "has no 'type'" in load_error(
        CLIENT.replace("      type: policy.secret.wasmcloud.dev/v1alpha1\n", "")
    )


def test_secret_reference_shape_errors_and_warnings() -> None:
    reference = "                - name: AUTH_TOKEN\n"
    no_props = CLIENT.replace(
        reference + "                  properties: {policy: ws-secrets, key: prices-token}\n", reference, 1
    )
    assert load_error(no_props).startswith(
        "app.yaml:27: component 'requester': link: target: secret 'AUTH_TOKEN' has no 'properties'"
    )
    no_key = load_error(CLIENT.replace("{policy: ws-secrets, key: prices-token}", "{policy: ws-secrets}", 1))
    assert no_key.startswith(
        "app.yaml:28: component 'requester': link: target: secret 'AUTH_TOKEN' has no 'key'"
    )
    bad_field = load_error(CLIENT.replace("field: subject", "field: 3"))
    assert bad_field.startswith(
        "app.yaml:38: component 'websocket': secret 'SUBJECT': 'field' must be a non-empty"
    )
    no_name = load_error(CLIENT.replace("- name: AUTH_TOKEN", "- nom: AUTH_TOKEN", 1))
    assert "secret entry has no 'name'" in no_name
    typo = load(CLIENT.replace("key: prices-token}", "key: prices-token, feild: x}", 1), source="app.yaml")
    assert typo.warnings == (
        "app.yaml:28: component 'requester': link: target: secret 'AUTH_TOKEN': unknown property 'feild' "
        "(a secret reference has policy, key, field, version); wadm ignores it",
    )


def test_two_references_kept_under_one_name_must_agree() -> None:
    """wadm keeps a reference as ``SECRET_<manifest>-<name>``: the same name with another key would clash."""
    text = (
        CLIENT[: CLIENT.rindex("prices-token")] + "other-token" + CLIENT[CLIENT.rindex("prices-token") + 12 :]
    )
    message = load_error(text)
    assert message.startswith("app.yaml:50: component 'websocket': link: source: secret 'AUTH_TOKEN' (policy")
    assert "are both kept by wadm as 'SECRET_prices-auth_token' but refer to different values" in message


def test_secret_arguments_and_files_never_show_a_value() -> None:
    """A malformed ``--secret`` is not echoed (it may be the value); file errors show the line,
    never the value."""
    with pytest.raises(ConfigError) as info:
        wadm.parse_secret_args(["ok=1", "hunter2"])
    assert str(info.value).startswith("--secret #2: expected KEY=VALUE")
    assert "hunter2" not in str(info.value)
    with pytest.raises(ConfigError, match="--secret #1: expected KEY=VALUE"):
        wadm.parse_secret_args(["=value"])
    assert wadm.parse_secret_args(["k=a=b", "k2="])["k"].value == "a=b"

    def file_error(text: str) -> str:
        with pytest.raises(ManifestError) as info:
            wadm.load_secrets_file(text, "s.yaml")
        assert "8675309" not in str(info.value)
        return str(info.value)

    assert file_error("a: x\nb: 8675309\n").startswith(
        "s.yaml:2: secret 'b' is a number; a secret is a string"
    )
    assert file_error("a: {f: 8675309}\n").startswith("s.yaml:1: secret 'a': field 'f' is a number")
    assert file_error("a: '8675309\n").startswith("s.yaml:2: not valid YAML")
    assert file_error("[8675309]\n").startswith("s.yaml:1: a secrets file (key → value) must be a mapping")


def test_secret_env_takes_values_from_the_environment() -> None:
    values = wadm.parse_secret_env(["prices-token=PRICES_TOKEN"], {"PRICES_TOKEN": "v"})
    assert values["prices-token"].value == "v"
    assert values["prices-token"].origin == "--secret-env ($PRICES_TOKEN)"
    with pytest.raises(ConfigError, match="environment variable NOPE is not set"):
        wadm.parse_secret_env(["k=NOPE"], {})
    with pytest.raises(ConfigError, match="expected KEY=VARIABLE"):
        wadm.parse_secret_env(["k"], {})


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
