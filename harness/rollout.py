"""A dry run of a rolling update, from the rendered manifests: `kubectl set image` from a
release whose baseline model is version 1 to one whose baseline is version 2 (the retrained
weights, released under the same model name), played on this machine.

    python -m harness.rollout          # or: make deploy-dry-run (needs postgresql and prometheus)

What is real: the Deployment, ConfigMap and Secret references are read from
deploy/kubernetes/cpu/deployment.yaml and base/config.yaml (harness/kube.py runs each pod from
them: env, Secrets, mounted config, probes, pre-stop pause, grace period); every pod is its own
`bentoml serve` process with its own home, sharing only a real PostgreSQL; a real Prometheus
scrapes the pods it is told about, as the Operator's pod discovery would, with classguard's
rules. The rollout follows the Deployment's strategy (maxSurge 1, maxUnavailable 0): a new pod,
ready by its readiness probe, joins the load balancer; then an old pod leaves it a second into
its pre-stop pause (endpoint propagation is not instant in a cluster either) and gets SIGTERM.
Each image version is a model store of its own.

What is not: no cluster, no image (the checkout stands for it), 2 replicas instead of 3 (this
machine has 2 cores), the load balancer is the client's own round-robin.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets as token_source
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from harness import promtext
from harness.kube import Pod
from harness.server import REPO
from store.database import PostgresDatabase

MANIFESTS = REPO / "deploy" / "kubernetes"
REPLICAS = 2
PACE_S = 0.02  # one request every 20 ms from one client: steady traffic that leaves CPU for pod start-ups


def progress(message: str) -> None:
    print(f"[rollout] {message}", file=sys.stderr, flush=True)


def release_next_version(name: str = "classguard-baseline", weights_of: str = "classguard-retrained:latest") -> str:
    """In the current BENTOML_HOME: a new version of `name` holding the files of `weights_of`
    (the retrained model shipped as the baseline's next version). Prints and returns its tag."""
    import bentoml

    source = bentoml.models.get(weights_of)
    labels = {**source.info.labels, "released_from": str(source.tag).replace(":", "-")}
    with bentoml.models.create(name, metadata=dict(source.info.metadata), labels=labels) as model:
        for path in Path(source.path).iterdir():
            if path.is_file() and path.name != "model.yaml":
                shutil.copyfile(path, model.path_of(path.name))
    print(model.tag)
    return str(model.tag)


def image_stores(model_home: Path, root: Path) -> tuple[Path, Path, str]:
    """Two model stores standing for two image versions: 0.1.0 as trained, 0.2.0 with the next
    baseline version beside it (`classguard-baseline:latest` then names it)."""
    old, new = root / "image-0.1.0", root / "image-0.2.0"
    shutil.copytree(Path(model_home) / "models", old / "models")
    shutil.copytree(old / "models", new / "models")
    done = subprocess.run([sys.executable, "-c", "from harness.rollout import release_next_version as r; r()"],
                          env={**os.environ, "BENTOML_HOME": str(new), "BENTOML_DO_NOT_TRACK": "true"},
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
    return old, new, done.stdout.strip().splitlines()[-1]


@dataclass
class Traffic:
    """A client sending one image at a time, round-robin over the pods the load balancer has."""

    samples: list
    endpoints: dict[str, str] = field(default_factory=dict)  # pod name -> url
    answers: list[tuple[str, int, str, str]] = field(default_factory=list)  # pod, status, request id, model
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def add(self, pod: Pod) -> None:
        with self._lock:
            self.endpoints[pod.name] = pod.url

    def remove(self, pod: Pod) -> None:
        with self._lock:
            self.endpoints.pop(pod.name, None)

    def _run(self) -> None:
        import httpx

        turn = itertools.count()
        with httpx.Client(timeout=30) as client:
            for sample in itertools.cycle(self.samples):
                if self._stop.is_set():
                    return
                with self._lock:
                    pods = sorted(self.endpoints.items())
                if not pods:
                    time.sleep(PACE_S)
                    continue
                pod, url = pods[next(turn) % len(pods)]
                try:
                    answer = client.post(f"{url}/classify", files={"image": ("digit.png", sample.png, "image/png")},
                                         data={"context": f'{{"capture": "{sample.capture}"}}'})
                    body = answer.json() if answer.status_code == 200 else {}
                    self.answers.append((pod, answer.status_code, body.get("request_id", ""), body.get("model", "")))
                except Exception as error:  # a refused connection is a lost request: it is counted, not hidden
                    self.errors.append(f"{pod}: {type(error).__name__}: {error}")
                time.sleep(PACE_S)

    def __enter__(self) -> "Traffic":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def served_by(self, pods: set[str]) -> int:
        return sum(1 for pod, status, _, _ in list(self.answers) if pod in pods and status == 200)


def read_manifests() -> tuple[dict, dict[str, dict[str, str]]]:
    deployment = yaml.safe_load((MANIFESTS / "cpu" / "deployment.yaml").read_text())
    config = yaml.safe_load((MANIFESTS / "base" / "config.yaml").read_text())
    return deployment, {config["metadata"]["name"]: config["data"]}


def window_samples(url: str) -> float:
    return promtext.total(promtext.scrape(url), "classguard_monitor_window_samples", monitor="representation",
                          subgroup="")


@dataclass
class Snapshot:
    step: str
    pods: dict[str, str]  # pod -> image version
    primary_versions: dict[str, int]  # from Prometheus: replicas serving each baseline version
    chains: int  # distinct guardrail chains served (the config-drift alert's input)
    alerts: list[str]  # pending or firing
    windows: dict[str, float]  # pod -> representation window samples it publishes
    answered: dict[str, int]  # pod -> answers so far
    served: dict[str, int]  # image version -> answers so far by all its pods, gone ones included


def rollout(model_home: Path, database_url: str, *, logs: Path, prometheus=None, samples=None) -> dict:
    """Play the rollout; returns what was seen (the test asserts on it, `main` prints it)."""
    from harness.traffic import holdout_samples, stream

    deployment, config_maps = read_manifests()
    root = Path(tempfile.mkdtemp(prefix="classguard-rollout-"))
    old_store, new_store, new_tag = image_stores(model_home, root)
    token = token_source.token_urlsafe(24)
    # what the manifests' migration Job does before the Deployment rolls (`classguard db migrate`)
    PostgresDatabase(database_url, replica="migrate").migrate()
    cluster_secrets = {"classguard-db": {"database-url": database_url},
                       "classguard-tokens": {"admin-token": token, "feedback-token": token_source.token_urlsafe(24)}}
    names = (f"classguard-{image}-{i}" for image in ("v1", "v2") for i in range(REPLICAS))
    version_of: dict[str, str] = {}
    running: dict[str, Pod] = {}
    snapshots: list[Snapshot] = []
    terminations: dict[str, float | None] = {}

    def start(store: Path, image: str) -> Pod:
        name = next(names)
        pod = Pod(deployment, name, secrets=cluster_secrets, config_maps=config_maps, model_home=store,
                  root=root / "pods", log_path=logs / f"{name}.log")
        progress(f"{name} ({image}): starting, then waiting for its readiness probe")
        pod.__enter__()
        version_of[name], running[name] = image, pod
        publish_targets()
        return pod

    def publish_targets() -> None:
        if prometheus is not None:
            prometheus.set_targets({p.url: {"pod": name} for name, p in running.items()})

    def scraped() -> dict[str, str]:
        return {r["metric"].get("pod", ""): r["value"][1] for r in prometheus.query('up{job="classguard"}')}

    def snapshot(step: str) -> None:
        versions, chains, alerts = {}, -1, []
        if prometheus is not None:
            # Prometheus hands discovery changes to its scrapers at most every 5 s: wait until it
            # scrapes exactly the running pods, all up, then a rule evaluation more
            deadline = time.monotonic() + 20
            while scraped() != dict.fromkeys(running, "1") and time.monotonic() < deadline:
                time.sleep(0.5)
            time.sleep(1.5)
            versions = {r["metric"].get("version", ""): int(float(r["value"][1])) for r in prometheus.query(
                'count by (version) (classguard_model_info{model="classguard-baseline", role="primary"} == 1)')}
            chains = int(float(next(iter(prometheus.query(
                "count(count by (hash) (classguard_guardrail_config_info == 1))")), {"value": [0, "0"]})["value"][1]))
            alerts = sorted(f"{a['labels']['alertname']} ({a['state']})" for a in prometheus.alerts())
        snapshots.append(Snapshot(step, {n: version_of[n] for n in running}, versions, chains, alerts,
                                  {n: window_samples(p.url) for n, p in running.items()},
                                  {n: traffic.served_by({n}) for n in running},
                                  {image: traffic.served_by({n for n, v in version_of.items() if v == image})
                                   for image in ("0.1.0", "0.2.0")}))

    def retire(pod: Pod) -> None:
        """Out of the load balancer a second into its pre-stop pause, then SIGTERM and grace."""
        remover = threading.Timer(1.0, traffic.remove, args=(pod,))
        remover.start()
        progress(f"{pod.name}: terminating (pre-stop pause, SIGTERM, up to "
                 f"{pod.spec['terminationGracePeriodSeconds']} s grace)")
        terminations[pod.name] = pod.terminate()
        remover.join()
        running.pop(pod.name)
        publish_targets()

    samples = samples or stream(holdout_samples(), 500, phone_share=0.03, seed=11)
    with contextlib.ExitStack() as stack, Traffic(samples) as traffic:
        stack.callback(lambda: [p.__exit__() for p in list(running.values())])
        old = [start(old_store, "0.1.0") for _ in range(REPLICAS)]
        for pod in old:
            traffic.add(pod)
        if prometheus is not None:
            prometheus.wait_for_samples(timeout=30)
        time.sleep(3)
        snapshot("0.1.0 on every pod")
        for step, leaving in enumerate(old):
            fresh = start(new_store, "0.2.0")
            traffic.add(fresh)
            time.sleep(3)
            snapshot(f"surge {step + 1}: {fresh.name} ready beside {len(running) - 1} old")
            retire(leaving)
            time.sleep(2)
            snapshot(f"{leaving.name} gone")
        time.sleep(3)
        traffic.stop()
        served_new = traffic.served_by(set(running))
        deadline = time.monotonic() + 15  # the windows publish every recompute (5 s by default)
        while any(window_samples(p.url) != served_new for p in running.values()) and time.monotonic() < deadline:
            time.sleep(0.5)
        snapshot("0.2.0 on every pod")
    answers = list(traffic.answers)
    shutil.rmtree(root, ignore_errors=True)
    return {"snapshots": snapshots, "answers": answers, "errors": list(traffic.errors),
            "terminations": terminations, "grace": deployment["spec"]["template"]["spec"][
                "terminationGracePeriodSeconds"], "new_tag": new_tag, "version_of": version_of}


def rows_by_version(database_url: str) -> Counter:
    import psycopg

    with psycopg.connect(database_url) as conn:
        return Counter(dict(conn.execute(
            "SELECT model || ':' || model_version, count(*) FROM predictions GROUP BY 1").fetchall()))


def report(seen: dict, rows: Counter) -> None:
    print(f"\n{'step':<46} {'pods (image)':<40} {'replicas per baseline version':<30} {'chains':>6}  alerts")
    for s in seen["snapshots"]:
        pods = ", ".join(f"{n.rsplit('-', 2)[-2]}-{n.rsplit('-', 1)[-1]}={v}" for n, v in s.pods.items())
        versions = ", ".join(f"{v[:8]}..x{c}" for v, c in sorted(s.primary_versions.items())) or "-"
        print(f"{s.step:<46} {pods:<40} {versions:<30} {s.chains:>6}  {', '.join(s.alerts) or 'none'}")
        print(f"{'':<46} window samples published: "
              + ", ".join(f"{n.rsplit('-', 2)[-2]}-{n.rsplit('-', 1)[-1]}={int(w)} (served {s.answered[n]})"
                          for n, w in s.windows.items()))
    statuses = Counter(status for _, status, _, _ in seen["answers"])
    answered = Counter(model for _, status, _, model in seen["answers"] if status == 200)
    print(f"\nanswers: {sum(statuses.values())} ({dict(statuses)}), client errors: {len(seen['errors'])}")
    print("answers by model version (responses) vs rows in PostgreSQL:")
    for tag in sorted(set(answered) | set(rows)):
        print(f"  {tag:<40} answered {answered[tag]:>5}   logged {rows[tag]:>5}")
    for name, took in seen["terminations"].items():
        print(f"{name}: exited {took:.1f} s after SIGTERM (grace {seen['grace']} s)" if took is not None
              else f"{name}: killed at the end of its {seen['grace']} s grace")


def main() -> int:
    from harness.postgres import Postgres, server_bindir
    from harness.prometheus import Prometheus, available

    if server_bindir() is None or not available():
        print("the dry run needs PostgreSQL and Prometheus: apt-get install postgresql prometheus", file=sys.stderr)
        return 1
    model_home = Path(os.environ.get("BENTOML_HOME", REPO / ".bentoml"))
    logs = REPO / "var" / "rollout"
    logs.mkdir(parents=True, exist_ok=True)
    begun = time.monotonic()
    progress("starting PostgreSQL and Prometheus ...")
    with Postgres.start() as pg, Prometheus([], discovered=True) as prom:
        seen = rollout(model_home, pg.url, logs=logs, prometheus=prom)
        time.sleep(1)
        report(seen, rows_by_version(pg.url))
    progress(f"done in {time.monotonic() - begun:.0f} s (pod logs: {logs})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
