"""The v2 bridge's benchmark rows: echo throughput and latency, and broadcast, through the bridge.

Two configurations, each the bridge (``python -m provider bridge``, its own process) on a NATS
server, echoing JSON frames with a 32 B or 4 KiB body at 1 connection × 1 in flight and 50 × 8:

* **bridge + NATS echo service**: a plain nats-py service (its own process) queue-subscribed to
  ``ws.in.>`` that publishes each body to the message's reply subject — the bridge's own cost;
* **bridge + v2-echo (wash dev)**: ``components/v2-echo`` on a real wasmCloud 2.x host.

The bare ``websockets`` echo server of ``bench.servers`` runs first with the same load, so
each figure also comes as a ratio to it. The v2 host runs every message in a fresh instance,
concurrently, so answers can come back out of order: the load generator matches each answer
to its send time by a sequence number in the body (not by order), and the broadcast trigger
is the subject ``broadcast`` (the bare server's is ``bench.broadcast``).

``python -m bench.bridge [--seconds 5] [--quick]`` prints the rows as a Markdown table and
JSON. The hook for ``make bench``: :func:`measure_all` (the rows as dicts, the baseline
first) or the context managers :func:`bridge_with_service` / :func:`bridge_with_v2_echo`,
which yield a :class:`Target` (name, WebSocket URL, the bridge's PID, its broadcast trigger).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from bench import processes
from bench.load import broadcast
from provider.host.build import ComponentBuilder, ComponentSource
from provider.host.machine import free_port
from provider.host.nats_server import NatsServer
from provider.host.v2 import BridgeProcess
from provider.host.wash import WashDev

ROOT = Path(__file__).resolve().parent.parent
CASES = [(1, 1, 32), (1, 1, 4096), (50, 8, 32), (50, 8, 4096)]
BROADCAST_SESSIONS = 1000
LIMIT = 200_000
"""Messages at most per throughput row, whatever the time."""


@dataclass
class Target:
    """A running configuration: where clients connect, whose process serves them, the broadcast trigger."""

    name: str
    url: str
    server_pid: int
    broadcast_subject: str = "broadcast"
    service_pid: int | None = None
    """The NATS service answering the bridge's messages, where it is a process of its own."""


@dataclass
class Row:
    name: str
    throughput: dict[str, dict[str, float]] = field(default_factory=dict)
    broadcast_ms: float = 0.0


# -- the load generator (its own process: python -m bench.bridge load …) ---------------------------------


def _frame(subject: str, seq: int, body: int) -> str:
    head = f"{seq}:"
    return json.dumps({"subject": subject, "body": head + "x" * max(0, body - len(head))})


async def _connect(url: str) -> ClientConnection:
    return await connect(url, compression=None, max_queue=None, open_timeout=30, ping_interval=None)


async def throughput(
    url: str, connections: int, in_flight: int, body: int, seconds: float
) -> dict[str, float]:
    """Echoes per second and latency percentiles, ``in_flight`` outstanding per connection.

    Each answer is matched to its send time by the sequence number at the start of its body.
    """
    latencies: list[float] = []
    clients = [await _connect(url) for _ in range(connections)]
    per_connection = max(1, LIMIT // connections)

    async def run(ws: ClientConnection, deadline: float) -> None:
        sent: dict[int, float] = {}
        seq = done = 0
        for _ in range(in_flight):
            sent[seq] = time.perf_counter()
            await ws.send(_frame("bench.echo", seq, body))
            seq += 1
        while done < per_connection and sent:
            answer = json.loads(await ws.recv())
            now = time.perf_counter()
            latencies.append(now - sent.pop(int(answer["body"].partition(":")[0])))
            done += 1
            if now < deadline and done + len(sent) < per_connection:
                sent[seq] = now
                await ws.send(_frame("bench.echo", seq, body))
                seq += 1

    await asyncio.gather(*(_round_trip(ws, body) for ws in clients))  # warm-up, not measured
    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(run(ws, started + seconds) for ws in clients)), seconds + 60)
    elapsed = time.perf_counter() - started
    for ws in clients:
        await ws.close()
    quantiles = statistics.quantiles(latencies, n=100)
    return {
        "messages": len(latencies),
        "rate": len(latencies) / elapsed,
        "p50_ms": quantiles[49] * 1000,
        "p99_ms": quantiles[98] * 1000,
    }


async def _round_trip(ws: ClientConnection, body: int) -> None:
    await ws.send(_frame("bench.echo", -1, body))
    await ws.recv()


