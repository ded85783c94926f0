"""`classguard replay`: a candidate chain re-applied to logged answers changes exactly the
answers it should, judges them against the feedback, and reports routes it cannot replay."""

from __future__ import annotations

import time

import numpy as np
import pytest

from core.config import LogConfig
from runtime.chain_config import compile_chain
from store import feedback
from store.prediction_log import PredictionLog, connect
from store.replay import render, replay
from tests.log_rows import record_one
from tests.runtime.test_chain_config import CONTEXT

LABELS = [str(d) for d in range(10)]
LABELS_OF = {"classguard-baseline": LABELS, "classguard-retrained": LABELS}
BASE, RETRAINED = "classguard-baseline:v1", "classguard-retrained:v1"
PHONE, SCANNER = "capture=phone", "capture=scanner"

ALLOW_ALL = [{"type": "allow_all"}]
SUPPRESS_ZERO_ON_PHONE = [{"type": "suppress_labels", "labels": ["0"], "subgroups": [PHONE], "floor": 0.2}]
ROUTE_PHONE = [{"type": "route", "target": "classguard-retrained", "subgroups": [PHONE]}]
ROUTE_UNSURE = [{"type": "route", "target": "classguard-retrained", "flags": ["low_confidence"]}]


def probs(**mass: float) -> np.ndarray:
    """A probability vector with the given mass on labels `_0`..`_9`, the rest spread evenly."""
    p = np.zeros(10)
    for label, value in mass.items():
        p[int(label[1:])] = value
    rest = [i for i in range(10) if p[i] == 0]
    p[rest] = (1.0 - p.sum()) / len(rest)
    return p


# request id, subgroup, model, probabilities, flags, true label (None: no feedback)
ROWS = [
    ("p-fallback", PHONE, BASE, probs(_0=0.70, _6=0.25), [], "6"),  # 0 suppressed, 6 reaches the floor
    ("p-abstain", PHONE, BASE, probs(_0=0.90), [], "7"),  # 0 suppressed, nothing else reaches it
    ("p-three", PHONE, BASE, probs(_3=0.80), [], "3"),
    ("p-retrained", PHONE, RETRAINED, probs(_5=0.80), [], None),  # already answered by the route target
    ("s-zero", SCANNER, BASE, probs(_0=0.85), [], "0"),  # 0, but not on phone
    ("s-unsure", SCANNER, BASE, probs(_4=0.40, _9=0.35), ["low_confidence"], None),
]


def record(log: PredictionLog, request_id: str, subgroup: str, model: str, p: np.ndarray, flags: list[str], *,
           abstained: bool = False) -> None:
    best = int(np.argmax(p))
    response = {"request_id": request_id, "label": None if abstained else LABELS[best],
                "confidence": 0.0 if abstained else float(p[best]), "abstained": abstained, "flags": flags,
                "guardrails": [{"guardrail": "abstain_below", "action": "abstain", "reason": "x"}] if abstained else [],
                "top_k": []}
    record_one(log, response, p, "hash", model, subgroup)


@pytest.fixture
def conn(tmp_path):
    """ROWS logged just now with their feedback, and one more phone answer of "0" logged 2 h ago."""
    path = tmp_path / "p.sqlite"
    log = PredictionLog(LogConfig(path=path))
    for request_id, subgroup, model, p, flags, _ in ROWS:
        record(log, request_id, subgroup, model, p, flags)
    record(log, "old", PHONE, BASE, probs(_0=0.9), [])
    log.flush()
    conn = connect(path)
    conn.execute("UPDATE predictions SET ts = ts - 7200 WHERE request_id = 'old'")
    conn.commit()
    items = [(request_id, truth) for request_id, *_, truth in ROWS if truth is not None]
    assert {r["result"] for r in feedback.record(conn, items, LABELS_OF, [])} == {"recorded"}
    return conn


