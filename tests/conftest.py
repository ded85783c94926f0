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


def run_module(module: str, *args: str, env: dict[str, str], timeout: float = 300,
               cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def model_home(tmp_path_factory) -> Path:
    """A fresh BENTOML_HOME holding classguard-baseline and classguard-retrained."""
    home = tmp_path_factory.mktemp("bentoml-home")
    report = home / "training_report.json"
    # the demo's third model (classguard-sensor) is left out: no test serves it, and it would add
    # a third of the training time to every run
    done = run_module("training.train", "--report", str(report), "--models", "baseline,retrained",
                      env={"BENTOML_HOME": str(home)})
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


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL server for the session (harness.postgres); outside CI, a clear skip
    when its binaries or psycopg are missing; inside CI (where .ci/run installs them), a failure."""
    from harness.postgres import Postgres, server_bindir

    missing = None
    if server_bindir() is None:
        missing = "PostgreSQL server binaries are not installed (apt-get install postgresql)"
    else:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            missing = "psycopg is not installed (pip install -e '.[dev]')"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing}: CI must have it (.ci/run installs it)")
        pytest.skip(missing)
    with Postgres.start() as pg:
        yield pg


@pytest.fixture
def pg_url(postgres):
    """A fresh, empty database on the session's server, for one test."""
    import uuid

    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield postgres.url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path):
    """One store of each engine, for tests that must hold on both: a SQLite file, and a fresh
    PostgreSQL database migrated as `classguard db migrate` does before a fleet starts."""
    from store.database import PostgresDatabase, SqliteDatabase

    if request.param == "sqlite":
        return SqliteDatabase(tmp_path / "p.sqlite")
    database = PostgresDatabase(request.getfixturevalue("pg_url"), replica="r1")
    database.migrate()
    return database
