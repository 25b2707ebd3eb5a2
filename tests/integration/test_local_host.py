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
import secrets
import signal
import sys
from collections.abc import Mapping
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from provider.host.local import HostError, LocalHost
from provider.host.machine import free_port
from provider.host.nats_server import NatsServer
from provider.host.wadm import LocalSecrets, ManifestError, load, parse_secret_args
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


async def test_several_provider_instances_share_one_port_and_the_sessions(
    wasm: Mapping[str, Path], nats_server: NatsServer, launcher: Path
) -> None:
    """A capability scaled to 2 instances runs two provider processes on one port (REUSE_PORT):
    clients land on both, and every echo comes back, forwarded to the instance that holds the
    session when the component's publish lands on the other."""
    port = free_port()
    text = manifest(
        "echo", wasm["echo"], handler=server_mode(port), consumer={"MODE": "server"}, provider_instances=2
    )
    async with running(text, nats_server, launcher) as host:
        assert len(host.instances) == 2
        clients = [await open_ws(port) for _ in range(12)]
        try:
            for index, ws in enumerate(clients):
                await ws.send(json.dumps({"subject": "echo.n", "body": f"client {index}"}))
                assert (await recv_json(ws))["body"] == f"client {index}"
            messages = [(await instance.instance_health())["message"] for instance in host.instances]
        finally:
            for ws in clients:
                await ws.close()
        sessions = [int(re.search(r"(\d+) session\(s\)", m).group(1)) for m in messages]  # type: ignore[union-attr]
        assert sum(sessions) == 12
        assert all(count > 0 for count in sessions), (
            f"the kernel sent every client to one instance: {sessions}"
        )


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


def _resident() -> int:
    """This process's resident memory in bytes (the local host, and so its wasm, runs in it)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def test_bodies_a_component_publishes_are_given_back_by_a_fresh_instance(
    wasm: Mapping[str, Path], nats_server: NatsServer, launcher: Path
) -> None:
    """componentize-py keeps every body a component publishes in its memory (the leak is shown
    first, so this fails once a componentize-py stops leaking and the remedy can go); past
    ``recycle_after`` bytes the worker replaces the instance between calls and memory stays put."""
    port = free_port()
    text = manifest(
        "echo", wasm["echo"], handler=server_mode(port, FORMAT="raw"), consumer={"MODE": "server"}
    )
    async with running(text, nats_server, launcher) as host:
        echo = host.component("echo")
        async with connect(f"ws://127.0.0.1:{port}/ws", compression=None, open_timeout=WAIT) as ws:

            async def echoes(count: int) -> int:
                before = _resident()
                for seed in range(count):
                    body = random.Random(seed).randbytes(1 << 20)
                    await ws.send(body)
                    assert await asyncio.wait_for(ws.recv(), WAIT) == body
                return _resident() - before

            await echoes(2)  # warm: the instance's own start-up growth
            echo.recycle_after = 1 << 40
            leaked = await echoes(16)
            assert leaked >= 12 << 20, (
                f"16 MiB published, {leaked >> 20} MiB kept: does componentize-py still leak?"
            )
            assert echo.stats.recycled == 0
            echo.recycle_after = 3 << 20
            kept = await echoes(16)
            assert (
                echo.stats.recycled >= 5
            )  # 16 MiB in 3 MiB steps (the first step also pays for the leak above)
            assert kept < 6 << 20, f"{kept >> 20} MiB kept with fresh instances"
        assert echo.stats.traps == 0


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

    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self.connected: asyncio.Future[ServerConnection] = asyncio.get_running_loop().create_future()
        self.requests: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.answers: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.connections = 0
        self.refused = 0

    def check_token(self, connection: ServerConnection, request: Request) -> Response | None:
        """With a token: refuse (HTTP 401) a handshake without ``Authorization: Bearer <token>``."""
        if self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
            self.refused += 1
            return connection.respond(HTTPStatus.UNAUTHORIZED, "a bearer token is required\n")
        return None

    async def handle(self, ws: ServerConnection) -> None:
        self.connections += 1
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


def readme_client_manifest() -> str:
    """The client-mode ``wadm.yaml`` of the README, as written there."""
    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    [block] = [block for block in blocks if "key: prices-token" in block]
    assert "wss://prices.example.com/ws" in block
    return str(block)


def line_numbers(text: str, fragment: str) -> list[int]:
    """The 1-based lines of ``text`` that contain ``fragment``."""
    return [number for number, line in enumerate(text.splitlines(), start=1) if fragment in line]


def readme_app_in(directory: Path, wasm: Mapping[str, Path], port: int) -> Path:
    """The README's client-mode manifest in ``directory``, its URI on ``port``, its image there."""
    (directory / "build" / "components").mkdir(parents=True, exist_ok=True)
    image = directory / "build" / "components" / "requester.wasm"
    if not image.exists():
        image.symlink_to(wasm["requester"])
    path = directory / "wadm.yaml"
    path.write_text(
        readme_client_manifest().replace("wss://prices.example.com/ws", f"ws://127.0.0.1:{port}/ws")
    )
    return path


