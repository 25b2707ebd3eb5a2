"""The provider as a process, started the way a wasmCloud 1.x host starts it.

Its launcher runs with an empty environment, HostData arrives on stdin, and from then on
the host only talks to it over NATS: health, link puts and deletes, config updates,
shutdown. The host's side here is ``provider.host`` (HostControl), written from the spec.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from provider.host.control import HostControl, ProviderIdentity
from provider.host.lattice import LocalLattice, consumer_link, handler_link
from provider.host.launcher import ProviderProcess
from provider.host.machine import free_port
from provider.host.native import echo
from provider.host.nats_server import NatsServer
from provider.wrpc.codec import Err
from provider.wrpc.messaging import BrokerMessage
from tests.conftest import Connect, MakeLattice

PROVIDER = "websocket-provider"
WAIT = 10.0


async def echo_once(port: int, text: str, **options: object) -> str:
    """Open a client, send one JSON frame, return the body that comes back."""
    async with await connect(f"ws://127.0.0.1:{port}/ws", open_timeout=WAIT, **options) as ws:  # type: ignore[arg-type]
        await ws.send(json.dumps({"subject": "t", "body": text}))
        reply = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
        body: str = reply["body"]
        return body


def _environ(pid: int) -> list[bytes]:
    with open(f"/proc/{pid}/environ", "rb") as file:
        return file.read().split(b"\0")


async def test_healthy_within_five_seconds_with_an_empty_environment(
    connect: Connect, nats_server: NatsServer, launcher: Path
) -> None:
    """The first host health check comes 5 s after spawning: the provider must be healthy by then,
    started with no PATH, no HOME, nothing but what the host passes."""
    host = HostControl(await connect(nats_server))
    provider = ProviderIdentity(PROVIDER)
    process = ProviderProcess(launcher)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await process.start(host.host_data(provider, nats_url=nats_server.url))
    try:
        await host.wait_healthy(provider, timeout=5.0)
        assert loop.time() - started < 5.0
        environ = _environ(process.pid)
        assert not [v for v in environ if v.startswith((b"PATH=", b"HOME=", b"VIRTUAL_ENV="))]
    finally:
        await host.shutdown(provider)
        await process.kill()


async def test_links_from_host_data_are_applied_at_start(make_lattice: MakeLattice) -> None:
    """Links the host already knows come in HostData and work as soon as the provider is healthy."""
    port = free_port()
    lattice = await make_lattice(
        links=(
            handler_link(PROVIDER, "echo", MODE="server", URI=f"127.0.0.1:{port}"),
            consumer_link("echo", PROVIDER, MODE="server"),
        )
    )
    await lattice.component("echo", echo)
    assert await echo_once(port, "from hostdata links") == "from hostdata links"


@pytest.mark.parametrize(
    ("environment", "loop"),
    [({}, "event loop: uvloop "), ({"WASMCLOUD_WS_EVENT_LOOP": "asyncio"}, "event loop: asyncio")],
    ids=["default-uvloop", "asyncio"],
)
async def test_the_provider_serves_on_either_event_loop(
    make_lattice: MakeLattice, environment: dict[str, str], loop: str
) -> None:
    """uvloop unless the environment asks for asyncio's own loop; the provider works the same
    on both (the rest of the suite runs it on the default, uvloop)."""
    port = free_port()
    lattice = await make_lattice(
        links=(
            handler_link(PROVIDER, "echo", MODE="server", URI=f"127.0.0.1:{port}"),
            consumer_link("echo", PROVIDER, MODE="server"),
        ),
        environment=environment,
    )
    await lattice.component("echo", echo)
    for n in range(20):
        assert await echo_once(port, f"frame {n}") == f"frame {n}"
    assert loop in lattice.process.output


async def test_an_unknown_event_loop_exits_2_naming_the_variable(
    connect: Connect, nats_server: NatsServer, launcher: Path
) -> None:
    host = HostControl(await connect(nats_server))
    process = ProviderProcess(launcher, environment={"WASMCLOUD_WS_EVENT_LOOP": "trio"})
    await process.start(host.host_data(ProviderIdentity(PROVIDER), nats_url=nats_server.url))
    assert await process.wait(WAIT) == 2
    assert "WASMCLOUD_WS_EVENT_LOOP='trio': expected one of uvloop, asyncio" in process.output


async def test_sealed_link_secrets_and_provider_secrets_become_config(make_lattice: MakeLattice) -> None:
    """An AUTH_TOKEN sealed into a link (xkey) is opened and enforced; a provider-level secret works
    as a config default; neither value is ever logged, even at debug level."""
    sealed_port, default_port = free_port(), free_port()
    lattice = await make_lattice(
        secrets={"AUTH_TOKEN": "provider-wide-secret"},
        log_level="debug",
        links=(handler_link(PROVIDER, "echo", MODE="server", URI=f"127.0.0.1:{sealed_port}"),),
        link_secrets={(PROVIDER, "echo"): {"AUTH_TOKEN": "sealed-link-secret"}},
    )
    await lattice.component("echo", echo)
    await lattice.put_link(consumer_link("echo", PROVIDER, MODE="server"))
    await lattice.put_link(
        handler_link(PROVIDER, "echo", "second", MODE="server", URI=f"127.0.0.1:{default_port}")
    )
    bearer = {"additional_headers": {"Authorization": "Bearer sealed-link-secret"}}
    assert await echo_once(sealed_port, "sealed", **bearer) == "sealed"
    with pytest.raises(InvalidStatus):
        await echo_once(sealed_port, "no token")
    other = {"additional_headers": {"Authorization": "Bearer provider-wide-secret"}}
    assert await echo_once(default_port, "default", **other) == "default"
    put_secret = free_port()
    await lattice.put_link(
        handler_link(PROVIDER, "echo", "third", MODE="server", URI=f"127.0.0.1:{put_secret}"),
        secrets={"AUTH_TOKEN": "put-time-secret"},
    )
    third = {"additional_headers": {"Authorization": "Bearer put-time-secret"}}
    assert await echo_once(put_secret, "put", **third) == "put"
    output = lattice.process.output
    assert "DEBUG" in output
    for secret in ("sealed-link-secret", "provider-wide-secret", "put-time-secret"):
        assert secret not in output


@pytest.mark.parametrize(
    ("stdin", "message"),
    [
        (b"\r\n", "stdin was empty"),
        (b"%%%not-base64%%%\r\n", "not valid base64"),
        (base64.b64encode(b'{"host_id": "N"}') + b"\r\n", "'provider_key'"),
        (base64.b64encode(b"[1]") + b"\r\n", "expected a JSON object"),
    ],
    ids=["empty", "not-base64", "no-provider-key", "not-an-object"],
)
async def test_malformed_host_data_exits_nonzero_with_a_clear_message(
    launcher: Path, stdin: bytes, message: str
) -> None:
    """Unusable HostData ends the process with exit code 2 and says what was wrong."""
    process = ProviderProcess(launcher)
    await process.start(stdin)
    assert await process.wait(WAIT) == 2
    assert message in process.output


async def test_shutdown_with_another_host_id_is_ignored(make_lattice: MakeLattice) -> None:
    """Providers with one id on several hosts all hear shutdown: only the right host_id stops this one."""
    lattice = await make_lattice()
    assert lattice.host is not None
    assert await lattice.host.shutdown(lattice.provider, 0.3, host_id="NSOMEOTHERHOST") is None
    health = await lattice.host.health(lattice.provider)
    assert health is not None
    assert health["healthy"] is True
    assert lattice.process.returncode is None


async def test_shutdown_exits_zero_within_300_ms(make_lattice: MakeLattice) -> None:
    """The right host_id: reply, clean up and exit 0 before the host's 300 ms run out."""
    lattice = await make_lattice()
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await lattice.shutdown() == b"shutting down"
    assert await lattice.process.wait(WAIT) == 0
    assert loop.time() - started < 0.3


