"""A real Prometheus server (Debian's `prometheus`) on loopback, scraping a classguard server (or
each replica of a fleet, as its own target) with classguard's rules, for tests and the demos."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Sequence

from harness.daemons import terminate, wait_ready
from harness.server import REPO, free_port

RULES = REPO / "dashboards" / "prometheus" / "rules"


def available() -> bool:
    return shutil.which("prometheus") is not None


class Prometheus:
    """`with Prometheus(target_url) as prom:` scrapes every second and evaluates the rules every second.

    `Prometheus([url_0, url_1, url_2])` scrapes several (a fleet's replicas) in one job,
    `classguard`, each its own target: its series carry `instance="127.0.0.1:PORT"`.

    `Prometheus([], discovered=True)` finds its targets in a file instead, rewritten by
    `set_targets({url: {"pod": name}})` as pods come and go (what the Operator's Kubernetes
    discovery does in a cluster); Prometheus watches the file and hands changes to its scrapers
    at most every 5 s, as it does with any discovery."""

    def __init__(self, target: str | Sequence[str], *, interval: str = "1s", discovered: bool = False,
                 hold: str | None = None, alertmanager: str | None = None) -> None:
        urls = [target] if isinstance(target, str) else list(target)
        if not urls and not discovered:
            raise ValueError("Prometheus needs at least one target")
        self.targets = [url.removeprefix("http://") for url in urls]
        self.target = self.targets[0] if self.targets else None
        self.discovered = discovered
        self.interval = interval
        self.hold = hold  # every alert's `for:` set to this (e.g. "5s"): the rules' expressions, held shorter
        self.alertmanager = alertmanager  # the URL firing alerts are sent to (harness.alertmanager)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "Prometheus":
        self._dir = tempfile.TemporaryDirectory(prefix="classguard-prometheus-")
        root = Path(self._dir.name)
        self._targets_file = root / "targets.json"
        if self.discovered:
            self.set_targets({f"http://{t}": {} for t in self.targets})
            job = {"job_name": "classguard", "file_sd_configs": [{"files": [str(self._targets_file)]}]}
        else:
            job = {"job_name": "classguard", "static_configs": [{"targets": self.targets}]}
        alerts = RULES / "alerts.yml"
        if self.hold is not None:
            alerts = root / "alerts.yml"
            alerts.write_text(re.sub(r"(?m)^(\s+)for: \S+$", rf"\g<1>for: {self.hold}", (RULES / "alerts.yml").read_text()))
        config = {
            "global": {"scrape_interval": self.interval, "evaluation_interval": self.interval},
            "rule_files": [str(RULES / "recording.yml"), str(alerts)],
            "scrape_configs": [job],
        }
        if self.alertmanager is not None:
            config["alerting"] = {"alertmanagers": [{"static_configs": [
                {"targets": [self.alertmanager.removeprefix("http://")]}]}]}
        (root / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self._log = open(root / "prometheus.log", "wb")
        self.process = subprocess.Popen(
            ["prometheus", f"--config.file={root / 'prometheus.yml'}", f"--storage.tsdb.path={root / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"], stdout=self._log, stderr=subprocess.STDOUT)
        try:
            wait_ready(self.url, "prometheus")
        except TimeoutError:
            self.__exit__()
            raise
        return self

    def set_targets(self, targets: dict[str, dict[str, str]]) -> None:
        """With `discovered=True`: scrape exactly these URLs, each with its own extra labels."""
        self.targets = [url.removeprefix("http://") for url in targets]
        groups = [{"targets": [url.removeprefix("http://")], "labels": labels} for url, labels in targets.items()]
        staged = self._targets_file.with_suffix(".tmp")
        staged.write_text(json.dumps(groups))
        staged.replace(self._targets_file)  # atomic: Prometheus never reads half a file

    def __exit__(self, *exc: object) -> None:
        terminate(self.process)
        self._log.close()
        self._dir.cleanup()

    def get(self, path: str, **params: str) -> dict:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as r:
            body = json.loads(r.read())
        if body.get("status") != "success":
            raise RuntimeError(body)
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.get("query", query=expr)["result"]

    def alerts(self) -> list[dict]:
        """Pending and firing alerts, each with labels, state and value."""
        return self.get("alerts")["alerts"]

    def wait_for_samples(self, metric: str = "classguard_model_info", timeout: float = 20.0) -> None:
        """Until `metric` has been scraped from every target (one series at least per target)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # ...and the rules have seen the target up: before its first scrape, `absent(up)`
            # holds ClassguardTargetDown pending, which is no part of what is being shown
            scraped = {series["metric"].get("instance") for series in self.query(metric)}
            if len(scraped) >= len(self.targets) and not any(
                    a["labels"]["alertname"] == "ClassguardTargetDown" for a in self.alerts()):
                return
            time.sleep(0.5)
        raise TimeoutError(f"no {metric} scraped within {timeout}s")


def watch(target: str, *, alert: str, subgroup: str | None, hold: str | None, timeout: float) -> int:
    """Print each alert's state as it changes until `alert` (on `subgroup`, if given) fires: 0,
    or 1 when it has not fired within `timeout` seconds."""
    seen: dict[tuple[str, str], str] = {}
    with Prometheus(target, hold=hold) as prom:
        prom.wait_for_samples()
        print(f"prometheus on {prom.url} scrapes {target} with classguard's rules" +
              (f" (every alert held {hold})" if hold else ""), flush=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for a in prom.alerts():
                key = (a["labels"]["alertname"], a["labels"].get("subgroup", ""))
                if seen.get(key) != a["state"]:
                    seen[key] = a["state"]
                    where = f"{{subgroup={key[1]!r}}}" if key[1] else ""
                    print(f"{key[0]}{where} {a['state']} value={float(a['value']):.3g}", flush=True)
            if any(name == alert and state == "firing" and subgroup in (None, sub)
                   for (name, sub), state in seen.items()):
                return 0
            time.sleep(1.0)
    print(f"{alert} did not fire within {timeout:.0f} s", flush=True)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.prometheus", description=watch.__doc__)
    parser.add_argument("target", help="the service's URL, e.g. http://127.0.0.1:3000")
    parser.add_argument("--until-firing", dest="alert", default="ClassguardSubgroupOverRepresented")
    parser.add_argument("--subgroup", help="the alert's subgroup label, e.g. camera=phone")
    parser.add_argument("--hold", help="every alert's `for:` (default: the rules' own, minutes)")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    if not available():
        print("prometheus is not installed (Debian: apt-get install prometheus)")
        return 2
    return watch(args.target, alert=args.alert, subgroup=args.subgroup, hold=args.hold, timeout=args.timeout)


if __name__ == "__main__":
    raise SystemExit(main())