async def host_command(*args: str, cwd: Path = ROOT) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "provider.host",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
    )


async def stopped(process: asyncio.subprocess.Process) -> None:
    """Stop ``python -m provider.host`` if it still runs: Ctrl-C first, so that it stops NATS and
    the provider (they run in process groups of their own, and would outlive a SIGKILL of it)."""
    if process.returncode is None:
        process.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(process.wait(), 15)
        except TimeoutError:
            process.kill()
            await process.wait()


async def finished(process: asyncio.subprocess.Process, timeout: float = 60) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of a command that is expected to end by itself."""
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    finally:
        await stopped(process)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_the_readme_client_mode_example_runs_with_its_secret(
    wasm: Mapping[str, Path], tmp_path: Path
) -> None:
    """``python -m provider.host run`` on the README's client-mode manifest with ``--secrets-file``:
    the token reaches a server that requires it (sealed to the provider, opened there), both links
    share one connection through the named config, a request through requester.wasm reaches the
    server and its answer comes back, and the token appears nowhere in the host's output."""
    token = f"tok-{secrets.token_hex(16)}"
    service = Service(token)
    port = free_port()
    async with serve(
        service.handle, "127.0.0.1", port, compression=None, process_request=service.check_token
    ):
        manifest_path = readme_app_in(tmp_path, wasm, port)
        secrets_file = tmp_path / "secrets.yaml"
        secrets_file.write_text(f"prices-token: {token}\n")
        process = await host_command(
            "run",
            str(manifest_path),
            "--cache-dir",
            str(CACHE),
            "--secrets-file",
            str(secrets_file),
            "--log-level",
            "trace",  # everything the provider can log, websockets' handshake lines included
        )
        stderr_reader = asyncio.ensure_future(process.stderr.read()) if process.stderr else None
        try:
            assert process.stdout is not None
            banner = []
            async with asyncio.timeout(60):  # includes loading the compiled component from the cache
                async for raw in process.stdout:
                    banner.append(raw.decode())
                    if "Ready." in banner[-1]:
                        break
            ws = await asyncio.wait_for(service.connected, WAIT)
            await ws.send(json.dumps({"subject": "quote", "body": "EURUSD", "reply_to": "job-7"}))
            request = await asyncio.wait_for(service.requests.get(), WAIT)
            assert (request["subject"], request["body"]) == ("quote", "EURUSD")
            answer = await asyncio.wait_for(service.answers.get(), WAIT)
            assert answer == {"subject": "job-7", "body": "answer to EURUSD"}
            assert (service.connections, service.refused) == (1, 0)
            process.send_signal(signal.SIGINT)
            assert await asyncio.wait_for(process.wait(), 15) == 0
        finally:
            await stopped(process)
        rest = await process.stdout.read()
        assert stderr_reader is not None
        output = "".join(banner) + rest.decode() + (await stderr_reader).decode()
    assert " provider.runtime: " in output  # the provider's own log is in what was searched
    assert " websockets.client: > Authorization: <redacted>" in output
    assert "stopped: provider, components and NATS" in output
    assert token not in output


