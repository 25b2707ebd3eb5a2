"""The wasm components the local-host tests run, built once per test session.

Builds are cached on disk by a hash of their inputs (``.cache/components``) and compiled
components by wasm hash (``.cache/wasmtime``), so only the first run on a clone pays for
componentize-py (~15 s a component) and the compile (~10 s a component).
"""

from __future__ import annotations

import functools
import textwrap
from collections.abc import Mapping
from pathlib import Path

from provider.host.build import ComponentBuilder, ComponentSource, find_sources

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


def _properties(config: Mapping[str, str], indent: int) -> str:
    lines = "\n".join(f"{key}: {value!r}" for key, value in config.items())
    return textwrap.indent(lines, " " * indent)


def manifest(
    component: str,
    wasm: Path,
    *,
    handler: Mapping[str, str],
    consumer: Mapping[str, str],
    instances: int = 1,
    name: str = "test-app",
) -> str:
    """A manifest running ``wasm`` as ``component``, linked both ways with the provider."""
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
