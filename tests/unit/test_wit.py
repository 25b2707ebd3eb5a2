"""The WIT in ``wit/`` and the codec in ``provider.wrpc.messaging`` describe the same functions."""

from __future__ import annotations

import re
from pathlib import Path

from provider.wrpc.messaging import BROKER_MESSAGE, HANDLE_MESSAGE, PUBLISH, REQUEST, Function

WIT = Path(__file__).resolve().parents[2] / "wit"
MESSAGING = (WIT / "deps" / "messaging" / "messaging.wit").read_text()


def _signature(name: str) -> str:
    match = re.search(rf"^\s*{re.escape(name)}: func\((.*?)\)\s*->\s*(.*?);", MESSAGING, re.M)
    assert match, f"{name} not found in messaging.wit"
    return f"params({match.group(1)}) -> {match.group(2)}"


def _codec_signature(func: Function[object, object]) -> str:
    params = func.params.wit
    if not params.startswith("params("):
        params = f"params(msg: {params})"
    return f"{params} -> {func.results.wit}"


def test_package_version_is_0_2_0() -> None:
    """The messaging package is the one wasmCloud 1.x links: 0.2.0."""
    assert MESSAGING.startswith("package wasmcloud:messaging@0.2.0;")


def test_broker_message_fields_in_order() -> None:
    """Record fields encode in declaration order: the codec follows the WIT's order."""
    match = re.search(r"record broker-message \{(.*?)\}", MESSAGING, re.S)
    assert match
    fields = [line.split(":")[0].strip() for line in match.group(1).split(",") if ":" in line]
    assert fields == ["subject", "body", "reply-to"]
    assert BROKER_MESSAGE.wit == "broker-message"


def test_function_signatures_match_the_codec() -> None:
    """Each function's params and results in the WIT are what the codec encodes."""
    for func in (HANDLE_MESSAGE, PUBLISH, REQUEST):
        assert _signature(func.name) == _codec_signature(func)  # type: ignore[arg-type]


def test_provider_world_exports_consumer_and_imports_handler() -> None:
    """The provider's world is the messaging provider's world."""
    world = (WIT / "world.wit").read_text()
    block = re.search(r"world provider \{(.*?)\}", world, re.S)
    assert block
    assert "export wasmcloud:messaging/consumer@0.2.0;" in block.group(1)
    assert "import wasmcloud:messaging/handler@0.2.0;" in block.group(1)
