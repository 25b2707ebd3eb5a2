"""The provider runtime: the wasmCloud 1.x host protocol over NATS (protocol spec §1.4, §2, §3.3, §6). I/O.

Start-up follows the Rust SDK's order: connect, subscribe the control subjects, start the
capability, apply HostData's links, serve the ``consumer`` exports (queue group
``LATTICE.PROVIDER_ID``), then answer health checks as healthy.

Link puts, link deletes and config updates are queued (at most
:data:`CONTROL_QUEUE_LIMIT` of them) and applied **one at a time** by a single control
task. A put or delete that came with a reply subject is answered with a
:class:`~provider.wasmcloud.links.LinkAnswer` once applied (a host sends none; the local
host asks, so that it learns the outcome from a structured answer, not from a log line).
Health checks are answered straight from their subscription, so a busy control task
or data plane cannot delay them; a shutdown request for this host stops everything within
the host's 300 ms budget.

The five control subjects are direct subscriptions of the
:class:`~provider.wrpc.connection.NatsConnection`: their handlers run where the reader
parses a message, take its raw bytes, and whatever cannot be used (a reply subject that is
not UTF-8, a payload that does not parse, a full queue, a handler that raises) is dropped,
counted in the connection's ``drops`` and logged rate-limited, while the reader goes on.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import json
import logging
from collections import UserString
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from provider.errors import ConfigError, ProviderError, WrpcError
from provider.wasmcloud import logs
from provider.wasmcloud.bus import NatsBus
from provider.wasmcloud.capability import Bus, Capability, Health, ReplacesLinks
from provider.wasmcloud.config import Config, parse_string_map
from provider.wasmcloud.hostdata import HostData
from provider.wasmcloud.links import (
    Link,
    LinkAnswer,
    LinkDefinition,
    LinkOp,
    LinkResolver,
    LinkTable,
    PutOutcome,
    check_interfaces,
    decode_link_definition,
)
from provider.wasmcloud.subjects import ControlSubjects
from provider.wasmcloud.telemetry import OFF, Telemetry
from provider.wasmcloud.xkeys import XKey
from provider.wrpc.call import ServeLimits
from provider.wrpc.codec import Err, Ok
from provider.wrpc.connection import NatsConnection
from provider.wrpc.connection import connect as connect_nats
from provider.wrpc.messaging import (
    HANDLE_MESSAGE,
    PUBLISH,
    REQUEST,
    BrokerMessage,
    MessageResult,
    RequestParams,
    UnitResult,
)
from provider.wrpc.nats import Headers, Served, WrpcTransport, ensure_active
from provider.wrpc.protocol import valid_subject
from provider.wrpc.subjects import prefix

log = logging.getLogger("provider.runtime")

ResultT = TypeVar("ResultT", UnitResult, MessageResult)
ParamsT = TypeVar("ParamsT")


def _provider_error(what: str, link: Link, exc: Exception) -> Err[str]:
    log.error("%s from %s failed", what, link.component_id, exc_info=exc)
    return Err(f"provider error: {exc}")


async def _guarded(what: str, link: Link, pending: Awaitable[ResultT]) -> ResultT:
    """``pending``'s result; an exception it raises becomes ``err`` (the component gets no trap)."""
    try:
        return await pending
    except Exception as exc:
        return _provider_error(what, link, exc)


async def _settled(result: ResultT | Awaitable[ResultT]) -> ResultT:
    """A result that may still be on its way, awaited if it is."""
    return await result if isinstance(result, Awaitable) else result


MESSAGING = ("wasmcloud", "messaging")
EXPORTS = frozenset({"consumer"})
"""The messaging interfaces components call on the provider (it is the link's target)."""
IMPORTS = frozenset({"handler"})
"""The messaging interfaces the provider calls on components (it is the link's source)."""
HANDLE_MESSAGE_TIMEOUT = 10.0
"""Seconds a component has to answer ``handle-message`` (the Rust SDK's client default)."""
SHUTDOWN_BUDGET = 0.2
"""Seconds the capability gets to shut down: the host waits 300 ms for the reply in all."""
CONNECT_TIMEOUT = 10.0
REPLY_SUBJECT_LIMIT = 256
"""Characters a reply subject of a link put or delete may have (an inbox has about 60)."""
MESSAGE_PARAMS_LIMIT = 64 * 1024 * 1024 + 64 * 1024
"""The largest ``publish`` / ``request`` params served: the largest message a messaging link may
allow (``MAX_MESSAGE_BYTES`` is at most 64 MiB) plus room for its subject and reply-to. A larger
declared length is refused at once (:class:`~provider.wrpc.call.ServeLimits`)."""
CONSUMER_LIMITS = ServeLimits(max_params_bytes=MESSAGE_PARAMS_LIMIT, max_held_bytes=2 * MESSAGE_PARAMS_LIMIT)
CONTROL_QUEUE_LIMIT = 256
"""Control events (link puts, deletes, config updates) waiting to be applied; past it they are
dropped and counted. A host sends a handful at a time."""
BAD_CONTROL = "bad_control_message"
"""Drop reason: a control message that could not be applied (not JSON, not a link, …)."""
CONTROL_QUEUE_FULL = "control_queue_full"
"""Drop reason: more control messages arrived than :data:`CONTROL_QUEUE_LIMIT` can hold."""


