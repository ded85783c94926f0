"""New regions in a fleet, live: two `bentoml serve` replicas with separate homes and nothing
shared but a real PostgreSQL. Rotated digits sent to one
replica form a new region there; the other replica takes it up under the same name and
places its own rotated answers in it; ordinary traffic forms none."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest

from harness import promtext
from harness.fleet import Fleet, new_database
from harness.traffic import Sample, holdout_samples, run, stream
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


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
    rotated digits sent to replica 1 are logged there in n00."""
    url = new_database(postgres.url, "new_regions_live")
    env = {"BENTOML_HOME": str(model_home), "CLASSGUARD_MONITORS__RECOMPUTE_SECONDS": "1"}
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
        scores = promtext.scrape(b)
        assert promtext.total(scores, "classguard_monitor_score", monitor="regions", statistic="share",
                              subgroup="region=n00") > 0
