"""OpenTelemetry from the provider process to a real OTLP/HTTP receiver (issue 16).

The receiver is an HTTP server in the test process that decodes what the provider's exporters
post with the official ``opentelemetry-proto`` messages — nothing of the provider's own code
checks the provider here. HostData's ``otel_config`` switches telemetry on, as a host does.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from websockets.asyncio.client import connect

from provider.host.lattice import LocalLattice, consumer_link, handler_link
from provider.host.local import host_otel_config
from provider.host.machine import free_port
from provider.host.native import NativeComponent, echo
from provider.host.nats_server import NatsServer
from provider.host.wadm import linked_component_manifest
from provider.wrpc.codec import Err, Ok
from provider.wrpc.messaging import PUBLISH, BrokerMessage
from provider.wrpc.subjects import prefix
from tests.conftest import MakeLattice
from tests.integration.components import BUILD_TIMEOUT, built, running

PROVIDER = "websocket-provider"
WAIT = 20.0
FAST_EXPORT = {
    "OTEL_BSP_SCHEDULE_DELAY": "200",
    "OTEL_METRIC_EXPORT_INTERVAL": "500",
    "OTEL_BLRP_SCHEDULE_DELAY": "200",
}
"""OTEL_* variables a host passes through: export within a fraction of a second."""


class Receiver:
    """An OTLP/HTTP endpoint: every POST to /v1/traces|metrics|logs, decoded, kept by path."""

    MESSAGES: ClassVar[dict[str, Any]] = {
        "/v1/traces": ExportTraceServiceRequest,
        "/v1/metrics": ExportMetricsServiceRequest,
        "/v1/logs": ExportLogsServiceRequest,
    }

    def __init__(self) -> None:
        self.port = free_port()
        self.received: dict[str, list[Any]] = defaultdict(list)
        self._changed = asyncio.Condition()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                headers = {
                    k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                if headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                message = self.MESSAGES[path]()
                message.ParseFromString(body)
                async with self._changed:
                    self.received[path].append(message)
                    self._changed.notify_all()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n"
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def wait_for(self, found: Callable[[], Any], timeout: float = WAIT) -> Any:
        async with asyncio.timeout(timeout), self._changed:
            while not (result := found()):
                await self._changed.wait()
        return result

    def spans(self) -> list[Any]:
        return [
            span
            for request in self.received["/v1/traces"]
            for resource in request.resource_spans
            for scope in resource.scope_spans
            for span in scope.spans
        ]

    def metrics(self) -> dict[str, Any]:
        """The latest data of every metric name."""
        latest: dict[str, Any] = {}
        for request in self.received["/v1/metrics"]:
            for resource in request.resource_metrics:
                for scope in resource.scope_metrics:
                    for metric in scope.metrics:
                        latest[metric.name] = metric
        return latest

    def logs(self) -> list[Any]:
        return [
            record
            for request in self.received["/v1/logs"]
            for resource in request.resource_logs
            for scope in resource.scope_logs
            for record in scope.log_records
        ]


def points(metric: Any) -> dict[tuple[tuple[str, str], ...], float]:
    """A sum or gauge metric's data points: attributes → value."""
    data = metric.sum if metric.HasField("sum") else metric.gauge
    found = {}
    for point in data.data_points:
        key = tuple(sorted((a.key, a.value.string_value) for a in point.attributes))
        found[key] = point.as_int if point.HasField("as_int") else point.as_double
    return found


def attributes(span: Any) -> dict[str, Any]:
    return {a.key: a.value.string_value or a.value.int_value for a in span.attributes}


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver()
    await server.start()
    yield server
    await server.stop()


