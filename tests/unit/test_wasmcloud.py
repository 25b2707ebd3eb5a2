"""Pure pieces of the host protocol: xkeys, HostData, link definitions, config merging, subjects."""

from __future__ import annotations

import base64
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from provider.errors import ConfigError
from provider.wasmcloud.config import Config, SecretValue, parse_secrets
from provider.wasmcloud.hostdata import HostData, decode_host_data
from provider.wasmcloud.links import (
    LinkDefinition,
    LinkResolver,
    LinkTable,
    PutOutcome,
    Role,
    check_interfaces,
    decode_link_definition,
)
from provider.wasmcloud.logs import RateLimiter, Redactor
from provider.wasmcloud.subjects import ControlSubjects
from provider.wasmcloud.xkeys import XKey, decode_public, decode_seed

XKEY = json.loads((Path(__file__).parent.parent / "vectors" / "xkey-vectors.json").read_text())

SPEC_HOST_DATA: dict[str, Any] = {
    "host_id": "NBXXX",
    "lattice_rpc_prefix": "default",
    "link_name": "default",
    "lattice_rpc_user_jwt": "",
    "lattice_rpc_user_seed": "",
    "lattice_rpc_url": "nats://127.0.0.1:4222",
    "provider_key": "pymsg",
    "env_values": {},
    "instance_id": "6f1d7a4e-3c59-4c0f-9d8e-0f3c2b1a9e77",
    "link_definitions": [
        {
            "source_id": "echo",
            "target": "pymsg",
            "name": "default",
            "wit_namespace": "wasmcloud",
            "wit_package": "messaging",
            "interfaces": ["consumer"],
            "source_config": {},
            "target_config": {"MODE": "server"},
            "source_secrets": None,
            "target_secrets": None,
        }
    ],
    "cluster_issuers": [],
    "config": {"nats_url": "nats://127.0.0.1:4222"},
    "secrets": {"TOKEN": {"kind": "String", "value": "s3cret"}, "RAW": {"kind": "Bytes", "value": [1, 2]}},
    "host_xkey_public_key": "",
    "provider_xkey_private_key": "",
    "default_rpc_timeout_ms": 2000,
    "structured_logging": False,
    "log_level": "info",
    "otel_config": {"enable_observability": False, "protocol": "Http", "additional_ca_paths": []},
}


def _line(obj: Any) -> bytes:
    return base64.b64encode(json.dumps(obj).encode()) + b"\r\n"


# --- xkeys -------------------------------------------------------------------------------------


def test_xkey_vector_opens_to_its_plaintext() -> None:
    """The sealed box from Go nkeys opens with the receiver's seed and the sender's public key."""
    receiver = XKey.from_seed(XKEY["receiver_seed"])
    assert receiver.open(bytes.fromhex(XKEY["sealed_hex"]), XKEY["sender_public"]) == b"this is super secret"


def test_xkey_public_is_derived_from_the_seed() -> None:
    """The sender's public key in the vector is the one its seed derives."""
    assert XKey.from_seed(XKEY["sender_seed"]).public == XKEY["sender_public"]


def test_seed_with_an_altered_checksum_is_rejected() -> None:
    """One changed character breaks the CRC-16 and is refused."""
    seed = XKEY["receiver_seed"]
    altered = seed[:-1] + ("A" if seed[-1] != "A" else "B")
    with pytest.raises(ConfigError, match="checksum"):
        decode_seed(altered)


def test_keys_of_the_wrong_kind_are_rejected() -> None:
    """A seed is not a public key and vice versa."""
    with pytest.raises(ConfigError):
        decode_public(XKEY["sender_seed"])
    with pytest.raises(ConfigError):
        decode_seed(XKEY["sender_public"])


def test_seal_and_open_round_trip_and_tampering_is_caught() -> None:
    """What one key seals to another opens only with the right pair, and not once altered."""
    host, provider = XKey.generate(), XKey.generate()
    sealed = host.seal(b'{"a": 1}', provider.public)
    assert sealed.startswith(b"xkv1")
    assert provider.open(sealed, host.public) == b'{"a": 1}'
    with pytest.raises(ConfigError, match="could not be opened"):
        provider.open(sealed[:-1] + bytes([sealed[-1] ^ 1]), host.public)
    with pytest.raises(ConfigError, match="xkv1"):
        provider.open(b"nope", host.public)
    assert provider.seed not in repr(provider)


# --- HostData ----------------------------------------------------------------------------------


