"""The v2 bridge against a real wasmCloud 2.x host: WebSocket clients → bridge → wash dev (v2-echo) → back.

Every bridge is a real ``python -m provider bridge`` process on the v2 host's NATS; every
client a real WebSocket client. Tests that only need the bridge and NATS (auth, limits,
hostile NATS peers, bad settings) answer from the test itself where a component is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack
import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin

from provider.host.machine import free_port
from provider.host.nats_server import NatsServer
from provider.host.v2 import BridgeProcess
from provider.host.wash import WashDev
from provider.wasmcloud.runtime import nats_credentials
from tests.integration.test_nats_auth import _operator

pytestmark = pytest.mark.timeout(600)  # the first test that needs wash dev waits for it (~45 s)
WAIT = 10.0
Frames = list[dict[str, Any]]


@contextlib.asynccontextmanager
async def bridge(server: NatsServer, **keys: str) -> AsyncIterator[BridgeProcess]:
    """A bridge on ``server`` listening on a free loopback port; stopped (SIGTERM) afterwards."""
    keys.setdefault("URI", f"127.0.0.1:{free_port()}")
    process = BridgeProcess(server.url, keys)
    try:
        yield await process.launch()
    finally:
        await process.terminate()


@contextlib.asynccontextmanager
async def nats_client(server: NatsServer) -> AsyncIterator[Client]:
    nc = await nats.connect(server.url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        yield nc
    finally:
        await nc.close()


async def client(process: BridgeProcess, **options: Any) -> ClientConnection:
    return await connect(process.url, open_timeout=WAIT, **options)


async def send(ws: ClientConnection, subject: str, body: str = "") -> None:
    await ws.send(json.dumps({"subject": subject, "body": body}))


async def receive(ws: ClientConnection, count: int = 1) -> Frames:
    async with asyncio.timeout(WAIT):
        return [json.loads(await ws.recv()) for _ in range(count)]


class Recorder:
    """Every NATS message on ``subject`` (``>`` by default), awaitable with a deadline."""

    def __init__(self) -> None:
        self.messages: list[Msg] = []
        self._changed = asyncio.Condition()

    async def record(self, msg: Msg) -> None:
        async with self._changed:
            self.messages.append(msg)
            self._changed.notify_all()

    async def wait_for(self, wanted: Callable[[Msg], bool], timeout: float = WAIT) -> Msg:
        async with asyncio.timeout(timeout), self._changed:
            while True:
                for msg in self.messages:
                    if wanted(msg):
                        return msg
                await self._changed.wait()

    def subjects(self, head: str) -> list[str]:
        return [m.subject for m in self.messages if m.subject.startswith(head)]


async def recording(nc: Client, subject: str = ">") -> Recorder:
    recorder = Recorder()
    await nc.subscribe(subject, cb=recorder.record)
    await nc.flush()
    return recorder


# -- through the v2 component --------------------------------------------------------------------------


async def test_a_client_is_answered_by_the_v2_component(wash_dev: WashDev, v2_nats: NatsServer) -> None:
    """A frame goes out on ws.in.<subject> with the session's reply subject; v2-echo's answer comes back."""
    async with bridge(v2_nats) as b, nats_client(v2_nats) as nc:
        seen = await recording(nc, "ws.in.>")
        ws = await client(b)
        await send(ws, "chat.lobby", "hello, v2")
        [answer] = await receive(ws)
        assert answer["body"] == "hello, v2"
        assert answer["subject"].startswith(f"ws.session.{b.tag}.")
        msg = await seen.wait_for(lambda m: m.subject == "ws.in.chat.lobby")
        assert msg.reply == answer["subject"]
        assert msg.data == b"hello, v2"
        await ws.close()


async def test_two_clients_each_get_only_their_own_answers(wash_dev: WashDev, v2_nats: NatsServer) -> None:
    """Sessions are kept apart: each client's echoes come back to it alone, in any order."""
    async with bridge(v2_nats) as b:
        first, second = await client(b), await client(b)
        count = 10
        for i in range(count):
            await send(first, "echo", f"first {i}")
            await send(second, "echo", f"second {i}")
        got_first = {f["body"] for f in await receive(first, count)}
        got_second = {f["body"] for f in await receive(second, count)}
        assert got_first == {f"first {i}" for i in range(count)}
        assert got_second == {f"second {i}" for i in range(count)}
        await first.close()
        await second.close()


