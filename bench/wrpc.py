"""Micro-benchmark: wRPC invocations per second against plain nats-py request/reply.

One run, one nats-server on loopback, the callee in a child process (so caller and
callee each get a core). Each row is measured for a fixed time; the ratio column
compares with plain request/reply at the same concurrency, measured in the same run.

    make bench-wrpc            # or: python -m bench.wrpc [--seconds 3]
    python -m bench.wrpc --hostile

``--hostile`` measures instead how much a good call is delayed, and how much the callee's
resident memory grows, while a peer floods the served function with 1,200 invocations whose
params never complete and streams 64 MiB into a ``list<u8>`` declared as 4 GiB.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from provider.errors import WrpcError
from provider.host.machine import resident_bytes
from provider.host.nats_server import NatsServer
from provider.wrpc.codec import Ok, encode
from provider.wrpc.connection import NatsConnection
from provider.wrpc.connection import connect as connect_nats
from provider.wrpc.messaging import BROKER_MESSAGE, PUBLISH, BrokerMessage, UnitResult
from provider.wrpc.nats import Headers, PerCallInbox, SharedInbox, WrpcTransport
from provider.wrpc.subjects import invocation_subject

PLAIN_SUBJECT = "bench.plain"
SHARED_PREFIX = "bench.shared"
PER_CALL_PREFIX = "bench.percall"
MESSAGE = BrokerMessage("bench.subject", b"x" * 32, "reply.subject")
HEADERS = {"source-id": "bench-component", "link-name": "default"}


async def serve(url: str) -> None:
    """The callee: a plain NATS responder and the same function over wRPC, both inbox kinds."""
    nc = await connect_nats(url)

    async def plain(msg: Msg) -> None:
        await nc.publish(msg.reply, b"\x00")

    async def handler(msg: BrokerMessage, headers: Headers) -> UnitResult:
        return Ok(None)

    await nc.subscribe(PLAIN_SUBJECT, cb=plain)
    shared = WrpcTransport(nc)
    per_call = WrpcTransport(nc, inbox=PerCallInbox(nc))
    await shared.start()
    await per_call.start()
    await shared.serve(SHARED_PREFIX, PUBLISH, handler)
    await per_call.serve(PER_CALL_PREFIX, PUBLISH, handler)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
    await nc.close()


@dataclass
class Row:
    name: str
    in_flight: int
    rate: float
    p50_ms: float
    p99_ms: float
    caller_cpu_us: float
    callee_cpu_us: float


def cpu_ns(pid: int | str = "self") -> int:
    """CPU time the main thread of ``pid`` has run, in ns (``/proc/<pid>/schedstat``, Linux)."""
    with open(f"/proc/{pid}/schedstat") as stat:
        return int(stat.read().split()[0])


async def measure(
    name: str, call: Callable[[], Awaitable[object]], in_flight: int, seconds: float, callee: int
) -> Row:
    """Run ``call`` with ``in_flight`` workers for ``seconds``: rate, latency percentiles, and
    the CPU time per call of this process and of the callee (pid ``callee``)."""
    latencies: list[float] = []
    loop = asyncio.get_running_loop()
    for _ in range(200):  # warm-up
        await call()
    deadline = loop.time() + seconds
    cpu_caller, cpu_callee = cpu_ns(), cpu_ns(callee)

    async def worker() -> None:
        while loop.time() < deadline:
            started = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    elapsed = time.perf_counter() - started
    calls = len(latencies)
    caller_us = (cpu_ns() - cpu_caller) / calls / 1e3
    callee_us = (cpu_ns(callee) - cpu_callee) / calls / 1e3
    quantiles = statistics.quantiles(latencies, n=100)
    return Row(
        name, in_flight, calls / elapsed, quantiles[49] * 1e3, quantiles[98] * 1e3, caller_us, callee_us
    )


async def run(url: str, seconds: float, callee: int) -> list[Row]:
    nc: NatsConnection = await connect_nats(url)
    shared = WrpcTransport(nc, inbox=SharedInbox(nc))
    per_call = WrpcTransport(nc, inbox=PerCallInbox(nc))
    await shared.start()
    await per_call.start()
    payload = encode(BROKER_MESSAGE, MESSAGE)

    async def plain() -> None:
        await nc.request(PLAIN_SUBJECT, payload, timeout=10)

    async def wrpc_shared() -> None:
        await shared.invoke(SHARED_PREFIX, PUBLISH, MESSAGE, headers=HEADERS)

    async def wrpc_per_call() -> None:
        await per_call.invoke(PER_CALL_PREFIX, PUBLISH, MESSAGE, headers=HEADERS)

    rows = []
    for in_flight in (1, 50):
        rows.append(await measure("nats-py request/reply", plain, in_flight, seconds, callee))
        rows.append(await measure("wRPC, shared inbox", wrpc_shared, in_flight, seconds, callee))
        rows.append(await measure("wRPC, SUB/UNSUB per call", wrpc_per_call, in_flight, seconds, callee))
    await shared.close()
    await per_call.close()
    await nc.close()
    return rows


async def hostile(url: str, callee: int) -> str:
    """The good call's latency before and during a flood of truncated and oversized invocations."""
    nc: NatsConnection = await connect_nats(url)
    transport = WrpcTransport(nc)
    await transport.start()
    loop = asyncio.get_running_loop()

    async def good_call() -> float:
        started = loop.time()
        try:
            await transport.invoke(SHARED_PREFIX, PUBLISH, MESSAGE, headers=HEADERS, timeout=15)
        except WrpcError as exc:
            print(f"  good call failed: {exc}")
        return loop.time() - started

    for _ in range(200):
        await good_call()
    before = sorted([await good_call() for _ in range(200)])
    rss_before = resident_bytes(callee)
    peer = NatsClient()
    await peer.connect(url)
    subject = invocation_subject(SHARED_PREFIX, PUBLISH.instance, PUBLISH.name)
    handshake = await peer.subscribe("_INBOX.big", max_msgs=1)
    await peer.publish(subject, b"\x01a\xff\xff\xff\xff\x0f" + b"\x00" * 1000, reply="_INBOX.big")
    rs = (await handshake.next_msg(timeout=10)).reply
    chunk = b"\x00" * (1 << 20)
    for _ in range(64):
        await peer.publish(rs + ".params", chunk)
    for i in range(1200):
        await peer.publish(subject, b"\x05ab", reply=f"_INBOX.truncated.{i}")
    await peer.flush()
    peak = rss_before

    async def sample() -> None:  # the peak, not the end: a buffer freed later still counted
        nonlocal peak
        while True:
            peak = max(peak, resident_bytes(callee))
            await asyncio.sleep(0.005)

    sampler = asyncio.create_task(sample())
    during = sorted([await good_call() for _ in range(20)])
    sampler.cancel()
    rss_growth = peak - rss_before
    await peer.close()
    await transport.close()
    await nc.close()
    median = statistics.median(before)
    return (
        "| good call | p50 ms | max ms | delay vs p50 before, ms |\n|---|---:|---:|---:|\n"
        f"| before the flood (200 calls) | {median * 1e3:.2f} | {before[-1] * 1e3:.2f} | |\n"
        f"| right after it (20 calls) | {statistics.median(during) * 1e3:.2f} | "
        f"{during[-1] * 1e3:.2f} | {(during[-1] - median) * 1e3:.1f} |\n"
        f"\ncallee resident memory, peak growth: {rss_growth / (1 << 20):.1f} MiB"
    )