def test_spec_example_host_data_parses() -> None:
    """The example from spec §1.3 parses into typed fields."""
    data = decode_host_data(_line(SPEC_HOST_DATA))
    assert data.provider_key == "pymsg"
    assert data.lattice == "default"
    assert data.link_definitions[0].target_config == {"MODE": "server"}
    assert data.secrets["TOKEN"] == SecretValue("s3cret")
    assert data.secrets["RAW"] == SecretValue(b"\x01\x02")
    assert not data.has_xkeys
    assert "s3cret" not in repr(data)


def test_host_data_is_lenient_about_missing_and_unknown_keys() -> None:
    """Only provider_key is needed; unknown keys are ignored; defaults fill the rest."""
    data = decode_host_data(_line({"provider_key": "p", "something_new": [1, 2, 3]}))
    assert data.lattice_rpc_url == "nats://127.0.0.1:4222"
    assert data.lattice == "default"
    assert data.link_definitions == ()


def test_host_data_encode_round_trips() -> None:
    """What the local host writes is what the provider reads."""
    data = decode_host_data(_line(SPEC_HOST_DATA))
    assert decode_host_data(data.encode()) == data
    assert data.encode().endswith(b"\r\n")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"", "stdin was empty"),
        (b"!!!not base64", "not valid base64"),
        (base64.b64encode(b"not json"), "does not hold JSON"),
        (_line([1, 2]), "expected a JSON object"),
        (_line({"host_id": "N"}), "'provider_key'"),
        (_line({"provider_key": "p", "log_level": "loud"}), "'log_level' must be one of"),
        (_line({"provider_key": "p", "structured_logging": "yes"}), "'structured_logging' must be bool"),
        (_line({"provider_key": "p", "config": {"a": 1}}), "'a' must be a string"),
        (_line({"provider_key": "p", "secrets": {"a": {"kind": "Other"}}}), "secret 'a' must be"),
    ],
)
def test_malformed_host_data_says_what_is_wrong(line: bytes, message: str) -> None:
    """Each kind of bad HostData raises ConfigError naming the problem."""
    with pytest.raises(ConfigError, match=message):
        decode_host_data(line)


def test_bad_link_in_host_data_is_skipped_and_reported() -> None:
    """One bad link definition does not stop the others."""
    raw = dict(SPEC_HOST_DATA, link_definitions=[{"source_id": "x"}, SPEC_HOST_DATA["link_definitions"][0]])
    data = decode_host_data(_line(raw))
    assert len(data.link_definitions) == 1
    assert data.link_errors == (
        "HostData link_definitions[0]: link definition: 'target' must be a non-empty string, got None",
    )


# --- links -------------------------------------------------------------------------------------


def _link(**overrides: Any) -> dict[str, Any]:
    first: dict[str, Any] = SPEC_HOST_DATA["link_definitions"][0]
    return dict(first, **overrides)


def test_link_definition_round_trips_through_json() -> None:
    """Parsing the host's JSON and writing it back gives the same JSON."""
    raw = _link(target_secrets=[1, 2, 3])
    definition = decode_link_definition(json.dumps(raw).encode())
    assert definition.target_secrets == b"\x01\x02\x03"
    assert definition.to_json() == raw


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (_link(target=""), "'target' must be a non-empty string"),
        (_link(interfaces="consumer"), "'interfaces' must be a list"),
        (_link(target_config={"MODE": 1}), "'MODE' must be a string"),
        (_link(source_secrets="abc"), "'source_secrets' must be null or an array of bytes"),
    ],
)
def test_bad_link_definitions_are_rejected(raw: dict[str, Any], message: str) -> None:
    """Each bad field is named in the error."""
    with pytest.raises(ConfigError, match=message):
        decode_link_definition(json.dumps(raw).encode())


def test_missing_link_name_defaults_to_default() -> None:
    """Hosts that omit the name mean the default link."""
    raw = _link()
    del raw["name"]
    assert decode_link_definition(json.dumps(raw).encode()).name == "default"


def _resolver(**kwargs: Any) -> LinkResolver:
    return LinkResolver(
        provider_id="pymsg",
        provider_config=kwargs.get("config", {"URI": "0.0.0.0:1", "PATH": "/p"}),
        provider_secrets=kwargs.get("secrets", {"PATH": SecretValue("/secret")}),
        xkey=kwargs.get("xkey"),
        host_xkey_public=kwargs.get("host_public", ""),
    )


