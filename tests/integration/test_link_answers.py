"""Link puts and deletes answered on a structured channel, not read from log lines.

A wasmCloud host publishes link puts and deletes without a reply subject (protocol spec §2.3);
the local host sends them *with* one, and the provider answers with a ``LinkAnswer`` once it
has applied or refused the link. Both ends treat what comes over NATS as hostile: the
provider answers only on a plain subject; the host checks the answer whole and waits with a
deadline.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from provider.errors import ConfigError
from provider.host.control import HostControl, ProviderIdentity
from provider.host.lattice import consumer_link, handler_link
from provider.host.machine import free_port
from provider.host.nats_server import NatsServer
from provider.wasmcloud.links import LinkAnswer, LinkOp
from tests.conftest import Connect, MakeLattice

PROVIDER = "websocket-provider"
WAIT = 10.0


async def test_answers_do_not_depend_on_what_the_provider_logs(make_lattice: MakeLattice) -> None:
    """With the provider logging errors only, no line says a link was put or deleted, and the
    host still learns each outcome, with the provider's reason for a refusal."""
    lattice = await make_lattice(log_level="error")
    link = handler_link(PROVIDER, "echo", MODE="server", URI=f"127.0.0.1:{free_port()}")
    assert await lattice.put_link(link) == f"put link {link.describe()}"
    assert await lattice.put_link(link) == f"put link {link.describe()}"  # a repeat: still in place
    bad = handler_link(PROVIDER, "echo", "bad", MODE="server", URI="nowhere")
    refused = await lattice.put_link(bad)
    assert refused is not None
    assert refused.startswith(f"rejected link {bad.describe()}: URI='nowhere'")
    assert await lattice.delete_link(link) == f"deleted link {link.describe()}"
    gone = await lattice.delete_link(link)
    assert gone == f"did not delete link {link.describe()}: the provider holds no such link"
    assert "put link" not in lattice.process.output
    assert "deleted link" not in lattice.process.output


async def test_links_the_provider_does_not_take_are_answered_as_refused(make_lattice: MakeLattice) -> None:
    """A link naming neither side as this provider, or for another interface, is answered (not
    left to time out)."""
    lattice = await make_lattice()
    assert lattice.host is not None
    stranger = consumer_link("echo", "someone-else", MODE="server")
    answer = await lattice.apply_link(stranger)
    assert answer == LinkAnswer(
        LinkOp.PUT, False, stranger.describe(), f"ignored: neither side is {PROVIDER!r}"
    )
    other = replace(consumer_link("echo", PROVIDER, MODE="server"), wit_package="keyvalue")
    answer = await lattice.apply_link(other)
    assert answer is not None
    assert (answer.applied, answer.error) == (False, "ignored: this provider serves wasmcloud:messaging only")


async def test_garbage_with_a_reply_subject_gets_a_refusal(make_lattice: MakeLattice) -> None:
    """A put that is not a link definition is answered (applied false, the reason), and the
    provider serves on."""
    lattice = await make_lattice()
    assert lattice.host is not None
    subject = lattice.host.subjects(lattice.provider).link_put
    reply = await lattice.host.nc.request(subject, b"\xff not json", timeout=WAIT)
    answer = LinkAnswer.decode(reply.data)
    assert (answer.op, answer.applied, answer.link) == (LinkOp.PUT, False, "")
    assert answer.error.startswith("ignored: link definition is not JSON")
    link = consumer_link("echo", PROVIDER, MODE="server")
    assert await lattice.put_link(link) == f"put link {link.describe()}"


