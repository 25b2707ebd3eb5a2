"""The archive's binary next to the venv launcher: start to healthy, idle memory, shutdown.

Each executable is started the host's way (empty environment, HostData on stdin) on a
loopback nats-server, asked for health until healthy (the time from spawn to the first
healthy answer), left idle, measured (resident memory of the PID the host holds), then
shut down with the host's request (the time to exit). The archive's first start unpacks
its bundle into a fresh TMPDIR (the "cold" row); later ones reuse it.

    make bench-par            # or: python -m bench.par [--archive FILE] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from provider.archive import par
from provider.host.control import HostControl, ProviderIdentity
from provider.host.launcher import LAUNCHER_NAME, ProviderProcess, write_launcher
from provider.host.machine import resident_bytes
from provider.host.nats_server import NatsServer
from provider.wrpc.connection import connect as connect_nats

IDLE = 2.0
"""Seconds a provider sits idle before its memory is read."""


async def once(url: str, executable: Path, environment: dict[str, str]) -> tuple[float, int, float]:
    """Seconds to healthy, idle RSS bytes, seconds from the shutdown request to exit."""
    nc = await connect_nats(url)
    host = HostControl(nc)
    provider = ProviderIdentity("bench-provider")
    process = ProviderProcess(executable, environment=environment)
    try:
        started = time.perf_counter()
        await process.start(host.host_data(provider, nats_url=url))
        await host.wait_healthy(provider, 30.0)
        healthy = time.perf_counter() - started
        await asyncio.sleep(IDLE)
        rss = resident_bytes(process.pid)
        asked = time.perf_counter()
        await host.shutdown(provider, 2.0)
        await process.wait(10.0)
        return healthy, rss, time.perf_counter() - asked
    finally:
        await process.kill()
        await nc.close()


Row = tuple[str, list[tuple[float, int, float]]]


async def measure(binary: Path, launcher: Path, temp: Path, runs: int) -> list[Row]:
    """The table's rows: the archive's binary cold and warm, then the venv launcher."""
    env = {"TMPDIR": str(temp)}
    with NatsServer() as nats:
        cold = [await once(nats.url, binary, env)]
        warm = [await once(nats.url, binary, env) for _ in range(runs)]
        venv = [await once(nats.url, launcher, {}) for _ in range(runs)]
    return [("archive, cold (unpacks)", cold), ("archive, warm", warm), ("venv launcher", venv)]


def report(archive: Path, runs: int) -> None:
    """Extract the binary as a host does, measure, print a Markdown table."""
    with tempfile.TemporaryDirectory(prefix="bench-par-") as work_name:
        work = Path(work_name)
        binary = work / f"{par.native_target()}.bin"
        binary.write_bytes(par.load_target(archive.read_bytes(), par.native_target()))
        binary.chmod(0o755)
        launcher = write_launcher(work / LAUNCHER_NAME)
        (work / "tmp").mkdir()
        rows = asyncio.run(measure(binary, launcher, work / "tmp", runs))
        sizes = f"{archive.stat().st_size / 1e6:.1f} MB; binary {binary.stat().st_size / 1e6:.1f} MB"
    print(f"{archive}: {sizes}")
    print("| executable | runs | start → healthy, median (min–max) | RSS idle | shutdown → exit |")
    print("|---|---:|---:|---:|---:|")
    for name, results in rows:
        healthy = [r[0] for r in results]
        print(
            f"| {name} | {len(results)} | {statistics.median(healthy) * 1000:.0f} ms "
            f"({min(healthy) * 1000:.0f}–{max(healthy) * 1000:.0f}) "
            f"| {statistics.median(r[1] for r in results) / 2**20:.1f} MiB "
            f"| {statistics.median(r[2] for r in results) * 1000:.0f} ms |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.par", description=__doc__.split("\n")[0])
    parser.add_argument("--archive", type=Path, default=Path("build/wasmcloud-ws-provider.par.gz"))
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    report(args.archive, args.runs)


if __name__ == "__main__":
    main()
