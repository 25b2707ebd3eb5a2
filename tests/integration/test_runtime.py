"""The provider runtime in-process against a real nats-server and the host's side of the protocol.

The capability here records what the runtime asks of it, so each test can check exactly
which link operations reached it. Process-level behaviour (stdin, empty environment,
exit codes) is covered in ``test_provider_process.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from provider.errors import ConfigError
from provider.host.control import HostControl, ProviderIdentity
from provider.host.nats_server import NatsServer
from provider.wasmcloud.capability import Health, ProviderContext
from provider.wasmcloud.config import Config
from provider.wasmcloud.links import Link, LinkDefinition, Role
from provider.wasmcloud.runtime import ProviderRuntime
from provider.wrpc.codec import Err, Ok
from provider.wrpc.messaging import (
    PUBLISH,
    REQUEST,
    BrokerMessage,
    MessageResult,
    RequestParams,
    UnitResult,
)
from provider.wrpc.nats import WrpcTransport
from provider.wrpc.subjects import prefix
from tests.conftest import Connect

PROVIDER = "pymsg"
WAIT = 5.0


@dataclass
class Recorder:
    """A capability that records every call and can be told to reject links or stall."""

    events: list[tuple[str, str, str]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    reject_mode: str = "bad"
    context: ProviderContext | None = None
    publish_gate: asyncio.Event | None = None
    config: Config | None = None

    def _note(self, what: str, link: Link) -> None:
        self.events.append((what, link.role.value, link.component_id))
        self.changed.set()

    async def wait_for(self, count: int) -> list[tuple[str, str, str]]:
        async with asyncio.timeout(WAIT):
            while len(self.events) < count:
                self.changed.clear()
                await self.changed.wait()
        return self.events

    async def start(self, context: ProviderContext) -> None:
        self.context = context

    async def put_link(self, link: Link) -> None:
        if link.config.get("MODE") == self.reject_mode:
            raise ConfigError(f"MODE={link.config['MODE']!r} is not supported")
        self._note("put", link)

    async def delete_link(self, link: Link) -> None:
        self._note("delete", link)

    async def update_config(self, config: Config) -> None:
        self.config = config
        self.changed.set()

    async def shutdown(self) -> None:
        self.events.append(("shutdown", "", ""))

    def health(self) -> Health:
        return Health(True)

    async def publish(self, link: Link, msg: BrokerMessage) -> UnitResult:
        if self.publish_gate is not None:
            await self.publish_gate.wait()
        return (
            Ok(None) if msg.subject != "fail" else Err(f"{link.component_id} said {link.config.get('MODE')}")
        )

    async def request(self, link: Link, params: RequestParams) -> MessageResult:
        secret = link.config.get("AUTH_TOKEN", "")
        return Ok(BrokerMessage(params.subject, secret.encode(), None))


def consumer_link(component: str, **config: str) -> LinkDefinition:
    return LinkDefinition(component, PROVIDER, "wasmcloud", "messaging", ("consumer",), target_config=config)


def handler_link(component: str, **config: str) -> LinkDefinition:
    return LinkDefinition(PROVIDER, component, "wasmcloud", "messaging", ("handler",), source_config=config)


@dataclass
class Lattice:
    host: HostControl
    provider: ProviderIdentity
    runtime: ProviderRuntime
    capability: Recorder
    component: WrpcTransport
    task: asyncio.Task[None]

    async def publish_as(self, component: str, msg: BrokerMessage, link_name: str = "default") -> UnitResult:
        return await self.component.invoke(
            prefix("default", PROVIDER),
            PUBLISH,
            msg,
            headers={"source-id": component, "link-name": link_name},
        )


async def start_lattice(
    connect: Connect, server: NatsServer, links: tuple[LinkDefinition, ...] = (), **host_data: object
) -> Lattice:
    host = HostControl(await connect(server))
    provider = ProviderIdentity(PROVIDER)
    data = host.host_data(provider, nats_url=server.url, links=links, **host_data)  # type: ignore[arg-type]
    capability = Recorder()
    runtime = ProviderRuntime(data, capability)
    task = asyncio.create_task(runtime.run(await connect(server)))
    component = WrpcTransport(await connect(server))
    await component.start()
    await host.wait_healthy(provider, WAIT)
    return Lattice(host, provider, runtime, capability, component, task)


@pytest.fixture
async def lattice(connect: Connect, nats_server: NatsServer) -> AsyncIterator[Lattice]:
    lat = await start_lattice(
        connect, nats_server, (consumer_link("echo", MODE="server"),), config={"URI": "127.0.0.1:9"}
    )
    yield lat
    lat.runtime.stop()
    await asyncio.wait_for(lat.task, WAIT)
    await lat.component.close()


async def test_initial_links_are_applied_before_healthy(lattice: Lattice) -> None:
    """HostData's links reach the capability before the provider reports healthy."""
    assert lattice.capability.events == [("put", "target", "echo")]
    assert await lattice.publish_as("echo", BrokerMessage("x", b"", None)) == Ok(None)


async def test_put_and_delete_in_both_roles(lattice: Lattice) -> None:
    """A handler link makes the provider the source; a consumer link the target; deletes undo them."""
    handler = handler_link("chat", MODE="server")
    consumer = consumer_link("chat", MODE="server")
    await lattice.host.put_link(lattice.provider, handler)
    await lattice.host.put_link(lattice.provider, consumer)
    events = await lattice.capability.wait_for(3)
    assert events[1:] == [("put", "source", "chat"), ("put", "target", "chat")]
    assert await lattice.publish_as("chat", BrokerMessage("x", b"", None)) == Ok(None)
    await lattice.host.delete_link(handler)
    await lattice.host.delete_link(consumer)
    events = await lattice.capability.wait_for(5)
    assert events[3:] == [("delete", "source", "chat"), ("delete", "target", "chat")]
    result = await lattice.publish_as("chat", BrokerMessage("x", b"", None))
    assert isinstance(result, Err)
    assert "component not linked: 'chat'" in result.value


async def test_duplicate_put_is_ignored_and_a_changed_one_reapplied(lattice: Lattice) -> None:
    """The same link twice is one put; a changed config is a delete and a put of the whole link."""
    link = consumer_link("dup", MODE="server")
    await lattice.host.put_link(lattice.provider, link)
    await lattice.host.put_link(lattice.provider, link)
    await lattice.host.put_link(lattice.provider, consumer_link("dup", MODE="client"))
    await lattice.host.put_link(lattice.provider, consumer_link("marker"))
    events = await lattice.capability.wait_for(5)
    assert events[1:] == [
        ("put", "target", "dup"),
        ("delete", "target", "dup"),
        ("put", "target", "dup"),
        ("put", "target", "marker"),
    ]


async def test_links_naming_neither_side_or_another_package_are_ignored(lattice: Lattice) -> None:
    """Only links that name this provider, for wasmcloud:messaging, are applied."""
    await lattice.host.put_link(
        lattice.provider, LinkDefinition("a", "b", "wasmcloud", "messaging", ("consumer",))
    )
    await lattice.host.put_link(
        lattice.provider, LinkDefinition("c", PROVIDER, "wasi", "keyvalue", ("store",))
    )
    await lattice.host.put_link(lattice.provider, consumer_link("marker"))
    events = await lattice.capability.wait_for(2)
    assert events[1:] == [("put", "target", "marker")]


async def test_malformed_link_json_is_logged_and_serving_goes_on(
    lattice: Lattice, caplog: pytest.LogCaptureFixture
) -> None:
    """A put that is not JSON, or lacks fields, is logged with the reason; later puts still apply."""
    await lattice.host.put_raw(lattice.provider, b"{not json")
    await lattice.host.put_raw(lattice.provider, b'{"source_id": "x"}')
    await lattice.host.put_link(lattice.provider, consumer_link("after"))
    await lattice.capability.wait_for(2)
    assert "link definition is not JSON" in caplog.text
    assert "'target' must be a non-empty string" in caplog.text
    assert await lattice.publish_as("after", BrokerMessage("x", b"", None)) == Ok(None)


async def test_rejected_link_is_not_recorded(lattice: Lattice, caplog: pytest.LogCaptureFixture) -> None:
    """A link the capability rejects is logged with its reason and calls through it get err."""
    await lattice.host.put_link(lattice.provider, consumer_link("picky", MODE="bad"))
    await lattice.host.put_link(lattice.provider, consumer_link("marker"))
    await lattice.capability.wait_for(2)
    assert "MODE='bad' is not supported" in caplog.text
    result = await lattice.publish_as("picky", BrokerMessage("x", b"", None))
    assert isinstance(result, Err)
    assert "not linked" in result.value


