"""``make bench``: the provider's overhead against a bare WebSocket server, side by side, in one run.

Configurations (each measured with the same load generator, ``bench.load``, in its own process):

1. **baseline** — a bare ``websockets`` echo server (``bench.servers bare``);
2. **provider + native** — the provider in server mode (launched as a host launches it),
   its component plain Python served over wRPC on NATS: this isolates the provider's cost;
3. **provider + wasm** — the same, the component being ``echo.wasm`` in the local host.

For each: messages/s and p50/p99 latency at 1 connection × 1 in flight with 32 B, 4 KiB and
1 MiB bodies and at 50 × 8 with 32 B and 4 KiB; the CPU time per echo of the server process
(the bare server, or the provider) and of the component's process where it has one, over
each of those rows; memory per 1,000 idle sessions; time to broadcast one message to 1,000
sessions; every figure also as a ratio to the baseline. Writes ``results.json`` and
``chart.png`` to ``bench/results/<timestamp>/`` and prints the tables; a full run also
publishes them (``bench.report``): ``docs/bench-results.json``, ``docs/bench.png`` and the
README's results section.

``--variant NAME=SPEC`` measures configuration 2 again in the same run with one change:
SPEC is comma-separated ``KEY=VALUE`` (provider config in HostData, as a host passes it),
``link:KEY=VALUE`` (the handler link's config) or ``env:KEY=VALUE`` (the provider process's
environment), e.g. ``--variant window8=link:DELIVERY_WINDOW=8``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import processes, report
from bench.load import MAX_FRAME
from provider.host.lattice import LocalLattice, consumer_link, handler_link
from provider.host.launcher import write_launcher
from provider.host.machine import free_port, resident_bytes
from provider.host.nats_server import NatsServer

ROOT = Path(__file__).resolve().parent
CASES = [(1, 1, 32), (1, 1, 4096), (1, 1, 1 << 20), (50, 8, 32), (50, 8, 4096)]
IDLE_SESSIONS = 1000
PROVIDER_LINK = {"MAX_MESSAGE_BYTES": str(MAX_FRAME)}
"""Handler link settings both provider configurations add: a 1 MiB body in a JSON frame is just
over the provider's 1 MiB default ``MAX_MESSAGE_BYTES``."""


@dataclass
class Target:
    """A running configuration: where to connect, whose memory and CPU to watch."""

    name: str
    url: str
    server_pid: int
    cpu: dict[str, int]
    """Processes whose CPU time per echo is reported: ``server`` (always), ``component`` (if separate),
    ``nats`` (the NATS server, where there is one); the load generator adds its own (``load``)."""
    broadcasts: bool = True
    """Whether its component answers the broadcast trigger (echo.wasm only echoes)."""
    max_body: int | None = None
    """The largest body measured (a forwarded publish must fit in one NATS message)."""


@dataclass
class Result:
    name: str
    throughput: dict[str, dict[str, float]] = field(default_factory=dict)
    cpu_us_per_echo: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per throughput row: CPU µs per echo of each watched process (``server``, ``component``)."""
    idle_bytes_per_session: float = 0.0
    broadcast_ms: float = 0.0


@dataclass(frozen=True)
class Variant:
    """Configuration 2 with one change, measured in the same run (``--variant NAME=SPEC``)."""

    name: str
    spec: str
    config: dict[str, str] = field(default_factory=dict)
    link: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    otel: bool = False
    """``otel:on``: HostData's otel_config switches traces, metrics and logs on, exported to a sink."""

    @classmethod
    def parse(cls, text: str) -> Variant:
        name, sep, spec = text.partition("=")
        if not sep or not name or not spec:
            raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=KEY=VALUE[,KEY=VALUE…]")
        variant = cls(name, spec)
        for item in spec.split(","):
            if item == "otel:on":
                variant = dataclasses.replace(variant, otel=True)
                continue
            scope, colon, setting = item.partition(":")
            if not colon or "=" in scope:  # no scope: a value may hold a colon (URI=host:port)
                scope, setting = "", item
            key, sep, value = setting.partition("=")
            if not sep or not key or scope not in ("", "link", "env"):
                raise argparse.ArgumentTypeError(
                    f"{item!r}: expected KEY=VALUE, link:KEY=VALUE, env:KEY=VALUE or otel:on"
                )
            {"": variant.config, "link": variant.link, "env": variant.env}[scope][key] = value
        return variant


