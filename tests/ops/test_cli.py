"""`classguard log`: list, show, summary and confusion read a prediction log file (--db), in
each output format, and a lookup that cannot answer is a one-line error with exit 2."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from core.config import LogConfig
from ops.cli import main
from store import feedback
from store.prediction_log import PredictionLog, connect
from tests.log_rows import record_one

LABELS_OF = {"base": [str(d) for d in range(10)]}
ALLOW = [{"guardrail": "allow_all", "action": "allow", "reason": "x"}]
SUPPRESS = [{"guardrail": "suppress_labels", "action": "suppress", "reason": "x"},
            {"guardrail": "suppress_labels", "action": "fallback_label", "reason": "x"}]
# request id, correlation id, subgroup, label, flags, guardrail decisions, true label (None: no feedback)
ROWS = [
    ("r1", "order-1", "capture=phone", "3", ["low_confidence"], ALLOW, "3"),
    ("r2", "order-2", "capture=scanner", "5", [], ALLOW, "6"),
    ("r3", "dup", "capture=phone", "0", ["known_confusion:6->0"], SUPPRESS, "6"),
    ("r4", "dup", "capture=scanner", "7", [], ALLOW, None),  # a client reusing its correlation id
]


REGIONS = {"r1": "r03", "r2": None, "r3": "r03", "r4": "novel"}  # the primary's region of each image


@pytest.fixture
def db(tmp_path) -> str:
    path = tmp_path / "p.sqlite"
    log = PredictionLog(LogConfig(path=path))
    for request_id, correlation_id, subgroup, label, flags, guardrails, _ in ROWS:
        record_one(log, {"request_id": request_id, "correlation_id": correlation_id, "label": label, "confidence": 0.6,
                         "abstained": False, "flags": flags, "guardrails": guardrails,
                         "top_k": [{"label": label, "probability": 0.6}]},
                   np.full(10, 0.04) + np.eye(10)[int(label)] * 0.56, "hash1", "base:v1", subgroup,
                   region=REGIONS[request_id])
    log.flush()
    items = [(request_id, truth) for request_id, *_, truth in ROWS if truth is not None]
    feedback.record(connect(path), items, LABELS_OF, [])
    return str(path)


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    assert "Traceback" not in err and err.startswith("classguard log: error: ") and err.count("\n") == 1, err
    return err


def test_list_as_a_table_newest_first(db, capsys):
    """`log list`: one line per answer, newest first, with id, subgroup, region, model, label, flags and
    actions; --region keeps the answers the primary placed in that region."""
    code, out, err = run(capsys, "log", "list", "--db", db)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert [line.split()[1] for line in lines] == ["r4", "r3", "r2", "r1"]
    assert lines[1].split()[2:] == ["capture=phone", "r03", "base", "0", "0.600", "known_confusion:6->0",
                                    "suppress,fallback_label"]
    assert lines[0].split()[-2:] == ["-", "allow"]  # no flags
    assert lines[2].split()[3] == "-"  # no region
    code, out, _ = run(capsys, "log", "list", "--db", db, "--region", "r03")
    assert [line.split()[1] for line in out.splitlines()] == ["r3", "r1"]


def test_list_as_json_jsonl_and_csv(db, capsys):
    """--format json, jsonl and csv carry the same rows and columns (no probabilities)."""
    code, out, _ = run(capsys, "log", "list", "--db", db, "--format", "json")
    records = json.loads(out)
    assert code == 0 and [r["request_id"] for r in records] == ["r4", "r3", "r2", "r1"]
    assert records[1]["flags"] == ["known_confusion:6->0"] and records[1]["correlation_id"] == "dup"
    assert "probs" not in records[0]
    _, out, _ = run(capsys, "log", "list", "--db", db, "--format", "jsonl")
    assert [json.loads(line) for line in out.splitlines()] == records
    _, out, _ = run(capsys, "log", "list", "--db", db, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert out.startswith("request_id,correlation_id,ts,subgroup,")
    assert [r["request_id"] for r in rows] == ["r4", "r3", "r2", "r1"]
    assert json.loads(rows[1]["guardrails"]) == records[1]["guardrails"] and rows[1]["label"] == "0"


@pytest.mark.parametrize("filters, expected", [
    (["--correlation-id", "dup"], ["r4", "r3"]),
    (["--correlation-id", "order-1"], ["r1"]),
    (["--correlation-id", "nobody"], []),
    (["--subgroup", "capture=scanner"], ["r4", "r2"]),
    (["--flag", "low_confidence"], ["r1"]),
    (["--action-taken", "fallback_label"], ["r3"]),
    (["--flagged"], ["r3", "r1"]),
    (["--limit", "2"], ["r4", "r3"]),
])
def test_list_filters(db, capsys, filters, expected):
    """Each filter keeps exactly the answers it names."""
    code, out, _ = run(capsys, "log", "list", "--db", db, "--format", "json", *filters)
    assert code == 0 and [r["request_id"] for r in json.loads(out)] == expected


@pytest.mark.parametrize("key", ["r3", "order-1"])
def test_show_prints_one_answers_full_record(db, capsys, key):
    """`log show` by request id, or by a correlation id naming one answer: that answer as JSON,
    with its probabilities."""
    code, out, err = run(capsys, "log", "show", key, "--db", db)
    record = json.loads(out)
    assert (code, err) == (0, "")
    assert record["request_id"] == {"r3": "r3", "order-1": "r1"}[key]
    assert len(record["probs"]) == 10 and record["probs"][int(record["label"])] == pytest.approx(0.6)


def test_show_of_an_unknown_id_is_a_one_line_error(db, capsys):
    """An id nothing was logged under: exit 2, nothing on stdout, one stderr line naming it."""
    code, out, err = run(capsys, "log", "show", "nope", "--db", db)
    assert (code, out) == (2, "")
    assert "'nope'" in one_line_error(err)


def test_show_of_a_correlation_id_naming_two_answers_lists_both(db, capsys):
    """A correlation id reused for two answers: exit 2 and one line listing both request ids."""
    code, out, err = run(capsys, "log", "show", "dup", "--db", db)
    assert (code, out) == (2, "")
    assert one_line_error(err).rstrip().endswith("show one of: r4, r3")


@pytest.mark.parametrize("args, message", [
    (["log", "show"], "show needs a REQUEST_ID"),
    (["log", "list", "--since", "soon"], "expected e.g. 15m"),
])
def test_bad_arguments_are_one_line_errors(db, capsys, args, message):
    """`show` without an id, or a --since that is no time: exit 2 with the reason."""
    code, _, err = run(capsys, *args, "--db", db)
    assert code == 2 and message in one_line_error(err)


def test_a_missing_log_file_is_a_one_line_error(tmp_path, capsys):
    """--db naming no file: exit 2 saying so (and no empty log is created there)."""
    missing = tmp_path / "none.sqlite"
    code, _, err = run(capsys, "log", "list", "--db", str(missing))
    assert code == 2 and f"no prediction log at {missing}" in one_line_error(err)
    assert not missing.exists()


def test_summary_counts_answers_per_subgroup_and_flag(db, capsys):
    """`log summary`: one line per (subgroup, flag), `(none)` for answers without a flag."""
    code, out, _ = run(capsys, "log", "summary", "--db", db)
    assert code == 0
    assert sorted(tuple(line.split()) for line in out.splitlines()) == [
        ("capture=phone", "known_confusion:6->0", "1"), ("capture=phone", "low_confidence", "1"),
        ("capture=scanner", "(none)", "2")]


def test_confusion_matrix_counts_answers_with_feedback(db, capsys):
    """`log confusion`: true label x answered label over the 3 answers with feedback, 1 right; --subgroup,
    --region and --until narrow it."""
    code, out, _ = run(capsys, "log", "confusion", "--db", db)
    lines = out.splitlines()
    assert code == 0 and lines[-1] == "3 answers with feedback, 1 right (33.3%)"
    answered = lines[0].split()[3:]  # after "true \ answered"
    matrix = {line.split()[0]: dict(zip(answered, map(int, line.split()[1:]))) for line in lines[1:-2]}
    assert matrix == {"3": {"0": 0, "3": 1, "5": 0}, "6": {"0": 1, "3": 0, "5": 1}}
    _, out, _ = run(capsys, "log", "confusion", "--db", db, "--subgroup", "capture=scanner")
    assert out.splitlines()[-1] == "1 answers with feedback, 0 right (0.0%)"
    _, out, _ = run(capsys, "log", "confusion", "--db", db, "--region", "r03")  # r1 (right) and r3 (wrong)
    assert out.splitlines()[-1] == "2 answers with feedback, 1 right (50.0%)"
    _, out, _ = run(capsys, "log", "confusion", "--db", db, "--until", "0")
    assert out.splitlines()[-1] == "0 answers with feedback, 0 right (0.0%)"


@pytest.mark.parametrize("args", [["log", "list", "--limit", "-1"], ["log", "list", "--limit", "0"],
                                  ["log", "list", "--limit", "lots"], ["guardrails", "history", "--limit", "-1"],
                                  ["regions", "--top", "0"], ["regions", "--exemplars", "-3"]])
@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_a_count_that_is_not_a_positive_whole_number_is_a_usage_error(db, capsys, request, args, engine):
    """A --limit (or --top, --exemplars) below its floor or not a number exits 2 with the
    reason before any store is read, on either engine (PostgreSQL's had ended in a psycopg
    traceback; SQLite's read every row)."""
    target = db if engine == "sqlite" else request.getfixturevalue("pg_url")
    with pytest.raises(SystemExit) as stopped:
        main([*args, *(["--db", target] if args[0] != "regions" else [])])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "must be a whole number from" in err and "Traceback" not in err
