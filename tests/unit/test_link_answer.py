"""``LinkAnswer``: the provider's structured answer to a link put or delete that asked for one."""

from __future__ import annotations

import json

import pytest

from provider.errors import ConfigError
from provider.wasmcloud.links import ANSWER_LIMIT, ERROR_LIMIT, LinkAnswer, LinkOp


def test_answers_round_trip_and_read_as_one_line() -> None:
    """Applied answers carry no error; refusals carry the reason; ``text()`` says what happened."""
    put = LinkAnswer(LinkOp.PUT, True, "a -(x)-> b")
    assert json.loads(put.encode()) == {"op": "put", "applied": True, "link": "a -(x)-> b"}
    assert LinkAnswer.decode(put.encode()) == put
    assert put.text() == "put link a -(x)-> b"
    refused = LinkAnswer(LinkOp.PUT, False, "a -(x)-> b", "URI='nowhere': must be host:port")
    assert LinkAnswer.decode(refused.encode()) == refused
    assert refused.text() == "rejected link a -(x)-> b: URI='nowhere': must be host:port"
    deleted = LinkAnswer(LinkOp.DELETE, True, "l")
    assert deleted.text() == "deleted link l"
    assert (
        LinkAnswer(LinkOp.DELETE, False, "l", "no such link").text() == "did not delete link l: no such link"
    )


def test_a_refusal_always_has_a_reason_and_a_long_one_is_cut() -> None:
    assert LinkAnswer.decode(b'{"op": "put", "applied": false, "link": "l"}').error == "no reason given"
    assert json.loads(LinkAnswer(LinkOp.PUT, False, "l").encode())["error"] == "no reason given"
    long = LinkAnswer(LinkOp.PUT, False, "l", "x" * (ERROR_LIMIT + 10)).encode()
    assert len(long) < ANSWER_LIMIT
    assert json.loads(long)["error"].endswith("… (10 more characters)")
    # An applied answer's stray error is not taken for a reason.
    assert LinkAnswer.decode(b'{"op": "put", "applied": true, "link": "l", "error": "x"}').error == ""


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xff",
        b"null",
        b"1",
        b'"put"',
        b"{}",
        b'{"op": "get", "applied": true, "link": "l"}',
        b"[" * 100_000,
    ],
)
def test_anything_else_is_a_config_error(payload: bytes) -> None:
    with pytest.raises(ConfigError, match="link answer"):
        LinkAnswer.decode(payload)
