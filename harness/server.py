"""Start and stop a real `bentoml serve` subprocess on loopback."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterable, Iterator

REPO = Path(__file__).resolve().parent.parent


def descendants(pid: int) -> list[int]:
    """Every process below `pid`. BentoML starts each worker in a session of its own, so a
    signal to the server's process group does not reach them: a server killed with SIGKILL
    left its workers running (serving, flushing) as orphans."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def signal_tree(pid: int, sig: int) -> None:
    """`sig` to `pid` and every process below it, one by one: BentoML's workers run in sessions
    of their own, so the server's process group alone would not reach them."""
    for p in [pid, *descendants(pid)]:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


@contextlib.contextmanager
def paused(servers: Iterable["Server"]) -> Iterator[None]:
    """Every process of `servers` stopped (SIGSTOP) for the block, resumed after, also when it
    fails: a benchmark measuring one server leaves the others' background work out of it."""
    servers = list(servers)
    for s in servers:
        signal_tree(s.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for s in servers:
            signal_tree(s.process.pid, signal.SIGCONT)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`with Server(env={...}) as server:` serves until the block ends; `server.url`.

    Each server gets a BENTOML_HOME of its own whose `models` links to the model store of the
    BENTOML_HOME it was given: `bentoml serve` wipes its home's metrics directory at start,
    which would silently reset the metrics of another server sharing that home."""

    def __init__(self, target: str = ".", *, env: dict[str, str] | None = None, port: int | None = None,
                 startup_timeout: float = 90.0, log_path: Path | None = None, own_files: bool = True) -> None:
        self.target = target
        self.own_files = own_files
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", **(env or {})}
        self.startup_timeout = startup_timeout
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "Server":
        store = Path(self.env.get("BENTOML_HOME", Path.home() / "bentoml")) / "models"
        self._home = tempfile.TemporaryDirectory(prefix="classguard-serve-")
        self.home = Path(self._home.name)
        (self.home / "models").symlink_to(store.resolve(), target_is_directory=True)
        self.env["BENTOML_HOME"] = str(self.home)
        # its own prediction log and audit log too, unless the caller names them (or `own_files`
        # is off: the configuration's paths, as a user's `bentoml serve` would have them)
        if self.own_files:
            self.env.setdefault("CLASSGUARD_LOG__PATH", str(self.home / "predictions.sqlite"))
            self.env.setdefault("CLASSGUARD_GUARDRAILS__AUDIT_LOG", str(self.home / "guardrail-audit.jsonl"))
        bentoml = str(Path(sys.executable).with_name("bentoml"))
        self._log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [bentoml, "serve", self.target, "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=REPO, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"bentoml serve exited with {self.process.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"bentoml serve not ready after {self.startup_timeout}s; see {self.log_path}")

    def stop(self, grace: float = 20.0) -> float | None:
        """SIGTERM, then SIGKILL after `grace` seconds (a pod's termination grace period).
        Seconds the server took to exit after SIGTERM; None if it had to be killed or was not running."""
        took = None
        if self.process and self.process.poll() is None:
            family = descendants(self.process.pid)
            os.killpg(self.process.pid, signal.SIGTERM)
            started = time.monotonic()
            try:
                self.process.wait(timeout=grace)
                took = time.monotonic() - started
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            kill_all(family)  # workers that outlived their server (a failed start-up leaves them)
        if self.log_path and self._log is not subprocess.DEVNULL and not self._log.closed:
            self._log.close()
        self._home.cleanup()
        return took

    def __exit__(self, *exc: object) -> None:
        self.stop()
