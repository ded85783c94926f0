"""With two worker processes every prediction is still counted exactly once on /metrics."""

import pytest

from harness import promtext
from harness.server import Server
from harness.traffic import holdout_samples, run, stream

pytestmark = pytest.mark.integration


def test_two_workers_count_every_prediction(model_home, tmp_path):
    """300 requests spread over 2 workers give predictions_total == 300 and one model_info per model."""
    samples = stream(holdout_samples(), 300, phone_share=0.5, seed=3)
    with Server(env={"BENTOML_HOME": str(model_home), "CLASSGUARD_WORKERS": "2"}, log_path=tmp_path / "serve.log") as server:
        results, _ = run(server.url, samples, concurrency=16)
        metrics = promtext.scrape(server.url)
    assert all(status == 200 for _, status, _ in results)
    assert promtext.total(metrics, "classguard_predictions_total") == 300
    phone = sum(1 for s in samples if s.capture == "phone")
    assert promtext.total(metrics, "classguard_predictions_total", subgroup="capture=phone") == phone
    info = [labels for name, labels in metrics if name == "classguard_model_info"]
    assert len(info) == 2  # livemax: one series per model, not one per worker
