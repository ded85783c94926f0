"""Captured inputs: which answers keep their image (each policy), the queue's byte bound, what is
stored of an upload, eviction, retention, erasure, and what is served back (a fresh PNG)."""

from __future__ import annotations

import io
import sqlite3
import time

import numpy as np
import pytest
from PIL import Image
from prometheus_client import REGISTRY

from core.config import CaptureConfig, LogConfig
from store import inputs
from store.capture import NPY, Capture, Pending, thumbnail
from store.prediction_log import PredictionLog, connect

POLYGLOT_TAIL = b"<html><body><script>alert(1)</script></body></html>"


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def noise_png(side: int, seed: int) -> bytes:
    """A PNG that does not compress: about side * side bytes."""
    return png(np.random.default_rng(seed).integers(0, 256, (side, side), dtype=np.uint8))


DIGIT = png((np.arange(64).reshape(8, 8) * 4).astype(np.uint8))


def response(i: int, *, flags=(), abstained=False) -> dict:
    return {"request_id": f"r{i:04d}", "label": None if abstained else "3", "confidence": 0.5,
            "abstained": abstained, "flags": list(flags), "guardrails": [], "top_k": []}


def new_log(tmp_path, **capture) -> PredictionLog:
    return PredictionLog(LogConfig(path=tmp_path / "p.sqlite"), capture=CaptureConfig(**capture))


def answer(log: PredictionLog, i: int, image=DIGIT, *, region: str | None = "r01", subgroup="capture=phone",
           **kwargs) -> str:
    """Queue one answered upload; its request id."""
    one = response(i, **kwargs)
    log.record_many([one], [np.full(10, 0.1)], "h", ["base:v1"], [subgroup], [image], [region])
    return one["request_id"]


def kept(tmp_path) -> dict[str, str]:
    """request id -> why, of every stored input."""
    return dict(connect(tmp_path / "p.sqlite").execute("SELECT request_id, reason FROM inputs"))


