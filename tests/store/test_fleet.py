"""The fleet's shared state in a real PostgreSQL: monitor windows every replica publishes whole,
and one guardrail chain with one audit trail (each object here stands for one replica's worker)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY

from core.config import GuardrailsConfig, MonitorsConfig
from monitors.events import EventBatch
from runtime.active_chain import GuardrailRuntime
from runtime.monitor_pipeline import MonitorPipeline
from store.chain_store import FleetChainStore
from store.database import PostgresDatabase, StoreUnavailable
from store.fleet_windows import FleetWindows
from tests.monitors.conftest import MODELS, SUBGROUPS, make_profile
from tests.runtime.test_chain_config import CONTEXT

PAIRS = [{"source": "a", "target": "b", "margin": 0.3}]


def events(n: int, seed: int, t0: float, regions: int = 0) -> EventBatch:
    """`regions` > 0: the first model's events fall in one of that many regions (novel included)."""
    rng = np.random.default_rng(seed)
    model = rng.integers(0, 2, n)
    return EventBatch(t=t0 + rng.uniform(0, 60, n), model=model,
                      subgroup=np.where(rng.random(n) < 0.2, 1, 0), predicted=rng.integers(0, 4, n),
                      confidence=rng.uniform(0.2, 1.0, n), confusions=rng.integers(0, 2, n),
                      region=np.where(model == 0, rng.integers(0, regions, n), -1) if regions else None)


def scores(results):
    return sorted((s.monitor, s.statistic, s.model, s.subgroup, s.pair,
                   None if np.isnan(s.value) else round(s.value, 9), s.samples) for s in results)


@pytest.fixture(params=[False, True], ids=["regions off", "regions on"])
def pipelines(request, tmp_path):
    """Replicas' monitor pipelines; with region monitors (8 regions and novel) on the second run."""
    regions = request.param
    profiles = [make_profile(1, regions=8 if regions else 0), make_profile(2)]
    config = MonitorsConfig(min_samples=20, known_confusions=PAIRS, regions=regions)

    def make(name: str, fleet=None) -> MonitorPipeline:
        state = tmp_path / name
        state.mkdir()
        return MonitorPipeline(config.model_copy(update={"state_dir": state}), MODELS, profiles, SUBGROUPS, fleet=fleet)

    make.regions = 9 if regions else 0  # regions an event may fall in
    return make


def fleet_windows(url: str, worker: str, layout: str = "L1", connect_timeout: float = 3.0) -> FleetWindows:
    db = PostgresDatabase(url, replica=worker, connect_timeout=connect_timeout)
    db.migrate()
    return FleetWindows(db, layout=layout, worker=worker, bucket_s=1.0, n_buckets=300)


def test_every_replica_publishes_what_one_process_fed_all_traffic_would(pg_url, pipelines):
    """Three replicas each see a third of 3,000 events; after a round of publishes every replica
    publishes exactly the scores and sample counts of one process fed all 3,000 (region monitors
    on or off)."""
    now = time.time()
    batches = [events(1000, seed, now - 70, pipelines.regions) for seed in range(3)]
    alone = pipelines("alone")
    for batch in batches:
        alone.suite.update_many(batch)
    expected = scores(alone.publish(now))
    replicas = [pipelines(f"r{i}", fleet_windows(pg_url, f"r{i}")) for i in range(3)]
    for replica, batch in zip(replicas, batches):
        replica.suite.update_many(batch)
        replica.publish(now)
    for replica in replicas:
        assert scores(replica.publish(now)) == expected
    assert max(s[-1] for s in expected) >= 1000
    assert any(s[0] == "regions" for s in expected) == bool(pipelines.regions)


def test_a_retried_write_counts_once_and_layouts_never_mix(pg_url, pipelines):
    """Publishing the same state twice (a write retried after a lost acknowledgement) leaves the
    fleet totals unchanged; a replica with another layout (another model version) sees none of them."""
    now = time.time()
    a = pipelines("a", fleet_windows(pg_url, "a"))
    a.suite.update_many(events(500, 1, now - 70))
    first = scores(a.publish(now))
    a.fleet._shipped.clear()  # forget what was written: the next publish writes every bucket again
    assert scores(a.publish(now)) == first
    other = pipelines("b", fleet_windows(pg_url, "b", layout="L2"))
    assert all(s[-1] == 0 for s in scores(other.publish(now)))


