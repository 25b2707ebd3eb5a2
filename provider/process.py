"""Settings of the whole process, made once at start by each entry point (:func:`prepare`). I/O.

* :func:`raise_open_file_limit`: the soft ``RLIMIT_NOFILE`` up to the hard limit, so
  ``MAX_CONNECTIONS=10000`` can be reached (the soft limit is often 1024).
* :func:`keep_read_buffers_on_the_heap`: asyncio reads every socket with ``recv(256 KiB)``,
  so each read allocates 256 KiB and shrinks it to what came. That is above glibc's
  ``mmap`` threshold (128 KiB, and its dynamic adjustment never catches up, since what is
  freed is the shrunk buffer), so every read costs ``mmap`` + ``mremap`` + ``munmap``, page
  faults on fresh pages and, with more than one thread, a TLB shootdown across CPUs: about
  18 µs a read on a 2-core VM against 4 µs from the heap. Blocks up to 8 MiB come from the
  heap instead, and up to 32 MiB of freed memory at its top is kept for reuse rather than
  handed back at once (so 1 MiB frames, each a few MiB of buffers, reuse pages too): the
  price is that much memory kept after a burst of large frames (measured: 43 instead of
  38 MiB resident after 1 MiB echoes). A no-op where the C library has no ``mallopt`` (musl).
* :func:`reuse_freed_memory`: the local host's stronger setting for its large ``list<u8>``
  values (no ``mmap`` at all, one arena, up to 512 MiB of freed memory kept for reuse).
"""

from __future__ import annotations

import ctypes
import logging
import resource

log = logging.getLogger("provider")

MAX_OPEN_FILES = 1 << 20

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -3, -4, -8
"""glibc's ``mallopt`` parameters (``<malloc.h>``)."""
MMAP_THRESHOLD = 8 << 20
"""Allocations from this size up are mapped on their own; smaller ones come from the heap."""
TRIM_THRESHOLD = 32 << 20
"""Free memory at the top of the heap beyond this is returned to the system."""
MALLOC_KEEP = 512 << 20
"""Bytes of freed memory :func:`reuse_freed_memory` lets glibc keep for reuse (M_TRIM_THRESHOLD)."""


def raise_open_file_limit() -> None:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; say what it is either way."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, MAX_OPEN_FILES)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("open files: could not raise the limit from %d to %d: %s", soft, target, exc)
            return
        log.info("open files: raised the soft limit from %d to %d (the hard limit)", soft, target)
    else:
        log.info("open files: the limit is %d", soft)


def _mallopt(*settings: tuple[int, int]) -> bool:
    """Apply glibc ``mallopt`` settings; whether every one was taken (``False`` without glibc)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return all(mallopt(option, value) == 1 for option, value in settings)


def keep_read_buffers_on_the_heap() -> bool:
    """Set glibc's mmap and trim thresholds (see the module); whether the C library took them."""
    return _mallopt((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def reuse_freed_memory(keep: int = MALLOC_KEEP) -> bool:
    """Have glibc's malloc reuse freed memory for large blocks instead of mapping fresh pages.

    Returns whether it applied (``False`` on a C library without glibc's ``mallopt``).

    Why: lowering or lifting a 1 MiB ``list<u8>`` allocates a 32 MiB array of C values in the
    local host and as much again inside wasmtime (its own ``Val`` list), so a 1 MiB echo
    allocates and frees ~170 MiB. glibc serves every block of 32 MiB or more with a fresh
    ``mmap`` and unmaps it on free, so every call pays a page fault and the kernel's zeroing
    for each page: measured, half the local host's CPU time on 1 MiB echoes. With ``mmap`` off
    for malloc (``M_MMAP_MAX=0``), one arena (``M_ARENA_MAX=1``) and up to ``keep`` bytes of
    freed memory kept rather than returned (``M_TRIM_THRESHOLD``), the next call reuses the
    same pages (asyncio's read buffers too). The price: the process keeps up to ``keep``
    bytes it no longer uses. The local host's ``run`` command calls it at start.
    """
    return _mallopt((M_MMAP_MAX, 0), (M_ARENA_MAX, 1), (M_TRIM_THRESHOLD, keep))


def prepare() -> None:
    """What the provider and the bridge set at start: the open-file limit and the read buffers."""
    raise_open_file_limit()
    if keep_read_buffers_on_the_heap():
        log.debug("malloc: socket read buffers come from the heap (mmap threshold %d bytes)", MMAP_THRESHOLD)
