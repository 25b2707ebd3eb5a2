"""Fixtures for the wasmCloud 2.x tests: a real v2 host (``wash dev``) running ``components/v2-echo``.

The host takes ~45 s to start on 2 cores (it compiles the ~18 MB component), so one is
started per test session, on a NATS server of its own, and shared by every v2 test. Where
``wash`` cannot run, those tests skip and say why.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from provider.host.build import ComponentBuilder, ComponentSource
from provider.host.nats_server import NatsServer
from provider.host.wash import WashDev, wash_unusable
from tests.integration.components import CACHE, ROOT


@pytest.fixture(scope="session")
def v2_nats() -> Iterator[NatsServer]:
    """The v2 host's data NATS (and the bridges'): loopback, a random port."""
    with NatsServer() as server:
        yield server


@pytest.fixture(scope="session")
def wash_dev(v2_nats: NatsServer) -> Iterator[WashDev]:
    """``wash dev`` running v2-echo (subscriptions ``ws.in.>``) on :func:`v2_nats`; ready when yielded."""
    reason = wash_unusable()
    if reason is not None:
        pytest.skip(reason)
    source = ComponentSource("v2-echo", ROOT / "components" / "v2-echo", ROOT / "wit")
    wasm = ComponentBuilder(CACHE).build(source)
    host = WashDev(wasm, v2_nats.url, subscriptions="ws.in.>")
    host.start()
    print(f"\nwash dev answered {host.ready_after:.1f} s after it was started")
    try:
        yield host
    finally:
        host.stop()