async def test_broadcast_reaches_every_client_of_every_bridge(wash_dev: WashDev, v2_nats: NatsServer) -> None:
    """The component's publish to ws.broadcast is a frame to every session of every bridge on the prefix."""
    async with bridge(v2_nats) as one, bridge(v2_nats) as two:
        clients = [await client(one), await client(one), await client(two)]
        await send(clients[2], "broadcast", "to everyone")
        for ws in clients:
            assert await receive(ws) == [{"subject": "ws.broadcast", "body": "to everyone"}]
            await ws.close()


async def test_two_bridges_each_answer_their_own_clients(wash_dev: WashDev, v2_nats: NatsServer) -> None:
    """Two instances share the prefix: each subscribes to its own sessions only; answers find their client."""
    async with bridge(v2_nats) as one, bridge(v2_nats) as two:
        assert one.tag != two.tag
        a, b = await client(one), await client(two)
        await send(a, "echo", "to one")
        await send(b, "echo", "to two")
        [from_one] = await receive(a)
        [from_two] = await receive(b)
        assert from_one["body"] == "to one"
        assert from_one["subject"].startswith(f"ws.session.{one.tag}.")
        assert from_two["body"] == "to two"
        assert from_two["subject"].startswith(f"ws.session.{two.tag}.")
        await a.close()
        await b.close()


async def test_sessions_lists_the_sessions_of_every_bridge(wash_dev: WashDev, v2_nats: NatsServer) -> None:
    """The component's request on ws.sessions gets one JSON list gathered from every instance."""
    async with bridge(v2_nats) as one, bridge(v2_nats) as two, nats_client(v2_nats) as nc:
        clients = [await client(one), await client(one), await client(two)]
        # Each session's subject, as the component sees it (the reply subject of its frames).
        seen = await recording(nc, "ws.in.whoami")
        for ws in clients:
            await send(ws, "whoami")
            await receive(ws)
        mine = {m.reply for m in seen.messages}
        assert len(mine) == 3
        await send(clients[0], "sessions")
        [answer] = await receive(clients[0])
        listing = json.loads(answer["body"])
        assert {s["reply_to"] for s in listing} == mine
        assert {s["id"].split(".")[0] for s in listing} == {one.tag, two.tag}
        assert all(s["path"] == "/ws" and s["remote"].startswith("127.0.0.1:") for s in listing)
        for ws in clients:
            await ws.close()


async def test_ws_close_closes_the_session_with_1000(wash_dev: WashDev, v2_nats: NatsServer) -> None:
    """A publish to ws.close.<id> (v2-echo's ``close``) closes that session with 1000, the body as reason."""
    async with bridge(v2_nats) as b:
        ws, other = await client(b), await client(b)
        await send(ws, "close", "bye now")
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), WAIT)
        assert ws.close_code == 1000
        assert ws.close_reason == "bye now"
        await send(other, "echo", "still here")
        assert (await receive(other))[0]["body"] == "still here"
        await other.close()


HOSTILE = [
    "a b",  # a space: two subjects on the wire
    "a\tb",
    "a\r\nPUB x 1",  # a protocol line
    ">",
    "*",
    "a.>",
    "a.*.b",
    "a*",
    "a..b",
    ".a",
    "a.",
    "x" * 300,
    "caf\u00e9",
    "nul\u0000",
    "\u2028",
]


async def test_hostile_client_subjects_get_ws_error_and_never_reach_nats(
    wash_dev: WashDev, v2_nats: NatsServer
) -> None:
    """Wildcards, spaces, empty tokens, control characters, non-ASCII, too long: ws.error, never a publish.

    Checked with a NATS subscriber on ``>``: the only client frame published is the valid one.
    """
    async with bridge(v2_nats) as b, nats_client(v2_nats) as nc:
        everything = await recording(nc, ">")
        ws = await client(b)
        for subject in HOSTILE:
            await send(ws, subject, "should not pass")
            [error] = await receive(ws)
            assert error["subject"] == "ws.error", subject
            assert "subject" in error["body"]
        await ws.send(json.dumps({"subject": "", "body": "x"}))  # empty: refused by the JSON format
        assert (await receive(ws))[0]["subject"] == "ws.error"
        await send(ws, "fine.subject", "passes")
        assert (await receive(ws))[0]["body"] == "passes"
        await everything.wait_for(lambda m: m.subject == "ws.in.fine.subject")
        assert everything.subjects("ws.in.") == ["ws.in.fine.subject"]
        assert not [m for m in everything.messages if m.data == b"should not pass"]
        await ws.close()


