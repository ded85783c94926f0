"""A dry run of a rolling update from the rendered manifests (harness/rollout.py): pods run from
deploy/kubernetes/cpu/deployment.yaml with its Secrets, ConfigMap, probes, pre-stop pause and
grace period, sharing only a real PostgreSQL, scraped by a real Prometheus with the rules; two
pods on image 0.1.0 (baseline version 1) replaced one at a time by pods on 0.2.0 (version 2)."""

from __future__ import annotations

from collections import Counter

import pytest

from harness.kube import Pod, PodConfigError
from harness.rollout import read_manifests, rollout, rows_by_version
from tests.dashboards.conftest import need

pytestmark = pytest.mark.integration


def test_a_rolling_update_answers_every_request_and_keeps_each_version_apart(model_home, pg_url, tmp_path):
    """Every request answered (200) and logged under the version that answered it; each pod
    exits within its grace period; Prometheus counts the replicas per baseline version at each
    step; one chain is served throughout, so the config-drift alert stays quiet; a new pod's
    window holds only new-version answers, and ends with exactly all of them."""
    need("prometheus")
    from harness.prometheus import Prometheus

    with Prometheus([], discovered=True) as prometheus:
        seen = rollout(model_home, pg_url, logs=tmp_path, prometheus=prometheus)
    answers, snapshots = seen["answers"], seen["snapshots"]
    assert seen["errors"] == [] and len(answers) > 500
    assert {status for _, status, _, _ in answers} == {200}
    answered = Counter(model for _, _, _, model in answers)
    assert rows_by_version(pg_url) == answered  # graceful termination: nothing left unwritten
    old_tag, new_tag = sorted(answered, key=lambda tag: tag == seen["new_tag"])
    assert new_tag == seen["new_tag"] and old_tag.startswith("classguard-baseline:")
    for pod, _, _, model in answers:  # a pod answers with its own image's version, never the other's
        assert model == (new_tag if seen["version_of"][pod] == "0.2.0" else old_tag), pod
    for name, took in seen["terminations"].items():
        assert took is not None and took < seen["grace"], f"{name} was killed at the end of its grace period"

    old_version, new_version = old_tag.split(":")[1], new_tag.split(":")[1]
    replicas = [s.primary_versions for s in snapshots]
    assert replicas[0] == {old_version: 2} and replicas[-1] == {new_version: 2}
    assert {old_version: 2, new_version: 1} in replicas and {old_version: 1, new_version: 1} in replicas
    for snap in snapshots:
        assert snap.chains == 1, snap
        firing = [a for a in snap.alerts if "firing" in a or not a.startswith("ClassguardTargetDown")]
        assert firing == [], snap  # a pod's exit may put TargetDown pending for a scrape; its 3m `for` keeps it quiet
        for image in ("0.1.0", "0.2.0"):
            pods = [n for n, v in snap.pods.items() if v == image]
            # the version's whole fleet (gone pods too), never the other version's answers
            assert all(snap.windows[n] <= snap.served[image] for n in pods), (image, snap)
    last = snapshots[-1]
    served_new = sum(1 for pod, _, _, _ in answers if seen["version_of"][pod] == "0.2.0")
    assert set(last.windows.values()) == {served_new}


def test_a_pod_refuses_to_start_without_its_secret(model_home, tmp_path):
    """As the kubelet does (CreateContainerConfigError), a missing Secret key stops the pod
    before any process starts, naming the Secret and key."""
    deployment, config_maps = read_manifests()
    with pytest.raises(PodConfigError, match="classguard-tokens.*feedback-token"):
        Pod(deployment, "classguard-x", secrets={"classguard-db": {"database-url": "postgresql://x@127.0.0.1/x"},
                                                  "classguard-tokens": {"admin-token": "a" * 32}},
            config_maps=config_maps, model_home=model_home, root=tmp_path)
