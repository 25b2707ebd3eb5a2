"""OpenTelemetry traces, metrics and logs, as HostData's ``otel_config`` asks (issue 16). I/O.

Off by default. :data:`OFF` does nothing and imports nothing: the hot path pays one attribute
check. :func:`start` imports OpenTelemetry (the ``[otel]`` extra; the provider archive carries
it) only when a signal is switched on, and sets up OTLP exporters (HTTP; gRPC when its package
is installed, else a clear log line and HTTP's default port is not guessed: the signal stays off).

* **Traces**: a span for each ``handle-message`` delivery (kind PRODUCER, parented by the
  current context: a forwarded publish's, or none for a client's frame) whose context goes to
  the component in the invocation's ``traceparent`` header; a span for each served ``publish``
  / ``request`` (kind SERVER), parented by the ``traceparent`` of the incoming wRPC call.
* **Metrics**: the provider's own counters, observed at each export (no second set of
  counters), plus two histograms recorded here: ``messaging.process.duration`` (deliveries)
  and ``messaging.client.operation.duration`` (served calls and forwards).
* **Logs**: with ``enable_logs`` every record is exported too; whenever a span is current, the
  record carries ``trace_id`` / ``span_id`` (shown in the text and JSON log lines).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any

from provider.wasmcloud import logs
from provider.wasmcloud.observability import Observability, Protocol

log = logging.getLogger("provider.telemetry")

Measurements = Callable[[], Mapping[str, Any]]
"""What the capability counts: numbers, or maps of attribute value → number."""

SYSTEM = "websocket"
"""``messaging.system`` of every span and metric (semconv allows custom values)."""


class Span:
    """The span of one operation, or nothing when traces are off."""

    __slots__ = ("_span",)

    def __init__(self, span: Any = None) -> None:
        self._span = span

    def set(self, key: str, value: Any) -> None:
        if self._span is not None:
            self._span.set_attribute(key, value)

    def outcome(self, outcome: str, error: str | None = None) -> None:
        """``ok``, ``err`` (the component's own error), ``failed`` (the call itself)."""
        if self._span is None:
            return
        self._span.set_attribute("websocket.outcome", outcome)
        if error is not None:
            from opentelemetry.trace import Status, StatusCode

            self._span.set_status(Status(StatusCode.ERROR, error[:200]))


class Telemetry:
    """No telemetry: every method does nothing (the default)."""

    enabled = False

    @contextlib.contextmanager
    def delivery(
        self, component: str, subject: str, size: int, headers: MutableMapping[str, str]
    ) -> Iterator[Span]:
        """Around a ``handle-message`` call; its ``traceparent`` goes into ``headers``."""
        yield Span()

    @contextlib.contextmanager
    def served(self, operation: str, headers: Mapping[str, str], subject: str, size: int) -> Iterator[Span]:
        """Around a served ``publish`` / ``request``, parented by the call's ``traceparent``."""
        yield Span()

    def record(self, operation: str, seconds: float, outcome: str) -> None:
        """One ``messaging.client.operation.duration`` (``forward``…)."""

    def observe(self, measurements: Measurements) -> None:
        """Export what ``measurements()`` returns at each metrics collection."""

    def shutdown(self) -> None:
        """Export what is pending and stop."""


OFF = Telemetry()


def trace_fields() -> dict[str, str]:
    """``trace_id`` / ``span_id`` of the current span, for a log line (empty without one)."""
    try:
        from opentelemetry import trace
    except ImportError:  # pragma: no cover - only when OpenTelemetry was never set up
        return {}
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}


