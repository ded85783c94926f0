"""A real Prometheus scraping a live `bentoml serve`: the incident raises the expected alerts,
a stationary scanner stream raises none, and every dashboard panel query returns data."""

import json
import time

import pytest

from harness.prometheus import Prometheus
from harness.server import Server
from harness.traffic import holdout_samples, run, stream
from tests.dashboards.conftest import DASHBOARDS, concrete, need
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(model_home, tmp_path_factory):
    need("prometheus")
    # region monitors on (off by default), so their panels and rules are exercised too
    env = {"BENTOML_HOME": str(model_home), "CLASSGUARD_MONITORS__RECOMPUTE_SECONDS": "1",
           "CLASSGUARD_MONITORS__REGIONS": "true"}
    with Server(env=env, log_path=tmp_path_factory.mktemp("prom") / "serve.log") as server:
        with Prometheus(server.url) as prom:
            prom.wait_for_samples()
            yield server, prom


def active(prom):
    return {(a["labels"]["alertname"], a["labels"].get("subgroup", "")): a["state"] for a in prom.alerts()}


def test_stationary_scanner_stream_raises_no_alert(stack):
    """400 scanner images, scraped and evaluated for several seconds: no alert pending or firing."""
    server, prom = stack
    run(server.url, stream(holdout_samples(), 400, phone_share=0.0, seed=2), concurrency=8)
    # a fixed wait on purpose: it shows that no alert appears while Prometheus scrapes and
    # evaluates the rules (every 1 s) for 6 s; there is no event to poll for
    time.sleep(6)
    assert active(prom) == {}


def test_incident_raises_the_subgroup_alert(stack):
    """Phone-heavy traffic to the baseline makes ClassguardSubgroupOverRepresented pending (or
    firing) for capture=phone within seconds, through Prometheus's own rule evaluation."""
    server, prom = stack
    run(server.url, stream(holdout_samples(), 800, phone_share=0.5, seed=3), concurrency=16)

    def phone_alert():
        state = active(prom)
        return state if ("ClassguardSubgroupOverRepresented", "capture=phone") in state else None

    state = wait_until(phone_alert, timeout=20, interval=0.5, message="ClassguardSubgroupOverRepresented on phone")
    assert state.get(("ClassguardSubgroupOverRepresented", "capture=phone")) in {"pending", "firing"}
    assert not any(sub == "capture=scanner" for _, sub in state)


def test_every_dashboard_panel_returns_data(stack):
    """During the scenario, each panel expression of both dashboards returns at least one series."""
    _, prom = stack
    queries = {f"{board.stem}: {panel['title']} [{target['refId']}]": concrete(target["expr"])
               for board in sorted((DASHBOARDS / "grafana" / "dashboards").glob("*.json"))
               for panel in json.loads(board.read_text())["panels"] for target in panel["targets"]}

    def every_panel_has_data():
        for name in [name for name, q in queries.items() if prom.query(q)]:
            del queries[name]
        return not queries

    # rate() needs two scrapes of series the incident created
    wait_until(every_panel_has_data, timeout=15, interval=1, message=lambda: f"data in panels {sorted(queries)}")
