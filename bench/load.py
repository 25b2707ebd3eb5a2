"""The load generator: WebSocket clients on loopback, run as its own process by ``bench.ws``.

``python -m bench.load throughput URL --connections 50 --in-flight 8 --body 32 --seconds 5``
prints one JSON object. Every run is bounded in time and in message count. Replies come
back in order per connection (the echo servers keep per-session order), so each reply is
matched to its send time through a FIFO, which gives the latency of every message.

``--cpu NAME=PID`` (repeatable) also reports the CPU time process ``PID`` spent over the
measured window, divided by the echoes in it (``cpu_us_per_echo[NAME]``): the sum of every
thread's time on CPU from ``/proc/PID/task/*/schedstat``, read at the window's start and end
by this process, so connecting and the warm-up are not counted. (A thread that exits inside
the window takes its time with it; the processes measured here keep theirs.) The load
generator's own CPU time per echo is always reported too, as ``cpu_us_per_echo["load"]``: on a
machine with fewer cores than busy processes, every process's share counts (``bench.report``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections import deque
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect

LOAD = "load"
"""The name the load generator's own CPU time is reported under."""
MAX_FRAME = 2 << 20
"""Largest frame the load generator accepts (and ``bench.ws`` lets every server accept): a 1 MiB
body in a JSON envelope is just over websockets' 1 MiB default."""


def cpu_ns(pid: int) -> int:
    """Nanoseconds process ``pid``'s live threads have spent on a CPU (``/proc/PID/task/*/schedstat``)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that exited between the listing and the read
    return total


def frame(body_size: int) -> str:
    """The JSON frame every configuration echoes: a subject and ``body_size`` bytes of body."""
    return json.dumps({"subject": "bench.echo", "body": "x" * body_size})


async def _connect(url: str) -> ClientConnection:
    return await connect(
        url, compression=None, max_queue=None, open_timeout=30, ping_interval=None, max_size=MAX_FRAME
    )


async def throughput(
    url: str,
    connections: int,
    in_flight: int,
    body: int,
    seconds: float,
    limit: int,
    cpu: dict[str, int] | None = None,
) -> dict[str, object]:
    """Messages per second and latency percentiles with ``in_flight`` messages outstanding per
    connection, and each of ``cpu``'s processes' CPU time per echo (name → pid)."""
    payload = frame(body)
    latencies: list[float] = []
    clients = [await _connect(url) for _ in range(connections)]
    per_connection = max(1, limit // connections)

    async def run(ws: ClientConnection, deadline: float) -> None:
        sent: deque[float] = deque()
        done = 0
        for _ in range(in_flight):
            sent.append(time.perf_counter())
            await ws.send(payload)
        while done < per_connection:
            await ws.recv()
            now = time.perf_counter()
            latencies.append(now - sent.popleft())
            done += 1
            if now < deadline and done + len(sent) < per_connection:
                sent.append(now)
                await ws.send(payload)
            elif not sent:
                break

    # warm-up: one round trip per connection, not measured
    await asyncio.gather(*(_round_trip(ws, payload) for ws in clients))
    watched = {**(cpu or {}), LOAD: os.getpid()}
    cpu_before = {name: cpu_ns(pid) for name, pid in watched.items()}
    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(run(ws, started + seconds) for ws in clients)), seconds + 60)
    elapsed = time.perf_counter() - started
    cpu_after = {name: cpu_ns(pid) for name, pid in watched.items()}
    for ws in clients:
        await ws.close()
    # statistics.quantiles needs two points; a slow configuration may echo only one 1 MiB frame.
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else []
    return {
        "messages": len(latencies),
        "rate": len(latencies) / elapsed,
        "p50_ms": (quantiles[49] if quantiles else latencies[0]) * 1000,
        "p99_ms": (quantiles[98] if quantiles else latencies[0]) * 1000,
        "cpu_us_per_echo": {
            name: (cpu_after[name] - cpu_before[name]) / 1000 / len(latencies) for name in watched
        },
    }


async def _round_trip(ws: ClientConnection, payload: str) -> None:
    await ws.send(payload)
    await ws.recv()


async def idle(url: str, connections: int) -> None:
    """Hold ``connections`` idle sessions; print ``ready`` once all are open and each has done
    one round trip (so the server holds all its per-session state), one session at a time
    so that no burst of concurrent work inflates the server's memory; exit when stdin closes."""
    clients = [await _connect(url) for _ in range(connections)]
    for ws in clients:
        await _round_trip(ws, frame(32))
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for ws in clients:
        await ws.close()


async def broadcast(
    url: str, connections: int, rounds: int = 5, subject: str = "bench.broadcast"
) -> dict[str, object]:
    """Time from one trigger frame (on ``subject``) to its arrival at all ``connections`` sessions."""
    clients = [await _connect(url) for _ in range(connections)]
    trigger = json.dumps({"subject": subject, "body": "go"})
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        await clients[0].send(trigger)
        await asyncio.wait_for(asyncio.gather(*(ws.recv() for ws in clients)), 60)
        times.append(time.perf_counter() - started)
    for ws in clients:
        await ws.close()
    return {"median_ms": statistics.median(times) * 1000, "min_ms": min(times) * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("mode", choices=["throughput", "idle", "broadcast"])
    parser.add_argument("url")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--in-flight", type=int, default=1)
    parser.add_argument("--body", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--limit", type=int, default=200_000, help="at most this many messages in all")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--cpu", action="append", default=[], metavar="NAME=PID", help="report PID's CPU µs per echo"
    )
    args = parser.parse_args()
    result: dict[str, object]
    if args.mode == "throughput":
        cpu = {name: int(pid) for name, pid in (item.split("=", 1) for item in args.cpu)}
        result = asyncio.run(
            throughput(args.url, args.connections, args.in_flight, args.body, args.seconds, args.limit, cpu)
        )
    elif args.mode == "broadcast":
        result = asyncio.run(broadcast(args.url, args.connections, args.rounds))
    else:
        asyncio.run(idle(args.url, args.connections))
        return
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
