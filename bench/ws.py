"""``make bench``: the provider's overhead against a bare WebSocket server, side by side, in one run.

Configurations (each measured with the same load generator, ``bench.load``, in its own process):

1. **baseline** — a bare ``websockets`` echo server (``bench.servers bare``);
2. **provider + native** — the provider in server mode (launched as a host launches it),
   its component plain Python served over wRPC on NATS: this isolates the provider's cost;
3. **provider + wasm** — the same, the component being ``echo.wasm`` in the local host.

For each: messages/s and p50/p99 latency at 1 connection × 1 in flight and 50 × 8, with
32 B and 4 KiB bodies; memory per 1,000 idle sessions; time to broadcast one message to
1,000 sessions; every figure also as a ratio to the baseline. Writes ``results.json`` and
``chart.png`` to ``bench/results/<timestamp>/`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from provider.host.lattice import LocalLattice, consumer_link, handler_link
from provider.host.launcher import write_launcher
from provider.host.machine import free_port, resident_bytes
from provider.host.nats_server import NatsServer

ROOT = Path(__file__).resolve().parent
CASES = [(1, 1, 32), (1, 1, 4096), (50, 8, 32), (50, 8, 4096)]
IDLE_SESSIONS = 1000


@dataclass
class Target:
    """A running configuration: where to connect, and whose memory to watch."""

    name: str
    url: str
    server_pid: int
    broadcasts: bool = True
    """Whether its component answers the broadcast trigger (echo.wasm only echoes)."""


@dataclass
class Result:
    name: str
    throughput: dict[str, dict[str, float]] = field(default_factory=dict)
    idle_bytes_per_session: float = 0.0
    broadcast_ms: float = 0.0


def _start(args: list[str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT.parent,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise RuntimeError(f"{args} did not start")
    return proc


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.stdin:
        proc.stdin.close()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.asynccontextmanager
async def baseline() -> AsyncIterator[Target]:
    port = free_port()
    proc = _start(["bench.servers", "bare", str(port)])
    try:
        yield Target("baseline (bare websockets)", f"ws://127.0.0.1:{port}/", proc.pid)
    finally:
        _stop(proc)


async def _provider(nats: NatsServer, launcher: Path, component_id: str) -> tuple[LocalLattice, int]:
    lattice = LocalLattice(nats.url, launcher)
    await lattice.start()
    port = free_port()
    handler = handler_link(lattice.provider_id, component_id, MODE="server", URI=f"127.0.0.1:{port}")
    await lattice.put_link(handler)
    await lattice.put_link(consumer_link(component_id, lattice.provider_id, MODE="server"))
    return lattice, port


@contextlib.asynccontextmanager
async def provider_native(nats: NatsServer, launcher: Path) -> AsyncIterator[Target]:
    from bench.servers import COMPONENT_ID

    lattice, port = await _provider(nats, launcher, COMPONENT_ID)
    component = None
    try:
        component = _start(["bench.servers", "component", nats.url, lattice.provider_id])
        yield Target("provider + native component", f"ws://127.0.0.1:{port}/ws", lattice.process.pid)
    finally:
        if component is not None:
            _stop(component)
        await lattice.stop()


async def _load(*args: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.load", *args, stdout=asyncio.subprocess.PIPE, cwd=ROOT.parent
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed: {args}")
    result: dict[str, Any] = json.loads(out)
    return result


async def _idle_memory(target: Target) -> float:
    """Server memory growth per session while the load generator holds 1,000 idle ones."""
    before = resident_bytes(target.server_pid)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.load", "idle", target.url, "--connections", str(IDLE_SESSIONS),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=ROOT.parent,
    )  # fmt: skip
    assert proc.stdin is not None
    assert proc.stdout is not None
    async with asyncio.timeout(120):
        if (await proc.stdout.readline()).strip() != b"ready":
            raise RuntimeError("the idle load generator failed")
    after = resident_bytes(target.server_pid)
    proc.stdin.close()
    await proc.wait()
    return (after - before) / IDLE_SESSIONS


async def measure(target: Target, seconds: float, quick: bool = False) -> Result:
    result = Result(target.name)
    for connections, in_flight, body in CASES:
        if quick and body != 32:
            continue
        key = f"{connections}x{in_flight} {body}B"
        result.throughput[key] = await _load(
            "throughput", target.url, "--connections", str(connections), "--in-flight", str(in_flight),
            "--body", str(body), "--seconds", str(seconds),
        )  # fmt: skip
        print(f"  {target.name}: {key}: {result.throughput[key]['rate']:,.0f} msg/s", file=sys.stderr)
    if quick:
        return result
    result.idle_bytes_per_session = await _idle_memory(target)
    if target.broadcasts:
        broadcast = await _load("broadcast", target.url, "--connections", str(IDLE_SESSIONS))
        result.broadcast_ms = broadcast["median_ms"]
    return result


def table(results: list[Result]) -> str:
    base = results[0]
    header = (
        "| configuration | "
        + " | ".join(f"{k} msg/s (×) | {k} p50 / p99 ms" for k in base.throughput)
        + " | memory / idle session (×) | broadcast to 1,000 (×) |"
    )
    lines = [header, "|" + "---|" * (1 + 2 * len(base.throughput) + 2)]
    for r in results:
        cells = [r.name]
        for key, row in r.throughput.items():
            ratio = row["rate"] / base.throughput[key]["rate"]
            cells.append(f"{row['rate']:,.0f} ({ratio:.2f})")
            cells.append(f"{row['p50_ms']:.2f} / {row['p99_ms']:.2f}")
        memory = r.idle_bytes_per_session
        cells.append(f"{memory / 1024:.1f} KiB ({memory / base.idle_bytes_per_session:.2f})")
        if r.broadcast_ms:
            cells.append(f"{r.broadcast_ms:.1f} ms ({r.broadcast_ms / base.broadcast_ms:.2f})")
        else:
            cells.append("— (echo.wasm does not broadcast)")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets_check(results: list[Result]) -> list[str]:
    """The issue's targets, each as a line saying met or missed."""
    base, native = results[0], results[1]
    key = "50x8 32B"
    ratio = native.throughput[key]["rate"] / base.throughput[key]["rate"]
    added = native.throughput["1x1 32B"]["p50_ms"] - base.throughput["1x1 32B"]["p50_ms"]
    memory = native.idle_bytes_per_session / base.idle_bytes_per_session
    broadcast = native.broadcast_ms / base.broadcast_ms
    checks = [
        (ratio >= 0.20, f"echo throughput 50x8 32 B = {ratio:.2f} x baseline (target >= 0.20)"),
        (added <= 1.0, f"added p50 latency, 1 connection = {added:.2f} ms (target <= 1 ms)"),
        (memory <= 1.3, f"memory per idle session = {memory:.2f} x baseline (target <= 1.3)"),
        (broadcast <= 1.5, f"broadcast to 1,000 sessions = {broadcast:.2f} x baseline (target <= 1.5)"),
    ]
    return [f"{'met' if ok else 'MISSED'}: {text}" for ok, text in checks]


