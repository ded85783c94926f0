"""The decode pool is sized from the CPUs the process may use, and what its threads hold at once
is bounded by the worker's byte budget, whatever the thread count."""

import os
import threading
import time

import pytest

from runtime.prepare import DecodeBudget, usable_cpus


@pytest.fixture
def one_cpu():
    """This thread pinned to one CPU for the test (what a container's cpuset looks like)."""
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})
    yield
    os.sched_setaffinity(0, allowed)


@pytest.mark.parametrize("cpu_max, expected", [
    ("max 100000\n", len(os.sched_getaffinity(0))),       # no quota: affinity alone
    ("100000 100000\n", 1),                               # one CPU's worth
    ("50000 100000\n", 1),                                # half a CPU still gets a thread
    ("150000 100000\n", min(2, len(os.sched_getaffinity(0)))),  # 1.5 CPUs: two threads, never above affinity
    ("not a cgroup file", len(os.sched_getaffinity(0))),
])
def test_usable_cpus_reads_the_cgroup_quota(tmp_path, cpu_max, expected):
    """A cgroup v2 `cpu.max` quota caps the pool (rounded up), never above the affinity."""
    path = tmp_path / "cpu.max"
    path.write_text(cpu_max)
    assert usable_cpus(path) == expected


def test_usable_cpus_follows_affinity_not_the_node(tmp_path, one_cpu):
    """Pinned to one CPU with a quota of 64 (or no cgroup file at all): one thread, whatever
    `os.cpu_count()` says about the node."""
    (tmp_path / "cpu.max").write_text("6400000 100000\n")
    assert usable_cpus(tmp_path / "cpu.max") == 1
    assert usable_cpus(tmp_path / "absent") == 1


def test_the_budget_never_holds_more_than_its_capacity():
    """Twelve threads holding 30-70 bytes of a 100-byte budget: never more than 100 held at once,
    every hold admitted."""
    budget, peak, done = DecodeBudget(100), [0], []
    lock = threading.Lock()

    def hold(size: int) -> None:
        with budget.hold(size):
            with lock:
                peak[0] = max(peak[0], budget.held)
            time.sleep(0.01)
        done.append(size)

    threads = [threading.Thread(target=hold, args=(30 + 4 * i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(done) == 12 and 0 < peak[0] <= 100 and budget.held == 0


def test_a_large_hold_is_not_starved_by_small_ones():
    """Holds are admitted in arrival order: a hold of the whole budget that arrives while a small
    one is held goes before the small ones that arrive after it."""
    budget, order = DecodeBudget(100), []
    first = threading.Event()

    def hold(name: str, size: int, seconds: float) -> None:
        with budget.hold(size):
            order.append(name)
            first.set()
            time.sleep(seconds)

    threads = [threading.Thread(target=hold, args=("small-0", 10, 0.2))]
    threads[0].start()
    first.wait(5)
    threads.append(threading.Thread(target=hold, args=("large", 100, 0.01)))
    threads[-1].start()
    time.sleep(0.05)  # the large hold is waiting
    threads += [threading.Thread(target=hold, args=(f"small-{i}", 10, 0.01)) for i in (1, 2)]
    for t in threads[2:]:
        t.start()
        time.sleep(0.01)
    for t in threads:
        t.join(10)
    assert order[:2] == ["small-0", "large"] and sorted(order[2:]) == ["small-1", "small-2"]
