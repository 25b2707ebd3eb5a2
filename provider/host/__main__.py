"""``python -m provider.host``: the local wasmCloud-like host (``make run``, ``make components``). I/O.

Commands::

    run [wadm.yaml]      NATS, the provider and the manifest's components; Ctrl-C stops it all
    check [wadm.yaml]    check the manifest, its images, configs and secrets; show what the
                         provider gets per link (secrets redacted); start nothing
    build [NAME ...]     build components/<NAME>/ into build/components/<NAME>.wasm (default: all)
    run-v2               the chat on a real wasmCloud 2.x host: NATS, wash dev, the v2 bridge

``run`` and ``check`` take the values of the manifest's secret references from
``--secret KEY=VALUE``, ``--secret-env KEY=VARIABLE`` and ``--secrets-file FILE`` (a YAML or
JSON map of key → value), and named configs from ``--config-file FILE`` (config name →
its properties); each may be repeated.

``run`` checks the whole manifest, resolves every image, config and secret first, then
builds and compiles what is needed (cached), and only then starts NATS (loopback, a free port unless
``--nats-port``), the provider and the components. NATS and the provider run in process
groups of their own, so Ctrl-C reaches this process only, which stops them in order:
the provider's shutdown request, the components, NATS. A second Ctrl-C kills them at once.

``run`` gives the provider the ``otel_config`` a wasmCloud host started with this environment
would: ``WASMCLOUD_OBSERVABILITY_ENABLED`` (or ``WASMCLOUD_TRACES|METRICS|LOGS_ENABLED``),
``OTEL_EXPORTER_OTLP_ENDPOINT`` (and per signal), ``WASMCLOUD_OBSERVABILITY_PROTOCOL``,
``WASMCLOUD_TRACE_LEVEL``.

Exit codes: 0 after Ctrl-C or SIGTERM, 2 for a problem with the manifest, an image, a
config, a secret or an argument, 1 when something fails to build or start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any

from provider.errors import ConfigError, ProviderError
from provider.host.build import BuildError, ComponentBuilder, ComponentSource, find_sources
from provider.host.local import LocalHost, host_otel_config, prepare, resolve_images
from provider.host.nats_server import NatsServer
from provider.host.v2 import BridgeProcess
from provider.host.wadm import (
    Application,
    LocalSecrets,
    ManifestError,
    NamedConfigs,
    Resolved,
    StoredSecret,
    effective_config,
    load,
    load_named_configs,
    load_secrets_file,
    parse_secret_args,
    parse_secret_env,
    resolve_secrets,
)
from provider.host.wash import Probe, WashDev, WashError, wash_unusable
from provider.host.wasm import WasmEngine
from provider.process import MALLOC_KEEP, reuse_freed_memory

log = logging.getLogger("provider.host")

V2_URI = "127.0.0.1:8090"
"""Where ``run-v2`` serves the chat unless told (not ``make run``'s 8080, so both can run)."""
V2_SUBSCRIPTIONS = "ws.in.>,ws.event.>"
"""What the chat subscribes to behind the bridge: client frames and lifecycle events."""


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
        command.add_argument(
            "--secret",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="the value of the secret stored under KEY (a reference's properties.key); repeatable. "
            "Other users of this machine may see it in the process list: prefer --secrets-file",
        )
        command.add_argument(
            "--secret-env",
            action="append",
            default=[],
            metavar="KEY=VARIABLE",
            help="the value of KEY is environment variable VARIABLE's; repeatable",
        )
        command.add_argument(
            "--secrets-file",
            action="append",
            default=[],
            type=Path,
            metavar="FILE",
            help="a YAML or JSON map of KEY to value (or to a map of field to value); repeatable",
        )
        command.add_argument(
            "--config-file",
            action="append",
            default=[],
            type=Path,
            metavar="FILE",
            help="named configs (a YAML or JSON map of config name to its properties) for config "
            "references without properties; repeatable",
        )
    run.add_argument("--nats-port", type=int, default=-1, help="NATS port on 127.0.0.1 (default: a free one)")
    run.add_argument("--lattice", default="default", help="lattice name (default: default)")
    run.add_argument("--log-level", default="info", help="the provider's and the host's log level")
    run.add_argument(
        "--provider",
        choices=("auto", "archive", "venv"),
        default="auto",
        help="run the capability's file:// archive (archive), this checkout's venv (venv), or the "
        "archive when it exists (auto, the default)",
    )
    v2 = commands.add_parser(
        "run-v2", help="the chat on wasmCloud 2.x: NATS, wash dev running components/chat, the v2 bridge"
    )
    v2.add_argument("--uri", default=V2_URI, help=f"where the bridge listens (default: {V2_URI})")
    v2.add_argument("--root", type=Path, default=Path(), help="the project root (default: .)")
    v2.add_argument("--log-level", default="info", help="the bridge's log level")
    build = commands.add_parser("build", help="build components/<NAME>/ into build/components/<NAME>.wasm")
    build.add_argument("names", nargs="*", help="components to build (default: every one)")
    build.add_argument("--root", type=Path, default=Path(), help="the project root (default: .)")
    build.add_argument("--cache-dir", type=Path, help="the build cache (default: ROOT/.cache)")
    return parser.parse_args(argv)


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ManifestError(f"{path}: cannot read the {what}: {reason}") from None


def _load(path: Path, config_files: list[Path] | None = None) -> Application:
    named = NamedConfigs()
    for config_file in config_files or []:
        named = named.merged(load_named_configs(_read(config_file, "config file"), str(config_file)))
    return load(_read(path, "manifest"), source=str(path), named_configs=named)


def _secrets(args: argparse.Namespace) -> LocalSecrets:
    """The secret values given on the command line, files first, ``--secret`` winning over all."""
    files: list[tuple[str, dict[str, StoredSecret]]] = [
        (f"--secrets-file {path}", load_secrets_file(_read(path, "secrets file"), str(path)))
        for path in args.secrets_file
    ]
    layers = [
        *(files or [("--secrets-file", {})]),
        ("--secret-env", parse_secret_env(args.secret_env, os.environ)),
        ("--secret", parse_secret_args(args.secret)),
    ]
    return LocalSecrets.layered(*((_given(where, values), values) for where, values in layers))


def _given(where: str, values: dict[str, StoredSecret]) -> str:
    return f"{where} ({len(values)} key(s))" if values else f"{where} (none given)"


def _cache_dir(given: Path | None, base: Path) -> Path:
    return (given or base / ".cache").resolve()


def check(app: Application, resolved: Resolved, base: Path) -> None:
    """Say what ``run`` would start for ``app`` (checked, its secrets ``resolved``), and what
    config each link gives the provider, merged as the provider merges it, secrets redacted."""
    images = resolve_images(app, base)
    print(f"{app.source}: application {app.name!r}, provider {app.capability.id!r}")
    for warning in app.warnings:
        print(f"  warning: {warning}")
    for policy in app.policies:
        backend = policy.properties.get("backend", "—")
        print(f"  policy {policy.name!r} ({policy.type}, backend {backend}): values come from the local host")
    for component in app.components:
        image = images[component.name]
        origin = f"built from {_shown(image.source.directory)}" if image.source else "prebuilt"
        print(f"  component {component.name!r} id {component.id!r}: {_shown(image.path)} ({origin})")
    for link in app.links:
        side = link.provider_side_name
        print(f"  link {link.definition.describe()}  ({app.source}:{link.line})")
        print(f"    the provider reads {side}_config and {side}_secrets, over its own config; it gets:")
        _, settings = effective_config(app, link, resolved)
        width = max((len(s.key) for s in settings), default=0)
        shown = max((len(s.shown) for s in settings), default=0)
        for setting in settings:
            print(f"      {setting.key:<{width}}  {setting.shown:<{shown}}  {setting.origin}")
        if not settings:
            print("      (nothing: every key takes its default)")
        other = link.target_side if link.provider_is_source else link.source_side
        if other.configs or other.secrets:
            count = f"{len(other.config)} key(s) and {len(other.secrets)} secret(s)"
            print(f"    the other side's {count} are sent too; the provider does not read them")


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it is under it (shorter to read)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


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


def _stop_on_signals(
    loop: asyncio.AbstractEventLoop, stop: asyncio.Event, children: Callable[[], Iterable[int]]
) -> None:
    """Ctrl-C, SIGTERM or SIGHUP set ``stop`` (an orderly stop); a second one kills ``children()``
    at once and exits 130, waiting for nobody."""

    def on_signal() -> None:
        if not stop.is_set():
            print("\nstopping…", file=sys.stderr, flush=True)
            stop.set()
            return
        for pid in children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        os._exit(130)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(signum, on_signal)


async def run(
    app: Application, base: Path, cache: Path, args: argparse.Namespace, secrets: LocalSecrets
) -> None:
    """Run ``app`` (its manifest in ``base``, its secrets' values in ``secrets``) until Ctrl-C or SIGTERM."""
    nats = NatsServer(port=args.nats_port, own_process_group=True)
    host: LocalHost | None = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    _stop_on_signals(loop, stop, lambda: _children(host, nats))
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
            secrets=secrets,
            provider=args.provider,
            otel_config=host_otel_config(os.environ),
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
    for instance in host.instances if host is not None else []:  # every provider process
        if instance.process.returncode is None:
            with contextlib.suppress(AssertionError):
                pids.append(instance.process.pid)
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


async def run_v2(args: argparse.Namespace) -> None:
    """The chat on a real wasmCloud 2.x host until Ctrl-C or SIGTERM; then bridge, wash, NATS, in order."""
    root = args.root.resolve()
    source = ComponentSource("chat", root / "components" / "chat", root / "wit")
    reason = wash_unusable()
    if reason is not None:
        raise WashError(f"{reason}; make run-v2 installs it (pip install -e '.[v2]')")
    nats = NatsServer(own_process_group=True)
    wash: WashDev | None = None
    bridge: BridgeProcess | None = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    _stop_on_signals(
        loop,
        stop,
        lambda: [
            pid
            for pid in (
                bridge.pid if bridge and bridge.returncode is None else None,
                wash and wash.pid,
                nats.pid,
            )
            if pid
        ],
    )
    try:
        built: list[Path] = []

        async def build_chat() -> None:  # cached by a hash of its inputs: only the first run builds
            built.append(await asyncio.to_thread(ComponentBuilder(root / ".cache").build, source))

        if not await _until_stopped(build_chat(), stop):
            return
        nats.start()
        probe = Probe(subject="ws.event.connected", body=b"{}")  # the chat welcomes the probe
        wash = WashDev(built[0], nats.url, subscriptions=V2_SUBSCRIPTIONS, probe=probe, echo=True)
        print("starting wash dev (it compiles the component: about a minute)…", file=sys.stderr, flush=True)
        wash.launch()
        if not await _until_stopped(wash.wait_ready(), stop):
            return
        keys = {
            "URI": args.uri,
            "PATH": "/ws",
            "FORMAT": "json",
            "LIFECYCLE_EVENTS": "true",
            "STATIC_DIR": str(root / "components" / "chat" / "static"),
        }
        bridge = BridgeProcess(nats.url, keys, log_level=args.log_level, echo=True, own_process_group=True)
        if not await _until_stopped(bridge.launch(), stop):
            return
        page = bridge.url.removesuffix("/ws").replace("ws://", "http://").replace("wss://", "https://")
        lines = [
            "",
            "  chat on wasmCloud 2.x: running",
            f"  NATS       {nats.url}",
            f"  wash dev   pid {wash.pid}, components/chat, subscriptions {V2_SUBSCRIPTIONS}"
            f" (ready after {wash.ready_after:.0f} s)",
            f"  bridge     pid {bridge.pid}, instance {bridge.tag}",
            f"  open       {page}/",
            f"  websocket  {bridge.url}",
            "",
            "  Ready. Ctrl-C stops everything.",
            "",
        ]
        print("\n".join(lines), flush=True)
        await stop.wait()
    finally:
        if bridge is not None:
            await bridge.terminate()
        if wash is not None:
            await asyncio.to_thread(wash.stop)
        nats.stop()
        print("stopped: bridge, wash dev and NATS", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    """The command line."""
    args = _arguments(argv)
    level = getattr(logging, str(getattr(args, "log_level", "info")).upper(), logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    try:
        if args.command == "build":
            build(args.names, args.root, args.cache_dir)
            return
        if args.command == "run-v2":
            asyncio.run(run_v2(args))
            return
        app = _load(args.manifest, args.config_file)
        base = args.manifest.resolve().parent
        secrets = _secrets(args)
        resolved = resolve_secrets(app, secrets)  # every secret found before anything starts
        if args.command == "check":
            check(app, resolved, base)
            return
        for warning in app.warnings:
            log.warning("%s", warning)
        if reuse_freed_memory():  # large list<u8> values: reuse pages instead of mapping fresh ones
            log.debug("malloc keeps up to %d MiB of freed memory for reuse", MALLOC_KEEP >> 20)
        resolve_images(app, base)  # every image checked before anything starts
        asyncio.run(run(app, base, _cache_dir(args.cache_dir, base), args, secrets))
    except ConfigError as exc:  # the manifest, a config or secrets file, a --secret argument
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except ProviderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
