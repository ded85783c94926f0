"""New regions in a fleet, live: two `bentoml serve` replicas with separate homes and nothing
shared but a real PostgreSQL. Rotated digits sent to one
replica form a new region there; the other replica takes it up under the same name and
places its own rotated answers in it; ordinary traffic forms none. On-call retires it through
one replica, and it is gone from both."""

from __future__ import annotations

import time

import httpx
import numpy as np
import psycopg
import pytest

from harness import promtext
from harness.fleet import Fleet, new_database
from harness.traffic import Sample, holdout_samples, run, stream
from tests.conftest import run_module
from tests.waiting import wait_until

pytestmark = pytest.mark.integration
TOKEN = "new-regions-admin-token"


def rotated_samples(seed: int) -> list[Sample]:
    """Test-split scanner digits rotated by 30-60 degrees (training.shifts), as PNG uploads."""
    from runtime.preprocess import encode_png
    from training.digits import build_incident
    from training.shifts import rotated

    scanner = build_incident().test.where("scanner")
    images = rotated(scanner.images, np.random.default_rng(seed))
    return [Sample(encode_png(img), int(y), "rotated") for img, y in zip(images, scanner.labels)]


def formed(url: str) -> float:
    return promtext.total(promtext.scrape(url), "classguard_new_regions")


def regions_logged(database_url: str, replica: str) -> dict[str, int]:
    with psycopg.connect(database_url) as conn:
        return dict(conn.execute("SELECT region, COUNT(*) FROM predictions WHERE replica = %s GROUP BY region",
                                 (replica,)).fetchall())


def test_a_group_found_by_one_replica_is_the_same_region_on_the_other(model_home, postgres, tmp_path):
    """600 ordinary answers form no region; then rotated digits through replica 0 form n00 (a row
    in `new_regions`, the gauge on replica 0), replica 1 takes it up at its next publish, and
    rotated digits sent to replica 1 are logged there in n00. `classguard regions --retire n00`
    through replica 1 removes its row (only), and both replicas drop it; names that are not a formed
    new region are refused, never a 500."""
    url = new_database(postgres.url, "new_regions_live")
    env = {"BENTOML_HOME": str(model_home), "CLASSGUARD_MONITORS__RECOMPUTE_SECONDS": "1",
           "CLASSGUARD_ADMIN_TOKEN": TOKEN}
    with Fleet(2, url, env=env, log_dir=tmp_path) as fleet:
        a, b = fleet.urls
        ordinary, _ = run([a, b], stream(holdout_samples(), 600, phone_share=0.03, seed=3))
        assert {status for _, status, _ in ordinary} == {200}
        assert formed(a) == 0 and formed(b) == 0
        rotated = rotated_samples(seed=1)
        answered, _ = run(a, rotated)
        assert {status for _, status, _ in answered} == {200}
        wait_until(lambda: formed(a) >= 1, timeout=20, message="a new region formed on replica 0")
        with psycopg.connect(url) as conn:
            stored = conn.execute("SELECT slot, members, replica FROM new_regions ORDER BY slot").fetchall()
        assert stored and stored[0][0] == 0 and stored[0][1] >= 20, stored
        wait_until(lambda: formed(b) == formed(a), timeout=20, message="replica 1 taking the region up")
        run(b, rotated_samples(seed=2))
        wait_until(lambda: regions_logged(url, "replica-1").get("n00", 0) >= 10, timeout=20,
                   message=lambda: f"rotated answers of replica 1 logged in n00: {regions_logged(url, 'replica-1')}")
        # the published share follows the log by up to a publish (each second here)
        wait_until(lambda: promtext.total(promtext.scrape(b), "classguard_monitor_score", monitor="regions",
                                          statistic="share", subgroup="region=n00") > 0,
                   timeout=20, message="replica 1 publishing a share for n00")
        time.sleep(3)  # every worker's publish (each second here) has searched its ring since the traffic
        auth = {"Authorization": f"Bearer {TOKEN}"}
        for name, status in (("r00", 400), ("novel", 400), ("n0" + "0" * 5000, 400), ("n07", 404)):
            r = httpx.delete(f"{b}/admin/regions/{name}", headers=auth, timeout=10)
            assert r.status_code == status and "detail" in r.json(), (name, r.text)
        assert httpx.delete(f"{b}/admin/regions/n00", timeout=10).status_code == 401  # no token
        with psycopg.connect(url) as conn:
            before = conn.execute("SELECT slot, born FROM new_regions ORDER BY slot").fetchall()
        done = run_module("ops.cli", "regions", "--url", b, "--retire", "n00", env={"CLASSGUARD_ADMIN_TOKEN": TOKEN})
        assert done.returncode == 0 and done.stdout.startswith("retired n00: "), done.stderr
        with psycopg.connect(url) as conn:
            after = conn.execute("SELECT slot, born FROM new_regions ORDER BY slot").fetchall()
        assert after == before[1:], (before, after)  # n00 only; the group is not sent again, so it does not re-form
        wait_until(lambda: formed(a) == formed(b) == len(after), timeout=20, message="both replicas dropping n00")
