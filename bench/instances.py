"""Forwarding across provider instances, measured (design §7): ``python -m bench.instances``.

Two instances of the provider (one provider id, two "hosts") on one NATS server, with the same
links; a WebSocket client holds a session on the first. A native component publishes to that
session many times, one at a time. Each publish reaches either instance (queue group), so some
are local and some forwarded; after each call the second instance's forwarded counter (asked on
its own health subject, outside the timed call) tells which it was. Prints p50 / p99 of both
kinds, then how long a publish to a session of a killed instance takes to err.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import tempfile
import time
from pathlib import Path

from websockets.asyncio.client import connect

from provider.host.lattice import LocalLattice, consumer_link, handler_link
from provider.host.launcher import write_launcher
from provider.host.machine import free_port
from provider.host.native import NativeComponent
from provider.host.nats_server import NatsServer
from provider.wrpc.codec import Ok
from provider.wrpc.messaging import BrokerMessage, UnitResult


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _forwarded(lattice: LocalLattice) -> int:
    message = (await lattice.instance_health())["message"]
    found = re.search(r"forwarded (\d+)", message)
    return int(found.group(1)) if found else 0


async def main(calls: int) -> None:
    with NatsServer() as nats, tempfile.TemporaryDirectory() as directory:
        launcher = write_launcher(Path(directory) / "launcher")
        instances = []
        for _ in range(2):
            lattice = LocalLattice(nats.url, launcher)
            await lattice.start()
            port = free_port()
            await lattice.put_link(
                handler_link(lattice.provider_id, "bench", MODE="server", URI=f"127.0.0.1:{port}")
            )
            await lattice.put_link(consumer_link("bench", lattice.provider_id, MODE="server"))
            instances.append((lattice, port))
        (first, port), (second, _) = instances
        sessions: list[str] = []
        arrived = asyncio.Condition()

        async def remember(component: NativeComponent, msg: BrokerMessage) -> UnitResult:
            async with arrived:
                sessions.append(msg.reply_to or "")
                arrived.notify_all()
            return Ok(None)

        async def sessions_seen(count: int) -> None:
            async with asyncio.timeout(10), arrived:
                await arrived.wait_for(lambda: len(sessions) >= count)

        component = await first.component("bench", remember)
        try:
            async with await connect(f"ws://127.0.0.1:{port}/ws", compression=None) as ws:
                await ws.send(json.dumps({"subject": "hello", "body": ""}))
                await sessions_seen(1)
                local: list[float] = []
                forwarded: list[float] = []
                count = await _forwarded(second)
                for i in range(calls):
                    started = time.perf_counter()
                    result = await component.publish(BrokerMessage(sessions[0], str(i).encode(), None))
                    took = (time.perf_counter() - started) * 1000
                    assert isinstance(result, Ok), result
                    await ws.recv()
                    now = await _forwarded(second)
                    (forwarded if now > count else local).append(took)
                    count = now
            for kind, values in (("local", local), ("forwarded", forwarded)):
                print(
                    f"{kind:>9} publish: {len(values)} calls, p50 {statistics.median(values):.2f} ms, "
                    f"p99 {_percentile(values, 0.99):.2f} ms"
                )
            # A session of an instance that is killed: the publish errs at once (no responders).
            async with await connect(f"ws://127.0.0.1:{instances[1][1]}/ws", compression=None) as other:
                await other.send(json.dumps({"subject": "hello", "body": ""}))
                await sessions_seen(2)
                await second.process.kill()
                started = time.perf_counter()
                result = await component.publish(BrokerMessage(sessions[1], b"anyone?", None))
                took = (time.perf_counter() - started) * 1000
                print(f"publish to a killed instance's session: {result} after {took:.1f} ms")
        finally:
            await second.stop()
            await first.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=2000)
    asyncio.run(main(parser.parse_args().calls))