def replayed(conn, specs, name="candidate", **kwargs):
    return replay(conn, compile_chain(specs, name, CONTEXT), LABELS_OF, since=time.time() - 3600, **kwargs)


def test_allow_all_changes_nothing(conn):
    """allow_all over answers logged without guardrail changes: no answer changes, accuracy after
    equals accuracy before in every subgroup, and the answer a route target gave is reported as
    one the primary would give instead (not replayable without the image)."""
    report = replayed(conn, ALLOW_ALL, "allow_all")
    assert (report["profile"], report["rows"], report["changes"]) == ("allow_all", 6, {})
    assert report["would_route"] == {"classguard-baseline": 1}
    for key, stats in report["subgroups"].items():
        assert stats.get("changed", 0) == 0 and stats["replayed"] == stats["rows"] - (key == PHONE)
        assert stats["right_after"] == stats["right_before"] and stats["abstained_after"] == 0


def test_suppress_labels_changes_exactly_the_suppressed_answers(conn):
    """Suppressing 0 on phone changes the two phone answers of 0 (one falls back to 6, one
    abstains), none on scanner, and the feedback scores phone 1 of 3 right before, 2 of 3 after;
    the row older than `since` is left out."""
    chain = compile_chain(SUPPRESS_ZERO_ON_PHONE, "no_zero", CONTEXT)
    report = replay(conn, chain, LABELS_OF, since=time.time() - 3600)
    assert (report["profile"], report["hash"], report["rows"]) == ("no_zero", chain.config_hash, 6)
    assert report["changes"] == {"0->6": 1, "0->abstained": 1}
    phone, scanner = report["subgroups"][PHONE], report["subgroups"][SCANNER]
    assert {k: phone[k] for k in ("rows", "replayed", "changed", "abstained_before", "abstained_after")} == \
           {"rows": 4, "replayed": 3, "changed": 2, "abstained_before": 0, "abstained_after": 1}
    assert (phone["with_feedback"], phone["right_before"], phone["right_after"]) == (3, 1, 2)
    assert scanner.get("changed", 0) == 0 and (scanner["with_feedback"], scanner["right_before"],
                                               scanner["right_after"]) == (1, 1, 1)


def test_filters_choose_the_rows_replayed(conn):
    """`subgroup` keeps one subgroup's rows; without `since` the older row is replayed too."""
    only_scanner = replayed(conn, SUPPRESS_ZERO_ON_PHONE, subgroup=SCANNER)
    assert only_scanner["rows"] == 2 and list(only_scanner["subgroups"]) == [SCANNER]
    everything = replay(conn, compile_chain(SUPPRESS_ZERO_ON_PHONE, "x", CONTEXT), LABELS_OF)
    assert everything["rows"] == 7 and everything["changes"] == {"0->abstained": 2, "0->6": 1}


def test_a_route_is_reported_as_would_route_not_replayed(conn):
    """A route to another model cannot be replayed without the images: the three phone rows the
    baseline answered count as "would route", the one the target answered is replayed."""
    report = replayed(conn, ROUTE_PHONE)
    assert report["would_route"] == {"classguard-retrained": 3}
    phone = report["subgroups"][PHONE]
    assert (phone["rows"], phone["would_route"], phone["replayed"]) == (4, 3, 1)
    assert "would_route" not in report["subgroups"][SCANNER] and report["changes"] == {}


def test_a_flag_conditioned_route_reads_the_logged_flags(conn):
    """A route on `low_confidence` would route exactly the one answer logged with that flag (and
    the answer the target gave without the flag would now be the primary's)."""
    report = replayed(conn, ROUTE_UNSURE)
    assert report["would_route"] == {"classguard-retrained": 1, "classguard-baseline": 1}
    assert report["subgroups"][SCANNER]["would_route"] == 1 and report["subgroups"][PHONE]["would_route"] == 1


