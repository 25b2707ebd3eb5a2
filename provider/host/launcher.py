"""Launching the provider as a wasmCloud host does (protocol spec §1.1, §1.2).

A host extracts the provider's executable from its archive and runs it directly: no
shell, no arguments, an **empty environment** (no PATH, no HOME; only ``OTEL_*`` and
``RUST_LOG`` pass), HostData written on stdin, stdout and stderr inherited. The
executable we ship for that is a two-line ``/bin/sh`` launcher that ``exec``\\ s this
environment's Python by absolute path (:func:`write_launcher`, ``make launcher``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import sys
from collections import deque
from collections.abc import Mapping
from pathlib import Path

from provider.wasmcloud.hostdata import HostData

LAUNCHER_NAME = "wasmcloud-ws-provider"


def launcher_script(python: str | None = None) -> str:
    """The launcher's text: everything by absolute path, Python isolated from cwd and env (``-I``)."""
    interpreter = python or sys.executable
    return (
        "#!/bin/sh\n"
        "# wasmCloud WebSocket messaging provider: the executable a provider archive carries.\n"
        "# A host runs it with an empty environment, so every path here is absolute; -I keeps\n"
        "# the host's working directory and environment from shadowing the provider's code.\n"
        f"exec {shlex.quote(interpreter)} -I -m provider\n"
    )


def write_launcher(path: Path, python: str | None = None) -> Path:
    """Write the launcher to ``path`` (mode 0755) and return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(launcher_script(python))
    path.chmod(0o755)
    return path


def host_environment() -> dict[str, str]:
    """What a host passes its providers: ``RUST_LOG`` and ``OTEL_*`` only."""
    return {k: v for k, v in os.environ.items() if k == "RUST_LOG" or k.startswith("OTEL_")}


class ProviderProcess:
    """A provider process started the host's way, with its stderr kept for inspection.

    ``echo`` copies the provider's log lines to this process's stderr (the host's output).
    ``cwd`` is its working directory (default: this process's). ``own_process_group``
    starts it in a process group of its own, so a terminal's Ctrl-C reaches only the host,
    which then shuts it down in order (the local host's ``run`` does that). ``env`` adds
    variables to what a host passes (``make bench`` uses it for A/B runs of one setting).
    """

    def __init__(
        self,
        executable: Path,
        *,
        echo: bool = False,
        keep_lines: int = 10_000,
        cwd: Path | None = None,
        own_process_group: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.executable = executable
        self.env = dict(env or {})
        self.echo = echo
        self.cwd = cwd
        self.own_process_group = own_process_group
        self.lines: deque[str] = deque(maxlen=keep_lines)
        self.total_lines = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.returncode

    async def start(self, host_data: HostData | bytes) -> None:
        """Spawn with an empty environment, write the HostData line, close stdin."""
        line = host_data.encode() if isinstance(host_data, HostData) else host_data
        self._proc = await asyncio.create_subprocess_exec(
            str(self.executable),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**host_environment(), **self.env},
            cwd=self.cwd,
            process_group=0 if self.own_process_group else None,
        )
        self._reader = asyncio.create_task(self._read())
        assert self._proc.stdin is not None
        self._proc.stdin.write(line)
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            await self._proc.stdin.drain()
        self._proc.stdin.close()

    async def _read(self) -> None:
        assert self._proc is not None
        assert self._proc.stdout is not None
        async for raw in self._proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            if self.echo:
                print(line, file=sys.stderr, flush=True)
            async with self._changed:
                self.lines.append(line)
                self.total_lines += 1
                self._changed.notify_all()
        async with self._changed:
            self._changed.notify_all()

    @property
    def output(self) -> str:
        """Everything the provider wrote so far."""
        return "\n".join(self.lines)

    async def wait_for_line(self, pattern: str, timeout: float = 5.0, since: int = 0) -> str:
        """The first output line matching ``pattern`` (a regex), waiting up to ``timeout``.

        ``since`` skips the lines before that count of :attr:`total_lines` (take it before
        doing what should cause the line).
        """
        regex = re.compile(pattern)
        async with asyncio.timeout(timeout), self._changed:
            while True:
                first = self.total_lines - len(self.lines)
                for index, line in enumerate(self.lines, start=first):
                    if index >= since and regex.search(line):
                        return line
                if self._reader is not None and self._reader.done():
                    raise EOFError(f"the provider exited without writing {pattern!r}:\n{self.output}")
                await self._changed.wait()

    async def wait(self, timeout: float = 5.0) -> int:
        """Wait for the process to exit; its exit code."""
        assert self._proc is not None
        async with asyncio.timeout(timeout):
            code = await self._proc.wait()
            if self._reader is not None:
                await self._reader
        return code

    async def kill(self) -> None:
        """SIGKILL, as a host does when it drops the process. Idempotent."""
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
            await self._proc.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
