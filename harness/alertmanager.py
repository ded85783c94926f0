"""A real Alertmanager (Debian's `prometheus-alertmanager`) on loopback, with classguard's
shipped route configuration (dashboards/alertmanager/alertmanager.yml) pointed at a live
service: its automation receiver posts to the service's POST /admin/alerts with the given
token, the other receivers to nowhere that answers. For tests and the demo."""

from __future__ import annotations

import datetime
import json
import shutil
import subprocess
import tempfile
import urllib.request
from pathlib import Path

import yaml

from harness.daemons import terminate, wait_ready
from harness.server import REPO, free_port

SHIPPED = REPO / "dashboards" / "alertmanager" / "alertmanager.yml"
BINARY = "prometheus-alertmanager"


def available() -> bool:
    return shutil.which(BINARY) is not None


class Alertmanager:
    """`with Alertmanager(service_url, token) as am:`; `am.url` is what Prometheus sends to.
    Several service URLs (a fleet's replicas): every notification is posted to each of them,
    the most a replica may be sent.

    `wait` (seconds) replaces the automation route's group_wait and group_interval: the shipped
    10 s and 1 m are for production, where a test or demo would wait a minute between steps."""

    def __init__(self, service_url: str | list[str], token: str, *, wait: str = "1s", repeat: str = "1h") -> None:
        self.service_urls = [service_url] if isinstance(service_url, str) else list(service_url)
        self.token, self.wait, self.repeat = token, wait, repeat
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def config(self, root: Path) -> dict:
        config = yaml.safe_load(SHIPPED.read_text())
        (root / "token").write_text(self.token)
        for receiver in config["receivers"]:
            if receiver["name"] == "classguard-automation":
                [hook] = receiver["webhook_configs"]
                hook["http_config"]["authorization"]["credentials_file"] = str(root / "token")
                receiver["webhook_configs"] = [{**hook, "url": f"{url}/admin/alerts"} for url in self.service_urls]
                continue
            for hook in receiver.get("webhook_configs", []):
                hook["url"] = f"http://127.0.0.1:{free_port()}/"  # nobody answers: those pages go nowhere
        for route in config["route"]["routes"]:
            if route["receiver"] == "classguard-automation":
                route.update(group_wait=self.wait, group_interval=self.wait, repeat_interval=self.repeat)
        return config

    def __enter__(self) -> "Alertmanager":
        self._dir = tempfile.TemporaryDirectory(prefix="classguard-alertmanager-")
        root = Path(self._dir.name)
        (root / "alertmanager.yml").write_text(json.dumps(self.config(root)))  # JSON is YAML
        self._log = open(root / "alertmanager.log", "wb")
        self.process = subprocess.Popen(
            [BINARY, f"--config.file={root / 'alertmanager.yml'}", f"--storage.path={root / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address="],  # no gossip port
            stdout=self._log, stderr=subprocess.STDOUT)
        try:
            wait_ready(self.url, "alertmanager")
        except TimeoutError:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        terminate(self.process)
        self._log.close()
        self._dir.cleanup()

    def post(self, labels: dict[str, str], starts_at: datetime.datetime, *, resolved: bool = False) -> None:
        """Send Alertmanager an alert as Prometheus does (API v2), firing since `starts_at`, or
        resolved now (the same labels and start: the same alert)."""
        now = datetime.datetime.now(datetime.timezone.utc)
        ends = now if resolved else now + datetime.timedelta(minutes=5)
        body = json.dumps([{"labels": labels, "annotations": {}, "generatorURL": "http://127.0.0.1/",
                            "startsAt": starts_at.isoformat(), "endsAt": ends.isoformat()}]).encode()
        request = urllib.request.Request(f"{self.url}/api/v2/alerts", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as r:
            r.read()