def test_role_comes_from_the_ids() -> None:
    """Source when the provider is source_id, target when it is the target, else nothing."""
    resolver = _resolver()
    as_target = LinkDefinition("echo", "pymsg", "wasmcloud", "messaging", ("consumer",))
    as_source = LinkDefinition("pymsg", "echo", "wasmcloud", "messaging", ("handler",))
    assert resolver.role(as_target) is Role.TARGET
    assert resolver.role(as_source) is Role.SOURCE
    assert resolver.role(LinkDefinition("a", "b", "wasmcloud", "messaging", ("x",))) is None
    assert resolver.role(LinkDefinition("pymsg", "pymsg", "wasmcloud", "messaging", ("x",))) is None


def test_effective_config_precedence() -> None:
    """provider config < provider secrets < link config < link secrets; keys case-insensitive."""
    host, provider = XKey.generate(), XKey.generate()
    sealed = host.seal(json.dumps({"auth_token": {"kind": "String", "value": "T"}}).encode(), provider.public)
    definition = LinkDefinition(
        "echo",
        "pymsg",
        "wasmcloud",
        "messaging",
        ("consumer",),
        target_config={"uri": "127.0.0.1:2", "AUTH_TOKEN": "plain"},
        source_config={"IGNORED": "yes"},
        target_secrets=sealed,
    )
    link = _resolver(xkey=provider, host_public=host.public).resolve(definition, Role.TARGET)
    assert dict(link.config) == {"URI": "127.0.0.1:2", "PATH": "/secret", "AUTH_TOKEN": "T"}
    assert link.config["auth_token"] == "T"
    assert link.config.is_secret("AUTH_TOKEN")
    assert link.config.is_secret("path")
    assert "T'" not in repr(link.config)
    assert "'T'" not in repr(link)
    assert link.component_id == "echo"


def test_sealed_secrets_without_xkeys_are_an_error() -> None:
    """A link with secrets on a host that sent no xkeys cannot be opened, and says so."""
    definition = LinkDefinition(
        "echo", "pymsg", "wasmcloud", "messaging", ("consumer",), target_secrets=b"xkv1"
    )
    with pytest.raises(ConfigError, match="no xkeys"):
        _resolver().resolve(definition, Role.TARGET)


def test_table_tells_new_duplicate_and_changed() -> None:
    """Sealed bytes differ on every put, so duplicates are judged on the opened config."""
    resolver = _resolver()
    table = LinkTable()
    first = resolver.resolve(
        LinkDefinition(
            "echo", "pymsg", "wasmcloud", "messaging", ("consumer",), target_config={"MODE": "server"}
        ),
        Role.TARGET,
    )
    assert table.outcome(first) is PutOutcome.NEW
    table.record(first)
    assert table.outcome(first) is PutOutcome.DUPLICATE
    changed = resolver.resolve(
        LinkDefinition(
            "echo", "pymsg", "wasmcloud", "messaging", ("consumer",), target_config={"MODE": "client"}
        ),
        Role.TARGET,
    )
    assert table.outcome(changed) is PutOutcome.CHANGED
    assert table.target_link("echo", "default") is first
    assert table.remove(first.key) is first
    assert table.target_link("echo", "default") is None
    assert table.remove(first.key) is None


def test_secrets_parse_rejects_bad_bytes() -> None:
    """Byte secrets must be numbers 0..255."""
    with pytest.raises(ConfigError):
        parse_secrets({"a": {"kind": "Bytes", "value": [256]}}, "test")


def test_non_utf8_byte_secret_cannot_be_config_text() -> None:
    """A byte secret used as a config value must be UTF-8."""
    with pytest.raises(ConfigError, match="not UTF-8"):
        Config({"k": SecretValue(b"\xff")})


# --- subjects ----------------------------------------------------------------------------------


def test_control_subjects_follow_the_spec() -> None:
    """Link puts on the xkey subject when there is one, everything else on the provider id."""
    with_xkey = ControlSubjects.for_provider("default", "pymsg", "XABC")
    assert with_xkey.link_put == "wasmbus.rpc.default.XABC.linkdefs.put"
    assert with_xkey.link_delete == "wasmbus.rpc.default.pymsg.linkdefs.del"
    assert with_xkey.health == "wasmbus.rpc.default.pymsg.health"
    assert with_xkey.shutdown == "wasmbus.rpc.default.pymsg.default.shutdown"
    assert with_xkey.config_update == "wasmbus.rpc.default.pymsg.config.update"
    assert ControlSubjects.for_provider("lat", "p", None).link_put == "wasmbus.rpc.lat.p.linkdefs.put"


