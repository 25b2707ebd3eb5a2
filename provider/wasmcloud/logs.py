"""Logging as HostData asks for it: stderr, at ``log_level``, JSON lines when ``structured_logging``. I/O.

stderr is inherited from the host, so provider logs show in the host's output. Two filters
sit on the one handler, so they hold for every record, the libraries' included:

* :class:`RedactHandshakes` and :class:`Redactor`: no credential reaches the log at any
  level. websockets' debug logging prints request lines and headers: their values and
  queries are masked; in every other line ``Authorization:``/``Cookie:`` values and
  ``?token=`` parameters are, and so is every secret value the provider was given (:func:`redact`).
* :class:`RateLimiter`: a message that repeats (one template, any arguments) is written at
  most ``burst`` times per ``interval``; the next one written says how many were held back.
  A flood of bad frames, refused handshakes or ``accept()`` errors cannot flood the log.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable
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

REDACTED = "<redacted>"
MIN_SECRET_LENGTH = 4
"""Secret values shorter than this are not searched for (they would mask ordinary words)."""

_CREDENTIALS = re.compile(
    r"(?i)(?P<head>(?:authorization|proxy-authorization|cookie|set-cookie)\s*[:=]\s*)[^\r\n]+"
    r"|(?P<query>[?&](?:token|access_token|auth|password)=)[^&\s'\"]*"
)


class Redactor(logging.Filter):
    """Masks credentials in every record: header values, token query parameters, known secrets."""

    def __init__(self) -> None:
        super().__init__()
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def add(self, *values: str) -> None:
        with self._lock:
            self._secrets.update(v for v in values if len(v) >= MIN_SECRET_LENGTH)

    def scrub(self, text: str) -> str:
        text = _CREDENTIALS.sub(
            lambda m: (m.group("head") or m.group("query")) + REDACTED,
            text,
        )
        with self._lock:
            secrets = sorted(self._secrets, key=len, reverse=True)
        for value in secrets:
            if value in text:
                text = text.replace(value, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        scrubbed = self.scrub(message)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        if record.exc_info and not record.exc_text:
            record.exc_text = self.scrub(logging.Formatter().formatException(record.exc_info))
        return True


class RateLimiter(logging.Filter):
    """At most ``burst`` records of one message template per ``interval`` seconds."""

    MAX_KEYS = 4096

    def __init__(self, burst: int = 20, interval: float = 10.0) -> None:
        super().__init__()
        self.burst = burst
        self.interval = interval
        self._windows: dict[tuple[str, int, str], list[float | int]] = {}  # key → [start, written, held]
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg))
        now = time.monotonic()
        with self._lock:
            window = self._windows.get(key)
            if window is None:
                if len(self._windows) >= self.MAX_KEYS:
                    self._windows.clear()
                window = self._windows[key] = [now, 0, 0]
            held = 0
            if now - window[0] >= self.interval:
                held = int(window[2])
                window[:] = [now, 0, 0]
            if window[1] >= self.burst:
                window[2] += 1
                return False
            window[1] += 1
        if held:
            record.msg, record.args = f"{record.getMessage()} ({held} more like this held back)", None
        return True


_redactor = Redactor()


def redact(*values: str) -> None:
    """Never write these values (secrets, tokens, seeds) to the log, whoever logs them."""
    _redactor.add(*values)


class TraceFields(logging.Filter):
    """Puts the current span's ``trace_id`` / ``span_id`` on each record (telemetry on only)."""

    def __init__(self, fields: Callable[[], dict[str, str]]) -> None:
        super().__init__()
        self._fields = fields

    def filter(self, record: logging.LogRecord) -> bool:
        ids = self._fields()
        record.trace = f" [trace_id={ids['trace_id']} span_id={ids['span_id']}]" if ids else ""
        record.__dict__.update(ids)
        return True


def with_trace_fields(fields: Callable[[], dict[str, str]]) -> None:
    """From now on every record written inside a span carries its trace and span ids."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(TraceFields(fields))
        if not isinstance(handler.formatter, JsonFormatter):
            handler.setFormatter(logging.Formatter(TEXT_FORMAT + "%(trace)s"))


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp, level, target (logger), message, the trace and span ids
    inside a span (telemetry on), and the exception if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="microseconds"),
            "level": record.levelname,
            "target": record.name,
            "message": record.getMessage(),
        }
        for key in ("trace_id", "span_id"):
            if key in record.__dict__:
                entry[key] = record.__dict__[key]
        if record.exc_info:
            entry["exception"] = record.exc_text or self.formatException(record.exc_info)
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
    """Send every log record at ``level`` or above to ``stream`` (stderr), redacted and rate-limited."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if structured:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    handler.addFilter(RateLimiter())  # first: it keys on the template, before anything is formatted
    handler.addFilter(RedactHandshakes())
    handler.addFilter(_redactor)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LEVELS.get(level.lower(), logging.INFO))
    # Library chatter stays at warning unless we trace.
    if root.level > TRACE:
        for noisy in ("nats", "websockets", "asyncio"):
            logging.getLogger(noisy).setLevel(max(root.level, logging.WARNING))
