"""Start and stop the monitoring stack's servers (Prometheus, Alertmanager) for tests and demos."""

from __future__ import annotations

import subprocess
import time
import urllib.request


def wait_ready(url: str, name: str, timeout: float = 30.0) -> None:
    """Until `url`/-/ready answers 200; a TimeoutError naming `name` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{name} did not become ready in {timeout:.0f} s")


def terminate(process: subprocess.Popen, grace: float = 10.0) -> None:
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