def test_an_unreachable_store_falls_back_to_the_replicas_own_view_and_says_so(pipelines, tmp_path):
    """With no server behind the URL, publish still answers (this replica's own counts) and the
    degraded gauge reads 1; it is counted as a store error."""
    db = PostgresDatabase("postgresql://cg@127.0.0.1:9/none", replica="x", connect_timeout=1)
    replica = pipelines("x", FleetWindows(db, layout="L", worker="x", bucket_s=1.0, n_buckets=300))
    before = REGISTRY.get_sample_value("classguard_fleet_store_errors_total", {"component": "windows"}) or 0.0
    now = time.time()
    replica.suite.update_many(events(400, 3, now - 70))
    published = scores(replica.publish(now))
    assert max(s[-1] for s in published) == 400
    assert REGISTRY.get_sample_value("classguard_fleet_view_degraded") == 1.0
    assert REGISTRY.get_sample_value("classguard_fleet_store_errors_total", {"component": "windows"}) == before + 1


# -- the chain ---------------------------------------------------------------------------------
PROFILES = Path("config/guardrails.yaml")


@pytest.fixture
def replica(pg_url, tmp_path):
    def start(name: str, url: str = pg_url, **config) -> GuardrailRuntime:
        cfg = GuardrailsConfig(profiles_path=PROFILES, audit_log=tmp_path / f"{name}.jsonl", **config)
        db = PostgresDatabase(url, replica=name, connect_timeout=1)
        if url == pg_url:
            db.migrate()
        return GuardrailRuntime(cfg, CONTEXT, FleetChainStore(db, name))

    return start


def test_a_swap_through_one_replica_reaches_the_others_and_links_the_audit(replica):
    """A swap through replica a is installed by b at its next sync; a replica started later with
    another configured profile joins the fleet's chain instead of resetting it; the audit rows
    link each chain to the one it replaced, whichever replica wrote it."""
    a, b = replica("a"), replica("b")
    startup = a.chain.config_hash
    a.swap(profile="abstain_when_unsure")
    assert b.sync() and b.chain.profile == "abstain_when_unsure"
    b.swap(profile="allow_all")
    assert a.sync() and a.chain.profile == "allow_all"
    late = replica("c", active="abstain_when_unsure")
    assert late.chain.profile == "allow_all"
    history = a.store.history()
    assert [(h["source"], h["replica"], h["profile"]) for h in history] == [
        ("admin", "b", "allow_all"), ("admin", "a", "abstain_when_unsure"), ("startup", "a", "allow_all")]
    assert history[0]["previous_id"] == history[1]["id"] and history[1]["previous_id"] == history[2]["id"]
    assert history[1]["previous_hash"] == startup


def test_a_swap_while_the_store_is_down_is_refused_everywhere(replica, postgres, pg_url):
    """With the server stopped, a swap raises StoreUnavailable, counted as refused; the chain is
    unchanged, and after the outage the other replica still serves the same chain."""
    a, b = replica("a"), replica("b")
    refused = REGISTRY.get_sample_value("classguard_guardrail_swaps_total", {"outcome": "refused"}) or 0.0
    postgres.stop()
    try:
        with pytest.raises(StoreUnavailable):
            a.swap(profile="abstain_when_unsure")
        assert b.sync() is False
    finally:
        postgres.resume()
    assert a.chain.profile == "allow_all"
    assert REGISTRY.get_sample_value("classguard_guardrail_swaps_total", {"outcome": "refused"}) == refused + 1
    assert b.sync() is False and b.chain.profile == "allow_all"


def test_the_cli_prints_the_fleets_audit_trail_newest_first(replica, pg_url, capsys):
    """`classguard guardrails history --db URL` prints one JSON line per stored chain, newest
    first, naming the replica that wrote it."""
    import json

    from ops.cli import main

    replica("a")  # the first replica installs the start-up chain
    replica("b").swap(profile="abstain_when_unsure")
    assert main(["guardrails", "history", "--db", pg_url, "--limit", "5"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["replica"], r["profile"]) for r in lines] == [("b", "abstain_when_unsure"), ("a", "allow_all")]


def test_a_swap_whose_commit_acknowledgement_is_lost_is_installed_at_the_next_sync(replica, pg_url):
    """The swap's row commits but the acknowledgement never arrives: the swap answers
    StoreUnavailable (not confirmed), and the same worker installs the stored chain at its next
    sync, as every other replica does, instead of treating it as already seen."""
    import psycopg

    from store import sql_postgres

    a, b = replica("a"), replica("b")

    class LostAcknowledgement(sql_postgres.Connection):
        def transaction(self, **kwargs):
            from contextlib import contextmanager

            @contextmanager
            def committed_then_lost():
                with sql_postgres.Connection.transaction(self, **kwargs):
                    yield self
                raise psycopg.OperationalError("server closed the connection unexpectedly")

            return committed_then_lost()

    connect = a.store.db.connect
    a.store.db.connect = lambda **kw: LostAcknowledgement(connect(**kw).raw)
    with pytest.raises(StoreUnavailable):
        a.swap(profile="abstain_when_unsure")
    a.store.db.connect = connect
    assert a.chain.profile == "allow_all"
    assert b.sync() and b.chain.profile == "abstain_when_unsure"
    assert a.sync() and a.chain.profile == "abstain_when_unsure"