def counter(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def pending(request_id: str, size: int) -> Pending:
    return Pending(request_id, 0.0, "base", "capture=phone", None, "all", b"\0" * size)


# -- policies ----------------------------------------------------------------------------------
def test_flagged_policy_keeps_only_flagged_abstained_and_novel(tmp_path):
    """capture.policy=flagged keeps a flagged answer, an abstention and an input in the novel
    region, and nothing of a plain answer."""
    log = new_log(tmp_path, policy="flagged")
    answer(log, 0)
    flagged = answer(log, 1, flags=["low_confidence"])
    abstained = answer(log, 2, abstained=True)
    novel = answer(log, 3, region="novel")
    log.flush()
    assert kept(tmp_path) == {flagged: "flagged", abstained: "flagged", novel: "flagged"}


def test_stratified_caps_each_stratum_per_period_and_resets_next_period():
    """per_stratum=2: the third answer of a model x subgroup x region in one period is not kept,
    another stratum has its own budget, and a later period starts whole again."""
    capture = Capture(CaptureConfig(policy="stratified", per_stratum=2, stratum_seconds=60))
    phone = [capture.reason("base", "capture=phone", "r01", False, now=t) for t in (0, 1, 2)]
    assert phone == ["stratified", "stratified", None]
    assert capture.reason("base", "capture=scanner", "r01", False, now=3) == "stratified"
    assert capture.reason("base", "capture=phone", "r02", False, now=4) == "stratified"
    assert capture.reason("other", "capture=phone", "r01", False, now=5) == "stratified"
    assert capture.reason("base", "capture=phone", "r01", True, now=6) is None  # flagged, but the stratum is full
    assert capture.reason("base", "capture=phone", "r01", True, now=120) == "flagged"  # a period later
    assert capture.reason("base", "capture=phone", "r01", False, now=121) == "stratified"
    assert capture.reason("base", "capture=phone", "r01", False, now=122) is None


def test_stratified_spreads_a_busy_strata_budget_over_the_next_period():
    """A stratum that answered 1,000 times in a period keeps its first 50 in the first period, and
    in the next about 50 spread over the whole period (not its first minutes); a stratum new in
    the second period is kept from its first answer."""
    capture = Capture(CaptureConfig(policy="stratified", per_stratum=50, stratum_seconds=3600), seed=1)
    times = np.linspace(0, 3600, 1000, endpoint=False)
    first = [t for t in times if capture.reason("base", "capture=phone", "r01", False, now=t)]
    assert len(first) == 50 and max(first) < 200
    second = [t for t in times + 3600 if capture.reason("base", "capture=phone", "r01", False, now=t)]
    assert 40 <= len(second) <= 50 and min(second) < 3600 + 600 and max(second) > 3600 + 2400
    new = [t for t in times[:5] + 3600 if capture.reason("base", "capture=scanner", "r09", False, now=t)]
    assert len(new) == 5


def test_stratified_log_stores_per_stratum_inputs(tmp_path):
    """Through the log: 5 answers of one stratum and 1 of another keep 2 + 1 inputs at per_stratum=2."""
    log = new_log(tmp_path, policy="stratified", per_stratum=2)
    for i in range(5):
        answer(log, i)
    rare = answer(log, 5, subgroup="capture=scanner")
    log.flush()
    assert sorted(kept(tmp_path)) == ["r0000", "r0001", rare]


def test_policy_all_keeps_every_answer_and_off_keeps_none(tmp_path):
    """policy=all keeps each logged answer's input; policy=off (the default) keeps none, not even flagged ones."""
    (tmp_path / "all").mkdir()
    every = new_log(tmp_path / "all", policy="all")
    for i in range(4):
        answer(every, i, flags=["low_confidence"] if i % 2 else ())
    every.flush()
    assert kept(tmp_path / "all") == {f"r{i:04d}": "all" for i in range(4)}
    (tmp_path / "off").mkdir()
    off = new_log(tmp_path / "off")
    answer(off, 0, flags=["low_confidence"])
    answer(off, 1, region="novel")
    assert off.flush() == 2
    assert kept(tmp_path / "off") == {}
    assert Capture(CaptureConfig()).reason("base", "capture=phone", "novel", True, now=0.0) is None


# -- the queue ---------------------------------------------------------------------------------
def test_queue_bound_in_bytes_drops_and_counts():
    """queue_bytes=100,000: of three 40,000-byte inputs two are queued, the third dropped and
    counted as queue_full; taking the queue makes room again."""
    capture = Capture(CaptureConfig(policy="all", queue_bytes=100_000))
    before = counter("classguard_inputs_dropped_total", reason="queue_full")
    capture.offer([pending(f"q{i}", 40_000) for i in range(3)])
    assert counter("classguard_inputs_dropped_total", reason="queue_full") == before + 1
    assert [p.request_id for p in capture.take()] == ["q0", "q1"]
    capture.offer([pending("q3", 90_000)])
    assert [p.request_id for p in capture.take()] == ["q3"]


# -- what is stored -----------------------------------------------------------------------------
def test_keep_thumbnails_stores_no_original(tmp_path):
    """keep=thumbnails: the row has a PNG thumbnail and neither the upload nor its media type."""
    log = new_log(tmp_path, policy="all", keep="thumbnails")
    rid = answer(log, 0, noise_png(100, 1))
    log.flush()
    row = inputs.get(connect(tmp_path / "p.sqlite"), rid)
    assert row["original"] is None and row["media_type"] is None
    assert Image.open(io.BytesIO(row["thumbnail"])).size == (64, 64)
    assert row["bytes"] == len(row["thumbnail"])


def test_upload_over_max_original_bytes_keeps_only_its_thumbnail(tmp_path):
    """An upload larger than max_original_bytes is stored as its thumbnail alone, counted too_large;
    one under it keeps its exact bytes."""
    log = new_log(tmp_path, policy="all", max_original_bytes=2_000)
    before = counter("classguard_inputs_original_skipped_total", reason="too_large")
    big, small = noise_png(80, 2), DIGIT
    assert len(big) > 2_000 > len(small)
    big_id, small_id = answer(log, 0, big), answer(log, 1, small)
    log.flush()
    conn = connect(tmp_path / "p.sqlite")
    row = inputs.get(conn, big_id)
    assert row["original"] is None and row["media_type"] is None and row["thumbnail"].startswith(b"\x89PNG")
    assert counter("classguard_inputs_original_skipped_total", reason="too_large") == before + 1
    assert bytes(inputs.get(conn, small_id)["original"]) == small


def test_array_row_is_stored_as_npy_and_served_as_its_8_bit_pixels(tmp_path):
    """An `array` upload's row (float32 1 x 8 x 8) is kept as .npy, exactly; read back it is a
    PNG whose pixels are the row's 8-bit rendering."""
    row = np.random.default_rng(3).random((1, 8, 8), dtype=np.float32)
    log = new_log(tmp_path, policy="all")
    rid = answer(log, 0, row)
    log.flush()
    stored = inputs.get(connect(tmp_path / "p.sqlite"), rid)
    assert stored["media_type"] == NPY
    np.testing.assert_array_equal(np.load(io.BytesIO(stored["original"]), allow_pickle=False), row)
    served = Image.open(io.BytesIO(inputs.as_png(stored)))
    assert served.format == "PNG" and served.mode == "L"
    np.testing.assert_array_equal(np.asarray(served), np.clip(np.rint(row[0] * 255.0), 0, 255).astype(np.uint8))


def test_eviction_keeps_the_store_within_max_bytes_oldest_first(tmp_path):
    """max_bytes=1,000,000 and eight inputs of ~250 KB written one flush at a time: after each
    write the store holds at most 1,000,000 bytes, and what is left is the newest ones."""
    log = new_log(tmp_path, policy="all", max_bytes=1_000_000)
    conn = connect(tmp_path / "p.sqlite")
    before = counter("classguard_inputs_evicted_total")
    for i in range(8):
        answer(log, i, noise_png(500, i))
        log.flush()
        assert inputs.stored_bytes(conn) <= 1_000_000
    left = [r for (r,) in conn.execute("SELECT request_id FROM inputs ORDER BY ts, request_id")]
    assert left == [f"r{i:04d}" for i in range(8 - len(left), 8)] and 1 <= len(left) < 8
    assert counter("classguard_inputs_evicted_total") == before + 8 - len(left)
    assert conn.execute("SELECT COUNT(*) FROM predictions").fetchone()[0] == 8  # the answers stay


def test_retention_deletes_inputs_with_their_rows(tmp_path):
    """Rows past retention_days take their captured inputs with them."""
    log = PredictionLog(LogConfig(path=tmp_path / "p.sqlite", retention_days=1, retention_check_seconds=0.001),
                        capture=CaptureConfig(policy="all"))
    for i in range(5):
        answer(log, i)
    log.flush()
    conn = connect(tmp_path / "p.sqlite")
    assert conn.execute("SELECT COUNT(*) FROM inputs").fetchone()[0] == 5
    log.flush(now=time.time() + 2 * 86400)
    assert conn.execute("SELECT COUNT(*) FROM predictions").fetchone()[0] == 0
    assert conn.execute("SELECT COUNT(*) FROM inputs").fetchone()[0] == 0


# -- erasure -----------------------------------------------------------------------------------
def nothing_left(path, request_ids) -> None:
    """The database file, opened afresh with the standard library, has no input of these requests."""
    raw = sqlite3.connect(path)
    try:
        for rid in request_ids:
            assert raw.execute("SELECT count(*) FROM inputs WHERE request_id=?", (rid,)).fetchone()[0] == 0
            assert raw.execute("SELECT * FROM inputs WHERE request_id=?", (rid,)).fetchall() == []
    finally:
        raw.close()


def test_erase_by_id_leaves_no_row_and_keeps_the_others(tmp_path):
    """Erasing two request ids deletes their inputs (the file read directly finds none) and no other."""
    log = new_log(tmp_path, policy="all")
    ids = [answer(log, i) for i in range(4)]
    log.flush()
    before = counter("classguard_inputs_erased_total")
    assert log.read(inputs.erase, request_ids=ids[:2]) == 2
    nothing_left(tmp_path / "p.sqlite", ids[:2])
    assert sorted(kept(tmp_path)) == ids[2:]
    assert counter("classguard_inputs_erased_total") == before + 2


def test_erase_by_time_range_leaves_no_row_of_the_range(tmp_path):
    """Erasing [since, until] deletes the inputs answered within it, and only those."""
    log = new_log(tmp_path, policy="all")
    early = [answer(log, i) for i in range(3)]
    log.flush()
    time.sleep(0.05)
    middle = time.time()
    time.sleep(0.05)
    late = [answer(log, i) for i in range(3, 6)]
    log.flush()
    assert log.read(inputs.erase, since=middle, until=time.time() + 60) == 3
    nothing_left(tmp_path / "p.sqlite", late)
    assert sorted(kept(tmp_path)) == early


def test_erased_image_bytes_are_gone_from_the_database_files(tmp_path):
    """After an erase, with the service's writer connection still open, neither the database
    file nor its write-ahead log holds the erased upload's or thumbnail's bytes (a deleted row's
    content otherwise lingers in the WAL and in free pages)."""
    log = new_log(tmp_path, policy="all")
    ids = [answer(log, i, noise_png(40, i)) for i in range(20)]
    log.flush()
    row = inputs.get(connect(tmp_path / "p.sqlite"), ids[7])
    pieces = [bytes(row["original"])[100:164], bytes(row["thumbnail"])[100:164]]
    assert log.read(inputs.erase, request_ids=[ids[7]]) == 1
    files = sorted(tmp_path.glob("p.sqlite*"))
    assert files and not [(f.name, i) for f in files for i, piece in enumerate(pieces) if piece in f.read_bytes()]


def test_erase_needs_ids_or_a_range(tmp_path):
    """An erase naming nothing is refused instead of deleting everything."""
    log = new_log(tmp_path, policy="all")
    answer(log, 0)
    log.flush()
    with pytest.raises(ValueError):
        log.read(inputs.erase)
    assert len(kept(tmp_path)) == 1


# -- reading pages -----------------------------------------------------------------------------
def test_paging_continues_after_the_last_row_was_evicted_or_erased(tmp_path):
    """A page's last input erased (or evicted: the oldest go first, and pages are read oldest
    first) before the next page is asked for: the next page still starts after it, by request id
    or by (time, request id), instead of coming back empty as if the end was reached."""
    log = new_log(tmp_path, policy="all")
    ids = []
    for i in range(5):
        ids.append(answer(log, i))
        log.flush()
    conn = connect(tmp_path / "p.sqlite")
    first = inputs.query(conn, limit=2)
    assert [r["request_id"] for r in first] == ids[:2]
    inputs.erase(conn, request_ids=[ids[1]])
    assert [r["request_id"] for r in inputs.query(conn, after=ids[1], limit=2)] == ids[2:4]
    inputs.erase(conn, request_ids=[ids[3]])
    conn.execute("DELETE FROM predictions WHERE request_id = ?", (ids[3],))  # retention took its answer too
    assert [r["request_id"] for r in inputs.query(conn, after=(first[1]["ts"], ids[1]), limit=5)] == [ids[2], ids[4]]


def test_paging_erasing_and_totals_agree_on_both_engines(database, tmp_path):
    """On SQLite and PostgreSQL alike: pages continue past an erased input (by request id and by
    (ts, request id)), an id with no logged answer anchors nothing, a range erase takes only
    its range, and totals count answers, inputs and labels."""
    log = PredictionLog(LogConfig(path=tmp_path / "unused.sqlite"), database=database,
                        capture=CaptureConfig(policy="all"))
    ids = []
    for i in range(5):
        ids.append(answer(log, i, flags=["low_confidence"] if i == 4 else ()))
        log.flush()
    first = log.read(inputs.query, limit=2)
    assert log.read(inputs.erase, request_ids=[ids[1]]) == 1
    assert [r["request_id"] for r in log.read(inputs.query, after=ids[1], limit=2)] == ids[2:4]
    assert [r["request_id"] for r in log.read(inputs.query, after=(first[1]["ts"], ids[1]))] == ids[2:]
    assert log.read(inputs.anchored, ids[1]) and not log.read(inputs.anchored, "never-logged")
    assert [r["request_id"] for r in log.read(inputs.query, flag="low_confidence")] == [ids[4]]
    assert log.read(inputs.totals) == {"answers": 5, "captured": 4, "labelled": 0, "captured_and_labelled": 0}
    rows = log.read(inputs.query)
    assert log.read(inputs.erase, since=rows[1]["ts"], until=rows[2]["ts"]) == 2
    assert [r["request_id"] for r in log.read(inputs.query)] == [ids[0], ids[4]]


# -- what is served ----------------------------------------------------------------------------
def test_as_png_of_a_polyglot_drops_what_follows_the_image(tmp_path):
    """A PNG with HTML appended after IEND is served as a new PNG of the same pixels, without
    the HTML (the stored original keeps the upload as received)."""
    log = new_log(tmp_path, policy="all")
    rid = answer(log, 0, DIGIT + POLYGLOT_TAIL)
    log.flush()
    row = inputs.get(connect(tmp_path / "p.sqlite"), rid)
    assert bytes(row["original"]).endswith(POLYGLOT_TAIL)
    for served in (inputs.as_png(row), inputs.as_png(row, thumbnail_only=True)):
        assert b"<script" not in served and b"<html" not in served and served.startswith(b"\x89PNG")
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(served))),
                                      np.asarray(Image.open(io.BytesIO(DIGIT))))