async def test_msgpack_subjects_that_are_not_utf8_are_refused_bodies_that_are_not_pass(
    wash_dev: WashDev, v2_nats: NatsServer
) -> None:
    """FORMAT=msgpack: a subject of invalid UTF-8 gets ws.error; a body of any bytes round-trips."""
    async with bridge(v2_nats, FORMAT="msgpack") as b, nats_client(v2_nats) as nc:
        everything = await recording(nc, "ws.in.>")
        ws = await client(b)
        await ws.send(msgpack.packb({"subject": b"\xff\xfe", "body": b"x"}, use_bin_type=False))
        error = msgpack.unpackb(await asyncio.wait_for(ws.recv(), WAIT))
        assert error["subject"] == "ws.error"
        await ws.send(msgpack.packb({"subject": "bin", "body": b"\x00\xff\xfe"}, use_bin_type=True))
        answer = msgpack.unpackb(await asyncio.wait_for(ws.recv(), WAIT))
        assert answer["body"] == b"\x00\xff\xfe"
        assert everything.subjects("ws.in.") == ["ws.in.bin"]
        await ws.close()


# -- lifecycle, shutdown --------------------------------------------------------------------------------


async def test_lifecycle_events_are_published_with_the_session_as_reply(v2_nats: NatsServer) -> None:
    """LIFECYCLE_EVENTS=true: ws.event.connected / ws.event.disconnected, reply = the session, JSON body."""
    async with bridge(v2_nats, LIFECYCLE_EVENTS="true") as b, nats_client(v2_nats) as nc:
        events = await recording(nc, "ws.event.>")
        ws = await client(b, additional_headers={})
        connected = await events.wait_for(lambda m: m.subject == "ws.event.connected")
        info = json.loads(connected.data)
        assert connected.reply == info["reply_to"] == f"ws.session.{info['id']}"
        await ws.close(1000, "done")
        gone = await events.wait_for(lambda m: m.subject == "ws.event.disconnected")
        assert gone.reply == connected.reply
        assert json.loads(gone.data)["code"] == 1000


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_closes_every_session_with_1001_and_exits_0(v2_nats: NatsServer, signum: int) -> None:
    """SIGTERM and SIGINT stop the bridge cleanly: sessions get 1001 (going away), exit code 0."""
    process = await BridgeProcess(v2_nats.url, {"URI": f"127.0.0.1:{free_port()}"}).launch()
    try:
        clients = [await client(process), await client(process)]
        assert await process.terminate(signum) == 0
        for ws in clients:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), WAIT)
            assert ws.close_code == 1001
        assert "bridge stopped" in process.output
    finally:
        await process.terminate()


# -- auth and limits, as in server mode -------------------------------------------------------------------


async def test_auth_token_origins_and_connection_limit(v2_nats: NatsServer, tmp_path: Path) -> None:
    """AUTH_TOKEN (here from a file), ALLOWED_ORIGINS and MAX_CONNECTIONS hold as in server mode."""
    token = secrets.token_urlsafe(16)
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    keys = {
        "AUTH_TOKEN_FILE": str(token_file),
        "ALLOWED_ORIGINS": "https://good.example",
        "MAX_CONNECTIONS": "1",
    }
    async with bridge(v2_nats, **keys) as b:
        with pytest.raises(InvalidStatus) as refused:
            await client(b)
        assert refused.value.response.status_code == 401
        with pytest.raises(InvalidStatus) as wrong:
            await client(b, additional_headers={"Authorization": "Bearer nope"})
        assert wrong.value.response.status_code == 401
        with pytest.raises(InvalidStatus) as foreign:
            await connect(f"{b.url}?token={token}", origin=Origin("https://evil.example"), open_timeout=WAIT)
        assert foreign.value.response.status_code == 403
        ws = await client(b, additional_headers={"Authorization": f"Bearer {token}"})
        with pytest.raises(InvalidStatus) as full:
            await connect(f"{b.url}?token={token}", open_timeout=WAIT)
        assert full.value.response.status_code == 503
        await ws.close()
        assert token not in b.output