async def test_sigterm_stops_cleanly(make_lattice: MakeLattice) -> None:
    """Run by hand, Ctrl-C or SIGTERM stops the provider the same clean way (exit 0)."""
    lattice = await make_lattice()
    os.kill(lattice.process.pid, signal.SIGTERM)
    assert await lattice.process.wait(WAIT) == 0
    assert "stopped" in lattice.process.output


async def test_config_update_is_applied_to_links(make_lattice: MakeLattice) -> None:
    """config.update replaces the provider defaults: a link that took URI from them moves to the new one."""
    first, second = free_port(), free_port()
    lattice = await make_lattice(config={"URI": f"127.0.0.1:{first}"})
    await lattice.component("echo", echo)
    await lattice.put_link(handler_link(PROVIDER, "echo", MODE="server"))
    await lattice.put_link(consumer_link("echo", PROVIDER, MODE="server"))
    assert await echo_once(first, "before") == "before"
    assert lattice.host is not None
    since = lattice.process.total_lines
    await lattice.host.update_config(lattice.provider, {"URI": f"127.0.0.1:{second}"})
    await lattice.process.wait_for_line(rf"listening on ws://127\.0\.0\.1:{second}/ws", WAIT, since)
    assert await echo_once(second, "after") == "after"
    with pytest.raises(ConnectionRefusedError):  # nothing listens on the old address any more
        await echo_once(first, "gone")