async def test_the_provider_answers_only_on_a_plain_reply_subject(
    make_lattice: MakeLattice, nats_server: NatsServer, connect: Connect
) -> None:
    """A reply subject is from the network: one with a wildcard is not published to (logged), and
    the link is still applied."""
    lattice = await make_lattice()
    assert lattice.host is not None
    spy = await connect(nats_server)
    heard: asyncio.Queue[Msg] = asyncio.Queue()

    async def record(msg: Msg) -> None:
        await heard.put(msg)

    await spy.subscribe("evil.>", cb=record)
    await spy.flush()
    link = consumer_link("echo", PROVIDER, MODE="server")
    payload = json.dumps(lattice.host.seal_link(link, lattice.provider, None).to_json()).encode()
    since = lattice.process.total_lines
    await lattice.host.nc.publish(lattice.host.subjects(lattice.provider).link_put, payload, reply="evil.>")
    await lattice.process.wait_for_line(r"did not answer a link put on reply subject 'evil\.>'", WAIT, since)
    # The link was applied all the same: a put of it now is a repeat, answered as in place.
    assert await lattice.put_link(link) == f"put link {link.describe()}"
    assert heard.empty()


class FakeProvider:
    """Something on the provider's link subjects that answers as it is told to."""

    def __init__(self, nc: NatsClient, answer: bytes | None) -> None:
        self.nc = nc
        self.answer = answer
        self.asked = 0

    async def respond(self, msg: Msg) -> None:
        self.asked += 1
        if self.answer is not None and msg.reply:
            await self.nc.publish(msg.reply, self.answer)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (b"\xff\xfe", "link answer is not JSON"),
        (b"[]", "link answer must be a JSON object, got list"),
        (b'{"op": "put", "applied": "yes", "link": "x"}', "'applied' must be true or false"),
        (b'{"op": ["put"], "applied": true, "link": "x"}', "'op' must be 'put' or 'delete'"),
        (b'{"op": "put", "applied": true, "link": 7}', "'link' must be a string"),
        (b'{"op": "put", "applied": false, "link": "x", "error": {}}', "'error' must be a string"),
        (b" " * 20_000 + b"{}", "more than an answer's 16384"),
        (
            json.dumps({"op": "put", "applied": True, "link": "another link"}).encode(),
            "is about a put of another link",
        ),
        (
            json.dumps({"op": "delete", "applied": True, "link": "LINK"}).encode(),
            "is about a delete of",
        ),
    ],
)
async def test_the_host_checks_every_answer_whole(
    nats_server: NatsServer, connect: Connect, answer: bytes, expected: str
) -> None:
    """A garbage answer, one for another link or another operation, or a huge one, is an error
    saying what is wrong; none is taken for an applied link."""
    nc = await connect(nats_server)
    host = HostControl(nc, lattice="answers")
    provider = ProviderIdentity(PROVIDER)
    link = consumer_link("echo", PROVIDER, MODE="server")
    fake = FakeProvider(nc, answer.replace(b"LINK", link.describe().encode()))
    await nc.subscribe(host.subjects(provider).link_put, cb=fake.respond)
    await nc.flush()
    with pytest.raises(ConfigError) as info:
        await host.ask_put_link(provider, link, timeout=WAIT)
    assert expected in str(info.value)
    assert fake.asked == 1


async def test_no_answer_is_a_timeout_and_nobody_listening_is_an_error(
    nats_server: NatsServer, connect: Connect
) -> None:
    """A provider that never answers costs the deadline, no more; with nobody on the subject, NATS says so."""
    nc = await connect(nats_server)
    host = HostControl(nc, lattice="silent")
    provider = ProviderIdentity(PROVIDER)
    link = handler_link(PROVIDER, "echo", MODE="server")
    with pytest.raises(ConfigError, match=r"no provider listens on wasmbus\.rpc\.silent\.X"):
        await host.ask_put_link(provider, link, timeout=WAIT)
    fake = FakeProvider(nc, None)
    await nc.subscribe(host.subjects(provider).link_put, cb=fake.respond)
    await nc.subscribe(f"wasmbus.rpc.silent.{PROVIDER}.linkdefs.del", cb=fake.respond)
    await nc.flush()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError, match=r"no answer to the link put within 0\.5s"):
        await host.ask_put_link(provider, link, timeout=0.5)
    with pytest.raises(TimeoutError, match=r"no answer to the link delete within 0\.5s"):
        await host.ask_delete_link(provider, link, timeout=0.5)
    assert loop.time() - started < WAIT  # generous: the point is that the wait is bounded
    assert fake.asked == 2
