"""wRPC 0.0.1 subjects and message framing over NATS (protocol spec §3). Pure.

Names follow the spec: ``Rc`` is the caller's reply inbox (handshake on ``Rc``,
results on ``Rc.results``), ``Rs`` the callee's (params on ``Rs.params``).
"""

from __future__ import annotations

from collections.abc import Iterator

PROTOCOL = "wrpc.0.0.1"
PARAMS = "params"
RESULTS = "results"


def prefix(lattice: str, target_id: str) -> str:
    """The invocation prefix and serving queue group of a provider or component: ``LATTICE.ID``."""
    return f"{lattice}.{target_id}"


def invocation_subject(target_prefix: str, instance: str, func: str) -> str:
    """``<prefix>.wrpc.0.0.1.<instance>.<func>``; world-level functions have no instance."""
    parts = [target_prefix, PROTOCOL] if target_prefix else [PROTOCOL]
    if instance:
        parts.append(instance)
    parts.append(func)
    return ".".join(parts)


def params_subject(rs: str) -> str:
    """Where the caller streams the rest of the params: ``Rs.params``."""
    return f"{rs}.{PARAMS}"


def results_subject(rc: str) -> str:
    """Where the callee streams its results: ``Rc.results``."""
    return f"{rc}.{RESULTS}"


def chunks(data: bytes | memoryview, size: int) -> Iterator[bytes | memoryview]:
    """Split ``data`` into pieces of at most ``size`` bytes (nothing for empty data)."""
    if size <= 0:
        raise ValueError(f"chunk size must be positive, got {size}")
    view = memoryview(data)
    for start in range(0, len(view), size):
        yield view[start : start + size]
