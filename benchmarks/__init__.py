"""Benchmarks: each prints its figures and keeps them as JSON under artifacts/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping


def save_flat(out: Path, results: Mapping[str, Any]) -> None:
    """Write `results` to `out` as JSON and print them one `name value` line each."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    width = max(len(k) for k in results) + 2
    for k, v in results.items():
        print(f"{k:<{width}} {v}")
