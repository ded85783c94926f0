"""A short soak in the suite (the full 100,000-request one is `make soak`): no failures, memory
flat after warm-up, every answer counted once on /metrics, windows and the log within bounds."""

import pytest

from benchmarks.soak import soak

pytestmark = pytest.mark.integration


def test_short_soak_holds_every_bound(model_home):
    """8,000 requests at concurrency 32 (after 2,000 of warm-up)."""
    r = soak(8000, env={"BENTOML_HOME": str(model_home)}, max_seconds=240)
    assert r["failed"] == 0 and r["requests"] == 8000
    assert r["predictions_counted"] == r["answered_including_warmup"] == 10000
    assert r["rss_growth"] < 0.10, r
    assert r["monitor_window_events"] <= 10000 and r["log_rows"] <= r["log_max_rows"]
