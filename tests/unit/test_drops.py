"""DropLog: every drop counted, reports rate-limited per reason (no clock: times are inputs)."""

from __future__ import annotations

from provider.wrpc.drops import DropLog


def test_a_flood_is_counted_in_full_but_reported_a_few_times_per_interval() -> None:
    """10,000 drops in one second: all counted, `burst` reports; the next window says how many were quiet."""
    drops = DropLog(interval=10.0, burst=3)
    reports = [drops.drop("bad", i / 10_000) for i in range(10_000)]
    assert drops.counts == {"bad": 10_000}
    assert [r for r in reports if r] == [1, 1, 1]
    assert drops.drop("bad", 10.5) == 10_000 - 3 + 1
    assert drops.total == 10_001


def test_reasons_are_limited_separately() -> None:
    """A flood of one reason does not silence another."""
    drops = DropLog(interval=10.0, burst=1)
    assert drops.drop("a", 0.0) == 1
    assert drops.drop("a", 0.1) == 0
    assert drops.drop("b", 0.2) == 1
    assert drops.counts == {"a": 2, "b": 1}


def test_a_clock_that_goes_back_starts_a_new_window() -> None:
    """Times are the caller's: one that jumps back does not silence reports for good."""
    drops = DropLog(interval=10.0, burst=1)
    assert drops.drop("a", 100.0) == 1
    assert drops.drop("a", 50.0) == 1
