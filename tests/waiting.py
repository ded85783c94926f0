"""Waiting for something to happen in a test: poll it with a deadline instead of sleeping a
fixed time, so a fast machine does not wait and a slow one does not fail for want of time."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.1,
               message: str | Callable[[], str] | None = None) -> T:
    """Call `predicate` every `interval` seconds until it returns something truthy, and return
    that; after `timeout` seconds, one last call, then an AssertionError naming what was awaited
    (`message`, or a callable giving it at that moment) and what the last call returned."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:  # the call just made was at or after the deadline
            break
        time.sleep(min(interval, remaining))
    what = (message() if callable(message) else message) or getattr(predicate, "__name__", "condition")
    raise AssertionError(f"waited {timeout:g} s for {what}; last value: {result!r}")


def together(n: int, work: Callable[[], T]) -> tuple[list[T], list[BaseException]]:
    """Run `work` on `n` threads released at the same moment; (what each returned, what each
    raised), for tests of concurrent writers."""
    import threading

    results: list[T] = []
    errors: list[BaseException] = []
    start = threading.Barrier(n)

    def run() -> None:
        start.wait()
        try:
            results.append(work())
        except BaseException as exc:  # noqa: BLE001 - the caller asserts on it
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors
