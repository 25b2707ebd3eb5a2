"""What the wasmCloud 2.x host (``wash dev``) does with a messaging component, as the bridge relies on it.

Each test pins one fact of the v2 messaging plugin (wasmCloud main,
``crates/wash-runtime/src/plugin/wasmcloud_messaging/nats.rs``) against the real host running
``components/v2-echo``, straight over NATS (no bridge): if a later wash changes it, the
bridge's README section is wrong and these fail first.
"""

from __future__ import annotations

import asyncio
import secrets

import nats
import pytest
from nats.aio.msg import Msg

from provider.host.nats_server import NatsServer
from provider.host.wash import WashDev

pytestmark = pytest.mark.timeout(600)  # the first test waits for wash dev (~45 s, more on a busy machine)
WAIT = 10.0


def queue_group(namespace: str, workload: str, component: str) -> str:
    """The v2 plugin's default queue group: ``wasmcloud.<ns>.<workload>.<component>.<FNV-1a 64 hex>``."""
    value = 0xCBF29CE484222325
    for byte in f"{namespace}\0{workload}\0{component}".encode():
        value = ((value ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"wasmcloud.{namespace}.{workload}.{component}.{value:016x}"


async def test_a_message_is_answered_on_its_reply_subject(wash_dev: WashDev, v2_nats: NatsServer) -> None:
    """The host hands the component the message's reply subject; its publish to it is a plain NATS publish."""
    nc = await nats.connect(v2_nats.url)
    try:
        answer = await nc.request("ws.in.hello", b"hi there", timeout=WAIT)
        assert answer.data == b"hi there"
        assert not answer.headers
    finally:
        await nc.close()


async def test_an_err_from_the_component_publishes_nothing(wash_dev: WashDev, v2_nats: NatsServer) -> None:
    """``handle-message`` returning ``err`` is only logged by the host (a warning): nothing is sent back."""
    nc = await nats.connect(v2_nats.url)
    reply = f"test.reply.{secrets.token_hex(8)}"
    got: list[bytes] = []
    marker = asyncio.Event()

    async def record(msg: Msg) -> None:
        got.append(msg.data)
        if msg.data == b"marker":
            marker.set()

    try:
        await nc.subscribe(reply, cb=record)
        await nc.flush()
        reason = secrets.token_hex(4)
        await nc.publish("ws.in.fail", reason.encode(), reply=reply)
        await asyncio.to_thread(wash_dev.wait_for_line, r"messaging handler returned an error: failing", WAIT)
        # The failed call has returned; a later echo on the same reply is the only thing that arrives.
        await nc.publish("ws.in.echo", b"marker", reply=reply)
        await asyncio.wait_for(marker.wait(), WAIT)
        assert got == [b"marker"]
    finally:
        await nc.close()


async def test_the_host_queue_subscribes_in_a_group_named_after_the_component(
    wash_dev: WashDev, v2_nats: NatsServer
) -> None:
    """``subscriptions`` are queue subscriptions: another member of the group takes its share of messages."""
    group = queue_group("default", "dev", "wash-dev-component")  # wash dev's workload and component names
    nc = await nats.connect(v2_nats.url)
    taken: list[bytes] = []
    answers: list[bytes] = []
    count = 40
    done = asyncio.Event()

    async def take(msg: Msg) -> None:
        taken.append(msg.data)
        if len(taken) + len(answers) == count:
            done.set()

    async def answered(msg: Msg) -> None:
        answers.append(msg.data)
        if len(taken) + len(answers) == count:
            done.set()

    try:
        await nc.subscribe("ws.in.>", queue=group, cb=take)
        reply = nc.new_inbox()
        await nc.subscribe(reply, cb=answered)
        await nc.flush()
        for i in range(count):
            await nc.publish("ws.in.share", str(i).encode(), reply=reply)
        await asyncio.wait_for(done.wait(), WAIT)
        assert taken, f"the host took all {count} messages: we are not in its queue group"
        assert answers, f"we took all {count} messages: the host is not in that queue group"
        assert sorted(int(x) for x in taken + answers) == list(range(count))
    finally:
        await nc.close()


async def test_the_host_runs_messages_concurrently(wash_dev: WashDev, v2_nats: NatsServer) -> None:
    """Each message runs in a fresh instance, concurrently: a burst is answered while earlier ones still run.

    Checked without timing: ``sessions`` makes the component ``request`` a subject nobody answers
    until the test lets it, and an echo sent after it is answered meanwhile.
    """
    nc = await nats.connect(v2_nats.url)
    held: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()

    async def hold(msg: Msg) -> None:
        if not held.done():
            held.set_result(msg)

    try:
        await nc.subscribe("ws.sessions", cb=hold)  # the component's consumer.request lands here
        reply = nc.new_inbox()
        sub = await nc.subscribe(reply)
        await nc.flush()
        await nc.publish("ws.in.sessions", b"", reply=reply)
        request = await asyncio.wait_for(held, WAIT)  # the first message is now inside the component
        await nc.publish("ws.in.echo", b"second", reply=reply)
        assert (await sub.next_msg(WAIT)).data == b"second"  # answered while the first still waits
        await request.respond(b"[]")
        assert (await sub.next_msg(WAIT)).data == b"[]"
    finally:
        await nc.close()
