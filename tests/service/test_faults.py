"""Faults: the log's database locked, and SIGTERM during load. Predictions keep being answered
(or end cleanly), failures are counted, and nothing answered is lost."""

import asyncio
import os
import signal
import threading
import time

import numpy as np
import pytest
from prometheus_client import REGISTRY

from harness.server import Server
from harness.traffic import holdout_samples, stream
from service.config import LogConfig
from service.prediction_log import PredictionLog, connect


def test_locked_database_is_counted_and_the_next_flush_recovers(tmp_path):
    """While another connection holds an exclusive lock, record() still returns at once and the
    flush counts a write failure; once the lock is gone, later rows are written."""
    path = tmp_path / "p.sqlite"
    log = PredictionLog(LogConfig(path=path, busy_timeout_seconds=0.1))
    blocker = connect(path)
    blocker.execute("BEGIN EXCLUSIVE")
    before = REGISTRY.get_sample_value("classguard_log_errors_total", {"stage": "write"}) or 0.0
    row = {"request_id": "a", "label": "1", "confidence": 0.9, "abstained": False, "flags": [], "guardrails": [],
           "top_k": []}
    started = time.perf_counter()
    log.record(row, np.zeros(10), "h", "m:v", "capture=phone")
    assert time.perf_counter() - started < 0.05
    assert log.flush() == 1
    assert REGISTRY.get_sample_value("classguard_log_errors_total", {"stage": "write"}) == before + 1
    blocker.rollback()
    log.record({**row, "request_id": "b"}, np.zeros(10), "h", "m:v", "capture=phone")
    log.flush()
    assert connect(path).execute("SELECT request_id FROM predictions").fetchall() == [("b",)]


@pytest.mark.integration
def test_sigterm_during_load_finishes_in_flight_requests_and_loses_nothing(model_home, tmp_path):
    """SIGTERM while 32 clients send: no 5xx, and every request answered 200 is in the log."""
    import aiohttp

    db = tmp_path / "p.sqlite"
    samples = stream(holdout_samples(), 3000, phone_share=0.3, seed=1)
    outcomes = []

    async def client(url):
        queue = list(samples)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
            async def worker():
                while queue:
                    s = queue.pop()
                    form = aiohttp.FormData()
                    form.add_field("image", s.png, filename="d.png")
                    try:
                        async with session.post(f"{url}/classify", data=form) as r:
                            outcomes.append((r.status, (await r.json(content_type=None)).get("request_id")))
                    except (aiohttp.ClientError, asyncio.TimeoutError):
                        outcomes.append(("closed", None))
            await asyncio.gather(*(worker() for _ in range(32)))

    env = {"BENTOML_HOME": str(model_home), "CLASSGUARD_LOG__PATH": str(db)}
    with Server(env=env, log_path=tmp_path / "serve.log") as server:
        load = threading.Thread(target=lambda: asyncio.run(client(server.url)))
        load.start()
        time.sleep(1.5)
        os.killpg(server.process.pid, signal.SIGTERM)
        server.process.wait(timeout=30)
        load.join(timeout=60)
    answered = [rid for status, rid in outcomes if status == 200]
    assert answered and not [s for s, _ in outcomes if isinstance(s, int) and s >= 500]
    logged = {r for (r,) in connect(db).execute("SELECT request_id FROM predictions")}
    missing = set(answered) - logged
    assert not missing, f"{len(missing)} of {len(answered)} answered requests are not in the log"