def test_host_data_has_xkeys_only_with_both() -> None:
    """Old hosts send neither key; both are needed for the xkey subject."""
    assert not HostData("p", host_xkey_public_key="X").has_xkeys
    assert HostData("p", host_xkey_public_key="X", provider_xkey_private_key="S").has_xkeys


# --- links that cannot be right, layered configs, the log's filters (issue 10) ------------------------


EXPORTS, IMPORTS = frozenset({"consumer"}), frozenset({"handler"})


@pytest.mark.parametrize(
    ("interfaces", "role", "message"),
    [
        (("handler",), Role.TARGET, "a handler link goes from the provider to the component"),
        (("consumer",), Role.SOURCE, "a consumer link goes from the component to the provider"),
        (("consumer", "handler"), Role.TARGET, "points into the provider"),
        (("publisher",), Role.TARGET, "wasmcloud:messaging/publisher is not an interface of this provider"),
        ((), Role.TARGET, "names no wasmcloud:messaging interface"),
    ],
)
def test_links_that_cannot_be_right_say_which_way_they_must_go(
    interfaces: tuple[str, ...], role: Role, message: str
) -> None:
    definition = LinkDefinition("a", "b", "wasmcloud", "messaging", interfaces)
    with pytest.raises(ConfigError, match=message):
        check_interfaces(definition, role, exports=EXPORTS, imports=IMPORTS)


def test_links_the_right_way_pass() -> None:
    check_interfaces(
        LinkDefinition("c", "p", "wasmcloud", "messaging", ("consumer",)),
        Role.TARGET,
        exports=EXPORTS,
        imports=IMPORTS,
    )
    check_interfaces(
        LinkDefinition("p", "c", "wasmcloud", "messaging", ("handler",)),
        Role.SOURCE,
        exports=EXPORTS,
        imports=IMPORTS,
    )


def test_layered_configs_keep_secrets_secret_and_later_layers_win() -> None:
    provider = Config({"FORMAT": "json", "x": "1"})
    first = Config({"AUTH_TOKEN": "plain"}, {"AUTH_TOKEN": SecretValue("s3cret")})
    second = Config({"x": "2"})
    merged = Config.layered(provider, first, second)
    assert dict(merged) == {"FORMAT": "json", "X": "2", "AUTH_TOKEN": "s3cret"}
    assert merged.is_secret("auth_token")
    assert merged.spelled("x") == "x"
    assert "s3cret" not in repr(merged)
    assert merged.secret_values() == ["s3cret"]


def test_the_redactor_masks_credentials_and_secrets() -> None:
    """Headers and query tokens as websockets logs them at debug, and every registered secret."""
    redactor = Redactor()
    redactor.add("registered-s3cret", "abc")  # too short to search for
    assert redactor.scrub("< Authorization: Bearer xyz123") == "< Authorization: <redacted>"
    assert redactor.scrub("> authorization: Basic Zm9v") == "> authorization: <redacted>"
    assert redactor.scrub("< GET /ws?token=t0k&x=1 HTTP/1.1") == "< GET /ws?token=<redacted>&x=1 HTTP/1.1"
    assert redactor.scrub("GET /ws?a=1&token=zz HTTP/1.1") == "GET /ws?a=1&token=<redacted> HTTP/1.1"
    assert redactor.scrub("value registered-s3cret!") == "value <redacted>!"
    assert redactor.scrub("abc stays") == "abc stays"


def test_the_redactor_filters_records_with_arguments() -> None:
    redactor = Redactor()
    record = logging.LogRecord("x", logging.DEBUG, "f", 1, "< %s: %s", ("Authorization", "Bearer t"), None)
    assert redactor.filter(record)
    assert record.getMessage() == "< Authorization: <redacted>"


def test_the_rate_limiter_writes_a_burst_then_holds_back_and_says_how_many() -> None:
    limiter = RateLimiter(burst=2, interval=0.05)

    def record(arg: int) -> logging.LogRecord:
        return logging.LogRecord("x", logging.WARNING, "f", 1, "dropped %d", (arg,), None)

    assert [limiter.filter(record(i)) for i in range(5)] == [True, True, False, False, False]
    other = logging.LogRecord("x", logging.WARNING, "f", 1, "another message", None, None)
    assert limiter.filter(other)  # a different template has its own budget
    time.sleep(0.06)  # the window is measured in time: let it pass
    later = record(9)
    assert limiter.filter(later)
    assert later.getMessage() == "dropped 9 (3 more like this held back)"
