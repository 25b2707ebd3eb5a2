"""``python -m provider.host``: the local wasmCloud-like host (``make run``, ``make components``).

Commands::

    run [wadm.yaml]      NATS, the provider and the manifest's components; Ctrl-C stops it all
    check [wadm.yaml]    check the manifest and resolve its images; start nothing
    build [NAME ...]     build components/<NAME>/ into build/components/<NAME>.wasm (default: all)

``run`` checks the whole manifest and resolves every image first, then builds and
compiles what is needed (cached), and only then starts NATS (loopback, a free port unless
``--nats-port``), the provider and the components. NATS and the provider run in process
groups of their own, so Ctrl-C reaches this process only, which stops them in order:
the provider's shutdown request, the components, NATS. A second Ctrl-C kills them at once.

Exit codes: 0 after Ctrl-C or SIGTERM, 2 for a manifest or image problem, 1 when
something fails to build or start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from provider.errors import ProviderError
from provider.host.build import BuildError, ComponentBuilder, find_sources
from provider.host.local import LocalHost, prepare, resolve_images
from provider.host.nats_server import NatsServer
from provider.host.wadm import Application, ManifestError, load
from provider.host.wasm import WasmEngine
from provider.host.wasm_bytes import MALLOC_KEEP, reuse_freed_memory

log = logging.getLogger("provider.host")


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m provider.host",
        description="A local wasmCloud-like host: NATS, the provider and wasm components from a wadm.yaml.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a wadm manifest: NATS, the provider, the components")
    check = commands.add_parser("check", help="check a manifest and resolve its images; start nothing")
    for command in (run, check):
        command.add_argument("manifest", nargs="?", default="wadm.yaml", type=Path)
        command.add_argument(
            "--cache-dir",
            type=Path,
            help="builds and compiled components (default: .cache beside the manifest)",
        )
    run.add_argument("--nats-port", type=int, default=-1, help="NATS port on 127.0.0.1 (default: a free one)")
    run.add_argument("--lattice", default="default", help="lattice name (default: default)")
    run.add_argument("--log-level", default="info", help="the provider's and the host's log level")
    build = commands.add_parser("build", help="build components/<NAME>/ into build/components/<NAME>.wasm")
    build.add_argument("names", nargs="*", help="components to build (default: every one)")
    build.add_argument("--root", type=Path, default=Path(), help="the project root (default: .)")
    build.add_argument("--cache-dir", type=Path, help="the build cache (default: ROOT/.cache)")
    return parser.parse_args(argv)


def _load(path: Path) -> Application:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read the manifest: {exc.strerror or exc}") from exc
    return load(text, source=str(path))


def _cache_dir(given: Path | None, base: Path) -> Path:
    return (given or base / ".cache").resolve()


def check(manifest: Path, cache_dir: Path | None) -> None:
    """Load and check ``manifest``, resolve its images and say what ``run`` would start."""
    app = _load(manifest)
    images = resolve_images(app, manifest.resolve().parent)
    print(f"{manifest}: application {app.name!r}, provider {app.capability.id!r}")
    for component in app.components:
        image = images[component.name]
        origin = f"built from {image.source.directory}" if image.source else "prebuilt"
        print(f"  component {component.name!r} id {component.id!r}: {image.path} ({origin})")
    for link in app.links:
        print(f"  link {link.definition.describe()}")


def build(names: list[str], root: Path, cache_dir: Path | None) -> None:
    """Build the named components (default: all) and compile them into the cache."""
    sources = {s.name: s for s in find_sources(root.resolve())}
    unknown = sorted(set(names) - set(sources))
    if unknown:
        raise BuildError(
            f"no component {', '.join(unknown)} under {root / 'components'} (have: {', '.join(sources)})"
        )
    cache = _cache_dir(cache_dir, root)
    builder = ComponentBuilder(cache)
    engine = WasmEngine(cache)
    for name in names or sorted(sources):
        out = builder.build(sources[name], root.resolve() / "build" / "components" / f"{name}.wasm")
        engine.load(out)  # so that the first run does not wait for the compile
        print(out)


async def run(app: Application, base: Path, cache: Path, args: argparse.Namespace) -> None:
    """Run ``app`` (its manifest in ``base``) until Ctrl-C or SIGTERM."""
    nats = NatsServer(port=args.nats_port, own_process_group=True)
    host: LocalHost | None = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if not stop.is_set():
            print("\nstopping…", file=sys.stderr, flush=True)
            stop.set()
            return
        # A second Ctrl-C: do not wait for anyone; take the children down with us.
        for pid in _children(host, nats):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        os._exit(130)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(signum, on_signal)
    try:
        if not await _until_stopped(prepare(app, base, cache), stop):  # builds, before starting anything
            return
        nats.start()
        host = LocalHost(
            app,
            nats.url,
            base_dir=base,
            cache_dir=cache,
            lattice=args.lattice,
            log_level=args.log_level,
            echo_logs=True,
            own_process_group=True,
        )
        if not await _until_stopped(host.start(), stop):
            return
        _banner(host, nats)
        await stop.wait()
    finally:
        if host is not None:
            await host.stop()
        nats.stop()
        print("stopped: provider, components and NATS", file=sys.stderr, flush=True)


async def _until_stopped(step: Coroutine[Any, Any, object], stop: asyncio.Event) -> bool:
    """Run ``step`` unless ``stop`` is set first (then cancel it). Whether it finished."""
    task = asyncio.ensure_future(step)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if task.done():
        task.result()  # raises what the step raised
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False


def _children(host: LocalHost | None, nats: NatsServer) -> list[int]:
    pids = []
    if host is not None and host.lattice is not None and host.lattice.process.returncode is None:
        with contextlib.suppress(AssertionError):
            pids.append(host.lattice.process.pid)
    if nats.pid is not None:
        pids.append(nats.pid)
    return pids


def _banner(host: LocalHost, nats: NatsServer) -> None:
    app = host.app
    assert host.lattice is not None
    lines = [
        "",
        f"  {app.name}: running on the local host",
        f"  NATS       {nats.url}",
        f"  provider   {app.capability.id} (pid {host.lattice.process.pid})",
    ]
    for component in app.components:
        lines.append(f"  component  {component.id} ({component.instances} instance(s))")
    for endpoint in host.endpoints():
        if endpoint.page:
            lines.append(f"  open       {endpoint.page}   ({endpoint.component}'s page)")
        lines.append(f"  websocket  {endpoint.websocket}   (→ {endpoint.component})")
    lines += ["", "  Ready. Ctrl-C stops everything.", ""]
    print("\n".join(lines), flush=True)


def main(argv: list[str] | None = None) -> None:
    """The command line."""
    args = _arguments(argv)
    level = getattr(logging, str(getattr(args, "log_level", "info")).upper(), logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    try:
        if args.command == "check":
            check(args.manifest, args.cache_dir)
        elif args.command == "build":
            build(args.names, args.root, args.cache_dir)
        else:
            app = _load(args.manifest)
            base = args.manifest.resolve().parent
            if reuse_freed_memory():  # large list<u8> values: reuse pages instead of mapping fresh ones
                log.debug("malloc keeps up to %d MiB of freed memory for reuse", MALLOC_KEEP >> 20)
            resolve_images(app, base)  # every image checked before anything starts
            asyncio.run(run(app, base, _cache_dir(args.cache_dir, base), args))
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except ProviderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
