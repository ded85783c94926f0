"""The endpoints over real HTTP against a `bentoml serve` subprocess."""

import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image

from core.errors import REASONS
from harness import promtext
from harness.traffic import holdout_samples

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def samples():
    return holdout_samples()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def png_of(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_classify_answers_with_every_field(client, samples):
    """A real phone digit gets label, confidence, top-k, model name:version, the subgroup and
    the request id both in the body and in the X-Request-ID header."""
    sample = next(s for s in samples if s.capture == "phone")
    r = client.post("/classify", files={"image": ("d.png", sample.png, "image/png")},
                    data={"context": json.dumps({"capture": "phone"})})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["request_id"] == r.headers["x-request-id"]
    assert body["model"].startswith("classguard-baseline:") and len(body["model"]) > len("classguard-baseline:")
    assert body["subgroup"] == {"capture": "phone"} and body["abstained"] is False
    assert body["label"] == body["top_k"][0]["label"] and body["confidence"] == body["top_k"][0]["probability"]
    assert len(body["top_k"]) == 3
    assert body["guardrails"] == [{"guardrail": "allow_all", "action": "allow", "reason": "no guardrail configured"}]
    allowed = {"low_confidence", "known_confusion:6->0", "known_confusion:2->7", "known_confusion:6->4"}
    assert set(body["flags"]) <= allowed


def test_client_request_id_is_kept_as_correlation_id(client, samples):
    """A well-formed X-Request-ID is kept as the answer's correlation id beside a service-minted
    request id (both in the body and the headers); a malformed one is dropped."""
    files = {"image": ("d.png", samples[0].png, "image/png")}
    r = client.post("/classify", files=files, headers={"X-Request-ID": "trace-42"})
    body = r.json()
    assert body["correlation_id"] == "trace-42" and len(body["request_id"]) == 32 != body["correlation_id"]
    assert r.headers["X-Request-ID"] == body["request_id"] and r.headers["X-Correlation-ID"] == "trace-42"
    body = client.post("/classify", files=files, headers={"X-Request-ID": "bad id!"}).json()
    assert body["correlation_id"] is None and "bad id!" not in body.values()


def test_any_size_image_is_accepted(client, samples):
    """A 256x256 RGB upscale of a digit gets the same label as the 8x8 original."""
    original = Image.open(io.BytesIO(samples[5].png))
    big = original.resize((256, 256), Image.Resampling.NEAREST).convert("RGB")
    small = client.post("/classify", files={"image": ("a.png", samples[5].png)}).json()
    large = client.post("/classify", files={"image": ("b.png", png_of(big))}).json()
    assert large["label"] == small["label"]


def test_batch_answers_in_order_and_matches_single_calls(client, samples):
    """classify_batch answers each image in upload order with the same label as /classify."""
    chosen = samples[::37][:12]
    files = [("images", (f"{i}.png", s.png, "image/png")) for i, s in enumerate(chosen)]
    contexts = json.dumps([{"capture": s.capture} for s in chosen])
    r = client.post("/classify_batch", files=files, data={"contexts": contexts})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["index"] for x in results] == list(range(len(chosen)))
    assert [x["subgroup"]["capture"] for x in results] == [s.capture for s in chosen]
    singles = [client.post("/classify", files={"image": ("d.png", s.png)}).json()["label"] for s in chosen]
    assert [x["label"] for x in results] == singles


def test_batch_isolates_a_bad_image(client, samples):
    """One non-image in a batch gets its own error slot; its neighbours are still classified."""
    files = [("images", ("a.png", samples[0].png)), ("images", ("b.txt", b"not an image")),
             ("images", ("c.png", samples[1].png))]
    results = client.post("/classify_batch", files=files).json()["results"]
    assert results[1]["error"] == "not_an_image" and results[1]["status"] == 415
    assert results[0]["label"] is not None and results[2]["label"] is not None


