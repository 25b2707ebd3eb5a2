"""What HostData's ``otel_config`` and the host's ``OTEL_*`` variables ask for (spec §1.3). Pure.

``otel_config`` (keys optional): ``enable_observability`` and the per-signal switches
``enable_traces`` / ``enable_metrics`` / ``enable_logs`` (each falls back to the first),
``observability_endpoint`` and per-signal ``traces_endpoint`` / ``metrics_endpoint`` /
``logs_endpoint``, ``protocol`` (``Http`` or ``Grpc``, any case), ``additional_ca_paths``,
``trace_level``, ``traces_sampler``, ``traces_sampler_arg``, ``max_batch_queue_size``,
``concurrent_exports``.

Endpoints, as the wasmCloud provider SDK resolves them: a signal's own endpoint wins; else
the general one, with ``/v1/traces|metrics|logs`` appended for HTTP when its path is empty or
``/`` (for gRPC the path is dropped); else ``http://127.0.0.1:4318/v1/<signal>`` for HTTP and
``http://127.0.0.1:4317`` for gRPC. HostData's values win; the standard variables
(``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_<SIGNAL>_ENDPOINT``,
``OTEL_EXPORTER_OTLP_PROTOCOL``, ``OTEL_TRACES_SAMPLER``, ``OTEL_TRACES_SAMPLER_ARG``) fill
what HostData leaves out. Nothing is exported unless a signal is switched on.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from provider.errors import ConfigError

SIGNALS = ("traces", "metrics", "logs")
LEVELS = ("trace", "debug", "info", "warn", "error")
SAMPLERS = {
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
}


class Protocol(enum.Enum):
    HTTP = "http"
    GRPC = "grpc"


@dataclass(frozen=True)
class Observability:
    """The telemetry to export; all off by default."""

    traces: bool = False
    metrics: bool = False
    logs: bool = False
    protocol: Protocol = Protocol.HTTP
    endpoints: Mapping[str, str] = field(default_factory=dict)
    """Signal → the URL its exporter posts to."""
    ca_paths: tuple[str, ...] = ()
    sampler: str = "parentbased_always_on"
    sampler_arg: float | None = None
    max_queue_size: int = 2048
    trace_level: str = "info"

    @property
    def enabled(self) -> bool:
        return self.traces or self.metrics or self.logs

    @property
    def spans(self) -> bool:
        """Whether spans are recorded: traces on, and ``trace_level`` lets info-level spans through."""
        return self.traces and LEVELS.index(self.trace_level) <= LEVELS.index("info")


def _flag(raw: Mapping[str, Any], key: str, default: bool) -> bool:
    value = raw.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigError(f"otel_config: {key!r} must be true or false, got {value!r}")
    return value


def _text(raw: Mapping[str, Any], key: str) -> str | None:
    value = raw.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(f"otel_config: {key!r} must be a string, got {type(value).__name__}")
    return value


def endpoint_for(signal: str, protocol: Protocol, own: str | None, general: str | None) -> str:
    """The URL ``signal``'s exporter uses (see the module docstring)."""
    if own:
        return own
    if general:
        parts = urlsplit(general)
        if protocol is Protocol.GRPC:
            return urlunsplit((parts.scheme, parts.netloc, "", "", ""))
        if parts.path in ("", "/"):
            return urlunsplit((parts.scheme, parts.netloc, f"/v1/{signal}", "", ""))
        return general
    if protocol is Protocol.GRPC:
        return "http://127.0.0.1:4317"
    return f"http://127.0.0.1:4318/v1/{signal}"


def parse_observability(otel_config: Mapping[str, Any], environ: Mapping[str, str]) -> Observability:
    """The telemetry HostData and the environment ask for. Raises :class:`ConfigError` naming a bad key."""
    raw = dict(otel_config)
    every = _flag(raw, "enable_observability", False)
    switches = {signal: _flag(raw, f"enable_{signal}", every) for signal in SIGNALS}
    protocol_text = (
        _text(raw, "protocol") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "") or "http"
    ).lower()
    protocol_text = {"http/protobuf": "http", "http/json": "http"}.get(protocol_text, protocol_text)
    try:
        protocol = Protocol(protocol_text)
    except ValueError:
        raise ConfigError(f"otel_config: protocol must be Http or Grpc, got {protocol_text!r}") from None
    general = _text(raw, "observability_endpoint") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None
    endpoints = {
        signal: endpoint_for(
            signal,
            protocol,
            _text(raw, f"{signal}_endpoint")
            or environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
            or None,
            general,
        )
        for signal in SIGNALS
    }
    ca_paths = raw.get("additional_ca_paths") or []
    if not isinstance(ca_paths, list) or not all(isinstance(p, str) for p in ca_paths):
        raise ConfigError("otel_config: 'additional_ca_paths' must be a list of file paths")
    level = (_text(raw, "trace_level") or "info").lower()
    if level not in LEVELS:
        raise ConfigError(f"otel_config: trace_level must be one of {', '.join(LEVELS)}, got {level!r}")
    sampler = (
        _text(raw, "traces_sampler") or environ.get("OTEL_TRACES_SAMPLER") or "parentbased_always_on"
    ).lower()
    if sampler not in SAMPLERS:
        raise ConfigError(
            f"otel_config: traces_sampler must be one of {', '.join(sorted(SAMPLERS))}, got {sampler!r}"
        )
    sampler_arg_raw = raw.get("traces_sampler_arg")
    if sampler_arg_raw is None:
        sampler_arg_raw = environ.get("OTEL_TRACES_SAMPLER_ARG") or None
    try:
        sampler_arg = float(sampler_arg_raw) if sampler_arg_raw is not None else None
    except (TypeError, ValueError):
        raise ConfigError(
            f"otel_config: traces_sampler_arg must be a number, got {sampler_arg_raw!r}"
        ) from None
    queue = raw.get("max_batch_queue_size", 2048)
    if not isinstance(queue, int) or isinstance(queue, bool) or queue < 1:
        raise ConfigError(f"otel_config: max_batch_queue_size must be a positive whole number, got {queue!r}")
    return Observability(
        traces=switches["traces"],
        metrics=switches["metrics"],
        logs=switches["logs"],
        protocol=protocol,
        endpoints=endpoints,
        ca_paths=tuple(ca_paths),
        sampler=sampler,
        sampler_arg=sampler_arg,
        max_queue_size=queue,
        trace_level=level,
    )