def encoded(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


GRADIENT = np.arange(256, dtype=np.float64).reshape(16, 16) / 255.0
WIDE = {  # 16 x 16 gradients in the wide pixel formats the service scales to 8 bits
    "16-bit PNG": encoded((GRADIENT * 65535).astype(np.uint16), "PNG"),
    "float TIFF in [0, 1]": encoded(GRADIENT.astype(np.float32), "TIFF"),
    "float TIFF in [0, 255]": encoded((GRADIENT * 255).astype(np.float32), "TIFF"),
    "32-bit TIFF": encoded((GRADIENT * 400_000).astype(np.int32), "TIFF"),
}


@pytest.mark.parametrize("name", sorted(WIDE))
def test_wide_images_are_kept_as_the_model_saw_them_not_clipped(name):
    """A 16-bit, float or 32-bit grey gradient becomes a thumbnail (and a served PNG) with the
    very pixels the service gave the model: scaled to 8 bits, neither white nor black."""
    from monitors.reference import InputSpec
    from runtime.preprocess import decode_image, to_pixels

    upload = WIDE[name]
    seen = to_pixels(decode_image(upload, max_pixels=10_000, max_side=100), InputSpec(height=16, width=16))[0]
    assert seen.min() < 10 and seen.max() > 240
    small = np.asarray(Image.open(io.BytesIO(thumbnail(Image.open(io.BytesIO(upload)), 64))))
    np.testing.assert_array_equal(small, seen)
    row = {"original": upload, "media_type": "image/png", "thumbnail": b""}
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(inputs.as_png(row)))), seen)


