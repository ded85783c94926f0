"""Training is reproducible, and the stored models carry a complete reference profile."""

import json

import numpy as np
import torch

from training.digits import build_incident
from training.fit import train_classifier
from training.net import DigitCNN


def _weights(seed):
    data = build_incident().baseline_train
    model = train_classifier(DigitCNN, data, epochs=2, seed=seed)
    return [p.detach().clone() for p in model.parameters()]


def test_same_seed_gives_identical_weights():
    """Two trainings with the same seed end with bit-identical weights; another seed differs."""
    a, b, c = _weights(1), _weights(1), _weights(2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_incident_shape_is_reproduced(training_report):
    """The baseline fails phone and serves scanner well; the retrained model serves both."""
    base, fixed = (training_report["models"][m]["test"] for m in ("baseline", "retrained"))
    assert base["scanner"]["accuracy"] > 0.95 and base["phone"]["accuracy"] < 0.65
    assert fixed["scanner"]["accuracy"] > 0.95 and fixed["phone"]["accuracy"] > 0.9
    assert all(m["train_seconds"] < 300 for m in training_report["models"].values())  # a sanity bound, not a benchmark


def test_stored_profile_has_every_part(model_home):
    """Each stored model's metadata holds labels, input spec, training shares, per-subgroup
    class distribution, confidence histogram, confusion matrix, accuracy and a temperature."""
    from tests.conftest import run_module

    for name, phone_share in (("classguard-baseline", 0.03), ("classguard-retrained", 0.5)):
        done = run_module("ops.cli", "profile", f"{name}:latest", env={"BENTOML_HOME": str(model_home)})
        assert done.returncode == 0, done.stderr
        profile = json.loads(done.stdout)
        assert profile["labels"] == [str(d) for d in range(10)]
        assert profile["input_spec"]["height"] == 8 and profile["input_spec"]["channels"] == 1
        assert abs(profile["training_subgroup_shares"]["capture=phone"] - phone_share) < 0.005
        assert set(profile["subgroups"]) == {"all", "capture=phone", "capture=scanner"}
        for ref in profile["subgroups"].values():
            assert len(ref["predicted_class_distribution"]) == 10
            assert np.isclose(sum(ref["predicted_class_distribution"]), 1.0)
            assert np.isclose(sum(ref["confidence_histogram"]), 1.0)
            matrix = np.array(ref["confusion_matrix"])
            assert matrix.shape == (10, 10) and matrix.sum() == ref["count"]
            assert np.isclose(np.trace(matrix) / matrix.sum(), ref["accuracy"])
        assert 0.05 < profile["temperature"] < 20


def test_label_free_estimate_is_within_five_points(model_home, tmp_path):
    """Mean calibrated confidence estimates realized accuracy within 0.05 for both models and
    both captures, on the test split and on the demo's seeded stream."""
    from tests.conftest import run_module

    out = tmp_path / "estimate.json"
    done = run_module("benchmarks.estimate_accuracy", "--out", str(out), env={"BENTOML_HOME": str(model_home)})
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())
    assert len(rows) == 8 and all(abs(r["error"]) <= 0.05 for r in rows), rows