def test_batch_columns_are_the_same_answers_as_the_default_format(client, samples):
    """`?format=columns` answers the same images with the same labels, confidences, top-k and
    subgroups as the per-answer format (request ids aside: each request gets its own), with a
    refused image listed apart by its upload position; an unknown format is a counted 400."""
    from tests.runtime.test_serving import answers_of

    chosen = samples[::41][:10]
    files = [("images", (f"{i}.png", s.png, "image/png")) for i, s in enumerate(chosen)]
    files.insert(4, ("images", ("bad.txt", b"not an image")))
    per_answer = client.post("/classify_batch", files=files).json()
    r = client.post("/classify_batch?format=columns", files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["format"] == "columns" and body["count"] == 11 and body["index"] == [0, 1, 2, 3, *range(5, 11)]
    assert [(e["index"], e["error"]) for e in body["errors"]] == [(4, "not_an_image")]
    assert body["errors"][0] == {**per_answer["results"][4], "request_id": body["errors"][0]["request_id"]}
    ignore = ("request_id", "correlation_id")
    columnar = [{k: v for k, v in a.items() if k not in ignore} for a in answers_of(body["answers"])]
    default = [{k: v for k, v in a.items() if k not in ignore + ("index",)}
               for a in per_answer["results"] if "error" not in a]
    assert columnar == default and len(columnar) == 10
    assert body["answers"]["request_id"][0] == f"{body['request_id']}.0"
    refused = lambda: promtext.total(promtext.scrape(str(client.base_url).rstrip("/")),  # noqa: E731
                                     "classguard_rejected_requests_total", endpoint="classify_batch",
                                     reason="bad_parameter")
    before = refused()
    bad = client.post("/classify_batch?format=arrow", files=files[:1])
    assert bad.status_code == 400 and bad.json()["error"] == "bad_parameter" and "columns" in bad.json()["detail"]
    assert refused() == before + 1


def test_accuracy_over_http_matches_offline_evaluation(client, samples, training_report):
    """Phone accuracy measured through the live endpoint equals the offline test-split figure."""
    phone = [s for s in samples if s.capture == "phone"]
    results = []
    for start in range(0, len(phone), 200):  # under the 256-image batch limit
        files = [("images", (f"{i}.png", s.png, "image/png")) for i, s in enumerate(phone[start:start + 200])]
        results += client.post("/classify_batch", files=files).json()["results"]
    accuracy = np.mean([r["label"] == str(s.label) for r, s in zip(results, phone)])
    assert accuracy == pytest.approx(training_report["models"]["baseline"]["test"]["phone"]["accuracy"], abs=0.003)


def _bomb() -> bytes:
    return png_of(Image.new("1", (20_000, 20_000)))


def _truncated() -> bytes:
    data = png_of(Image.fromarray(np.random.default_rng(1).integers(0, 256, (300, 300), dtype=np.uint8)))
    return data[: len(data) // 2]


BAD_INPUTS = {
    "not_an_image": dict(files={"image": ("x.txt", b"hello, not an image")}),
    "truncated_image": dict(files={"image": ("t.png", _truncated())}),
    "empty_upload": dict(files={"image": ("e.png", b"")}),
    "upload_too_large": dict(files={"image": ("big.png", b"\0" * 10_500_000)}),
    "image_too_large": dict(files={"image": ("bomb.png", _bomb())}),
    "malformed_context": dict(files={"image": ("d.png", png_of(Image.new("L", (8, 8))))}, data={"context": "{capture:"}),
    "not_multipart": dict(json={"image": "aGVsbG8="}),
    "missing_image": dict(files={"context": (None, b'{"capture": "phone"}')}),
    "unknown_field": dict(files={"picture": ("d.png", png_of(Image.new("L", (8, 8))))}),
}


@pytest.mark.parametrize("reason", sorted(BAD_INPUTS))
def test_bad_input_gets_clear_4xx_and_is_counted(client, server, reason):
    """Each bad input gets its documented 4xx with a JSON reason, is counted in
    classguard_rejected_requests_total, and the service answers the next good request."""
    before = promtext.total(promtext.scrape(server.url), "classguard_rejected_requests_total", reason=reason)
    r = client.post("/classify", **BAD_INPUTS[reason])
    assert r.status_code == REASONS[reason], r.text
    body = r.json()
    assert body["error"] == reason and body["detail"] and body["request_id"] == r.headers["x-request-id"]
    after = promtext.total(promtext.scrape(server.url), "classguard_rejected_requests_total", reason=reason)
    assert after == before + 1
    ok = client.post("/classify", files={"image": ("d.png", png_of(Image.new("L", (8, 8))))})
    assert ok.status_code == 200


def test_url_in_place_of_a_file_is_not_fetched(client):
    """A text field holding a URL is refused as a missing file (the service never fetches it)."""
    r = client.post("/classify", files={"image": (None, "http://127.0.0.1:9/x.png")})  # a text part
    assert r.status_code == 400 and r.json()["error"] == "missing_image"


def test_batch_context_count_mismatch(client, samples):
    """Two images with three contexts is refused as a whole with context_count_mismatch."""
    files = [("images", ("a.png", samples[0].png)), ("images", ("b.png", samples[1].png))]
    r = client.post("/classify_batch", files=files, data={"contexts": json.dumps([{}, {}, {}])})
    assert r.status_code == 400 and r.json()["error"] == "context_count_mismatch"


def test_metric_label_values_stay_bounded(client, server, samples):
    """200 distinct client-sent capture values add no label value beyond the configured set,
    every prediction is counted, and 200 further distinct values add no series at all."""
    files = [("images", (f"{i}.png", samples[i].png)) for i in range(200)]

    def send(tag: str) -> None:
        contexts = json.dumps([{"capture": f"{tag}-{i}", f"attr-{tag}-{i}": "x"} for i in range(200)])
        assert client.post("/classify_batch", files=files, data={"contexts": contexts}).status_code == 200

    counted_before = promtext.total(promtext.scrape(server.url), "classguard_predictions_total")
    send("first")
    first = promtext.scrape(server.url)
    assert promtext.total(first, "classguard_predictions_total") == counted_before + 200
    allowed = {f"capture={v}" for v in ("scanner", "phone", "other")}
    for name in ("classguard_predictions_total", "classguard_prediction_confidence_count",
                 "classguard_guardrail_actions_total"):
        assert promtext.label_values(first, name, "subgroup") <= allowed | {""}, name
    # with region monitors on, the statistics also name the primary's embedding regions (<= 65)
    regions = {v for v in promtext.label_values(first, "classguard_monitor_score", "subgroup") if v.startswith("region=")}
    assert len(regions) <= 65
    assert promtext.label_values(first, "classguard_monitor_score", "subgroup") <= allowed | regions | {""}
    classes = {str(d) for d in range(10)} | {"abstained"}
    assert promtext.label_values(first, "classguard_predictions_total", "predicted_class") <= classes
    assert promtext.label_values(first, "classguard_rejected_requests_total", "reason") <= set(REASONS)
    info = {dict(k[1])["model"] for k in first if k[0] == "classguard_model_info"}
    assert info == {"classguard-baseline", "classguard-retrained"}
    send("second")
    series = lambda s: {k for k in s if k[0].startswith("classguard_")}  # noqa: E731
    assert series(promtext.scrape(server.url)) == series(first)


def test_missing_model_is_a_clear_startup_error(model_home, tmp_path):
    """Naming a model that is not in the store stops `bentoml serve` with a message saying what
    to run, instead of a failed cloud pull or a 500 later."""
    from harness.server import Server

    log = tmp_path / "serve.log"
    with pytest.raises(RuntimeError, match="exited"):
        with Server(env={"BENTOML_HOME": str(model_home), "CLASSGUARD_MODELS__OTHERS": '["missing-model:latest"]'},
                    log_path=log, startup_timeout=60):
            pass
    assert "'missing-model:latest' is not in the model store" in log.read_text()
    assert "make train" in log.read_text()