# Instrument names: OpenTelemetry's messaging semantic conventions where one exists, else ``websocket.*``.
GAUGES = {
    "sessions": ("websocket.sessions", "{session}", "WebSocket sessions open on this instance's servers"),
    "connections": ("websocket.client.connections", "{connection}", "client-mode connections, by state"),
}
COUNTERS = {
    "frames_in": ("messaging.client.consumed.messages", "{message}", "frames read from WebSocket peers"),
    "frames_out": ("messaging.client.sent.messages", "{message}", "frames sent to WebSocket peers"),
    "bytes": ("websocket.io", "By", "frame bytes, by direction (receive, transmit)"),
    "deliveries": ("websocket.deliveries", "{message}", "handle-message calls, by outcome"),
    "publishes": ("websocket.publishes", "{call}", "consumer.publish calls served, by outcome"),
    "drops": ("websocket.drops", "{message}", "frames or lattice messages dropped, by reason"),
    "closes": ("websocket.closes", "{connection}", "sessions and connections the provider closed, by reason"),
    "forwards": ("websocket.forwards", "{call}", "publishes forwarded to another instance, by outcome"),
}
ATTRIBUTE = {
    "connections": "websocket.connection.state",
    "bytes": "network.io.direction",
    "deliveries": "websocket.outcome",
    "publishes": "websocket.outcome",
    "drops": "websocket.reason",
    "closes": "websocket.reason",
    "forwards": "websocket.outcome",
}


class OpenTelemetry(Telemetry):
    """Telemetry exported over OTLP (built by :func:`start`)."""

    enabled = True

    def __init__(self, settings: Observability, resource: Any, modules: Any) -> None:
        self.settings = settings
        self._m = modules
        self._providers: list[Any] = []
        self._measurements: Measurements | None = None
        self._tracer = None
        self._meter = None
        if settings.spans:
            provider = modules.TracerProvider(resource=resource, sampler=_sampler(settings, modules))
            exporter = _exporter("traces", settings, modules)
            if exporter is not None:
                provider.add_span_processor(
                    modules.BatchSpanProcessor(exporter, max_queue_size=settings.max_queue_size)
                )
            self._tracer = provider.get_tracer("wasmcloud-ws-provider")
            self._providers.append(provider)
        if settings.metrics:
            exporter = _exporter("metrics", settings, modules)
            readers = [modules.PeriodicExportingMetricReader(exporter)] if exporter is not None else []
            provider = modules.MeterProvider(resource=resource, metric_readers=readers)
            self._meter = provider.get_meter("wasmcloud-ws-provider")
            self._providers.append(provider)
            self._durations = {
                "process": self._meter.create_histogram(
                    "messaging.process.duration", unit="s", description="handle-message deliveries"
                ),
                "operation": self._meter.create_histogram(
                    "messaging.client.operation.duration", unit="s", description="served calls and forwards"
                ),
            }
            self._instruments()
        if settings.logs:
            exporter = _exporter("logs", settings, modules)
            if exporter is not None:
                provider = modules.LoggerProvider(resource=resource)
                provider.add_log_record_processor(modules.BatchLogRecordProcessor(exporter))
                logging.getLogger().addHandler(modules.LoggingHandler(logger_provider=provider))
                self._providers.append(provider)

    # -- traces --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def delivery(
        self, component: str, subject: str, size: int, headers: MutableMapping[str, str]
    ) -> Iterator[Span]:
        started = time.perf_counter()
        span = Span()
        outcome = ["failed"]
        try:
            if self._tracer is None:
                yield span
            else:
                with self._tracer.start_as_current_span(
                    "deliver",
                    kind=self._m.SpanKind.PRODUCER,
                    attributes=_attributes("deliver", subject, size, {"websocket.component": component}),
                ) as current:
                    span = _Recorded(current, outcome)
                    self._m.inject(headers)
                    yield span
        finally:
            if self._meter is not None:
                self._durations["process"].record(
                    time.perf_counter() - started,
                    {"messaging.system": SYSTEM, "websocket.outcome": outcome[0]},
                )

    @contextlib.contextmanager
    def served(self, operation: str, headers: Mapping[str, str], subject: str, size: int) -> Iterator[Span]:
        started = time.perf_counter()
        outcome = ["failed"]
        try:
            if self._tracer is None:
                yield _Recorded(None, outcome)
            else:
                parent = self._m.extract({k.lower(): v for k, v in headers.items()})
                with self._tracer.start_as_current_span(
                    operation,
                    context=parent,
                    kind=self._m.SpanKind.SERVER,
                    attributes=_attributes(
                        operation, subject, size, {"websocket.component": headers.get("source-id", "")}
                    ),
                ) as current:
                    yield _Recorded(current, outcome)
        finally:
            self.record(operation, time.perf_counter() - started, outcome[0])

    def record(self, operation: str, seconds: float, outcome: str) -> None:
        if self._meter is not None:
            self._durations["operation"].record(
                seconds,
                {
                    "messaging.system": SYSTEM,
                    "messaging.operation.name": operation,
                    "websocket.outcome": outcome,
                },
            )

    # -- metrics -------------------------------------------------------------------------------

    def observe(self, measurements: Measurements) -> None:
        self._measurements = measurements

    def _instruments(self) -> None:
        assert self._meter is not None
        for key, (name, unit, description) in GAUGES.items():
            self._meter.create_observable_up_down_counter(
                name, callbacks=[self._callback(key)], unit=unit, description=description
            )
        for key, (name, unit, description) in COUNTERS.items():
            self._meter.create_observable_counter(
                name, callbacks=[self._callback(key)], unit=unit, description=description
            )

    def _callback(self, key: str) -> Callable[[Any], list[Any]]:
        Observation = self._m.Observation

        def observe(options: Any) -> list[Any]:
            if self._measurements is None:
                return []
            value = self._measurements().get(key)
            base = {"messaging.system": SYSTEM}
            if isinstance(value, Mapping):
                return [Observation(n, {**base, ATTRIBUTE[key]: str(k)}) for k, n in value.items()]
            return [] if value is None else [Observation(value, base)]

        return observe

    def shutdown(self) -> None:
        for provider in self._providers:
            try:
                provider.shutdown()
            except Exception as exc:  # an exporter that cannot reach its endpoint at the end
                log.debug("telemetry shutdown: %s", exc)


