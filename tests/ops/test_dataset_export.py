"""`classguard dataset export` never writes outside its folder: class names that could leave or
hide are refused, and so is a class folder that is a symlink to elsewhere."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.config import CaptureConfig, LogConfig
from ops.cli import main as cli
from ops.commands import dataset
from ops.commands.dataset import class_folder, inside
from store import inputs
from store.prediction_log import PredictionLog, connect


@pytest.mark.parametrize("label", ["..", ".", "...", "../x", "a/b", "/etc", "", "_unlabelled", "_x", "a\\b",
                                   "x" * 81, "a\x00b", "café"])
def test_class_names_that_could_leave_or_hide_are_refused(label):
    """All-dot names, separators, absolute paths, empty, `_`-prefixed (the readers skip those),
    over-long and non-ASCII names cannot be a class folder."""
    with pytest.raises(ValueError):
        class_folder(label)


@pytest.mark.parametrize("label", ["3", "cat", "class-1.v2", "A_b"])
def test_plain_class_names_are_their_own_folder(label):
    """Ordinary class names are used as they are."""
    assert class_folder(label) == label


def test_inside_refuses_paths_resolving_outside_the_folder(tmp_path):
    """`..` and a symlinked class folder pointing outside are refused; a plain class folder is not."""
    root, outside = tmp_path / "export", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    assert inside(root, Path("3") / "a.png") == root / "3" / "a.png"
    with pytest.raises(ValueError):
        inside(root, Path("..") / "a.png")
    (root / "7").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError):
        inside(root, Path("7") / "a.png")


def store_with_labels(tmp_path: Path, labels: list[str]) -> Path:
    """A SQLite log whose answers r0, r1, ... kept their input and carry these true labels."""
    db = tmp_path / "p.sqlite"
    log = PredictionLog(LogConfig(path=db), capture=CaptureConfig(policy="all"))
    buffer = io.BytesIO()
    Image.fromarray(np.eye(8, dtype=np.uint8) * 255).save(buffer, format="PNG")
    for i in range(len(labels)):
        answer = {"request_id": f"r{i}", "label": "7", "confidence": 0.9, "abstained": False, "flags": [],
                  "guardrails": [], "top_k": []}
        log.record_many([answer], [np.full(10, 0.1)], "h", ["base:v1"], ["capture=phone"], [buffer.getvalue()],
                        ["r01"])
    log.flush()
    conn = connect(db)
    with conn.transaction():  # written straight into the table: the feedback route accepts only known classes
        conn.executemany("INSERT INTO feedback (request_id, label, ts) VALUES (?, ?, 0)",
                         [(f"r{i}", label) for i, label in enumerate(labels)])
    conn.close()
    return db


def files_under(path: Path) -> list[str]:
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*"))


def test_export_through_a_symlinked_class_folder_writes_nothing_outside(tmp_path, capsys):
    """Exporting again into an earlier export whose class folder `7` was replaced by a symlink to
    another folder fails with status 2, and that other folder stays empty."""
    db = store_with_labels(tmp_path, ["7", "7"])
    out, outside = tmp_path / "export", tmp_path / "elsewhere"
    assert cli(["dataset", "export", "--db", str(db), "-o", str(out)]) == 0
    assert files_under(out / "7") == ["r0.png", "r1.png"]
    for png in (out / "7").iterdir():
        png.unlink()
    (out / "7").rmdir()
    outside.mkdir()
    (out / "7").symlink_to(outside, target_is_directory=True)
    assert cli(["dataset", "export", "--db", str(db), "-o", str(out)]) == 2
    assert "outside" in capsys.readouterr().err
    assert files_under(outside) == []


def test_a_stored_label_of_dots_is_refused_and_nothing_leaves_the_folder(tmp_path, capsys):
    """A true label `..` in the store (not possible through POST /feedback, whose labels are the
    model's classes) makes the export fail with status 2, writing nothing beside the folder."""
    db = store_with_labels(tmp_path, [".."])
    before = files_under(tmp_path)
    out = tmp_path / "export"
    assert cli(["dataset", "export", "--db", str(db), "-o", str(out)]) == 2
    assert "cannot be a folder name" in capsys.readouterr().err
    assert [f for f in files_under(tmp_path) if not f.startswith("export")] == before
    assert not list(out.rglob("*.png"))


def test_inputs_evicted_while_exporting_are_skipped_and_counted(tmp_path, monkeypatch, capsys):
    """Pages of 2, and the last input of the first page evicted between its listing and its
    fetch: the export goes on with the next page, writes the other four, and says one vanished."""
    db = store_with_labels(tmp_path, ["1", "2", "3", "4", "5"])
    fetch = dataset.StoreSource.png

    def evicted_first(self, request_id):
        if request_id == "r1":
            inputs.erase(self.conn, request_ids=[request_id])
        return fetch(self, request_id)

    monkeypatch.setattr(dataset, "PAGE", 2)
    monkeypatch.setattr(dataset.StoreSource, "png", evicted_first)
    out = tmp_path / "export"
    assert cli(["dataset", "export", "--db", str(db), "-o", str(out)]) == 0
    assert files_under(out) == ["1", "1/r0.png", "3", "3/r2.png", "4", "4/r3.png", "5", "5/r4.png",
                                "manifest.jsonl", "subgroups.csv"]
    assert "1 evicted or erased while exporting" in capsys.readouterr().out


def test_exporting_again_drops_what_the_store_no_longer_has(tmp_path, capsys):
    """An input erased after a first export is gone from the folder after the second export into
    the same folder (its PNG and its empty class folder), not left behind as training data."""
    db = store_with_labels(tmp_path, ["1", "2"])
    out = tmp_path / "export"
    assert cli(["dataset", "export", "--db", str(db), "-o", str(out)]) == 0
    conn = connect(db)
    inputs.erase(conn, request_ids=["r1"])
    conn.close()
    assert cli(["dataset", "export", "--db", str(db), "-o", str(out)]) == 0
    assert files_under(out) == ["1", "1/r0.png", "manifest.jsonl", "subgroups.csv"]