async def test_a_websocket_echo_is_one_trace_and_the_metrics_count_it(
    make_lattice: MakeLattice, receiver: Receiver
) -> None:
    """otel_config on: a client's frame gives a delivery span whose context the component receives
    in its traceparent; the component's publish (which carries it on, as a host does) is a child
    span in the same trace; a publish whose wRPC call carries another traceparent is a span of
    that trace; the metrics count what the test sent; logs inside a span carry its trace id."""
    lattice: LocalLattice = await make_lattice(
        otel_config={
            "enable_observability": True,
            "observability_endpoint": f"http://127.0.0.1:{receiver.port}",
            "protocol": "Http",
        },
        environment=FAST_EXPORT,
    )
    component: NativeComponent = await lattice.component("echo", echo)
    port = free_port()
    for link in (
        handler_link(PROVIDER, "echo", MODE="server", URI=f"127.0.0.1:{port}"),
        consumer_link("echo", PROVIDER, MODE="server"),
    ):
        await lattice.put_link(link)
    async with connect(f"ws://127.0.0.1:{port}/ws", compression=None) as ws:
        for i in range(3):
            await ws.send(json.dumps({"subject": "chat.hello", "body": f"hi {i}"}))
            assert json.loads(await asyncio.wait_for(ws.recv(), WAIT))["body"] == f"hi {i}"
    # The component received the delivery span's context.
    traceparent = component.received_headers[-1]["traceparent"]
    _, trace_id, delivery_span_id, _ = traceparent.split("-")

    def echoed() -> tuple[Any, Any] | None:
        spans = {span.span_id.hex(): span for span in receiver.spans()}
        delivery = spans.get(delivery_span_id)
        if delivery is None:
            return None
        children = [
            s for s in spans.values() if s.parent_span_id.hex() == delivery_span_id and s.name == "publish"
        ]
        return (delivery, children[0]) if children else None

    delivery, publish = await receiver.wait_for(echoed)
    assert delivery.name == "deliver"
    assert delivery.trace_id.hex() == trace_id
    assert attributes(delivery)["messaging.destination.name"] == "chat.hello"
    assert attributes(delivery)["websocket.outcome"] == "ok"
    assert publish.trace_id.hex() == trace_id
    assert attributes(publish)["websocket.session.id"]
    print(f"trace {trace_id}: deliver {delivery_span_id} → publish {publish.span_id.hex()}")

    # A publish whose call carries a traceparent of its own (another trace) is a span of that trace.
    outside_trace, outside_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    headers = {
        "source-id": "echo",
        "link-name": "default",
        "traceparent": f"00-{outside_trace}-{outside_span}-01",
    }
    result = await component.transport.invoke(
        prefix("default", PROVIDER),
        PUBLISH,
        BrokerMessage("ws.session.gone.away", b"x", None),
        headers=headers,
    )
    assert isinstance(result, Err)

    def outside() -> Any:
        return next((s for s in receiver.spans() if s.trace_id.hex() == outside_trace), None)

    span = await receiver.wait_for(outside)
    assert span.parent_span_id.hex() == outside_span
    assert attributes(span)["websocket.outcome"] == "err"
    # The provider logged that err inside the span: its line names the trace.
    await lattice.process.wait_for_line(rf"err: .*trace_id={outside_trace}", WAIT)

    def counted() -> dict[str, Any] | None:
        metrics = receiver.metrics()
        consumed = metrics.get("messaging.client.consumed.messages")
        if consumed is None or sum(points(consumed).values()) < 3:
            return None
        return metrics

    metrics = await receiver.wait_for(counted)
    assert sum(points(metrics["messaging.client.consumed.messages"]).values()) == 3
    assert sum(points(metrics["messaging.client.sent.messages"]).values()) == 3
    deliveries = points(metrics["websocket.deliveries"])
    assert deliveries[(("messaging.system", "websocket"), ("websocket.outcome", "ok"))] == 3
    publishes = points(metrics["websocket.publishes"])
    assert publishes[(("messaging.system", "websocket"), ("websocket.outcome", "err"))] == 1
    assert "messaging.process.duration" in metrics
    assert "messaging.client.operation.duration" in metrics
    assert "websocket.sessions" in metrics
    for name in sorted(metrics):
        print(
            f"  {name}: {points(metrics[name]) if not metrics[name].HasField('histogram') else 'histogram'}"
        )


