"""Replicas of `bentoml serve` that share one PostgreSQL and nothing else, as pods on separate
hosts do: each its own BENTOML_HOME (so its own metrics folder and runtime state), prediction
log path, audit log and monitor state folder; only `CLASSGUARD_FLEET__DATABASE_URL` in common.
The schema is migrated first (`classguard db migrate`), as the owner role (`owner_url`; by
default the replicas' own URL, whose user then owns the tables), as a deployment does.

    with Fleet(3, database_url, env={...}) as fleet:
        fleet.urls               # one per replica, for a round-robin client
        fleet.kill(1)            # SIGKILL, as a node failure would

A replica on a host whose clock is wrong: `per_replica=[{}, clock_offset_env(400, folder)]`.
"""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness.server import Server, descendants, kill_all


# imported by every Python process of a replica that has its folder on PYTHONPATH (the server,
# its workers): the whole process sees a clock `CLASSGUARD_TEST_CLOCK_OFFSET_SECONDS` off
SITECUSTOMIZE = """import os, time
_offset = float(os.environ.get("CLASSGUARD_TEST_CLOCK_OFFSET_SECONDS", "0"))
_time, _time_ns = time.time, time.time_ns
time.time = lambda: _time() + _offset
time.time_ns = lambda: _time_ns() + int(_offset * 1e9)
"""


def clock_offset_env(seconds: float, folder: Path) -> dict[str, str]:
    """Environment for a replica whose host clock runs `seconds` ahead (negative: behind)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "CLASSGUARD_TEST_CLOCK_OFFSET_SECONDS": str(seconds)}


def new_database(server_url: str, name: str) -> str:
    """Create the empty database `name` on the PostgreSQL server of `server_url`; its URL."""
    import psycopg

    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server_url.rsplit("/", 1)[0] + f"/{name}"


class Fleet:
    def __init__(self, replicas: int, database_url: str, *, env: dict[str, str] | None = None,
                 per_replica: list[dict[str, str]] | None = None, log_dir: Path | None = None,
                 startup_timeout: float = 120.0, owner_url: str | None = None) -> None:
        self.owner_url = owner_url or database_url
        self.servers = []
        for i in range(replicas):
            replica_env = {**(env or {}), "CLASSGUARD_FLEET__DATABASE_URL": database_url,
                           "CLASSGUARD_FLEET__REPLICA": f"replica-{i}", **((per_replica or [{}] * replicas)[i])}
            log_path = Path(log_dir) / f"replica-{i}.log" if log_dir else None
            self.servers.append(Server(env=replica_env, log_path=log_path, startup_timeout=startup_timeout))

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    def __enter__(self) -> "Fleet":
        from store.database import PostgresDatabase

        PostgresDatabase(self.owner_url, replica="migrate").migrate()
        # replicas start side by side, as a rollout starts pods
        with ThreadPoolExecutor(len(self.servers)) as pool:
            started = [pool.submit(s.__enter__) for s in self.servers]
        errors = [f.exception() for f in started if f.exception() is not None]
        if errors:
            self.__exit__()
            raise errors[0]
        return self

    def kill(self, i: int) -> None:
        """SIGKILL replica i: its server and every worker (each in a session of its own, out of
        reach of the process group), as a node failure would; no shutdown hook runs."""
        process = self.servers[i].process
        family = descendants(process.pid)
        os.killpg(process.pid, signal.SIGKILL)
        kill_all(family)
        process.wait()

    def __exit__(self, *exc: object) -> None:
        with ThreadPoolExecutor(len(self.servers)) as pool:
            list(pool.map(lambda s: s.stop() if s.process is not None else None, self.servers))
