"""The v2 bridge as a process, and ``run-v2``: the chat page on a real wasmCloud 2.x host. I/O.

:class:`BridgeProcess` runs ``python -m provider bridge …`` as a user would and knows when
it is ready (its ``bridge ready`` log line); the tests, ``make run-v2`` and the benchmark
start bridges through it. :func:`run_v2` is ``python -m provider.host run-v2`` (``make
run-v2``): a NATS server, ``wash dev`` running the chat component with subscriptions
``ws.in.>,ws.event.>``, and a bridge serving ``components/chat/static`` — Ctrl-C stops the
bridge (sessions closed 1001), then wash, then NATS.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

from provider.host.launcher import ProviderProcess

READY = re.compile(r"bridge ready: (wss?://\S+) <-> NATS \S+, prefix '([^']*)', instance (\S+)")


class BridgeProcess(ProviderProcess):
    """``python -m provider bridge --nats URL KEY=VALUE…`` with its log kept (``echo`` copies it out).

    ``keys`` become ``KEY=VALUE`` arguments; ``environment`` is added to this process's own
    (for ``WS_BRIDGE_*`` variables). :meth:`launch` returns once the bridge says it is ready.
    """

    def __init__(
        self,
        nats_url: str,
        keys: Mapping[str, str] | None = None,
        *,
        arguments: tuple[str, ...] = (),
        environment: Mapping[str, str] | None = None,
        log_level: str = "info",
        echo: bool = False,
        cwd: Path | None = None,
        own_process_group: bool = False,
    ) -> None:
        super().__init__(Path(sys.executable), echo=echo, cwd=cwd, own_process_group=own_process_group)
        self.command = [
            sys.executable,
            "-m",
            "provider",
            "bridge",
            "--nats",
            nats_url,
            "--log-level",
            log_level,
            *(f"{key}={value}" for key, value in (keys or {}).items()),
            *arguments,
        ]
        self.environment = {**os.environ, **(environment or {})}
        self.url = ""
        """``ws://host:port/path`` once ready."""
        self.prefix = ""
        self.tag = ""
        """The instance tag: its sessions are ``<prefix>.session.<tag>.<rand>``."""

    async def launch(self, timeout: float = 15.0) -> BridgeProcess:
        """Start it and wait for ``bridge ready`` (``EOFError`` with its output if it exits first)."""
        self._proc = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=self.environment,
            cwd=self.cwd,
            process_group=0 if self.own_process_group else None,
        )
        self._reader = asyncio.create_task(self._read())
        line = await self.wait_for_line(READY.pattern, timeout)
        found = READY.search(line)
        assert found is not None
        self.url, self.prefix, self.tag = found.group(1), found.group(2), found.group(3)
        return self

    async def exited(self, timeout: float = 15.0) -> int:
        """Wait for it to exit by itself (a bad setting); its exit code."""
        return await self.wait(timeout)

    async def terminate(self, signum: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Stop it by PID with ``signum``; SIGKILL if it is still there after ``timeout``. Its exit code."""
        if self._proc is None:
            return 0
        if self._proc.returncode is None:
            self._proc.send_signal(signum)
        try:
            return await self.wait(timeout)
        except TimeoutError:
            await self.kill()
            assert self._proc.returncode is not None
            return self._proc.returncode

    async def __aenter__(self) -> BridgeProcess:
        return await self.launch()

    async def __aexit__(self, *exc: object) -> None:
        await self.terminate()