class _Event(enum.Enum):
    PUT = "link put"
    DELETE = "link delete"
    CONFIG = "config update"


def answerable(reply: str) -> bool:
    """Whether ``reply`` (a reply subject from the network) is one to publish an answer on: a
    valid subject of printable ASCII, not too long, with no wildcard token."""
    return (
        0 < len(reply) <= REPLY_SUBJECT_LIMIT
        and reply.isascii()
        and reply.isprintable()
        and valid_subject(reply)
        and not any(token in ("*", ">") for token in reply.split("."))
    )


def nats_credentials(jwt: str, seed: str) -> UserString:
    """An in-memory NATS creds file, the form nats-py takes a user JWT and nkey seed in."""
    return UserString(
        "-----BEGIN NATS USER JWT-----\n"
        f"{jwt.strip()}\n"
        "------END NATS USER JWT------\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{seed.strip()}\n"
        "------END USER NKEY SEED------\n"
    )


async def connect_lattice(host_data: HostData, timeout: float = CONNECT_TIMEOUT) -> NatsConnection:
    """Connect to the lattice's RPC NATS (JWT + seed auth when HostData carries them).

    The first connection is retried for up to ``timeout`` while the server is unreachable,
    but a refusal (bad credentials, say) fails at once with the server's reason. Once
    connected, the client reconnects for as long as the provider runs.
    """
    options: dict[str, Any] = {}
    if host_data.lattice_rpc_user_jwt and host_data.lattice_rpc_user_seed:
        options["user_credentials"] = nats_credentials(
            host_data.lattice_rpc_user_jwt, host_data.lattice_rpc_user_seed
        )
    return await connect_nats_retrying(
        host_data.lattice_rpc_url,
        name=f"wasmcloud-ws-provider {host_data.provider_key}",
        shown=host_data.lattice_rpc_url,
        timeout=timeout,
        what="the lattice",
        **options,
    )


async def connect_nats_retrying(
    servers: str | list[str],
    *,
    name: str,
    shown: str,
    timeout: float = CONNECT_TIMEOUT,
    what: str = "NATS",
    **options: Any,
) -> NatsConnection:
    """Connect to ``servers``, retrying for up to ``timeout`` while unreachable; a refusal fails at once.

    Once connected, the client reconnects forever. ``shown`` names the servers in log lines
    and errors (without credentials); ``what`` is what they are (``the lattice``).
    """

    async def on_error(exc: Exception) -> None:
        log.warning("NATS: %s", exc)

    async def on_disconnected() -> None:
        # Not for a first attempt that failed (reported below), nor for our own close.
        if nc_ready and not nc.is_closed:
            log.warning("NATS: disconnected from %s, reconnecting", shown)

    async def on_reconnected() -> None:
        log.info("NATS: reconnected")

    nc_ready = False
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            nc = await connect_nats(
                servers,
                name=name,
                connect_timeout=max(0.1, min(2.0, deadline - loop.time())),
                allow_reconnect=False,  # the first connection: fail fast, so that a refusal is seen
                max_reconnect_attempts=-1,
                reconnect_time_wait=1,
                error_cb=on_error,
                disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected,
                **options,
            )
        except (OSError, TimeoutError) as exc:  # not reachable (yet): retry until the deadline
            if loop.time() >= deadline:
                raise ProviderError(
                    f"cannot connect to {what} at {shown} within {timeout:g}s: {exc}"
                ) from exc
            await asyncio.sleep(min(0.25, max(0.0, deadline - loop.time())))  # retry back-off
            continue
        except Exception as exc:
            raise ProviderError(f"{what} at {shown} refused the connection: {exc}") from exc
        # nats-py reads this option whenever the connection drops: from now on, reconnect forever.
        nc.options["allow_reconnect"] = True
        nc_ready = True
        return nc


