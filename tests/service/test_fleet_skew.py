"""Fleet mode live with wrong clocks: three `bentoml serve` replicas sharing only a real
PostgreSQL, one on a correct clock, one 400 s ahead and one 400 s behind (a sitecustomize on
each skewed replica's PYTHONPATH shifts time.time/time.time_ns in all its processes). The
fleet's windows, held labels, retention and swaps stay correct, and each replica measures its
skew."""

from __future__ import annotations

import time

import httpx
import pytest

from harness import promtext
from harness.fleet import Fleet, clock_offset_env, new_database
from harness.traffic import holdout_samples, run, stream
from tests.service.test_fleet_live import AUTH, TOKEN, post_feedback, rows, served_hash, window_samples
from tests.waiting import wait_until

pytestmark = pytest.mark.integration
OFFSETS = (0.0, 400.0, -400.0)  # replica-0 correct, replica-1 ahead, replica-2 behind
RETENTION_S = 300.0  # shorter than the skew: a replica 400 s ahead would cut rows written now


@pytest.fixture(scope="module")
def fleet(model_home, postgres, tmp_path_factory):
    logs = tmp_path_factory.mktemp("fleet-skew")
    url = new_database(postgres.url, "fleet_skew")
    env = {"BENTOML_HOME": str(model_home), "CLASSGUARD_ADMIN_TOKEN": TOKEN, "CLASSGUARD_FEEDBACK_TOKEN": TOKEN,
           "CLASSGUARD_MONITORS__RECOMPUTE_SECONDS": "1", "CLASSGUARD_FLEET__CONNECT_TIMEOUT_SECONDS": "1",
           "CLASSGUARD_LOG__RETENTION_DAYS": str(RETENTION_S / 86400), "CLASSGUARD_LOG__RETENTION_CHECK_SECONDS": "1"}
    per_replica = [{"CLASSGUARD_LOG__FLUSH_SECONDS": "4"}]  # the correct replica's answers reach the log late
    per_replica += [clock_offset_env(offset, logs / f"clock{i}") for i, offset in enumerate(OFFSETS) if offset]
    with Fleet(3, url, env=env, per_replica=per_replica, log_dir=logs) as live:
        live.database_url = url
        yield live


def skew(url: str) -> float:
    return promtext.total(promtext.scrape(url), "classguard_fleet_clock_skew_seconds")


def test_windows_and_retention_hold_with_replicas_400_s_off_and_the_skew_is_measured(fleet):
    """60 requests round-robin: every replica publishes window samples of all 60 (the old code
    left the behind replica's events out of every window and placed the ahead one's in the
    future), the retention a replica 400 s ahead runs deletes none of them (the old code cut at
    100 s in the future), and each replica exports its skew: about 0, +400 and -400."""
    results, _ = run(fleet.urls, stream(holdout_samples(), 60, phone_share=0.3, seed=5))
    assert [status for _, status, _ in results] == [200] * 60
    for url in fleet.urls:
        wait_until(lambda: window_samples(url) == 60, timeout=15,
                   message=lambda: f"{url} publishing 60 window samples, has {window_samples(url)}")
    for url, offset in zip(fleet.urls, OFFSETS):
        assert skew(url) == pytest.approx(offset, abs=2.0), url
    wait_until(lambda: rows(fleet.database_url, "SELECT COUNT(*) FROM predictions")[0][0] == 60, timeout=10)
    time.sleep(3)  # retention rounds (every 1 s, on whichever replica claims them) pass
    assert rows(fleet.database_url, "SELECT COUNT(*) FROM predictions")[0][0] == 60
    [(last_run,)] = rows(fleet.database_url, "SELECT last_run FROM maintenance WHERE task = 'retention'")
    assert abs(last_run - time.time()) < 10  # claimed by the database's clock, not a replica's


def test_labels_through_replicas_400_s_off_are_held_then_joined(fleet):
    """Labels for 20 fresh answers of the correct replica (written to the log 4 s later), posted
    at once through the replica 400 s ahead and the one 400 s behind: none is refused, and all
    20 are joined (the old code answered 404 through the ahead replica, and held labels through
    the behind one that the next correct join expired)."""
    results, _ = run(fleet.urls[0], stream(holdout_samples(), 20, phone_share=0.3, seed=6))
    labels = [{"request_id": body["request_id"], "label": str(s.label)} for s, _, body in results]
    outcomes = []
    for url, part in ((fleet.urls[1], labels[:10]), (fleet.urls[2], labels[10:])):
        answer = post_feedback(url, part)
        assert answer.status_code == 200, answer.text
        outcomes += [r["result"] for r in answer.json()["results"]]
    assert set(outcomes) <= {"held", "recorded"}, outcomes
    ids = [item["request_id"] for item in labels]
    wait_until(lambda: rows(fleet.database_url, "SELECT COUNT(*) FROM feedback WHERE request_id = ANY(%s)",
                            ids)[0][0] == 20, timeout=20, message="all 20 labels joined")


def test_swaps_through_a_replica_400_s_ahead_are_ordered_and_stamped_by_the_database(fleet):
    """A swap through the replica 400 s ahead, then one through the correct replica: every replica
    serves the later one, and the audit rows are in swap order and stamped within seconds of the
    database's time (the old code stamped the first 400 s in the future)."""
    hashes = []
    for url, profile in ((fleet.urls[1], "abstain_when_unsure"), (fleet.urls[0], "allow_all")):
        answer = httpx.post(f"{url}/admin/guardrails", json={"profile": profile}, headers=AUTH, timeout=30)
        assert answer.status_code == 200, answer.text
        hashes.append(answer.json()["hash"])
    for url in fleet.urls:
        wait_until(lambda: served_hash(url) == {hashes[-1]}, timeout=5, message=f"{url} serving {hashes[-1]}")
    history = rows(fleet.database_url, "SELECT replica, profile, ts FROM guardrail_chain ORDER BY id DESC LIMIT 2")
    assert [(r, p) for r, p, _ in history] == [("replica-0", "allow_all"), ("replica-1", "abstain_when_unsure")]
    assert all(abs(ts - time.time()) < 10 for _, _, ts in history)
