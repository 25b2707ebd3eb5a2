"""provider.wasmcloud.bus._InOrder: a lattice subscription's messages are handled in arrival
order, at once while handlers answer at once; one that waits holds the rest back, up to a bound;
a subject or reply that is not UTF-8 is dropped and counted. (No socket: a stand-in connection.)"""

from __future__ import annotations

import asyncio
from collections import Counter

from provider.wasmcloud import bus
from provider.wasmcloud.capability import BusHandler


class Connection:
    """What _InOrder uses of a NatsConnection."""

    def __init__(self) -> None:
        self.drops: Counter[str] = Counter()

    def drop(self, reason: str, subject: bytes | str, detail: str) -> None:
        self.drops[reason] += 1

    def reply_of(self, subject: bytes, reply: bytes) -> str | None:
        try:
            return reply.decode() or None
        except UnicodeDecodeError:
            self.drop("not_utf8", subject, "reply")
            return None


def subscribed(handler: BusHandler) -> tuple[bus._InOrder, Connection]:
    """A subscription on ``x.>`` delivering to ``handler``, and the stand-in connection it reads."""
    nc = Connection()
    return bus._InOrder(nc, "x.>", handler), nc  # type: ignore[arg-type]


class HeldFirst:
    """A handler that records each message and makes the one on ``x.first`` wait for :attr:`gate`."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.subjects: list[str] = []
        self.sizes: list[int] = []

    def __call__(self, subject: str, reply: str, data: bytes) -> asyncio.Future[None] | None:
        self.subjects.append(subject)
        self.sizes.append(len(data))
        return asyncio.ensure_future(self.gate.wait()) if subject == "x.first" else None  # type: ignore[arg-type]


async def release(ordered: bus._InOrder, gate: asyncio.Event) -> None:
    """Let the waiting handler finish and wait until the backlog behind it is handled."""
    draining = ordered._draining
    assert draining is not None
    gate.set()
    async with asyncio.timeout(5):
        await draining


async def test_messages_are_handled_in_order_and_a_waiting_handler_holds_the_rest_back() -> None:
    seen: list[str] = []
    gate = asyncio.Event()

    async def wait_then(name: str) -> None:
        await gate.wait()
        seen.append(name)

    def handler(subject: str, reply: str, data: bytes) -> asyncio.Future[None] | None:
        if data == b"wait":
            return asyncio.ensure_future(wait_then(subject))
        seen.append(subject)
        return None

    ordered, _ = subscribed(handler)
    ordered.on_message(b"x.1", b"", b"now", None)
    assert seen == ["x.1"]  # handled where it was read
    ordered.on_message(b"x.2", b"", b"wait", None)
    ordered.on_message(b"x.3", b"r.1", b"now", None)
    ordered.on_message(b"x.4", b"", b"now", None)
    await asyncio.sleep(0)
    assert seen == ["x.1"]  # x.3 and x.4 wait behind x.2
    await release(ordered, gate)
    assert seen == ["x.1", "x.2", "x.3", "x.4"]
    ordered.on_message(b"x.5", b"", b"now", None)
    assert seen[-1] == "x.5"  # at once again


async def test_the_backlog_is_bounded_and_bad_subjects_are_dropped() -> None:
    handler = HeldFirst()
    gate, handled = handler.gate, handler.subjects
    ordered, nc = subscribed(handler)
    ordered.on_message(b"x.\xff", b"", b"", None)
    ordered.on_message(b"x.ok", b"r.\xff", b"", None)
    assert nc.drops["not_utf8"] == 2
    assert handled == []
    ordered.on_message(b"x.first", b"", b"", None)
    for i in range(bus.BACKLOG + 50):
        ordered.on_message(b"x.%d" % i, b"", b"", None)
    assert nc.drops[bus.BACKLOG_FULL] == 50
    await release(ordered, gate)
    assert len(handled) == 1 + bus.BACKLOG
    assert handled[1:3] == ["x.0", "x.1"]
    assert handled[-1] == f"x.{bus.BACKLOG - 1}"
    await ordered.unsubscribe()


async def test_the_backlog_is_bounded_in_bytes_too() -> None:
    """Large messages behind a waiting handler are held up to BACKLOG_BYTES, not 10,000 of them."""
    handler = HeldFirst()
    gate, sizes = handler.gate, handler.sizes
    ordered, nc = subscribed(handler)
    ordered.on_message(b"x.first", b"", b"", None)
    big = b"\0" * (1 << 20)
    for _ in range(100):
        ordered.on_message(b"x.big", b"", big, None)
    kept = bus.BACKLOG_BYTES // len(big)
    assert nc.drops[bus.BACKLOG_FULL] == 100 - kept
    await release(ordered, gate)
    assert sizes == [0] + [len(big)] * kept
    ordered.on_message(b"x.big", b"", big, None)  # room again
    assert len(sizes) == kept + 2
