"""The throughput benchmark's ratios: only services that ran are compared, round by round; the
services not being measured are paused, and run again after."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from benchmarks.throughput import RATIOS, alone, median_of, ratios_at


def test_ratios_compare_only_services_that_ran_and_keep_each_round():
    """With (c), (c') and (d) run, the regions' and the noise's ratios come out (medians, per
    round, CPU added); ratios needing (a), (b) or (e) are absent rather than invented."""
    c, again, d = RATIOS["c_over_c2"][0], RATIOS["c_over_c2"][1], RATIOS["c_over_d"][1]
    runs = {c: {"8": [{"requests_per_s": 100.0, "cpu_us_per_request": 2000.0},
                      {"requests_per_s": 90.0, "cpu_us_per_request": 2100.0}]},
            again: {"8": [{"requests_per_s": 100.0, "cpu_us_per_request": 2000.0},
                          {"requests_per_s": 100.0, "cpu_us_per_request": 2000.0}]},
            d: {"8": [{"requests_per_s": 125.0, "cpu_us_per_request": 1800.0},
                      {"requests_per_s": 75.0, "cpu_us_per_request": 1800.0}]}}
    results = {name: {"8": median_of(per["8"])} for name, per in runs.items()}
    got = ratios_at(runs, results, "8")
    assert set(got) == {"c_over_d", "c_over_d_per_round", "c_over_d_cpu_us",
                        "c_over_c2", "c_over_c2_per_round", "c_over_c2_cpu_us"}
    assert got["c_over_d_per_round"] == [0.8, 1.2]
    assert got["c_over_d"] == 0.95 and got["c_over_c2"] == 0.95
    assert got["c_over_d_cpu_us"] == 250.0


# a server as BentoML starts one: a process whose worker runs in a session of its own
SERVER = ("import subprocess, sys, time; "
          "w = subprocess.Popen(['sleep', '30'], start_new_session=True); print(w.pid, flush=True); time.sleep(30)")


def start_server() -> SimpleNamespace:
    process = subprocess.Popen([sys.executable, "-c", SERVER], start_new_session=True, stdout=subprocess.PIPE, text=True)
    worker = int(process.stdout.readline())
    return SimpleNamespace(process=process, worker=worker)


def states(pids: list[int], want: list[str]) -> list[str]:
    """The processes' states (T stopped, S sleeping), read until they are `want` or 5 s passed:
    a signal is delivered a moment after it is sent."""
    deadline = time.monotonic() + 5
    while True:
        got = [Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] for p in pids]
        if got == want or time.monotonic() > deadline:
            return got
        time.sleep(0.01)


def test_alone_pauses_every_process_of_every_other_service_and_resumes_them():
    """While one service is measured every process of the others is stopped (state T), their
    workers in sessions of their own too; the measured one's are not; after, all run again, also
    when the measurement fails."""
    servers = {n: start_server() for n in "abc"}
    pids = [pid for s in servers.values() for pid in (s.process.pid, s.worker)]
    running, b_alone = ["S"] * 6, ["T", "T", "S", "S", "T", "T"]
    try:
        assert states(pids, running) == running
        with alone(servers, "b", pause=True):
            assert states(pids, b_alone) == b_alone
        assert states(pids, running) == running
        try:
            with alone(servers, "a", pause=True):
                raise RuntimeError("wrk failed")
        except RuntimeError:
            pass
        assert states(pids, running) == running
        with alone(servers, "a", pause=False):
            time.sleep(0.1)  # a stop, had one been sent, would show by now
            assert states(pids, running) == running
    finally:
        for s in servers.values():
            for pid in (s.process.pid, s.worker):
                os.kill(pid, signal.SIGKILL)
            s.process.wait()
