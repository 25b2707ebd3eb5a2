"""The local host with real wasm components: WebSocket client → provider → component.wasm → back.

Each test runs a manifest on the local host (``provider.host.local.LocalHost``): the provider
process started as a host starts it, componentize-py components run by wasmtime and served
over wRPC, links put from the manifest. The components are built once per session and cached
on disk (see ``tests/integration/components.py``).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve

from provider.host.local import HostError, LocalHost
from provider.host.machine import free_port
from provider.host.nats_server import NatsServer
from provider.host.wadm import ManifestError, load
from provider.host.wadm import linked_component_manifest as manifest
from tests.integration.components import BUILD_TIMEOUT, CACHE, ROOT, built, running

pytestmark = pytest.mark.timeout(BUILD_TIMEOUT)  # the first test may build and compile every component

WAIT = 10.0


@pytest.fixture(scope="module")
def wasm() -> Mapping[str, Path]:
    """Every component, built (or taken from the cache)."""
    return built()


def server_mode(port: int, **config: str) -> dict[str, str]:
    return {"MODE": "server", "URI": f"127.0.0.1:{port}", "PATH": "/ws", "FORMAT": "json", **config}


async def open_ws(port: int) -> ClientConnection:
    return await connect(f"ws://127.0.0.1:{port}/ws", compression=None, open_timeout=WAIT)


async def recv_json(ws: ClientConnection) -> dict[str, Any]:
    frame = await asyncio.wait_for(ws.recv(), WAIT)
    result: dict[str, Any] = json.loads(frame)
    return result


async def recv_event(ws: ClientConnection) -> dict[str, Any]:
    """The chat component's JSON event inside the next frame's body."""
    event: dict[str, Any] = json.loads((await recv_json(ws))["body"])
    return event


async def test_echo_component_answers_every_client(
    wasm: Mapping[str, Path], nats_server: NatsServer, launcher: Path
) -> None:
    """echo.wasm with two instances: each client gets its own frames back, many at once."""
    port = free_port()
    text = manifest("echo", wasm["echo"], handler=server_mode(port), consumer={"MODE": "server"}, instances=2)
    async with running(text, nats_server, launcher) as host:
        clients = [await open_ws(port) for _ in range(4)]
        try:
            await clients[0].send(json.dumps({"subject": "echo.hello", "body": "héllo wasm"}))
            reply = await recv_json(clients[0])
            assert reply["body"] == "héllo wasm"
            assert reply["subject"].startswith("ws.session.")

            async def chat(index: int, ws: ClientConnection) -> list[str]:
                for n in range(10):
                    await ws.send(json.dumps({"subject": "echo.n", "body": f"{index}:{n}"}))
                return [(await recv_json(ws))["body"] for _ in range(10)]

            answers = await asyncio.gather(*(chat(i, ws) for i, ws in enumerate(clients)))
            for index, bodies in enumerate(answers):
                assert sorted(bodies) == sorted(f"{index}:{n}" for n in range(10))
        finally:
            for ws in clients:
                await ws.close()
        stats = host.component("echo").stats
        assert stats.calls == 41
        assert stats.traps == 0


async def test_echo_component_round_trips_a_1_mib_body(
    wasm: Mapping[str, Path], nats_server: NatsServer, launcher: Path
) -> None:
    """1 MiB of random bytes through echo.wasm and back, exact, twice (list<u8> crosses in bulk).

    ``FORMAT=raw``: the frame is the body, and 1 MiB is within the default ``MAX_MESSAGE_BYTES``
    (and websockets' own default ``max_size`` on the client).
    """
    port = free_port()
    handler = server_mode(port, FORMAT="raw")
    text = manifest("echo", wasm["echo"], handler=handler, consumer={"MODE": "server"})
    async with running(text, nats_server, launcher) as host:
        async with connect(f"ws://127.0.0.1:{port}/ws", compression=None, open_timeout=WAIT) as ws:
            for seed in (1, 2):
                body = random.Random(seed).randbytes(1 << 20)
                await ws.send(body)
                assert await asyncio.wait_for(ws.recv(), WAIT) == body
        assert (host.component("echo").stats.calls, host.component("echo").stats.traps) == (2, 0)


async def test_chat_demo_three_clients(nats_server: NatsServer, launcher: Path) -> None:
    """The repository's wadm.yaml (on a free port): everyone sees each message, joins and leaves."""
    port = free_port()
    text = (ROOT / "wadm.yaml").read_text().replace("127.0.0.1:8080", f"127.0.0.1:{port}")
    built()  # chat.wasm is built from components/chat on demand; this reuses the session's build
    async with running(text, nats_server, launcher):
        names: list[str] = []
        clients: list[ClientConnection] = []
        try:
            for index in range(3):
                ws = await open_ws(port)
                clients.append(ws)
                welcome = await recv_event(ws)
                assert welcome["type"] == "welcome"
                names.append(welcome["you"])
                # The newcomer and everyone before see the join, in that order of sessions.
                for other in clients:
                    assert await recv_event(other) == {"type": "join", "who": names[index]}
            assert len(set(names)) == 3

            await clients[0].send(json.dumps({"subject": "chat.message", "body": "hello, all"}))
            for ws in clients:
                assert await recv_event(ws) == {"type": "message", "from": names[0], "text": "hello, all"}
            await clients[2].send(json.dumps({"subject": "chat.message", "body": "hi from 3"}))
            for ws in clients:
                assert await recv_event(ws) == {"type": "message", "from": names[2], "text": "hi from 3"}

            await clients[2].close()
            for ws in clients[:2]:
                assert await recv_event(ws) == {"type": "leave", "who": names[2]}
        finally:
            for ws in clients:
                await ws.close()


class Service:
    """An outside WebSocket service: answers each envelope with a ``reply_to`` on that subject."""

    def __init__(self) -> None:
        self.connected: asyncio.Future[ServerConnection] = asyncio.get_running_loop().create_future()
        self.requests: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.answers: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def handle(self, ws: ServerConnection) -> None:
        if not self.connected.done():
            self.connected.set_result(ws)
        async for frame in ws:
            envelope = json.loads(frame)
            if envelope.get("reply_to"):
                await self.requests.put(envelope)
                answer = {"subject": envelope["reply_to"], "body": f"answer to {envelope['body']}"}
                await ws.send(json.dumps(answer))
            else:
                await self.answers.put(envelope)


async def test_requester_round_trip_in_client_mode(
    wasm: Mapping[str, Path], nats_server: NatsServer, launcher: Path
) -> None:
    """requester.wasm: a job from the service → request to the service → the answer to the job's reply-to."""
    service = Service()
    port = free_port()
    async with serve(service.handle, "127.0.0.1", port, compression=None):
        client = {"MODE": "client", "URI": f"ws://127.0.0.1:{port}/", "FORMAT": "json"}
        text = manifest("requester", wasm["requester"], handler=client, consumer=client)
        async with running(text, nats_server, launcher):
            ws = await asyncio.wait_for(service.connected, WAIT)
            await ws.send(json.dumps({"subject": "lookup", "body": "2+2", "reply_to": "job-1"}))
            request = await asyncio.wait_for(service.requests.get(), WAIT)
            assert request["subject"] == "lookup"
            assert request["body"] == "2+2"
            assert request["reply_to"].startswith("ws.req.")
            answer = await asyncio.wait_for(service.answers.get(), WAIT)
            assert answer == {"subject": "job-1", "body": "answer to 2+2"}


async def test_a_trapped_instance_is_replaced(
    wasm: Mapping[str, Path], nats_server: NatsServer, launcher: Path
) -> None:
    """A trap (or running out of fuel) costs that message only: the next one gets a fresh instance."""
    port = free_port()
    text = manifest("faulty", wasm["faulty"], handler=server_mode(port), consumer={"MODE": "server"})
    async with running(text, nats_server, launcher, fuel=500_000_000) as host:
        assert host.lattice is not None
        process = host.lattice.process
        component = host.component("faulty")
        async with await open_ws(port) as ws:
            for subject in ("trap", "spin"):
                since = process.total_lines
                await ws.send(json.dumps({"subject": subject, "body": ""}))
                line = await process.wait_for_line(rf"'{subject}' not delivered to faulty", WAIT, since)
                assert "IncompleteResults" in line or "trap" in line.lower()
                await ws.send(json.dumps({"subject": "after", "body": f"after {subject}"}))
                assert (await recv_json(ws))["body"] == f"after {subject}"
            assert (component.stats.traps, component.stats.replaced) == (2, 2)

            since = process.total_lines
            await ws.send(json.dumps({"subject": "fail", "body": ""}))
            line = await process.wait_for_line(r"returned an error for 'fail'", WAIT, since)
            assert "failing on purpose" in line
            await ws.send(json.dumps({"subject": "after", "body": "still the same instance"}))
            assert (await recv_json(ws))["body"] == "still the same instance"
            assert (component.stats.traps, component.stats.replaced) == (2, 2)


async def test_a_bad_image_stops_the_run_before_anything_starts(
    nats_server: NatsServer, launcher: Path, tmp_path: Path
) -> None:
    """An image that does not exist is reported with its manifest line; no provider is started."""
    text = manifest(
        "ghost", tmp_path / "ghost.wasm", handler=server_mode(free_port()), consumer={"MODE": "server"}
    )
    host = LocalHost(load(text, source="t.yaml"), nats_server.url, base_dir=tmp_path, cache_dir=CACHE)
    with pytest.raises(ManifestError, match=r"^t\.yaml:7: component 'ghost': image .* does not exist"):
        await host.start()
    assert host.lattice is None
    assert host.components == {}


async def test_a_link_the_provider_rejects_stops_the_run(
    wasm: Mapping[str, Path], nats_server: NatsServer, launcher: Path
) -> None:
    """The provider's reason for rejecting a link comes back with the manifest line; all is stopped."""
    text = manifest(
        "echo", wasm["echo"], handler=server_mode(free_port(), URI="nowhere"), consumer={"MODE": "server"}
    )
    app = load(text, source="t.yaml")
    host = LocalHost(app, nats_server.url, base_dir=ROOT, cache_dir=CACHE, launcher=launcher)
    with pytest.raises(
        HostError,
        match=r"^t\.yaml:33: the provider rejected link websocket-provider .*-> echo: URI='nowhere'",
    ):
        await host.start()
    assert host.lattice is None
    assert host.components == {}


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            # The command name is in parentheses and may hold spaces: the fields after it are fixed.
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def _program(pid: int) -> str:
    """The file name of the program process ``pid`` runs."""
    return os.path.basename(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode())


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


async def test_run_command_stops_everything_on_ctrl_c(wasm: Mapping[str, Path], tmp_path: Path) -> None:
    """``python -m provider.host run``: NATS, provider and component; SIGINT leaves nothing running."""
    port = free_port()
    manifest_path = tmp_path / "wadm.yaml"
    manifest_path.write_text(
        manifest("echo", wasm["echo"], handler=server_mode(port), consumer={"MODE": "server"})
    )
    log = (tmp_path / "host.log").open("w")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "provider.host",
        "run",
        str(manifest_path),
        "--cache-dir",
        str(CACHE),
        stdout=asyncio.subprocess.PIPE,
        stderr=log,
        cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        banner = []
        async with asyncio.timeout(60):  # includes loading the compiled component from the cache
            async for raw in process.stdout:
                banner.append(raw.decode())
                if "Ready." in banner[-1]:
                    break
        assert any(f"ws://127.0.0.1:{port}/ws" in line for line in banner), banner
        children = _children(process.pid)
        assert sorted(_program(pid) for pid in children) == ["nats-server", "python"]

        async with await open_ws(port) as ws:
            await ws.send(json.dumps({"subject": "x", "body": "before ctrl-c"}))
            assert (await recv_json(ws))["body"] == "before ctrl-c"
            process.send_signal(signal.SIGINT)
            assert await asyncio.wait_for(process.wait(), 15) == 0
        assert [pid for pid in children if _alive(pid)] == [], "processes outlived the host"
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        log.close()
    output = (tmp_path / "host.log").read_text()
    assert re.search(r"shutdown requested by host", output), output
    assert "stopped: provider, components and NATS" in output