def chart(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(results[0].throughput)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    width = 0.8 / len(results)
    for i, r in enumerate(results):
        xs = [k + i * width for k in range(len(keys))]
        axes[0].bar(xs, [r.throughput[k]["rate"] for k in keys], width, label=r.name)
        axes[1].bar(xs, [r.throughput[k]["p50_ms"] for k in keys], width, label=r.name)
    for ax, title in ((axes[0], "echo messages/s"), (axes[1], "p50 latency (ms)")):
        ax.set_xticks([k + 0.4 - width / 2 for k in range(len(keys))], keys)
        ax.set_title(title)
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    names = [r.name.split(" (")[0].replace(" component", "").replace(" + ", " +\n") for r in results]
    axes[2].bar(range(len(results)), [r.idle_bytes_per_session / 1024 for r in results], color="tab:gray")
    axes[2].set_xticks(range(len(results)), names, fontsize=8)
    axes[2].set_title("KiB per idle session")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"provider vs bare websockets · {platform.node()} · {time.strftime('%Y-%m-%d')}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


Config = Callable[..., contextlib.AbstractAsyncContextManager[Target]]


async def run(seconds: float, with_wasm: bool, quick: bool = False) -> list[Result]:
    results = []
    with NatsServer() as nats, tempfile.TemporaryDirectory() as directory:
        launcher = write_launcher(Path(directory) / "launcher")
        configs: list[contextlib.AbstractAsyncContextManager[Target]] = [
            baseline(),
            provider_native(nats, launcher),
        ]
        if with_wasm:
            from bench.wasm import provider_wasm

            configs.append(provider_wasm(nats, launcher))  # type: ignore[arg-type]
        for config in configs:
            async with config as target:
                print(f"measuring {target.name}", file=sys.stderr)
                results.append(await measure(target, seconds, quick))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per throughput row")
    parser.add_argument("--no-wasm", action="store_true", help="skip configuration 3")
    parser.add_argument(
        "--quick", action="store_true", help="32 B throughput rows only, no files (for A/B runs)"
    )
    args = parser.parse_args()
    started = time.time()
    results = asyncio.run(run(args.seconds, not args.no_wasm, args.quick))
    if args.quick:
        for r in results:
            rows = ", ".join(
                f"{k}: {v['rate']:,.0f}/s p50 {v['p50_ms']:.2f} ms" for k, v in r.throughput.items()
            )
            print(f"{r.name}: {rows}")
        return
    out = ROOT / "results" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    (out / "results.json").write_text(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d %H:%M"),
                "machine": machine,
                "results": [asdict(r) for r in results],
            },
            indent=2,
        )
    )
    chart(results, out / "chart.png")
    print(f"\n{time.strftime('%Y-%m-%d')} · {machine} · {time.time() - started:.0f} s\n")
    print(table(results))
    print()
    print("\n".join(targets_check(results)))
    print(f"\nraw numbers and chart: {out}")


if __name__ == "__main__":
    main()
