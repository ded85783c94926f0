"""The Kubernetes manifests under deploy/kubernetes/ are what `deploy.render` writes, validate
against the Kubernetes and Prometheus Operator schemas, carry the rules and dashboards of
dashboards/ unchanged, and hang together (selectors, ports, probes, Secrets, grace period)."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from deploy import render
from deploy.validate import documents, validate, validate_builtin, validate_operator
from tests.dashboards.conftest import need

MANIFESTS = render.OUT


def objects(relative: str) -> list[dict]:
    return [doc for name, doc in documents(MANIFESTS) if name == relative]


def one(kind: str, relative: str) -> dict:
    [found] = [doc for doc in objects(relative) if doc["kind"] == kind]
    return found


def pod_spec(variant: str) -> dict:
    return one("Deployment", f"{variant}/deployment.yaml")["spec"]["template"]["spec"]


def test_the_committed_manifests_are_what_the_renderer_writes(tmp_path):
    """Every file under deploy/kubernetes/ equals a fresh render, and there is no other file."""
    fresh = render.render()
    committed = {p.relative_to(MANIFESTS).as_posix(): p.read_text() for p in MANIFESTS.rglob("*") if p.is_file()}
    assert sorted(committed) == sorted(fresh), "run `python -m deploy.render`"
    stale = [name for name in fresh if committed[name] != fresh[name]]
    assert not stale, f"{stale} differ from what dashboards/ and config/ generate: run `python -m deploy.render`"


def test_every_manifest_validates_against_the_schemas_of_the_cluster_versions_named():
    """All objects, as applied, pass kubernetes-validate (strict) for each named version and the
    Operator's CRD models; the set of kinds is the one the deployment needs."""
    count, problems = validate(MANIFESTS)
    assert not problems, "\n".join(map(str, problems))
    kinds = sorted({doc["kind"] for _, doc in documents(MANIFESTS)})
    assert kinds == ["AlertmanagerConfig", "ConfigMap", "Deployment", "Job", "Namespace", "PodDisruptionBudget",
                     "PrometheusRule", "Service", "ServiceMonitor", "StatefulSet"]
    assert count == 15


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d["spec"].__setitem__("replica", 3), "'replica' was unexpected"),
    (lambda d: d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"].__setitem__("port", [1]),
     "readinessProbe.httpGet.port"),
    (lambda d: d["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"].__setitem__("memory", "lots"),
     "not a Kubernetes quantity"),
    (lambda d: d.__setitem__("kind", "Deploymnet"), "Couldn't find schema"),
])
def test_the_validator_refuses_a_broken_deployment(mutate, expected):
    """An unknown field, a wrong type, a malformed quantity and an unknown kind are each reported."""
    broken = copy.deepcopy(one("Deployment", "cpu/deployment.yaml"))
    mutate(broken)
    reasons = validate_builtin(broken, render.CLUSTER_VERSIONS[0])
    assert any(expected in r for r in reasons), reasons


@pytest.mark.parametrize("mutate, expected", [
    (lambda r: r["spec"]["groups"][1]["rules"][0].__setitem__("forr", "5m"), "unknown field spec.groups[1].rules[0].forr"),
    (lambda r: r["spec"]["groups"][0].__setitem__("rules", "none"), "spec.groups.0.rules"),
    (lambda r: r.__setitem__("kind", "PrometheusRules"), "no Prometheus Operator schema"),
])
def test_the_validator_refuses_a_broken_prometheus_rule(mutate, expected):
    """A misspelt rule field, a wrong type and an unknown Operator kind are each reported."""
    broken = copy.deepcopy(one("PrometheusRule", "base/monitoring.yaml"))
    mutate(broken)
    assert any(expected in r for r in validate_operator(broken)), validate_operator(broken)


