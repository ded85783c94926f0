"""Rules, alerts, Alertmanager and Grafana dashboards, checked offline with the real tools."""

import json
import subprocess

import pytest
import yaml

from tests.dashboards.conftest import DASHBOARDS, METRIC, concrete, need

RULES = DASHBOARDS / "prometheus" / "rules"
BOARDS = sorted((DASHBOARDS / "grafana" / "dashboards").glob("*.json"))


def run(*cmd, cwd=None):
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def alerts():
    return [r for g in yaml.safe_load((RULES / "alerts.yml").read_text())["groups"] for r in g["rules"]]


def test_promtool_checks_the_rules_and_config():
    """`promtool check rules` and `check config` accept the rule files and the example config."""
    promtool = need("promtool")
    run(promtool, "check", "rules", str(RULES / "recording.yml"), str(RULES / "alerts.yml"))
    run(promtool, "check", "config", str(DASHBOARDS / "prometheus" / "prometheus.yml"))


def test_every_alert_fires_and_stays_quiet_in_promtool_unit_tests():
    """`promtool test rules`: each alert has a firing case and a quiet case, and all pass."""
    promtool = need("promtool")
    tests = DASHBOARDS / "prometheus" / "tests" / "alerts_test.yml"
    run(promtool, "test", "rules", tests.name, cwd=tests.parent)
    spec = yaml.safe_load(tests.read_text())["tests"]
    cases = [c for t in spec for c in t["alert_rule_test"]]
    for rule in alerts():
        mine = [c for c in cases if c["alertname"] == rule["alert"]]
        assert any(c["exp_alerts"] for c in mine), f"{rule['alert']} has no firing case"
        assert any(not c["exp_alerts"] for c in mine) or rule["alert"] in {"ClassguardAbstentionSpike",
                                                                           "ClassguardShadowDisagreement"}, \
            f"{rule['alert']} has no quiet case"


def test_alerts_carry_severity_summary_and_an_existing_runbook():
    """Every alert has a severity, a summary with its value, and a runbook file that exists."""
    for rule in alerts():
        assert rule["labels"]["severity"] in {"page", "warning", "info"}
        assert "$value" in rule["annotations"]["summary"]
        runbook = DASHBOARDS.parent / rule["annotations"]["runbook_url"]
        assert runbook.exists(), runbook
        text = runbook.read_text()
        assert "## Confirm" in text and "## What to switch on" in text
    index = (DASHBOARDS / "runbooks" / "README.md").read_text()
    missing = [r["alert"] for r in alerts()
               if f"[{r['alert']}]({r['annotations']['runbook_url'].rsplit('/', 1)[1]})" not in index]
    assert not missing, f"runbooks/README.md does not list {missing}"


def test_every_scrape_job_has_a_down_and_an_absent_alert():
    """Every job in the example scrape config is covered when its targets are down and when it has
    none at all: while a target cannot be scraped, no other alert sees data (ClassguardTargetDown)."""
    config = yaml.safe_load((DASHBOARDS / "prometheus" / "prometheus.yml").read_text())
    exprs = " ".join(" ".join(rule["expr"].split()) for rule in alerts())
    for job in (c["job_name"] for c in config["scrape_configs"]):
        assert f'up{{job="{job}"}} == 0' in exprs, f"no alert fires when job {job} is down"
        assert f'absent(up{{job="{job}"}})' in exprs, f"no alert fires when job {job} is gone"


def test_alertmanager_example_is_valid():
    run(need("amtool"), "check-config", str(DASHBOARDS / "alertmanager" / "alertmanager.yml"))


@pytest.mark.parametrize("board", BOARDS, ids=lambda p: p.stem)
def test_dashboard_structure(board):
    """Valid JSON at schemaVersion 39, unique panel ids, every target has an expression."""
    data = json.loads(board.read_text())
    assert data["schemaVersion"] == 39 and data["uid"] and data["title"]
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids))
    assert all(t["expr"] for p in data["panels"] for t in p["targets"])


def test_dashboard_expressions_parse(tmp_path):
    """Every panel expression, variables filled in, parses (promtool, as recording rules)."""
    promtool = need("promtool")
    exprs = [concrete(t["expr"]) for b in BOARDS for p in json.loads(b.read_text())["panels"] for t in p["targets"]]
    rules = {"groups": [{"name": "panels", "rules": [{"record": f"panel:check:{i}", "expr": e}
                                                     for i, e in enumerate(exprs)]}]}
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump(rules))
    run(promtool, "check", "rules", str(path))


@pytest.mark.integration
def test_every_metric_name_used_is_exported(server):
    """Every classguard_ metric named by a panel or rule appears in a real scrape of the service
    (after a little traffic and one monitor publish)."""
    import time
    import urllib.request

    from harness.traffic import holdout_samples, run as send

    send(server.url, holdout_samples()[:20])
    time.sleep(1.0)

    scraped = {line.split("{")[0].split(" ")[0] for line in
               urllib.request.urlopen(f"{server.url}/metrics").read().decode().splitlines()
               if line.startswith("classguard_")}
    texts = [b.read_text() for b in BOARDS] + [(RULES / f).read_text() for f in ("recording.yml", "alerts.yml")]
    used = {m for t in texts for m in METRIC.findall(t)}
    assert used and not (used - scraped), f"not exported: {sorted(used - scraped)}"