async def test_call_from_an_unlinked_component_gets_err_naming_it(lattice: Lattice) -> None:
    """consumer.publish and request from a component with no link return err, not a trap."""
    result = await lattice.publish_as("stranger", BrokerMessage("x", b"", None))
    assert result == Err(
        "component not linked: 'stranger' has no link named 'default' to provider 'pymsg' "
        "for wasmcloud:messaging/consumer"
    )
    other_name = await lattice.publish_as("echo", BrokerMessage("x", b"", None), link_name="other")
    assert isinstance(other_name, Err)
    assert "no link named 'other'" in other_name.value
    request = await lattice.component.invoke(
        prefix("default", PROVIDER), REQUEST, RequestParams("s", b"", 10), headers={"source-id": "stranger"}
    )
    assert isinstance(request, Err)
    assert "'stranger'" in request.value


async def test_sealed_link_secrets_are_opened_and_win_over_config(lattice: Lattice) -> None:
    """Secrets sealed to the provider's xkey are opened and override the link's plain config."""
    link = consumer_link("secretive", AUTH_TOKEN="plain")
    await lattice.host.put_link(lattice.provider, link, secrets={"AUTH_TOKEN": "sealed-token"})
    await lattice.capability.wait_for(2)
    result = await lattice.component.invoke(
        prefix("default", PROVIDER), REQUEST, RequestParams("s", b"", 10), headers={"source-id": "secretive"}
    )
    assert result == Ok(BrokerMessage("s", b"sealed-token", None))
    stored = lattice.runtime.links.target_link("secretive", "default")
    assert stored is not None
    assert "sealed-token" not in repr(stored)


async def test_config_update_reaches_the_capability_and_reapplies_affected_links(lattice: Lattice) -> None:
    """config.update replaces the provider config; links whose effective config changes are re-put."""
    await lattice.host.update_config(lattice.provider, {"URI": "127.0.0.1:10", "EXTRA": "1"})
    events = await lattice.capability.wait_for(3)
    assert lattice.capability.config is not None
    assert lattice.capability.config["uri"] == "127.0.0.1:10"
    assert events[1:] == [("delete", "target", "echo"), ("put", "target", "echo")]
    echo = lattice.runtime.links.target_link("echo", "default")
    assert echo is not None
    assert echo.config["EXTRA"] == "1"
    assert echo.role is Role.TARGET


async def test_health_answers_while_the_data_plane_is_busy(lattice: Lattice) -> None:
    """200 publishes stuck in the capability do not delay a health answer."""
    lattice.capability.publish_gate = asyncio.Event()
    calls = [
        asyncio.create_task(lattice.publish_as("echo", BrokerMessage("x", b"", None))) for _ in range(200)
    ]
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await lattice.host.health(lattice.provider) == {"healthy": True}
    assert loop.time() - started < 2.0
    lattice.capability.publish_gate.set()
    assert all(r == Ok(None) for r in await asyncio.gather(*calls))


async def test_shutdown_for_another_host_is_ignored(lattice: Lattice) -> None:
    """Several hosts can run the same provider id: only ours may stop it."""
    assert await lattice.host.shutdown(lattice.provider, host_id="NOTTHISHOST") is None
    assert await lattice.host.health(lattice.provider) == {"healthy": True}
    assert not lattice.task.done()


async def test_shutdown_for_this_host_answers_and_stops(lattice: Lattice) -> None:
    """The right host id gets a reply within 300 ms and the runtime ends, capability shut down."""
    assert await lattice.host.shutdown(lattice.provider, timeout=0.3) == b"shutting down"
    await asyncio.wait_for(lattice.task, WAIT)
    assert lattice.capability.events[-1] == ("shutdown", "", "")


async def test_handle_message_calls_a_component_with_headers(
    connect: Connect, nats_server: NatsServer, lattice: Lattice
) -> None:
    """The context's handle_message invokes the component's handler with source-id/target-id."""
    seen: list[dict[str, str]] = []

    async def handler(msg: BrokerMessage, headers: object) -> UnitResult:
        seen.append(dict(headers))  # type: ignore[call-overload]
        return Err("nope") if msg.subject == "no" else Ok(None)

    from provider.wrpc.messaging import HANDLE_MESSAGE

    await lattice.component.serve(prefix("default", "echo"), HANDLE_MESSAGE, handler)
    assert lattice.capability.context is not None
    assert await lattice.capability.context.handle_message("echo", BrokerMessage("hi", b"", "r")) == Ok(None)
    assert await lattice.capability.context.handle_message("echo", BrokerMessage("no", b"", None)) == Err(
        "nope"
    )
    assert seen[0] == {"source-id": PROVIDER, "target-id": "echo"}
