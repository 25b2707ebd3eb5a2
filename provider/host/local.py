"""The local host: runs a wadm manifest on one machine, as a wasmCloud 1.x host would. I/O.

Given a checked :class:`~provider.host.wadm.Application` and a NATS server, it

1. resolves every component's ``image`` (all of them, before anything starts, so a bad
   reference stops the run with the manifest line and nothing half-started);
2. builds components that have sources (cached by their inputs) and compiles them
   (cached by wasm hash) off the event loop;
3. launches the provider as a host does (:class:`~provider.host.lattice.LocalLattice`:
   HostData on stdin with the capability's config and secrets, an empty environment,
   health-checked), in the manifest's directory, so relative paths in link config mean
   the same as in ``image:``; what runs is the binary of the capability's ``file://``
   archive, checked as a host checks it, or this checkout's venv (``provider``: ``auto``,
   ``archive``, ``venv``), as many processes as the capability's scaler says;
4. instantiates each component and serves its ``handle-message`` over wRPC;
5. puts the links, ``consumer`` links (component → provider) first, so a component can
   already answer when a ``handler`` link makes the provider deliver to it, each side's
   secrets sealed to the provider's xkey as a host seals them; each put
   asks the provider for its answer (a :class:`~provider.wasmcloud.links.LinkAnswer`, not
   a log line), and a rejected link stops the run with the provider's reason.

Every secret reference is resolved (:func:`~provider.host.wadm.resolve_secrets`) before
anything is built or started. Stopping is the reverse: the provider's shutdown request
(it closes its sessions), then the components.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from provider.errors import ArchiveError, ConfigError, ProviderError
from provider.host.build import BuildError, ComponentBuilder, Image, ensure_built, resolve_image
from provider.host.lattice import LocalLattice
from provider.host.launcher import ProviderSource, provider_executable
from provider.host.wadm import (
    Application,
    Link,
    LocalSecrets,
    ManifestError,
    Resolved,
    effective_config,
    resolve_secrets,
    secret_values,
)
from provider.host.wasm import FUEL_PER_CALL, WasmComponent, WasmEngine, load_component
from provider.websocket.config import Mode, mode_of, server_settings

log = logging.getLogger("provider.host")

LINK_WAIT = 10.0
"""Seconds to wait for the provider's answer to a link put."""


class HostError(ProviderError):
    """The local host could not start what the manifest describes."""


def resolve_images(app: Application, base_dir: Path) -> dict[str, Image]:
    """Every component's image, resolved against ``base_dir``; :class:`ManifestError` at the first bad one."""
    images: dict[str, Image] = {}
    for component in app.components:
        try:
            images[component.name] = resolve_image(component.image, base_dir)
        except BuildError as exc:
            raise ManifestError(
                f"{app.source}:{component.line}: component {component.name!r}: {exc}"
            ) from None
    return images


async def prepare(app: Application, base_dir: Path, cache_dir: Path) -> dict[str, Path]:
    """Resolve every image, then build what has sources (one at a time: a componentize-py build
    takes ~400 MB and a whole core), off the event loop. Component name → its ``.wasm``.

    Starts nothing; raises :class:`ManifestError` or :class:`HostError` naming the manifest line.
    """
    images = resolve_images(app, base_dir)
    builder = ComponentBuilder(cache_dir)
    paths: dict[str, Path] = {}
    for name, image in images.items():
        try:
            paths[name] = await asyncio.to_thread(ensure_built, image, builder)
        except BuildError as exc:
            raise HostError(f"{app.source}:{app.component(name).line}: component {name!r}: {exc}") from None
    return paths


@dataclass(frozen=True)
class Endpoint:
    """A server-mode listen address a handler link opens, for telling the user what to open."""

    component: str
    websocket: str
    page: str | None


# A wasmCloud 1.x host's observability settings, as `wasmcloud` / `wash up` read them from the
# environment, and the otel_config key each becomes.
_OTEL_FLAGS = {
    "WASMCLOUD_OBSERVABILITY_ENABLED": "enable_observability",
    "WASMCLOUD_TRACES_ENABLED": "enable_traces",
    "WASMCLOUD_METRICS_ENABLED": "enable_metrics",
    "WASMCLOUD_LOGS_ENABLED": "enable_logs",
}
_OTEL_VALUES = {
    "OTEL_EXPORTER_OTLP_ENDPOINT": "observability_endpoint",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "traces_endpoint",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "metrics_endpoint",
    "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "logs_endpoint",
    "WASMCLOUD_OBSERVABILITY_PROTOCOL": "protocol",
    "WASMCLOUD_TRACE_LEVEL": "trace_level",
}


def host_otel_config(environ: Mapping[str, str]) -> dict[str, Any]:
    """The ``otel_config`` a wasmCloud 1.x host started with ``environ`` gives its providers (empty:
    telemetry off). The provider checks the values (a bad one is logged there and leaves it off)."""
    config: dict[str, Any] = {}
    for variable, key in _OTEL_FLAGS.items():
        if variable in environ:
            config[key] = environ[variable].strip().lower() in ("1", "true", "yes", "on")
    for variable, key in _OTEL_VALUES.items():
        if environ.get(variable):
            config[key] = environ[variable]
    return config


