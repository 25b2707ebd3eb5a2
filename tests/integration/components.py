"""The wasm components the local-host tests run, built once per test session.

Builds are cached on disk by a hash of their inputs (``.cache/components``) and compiled
components by wasm hash (``.cache/wasmtime``), so only the first run on a clone pays for
componentize-py (~15 s a component) and the compile (~10 s a component).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from provider.host.build import ComponentBuilder, ComponentSource, find_sources
from provider.host.local import LocalHost
from provider.host.nats_server import NatsServer
from provider.host.wadm import load

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache"
BUILD_TIMEOUT = 900
"""Seconds a test that builds every component may take on a cold cache (a fresh clone, a busy machine)."""


@functools.cache
def built() -> Mapping[str, Path]:
    """Every demo component, and the test-only ``faulty`` one: name → its ``.wasm`` in the cache."""
    builder = ComponentBuilder(CACHE)
    sources = {source.name: source for source in find_sources(ROOT)}
    sources["faulty"] = ComponentSource("faulty", ROOT / "tests" / "components" / "faulty", ROOT / "wit")
    return {name: builder.build(source) for name, source in sorted(sources.items())}


@asynccontextmanager
async def running(
    text: str,
    nats: NatsServer,
    launcher: Path,
    *,
    base_dir: Path = ROOT,
    source: str = "test.yaml",
    **options: Any,
) -> AsyncIterator[LocalHost]:
    """``text`` (a manifest) running on the local host, on a lattice of its own; stopped afterwards."""
    app = load(text, source=source)
    host = LocalHost(
        app,
        nats.url,
        base_dir=base_dir,
        cache_dir=CACHE,
        launcher=launcher,
        lattice=f"t{uuid.uuid4().hex[:12]}",
        **options,
    )
    async with host:
        yield host
