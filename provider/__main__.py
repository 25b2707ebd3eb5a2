"""``python -m provider``: the process a wasmCloud host starts (protocol spec §1). I/O.

The only place that reads stdin, installs signal handlers and runs the event loop.
Exit codes: 0 after a shutdown request (or SIGTERM/SIGINT), 2 for unusable HostData,
1 when the lattice cannot be reached or the provider fails.

``python -m provider bridge --nats URL [KEY=VALUE ...]`` runs the wasmCloud 2.x bridge
instead (:mod:`provider.bridge`; no HostData): exit code 0 after SIGTERM/SIGINT, 2 for bad
arguments or settings, 1 when NATS cannot be reached or the bridge fails.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import signal
import sys
from pathlib import Path
from typing import Any

from provider import process
from provider.bridge.bridge import Bridge
from provider.bridge.config import USAGE, BridgeSettings, HelpRequested, parse_command_line
from provider.errors import ConfigError, ProviderError
from provider.wasmcloud import logs, telemetry
from provider.wasmcloud.hostdata import HostData, decode_host_data
from provider.wasmcloud.observability import parse_observability
from provider.wasmcloud.runtime import ProviderRuntime
from provider.websocket.provider import WebSocketProvider

STDIN_TIMEOUT = 5.0
"""Seconds to wait for HostData, as the Go SDK does."""

log = logging.getLogger("provider")
loop_log = logging.getLogger("provider.loop")
loop_log.addFilter(logs.RateLimiter(burst=1, interval=10.0))  # accept() failing per connection: once per 10 s


def _on_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """asyncio's errors (accept() out of file descriptors…), rate-limited rather than one per event."""
    loop_log.error("event loop: %s", context.get("message", "error"), exc_info=context.get("exception"))


def read_host_data(timeout: float = STDIN_TIMEOUT) -> HostData:
    """Read and parse the HostData line the host writes. Raises :class:`ConfigError`."""
    ready, _, _ = select.select([sys.stdin], [], [], timeout)
    if not ready:
        raise ConfigError(f"HostData: nothing on stdin within {timeout:g}s (the host writes one base64 line)")
    return decode_host_data(sys.stdin.buffer.readline())


async def serve(host_data: HostData) -> None:
    """Run the provider until shutdown; SIGTERM and SIGINT stop it the same way."""
    instruments = start_telemetry(host_data)
    runtime = ProviderRuntime(host_data, WebSocketProvider(), instruments)
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_on_loop_error)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, runtime.stop)
    try:
        await runtime.run()
    finally:
        instruments.shutdown()


def start_telemetry(host_data: HostData) -> telemetry.Telemetry:
    """What HostData's ``otel_config`` and the ``OTEL_*`` variables switch on (nothing by default);
    a bad ``otel_config`` is logged and leaves telemetry off, the provider runs."""
    try:
        settings = parse_observability(host_data.otel_config, os.environ)
    except ConfigError as exc:
        log.error("%s; telemetry stays off", exc)
        return telemetry.OFF
    return telemetry.start(settings, host_data.provider_key, host_data.instance_id)


def _read_text(path: str) -> str:
    return Path(path).read_text()


async def serve_bridge(settings: BridgeSettings) -> None:
    """Run the bridge until SIGTERM or SIGINT (both close every session with 1001)."""
    bridge = Bridge(settings)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, bridge.stop)
    await bridge.run()


def bridge_main(argv: list[str]) -> None:
    """``python -m provider bridge …`` (also ``wasmcloud-ws-provider bridge …``)."""
    try:
        settings = parse_command_line(argv, os.environ, _read_text)
        loop = process.event_loop(os.environ)
    except HelpRequested:
        print(USAGE, end="")
        return
    except ConfigError as exc:
        print(f"wasmcloud-ws-provider bridge: {exc}", file=sys.stderr)
        sys.exit(2)
    logs.configure(settings.log_level, structured=settings.json_logs)
    process.prepare(loop[0])
    try:
        process.run(serve_bridge(settings), loop)
    except ConfigError as exc:  # a setting the NATS server cannot honour (seen once connected)
        log.error("%s", exc)
        logging.shutdown()
        sys.exit(2)
    except ProviderError as exc:
        log.error("%s", exc)
        logging.shutdown()
        sys.exit(1)
    logging.shutdown()


def main() -> None:
    if sys.argv[1:2] == ["bridge"]:
        bridge_main(sys.argv[2:])
        return
    try:
        host_data = read_host_data()
        loop = process.event_loop(os.environ)
    except ConfigError as exc:
        print(f"wasmcloud-ws-provider: {exc}", file=sys.stderr)
        sys.exit(2)
    logs.configure(host_data.log_level, structured=host_data.structured_logging)
    process.prepare(loop[0])
    try:
        process.run(serve(host_data), loop)
    except ProviderError as exc:
        log.error("%s", exc)
        sys.exit(1)
    log.info("provider %s stopped", host_data.provider_key)
    logging.shutdown()


if __name__ == "__main__":
    main()