def test_a_confusion_guard_reads_the_logged_confusion_flags(tmp_path):
    """confusion_guard abstains on the answer logged with a known-confusion flag and on no other:
    replay hands each answer its logged flags."""
    log = PredictionLog(LogConfig(path=tmp_path / "p.sqlite"))
    record(log, "flagged", PHONE, BASE, probs(_0=0.6, _6=0.3), ["known_confusion:6->0"])
    record(log, "clean", PHONE, BASE, probs(_0=0.6, _6=0.3), [])
    log.flush()
    report = replayed(connect(tmp_path / "p.sqlite"), [{"type": "confusion_guard", "action": "abstain"}])
    assert report["changes"] == {"0->abstained": 1} and report["subgroups"][PHONE]["abstained_after"] == 1


def test_allow_all_undoes_what_the_live_chain_changed(tmp_path):
    """An answer the live chain abstained on comes back, under allow_all, as the model's own
    top label: replay starts from the model's probabilities, not from the logged answer."""
    log = PredictionLog(LogConfig(path=tmp_path / "p.sqlite"))
    record(log, "held-back", PHONE, BASE, probs(_2=0.6), [], abstained=True)
    log.flush()
    report = replayed(connect(tmp_path / "p.sqlite"), ALLOW_ALL)
    assert report["changes"] == {"abstained->2": 1}
    assert report["subgroups"][PHONE]["abstained_before"] == 1 and report["subgroups"][PHONE]["abstained_after"] == 0


def test_render_shows_each_subgroup_accuracy_and_changes(conn):
    """render(): a header naming profile, hash and rows; a line per subgroup with accuracy
    before and after; the changes; and the would-route line when a chain routes."""
    chain = compile_chain(SUPPRESS_ZERO_ON_PHONE, "no_zero", CONTEXT)
    text = render(replay(conn, chain, LABELS_OF, since=time.time() - 3600))
    lines = text.splitlines()
    assert lines[0] == f"replay of profile no_zero ({chain.config_hash}) over 6 logged predictions"
    assert lines[1] == "would be answered by another model (not replayable without the images): 1 to classguard-baseline"
    [phone] = [line for line in lines if line.startswith(PHONE)]
    assert phone.split() == [PHONE, "3", "2", "0", "1", "3", "33.3%", "66.7%"]
    [scanner] = [line for line in lines if line.startswith(SCANNER)]
    assert scanner.split() == [SCANNER, "2", "0", "0", "0", "1", "100.0%", "100.0%"]
    assert lines[-1] == "answers changed (before->after): 0->6 x1, 0->abstained x1"
    routed = render(replayed(conn, ROUTE_PHONE))
    assert "would be answered by another model (not replayable without the images): 3 to classguard-retrained" in routed


def test_rows_of_a_version_with_other_classes_are_counted_not_replayed(tmp_path):
    """Rows an earlier version of the same model logged with 12 classes (the loaded one has 10)
    are reported as `other_classes` and left out, instead of ending the replay in an IndexError;
    the 10-class rows beside them replay as usual."""
    path = tmp_path / "p.sqlite"
    log = PredictionLog(LogConfig(path=path))
    twelve = np.full(12, 0.02)
    twelve[11] = 0.78
    record_one(log, {"request_id": "old-version", "label": "11", "confidence": 0.78, "abstained": False, "flags": [],
                     "guardrails": [], "top_k": []}, twelve, "hash", "classguard-baseline:v0", PHONE)
    record(log, "this-version", PHONE, BASE, probs(_0=0.9), [])
    log.flush()
    report = replay(connect(path), compile_chain(SUPPRESS_ZERO_ON_PHONE, "no_zero", CONTEXT), LABELS_OF)
    assert report["rows"] == 2 and report["other_classes"] == {"classguard-baseline": 1}
    assert report["subgroups"][PHONE] | {} == {"rows": 2, "other_classes": 1, "replayed": 1, "changed": 1,
                                               "abstained_before": 0, "abstained_after": 1}
    assert "1 of classguard-baseline" in render(report)
