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


_HEADER_LINES = ("> %s: %s", "< %s: %s")
"""How websockets (17.x) logs a handshake header: name, value."""
_REQUEST_LINES = {"> GET %s HTTP/1.1": 0, "< %s %s %s": 1}
"""How it logs a request line (client, server), and which argument is the path."""


class RedactHandshakes(logging.Filter):
    """websockets logs every handshake header and the request line at debug (turned on here
    only at ``trace``). A header value or the query may be a credential (``Authorization``,
    ``?token=``, a ``HEADER_*`` value from a secret): keep the names and the path, never the values."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("websockets") or not isinstance(record.msg, str):
            return True
        if not isinstance(record.args, tuple):
            return True
        args = list(record.args)
        if record.msg in _HEADER_LINES and len(args) == 2:
            args[1] = "<redacted>"
        elif record.msg in _REQUEST_LINES and _REQUEST_LINES[record.msg] < len(args):
            index = _REQUEST_LINES[record.msg]
            path, question_mark, _ = str(args[index]).partition("?")
            args[index] = f"{path}?<redacted>" if question_mark else path
        record.args = tuple(args)
        return True


def configure(level: str, *, structured: bool, stream: TextIO | None = None) -> None:
    """Send every log record at ``level`` or above to ``stream`` (stderr)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RedactHandshakes())
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
