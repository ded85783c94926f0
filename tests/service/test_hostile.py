"""Hostile input over real HTTP: a property-based fuzz of the service's own OpenAPI schema, and
a table of known-bad inputs. Nothing may produce a 5xx, every error is JSON with a reason, and
client-controlled values never grow the metric series."""

import io
import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from harness import promtext
from harness.server import Server

pytestmark = pytest.mark.integration
ADMIN, FEEDBACK = "hostile-admin-token-0", "hostile-feedback-token"


@pytest.fixture(scope="module")
def hostile(model_home, tmp_path_factory):
    env = {"BENTOML_HOME": str(model_home), "CLASSGUARD_ADMIN_TOKEN": ADMIN, "CLASSGUARD_FEEDBACK_TOKEN": FEEDBACK}
    with Server(env=env, log_path=tmp_path_factory.mktemp("hostile") / "serve.log") as server:
        yield server


def test_schemathesis_fuzz_finds_no_server_error(hostile):
    """schemathesis against /docs.json (coverage and fuzzing phases, seeded): no 5xx anywhere."""
    cli = str(Path(sys.executable).with_name("schemathesis"))
    done = subprocess.run([cli, "run", f"{hostile.url}/docs.json", "--checks", "not_a_server_error",
                           "--max-examples", "30", "--seed", "1", "--request-timeout", "10",
                           "-H", f"Authorization: Bearer {FEEDBACK}"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "passed" in done.stdout


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


GOOD = {
    "cmyk_jpeg": encode(Image.new("CMYK", (40, 40), (0, 0, 0, 255)), "JPEG"),
    "16_bit_png": encode(Image.fromarray(np.full((16, 16), 40000, np.uint16))),
    "alpha_png": encode(Image.new("RGBA", (30, 20), (255, 255, 255, 128))),
    "one_pixel": encode(Image.new("L", (1, 1), 200)),
    "palette_gif": encode(Image.new("P", (12, 12)), "GIF"),
}


@pytest.mark.parametrize("name", sorted(GOOD))
def test_unusual_but_valid_images_are_answered(hostile, name):
    """CMYK, 16-bit, alpha, palette and 1x1 images are classified, not refused."""
    r = httpx.post(f"{hostile.url}/classify", files={"image": ("x", GOOD[name])}, timeout=30)
    assert r.status_code == 200 and r.json()["label"] is not None, r.text


BAD = [
    ("10,000 x 10,000 image", {"files": {"image": ("big.png", encode(Image.new("1", (10_000, 10_000))))}}, 413),
    ("50 MB upload", {"files": {"image": ("huge.bin", b"\x89PNG" + b"\0" * 50_000_000)}}, 413),
    ("huge context", {"files": {"image": ("d.png", GOOD["one_pixel"])},
                      "data": {"context": json.dumps({"capture": "x" * 100_000})}}, 400),
    ("context is a list", {"files": {"image": ("d.png", GOOD["one_pixel"])}, "data": {"context": "[1, 2]"}}, 400),
    # under the 4 KB context cap, but deeper than Python's JSON parser recurses
    ("deeply nested context", {"files": {"image": ("d.png", GOOD["one_pixel"])},
                               "data": {"context": "[" * 2000 + "]" * 2000}}, 400),
    ("deeply nested batch contexts", {"files": [("images", ("a.png", GOOD["one_pixel"]))],
                                      "data": {"contexts": "[" * 2000 + "]" * 2000}}, 400),
    ("two image fields", {"files": [("image", ("a.png", GOOD["one_pixel"])), ("image", ("b.png", GOOD["one_pixel"]))]}, 413),
    ("form-urlencoded", {"data": {"image": "abc"}}, 415),
]


@pytest.mark.parametrize("name, request_kwargs, status", BAD, ids=[b[0] for b in BAD])
def test_known_bad_inputs_get_json_4xx(hostile, name, request_kwargs, status):
    """Each known-bad input gets its 4xx with a JSON `error` and `detail`, and the service lives on."""
    endpoint = "/classify_batch" if "batch" in name else "/classify"
    r = httpx.post(f"{hostile.url}{endpoint}", timeout=60, **request_kwargs)
    assert r.status_code == status, r.text[:300]
    assert r.json()["error"] and r.json()["detail"]
    assert httpx.get(f"{hostile.url}/readyz").status_code == 200


@pytest.mark.parametrize("path, headers", [("/admin/guardrails", {}), ("/admin/guardrails", {"Authorization": "Bearer no"}),
                                           ("/admin/guardrails", {"Authorization": "Bearer"}),
                                           ("/admin/predictions", {"Authorization": "Basic a"})])
def test_wrong_or_missing_admin_token(hostile, path, headers):
    """Missing, wrong and wrong-scheme tokens are 401 with a reason."""
    r = httpx.get(f"{hostile.url}{path}", headers=headers)
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"


def test_ten_thousand_subgroup_values_keep_series_bounded(hostile):
    """10,000 distinct client-sent capture values (in 50 batches): the number of classguard_
    series after equals the number after the first batch."""
    png = GOOD["one_pixel"]

    def batch(k):
        files = [("images", (f"{i}.png", png)) for i in range(200)]
        contexts = json.dumps([{"capture": f"v{k}-{i}", f"k{k}-{i}": "x"} for i in range(200)])
        assert httpx.post(f"{hostile.url}/classify_batch", files=files, data={"contexts": contexts},
                          timeout=60).status_code == 200

    batch(0)
    series = lambda: {k for k in promtext.scrape(hostile.url) if k[0].startswith("classguard_")}  # noqa: E731
    first = series()
    for k in range(1, 50):
        batch(k)
    assert series() == first


def test_deeply_nested_json_bodies_are_4xx(hostile):
    """Feedback and guardrail swaps with JSON nested past the parser's recursion are 400s, not 500s."""
    body = "[" * 5000 + "]" * 5000
    r = httpx.post(f"{hostile.url}/feedback", content=body, headers={"Authorization": f"Bearer {FEEDBACK}"})
    assert r.status_code == 400 and r.json()["error"] == "malformed_feedback"
    r = httpx.post(f"{hostile.url}/admin/guardrails", content=body, headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 400 and r.json()["error"] == "bad_parameter"