async def _load(*args: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.bridge", "load", *args, stdout=asyncio.subprocess.PIPE, cwd=ROOT
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed: {args}")
    result: dict[str, Any] = json.loads(out)
    return result


# -- the NATS echo service (its own process: python -m bench.bridge service NATS_URL) ---------------------


async def service(nats_url: str) -> None:
    """Echo every ``ws.in.>`` message to its reply subject; ``ws.in.broadcast`` goes to ``ws.broadcast``."""
    import nats

    nc = await nats.connect(nats_url)

    async def on_message(msg: Any) -> None:
        if msg.subject in ("ws.in.broadcast", "ws.in.bench.broadcast"):  # the triggers of both benches
            await nc.publish("ws.broadcast", msg.data)
        elif msg.reply:
            await nc.publish(msg.reply, msg.data)

    await nc.subscribe("ws.in.>", queue="bench-echo", cb=on_message, pending_msgs_limit=-1)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await nc.close()


# -- the configurations ------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def baseline() -> AsyncIterator[Target]:
    """The bare websockets echo server of ``bench.servers``."""
    port = free_port()
    proc = processes.start("bench.servers", "bare", str(port))
    try:
        yield Target("baseline (bare websockets)", f"ws://127.0.0.1:{port}/", proc.pid, "bench.broadcast")
    finally:
        processes.stop(proc)


@contextlib.asynccontextmanager
async def _bridge(nats: NatsServer) -> AsyncIterator[BridgeProcess]:
    process = BridgeProcess(nats.url, {"URI": f"127.0.0.1:{free_port()}"})
    await process.launch()
    try:
        yield process
    finally:
        await process.terminate()


@contextlib.asynccontextmanager
async def bridge_with_service(nats: NatsServer) -> AsyncIterator[Target]:
    """The bridge and a plain nats-py echo service on ``nats``."""
    echo = processes.start("bench.bridge", "service", nats.url)
    try:
        async with _bridge(nats) as bridge:
            yield Target("bridge + NATS echo service", bridge.url, bridge.pid, service_pid=echo.pid)
    finally:
        processes.stop(echo)


@contextlib.asynccontextmanager
async def bridge_with_v2_echo(nats: NatsServer) -> AsyncIterator[Target]:
    """The bridge and ``components/v2-echo`` on ``wash dev`` (a real wasmCloud 2.x host) on ``nats``."""
    source = ComponentSource("v2-echo", ROOT / "components" / "v2-echo", ROOT / "wit")
    wasm = ComponentBuilder(ROOT / ".cache").build(source)
    host = WashDev(wasm, nats.url, subscriptions="ws.in.>")
    host.launch()
    try:
        ready = await host.wait_ready()
        print(f"  wash dev answered after {ready:.0f} s", file=sys.stderr)
        async with _bridge(nats) as bridge:
            yield Target("bridge + v2-echo (wash dev)", bridge.url, bridge.pid)
    finally:
        await asyncio.to_thread(host.stop)


async def measure(target: Target, seconds: float, quick: bool = False) -> Row:
    """Every throughput case (32 B only when ``quick``) and, unless ``quick``, the broadcast."""
    row = Row(target.name)
    for connections, in_flight, body in CASES:
        if quick and body != 32:
            continue
        key = f"{connections}x{in_flight} {body}B"
        row.throughput[key] = await _load(
            "throughput", target.url, str(connections), str(in_flight), str(body), str(seconds)
        )
        print(f"  {target.name}: {key}: {row.throughput[key]['rate']:,.0f} msg/s", file=sys.stderr)
    if not quick:
        result = await _load("broadcast", target.url, str(BROADCAST_SESSIONS), target.broadcast_subject)
        row.broadcast_ms = result["median_ms"]
    return row


async def measure_all(seconds: float = 5.0, quick: bool = False) -> list[Row]:
    """The baseline, then both bridge configurations, on one NATS server."""
    rows = []
    with NatsServer() as nats:
        for config in (baseline(), bridge_with_service(nats), bridge_with_v2_echo(nats)):
            async with config as target:
                print(f"measuring {target.name}", file=sys.stderr)
                rows.append(await measure(target, seconds, quick))
    return rows


def table(rows: list[Row]) -> str:
    """A Markdown table, each figure with its ratio to the first row."""
    base = rows[0]
    keys = list(base.throughput)
    header = "| configuration | " + " | ".join(f"{k} msg/s (×) | {k} p50 / p99 ms" for k in keys)
    header += " | broadcast to 1,000 (×) |" if base.broadcast_ms else " |"
    lines = [header, "|" + "---|" * (1 + 2 * len(keys) + (1 if base.broadcast_ms else 0))]
    for row in rows:
        cells = [row.name]
        for key in keys:
            figures = row.throughput[key]
            cells.append(f"{figures['rate']:,.0f} ({figures['rate'] / base.throughput[key]['rate']:.2f})")
            cells.append(f"{figures['p50_ms']:.2f} / {figures['p99_ms']:.2f}")
        if base.broadcast_ms:
            cells.append(f"{row.broadcast_ms:.1f} ms ({row.broadcast_ms / base.broadcast_ms:.2f})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    if sys.argv[1:2] == ["load"]:
        mode, url, *rest = sys.argv[2:]
        result: dict[str, Any]
        if mode == "throughput":
            connections, in_flight, body, seconds = rest
            result = asyncio.run(throughput(url, int(connections), int(in_flight), int(body), float(seconds)))
        else:
            result = asyncio.run(broadcast(url, int(rest[0]), subject=rest[1]))
        print(json.dumps(result), flush=True)
        return
    if sys.argv[1:2] == ["service"]:
        asyncio.run(service(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per throughput row")
    parser.add_argument("--quick", action="store_true", help="32 B throughput rows only, no broadcast")
    args = parser.parse_args()
    started = time.time()
    rows = asyncio.run(measure_all(args.seconds, args.quick))
    print(f"\n{time.strftime('%Y-%m-%d')} · {time.time() - started:.0f} s\n")
    print(table(rows))
    print()
    print(json.dumps([asdict(row) for row in rows], indent=2))


if __name__ == "__main__":
    main()
