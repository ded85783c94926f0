"""One answer into a prediction log, through the batch call the service makes."""

from __future__ import annotations

from typing import Any

import numpy as np


def record_one(log, response: dict[str, Any], probs: np.ndarray, config_hash: str, model: str, subgroup: str,
               region: str | None = None) -> None:
    """Queue one answered prediction; `model` is name:version, `region` the primary's region."""
    log.record_many([response], [probs], config_hash, [model], [subgroup], None, [region])