def table(rows: list[Row]) -> str:
    """A Markdown table; the ratio compares with plain request/reply at the same concurrency."""
    baseline = {row.in_flight: row.rate for row in rows if row.name.startswith("nats-py")}
    lines = [
        "| call | in flight | calls/s | ratio to request/reply | p50 ms | p99 ms "
        "| caller CPU µs/call | callee CPU µs/call |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        ratio = row.rate / baseline[row.in_flight]
        lines.append(
            f"| {row.name} | {row.in_flight} | {row.rate:,.0f} | {ratio:.2f} | "
            f"{row.p50_ms:.3f} | {row.p99_ms:.3f} | {row.caller_cpu_us:.0f} | {row.callee_cpu_us:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per row")
    parser.add_argument("--hostile", action="store_true", help="good-call delay under a hostile flood")
    parser.add_argument("--serve", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve))
        return
    with NatsServer() as server:
        callee = subprocess.Popen(
            [sys.executable, "-m", "bench.wrpc", "--serve", server.url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert callee.stdout is not None
            assert callee.stdin is not None
            if callee.stdout.readline().strip() != "ready":
                raise SystemExit("the callee process did not start")
            if args.hostile:
                print("wRPC under a hostile flood: 1,200 truncated invocations + 64 MiB into a 4 GiB list")
                print(asyncio.run(hostile(server.url, callee.pid)))
                return
            rows = asyncio.run(run(server.url, args.seconds, callee.pid))
        finally:
            if callee.stdin:
                callee.stdin.close()
            callee.wait(10)
    print(f"wRPC micro-benchmark, publish() with a 32-byte body, {args.seconds:.0f} s per row")
    print(table(rows))


if __name__ == "__main__":
    main()