async def test_a_token_from_the_environment_is_a_secret(v2_nats: NatsServer) -> None:
    """WS_BRIDGE_AUTH_TOKEN sets AUTH_TOKEN; its value appears in no log line, even at debug level."""
    token = secrets.token_urlsafe(16)
    process = BridgeProcess(
        v2_nats.url,
        {"URI": f"127.0.0.1:{free_port()}"},
        environment={"WS_BRIDGE_AUTH_TOKEN": token},
        log_level="debug",
    )
    async with process as b:
        ws = await connect(f"{b.url}?token={token}", open_timeout=WAIT)
        await ws.close()
    assert token not in process.output


async def test_an_oversize_frame_closes_with_1009_and_rate_limit_slows_not_drops(
    wash_dev: WashDev, v2_nats: NatsServer
) -> None:
    """MAX_MESSAGE_BYTES closes an oversize frame's session with 1009; RATE_LIMIT loses no frame."""
    async with bridge(v2_nats, MAX_MESSAGE_BYTES="1024", RATE_LIMIT="20") as b:
        ws = await client(b)
        count = 30  # past the one-second burst: the rest is slowed down, not dropped
        for i in range(count):
            await send(ws, "echo", str(i))
        assert {f["body"] for f in await receive(ws, count)} == {str(i) for i in range(count)}
        await send(ws, "echo", "x" * 2000)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), WAIT)
        assert ws.close_code == 1009


async def test_max_message_bytes_follows_the_nats_max_payload(tmp_path: Path) -> None:
    """Unset, MAX_MESSAGE_BYTES is lowered to the NATS server's max_payload; set above it, a refusal."""
    with NatsServer(max_payload=4096) as small:
        async with bridge(small) as b:
            assert "MAX_MESSAGE_BYTES lowered to 4096" in b.output
            ws = await client(b)
            await send(ws, "big", "x" * 5000)
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), WAIT)
            assert ws.close_code == 1009
        process = BridgeProcess(small.url, {"URI": f"127.0.0.1:{free_port()}", "MAX_MESSAGE_BYTES": "10000"})
        with pytest.raises(EOFError):
            await process.launch()
        assert await process.exited() == 2
        assert "max_payload 4096" in process.output


async def test_a_frame_that_cannot_be_published_gets_ws_error() -> None:
    """With NATS gone, frames wait in the client's reconnect buffer; past it, each gets ws.error."""
    with NatsServer() as doomed:
        async with bridge(doomed) as b:
            ws = await client(b, max_size=None)
            doomed.stop()
            await b.wait_for_line("NATS: disconnected", WAIT)
            body = "x" * 900_000  # nats-py buffers 2 MiB while reconnecting: the third one is refused
            for _ in range(3):
                await send(ws, "big", body)
            [error] = await receive(ws)
            assert error["subject"] == "ws.error"
            assert "not published on 'ws.in.big'" in error["body"]
            await ws.close()


# -- NATS side: credentials, hostile peers ---------------------------------------------------------------


async def test_nats_user_password_and_token(tmp_path: Path) -> None:
    """NATS_USER/NATS_PASSWORD (password from a file) and NATS_TOKEN log in; a wrong password exits 1."""
    password = secrets.token_urlsafe(12)
    secret = tmp_path / "password"
    secret.write_text(password)
    config = f'authorization {{ users: [ {{ user: "bridge", password: "{password}" }} ] }}'
    with NatsServer(extra_config=config) as locked:
        async with bridge(locked, NATS_USER="bridge", NATS_PASSWORD_FILE=str(secret)) as b:
            ws = await client(b)
            await ws.close()
        assert password not in b.output
        guess = secrets.token_urlsafe(12)
        wrong = BridgeProcess(
            locked.url, {"URI": f"127.0.0.1:{free_port()}", "NATS_USER": "bridge", "NATS_PASSWORD": guess}
        )
        with pytest.raises(EOFError):
            await wrong.launch()
        assert await wrong.exited() == 1
        assert "refused the connection" in wrong.output
        assert guess not in wrong.output
    token = secrets.token_urlsafe(12)
    with NatsServer(extra_config=f'authorization {{ token: "{token}" }}') as by_token:
        process = BridgeProcess(
            by_token.url, {"URI": f"127.0.0.1:{free_port()}"}, environment={"WS_BRIDGE_NATS_TOKEN": token}
        )
        async with process:
            pass
        assert token not in process.output


