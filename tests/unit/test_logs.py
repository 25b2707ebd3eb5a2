"""The provider's log setup: no credential from a WebSocket handshake reaches a log line."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from provider.wasmcloud import logs


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The provider's logging at ``trace`` (websockets' debug lines on), into a buffer."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    logs.configure("trace", structured=False, stream=stream)
    yield stream
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])


def test_handshake_header_values_and_queries_are_redacted(captured: io.StringIO) -> None:
    """websockets logs each header and the request line at debug: names and paths stay, values go."""
    client = logging.getLogger("websockets.client")
    server = logging.getLogger("websockets.server")
    client.debug("> GET %s HTTP/1.1", "/feed?token=s3cret")
    client.debug("> %s: %s", "Authorization", "Bearer s3cret")
    server.debug("< %s %s %s", "GET", "/ws?token=s3cret&room=a", "HTTP/1.1")
    server.debug("< %s: %s", "X-Api-Key", "s3cret")
    server.debug("< %s %s %s", "GET", "/ws", "HTTP/1.1")
    client.debug("= connection is %s", "OPEN")
    logging.getLogger("provider.runtime").info("> %s: %s", "not", "a handshake")
    text = captured.getvalue()
    assert "s3cret" not in text
    assert "websockets.client: > GET /feed?<redacted> HTTP/1.1" in text
    assert "websockets.client: > Authorization: <redacted>" in text
    assert "websockets.server: < GET /ws?<redacted> HTTP/1.1" in text
    assert "websockets.server: < X-Api-Key: <redacted>" in text
    assert "websockets.server: < GET /ws HTTP/1.1" in text
    assert "connection is OPEN" in text
    assert "provider.runtime: > not: a handshake" in text
