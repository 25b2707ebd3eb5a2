"""``make run-v2`` as a user runs it: the chat page through the bridge on a real wasmCloud 2.x host.

``python -m provider.host run-v2`` starts NATS, ``wash dev`` running ``components/chat`` and a
bridge; headless Chromium opens the page, joins, sends a message and sees it (so does a second,
Python, client); then SIGINT (a terminal's Ctrl-C) stops everything, and no process is left.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from provider.host.machine import descendants, free_port
from provider.host.wash import wash_unusable
from tests.integration.components import ROOT
from tests.integration.test_browser import page_head, run_in_chromium

START = 600.0
"""Seconds run-v2 may take to be ready: wash compiles the chat (~45 s; minutes on a busy machine)."""
pytestmark = pytest.mark.timeout(START + 120)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"  # a zombie has exited (its parent has not reaped it yet)


async def test_run_v2_serves_the_chat_in_chromium_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    """The page works in a browser through bridge and v2 host; SIGINT stops bridge, wash and NATS."""
    reason = wash_unusable()
    if reason is not None:
        pytest.skip(reason)
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "provider.host", "run-v2", "--uri", f"127.0.0.1:{port}",
        cwd=ROOT, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, process_group=0,
    )  # fmt: skip
    assert process.stdout is not None
    seen: list[str] = []
    pids: list[int] = []
    children: list[int] = []
    drain: asyncio.Task[bytes] | None = None
    try:
        async with asyncio.timeout(START):
            async for raw in process.stdout:
                seen.append(raw.decode(errors="replace").rstrip())
                pids += [int(p) for p in re.findall(r"^\s+(?:wash dev|bridge)\s+pid (\d+)", seen[-1])]
                if "Ready. Ctrl-C stops everything." in seen[-1]:
                    break
            else:
                raise AssertionError("run-v2 ended before it was ready:\n" + "\n".join(seen[-60:]))
        children += descendants(process.pid)
        drain = asyncio.create_task(process.stdout.read())  # a full pipe would stall it
        assert f"open       http://127.0.0.1:{port}/" in [line.strip() for line in seen]
        assert len(pids) == 2, seen
        assert set(pids) <= set(children)  # and nats-server

        head = await page_head(port)
        assert head[0] == b"HTTP/1.1 200 OK", head
        await run_in_chromium(port, tmp_path / "profile")

        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), 60) == 0
        output = (await drain).decode(errors="replace")
        assert "stopped: bridge, wash dev and NATS" in output
        left = [pid for pid in children if _alive(pid)]
        assert not left, f"still running after run-v2 stopped: {left}"
    finally:
        if process.returncode is None:
            children += descendants(process.pid)  # if it never got ready
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
        for pid in children:  # each in a process group of its own: a failed test must not leave them
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if drain is not None and not drain.done():
            drain.cancel()
