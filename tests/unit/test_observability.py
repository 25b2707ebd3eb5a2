"""HostData's otel_config and the OTEL_* variables: which signals, where, how (spec §1.3)."""

from __future__ import annotations

import pytest

from provider.errors import ConfigError
from provider.wasmcloud.observability import (
    Protocol,
    endpoint_for,
    parse_observability,
)


def test_off_by_default() -> None:
    settings = parse_observability({}, {})
    assert not settings.enabled
    assert not settings.spans
    host_default = {
        "enable_observability": False,
        "protocol": "Http",
        "additional_ca_paths": [],
        "trace_level": "info",
    }
    assert not parse_observability(host_default, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"}).enabled


def test_signals_fall_back_to_enable_observability() -> None:
    settings = parse_observability({"enable_observability": True, "enable_logs": False}, {})
    assert (settings.traces, settings.metrics, settings.logs) == (True, True, False)
    only_metrics = parse_observability({"enable_metrics": True}, {})
    assert (only_metrics.traces, only_metrics.metrics, only_metrics.logs) == (False, True, False)


@pytest.mark.parametrize(
    ("signal", "protocol", "own", "general", "expected"),
    [
        ("traces", Protocol.HTTP, "http://t:1/x", "http://g:2", "http://t:1/x"),
        ("traces", Protocol.HTTP, None, "http://g:2", "http://g:2/v1/traces"),
        ("metrics", Protocol.HTTP, None, "http://g:2/", "http://g:2/v1/metrics"),
        ("logs", Protocol.HTTP, None, "http://g:2/custom", "http://g:2/custom"),
        ("traces", Protocol.GRPC, None, "http://g:4317/ignored", "http://g:4317"),
        ("traces", Protocol.HTTP, None, None, "http://127.0.0.1:4318/v1/traces"),
        ("logs", Protocol.GRPC, None, None, "http://127.0.0.1:4317"),
    ],
)
def test_endpoints_resolve_as_the_sdk_resolves_them(
    signal: str, protocol: Protocol, own: str | None, general: str | None, expected: str
) -> None:
    assert endpoint_for(signal, protocol, own, general) == expected


def test_host_data_wins_over_the_environment_which_fills_the_rest() -> None:
    environ = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4318",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://env-metrics:1/m",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_TRACES_SAMPLER": "traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.25",
    }
    settings = parse_observability(
        {"enable_observability": True, "traces_endpoint": "http://hd:1/t", "protocol": "HTTP"}, environ
    )
    assert settings.endpoints == {
        "traces": "http://hd:1/t",
        "metrics": "http://env-metrics:1/m",
        "logs": "http://env:4318/v1/logs",
    }
    assert (settings.sampler, settings.sampler_arg) == ("traceidratio", 0.25)
    assert parse_observability({"protocol": "Grpc"}, environ).protocol is Protocol.GRPC


def test_trace_level_above_info_records_no_spans() -> None:
    assert parse_observability({"enable_traces": True, "trace_level": "debug"}, {}).spans
    assert not parse_observability({"enable_traces": True, "trace_level": "warn"}, {}).spans


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"enable_observability": "yes"}, "'enable_observability' must be true or false"),
        ({"protocol": "Carrier-Pigeon"}, "protocol must be Http or Grpc"),
        ({"observability_endpoint": 5}, "'observability_endpoint' must be a string"),
        ({"additional_ca_paths": "/ca.pem"}, "must be a list of file paths"),
        ({"trace_level": "loud"}, "trace_level must be one of"),
        ({"traces_sampler": "sometimes"}, "traces_sampler must be one of"),
        ({"traces_sampler_arg": "half"}, "traces_sampler_arg must be a number"),
        ({"max_batch_queue_size": 0}, "max_batch_queue_size must be a positive"),
    ],
)
def test_bad_otel_config_names_the_key(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_observability(raw, {})