async def test_check_shows_what_the_provider_gets_with_secrets_redacted(
    wasm: Mapping[str, Path], tmp_path: Path
) -> None:
    """``check`` on the README's example: per link, the merged config and where each key comes
    from; the token is shown as <redacted> and appears nowhere in the output."""
    token = f"tok-{secrets.token_hex(16)}"
    manifest_path = readme_app_in(tmp_path, wasm, 4321)
    code, out, err = await finished(
        await host_command("check", str(manifest_path), "--secret", f"prices-token={token}")
    )
    assert code == 0, err
    text = manifest_path.read_text()
    [defined] = line_numbers(text, "- name: prices-client")
    assert re.search(
        rf"URI +'ws://127\.0\.0\.1:4321/ws' +link config 'prices-client' \(.*wadm\.yaml:{defined}\)", out
    )
    named = rf"link config 'prices-prices_client' \(.*wadm\.yaml:{defined} as 'prices-client'\)"
    assert re.search(rf"URI +'ws://127\.0\.0\.1:4321/ws' +{named}", out)
    assert (
        len(
            re.findall(
                r"AUTH_TOKEN +<redacted> +link secret 'AUTH_TOKEN' \(key 'prices-token', from --secret\)", out
            )
        )
        == 2
    )
    assert token not in out + err


async def test_a_missing_secret_or_config_stops_the_run_before_anything_starts(
    wasm: Mapping[str, Path], tmp_path: Path
) -> None:
    """``run`` without the token: exit 2, each reference named with its line and where the key was
    looked for, nothing started. A reference to a config that is nowhere: the same, with its line."""
    manifest_path = readme_app_in(tmp_path, wasm, free_port())
    text = manifest_path.read_text()
    code, _, err = await finished(await host_command("run", str(manifest_path), "--cache-dir", str(CACHE)))
    assert code == 2, err
    lines = [line.removeprefix("error: ") for line in err.splitlines()]
    expected = [f"{manifest_path}:{n}:" for n in line_numbers(text, "- name: AUTH_TOKEN")]
    assert [line.split(" ", 1)[0] for line in lines] == expected
    for line in lines:
        assert "secret 'AUTH_TOKEN' (policy 'ws-secrets', key 'prices-token') has no value" in line
        assert (
            "looked for in --secrets-file (none given), --secret-env (none given) and --secret (none given)"
            in line
        )
    assert "stopped:" not in err  # nothing was started, so nothing was stopped

    manifest_path.write_text(text.replace("- name: prices-prices_client", "- name: prices-quotes"))
    [number] = line_numbers(manifest_path.read_text(), "- name: prices-quotes")
    code, _, err = await finished(
        await host_command("run", str(manifest_path), "--cache-dir", str(CACHE), "--secret", "prices-token=t")
    )
    assert code == 2, err
    assert err.startswith(
        f"error: {manifest_path}:{number}: component 'websocket': link: source: config 'prices-quotes' "
        "has no 'properties', so it names a config in the lattice's config store"
    ), err
    assert "stopped:" not in err


async def test_provider_level_secrets_reach_the_provider_in_host_data(
    wasm: Mapping[str, Path], nats_server: NatsServer, launcher: Path, tmp_path: Path
) -> None:
    """The capability's own ``secrets`` become HostData ``secrets``: a token given only there is a
    default the provider uses for both links."""
    token = f"tok-{secrets.token_hex(16)}"
    service = Service(token)
    port = free_port()
    link_secret = (
        "              secrets:\n"
        "                - name: AUTH_TOKEN\n"
        "                  properties: {policy: ws-secrets, key: prices-token}\n"
    )
    text = readme_app_in(tmp_path, wasm, port).read_text()
    assert text.count(link_secret) == 2
    text = text.replace(link_secret, "").replace(
        "      properties: {image: file://./build/wasmcloud-ws-provider.par.gz}\n",
        "      properties:\n"
        "        image: file://./build/wasmcloud-ws-provider.par.gz\n"
        "        secrets:\n"
        "          - name: AUTH_TOKEN\n"
        "            properties: {policy: ws-secrets, key: prices-token}\n",
    )
    store = LocalSecrets.layered(("--secret", parse_secret_args([f"prices-token={token}"])))
    async with (
        serve(service.handle, "127.0.0.1", port, compression=None, process_request=service.check_token),
        running(text, nats_server, launcher, base_dir=tmp_path, secrets=store) as host,
    ):
        ws = await asyncio.wait_for(service.connected, WAIT)
        await ws.send(json.dumps({"subject": "quote", "body": "GBP", "reply_to": "job-1"}))
        assert await asyncio.wait_for(service.answers.get(), WAIT) == {
            "subject": "job-1",
            "body": "answer to GBP",
        }
        assert (service.connections, service.refused) == (1, 0)
        assert host.lattice is not None
        assert token not in host.lattice.process.output


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
