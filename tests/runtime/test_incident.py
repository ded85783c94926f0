"""The incident page's data (runtime.incident.gather) from a real SQLite log: which captured
inputs make its contact sheets."""

from __future__ import annotations

import numpy as np

from core.config import CaptureConfig, LogConfig
from monitors.estimates import PublishedEstimate
from runtime.incident import SHEET_SIZE, gather
from store.prediction_log import PredictionLog, connect

def png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.eye(8, dtype=np.uint8) * 200).save(buffer, format="PNG")
    return buffer.getvalue()


def answered(log: PredictionLog, rid: str, subgroup: str, label: str, flags=()) -> None:
    probs = np.full(10, 0.02, np.float32)
    probs[int(label)] = 0.82
    response = {"request_id": rid, "label": label, "confidence": 0.82, "abstained": False, "flags": list(flags),
                "guardrails": [], "top_k": []}
    log.record_many([response], [probs], "h", ["base:v1"], [subgroup], [png()], [None])


def page_of(tmp_path, truths: dict[str, str]) -> dict:
    conn = connect(tmp_path / "p.sqlite")
    with conn.transaction():
        conn.executemany("INSERT INTO feedback (request_id, label, ts) VALUES (?, ?, 0)", truths.items())

    def read(fn, *args, **kwargs):
        return fn(conn, *args, **kwargs)

    return gather(read, since=0.0, until=4e9, now=4e9, service="base:v1", log_mode="all", capture_policy="all",
                  training_shares={}, estimates={"base": PublishedEstimate(1.0)}, region_names=[], region_references=[],
                  alarming=[], history=[])


def test_sheets_show_mistakes_first_and_skip_groups_doing_better_than_the_mix(tmp_path):
    """Phone: 30 right answers, then 10 wrong ones (4 flagged); scanner: 40 right. The phone sheet
    starts with all 10 mistakes (though they are the newest, past the first 24 kept), the flag
    sheet with its 4, and the scanner group, better than the whole mix, gets no sheet."""
    log = PredictionLog(LogConfig(path=tmp_path / "p.sqlite"), capture=CaptureConfig(policy="all"))
    truths = {}
    for i in range(40):
        answered(log, f"s{i:03d}", "capture=scanner", "1")
        truths[f"s{i:03d}"] = "1"
    for i in range(30):
        answered(log, f"p{i:03d}", "capture=phone", "6")
        truths[f"p{i:03d}"] = "6"
    log.flush()
    for i in range(30, 40):
        answered(log, f"p{i:03d}", "capture=phone", "0", flags=["known_confusion:6->0"] if i % 3 == 0 else [])
        truths[f"p{i:03d}"] = "6"
    log.flush()
    page = page_of(tmp_path, truths)
    sheets = {s["title"]: s["inputs"] for s in page["sheets"]}
    assert set(sheets) == {"subgroup capture=phone", "flag known_confusion:6->0"}
    phone = sheets["subgroup capture=phone"]
    assert len(phone) == SHEET_SIZE
    assert {i["request_id"] for i in phone[:10]} == {f"p{i:03d}" for i in range(30, 40)}
    assert all(i["truth"] != i["predicted"] for i in phone[:10])
    assert all(i["truth"] == i["predicted"] for i in phone[10:])
    assert [i["request_id"] for i in sheets["flag known_confusion:6->0"]] == ["p039", "p036", "p033", "p030"]
    assert all(bytes(i["thumbnail"]).startswith(b"\x89PNG") for s in sheets.values() for i in s)
    assert set(page["traces"]) == {i["request_id"] for s in sheets.values() for i in s}