async def test_nats_creds_file(tmp_path: Path) -> None:
    """NATS_CREDS names a credentials file (user JWT + seed) for an operator-mode server."""
    operator = _operator()
    creds = tmp_path / "bridge.creds"
    creds.write_text(str(nats_credentials(operator.user_jwt, operator.user_seed)))
    with NatsServer(extra_config=operator.server_config, jetstream=False) as secured:
        process = BridgeProcess(secured.url, {"URI": f"127.0.0.1:{free_port()}", "NATS_CREDS": str(creds)})
        async with process as b:
            ws = await client(b)
            await ws.close()
        assert operator.user_seed not in process.output


def _raw_publish(server: NatsServer, *lines: bytes) -> None:
    """Write NATS protocol lines as a hostile client would (bytes nats-py would never send)."""
    with socket.create_connection((server.host, server.port), timeout=WAIT) as sock:
        sock.recv(4096)  # INFO
        sock.sendall(b'CONNECT {"verbose":false,"headers":true}\r\n' + b"".join(lines) + b"PING\r\n")
        buffer = b""
        while b"PONG" not in buffer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            buffer += chunk


async def test_hostile_nats_messages_are_dropped_and_the_bridge_carries_on(
    wash_dev: WashDev, v2_nats: NatsServer
) -> None:
    """Unknown sessions, foreign tags, extra tokens, reply subjects and headers that are not UTF-8,
    garbage answers to the sessions gather: each is logged and counted, and clients are served on."""
    async with bridge(v2_nats) as b, nats_client(v2_nats) as nc:
        ws = await client(b)
        tag = b.tag
        payload = b"boo"
        size = str(len(payload)).encode()
        headers = b"NATS/1.0\r\nX-\xff: \xfe\r\n\r\n"
        hpub = b"HPUB ws.broadcast %d %d\r\n" % (len(headers), len(headers) + len(payload))
        _raw_publish(
            v2_nats,
            b"PUB ws.session." + tag.encode() + b".nope \xff\xfe " + size + b"\r\n" + payload + b"\r\n",
            b"PUB ws.session." + tag.encode() + b" " + size + b"\r\n" + payload + b"\r\n",
            b"PUB ws.close." + tag.encode() + b".a.b " + size + b"\r\n" + payload + b"\r\n",
            hpub + headers + payload + b"\r\n",
        )
        # The broadcast still arrives, whatever its headers held.
        assert await receive(ws) == [{"subject": "ws.broadcast", "body": "boo"}]

        # A hostile peer answering the sessions gather does not spoil the listing.
        async def garbage(msg: Msg) -> None:
            await msg.respond(b"\xff not json")
            await msg.respond(b'{"not": "a list"}')

        await nc.subscribe("ws.bridge.sessions", cb=garbage)
        await nc.flush()
        listing = json.loads((await nc.request("ws.sessions", b"", timeout=WAIT)).data)
        assert [s["id"].split(".")[0] for s in listing] == [tag]
        await send(ws, "echo", "still served")
        assert (await receive(ws))[0]["body"] == "still served"
        await ws.close()
    assert "no such session" in b.output
    assert "a sessions answer dropped" in b.output


# -- bad settings --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "said"),
    [
        (("MODE=client",), "the bridge is always a server"),
        (("SUBSCRIPTION=x",), "unknown key(s) SUBSCRIPTION"),
        (("PREFIX=a.*",), "PREFIX 'a.*' has the wildcard"),
        (("PREFIX=a..b",), "PREFIX 'a..b' has an empty token"),
        (("URI=nowhere",), "URI='nowhere'"),
        (("NATS_USER=x",), "NATS_USER and NATS_PASSWORD must be given together"),
        (("AUTH_TOKEN=a", "AUTH_TOKEN_FILE=/nonexistent"), "AUTH_TOKEN is given twice"),
        (("TLS_KEY_FILE=/nonexistent/key.pem",), "cannot read '/nonexistent/key.pem'"),
        (("not-a-key-value",), "expected KEY=VALUE"),
    ],
)
async def test_bad_settings_exit_2_and_say_why(
    v2_nats: NatsServer, arguments: tuple[str, ...], said: str
) -> None:
    """Every bad argument or key stops the bridge before it listens, with exit code 2 and the reason."""
    process = BridgeProcess(v2_nats.url, arguments=arguments)
    with pytest.raises(EOFError):
        await process.launch()
    assert await process.exited() == 2
    assert said in process.output