@contextlib.asynccontextmanager
async def baseline() -> AsyncIterator[Target]:
    port = free_port()
    proc = processes.start("bench.servers", "bare", str(port))
    try:
        yield Target(report.BASELINE, f"ws://127.0.0.1:{port}/", proc.pid, {"server": proc.pid})
    finally:
        processes.stop(proc)


async def _sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An OTLP/HTTP endpoint that takes everything and keeps nothing (for ``otel:on``)."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                ),
                0,
            )
            await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


def _nats_cpu(nats: NatsServer) -> dict[str, int]:
    """The NATS server among the processes whose CPU is watched (while it runs)."""
    return {"nats": nats.pid} if nats.pid is not None else {}


async def _provider(
    nats: NatsServer, launcher: Path, component_id: str, variant: Variant | None
) -> tuple[LocalLattice, int]:
    otel = None
    if variant is not None and variant.otel:
        sink = await asyncio.start_server(_sink, "127.0.0.1", 0)
        endpoint = f"http://127.0.0.1:{sink.sockets[0].getsockname()[1]}"
        otel = {"enable_observability": True, "observability_endpoint": endpoint, "protocol": "Http"}
    lattice = LocalLattice(
        nats.url,
        launcher,
        config=variant.config if variant else None,
        environment=variant.env if variant else None,
        otel_config=otel,
    )
    await lattice.start()
    port = free_port()
    settings = {**PROVIDER_LINK, **(variant.link if variant else {})}
    handler = handler_link(
        lattice.provider_id, component_id, MODE="server", URI=f"127.0.0.1:{port}", **settings
    )
    applied = await lattice.put_link(handler)
    if applied is None or "rejected" in applied:
        raise RuntimeError(f"the provider did not take the bench's handler link: {applied}")
    await lattice.put_link(consumer_link(component_id, lattice.provider_id, MODE="server"))
    return lattice, port


@contextlib.asynccontextmanager
async def provider_native(
    nats: NatsServer, launcher: Path, variant: Variant | None = None
) -> AsyncIterator[Target]:
    from bench.servers import COMPONENT_ID

    lattice, port = await _provider(nats, launcher, COMPONENT_ID, variant)
    component = None
    try:
        component = processes.start("bench.servers", "component", nats.url, lattice.provider_id)
        name = report.NATIVE + (f" [{variant.name}]" if variant else "")
        cpu = {"server": lattice.process.pid, "component": component.pid, **_nats_cpu(nats)}
        yield Target(name, f"ws://127.0.0.1:{port}/ws", lattice.process.pid, cpu)
    finally:
        if component is not None:
            processes.stop(component)
        await lattice.stop()


@contextlib.asynccontextmanager
async def provider_two_instances(nats: NatsServer, launcher: Path) -> AsyncIterator[Target]:
    """Two instances of the provider (one provider id, as on two hosts) with the same links, the
    clients on the first: a component's publish reaches either instance (queue group), so about
    half of the replies are forwarded to the instance holding the session (design §7)."""
    from bench.servers import COMPONENT_ID

    first, port = await _provider(nats, launcher, COMPONENT_ID, None)
    second, _ = await _provider(nats, launcher, COMPONENT_ID, None)
    component = None
    try:
        component = processes.start("bench.servers", "component", nats.url, first.provider_id)
        cpu = {"server": first.process.pid, "component": component.pid, **_nats_cpu(nats)}
        # A forwarded publish is one NATS message: a 1 MiB body does not fit in it (max_payload 1 MiB).
        yield Target(
            report.TWO_INSTANCES, f"ws://127.0.0.1:{port}/ws", first.process.pid, cpu, max_body=65_536
        )
        forwarded = (await second.instance_health())["message"]
        print(f"  the second instance: {forwarded.split('; ')[1]}", file=sys.stderr)
    finally:
        if component is not None:
            processes.stop(component)
        await second.stop()
        await first.stop()