class _Recorded(Span):
    """A span that also remembers its outcome for the duration histograms."""

    __slots__ = ("_outcome",)

    def __init__(self, span: Any, outcome: list[str]) -> None:
        super().__init__(span)
        self._outcome = outcome

    def outcome(self, outcome: str, error: str | None = None) -> None:
        self._outcome[0] = outcome
        super().outcome(outcome, error)


def _attributes(operation: str, subject: str, size: int, extra: Mapping[str, str]) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.name": operation,
        "messaging.destination.name": subject,
        "messaging.message.body.size": size,
    }
    token = subject.split(".")
    if subject.startswith(("ws.session.", "ws.close.")) and len(token) >= 4:
        attributes["websocket.session.id"] = ".".join(token[2:4])
    elif subject.startswith("ws.conn.") and len(token) >= 4:
        attributes["websocket.connection.id"] = ".".join(token[2:4])
    attributes.update({k: v for k, v in extra.items() if v})
    return attributes


def _sampler(settings: Observability, m: Any) -> Any:
    ratio = settings.sampler_arg if settings.sampler_arg is not None else 1.0
    return {
        "always_on": lambda: m.ALWAYS_ON,
        "always_off": lambda: m.ALWAYS_OFF,
        "traceidratio": lambda: m.TraceIdRatioBased(ratio),
        "parentbased_always_on": lambda: m.ParentBased(m.ALWAYS_ON),
        "parentbased_always_off": lambda: m.ParentBased(m.ALWAYS_OFF),
        "parentbased_traceidratio": lambda: m.ParentBased(m.TraceIdRatioBased(ratio)),
    }[settings.sampler]()


def _ca_bundle(paths: tuple[str, ...]) -> str | None:
    """One file with every CA of ``additional_ca_paths`` (an exporter takes one), or ``None``."""
    if not paths:
        return None
    pems = []
    for path in paths:
        try:
            with open(path) as handle:
                pems.append(handle.read())
        except OSError as exc:
            log.warning("otel_config additional_ca_paths: %s: %s", path, exc.strerror or exc)
    if not pems:
        return None
    bundle = tempfile.NamedTemporaryFile("w", prefix="otel-ca-", suffix=".pem", delete=False)  # noqa: SIM115 - kept for the exporters' life
    with bundle:
        bundle.write("\n".join(pems))
    return bundle.name


