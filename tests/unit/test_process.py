"""provider.process: the process-wide malloc settings do what they are for (each run in a
process of its own, since they are process-wide). The open-file limit: test_hostile_clients."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
import uvloop

from provider import process
from provider.errors import ConfigError
from provider.process import event_loop, run

ROOT = Path(__file__).resolve().parents[2]

READS = """
import ctypes, resource, socket, sys, threading, time
from provider.process import M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, _mallopt, keep_read_buffers_on_the_heap
# both start from glibc's defaults, pinned, with the free top of the heap returned (see the test)
assert _mallopt((M_MMAP_THRESHOLD, 128 * 1024), (M_TRIM_THRESHOLD, 128 * 1024))
ctypes.CDLL(None).malloc_trim(0)
applied = keep_read_buffers_on_the_heap() if sys.argv[1] == "on" else None
threading.Thread(target=time.sleep, args=(2,), daemon=True).start()  # as the provider has threads
a, b = socket.socketpair()
for _ in range(10):  # warm up the heap
    a.send(b"x" * 200)
    b.recv(256 * 1024)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(1000):
    a.send(b"x" * 200)
    b.recv(256 * 1024)  # what asyncio does for every read of a socket
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

FAULTS = """
import resource, sys
from provider.process import reuse_freed_memory
applied = reuse_freed_memory() if sys.argv[1] == "on" else None
block = bytearray(64 << 20)  # written through: every page faulted in
del block
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = bytearray(64 << 20)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _run(script: str, mode: str) -> tuple[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", script, mode], capture_output=True, text=True, check=True, cwd=ROOT, timeout=60
    )
    applied, faults = done.stdout.split()
    return applied, int(faults)


def test_socket_reads_reuse_heap_memory_instead_of_mapping_a_buffer_each() -> None:
    """At glibc's default thresholds every 256 KiB read buffer is a fresh mapping (a page fault
    at least per read); with the setting, 1,000 reads fault (almost) never. Both runs set those
    defaults (128 KiB) explicitly and trim the heap first: glibc raises both thresholds
    when it frees a mapped block, and a large free top of the heap serves big blocks without a
    mapping, so the process's history (here, compiling modules where no .pyc may be written)
    could otherwise leave the control with nothing to compare against."""
    applied, kept = _run(READS, "on")
    assert applied == "True"
    fresh = _run(READS, "off")[1]
    assert fresh >= 1000, fresh
    assert kept * 20 < fresh, (kept, fresh)


def test_reuse_freed_memory_serves_a_large_block_from_pages_already_mapped() -> None:
    """After it, a freed 64 MiB block's pages serve the next one (no page faults); without it,
    glibc maps fresh pages and every one of them faults again."""
    applied, reused = _run(FAULTS, "on")
    assert applied == "True"
    fresh = _run(FAULTS, "off")[1]  # 16,384 with 4 KiB pages; fewer where transparent huge pages are on
    assert reused * 10 < fresh


@pytest.mark.parametrize(("loop", "applied"), [("asyncio", True), ("uvloop 0.23.0", False)])
def test_read_buffers_go_on_the_heap_on_asyncios_loop_only(
    monkeypatch: pytest.MonkeyPatch, loop: str, applied: bool
) -> None:
    """asyncio allocates a 256 KiB buffer per read, uvloop reads into one of its own: only the
    first gets the malloc setting (the module says what it costs the second)."""
    calls: list[str] = []
    monkeypatch.setattr(process, "raise_open_file_limit", lambda: calls.append("limit"))

    def heap() -> bool:
        calls.append("heap")
        return True

    monkeypatch.setattr(process, "keep_read_buffers_on_the_heap", heap)
    process.prepare(loop)
    assert calls == (["limit", "heap"] if applied else ["limit"])


def test_the_event_loop_is_uvloop_unless_asked_for_asyncio() -> None:
    name, factory = event_loop({})
    assert name.startswith("uvloop ")
    assert factory is uvloop.new_event_loop
    assert event_loop({"WASMCLOUD_WS_EVENT_LOOP": "uvloop"})[1] is uvloop.new_event_loop
    assert event_loop({"WASMCLOUD_WS_EVENT_LOOP": "asyncio"}) == ("asyncio", None)
    assert event_loop({"WASMCLOUD_WS_EVENT_LOOP": " "})[0].startswith("uvloop ")


@pytest.mark.parametrize("value", ["trio", "UVLOOP", "asyncio,uvloop", "\udcff"])
def test_another_event_loop_is_a_config_error_naming_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match=r"WASMCLOUD_WS_EVENT_LOOP=.*expected one of uvloop, asyncio"):
        event_loop({"WASMCLOUD_WS_EVENT_LOOP": value})


def test_without_uvloop_the_default_is_asyncio_and_asking_for_it_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError
    assert event_loop({}) == ("asyncio", None)
    with pytest.raises(ConfigError, match="uvloop is not installed"):
        event_loop({"WASMCLOUD_WS_EVENT_LOOP": "uvloop"})


def test_run_returns_what_the_coroutine_returns_on_the_chosen_loop() -> None:
    async def which() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert run(which(), event_loop({})).startswith("uvloop")
    assert run(which(), event_loop({"WASMCLOUD_WS_EVENT_LOOP": "asyncio"})).startswith("asyncio")


AT_THE_LIMIT = """
import asyncio, logging, os, resource, sys
from provider.process import out_of_descriptors, watch_open_files
logging.basicConfig(stream=sys.stdout, format="%(name)s %(message)s")
below = out_of_descriptors()
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

async def main():  # the loop's own descriptors are open before the limit comes down
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) - 1, hard))
    at = out_of_descriptors()
    try:
        await asyncio.wait_for(watch_open_files(0.02), 0.5)  # 25 looks: one line (once per 10 s)
    except TimeoutError:
        pass
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return at

at = asyncio.run(main())
print(below, at, out_of_descriptors())
"""


def test_at_the_open_file_limit_the_watch_says_so_once_per_interval() -> None:
    out = subprocess.run(
        [sys.executable, "-c", AT_THE_LIMIT], capture_output=True, text=True, timeout=60, cwd=ROOT, check=True
    ).stdout.splitlines()
    assert out[-1] == "False True False"
    lines = [line for line in out if "accept(): out of file descriptors" in line]
    assert len(lines) == 1, out
    assert lines[0].startswith("provider.open_files ")
