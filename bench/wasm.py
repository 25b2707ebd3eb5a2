"""Configuration 3 of ``make bench``: the provider with ``echo.wasm`` run by the local host.

The local host (``python -m provider.host run``) runs in its own process with its own NATS
server, exactly as ``make run`` does, on a manifest written here: the echo component
(built on demand, cached) linked both ways with the provider in server mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from provider.host.machine import free_port
from provider.host.nats_server import NatsServer
from provider.host.wadm import linked_component_manifest

ROOT = Path(__file__).resolve().parent.parent
INSTANCES = 4
"""Wasm instances (worker threads, one Store each): enough to keep both cores busy."""


def _child_cpu(pid: int, name: str, command: str) -> dict[str, int]:
    """``{name: child pid}`` for the child of ``pid`` running ``command`` (none found: ``{}``)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{child}/comm").read_text().strip() == command:
                    return {name: int(child)}
    return {}


@contextlib.asynccontextmanager
async def provider_wasm(nats: NatsServer, launcher: Path) -> AsyncIterator[object]:
    """Run the local host on a one-component manifest; yield a ``bench.ws.Target``.

    ``nats`` and ``launcher`` are unused: the local host starts its own, as ``make run`` does.
    """
    from bench.ws import PROVIDER_LINK, Target

    port = free_port()
    with tempfile.TemporaryDirectory() as directory:
        manifest = Path(directory) / "wadm.yaml"
        manifest.write_text(
            linked_component_manifest(
                "echo",
                ROOT / "build" / "components" / "echo.wasm",  # built from components/echo on demand
                handler={"MODE": "server", "URI": f"127.0.0.1:{port}", **PROVIDER_LINK},
                consumer={"MODE": "server"},
                instances=INSTANCES,
                name="bench-echo",
            )
        )
        host = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "provider.host", "run", str(manifest),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL, cwd=ROOT,
        )  # fmt: skip
        drain: asyncio.Task[bytes] | None = None
        try:
            assert host.stdout is not None
            provider_pid = 0
            async with asyncio.timeout(300):  # the first run builds and compiles echo.wasm
                async for raw in host.stdout:
                    line = raw.decode(errors="replace")
                    found = re.search(r"provider .*\(pid (\d+)\)", line)
                    if found:
                        provider_pid = int(found.group(1))
                    if "Ready." in line:
                        break
                else:
                    raise RuntimeError("the local host did not start")
            drain = asyncio.create_task(host.stdout.read())  # a full pipe would stall the host
            url = f"ws://127.0.0.1:{port}/ws"
            # the local host's process runs the wasm instances (its NATS server is another)
            nats_cpu = _child_cpu(host.pid, "nats", "nats-server")
            cpu = {"server": provider_pid, "component": host.pid, **nats_cpu}
            yield Target("provider + echo.wasm (local host)", url, provider_pid, cpu, broadcasts=False)
        finally:
            if host.returncode is None:
                host.send_signal(signal.SIGINT)
            try:
                async with asyncio.timeout(30):
                    await host.wait()
            except TimeoutError:
                host.kill()
                await host.wait()
            if drain is not None:
                await drain
