"""On-demand Evidently drift report: the latest traffic against the model's validation data.

Evidently costs seconds to import and tens of milliseconds per metric, so it is imported here
only, when a report is asked for, and the caller runs it off the event loop. Every drift
metric names its method: Evidently otherwise picks p-value tests or distances by sample size.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from monitors.events import COLUMN

SHARE_METHOD, CLASS_METHOD, CONFIDENCE_METHOD = "jensenshannon", "jensenshannon", "wasserstein"
MIN_EVENTS = 30


class NotEnoughData(ValueError):
    pass


def frames(reference: dict[str, np.ndarray], recent: np.ndarray, model: int, labels: Sequence[str],
           subgroups: Sequence[str]) -> tuple[Any, Any, list[str]]:
    """Reference and current frames with one column pair per subgroup present in both."""
    import pandas as pd

    rows = recent[recent[:, COLUMN["model"]] == model]
    if len(rows) < MIN_EVENTS:
        raise NotEnoughData(f"only {len(rows)} events of this model in the window; at least {MIN_EVENTS} needed")
    ref = pd.DataFrame({"subgroup": reference["subgroup"].astype(str),
                        "predicted_class": [labels[int(i)] for i in reference["predicted"]],
                        "confidence": reference["confidence"].astype(float)})
    cur = pd.DataFrame({"subgroup": [subgroups[int(i)] for i in rows[:, COLUMN["subgroup"]]],
                        "predicted_class": [labels[int(i)] for i in rows[:, COLUMN["predicted"]]],
                        "confidence": rows[:, COLUMN["confidence"]]})
    present = [k for k in subgroups if (ref.subgroup == k).sum() >= 2 and (cur.subgroup == k).sum() >= 2]
    for df in (ref, cur):
        for key in present:
            inside = df.subgroup == key
            df[f"confidence[{key}]"] = df.confidence.where(inside)
            df[f"predicted_class[{key}]"] = df.predicted_class.where(inside)
    return ref, cur, present


def run(ref: Any, cur: Any, present: Sequence[str]) -> Any:
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift

    metrics = [ValueDrift(column="subgroup", method=SHARE_METHOD),
               ValueDrift(column="predicted_class", method=CLASS_METHOD),
               ValueDrift(column="confidence", method=CONFIDENCE_METHOD)]
    for key in present:
        metrics += [ValueDrift(column=f"predicted_class[{key}]", method=CLASS_METHOD),
                    ValueDrift(column=f"confidence[{key}]", method=CONFIDENCE_METHOD)]
    categorical = ["subgroup", "predicted_class", *[f"predicted_class[{k}]" for k in present]]
    numerical = ["confidence", *[f"confidence[{k}]" for k in present]]
    definition = DataDefinition(categorical_columns=categorical, numerical_columns=numerical)
    return Report(metrics).run(current_data=Dataset.from_pandas(cur, data_definition=definition),
                               reference_data=Dataset.from_pandas(ref, data_definition=definition))


def summary(snapshot: Any, model: str, window_seconds: float, n_current: int, n_reference: int) -> dict[str, Any]:
    """The report as JSON: one entry per drift metric with its column, method, value, threshold."""
    out = []
    for m in snapshot.dict()["metrics"]:
        config = m["config"]
        out.append({"column": config["column"], "method": config["method"], "value": m["value"],
                    "threshold": config.get("threshold"),
                    "drift": bool(m["value"] is not None and config.get("threshold") is not None
                                  and m["value"] >= config["threshold"])})
    return {"model": model, "window_seconds": window_seconds, "current_events": n_current,
            "reference_events": n_reference, "metrics": out}


def build(reference: dict[str, np.ndarray], recent: np.ndarray, model_index: int, model: str,
          labels: Sequence[str], subgroups: Sequence[str], window_seconds: float, fmt: str) -> tuple[bytes, str]:
    ref, cur, present = frames(reference, recent, model_index, labels, subgroups)
    snapshot = run(ref, cur, present)
    if fmt == "html":
        return snapshot.get_html_str(as_iframe=False).encode(), "text/html; charset=utf-8"
    import json

    return json.dumps(summary(snapshot, model, window_seconds, len(cur), len(ref))).encode(), "application/json"