class LocalHost:
    """Runs ``app`` against the NATS server at ``nats_url``. ``async with`` it, or call start/stop."""

    def __init__(
        self,
        app: Application,
        nats_url: str,
        *,
        base_dir: Path,
        cache_dir: Path,
        lattice: str = "default",
        launcher: Path | None = None,
        provider: ProviderSource = "auto",
        log_level: str = "info",
        echo_logs: bool = False,
        own_process_group: bool = False,
        fuel: int = FUEL_PER_CALL,
        secrets: LocalSecrets | None = None,
        otel_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.app = app
        self.nats_url = nats_url
        self.base_dir = base_dir
        self.cache_dir = cache_dir
        self.lattice_name = lattice
        self.launcher = launcher
        self.provider = provider
        self.log_level = log_level
        self.echo_logs = echo_logs
        self.own_process_group = own_process_group
        self.fuel = fuel
        self.secrets = secrets or LocalSecrets()
        self.otel_config = dict(otel_config or {})
        """HostData ``otel_config`` for the provider instances (:func:`host_otel_config`)."""
        self.resolved: Resolved = {}
        self.engine = WasmEngine(cache_dir)
        self.lattice: LocalLattice | None = None
        """The first provider instance (the one the components' wRPC goes through)."""
        self.instances: list[LocalLattice] = []
        """Every provider instance (``instances`` of the capability's scaler): they share sessions."""
        self.components: dict[str, WasmComponent] = {}
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    async def start(self) -> None:
        """Start everything the manifest describes; on failure, stop what was started and raise."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        self.resolved = resolve_secrets(self.app, self.secrets)  # before anything is built or started
        paths = await prepare(self.app, self.base_dir, self.cache_dir)
        compiled = {name: await load_component(self.engine, path) for name, path in paths.items()}
        capability = self.app.capability
        launcher = self.launcher
        if launcher is None:
            # The capability's image, as a host runs it (or this venv): see provider_executable.
            self._tmp = tempfile.TemporaryDirectory(prefix="wasmcloud-local-host-")
            try:
                launcher, what = provider_executable(
                    capability.image, self.base_dir, Path(self._tmp.name), self.provider
                )
            except ArchiveError as exc:
                where = f"{self.app.source}:{capability.line}: capability {capability.name!r}"
                raise HostError(f"{where}: {exc}") from None
            log.info("provider %s runs %s", capability.id, what)
        config = dict(capability.config)
        if capability.instances > 1:  # one machine: the instances share each listening port
            config.setdefault("REUSE_PORT", "true")
        for _ in range(capability.instances):
            instance = LocalLattice(
                self.nats_url,
                launcher,
                provider_id=capability.id,
                lattice=self.lattice_name,
                config=config,
                secrets=secret_values(capability.own.secrets, self.resolved),
                log_level=self.log_level,
                echo_logs=self.echo_logs,
                cwd=self.base_dir,
                own_process_group=self.own_process_group,
                otel_config=self.otel_config,
            )
            self.instances.append(instance)
            await instance.start()
        self.lattice = self.instances[0]
        if capability.instances > 1:
            log.info("provider %s runs %d instances", capability.id, capability.instances)
        assert self.lattice.transport is not None
        for component in self.app.components:
            running = WasmComponent(
                self.engine,
                compiled[component.name],
                self.lattice.transport,
                component.id,
                capability.id,
                lattice=self.lattice_name,
                instances=component.instances,
                fuel=self.fuel,
            )
            await running.start()
            self.components[component.name] = running
            log.info(
                "component %s (%s) runs %d instance(s)", component.name, component.id, component.instances
            )
        consumers = [link for link in self.app.links if link.target == capability.name]
        handlers = [link for link in self.app.links if link.source == capability.name]
        for instance in self.instances:  # every host of a lattice applies every link to its instance
            for link in consumers + handlers:
                await self._put_link(instance, link)

    async def _put_link(self, instance: LocalLattice, link: Link) -> None:
        assert instance.host is not None
        where = f"{self.app.source}:{link.line}"
        definition = instance.host.seal_sides(  # both sides, to the provider, as a host seals them
            link.definition,
            instance.provider,
            source=secret_values(link.source_side.secrets, self.resolved),
            target=secret_values(link.target_side.secrets, self.resolved),
        )
        try:
            answer = await instance.apply_link(definition, wait=LINK_WAIT)
        except TimeoutError:
            raise HostError(
                f"{where}: the provider did not answer the put of {link.definition.describe()} "
                f"within {LINK_WAIT:g}s"
            ) from None
        except ProviderError as exc:  # nobody listens, or the answer is not one
            raise HostError(f"{where}: putting {link.definition.describe()}: {exc}") from None
        assert answer is not None
        if not answer.applied:
            raise HostError(f"{where}: the provider {answer.text()}")

    def component(self, name: str) -> WasmComponent:
        """The running component called ``name`` in the manifest."""
        return self.components[name]

    def endpoints(self) -> list[Endpoint]:
        """The WebSocket servers the manifest's server-mode handler links open, and their pages."""
        found: list[Endpoint] = []
        for link in self.app.links:
            if not link.provider_is_source:
                continue
            config, _ = effective_config(self.app, link, self.resolved)
            try:  # the provider's own key table reads the keys, defaults included
                if mode_of(config) is not Mode.SERVER:
                    continue
                settings = server_settings(config)
            except ConfigError:
                continue  # the provider rejected this link already, saying why
            address = f"{settings.host}:{settings.port}"
            scheme = "wss" if settings.tls_cert else "ws"
            page = f"{'https' if settings.tls_cert else 'http'}://{address}/" if settings.static_dir else None
            found.append(Endpoint(link.target, f"{scheme}://{address}{settings.path}", page))
        return found

    async def stop(self) -> None:
        """Shut the provider down as a host does, then stop the components. Idempotent."""
        instances, self.instances, self.lattice = self.instances, [], None
        for instance in instances:
            await instance.stop_provider()  # first: it closes its sessions while components still answer
        components, self.components = list(self.components.values()), {}
        for component in components:
            await component.close()
        for instance in instances:
            await instance.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    async def __aenter__(self) -> LocalHost:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