async def test_bad_link_config_is_rejected_whole_with_the_key_and_reason(make_lattice: MakeLattice) -> None:
    """A link with a bad value is refused (logged with key, value and reason) and nothing of it stays."""
    lattice = await make_lattice()
    port = free_port()
    line = await lattice.put_link(
        handler_link(PROVIDER, "echo", MODE="server", URI=f"127.0.0.1:{port}", MAX_CONNECTIONS="lots")
    )
    assert line is not None
    assert "rejected link" in line
    assert "MAX_CONNECTIONS='lots': must be a whole number" in line
    missing = await lattice.put_link(handler_link(PROVIDER, "echo", "other", URI=f"127.0.0.1:{port}"))
    assert missing is not None
    assert "MODE is missing" in missing
    with pytest.raises(ConnectionRefusedError):
        await echo_once(port, "nothing listens")


async def test_malformed_link_put_is_logged_and_the_provider_keeps_serving(make_lattice: MakeLattice) -> None:
    """Garbage on the link-put subject is logged; the next good link still applies."""
    lattice = await make_lattice()
    assert lattice.host is not None
    await lattice.host.put_raw(lattice.provider, b"\xff not json")
    await lattice.process.wait_for_line("ignored a link put: link definition is not JSON", WAIT)
    await lattice.component("echo", echo)
    port = free_port()
    await lattice.put_link(handler_link(PROVIDER, "echo", MODE="server", URI=f"127.0.0.1:{port}"))
    await lattice.put_link(consumer_link("echo", PROVIDER, MODE="server"))
    assert await echo_once(port, "still serving") == "still serving"


async def test_consumer_call_from_an_unlinked_component_gets_err(make_lattice: MakeLattice) -> None:
    """publish from a component with no consumer link: err naming it, not a trap or a timeout."""
    lattice = await make_lattice()
    stranger = await lattice.component("stranger", echo)
    result = await stranger.publish(BrokerMessage("ws.broadcast", b"", None))
    assert isinstance(result, Err)
    assert "component not linked: 'stranger'" in result.value


async def test_structured_logging_writes_json_lines(make_lattice: MakeLattice) -> None:
    """With structured_logging, every log line is a JSON object with level, target and message."""
    lattice = await make_lattice(structured_logging=True)
    await lattice.put_link(handler_link(PROVIDER, "echo", MODE="server", URI=f"127.0.0.1:{free_port()}"))
    entries = [json.loads(line) for line in lattice.process.lines if line.strip()]
    assert entries
    assert {"timestamp", "level", "target", "message"} <= entries[0].keys()
    assert any(e["message"].startswith("put link") for e in entries)


async def test_a_restarted_provider_gets_its_links_again(
    make_lattice: MakeLattice, nats_server: NatsServer, launcher: Path
) -> None:
    """After a crash (SIGKILL) a host restarts the provider with the current links in HostData."""
    port = free_port()
    links = (
        handler_link(PROVIDER, "echo", MODE="server", URI=f"127.0.0.1:{port}"),
        consumer_link("echo", PROVIDER, MODE="server"),
    )
    first = await make_lattice(links=links)
    await first.component("echo", echo)
    assert await echo_once(port, "one") == "one"
    await first.process.kill()
    second = LocalLattice(nats_server.url, launcher, links=links)
    try:
        await second.start()
        assert await echo_once(port, "two") == "two"
    finally:
        await second.stop()


async def test_a_clean_shutdown_logs_no_connection_trouble(make_lattice: MakeLattice) -> None:
    """Closing its own NATS connection at shutdown is not reported as a lost connection."""
    lattice = await make_lattice()
    assert await lattice.shutdown() == b"shutting down"
    assert await lattice.process.wait(WAIT) == 0
    assert "disconnected" not in lattice.process.output
    assert "stopped" in lattice.process.output