class ProviderRuntime:
    """Runs one provider: the control plane for ``capability`` and its ``consumer`` exports."""

    def __init__(self, host_data: HostData, capability: Capability, telemetry: Telemetry = OFF) -> None:
        self._host = host_data
        self._telemetry = telemetry
        self._capability = capability
        self._xkey = XKey.from_seed(host_data.provider_xkey_private_key) if host_data.has_xkeys else None
        self._resolver = LinkResolver(
            provider_id=host_data.provider_key,
            provider_config=dict(host_data.config),
            provider_secrets=dict(host_data.secrets),
            xkey=self._xkey,
            host_xkey_public=host_data.host_xkey_public_key,
        )
        self._config = Config(host_data.config, host_data.secrets)
        logs.redact(
            host_data.lattice_rpc_user_jwt,
            host_data.lattice_rpc_user_seed,
            host_data.provider_xkey_private_key,
            *self._config.secret_values(),
        )
        self._subjects = ControlSubjects.for_provider(
            host_data.lattice, host_data.provider_key, self._xkey.public if self._xkey else None
        )
        self._prefix = prefix(host_data.lattice, host_data.provider_key)
        self.links = LinkTable()
        self._events: asyncio.Queue[tuple[_Event, bytes, str]] = asyncio.Queue(CONTROL_QUEUE_LIMIT)
        self._ready = False
        self._stopping = False
        self._torn_down = False
        self._stopped = asyncio.Event()
        self._nc: NatsConnection | None = None
        self._wrpc: WrpcTransport | None = None
        self._served: list[Served[Any, Any]] = []
        self._control_task: asyncio.Task[None] | None = None
        self._bus: Bus | None = None
        self._shutdown_task: asyncio.Task[None] | None = None

    # -- ProviderContext ----------------------------------------------------------------------

    @property
    def host_data(self) -> HostData:
        return self._host

    @property
    def provider_id(self) -> str:
        return self._host.provider_key

    @property
    def config(self) -> Config:
        return self._config

    @property
    def instruments(self) -> Telemetry:
        return self._telemetry

    @property
    def bus(self) -> Bus:
        if self._bus is None:
            self._bus = NatsBus(self._nc_or_raise())
        return self._bus

    async def handle_message(self, component_id: str, msg: BrokerMessage) -> UnitResult:
        """Invoke ``handle-message`` on ``component_id`` with ``source-id``/``target-id`` headers
        (and, with telemetry on, in a span whose ``traceparent`` the component receives)."""
        assert self._wrpc is not None, "the runtime is not running"
        target = prefix(self._host.lattice, component_id)
        headers = {"source-id": self.provider_id, "target-id": component_id}
        if not self._telemetry.enabled:
            return await self._wrpc.invoke(
                target, HANDLE_MESSAGE, msg, headers=headers, timeout=HANDLE_MESSAGE_TIMEOUT
            )
        with self._telemetry.delivery(component_id, msg.subject, len(msg.body), headers) as span:
            try:
                result = await self._wrpc.invoke(
                    target, HANDLE_MESSAGE, msg, headers=headers, timeout=HANDLE_MESSAGE_TIMEOUT
                )
            except WrpcError as exc:
                span.outcome("failed", str(exc))
                raise
            span.outcome(
                "ok" if isinstance(result, Ok) else "err", None if isinstance(result, Ok) else result.value
            )
            return result

    # -- life cycle ---------------------------------------------------------------------------

    async def run(self, nc: NatsConnection | None = None) -> None:
        """Run until a shutdown request for this host (or :meth:`stop`). Closes ``nc`` at the end."""
        self._nc = nc if nc is not None else await connect_lattice(self._host)
        try:
            await self._start()
            await self._stopped.wait()
        finally:
            await self._teardown()

    async def _start(self) -> None:
        nc = self._nc
        assert nc is not None
        self._wrpc = WrpcTransport(nc)
        await self._wrpc.start()
        s = self._subjects
        await nc.subscribe_direct(s.health, self._on_health)
        await nc.subscribe_direct(s.shutdown, self._on_shutdown)
        await nc.subscribe_direct(s.link_put, self._queue(_Event.PUT))
        await nc.subscribe_direct(s.link_delete, self._queue(_Event.DELETE))
        await nc.subscribe_direct(s.config_update, self._queue(_Event.CONFIG))
        await ensure_active(nc)
        log.info(
            "provider %s started on lattice %r (host %s, instance %s); link puts on %s",
            self.provider_id,
            self._host.lattice,
            self._host.host_id,
            self._host.instance_id,
            s.link_put,
        )
        await self._capability.start(self)
        for error in self._host.link_errors:
            log.error("%s; the link was skipped", error)
        for definition in self._host.link_definitions:
            await self._put(definition)
        self._served = [
            await self._wrpc.serve(self._prefix, PUBLISH, self._publish, limits=CONSUMER_LIMITS),
            await self._wrpc.serve(self._prefix, REQUEST, self._request, limits=CONSUMER_LIMITS),
        ]
        self._control_task = asyncio.create_task(self._control_loop(), name="provider-control")
        self._ready = True
        log.info("provider %s ready with %d link(s)", self.provider_id, len(self.links))

    def stop(self) -> None:
        """Ask :meth:`run` to shut down (signals, tests). Idempotent."""
        self._stopping = True
        self._stopped.set()

    async def _teardown(self) -> None:
        """Stop the data plane, then the transport and the NATS connection."""
        await self._teardown_data_plane()
        if self._wrpc is not None:
            await self._wrpc.close()
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.close()

    # -- control plane ------------------------------------------------------------------------

    def _queue(self, kind: _Event) -> Callable[[bytes, bytes, bytes, bytes | None], None]:
        def enqueue(subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
            if self._stopping:
                return
            nc = self._nc_or_raise()
            answer_to = nc.reply_of(subject, reply) if reply else ""
            if answer_to is None:
                return  # a reply subject that is not UTF-8: dropped and counted
            try:
                self._events.put_nowait((kind, data, answer_to))
            except asyncio.QueueFull:
                nc.drop(CONTROL_QUEUE_FULL, subject, f"a {kind.value}: {CONTROL_QUEUE_LIMIT} wait already")

        return enqueue

    async def _control_loop(self) -> None:
        """Apply control events one at a time, in arrival order; answer puts and deletes that asked."""
        while True:
            kind, payload, reply = await self._events.get()
            answer: LinkAnswer | None = None
            try:
                if kind is _Event.PUT:
                    answer = await self._put(decode_link_definition(payload))
                elif kind is _Event.DELETE:
                    answer = await self._delete(decode_link_definition(payload))
                else:
                    await self._update_config(payload)
            except ConfigError as exc:
                self._nc_or_raise().drop(
                    BAD_CONTROL, self._subject_of(kind), f"ignored a {kind.value}: {exc}"
                )
                answer = self._refusal(kind, f"ignored: {exc}")
            except Exception as exc:  # whatever a hostile payload provokes: one line, no traceback flood
                self._nc_or_raise().drop(
                    BAD_CONTROL, self._subject_of(kind), f"a {kind.value} failed: {type(exc).__name__}: {exc}"
                )
                answer = self._refusal(kind, f"the provider failed to apply it: {exc}")
            if reply and answer is not None:
                self._answer(reply, answer)

    def _subject_of(self, kind: _Event) -> str:
        s = self._subjects
        return {_Event.PUT: s.link_put, _Event.DELETE: s.link_delete, _Event.CONFIG: s.config_update}[kind]

    @staticmethod
    def _refusal(kind: _Event, error: str) -> LinkAnswer | None:
        """The answer to a put or delete that could not even be read (``None`` for other events)."""
        op = {_Event.PUT: LinkOp.PUT, _Event.DELETE: LinkOp.DELETE}.get(kind)
        return None if op is None else LinkAnswer(op, False, "", error)

    def _answer(self, reply: str, answer: LinkAnswer) -> None:
        """Publish ``answer`` on ``reply``, a subject from the network: only if it is a plain one."""
        if not answerable(reply):
            log.warning(
                "did not answer a link %s on reply subject %r: not a plain NATS subject",
                answer.op.value,
                reply[:80],
            )
            return
        try:
            self._nc_or_raise().publish_now(reply, answer.encode())
        except ProviderError as exc:  # closed while shutting down: nobody to tell
            log.debug("could not answer a link %s: %s", answer.op.value, exc)

    async def _put(self, definition: LinkDefinition) -> LinkAnswer:
        """Apply a link put; what became of it."""
        described = definition.describe()
        role = self._resolver.role(definition)
        if role is None:
            log.debug("ignored a link that does not name this provider: %s", described)
            return LinkAnswer(LinkOp.PUT, False, described, f"ignored: neither side is {self.provider_id!r}")
        if (definition.wit_namespace, definition.wit_package) != MESSAGING:
            log.warning("ignored a link for an interface this provider lacks: %s", described)
            why = "ignored: this provider serves wasmcloud:messaging only"
            return LinkAnswer(LinkOp.PUT, False, described, why)
        try:
            check_interfaces(definition, role, exports=EXPORTS, imports=IMPORTS)
            link = self._resolver.resolve(definition, role)
            logs.redact(*link.own.secret_values())
        except ConfigError as exc:
            log.error("rejected link %s: %s", described, exc)
            return LinkAnswer(LinkOp.PUT, False, described, str(exc))
        outcome = self.links.outcome(link)
        if outcome is PutOutcome.DUPLICATE:
            log.debug("ignored a duplicate put of link %s", described)
            return LinkAnswer(LinkOp.PUT, True, described)
        if outcome is PutOutcome.CHANGED:
            previous = self.links.get(link.key)
            assert previous is not None
            log.info("link %s changed: re-applying it", described)
            return await self._reapply(previous, link)
        return await self._apply(link)

    async def _apply(self, link: Link, previous: Link | None = None) -> LinkAnswer:
        """Put ``link`` (in place of ``previous``, if given); record it unless it is rejected."""
        described = link.definition.describe()
        try:
            if previous is not None and isinstance(self._capability, ReplacesLinks):
                await self._capability.replace_link(previous, link)
            else:
                await self._capability.put_link(link)
        except ConfigError as exc:
            log.error("rejected link %s: %s", described, exc)
            return LinkAnswer(LinkOp.PUT, False, described, str(exc))
        self.links.record(link)
        log.info("put link %s as %s", described, link.role.value)
        return LinkAnswer(LinkOp.PUT, True, described)

    async def _reapply(self, previous: Link, link: Link) -> LinkAnswer:
        """A changed link: replaced in place if the capability can, else deleted and put whole."""
        self.links.remove(previous.key)
        if not isinstance(self._capability, ReplacesLinks):
            await self._capability.delete_link(previous)
            return await self._apply(link)
        return await self._apply(link, previous)

    async def _delete(self, definition: LinkDefinition) -> LinkAnswer:
        """Apply a link delete; what became of it."""
        described = definition.describe()
        link = self.links.remove(definition.key)
        if link is None:
            log.debug("ignored a delete of a link this provider does not hold: %s", described)
            return LinkAnswer(LinkOp.DELETE, False, described, "the provider holds no such link")
        await self._capability.delete_link(link)
        log.info("deleted link %s", described)
        return LinkAnswer(LinkOp.DELETE, True, described)

    async def _update_config(self, payload: bytes) -> None:
        try:
            raw = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"config update is not JSON: {exc}") from exc
        config = parse_string_map(raw, "config update")
        self._resolver = self._resolver.with_provider_config(config)
        self._config = Config(config, self._host.secrets)
        await self._capability.update_config(self._config)
        log.info("provider config updated (%d key(s))", len(config))
        for link in self.links:
            updated = self._resolver.resolve(link.definition, link.role)
            if not updated.same_as(link):
                log.info("link %s: effective config changed, re-applying", link.definition.describe())
                await self._reapply(link, updated)

    def _on_health(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        nc = self._nc_or_raise()
        answer_to = nc.reply_of(subject, reply)
        if answer_to is None:
            return  # nobody to answer (or a reply subject that is not UTF-8: dropped and counted)
        if not self._ready:
            health = Health(False, "starting")
        else:
            try:
                health = self._capability.health()
            except Exception as exc:
                log.exception("health check failed")
                health = Health(False, f"health check failed: {exc}")
        body: dict[str, Any] = {"healthy": health.healthy}
        if health.message is not None:
            body["message"] = health.message + self._wire_drops()
        nc.publish_now(answer_to, json.dumps(body).encode())

    def _wire_drops(self) -> str:
        """What the NATS and wRPC layers dropped or refused, by reason (nothing if none)."""
        if self._wrpc is None:
            return ""
        counts = {reason: n for reason, n in sorted(self._wrpc.counters().items()) if n}
        return "; lattice dropped: " + ", ".join(f"{r} {n}" for r, n in counts.items()) if counts else ""

    def _on_shutdown(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        try:
            request = json.loads(data)
        except (ValueError, RecursionError):  # not UTF-8, not JSON, nested too deep
            request = None
        host_id = request.get("host_id", "") if isinstance(request, dict) else ""
        if host_id != self._host.host_id:
            # Every instance of this provider id in the lattice hears this subject (spec §2.5).
            log.debug("ignored a shutdown request for host %r", host_id)
            return
        if self._shutdown_task is not None:
            return  # already shutting down
        log.info("shutdown requested by host %s", host_id)
        # An unusable reply subject is counted; the request names this host, so shut down anyway.
        answer_to = self._nc_or_raise().reply_of(subject, reply) or ""
        self._shutdown_task = asyncio.create_task(self._shutdown(answer_to))

    async def _shutdown(self, reply: str) -> None:
        try:
            await self._teardown_data_plane()
            nc = self._nc_or_raise()
            if reply and valid_subject(reply):
                nc.publish_now(reply, b"shutting down")
            await nc.flush()
        finally:
            self._stopped.set()

    async def _teardown_data_plane(self) -> None:
        """Stop control events and exports, then shut the capability down. Runs once."""
        if self._torn_down:
            return
        self._torn_down = True
        self._stopping = True
        if self._control_task is not None:
            self._control_task.cancel()
            await asyncio.gather(self._control_task, return_exceptions=True)
        for served in self._served:
            await served.close()
        try:
            async with asyncio.timeout(SHUTDOWN_BUDGET):
                await self._capability.shutdown()
        except TimeoutError:
            log.warning("the capability took longer than %.0f ms to shut down", SHUTDOWN_BUDGET * 1000)
        except Exception:
            log.exception("the capability failed to shut down cleanly")

    def _nc_or_raise(self) -> NatsConnection:
        if self._nc is None:
            raise ProviderError("the runtime is not connected")
        return self._nc

    # -- data plane: consumer exports -----------------------------------------------------------

    def _caller(self, headers: Headers) -> tuple[Link | None, str]:
        source = headers.get("source-id", "")
        name = headers.get("link-name", "") or "default"
        link = self.links.target_link(source, name)
        if link is not None:
            return link, ""
        if not source:
            return None, "the call carries no source-id header, so its caller cannot be identified"
        return None, (
            f"component not linked: {source!r} has no link named {name!r} to provider "
            f"{self.provider_id!r} for wasmcloud:messaging/consumer"
        )

    def _publish(self, msg: BrokerMessage, headers: Headers) -> UnitResult | Awaitable[UnitResult]:
        """``consumer.publish``: its result at once when the capability answers at once (a
        local session), else an awaitable of it (the wRPC server awaits that in a task)."""
        if self._telemetry.enabled:
            return self._traced(
                functools.partial(self._from_component, "publish", headers, self._capability.publish, msg),
                "publish",
                headers,
                msg.subject,
                len(msg.body),
            )
        return self._from_component("publish", headers, self._capability.publish, msg)

    async def _request(self, params: RequestParams, headers: Headers) -> MessageResult:
        call = functools.partial(self._from_component, "request", headers, self._capability.request, params)
        return await (
            self._traced(call, "request", headers, params.subject, len(params.body))
            if self._telemetry.enabled
            else _settled(call())
        )

    async def _traced(
        self,
        call: Callable[[], ResultT | Awaitable[ResultT]],
        operation: str,
        headers: Headers,
        subject: str,
        size: int,
    ) -> ResultT:
        """``call()`` in a span parented by the incoming call's ``traceparent``."""
        with self._telemetry.served(operation, headers, subject, size) as span:
            result = await _settled(call())
            if isinstance(result, Ok):
                span.outcome("ok")
            else:
                span.outcome("err", str(result.value))
                # Inside the span: the exported record (and the log line) carries its trace id.
                log.info(
                    "%s on %r from %s: err: %s",
                    operation,
                    subject,
                    headers.get("source-id", "?"),
                    result.value,
                )
            return result

    def _from_component(
        self,
        what: str,
        headers: Headers,
        call: Callable[[Link, ParamsT], ResultT | Awaitable[ResultT]],
        params: ParamsT,
    ) -> ResultT | Awaitable[ResultT]:
        """Find the caller's link, then ``call(link, params)``; every failure is an ``err`` value.
        The capability's answer is passed on as it comes: a value, or an awaitable of one."""
        link, why = self._caller(headers)
        if link is None:
            return Err(why)
        try:
            result = call(link, params)
        except Exception as exc:  # the component gets err("…"), not a trap (spec §3.4)
            return _provider_error(what, link, exc)
        if isinstance(result, Awaitable):
            return _guarded(what, link, result)
        return result
