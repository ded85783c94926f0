"""Prometheus tooling for the dashboard tests: found on PATH, or a clear skip outside CI
(inside CI, where .ci/run installs Debian's prometheus and alertmanager, a skip is a failure)."""

import os
import re
import shutil
from pathlib import Path

import pytest

DASHBOARDS = Path(__file__).resolve().parents[2] / "dashboards"
METRIC = re.compile(r"(?<![:\w])(classguard_[a-z_]+)\b(?!:)")  # not parts of recording-rule names


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail(f"{tool} is missing in CI: .ci/run must install it (apt-get install prometheus prometheus-alertmanager)")
    pytest.skip(f"{tool} not installed (apt-get install prometheus prometheus-alertmanager)")


def concrete(expr: str) -> str:
    """A dashboard expression with Grafana's variables filled in, as Prometheus would get it."""
    return (expr.replace("$__rate_interval", "1m").replace("$model", "classguard-baseline")
            .replace("$subgroup", "capture=phone"))
