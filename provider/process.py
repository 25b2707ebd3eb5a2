"""Settings of the whole process, made once at start by each entry point (:func:`prepare`). I/O.

* :func:`raise_open_file_limit`: the soft ``RLIMIT_NOFILE`` up to the hard limit, so
  ``MAX_CONNECTIONS=10000`` can be reached (the soft limit is often 1024).
* :func:`keep_read_buffers_on_the_heap`, on asyncio's loop only: asyncio reads every socket
  with ``recv(256 KiB)``, so each read allocates 256 KiB and shrinks it to what came. That is
  above glibc's ``mmap`` threshold (128 KiB, and its dynamic adjustment never catches up, since
  what is freed is the shrunk buffer), so every read costs ``mmap`` + ``mremap`` + ``munmap``,
  page faults on fresh pages and, with more than one thread, a TLB shootdown across CPUs:
  about 18 µs a read on a 2-core VM against 4 µs from the heap. Blocks up to 8 MiB come from
  the heap instead, and up to 32 MiB of freed memory at its top is kept for reuse. A no-op
  where the C library has no ``mallopt`` (musl). On uvloop, which reads into one buffer of
  its own, the setting buys nothing and costs large blocks dearly: fixed thresholds turn off
  glibc's own adjustment, and then a megabyte-sized block (a 1 MiB frame's JSON text, say)
  faulted in all of its pages again at nearly every allocation, measured 258 faults and
  ~2.5 ms for each 1 MiB frame orjson wrote in the provider, against none and 0.06 ms at
  glibc's defaults. So uvloop runs with those.
* :func:`reuse_freed_memory`: the local host's stronger setting for its large ``list<u8>``
  values (no ``mmap`` at all, one arena, up to 512 MiB of freed memory kept for reuse).
* :func:`run`: the event loop the provider and the bridge run on. uvloop (libuv's loop, in C)
  when it is installed, which ``pip install`` does on Linux and macOS; the standard asyncio
  loop when it is not, or when ``WASMCLOUD_WS_EVENT_LOOP=asyncio`` asks for it. Measured in
  runs alternating the two (``make bench`` also measures ``--variant
  asyncio=env:WASMCLOUD_WS_EVENT_LOOP=asyncio`` beside it): ~9 % less provider CPU per echo at
  one connection, ~2 % at 50 × 8, less memory per session (README, "What the latest changes
  bought").
  Nothing in the provider depends on which loop it is, with one difference it makes up for:
  out of file descriptors, asyncio's ``accept()`` fails, which is logged (``provider.loop``,
  once per 10 s) while clients wait in the backlog; libuv instead accepts and closes each new
  connection at once, telling nobody. On uvloop :func:`watch_open_files` therefore looks
  once a second and logs the same condition, as often.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import importlib.metadata
import logging
import os
import resource
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

from provider.errors import ConfigError

log = logging.getLogger("provider")
files_log = logging.getLogger("provider.open_files")

T = TypeVar("T")

EVENT_LOOP_VARIABLE = "WASMCLOUD_WS_EVENT_LOOP"
"""The environment variable that picks the event loop: ``uvloop``, ``asyncio``, or unset (uvloop if
installed)."""
EVENT_LOOPS = ("uvloop", "asyncio")

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


def prepare(loop_name: str) -> None:
    """What the provider and the bridge set at start, to run on the loop :func:`event_loop` named
    ``loop_name``: the open-file limit, and on asyncio's loop the read buffers (see the module)."""
    raise_open_file_limit()
    if loop_name == "asyncio" and keep_read_buffers_on_the_heap():
        log.debug("malloc: socket read buffers come from the heap (mmap threshold %d bytes)", MMAP_THRESHOLD)


LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def event_loop(environ: Mapping[str, str]) -> tuple[str, LoopFactory | None]:
    """The loop :data:`EVENT_LOOP_VARIABLE` asks for: its name and factory (``None``: asyncio's own).

    Unset or empty means uvloop when it can be imported, else asyncio. Raises
    :class:`ConfigError` for another value, or for ``uvloop`` when it is not installed.
    """
    asked = environ.get(EVENT_LOOP_VARIABLE, "").strip()
    if asked not in ("", *EVENT_LOOPS):
        raise ConfigError(
            f"{EVENT_LOOP_VARIABLE}={asked!r}: expected one of {', '.join(EVENT_LOOPS)} (or unset)"
        )
    if asked == "asyncio":
        return "asyncio", None
    try:
        import uvloop
    except ImportError:
        if asked == "uvloop":
            raise ConfigError(f"{EVENT_LOOP_VARIABLE}=uvloop, but uvloop is not installed") from None
        return "asyncio", None
    return f"uvloop {importlib.metadata.version('uvloop')}", uvloop.new_event_loop


def out_of_descriptors() -> bool:
    """Whether this process cannot open one more file descriptor (it is at its open-file limit)."""
    try:
        fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        return exc.errno in (errno.EMFILE, errno.ENFILE)
    os.close(fd)
    return False


OPEN_FILES_INTERVAL = 1.0
"""Seconds between two looks of :func:`watch_open_files` (each opens and closes one descriptor: ~3 µs)."""


async def watch_open_files(interval: float = OPEN_FILES_INTERVAL, every: float = 10.0) -> None:
    """Log while the process is at its open-file limit, where libuv closes every new connection
    as it accepts it, with no error reaching the program: when it is first seen, then at most
    once per ``every`` seconds while it lasts (as asyncio's own ``accept()`` errors are logged)."""
    loop = asyncio.get_running_loop()
    said = -every
    while True:
        await asyncio.sleep(interval)
        if out_of_descriptors() and loop.time() - said >= every:
            said = loop.time()
            files_log.error(
                "accept(): out of file descriptors (the limit is %d): the event loop closes every new "
                "connection at once until some are freed",
                resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            )


async def _watching(main: Coroutine[Any, Any, T]) -> T:
    watch = asyncio.create_task(watch_open_files())
    try:
        return await main
    finally:
        watch.cancel()


def run(main: Coroutine[Any, Any, T], loop: tuple[str, LoopFactory | None]) -> T:
    """Run ``main`` to the end on the loop :func:`event_loop` chose (as ``asyncio.run`` does);
    on uvloop, with :func:`watch_open_files` beside it."""
    name, factory = loop
    log.info("event loop: %s", name)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main if factory is None else _watching(main))
