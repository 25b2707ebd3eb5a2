"""Logging as HostData asks for it: stderr, at ``log_level``, JSON lines when ``structured_logging``.

stderr is inherited from the host, so provider logs show in the host's output.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import TextIO

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

LEVELS = {
    "trace": TRACE,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp, level, target (logger), message, and the exception if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="microseconds"),
            "level": record.levelname,
            "target": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str, *, structured: bool, stream: TextIO | None = None) -> None:
    """Send every log record at ``level`` or above to ``stream`` (stderr)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if structured:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LEVELS.get(level.lower(), logging.INFO))
    # Library chatter stays at warning unless we trace.
    if root.level > TRACE:
        for noisy in ("nats", "websockets", "asyncio"):
            logging.getLogger(noisy).setLevel(max(root.level, logging.WARNING))