async def test_logs_are_exported_with_enable_logs(make_lattice: MakeLattice, receiver: Receiver) -> None:
    """enable_logs exports the provider's log records; one written inside a span carries its trace id."""
    lattice = await make_lattice(
        otel_config={
            "enable_observability": False,
            "enable_logs": True,
            "enable_traces": True,
            "logs_endpoint": f"http://127.0.0.1:{receiver.port}/v1/logs",
            "traces_endpoint": f"http://127.0.0.1:{receiver.port}/v1/traces",
        },
        environment=FAST_EXPORT,
    )
    component = await lattice.component("echo", echo)
    await lattice.put_link(consumer_link("echo", PROVIDER, MODE="server"))
    trace = "0af7651916cd43dd8448eb211c80319c"
    headers = {"source-id": "echo", "link-name": "default", "traceparent": f"00-{trace}-b7ad6b7169203331-01"}
    result = await component.transport.invoke(
        prefix("default", PROVIDER), PUBLISH, BrokerMessage("nowhere", b"", None), headers=headers
    )
    assert isinstance(result, Err)

    def traced() -> Any:
        return next((r for r in receiver.logs() if r.trace_id.hex() == trace), None)

    record = await receiver.wait_for(traced)
    assert "err" in record.body.string_value
    assert any("put link" in r.body.string_value for r in receiver.logs())
    assert receiver.received["/v1/metrics"] == []  # metrics were not switched on


async def test_telemetry_is_off_by_default(make_lattice: MakeLattice, receiver: Receiver) -> None:
    """Without otel_config nothing is exported, and the component's calls carry no traceparent."""
    lattice = await make_lattice(
        environment={**FAST_EXPORT, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}"}
    )
    component = await lattice.component("echo", echo)
    port = free_port()
    await lattice.put_link(handler_link(PROVIDER, "echo", MODE="server", URI=f"127.0.0.1:{port}"))
    await lattice.put_link(consumer_link("echo", PROVIDER, MODE="server"))
    async with connect(f"ws://127.0.0.1:{port}/ws", compression=None) as ws:
        await ws.send(json.dumps({"subject": "x", "body": "y"}))
        await asyncio.wait_for(ws.recv(), WAIT)
    assert "traceparent" not in component.received_headers[-1]
    assert await component.publish(BrokerMessage("nowhere", b"", None)) != Ok(None)
    assert "telemetry on" not in lattice.process.output
    assert dict(receiver.received) == {}


@pytest.mark.timeout(BUILD_TIMEOUT)
async def test_a_wasm_components_publish_is_in_the_deliverys_trace(
    nats_server: NatsServer, launcher: Path, receiver: Receiver
) -> None:
    """The local host run with a wasmCloud host's observability variables: echo.wasm's publish,
    made by the guest while it handles a delivery, is a child span of that delivery (the host
    runs the guest in the served call's context, so its imports carry the trace on)."""
    otel = host_otel_config(
        {
            "WASMCLOUD_OBSERVABILITY_ENABLED": "true",
            "WASMCLOUD_METRICS_ENABLED": "false",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
            "WASMCLOUD_OBSERVABILITY_PROTOCOL": "http",
        }
    )
    port = free_port()
    text = linked_component_manifest(
        "echo",
        built()["echo"],
        handler={"MODE": "server", "URI": f"127.0.0.1:{port}", "FORMAT": "json"},
        consumer={"MODE": "server"},
    )
    async with running(text, nats_server, launcher, otel_config=otel):
        async with connect(f"ws://127.0.0.1:{port}/ws", compression=None) as ws:
            await ws.send(json.dumps({"subject": "echo.hi", "body": "traced"}))
            assert json.loads(await asyncio.wait_for(ws.recv(), WAIT))["body"] == "traced"

        def linked() -> tuple[Any, Any] | None:
            spans = receiver.spans()
            deliveries = {s.span_id: s for s in spans if s.name == "deliver"}
            child = next((s for s in spans if s.name == "publish" and s.parent_span_id in deliveries), None)
            return None if child is None else (deliveries[child.parent_span_id], child)

        delivery, publish = await receiver.wait_for(linked)
    assert publish.trace_id == delivery.trace_id
    assert attributes(delivery)["messaging.destination.name"] == "echo.hi"
    assert receiver.received["/v1/metrics"] == []  # switched off per signal


def test_host_otel_config_reads_a_wasmcloud_hosts_variables() -> None:
    assert host_otel_config({}) == {}
    assert host_otel_config(
        {
            "WASMCLOUD_OBSERVABILITY_ENABLED": " TRUE ",
            "WASMCLOUD_LOGS_ENABLED": "0",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "",
            "WASMCLOUD_TRACE_LEVEL": "debug",
            "UNRELATED": "x",
        }
    ) == {
        "enable_observability": True,
        "enable_logs": False,
        "traces_endpoint": "http://collector:4318/v1/traces",
        "trace_level": "debug",
    }