def test_an_erasure_on_another_worker_refuses_the_queued_write_of_what_it_named(tmp_path):
    """Inputs still queued on one worker when another worker erases them, by id or by time range,
    are not written by the first worker's next flush; an answer after the range still is."""
    writer, eraser = new_log(tmp_path, policy="all"), new_log(tmp_path, policy="all")
    since = time.time()
    by_id, in_range = answer(writer, 1), answer(writer, 2)
    assert eraser.read(inputs.erase, request_ids=[by_id]) == 0  # nothing written yet: nothing deleted
    assert eraser.read(inputs.erase, since=since) == 0
    time.sleep(0.01)
    after = answer(writer, 3)
    writer.flush()
    nothing_left(tmp_path / "p.sqlite", [by_id, in_range])
    assert sorted(kept(tmp_path)) == [after]


def test_retention_deletes_what_slipped_past_an_erasure_and_expires_its_record(tmp_path):
    """An input written despite its erasure's record (a write racing the erasure) is deleted by the
    next retention round; records older than TOMBSTONE_SECONDS are dropped."""
    log = new_log(tmp_path, policy="all")
    rid = answer(log, 1)
    log.flush()
    conn = connect(tmp_path / "p.sqlite")
    conn.execute("INSERT INTO erased_inputs (request_id, ts) VALUES (?, ?)", (rid, time.time()))
    conn.execute("INSERT INTO erased_inputs (request_id, ts) VALUES ('old', ?)", (time.time() - 2 * 3600,))
    conn.commit()
    log.flush(now=time.time() + 60)  # a retention round (the rows are younger than retention_days)
    nothing_left(tmp_path / "p.sqlite", [rid])
    assert [r for (r,) in conn.execute("SELECT request_id FROM erased_inputs")] == [rid]
