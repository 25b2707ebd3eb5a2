"""Wasm components run with wasmtime's component API and served over wRPC, as a host serves them. I/O.

A :class:`WasmComponent` serves its ``wasmcloud:messaging/handler@0.2.0.handle-message``
export on ``LATTICE.COMPONENT_ID.wrpc.0.0.1.…`` and routes its
``wasmcloud:messaging/consumer@0.2.0`` imports (``publish``, ``request``) to the linked
provider over wRPC with the ``source-id`` and ``link-name`` headers: the path of
:class:`provider.host.native.NativeComponent`, which it uses for the wire, so the
provider sees the same traffic from a wasm component as from a real host.

Threads. wasmtime has no asyncio API and a ``Store`` must never be used from two threads,
so each instance is a worker thread owning its own ``Store`` and instance; the event loop
hands messages to the workers through a queue and awaits their results. A host import
runs on the worker's thread inside the wasm call; it bridges back to the event loop with
``asyncio.run_coroutine_threadsafe(…).result(timeout)``. Host imports catch every
exception and return it as the WIT ``err`` string: an exception escaping into wasmtime
kills the instance and can resurface on another thread.

Traps. After a trap (or a call that ran out of fuel) an instance can never be entered
again: the worker replaces it with a fresh Store and instance (under a millisecond) and
serves the next message. The caller of the trapped call sees a trap, an empty result
stream, as from a wasmCloud host.

Leaked bodies. componentize-py (0.25.1, the newest) never frees a ``list<u8>`` it lowers for an
import call: its runtime's ``maybe_pop_list`` copies the bytes into a fresh allocation, and nothing
hands that to the call's deferred deallocations, as its other lowerings do. So every body a Python
component publishes stays in its linear memory (measured: 1 MiB more resident per 1 MiB echo,
without end). The worker therefore counts the ``list<u8>`` bytes its instance passes to the imports
and, past :data:`RECYCLE_AFTER_BYTES`, replaces the instance between two calls (under a
millisecond), which gives that memory back. A wasmCloud host instantiates a component per
invocation, so no component can count on its globals surviving from one call to the next anyway.

Fuel. Each call gets :data:`FUEL_PER_CALL` units of wasm work (time spent in host calls
does not count), so a component stuck in a loop traps instead of holding a worker forever.

Bytes. wasmtime-py converts a ``list<u8>`` one value per byte (~1.4 µs a byte);
importing this module installs :mod:`provider.host.wasm_bytes`, which converts them in bulk
(and refuses to load on a wasmtime it was not checked against).

Compiling a componentize-py component takes seconds; compiled components are cached on
disk by wasmtime version, engine settings and a hash of the wasm (``Component.serialize``
/ ``deserialize_file``; the cache directory must be writable only by its owner, since
deserializing runs the machine code it holds).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import hashlib
import importlib.metadata
import logging
import os
import queue
import tempfile
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import wasmtime
from wasmtime import component as wc

from provider.errors import ProviderError
from provider.host import wasm_bytes
from provider.host.build import file_lock
from provider.host.native import NativeComponent
from provider.wrpc.codec import Err, Ok
from provider.wrpc.messaging import CONSUMER, HANDLER, BrokerMessage, UnitResult
from provider.wrpc.nats import WrpcTransport

log = logging.getLogger("provider.host.wasm")

wasm_bytes.install()  # every list<u8> this process hands to or takes from wasm goes in bulk

T = TypeVar("T")

HANDLE_MESSAGE = "handle-message"
FUEL_PER_CALL = 20_000_000_000
"""Units of wasm work one call may use (an echo takes about 40 000; this is seconds of CPU)."""
IMPORT_TIMEOUT = 10.0
"""Seconds a ``publish`` import may wait for the provider (wRPC's own invocation deadline)."""
REQUEST_GRACE = 5.0
"""Seconds a ``request`` import waits beyond the component's own ``timeout-ms``."""
RECYCLE_AFTER_BYTES = 16 << 20
"""``list<u8>`` bytes an instance may pass to the imports before its worker replaces it (see the module)."""
STOP_TIMEOUT = 5.0
"""Seconds :meth:`WasmComponent.close` waits for calls in progress before abandoning the workers."""


class ComponentError(ProviderError):
    """A component could not be loaded or instantiated."""


class ComponentTrapped(ProviderError):
    """A call trapped (or ran out of fuel); the instance was replaced."""


def _engine_config() -> tuple[wasmtime.Config, str]:
    """The engine settings, and a tag naming them: compiled code is valid only for the same settings."""
    config = wasmtime.Config()
    config.consume_fuel = True
    return config, "consume_fuel"


class WasmEngine:
    """One wasmtime ``Engine`` shared by every component, with an on-disk cache of compiled components."""

    def __init__(self, cache_dir: Path | None = None) -> None:
        config, self.config_tag = _engine_config()
        self.engine = wasmtime.Engine(config)
        self.cache_dir = cache_dir / "wasmtime" if cache_dir is not None else None
        self.version = importlib.metadata.version("wasmtime")

    def cache_key(self, wasm: bytes) -> str:
        """What a compiled component depends on: wasmtime's version, the engine settings, the wasm."""
        digest = hashlib.sha256(f"wasmtime {self.version}\n{self.config_tag}\n".encode())
        digest.update(hashlib.sha256(wasm).digest())
        return digest.hexdigest()

    def load(self, path: Path) -> wc.Component:
        """The compiled component at ``path``, from the cache if there. Blocking: seconds on a miss."""
        try:
            wasm = path.read_bytes()
        except OSError as exc:
            raise ComponentError(f"cannot read {path}: {exc.strerror or exc}") from exc
        if self.cache_dir is None:
            return self._compile(path, wasm)
        cached = self.cache_dir / f"{self.cache_key(wasm)}.cwasm"
        component = self._deserialize(cached)
        if component is not None:
            return component
        with file_lock(cached.with_suffix(".lock")):  # another process may be compiling the same wasm
            component = self._deserialize(cached)
            if component is not None:
                return component
            component = self._compile(path, wasm)
            fd, tmp = tempfile.mkstemp(dir=cached.parent, prefix=".cwasm.")
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(component.serialize())
                os.replace(tmp, cached)  # readers see the whole file or none
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return component

    def _deserialize(self, cached: Path) -> wc.Component | None:
        if not cached.is_file():
            return None
        try:
            return wc.Component.deserialize_file(self.engine, str(cached))
        except wasmtime.WasmtimeError as exc:  # written by another wasmtime build, or damaged
            log.warning("dropping the compiled-component cache entry %s: %s", cached.name, exc)
            cached.unlink(missing_ok=True)
            return None

    def _compile(self, path: Path, wasm: bytes) -> wc.Component:
        log.info("compiling %s (%d MiB); cached afterwards", path.name, len(wasm) >> 20)
        try:
            return wc.Component(self.engine, wasm)
        except wasmtime.WasmtimeError as exc:
            raise ComponentError(f"{path} is not a wasm component wasmtime can compile: {exc}") from exc


# -- values: BrokerMessage <-> wasmtime records (WIT kebab-case names) ---------------------------------


def to_record(msg: BrokerMessage) -> wc.Record:
    """``broker-message`` for wasmtime: attributes named as in the WIT, ``list<u8>`` as exactly ``bytes``."""
    record = wc.Record()
    for name, value in (("subject", msg.subject), ("body", bytes(msg.body)), ("reply-to", msg.reply_to)):
        setattr(record, name, value)
    return record


def from_record(record: Any) -> BrokerMessage:
    """A ``broker-message`` lifted by wasmtime."""
    return BrokerMessage(str(record.subject), bytes(record.body), getattr(record, "reply-to"))


# -- one instance, owned by one thread -----------------------------------------------------------------


class _Instance:
    """A Store and an instance of the component in it, with its ``handle-message`` export."""

    def __init__(self, linker: wc.Linker, engine: WasmEngine, component: wc.Component, fuel: int) -> None:
        self.fuel = fuel
        self.store = wasmtime.Store(engine.engine)
        wasi = wasmtime.WasiConfig()
        wasi.inherit_stdout()  # print() and tracebacks of the component go to the host's output
        wasi.inherit_stderr()
        self.store.set_wasi(wasi)
        self.store.set_fuel(fuel)  # before instantiating: start-up runs wasm too
        instance = linker.instantiate(self.store, component)
        interface = component.get_export_index(HANDLER)
        index = component.get_export_index(HANDLE_MESSAGE, interface) if interface is not None else None
        func = instance.get_func(self.store, index) if index is not None else None
        if func is None:
            raise ComponentError(f"the component exports no {HANDLER}.{HANDLE_MESSAGE}")
        self.handle_message = func

    def call(self, msg: BrokerMessage) -> UnitResult:
        """Call ``handle-message``. Raises ``WasmtimeError`` when the guest traps."""
        self.store.set_fuel(self.fuel)
        result = self.handle_message(self.store, to_record(msg))
        # result<_, string> lifts as None (ok) or the error string (err).
        return Ok(None) if result is None else Err(str(result))


@dataclass
class _Job:
    msg: BrokerMessage
    result: concurrent.futures.Future[UnitResult] = field(default_factory=concurrent.futures.Future)
    context: contextvars.Context = field(default_factory=contextvars.copy_context)
    """The context the call was served in: the worker runs the guest in it, so the imports' calls
    (``consumer.publish``…) carry that call's trace headers, as a host's do."""


class _Passed(threading.local):
    """Per worker thread: the ``list<u8>`` bytes its current instance passed to the imports."""

    bytes = 0


@dataclass
class Stats:
    """What a component's workers have done."""

    calls: int = 0
    traps: int = 0
    replaced: int = 0
    """Instances replaced after a trap."""
    recycled: int = 0
    """Instances replaced after passing :data:`RECYCLE_AFTER_BYTES` of bodies to the imports."""


class WasmComponent:
    """A wasm component served over wRPC by ``instances`` worker threads, each with its own Store.

    ``link_name`` is the ``link-name`` header of its calls to the provider (a real host
    sends ``default`` unless the component chose another).
    """

    def __init__(
        self,
        engine: WasmEngine,
        component: wc.Component,
        transport: WrpcTransport,
        component_id: str,
        provider_id: str,
        *,
        lattice: str = "default",
        instances: int = 1,
        link_name: str = "default",
        fuel: int = FUEL_PER_CALL,
    ) -> None:
        self.engine = engine
        self.component = component
        self.component_id = component_id
        self.instances = instances
        self.link_name = link_name
        self.fuel = fuel
        self.stats = Stats()
        self._wire = NativeComponent(transport, component_id, provider_id, self._on_message, lattice=lattice)
        self._linker = self._make_linker()
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._passed = _Passed()
        self.recycle_after = RECYCLE_AFTER_BYTES

    # -- imports: the consumer interface, bridged to the event loop --------------------------------

    def _make_linker(self) -> wc.Linker:
        linker = wc.Linker(self.engine.engine)
        linker.add_wasip2()
        with linker.root() as root, root.add_instance(CONSUMER) as consumer:
            consumer.add_func("publish", self._publish)
            consumer.add_func("request", self._request)
        return linker

    def _on_loop(self, coroutine: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coroutine`` on the event loop and wait for it, from a worker thread."""
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"no answer from the provider within {timeout:g}s") from None

    def _publish(self, store: object, record: Any) -> str | None:
        """``consumer.publish`` (on a worker thread, inside a wasm call): ``None`` for ok, else the error."""
        try:
            msg = from_record(record)
            self._passed.bytes += len(msg.body)
            result = self._on_loop(self._wire.publish(msg, self.link_name), IMPORT_TIMEOUT + 1)
            return None if isinstance(result, Ok) else result.value
        except BaseException as exc:  # never into wasmtime: it would kill the instance (see the module doc)
            log.warning("%s: publish failed in the host: %s", self.component_id, exc)
            return f"host: publish failed: {type(exc).__name__}: {exc}"

    def _request(self, store: object, subject: str, body: bytes, timeout_ms: int) -> wc.Record | str:
        """``consumer.request`` (on a worker thread, inside a wasm call): the answer, else the error."""
        try:
            self._passed.bytes += len(body)
            call = self._wire.request(subject, bytes(body), timeout_ms, self.link_name)
            result = self._on_loop(call, timeout_ms / 1000 + REQUEST_GRACE + 1)
            return to_record(result.value) if isinstance(result, Ok) else result.value
        except BaseException as exc:  # never into wasmtime: it would kill the instance (see the module doc)
            log.warning("%s: request failed in the host: %s", self.component_id, exc)
            return f"host: request failed: {type(exc).__name__}: {exc}"

    # -- the export: handle-message, served by the workers ------------------------------------------

    async def _on_message(self, wire: NativeComponent, msg: BrokerMessage) -> UnitResult:
        if self._closing:
            raise ComponentError(f"{self.component_id} is stopping")
        job = _Job(msg)
        self._jobs.put(job)
        return await asyncio.wrap_future(job.result)

    async def start(self) -> None:
        """Instantiate every worker's instance, then serve handle-message (live when this returns)."""
        self._loop = asyncio.get_running_loop()
        ready: list[concurrent.futures.Future[None]] = []
        for number in range(self.instances):
            started: concurrent.futures.Future[None] = concurrent.futures.Future()
            thread = threading.Thread(
                target=self._work,
                args=(started,),
                name=f"wasm {self.component_id} #{number}",
                daemon=True,  # a worker stuck in wasm must not keep the process alive
            )
            thread.start()
            self._threads.append(thread)
            ready.append(started)
        try:
            await asyncio.gather(*(asyncio.wrap_future(f) for f in ready))
        except Exception:
            await self.close()
            raise
        await self._wire.start()

    def _instantiate(self) -> _Instance:
        """A fresh instance for the calling worker (whose count of bodies passed starts again)."""
        self._passed.bytes = 0
        try:
            return _Instance(self._linker, self.engine, self.component, self.fuel)
        except wasmtime.WasmtimeError as exc:
            raise ComponentError(f"cannot instantiate {self.component_id}: {exc}") from exc

    def _work(self, started: concurrent.futures.Future[None]) -> None:
        """A worker thread: its own Store and instance, replaced after a trap."""
        try:
            instance: _Instance | None = self._instantiate()
        except BaseException as exc:
            started.set_exception(exc)
            return
        started.set_result(None)
        while (job := self._jobs.get()) is not None:
            if not job.result.set_running_or_notify_cancel():
                continue  # the caller gave up while the job waited
            if self._closing:
                job.result.set_exception(ComponentError(f"{self.component_id} is stopping"))
                continue
            try:
                if instance is None:
                    instance = self._instantiate()
                elif self._passed.bytes >= self.recycle_after:
                    log.debug(
                        "%s: a fresh instance after %d bytes of bodies", self.component_id, self._passed.bytes
                    )
                    instance = None  # its memory goes before the next one's comes
                    instance = self._instantiate()
                    self.stats.recycled += 1
                self.stats.calls += 1
                job.result.set_result(job.context.run(instance.call, job.msg))
            except BaseException as exc:
                # Whatever failed, the instance may be unusable ("cannot enter component
                # instance" after a trap): start the next message on a fresh one.
                instance = None
                job.result.set_exception(self._trapped(exc))
                try:
                    instance = self._instantiate()
                    self.stats.replaced += 1
                except BaseException as again:
                    log.error("%s: could not replace the instance: %s", self.component_id, again)

    def _trapped(self, exc: BaseException) -> BaseException:
        if not isinstance(exc, wasmtime.WasmtimeError):
            return exc
        self.stats.traps += 1
        lines = str(exc).splitlines()
        reason = next((line.strip() for line in reversed(lines) if line.strip()), "trap")
        log.warning("%s trapped (%s); the next message gets a fresh instance", self.component_id, reason)
        return ComponentTrapped(f"{self.component_id} trapped: {reason}")

    async def close(self) -> None:
        """Stop serving, then stop the workers (waiting up to :data:`STOP_TIMEOUT` for calls in progress)."""
        self._closing = True
        await self._wire.close()
        for _ in self._threads:
            self._jobs.put(None)
        threads, self._threads = self._threads, []

        def join() -> None:
            deadline = time.monotonic() + STOP_TIMEOUT  # one deadline for all of them
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))

        await asyncio.to_thread(join)
        stuck = [t.name for t in threads if t.is_alive()]
        if stuck:
            log.warning("abandoned worker thread(s) still in a wasm call: %s", ", ".join(stuck))


async def load_component(engine: WasmEngine, path: Path) -> wc.Component:
    """:meth:`WasmEngine.load` off the event loop (a compile takes seconds)."""
    return await asyncio.to_thread(engine.load, path)
