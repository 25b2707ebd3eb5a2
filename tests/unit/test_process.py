"""provider.process: the process-wide malloc settings do what they are for (each run in a
process of its own, since they are process-wide). The open-file limit: test_hostile_clients."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

READS = """
import resource, socket, sys, threading, time
from provider.process import keep_read_buffers_on_the_heap
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
    """Without the setting every 256 KiB read buffer is a fresh mapping (a page fault at least
    per read); with it, 1,000 reads fault (almost) never."""
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