def test_the_prometheus_rule_holds_the_rule_files_and_promtool_accepts_it(tmp_path):
    """The PrometheusRule's groups equal dashboards/prometheus/rules/ group for group, and
    `promtool check rules` accepts them as extracted from the manifest."""
    groups = one("PrometheusRule", "base/monitoring.yaml")["spec"]["groups"]
    source = [g for name in ("recording.yml", "alerts.yml")
              for g in yaml.safe_load((render.DASHBOARDS / "prometheus" / "rules" / name).read_text())["groups"]]
    assert groups == source
    extracted = tmp_path / "from-manifest.yml"
    extracted.write_text(yaml.safe_dump({"groups": groups}))
    checked = subprocess.run([need("promtool"), "check", "rules", str(extracted)], capture_output=True, text=True,
                             timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    alerts = sum(1 for g in groups for r in g["rules"] if "alert" in r)
    assert f"{sum(len(g['rules']) for g in groups)} rules found" in checked.stdout and alerts >= 15


def test_the_dashboard_config_maps_carry_the_generated_dashboards_byte_for_byte():
    """One ConfigMap per file in dashboards/grafana/dashboards/, its data that file's exact text,
    labelled for Grafana's sidecar; the dashboards read a datasource variable, not a fixed uid."""
    maps = objects("base/grafana-dashboards.yaml")
    files = {p.name: p.read_text() for p in (render.DASHBOARDS / "grafana" / "dashboards").glob("*.json")}
    assert {name: text for m in maps for name, text in m["data"].items()} == files
    for m in maps:
        assert m["metadata"]["labels"]["grafana_dashboard"] == "1"
        for text in m["data"].values():
            board = json.loads(text)
            assert board["templating"]["list"][0]["type"] == "datasource"
            assert {p["datasource"]["uid"] for p in board["panels"]} == {"${datasource}"}


def test_the_alertmanager_config_carries_the_example_routes():
    """The AlertmanagerConfig routes subgroup alerts to classguard's own receiver (its token from
    the tokens Secret) and severity=page and severity=info as alertmanager.yml does, with its
    receivers and inhibit rule."""
    spec = one("AlertmanagerConfig", "base/alertmanager-config.yaml")["spec"]
    source = yaml.safe_load((render.DASHBOARDS / "alertmanager" / "alertmanager.yml").read_text())
    assert spec["route"]["receiver"] == source["route"]["receiver"]
    assert spec["route"]["groupBy"] == source["route"]["group_by"]
    assert [(r["matchers"][0]["value"], r["receiver"]) for r in spec["route"]["routes"]] == [
        (".+", "classguard-automation"), ("page", "ml-oncall-pager"), ("info", "ml-oncall-channel")]
    assert spec["route"]["routes"][0]["continue"] is True  # the alert still pages
    [automation] = [r for r in spec["receivers"] if r["name"] == "classguard-automation"]
    assert automation["webhookConfigs"][0]["httpConfig"]["authorization"]["credentials"] == {
        "name": "classguard-tokens", "key": "alerts-token"}
    assert [r["name"] for r in spec["receivers"]] == [r["name"] for r in source["receivers"]]
    assert spec["inhibitRules"][0]["equal"] == ["subgroup"]


def test_the_config_map_holds_the_configuration_files_unchanged():
    """The ConfigMap's files are config/classguard.yaml, guardrails.yaml and automation.yaml as committed."""
    data = one("ConfigMap", "base/config.yaml")["data"]
    assert data == {name: (render.CONFIG / name).read_text()
                    for name in ("classguard.yaml", "guardrails.yaml", "automation.yaml")}


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_the_deployment_hangs_together(variant):
    """Selectors meet the pod labels; the Service and ServiceMonitor reach the named port; the
    probes are BentoML's health routes; Secrets and the ConfigMap are the ones documented; the
    grace period outlasts the pre-stop pause, a request timeout and the log's last flush."""
    from core.config import FleetConfig, LimitsConfig, LogConfig

    deploy = one("Deployment", f"{variant}/deployment.yaml")
    pod = deploy["spec"]["template"]
    labels = pod["metadata"]["labels"]
    [container] = pod["spec"]["containers"]
    assert deploy["spec"]["replicas"] == 3
    assert deploy["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    for selector in (deploy["spec"]["selector"]["matchLabels"], one("Service", "base/service.yaml")["spec"]["selector"],
                     one("PodDisruptionBudget", "base/service.yaml")["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= labels.items()
    service = one("Service", "base/service.yaml")
    monitor = one("ServiceMonitor", "base/monitoring.yaml")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service["metadata"]["name"] == "classguard"  # the ServiceMonitor's job label, which every alert names
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"] == "http"
    assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    secrets = {e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
               for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    assert secrets == {"CLASSGUARD_FLEET__DATABASE_URL": ("classguard-db", "database-url"),
                       "CLASSGUARD_ADMIN_TOKEN": ("classguard-tokens", "admin-token"),
                       "CLASSGUARD_FEEDBACK_TOKEN": ("classguard-tokens", "feedback-token"),
                       "CLASSGUARD_ALERTS_TOKEN": ("classguard-tokens", "alerts-token")}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == one("ConfigMap", "base/config.yaml")["metadata"]["name"]
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert grace > pause + LimitsConfig().request_timeout_seconds + LogConfig().flush_seconds \
        + FleetConfig().statement_timeout_seconds
    limits = container["resources"]["limits"]
    assert ("nvidia.com/gpu" in limits) == (variant == "gpu")
    if variant == "gpu":
        assert pod["spec"]["nodeSelector"] and pod["spec"]["tolerations"]
        assert {"name": "CLASSGUARD_HALF_PRECISION", "value": "true"} in container["env"]


def test_the_migration_job_runs_as_the_owner_and_the_replicas_as_the_service_role():
    """The Job runs `classguard db migrate` (the Bento's `python -m store.sql_postgres`) in the
    CPU image with the Secret's owner URL, while both Deployments take the service role's URL;
    the roles ConfigMap is config/postgres-roles.sql byte for byte, and the trial PostgreSQL runs
    it at its first start with a password per role from the Secret."""
    job = one("Job", "migrate/job.yaml")
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "store.sql_postgres"]
    assert container["image"] == one("Deployment", "cpu/deployment.yaml")["spec"]["template"]["spec"][
        "containers"][0]["image"]
    assert {"store/*.py", "core/*.py"} <= set(yaml.safe_load((render.REPO / "bentofile.yaml").read_text())["include"])
    assert container["env"] == [render.secret_env("CLASSGUARD_FLEET__DATABASE_URL", "classguard-db", "owner-url")]
    assert job["spec"]["template"]["spec"]["securityContext"] == pod_spec("cpu")["securityContext"]
    for variant in ("cpu", "gpu"):
        [serving] = pod_spec(variant)["containers"]
        assert render.secret_env("CLASSGUARD_FLEET__DATABASE_URL", "classguard-db", "database-url") in serving["env"]
    roles = one("ConfigMap", "base/postgres-roles.yaml")
    assert roles["data"]["postgres-roles.sql"] == (render.CONFIG / "postgres-roles.sql").read_text()
    assert sorted(roles["data"])[-1] == render.TRIAL_PASSWORDS  # runs after the roles file
    trial = one("StatefulSet", "postgres-trial/postgres.yaml")["spec"]["template"]["spec"]
    assert trial["volumes"] == [{"name": "roles", "configMap": {"name": roles["metadata"]["name"]}}]
    keys = {e["valueFrom"]["secretKeyRef"]["key"] for e in trial["containers"][0]["env"] if "valueFrom" in e}
    assert keys == {"postgres-password", "owner-password", "service-password", "oncall-password"}


def test_render_writes_another_image_and_removes_stale_files(tmp_path):
    """`--image` and `--cuda-image` land in the Deployments, a re-render removes a file it no
    longer writes, and the result still validates."""
    out = tmp_path / "manifests"
    (out / "cpu").mkdir(parents=True)
    (out / "cpu" / "old.yaml").write_text("kind: Leftover\n")
    (out / "keep.txt").write_text("not ours")
    render.main(["--image", "registry.example.com/cg:1.2", "--cuda-image", "registry.example.com/cg-cuda:1.2",
                 "--out", str(out)])
    assert not (out / "cpu" / "old.yaml").exists() and (out / "keep.txt").exists()
    images = {name: doc["spec"]["template"]["spec"]["containers"][0]["image"]
              for name, doc in documents(out) if doc["kind"] == "Deployment"}
    assert images == {"cpu/deployment.yaml": "registry.example.com/cg:1.2",
                      "gpu/deployment.yaml": "registry.example.com/cg-cuda:1.2"}
    assert validate(out)[1] == []


def test_the_validator_command_fails_on_a_folder_with_a_broken_manifest(tmp_path):
    """`python -m deploy.validate DIR` exits 1 and names the file when one object is wrong."""
    bad = tmp_path / "bad"
    bad.mkdir()
    service = copy.deepcopy(one("Service", "base/service.yaml"))
    service["spec"]["ports"][0]["port"] = "three thousand"
    (bad / "service.yaml").write_text(yaml.safe_dump(service))
    from deploy.validate import main

    assert main([str(bad)]) == 1
    assert main([str(Path(tmp_path / "empty"))]) == 1
