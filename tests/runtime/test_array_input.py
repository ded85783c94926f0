"""Batches sent as one NumPy array: decoded to the same scale as images, every malformed
array a clear client error, and the same answers over HTTP as the same digits sent as PNGs."""

import io

import httpx
import numpy as np
import pytest

from core.errors import InputError
from harness.traffic import holdout_samples
from monitors.reference import InputSpec
from runtime.array_input import decode_array
from runtime.preprocess import decode_image, to_unit_array

SPEC = InputSpec(channels=1, height=8, width=8, mean=(0.0,), std=(1.0,))


def npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_uint8_and_float_arrays_decode_to_the_image_scale():
    """uint8 is divided by 255 (as decoded PNGs are); floats in [0, 1] pass unchanged; both
    N x H x W and N x 1 x H x W shapes are taken."""
    pixels = np.arange(2 * 64, dtype=np.uint8).reshape(2, 8, 8)
    unit = decode_array(npy(pixels), SPEC, 256)
    assert unit.shape == (2, 1, 8, 8) and unit.dtype == np.float32
    assert np.array_equal(unit[:, 0], pixels.astype(np.float32) / 255)
    floats = np.random.default_rng(0).random((3, 1, 8, 8))
    assert np.allclose(decode_array(npy(floats), SPEC, 256), floats)


@pytest.mark.parametrize("data, reason", [
    (b"", "empty_upload"),
    (b"not an array", "malformed_array"),
    (npy(np.zeros((2, 8, 8), np.uint8))[:-10], "malformed_array"),            # truncated
    (npy(np.array([{"a": 1}], dtype=object)), "malformed_array"),              # pickled objects
    (npy(np.zeros((2, 9, 8), np.uint8)), "malformed_array"),                  # wrong size
    (npy(np.zeros((2, 3, 8, 8), np.uint8)), "malformed_array"),               # wrong channels
    (npy(np.zeros((0, 8, 8), np.uint8)), "malformed_array"),                  # no images
    (npy(np.zeros((257, 8, 8), np.uint8)), "too_many_images"),
    (npy(np.zeros((2, 8, 8), np.int64)), "malformed_array"),                  # integer other than uint8
    (npy(np.zeros((2, 8, 8), np.complex64)), "malformed_array"),
    (npy(np.full((2, 8, 8), np.nan, np.float32)), "invalid_array_values"),
    (npy(np.full((2, 8, 8), np.inf)), "invalid_array_values"),
    (npy(np.full((2, 8, 8), 255.0)), "invalid_array_values"),                 # floats must be 0-1
])
def test_malformed_arrays_are_client_errors(data, reason):
    """Each malformed upload raises its reason (a 4xx), never anything else."""
    with pytest.raises(InputError) as caught:
        decode_array(data, SPEC, 256)
    assert caught.value.reason == reason


@pytest.mark.integration
def test_array_batch_answers_like_the_same_pngs_and_refuses_nan(server):
    """64 test digits as one uint8 .npy get the labels and confidences their PNGs get, in
    order; one NaN in a float array is a 400 with the reason, and the service answers on."""
    samples = holdout_samples()[::11][:64]
    pixels = np.stack([(to_unit_array(decode_image(s.png, max_pixels=10**6, max_side=100), SPEC)[0] * 255)
                       .round().astype(np.uint8) for s in samples])
    with httpx.Client(base_url=server.url, timeout=30) as client:
        by_array = client.post("/classify_batch", files={"array": ("b.npy", npy(pixels))})
        by_png = client.post("/classify_batch", files=[("images", (f"{i}.png", s.png)) for i, s in enumerate(samples)])
        assert by_array.status_code == 200 and by_png.status_code == 200, by_array.text[:300]
        for a, p in zip(by_array.json()["results"], by_png.json()["results"]):
            assert (a["index"], a["label"], a["confidence"], a["subgroup"]) == (p["index"], p["label"], p["confidence"],
                                                                                 p["subgroup"])
        poisoned = pixels.astype(np.float32) / 255
        poisoned[3, 4, 4] = np.nan
        r = client.post("/classify_batch", files={"array": ("b.npy", npy(poisoned))})
        assert r.status_code == 400 and r.json()["error"] == "invalid_array_values", r.text
        both = client.post("/classify_batch", files=[("array", ("b.npy", npy(pixels))), ("images", ("a.png", samples[0].png))])
        assert both.status_code == 400 and both.json()["error"] == "malformed_array"
        assert client.post("/classify_batch", files={"array": ("b.npy", npy(pixels[:2]))}).status_code == 200