async def test_an_unknown_event_loop_stops_the_bridge_with_exit_2(v2_nats: NatsServer) -> None:
    """``WASMCLOUD_WS_EVENT_LOOP`` is checked with the other settings: exit 2, the variable named."""
    process = BridgeProcess(v2_nats.url, environment={"WASMCLOUD_WS_EVENT_LOOP": "\udcffloop"})
    with pytest.raises(EOFError):
        await process.launch()
    assert await process.exited() == 2
    assert "WASMCLOUD_WS_EVENT_LOOP=" in process.output
    assert "expected one of uvloop, asyncio" in process.output


async def test_help_and_missing_nats(v2_nats: NatsServer) -> None:
    """``--help`` prints the usage (exit 0); no ``--nats`` is exit 2."""
    run: Callable[..., Awaitable[asyncio.subprocess.Process]] = asyncio.create_subprocess_exec
    helped = await run(sys.executable, "-m", "provider", "bridge", "--help", stdout=asyncio.subprocess.PIPE)
    out, _ = await helped.communicate()
    assert helped.returncode == 0
    assert b"usage: python -m provider bridge --nats URL" in out
    bare = await run(sys.executable, "-m", "provider", "bridge", stderr=asyncio.subprocess.PIPE)
    _, err = await bare.communicate()
    assert bare.returncode == 2
    assert b"--nats URL is required" in err


# -- NATS permissions are the access control -------------------------------------------------------------

PERMISSIONS = """
authorization {
  users: [
    { user: bridge, password: "%(bridge)s", permissions: {
        publish: ["ws.in.>", "ws.event.>", "ws.bridge.sessions"],
        subscribe: ["ws.session.>", "ws.close.>", "ws.broadcast", "ws.sessions", "ws.bridge.sessions",
                    "_INBOX.>"],
        allow_responses: true } },
    { user: host, password: "%(host)s", permissions: {
        publish: ["ws.session.>", "ws.close.>", "ws.broadcast", "ws.sessions"],
        subscribe: ["ws.in.>", "ws.event.>", "_INBOX.>"] } },
    { user: other, password: "%(other)s", permissions: {
        publish: { deny: ["ws.>"] }, subscribe: { deny: ["ws.>"] } } }
  ]
}
"""
"""The README's least-privilege example: the bridge, the v2 host's data-NATS user, everyone else."""


async def test_the_bridge_works_with_least_privilege_permissions_and_others_are_kept_off_ws() -> None:
    """With the README's NATS permissions the bridge serves echo, broadcast and sessions, and a
    third user can neither publish to a session nor listen to the clients' frames."""
    passwords = {name: secrets.token_urlsafe(12) for name in ("bridge", "host", "other")}
    with NatsServer(extra_config=PERMISSIONS % passwords) as server:
        keys = {"NATS_USER": "bridge", "NATS_PASSWORD": passwords["bridge"]}
        async with bridge(server, **keys) as b:
            host = await nats.connect(server.url, user="host", password=passwords["host"])
            violations: list[str] = []
            refused = asyncio.Event()

            async def on_error(exc: Exception) -> None:
                violations.append(str(exc))
                if len(violations) == 2:
                    refused.set()

            other = await nats.connect(
                server.url, user="other", password=passwords["other"], error_cb=on_error
            )
            try:

                async def component(msg: Msg) -> None:  # what v2-echo does, as the host's user
                    if msg.subject == "ws.in.broadcast":
                        await host.publish("ws.broadcast", msg.data)
                    elif msg.subject == "ws.in.sessions":
                        answer = await host.request("ws.sessions", b"", timeout=WAIT)
                        await host.publish(msg.reply, answer.data)
                    else:
                        await host.publish(msg.reply, msg.data)

                await host.subscribe("ws.in.>", queue="component", cb=component)
                await host.flush()
                ws = await client(b)
                await send(ws, "echo", "allowed")
                [answer] = await receive(ws)
                assert answer["body"] == "allowed"
                await send(ws, "broadcast", "to all")
                assert (await receive(ws))[0]["subject"] == "ws.broadcast"
                await send(ws, "sessions")
                assert json.loads((await receive(ws))[0]["body"])[0]["reply_to"] == answer["subject"]

                await other.publish(answer["subject"], b"spoofed")
                await other.subscribe("ws.in.>")
                await asyncio.wait_for(refused.wait(), WAIT)  # the server's -ERR for each
                assert all("permissions violation" in v.lower() for v in violations), violations
                # The spoofed frame never came: the next frame the client gets is its own echo.
                await send(ws, "echo", "next")
                assert (await receive(ws))[0]["body"] == "next"
                await ws.close()
            finally:
                await host.close()
                await other.close()