@contextlib.asynccontextmanager
async def bridge_service(nats: NatsServer) -> AsyncIterator[Target]:
    """The wasmCloud 2.x bridge with a plain nats-py echo service (bench.bridge): the bridge's cost."""
    from bench import bridge

    async with bridge.bridge_with_service(nats) as target:
        # Plain NATS: a frame must fit in one message (max_payload 1 MiB), so 1 MiB bodies are out.
        yield Target(
            report.BRIDGE,
            target.url,
            target.server_pid,
            {
                "server": target.server_pid,
                **({"component": target.service_pid} if target.service_pid else {}),
                **_nats_cpu(nats),
            },
            max_body=65_536,
        )


async def _load(*args: str) -> dict[str, Any]:
    """Run the load generator (its own process) and return what it printed."""
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
        if (quick and body != 32) or (target.max_body is not None and body > target.max_body):
            continue
        key = f"{connections}x{in_flight} {body}B"
        watch = [arg for name, pid in target.cpu.items() for arg in ("--cpu", f"{name}={pid}")]
        row = await _load(
            "throughput", target.url, "--connections", str(connections), "--in-flight", str(in_flight),
            "--body", str(body), "--seconds", str(seconds), *watch,
        )  # fmt: skip
        result.cpu_us_per_echo[key] = row.pop("cpu_us_per_echo")
        result.throughput[key] = row
        cpu = ", ".join(f"{name} {us:,.0f}" for name, us in result.cpu_us_per_echo[key].items())
        print(f"  {target.name}: {key}: {row['rate']:,.1f} msg/s, CPU µs/echo: {cpu}", file=sys.stderr)
    if quick:
        return result
    result.idle_bytes_per_session = await _idle_memory(target)
    if target.broadcasts:
        broadcast = await _load("broadcast", target.url, "--connections", str(IDLE_SESSIONS))
        result.broadcast_ms = broadcast["median_ms"]
    return result


async def run(
    seconds: float, with_wasm: bool, quick: bool = False, variants: Sequence[Variant] = ()
) -> list[Result]:
    results = []
    with NatsServer() as nats, tempfile.TemporaryDirectory() as directory:
        launcher = write_launcher(Path(directory) / "launcher")
        configs: list[contextlib.AbstractAsyncContextManager[Target]] = [
            baseline(),
            provider_native(nats, launcher),
            *(provider_native(nats, launcher, variant) for variant in variants),
            provider_two_instances(nats, launcher),
            bridge_service(nats),
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
    parser.add_argument(
        "--variant",
        type=Variant.parse,
        action="append",
        default=[],
        metavar="NAME=SPEC",
        help="also measure configuration 2 with SPEC (comma-separated): KEY=VALUE for provider "
        "config, link:KEY=VALUE, env:KEY=VALUE",
    )
    parser.add_argument(
        "--no-publish", action="store_true", help="leave docs/ and the README alone (results/ only)"
    )
    args = parser.parse_args()
    if len({v.name for v in args.variant}) != len(args.variant):
        parser.error("variant names must differ")
    started = time.time()
    results = asyncio.run(run(args.seconds, not args.no_wasm, args.quick, args.variant))
    if args.quick:
        for r in results:
            rows = ", ".join(
                f"{k}: {v['rate']:,.0f}/s p50 {v['p50_ms']:.2f} ms, CPU µs/echo "
                + ", ".join(f"{name} {c:,.0f}" for name, c in r.cpu_us_per_echo[k].items())
                for k, v in r.throughput.items()
            )
            print(f"{r.name}: {rows}")
        return
    out = ROOT / "results" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": report.machine(),
        "seconds": args.seconds,
        "elapsed_s": round(time.time() - started),
        "cpus": report.cpus(),
        "variants": {v.name: v.spec for v in args.variant},
        "results": [asdict(r) for r in results],
    }
    doc["targets"] = report.targets_check(doc)
    (out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    report.chart(doc, out / "chart.png")
    print(f"\n{doc['date']} · {doc['machine']} · {doc['elapsed_s']} s\n")
    print(report.table(doc))
    print()
    print(report.cpu_table(doc))
    print()
    print(report.cpu_budget_table(doc))
    print()
    print("\n".join(doc["targets"]))
    print(f"\nraw numbers and chart: {out}")
    if args.no_publish or args.no_wasm:
        print("not published (--no-publish or --no-wasm): docs/ and README.md unchanged")
        return
    report.publish(out / "results.json")
    print("published: docs/bench-results.json, docs/bench.png, README.md (benchmark results)")


if __name__ == "__main__":
    main()
