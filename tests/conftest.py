"""Shared fixtures: a model store with both incident models, trained once per test session,
and a live `bentoml serve` of it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_module(module: str, *args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def model_home(tmp_path_factory) -> Path:
    """A fresh BENTOML_HOME holding classguard-baseline and classguard-retrained."""
    home = tmp_path_factory.mktemp("bentoml-home")
    report = home / "training_report.json"
    done = run_module("training.train", "--report", str(report), env={"BENTOML_HOME": str(home)})
    assert done.returncode == 0, done.stderr
    return home


@pytest.fixture(scope="session")
def training_report(model_home) -> dict:
    return json.loads((model_home / "training_report.json").read_text())


@pytest.fixture(scope="session")
def server(model_home, tmp_path_factory):
    """One live `bentoml serve` (1 worker) of the default configuration."""
    from harness.server import Server

    log = tmp_path_factory.mktemp("logs") / "serve.log"
    with Server(env={"BENTOML_HOME": str(model_home)}, log_path=log) as live:
        yield live
