"""The chat demo in a real browser: headless Chromium opens the page the provider serves, joins the
chat over ``/ws``, sends a message and sees it come back (and a second, Python, client sees it too).

Chromium is Debian's package (``make chromium`` installs it; ``make test`` depends on that). It is
driven over the Chrome DevTools Protocol with the websockets library, nothing downloaded: it
starts with ``--remote-debugging-port=0`` and announces the endpoint it picked on stderr
(``DevTools listening on ws://…``, also written to ``DevToolsActivePort`` in its profile, but
possibly a moment later). Waits inside the page use MutationObserver promises with deadlines,
awaited through ``Runtime.evaluate``; no polling, no sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from provider.host.machine import free_port
from provider.host.nats_server import NatsServer
from tests.integration.components import BUILD_TIMEOUT, ROOT, built, running

pytestmark = pytest.mark.timeout(BUILD_TIMEOUT)

CHROMIUM = Path("/usr/bin/chromium")
WAIT = 20.0
"""Seconds for each step in the browser (a cold Chromium start on a busy 2-core machine is slow)."""


class CdpError(Exception):
    """Chromium answered a DevTools command with an error, or a page script threw."""


class DevTools:
    """A minimal Chrome DevTools Protocol client over one browser-level WebSocket (flat sessions)."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._events: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for frame in self.ws:
            message = json.loads(frame)
            if "id" in message:
                future = self._pending.pop(message["id"], None)
                if future is not None and not future.done():
                    future.set_result(message)
            elif "method" in message:
                self._events.setdefault(message["method"], asyncio.Queue()).put_nowait(message)

    async def send(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> Any:
        """Send a command and return its result (raises :class:`CdpError` for an error answer)."""
        call_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        message: dict[str, Any] = {"id": call_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        await self.ws.send(json.dumps(message))
        answer = await asyncio.wait_for(future, WAIT)
        if "error" in answer:
            raise CdpError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    async def event(self, method: str) -> dict[str, Any]:
        """The next ``method`` event (each was queued since the client started)."""
        queue = self._events.setdefault(method, asyncio.Queue())
        return await asyncio.wait_for(queue.get(), WAIT)

    async def evaluate(self, session: str, expression: str) -> Any:
        """Evaluate JavaScript in the page; promises are awaited. Its value, or :class:`CdpError`."""
        result = await self.send(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            session,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise CdpError(details.get("exception", {}).get("description") or details.get("text"))
        return result["result"].get("value")

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self.ws.close()


@contextlib.asynccontextmanager
async def chromium(profile: Path) -> AsyncIterator[DevTools]:
    """Headless Chromium with a fresh profile, and a DevTools client on it."""
    assert os.access(CHROMIUM, os.X_OK), f"{CHROMIUM} is missing: run `make chromium` (make test does)"
    process = await asyncio.create_subprocess_exec(
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",  # we run as root, where Chromium's sandbox cannot start
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--no-first-run",
        "--no-default-browser-check",
        f"--user-data-dir={profile}",
        "--remote-debugging-port=0",
        "--remote-debugging-address=127.0.0.1",
        "about:blank",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    seen: list[str] = []
    devtools: DevTools | None = None
    drain: asyncio.Task[None] | None = None
    try:
        assert process.stderr is not None
        endpoint = ""
        async with asyncio.timeout(WAIT):
            # The announcement is the event to wait for; DevToolsActivePort (same port and path)
            # can be written a moment after it, so the line itself is read.
            async for raw in process.stderr:
                seen.append(raw.decode(errors="replace").rstrip())
                if seen[-1].startswith("DevTools listening on "):
                    endpoint = seen[-1].removeprefix("DevTools listening on ").strip()
                    break
        if not endpoint.startswith("ws://127.0.0.1:"):
            raise AssertionError("Chromium did not announce its DevTools endpoint:\n" + "\n".join(seen))
        drain = asyncio.create_task(_drain(process.stderr))
        ws = await connect(endpoint, max_size=None, open_timeout=WAIT)
        devtools = DevTools(ws)
        yield devtools
    finally:
        if devtools is not None:
            await devtools.close()
        if drain is not None:
            drain.cancel()
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


async def _drain(stream: asyncio.StreamReader) -> None:
    """Keep reading Chromium's stderr so that it never blocks on a full pipe."""
    while await stream.readline():
        pass


def wait_for_text(text: str, timeout_ms: int = int(WAIT * 1000)) -> str:
    """JavaScript: a promise that resolves once the chat log shows ``text`` (MutationObserver, deadline)."""
    return f"""
new Promise((resolve, reject) => {{
  const wanted = {json.dumps(text)};
  const log = document.getElementById("log");
  const found = () => log.textContent.includes(wanted);
  if (found()) return resolve(log.textContent);
  const observer = new MutationObserver(() => {{
    if (found()) {{ observer.disconnect(); clearTimeout(timer); resolve(log.textContent); }}
  }});
  const timer = setTimeout(() => {{
    observer.disconnect();
    reject(new Error("not seen within {timeout_ms} ms: " + wanted + "; the log: " + log.textContent));
  }}, {timeout_ms});
  observer.observe(log, {{ childList: true, subtree: true, characterData: true }});
}})"""


CONNECTED = f"""
new Promise((resolve, reject) => {{
  const me = document.getElementById("me");
  const done = () => document.body.dataset.state === "connected" && me.textContent.startsWith("guest-");
  if (done()) return resolve(me.textContent);
  const observer = new MutationObserver(() => {{
    if (done()) {{ observer.disconnect(); clearTimeout(timer); resolve(me.textContent); }}
  }});
  const timer = setTimeout(() => {{
    observer.disconnect();
    reject(new Error("not connected: state " + document.body.dataset.state + ", me " + me.textContent));
  }}, {int(WAIT * 1000)});
  const all = {{ attributes: true, childList: true, subtree: true, characterData: true }};
  observer.observe(document.body, all);
}})"""


async def page_head(port: int) -> list[bytes]:
    """The status line and header lines of ``GET /`` on the provider's server, as sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    finally:
        writer.close()
        await writer.wait_closed()
    return head.rstrip(b"\r\n").split(b"\r\n")


async def test_chromium_joins_the_chat_and_sees_its_message(
    nats_server: NatsServer, launcher: Path, tmp_path: Path
) -> None:
    """The demo page at / joins over /ws; a message typed in the page comes back to it and to others."""
    built()
    port = free_port()
    text = (ROOT / "wadm.yaml").read_text().replace("127.0.0.1:8080", f"127.0.0.1:{port}")
    async with running(text, nats_server, launcher, source="wadm.yaml"):
        head = await page_head(port)
        assert head[0] == b"HTTP/1.1 200 OK", head
        lengths = [line for line in head if line.lower().startswith(b"content-length:")]
        assert len(lengths) == 1, lengths  # two made Chromium refuse the page (a STATIC_DIR bug, fixed)
        await run_in_chromium(port, tmp_path / "profile")


async def run_in_chromium(port: int, profile: Path) -> None:
    """Open the chat page in Chromium, send a message from it, see it in the page and in another client."""
    async with chromium(profile) as devtools:
        target = await devtools.send("Target.createTarget", {"url": "about:blank"})
        attached = await devtools.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        session = attached["sessionId"]
        await devtools.send("Page.enable", session=session)
        navigated = await devtools.send("Page.navigate", {"url": f"http://127.0.0.1:{port}/"}, session)
        assert "errorText" not in navigated, navigated
        await devtools.event("Page.loadEventFired")
        assert await devtools.evaluate(session, "document.title") == "wasmCloud WebSocket chat"

        me = await devtools.evaluate(session, CONNECTED)
        await devtools.evaluate(session, wait_for_text(f"{me} joined"))

        async with await connect(f"ws://127.0.0.1:{port}/ws", open_timeout=WAIT) as other:
            welcome = json.loads(json.loads(await asyncio.wait_for(other.recv(), WAIT))["body"])
            assert welcome["type"] == "welcome"
            await devtools.evaluate(session, wait_for_text(f"{welcome['you']} joined"))

            typed = "hello from chromium"
            await devtools.evaluate(
                session,
                f"""document.getElementById("text").value = {json.dumps(typed)};
                    document.getElementById("send-button").click();""",
            )
            shown = await devtools.evaluate(session, wait_for_text(f"{me}{typed}"))
            assert typed in shown
            async with asyncio.timeout(WAIT):
                while True:  # the Python client's frames, in order: join (its own), then the message
                    event = json.loads(json.loads(await other.recv())["body"])
                    if event["type"] == "message":
                        break
            assert event == {"type": "message", "from": me, "text": typed}

        await devtools.evaluate(session, wait_for_text(f"{welcome['you']} left"))