def _exporter(signal: str, settings: Observability, m: Any) -> Any:
    endpoint = settings.endpoints[signal]
    certificate = _ca_bundle(settings.ca_paths)
    if settings.protocol is Protocol.GRPC:
        try:
            module = __import__(f"opentelemetry.exporter.otlp.proto.grpc.{_GRPC[signal]}", fromlist=["x"])
        except ImportError:
            log.error(
                "otel_config asks for OTLP over gRPC, but opentelemetry-exporter-otlp-proto-grpc is not "
                "installed: %s are not exported (set protocol Http, or install that package)",
                signal,
            )
            return None
        return getattr(module, _EXPORTER[signal])(endpoint=endpoint, insecure=endpoint.startswith("http://"))
    module = __import__(f"opentelemetry.exporter.otlp.proto.http.{_HTTP[signal]}", fromlist=["x"])
    return getattr(module, _EXPORTER[signal])(endpoint=endpoint, certificate_file=certificate or None)


_HTTP = {"traces": "trace_exporter", "metrics": "metric_exporter", "logs": "_log_exporter"}
_GRPC = {"traces": "trace_exporter", "metrics": "metric_exporter", "logs": "_log_exporter"}
_EXPORTER = {"traces": "OTLPSpanExporter", "metrics": "OTLPMetricExporter", "logs": "OTLPLogExporter"}


class _Modules:
    """The OpenTelemetry names used here, imported once, when telemetry starts."""

    def __init__(self) -> None:
        from opentelemetry.metrics import Observation
        from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
        from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import (
            ALWAYS_OFF,
            ALWAYS_ON,
            ParentBased,
            TraceIdRatioBased,
        )
        from opentelemetry.trace import SpanKind
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        # W3C trace context, built here rather than found through entry points (which a frozen
        # provider archive may not carry): traceparent and tracestate, as wasmCloud hosts send them.
        propagator = TraceContextTextMapPropagator()
        self.Observation = Observation
        self.extract = propagator.extract
        self.inject = propagator.inject
        self.LoggerProvider = LoggerProvider
        self.LoggingHandler = LoggingHandler
        self.BatchLogRecordProcessor = BatchLogRecordProcessor
        self.MeterProvider = MeterProvider
        self.PeriodicExportingMetricReader = PeriodicExportingMetricReader
        self.Resource = Resource
        self.TracerProvider = TracerProvider
        self.BatchSpanProcessor = BatchSpanProcessor
        self.ALWAYS_OFF = ALWAYS_OFF
        self.ALWAYS_ON = ALWAYS_ON
        self.ParentBased = ParentBased
        self.TraceIdRatioBased = TraceIdRatioBased
        self.SpanKind = SpanKind


def start(settings: Observability, service: str, instance: str) -> Telemetry:
    """The telemetry ``settings`` ask for: :data:`OFF` when nothing is on, or when OpenTelemetry is
    not installed (said once, at error level)."""
    if not settings.enabled:
        return OFF
    try:
        modules = _Modules()
    except ImportError as exc:
        log.error(
            "otel_config switches telemetry on, but OpenTelemetry is not installed (%s): nothing is "
            "exported; install the provider with its [otel] extra",
            exc,
        )
        return OFF
    resource = modules.Resource({"service.name": service, "service.instance.id": instance})  # no detectors
    telemetry = OpenTelemetry(settings, resource, modules)
    logs.with_trace_fields(trace_fields)  # from now on a log line inside a span names its trace
    log.info(
        "telemetry on: traces %s, metrics %s, logs %s over %s (%s)",
        "on" if settings.spans else "off",
        "on" if settings.metrics else "off",
        "on" if settings.logs else "off",
        settings.protocol.value,
        ", ".join(
            f"{s} → {settings.endpoints[s]}" for s in ("traces", "metrics", "logs") if getattr(settings, s)
        ),
    )
    return telemetry
