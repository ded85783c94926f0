"""The polling helper the tests wait with: it returns as soon as the condition holds, and fails
(rather than passing silently) when it never does."""

import itertools
import time

import pytest

from tests.waiting import wait_until


def test_returns_the_first_truthy_value_without_waiting_out_the_timeout():
    """A condition true on the third call: its value comes back after two intervals, not the timeout."""
    calls = itertools.count(1)
    started = time.monotonic()
    assert wait_until(lambda: next(calls) >= 3 and "ready", timeout=10, interval=0.01) == "ready"
    assert time.monotonic() - started < 1.0


def test_a_condition_that_never_holds_fails_after_the_timeout_with_the_last_value():
    """Never true: an AssertionError after the timeout (the condition checked once at its end),
    naming what was awaited and the last value."""
    seen = []
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"waited 0.2 s for rows written; last value: 0"):
        wait_until(lambda: seen.append(time.monotonic()) or 0, timeout=0.2, interval=0.05,
                   message=lambda: "rows written")
    assert seen[-1] - started >= 0.2 and time.monotonic() - started < 1.0


def test_together_releases_the_threads_at_once_and_keeps_what_they_raise():
    """Four threads all pass the barrier before any finishes (each sees all four started);
    one that raises is reported, not lost."""
    import threading

    from tests.waiting import together

    started, lock = [], threading.Lock()

    def work():
        with lock:
            started.append(1)
            if len(started) == 4:
                raise ValueError("fourth")
        return len(started)

    results, errors = together(4, work)
    assert len(results) == 3 and [type(e) for e in errors] == [ValueError]
