"""Counting what is dropped, and reporting it without flooding the log. Pure.

Every message or call the provider drops is counted by reason; a flood of them must not
become a flood of log lines. :class:`DropLog` says, for each drop, whether to report it now:
the first ``burst`` of a reason in an ``interval`` are reported at once, the rest of that
interval only counted, and the next report says how many there were since the last one.
The caller passes the time, so this holds no clock.
"""

from __future__ import annotations

DEFAULT_INTERVAL = 10.0
"""Seconds of one reporting window."""
DEFAULT_BURST = 5
"""Reports of one reason per window."""


class DropLog:
    """Counts drops by reason and rate-limits their reports."""

    __slots__ = ("_unreported", "_windows", "burst", "counts", "interval")

    def __init__(self, interval: float = DEFAULT_INTERVAL, burst: int = DEFAULT_BURST) -> None:
        self.interval = interval
        self.burst = burst
        self.counts: dict[str, int] = {}
        """Drops so far, by reason (for health and tests)."""
        self._windows: dict[str, tuple[float, int]] = {}  # reason -> (window start, reports in it)
        self._unreported: dict[str, int] = {}

    @property
    def total(self) -> int:
        """Every drop so far."""
        return sum(self.counts.values())

    def drop(self, reason: str, now: float) -> int:
        """Count one drop for ``reason`` at time ``now`` (seconds, any monotonic clock).

        Returns how many drops of that reason to report now, this one included (``0``: stay
        quiet, it is counted and will be in the next report). ``reason`` should come from a
        fixed set — it is a key that lives as long as this object.
        """
        self.counts[reason] = self.counts.get(reason, 0) + 1
        unreported = self._unreported.get(reason, 0) + 1
        start, reports = self._windows.get(reason, (now, 0))
        if now - start >= self.interval or now < start:
            start, reports = now, 0
        if reports >= self.burst:
            self._windows[reason] = (start, reports)
            self._unreported[reason] = unreported
            return 0
        self._windows[reason] = (start, reports + 1)
        self._unreported[reason] = 0
        return unreported
