"""PNGs already in the model's shape, decoded by libspng: the same pixels as Pillow's general
path, and everything else (or anything libspng refuses) left to that path, refusals included."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from core.config import LimitsConfig, Settings
from core.errors import InputError
from monitors.reference import InputSpec
from runtime import prepare as prepare_module
from runtime.fast_png import model_shaped_png
from runtime.prepare import Preparer
from runtime.preprocess import load, open_image, to_pixels
from runtime.subgroups import SubgroupResolver

GRAY, RGB = InputSpec(), InputSpec(height=6, width=5, channels=3, mean=(0.0,) * 3, std=(1.0,) * 3)


def png(pixels: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", **options)
    return buffer.getvalue()


def general(data: bytes, spec: InputSpec) -> np.ndarray:
    """Pillow's path: the header, the decode, the reduction to the model's input."""
    return to_pixels(load(open_image(data, max_pixels=10**8, max_side=10**5)), spec)


def test_model_shaped_pngs_decode_to_pillows_pixels():
    """The demo's test digits and random gray and RGB images (every PNG filter, compression
    levels 0-9, with text chunks) decode to exactly the pixels Pillow's path gives."""
    from harness.traffic import holdout_samples

    for sample in holdout_samples()[:200]:
        assert np.array_equal(model_shaped_png(sample.png, GRAY), general(sample.png, GRAY))
    rng = np.random.default_rng(0)
    for level in range(10):
        gray = rng.integers(0, 256, (8, 8), dtype=np.uint8)
        colour = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
        text = PngImagePlugin.PngInfo()
        text.add_text("Comment", "x" * level * 10)
        for data, spec in ((png(gray, compress_level=level, pnginfo=text), GRAY),
                           (png(colour, compress_level=level, optimize=level % 2 == 0), RGB)):
            fast = model_shaped_png(data, spec)
            assert fast is not None and fast.dtype == np.uint8 and np.array_equal(fast, general(data, spec))


def with_trns(data: bytes) -> bytes:
    """`data` with a tRNS chunk (gray value 0 transparent) right after IHDR."""
    body = b"\x00\x00"
    chunk = len(body).to_bytes(4, "big") + b"tRNS" + body + zlib.crc32(b"tRNS" + body).to_bytes(4, "big")
    return data[:33] + chunk + data[33:]


@pytest.mark.parametrize("make, spec", [
    (lambda: png(np.zeros((8, 9), np.uint8)), GRAY),  # another size: the general path resizes
    (lambda: png(np.zeros((8, 8, 3), np.uint8)), GRAY),  # RGB for a gray model: converted there
    (lambda: png(np.zeros((8, 8), np.uint16)), GRAY),  # 16 bits
    (lambda: _interlaced(), GRAY),  # Adam7
    (lambda: with_trns(png(np.zeros((8, 8), np.uint8))), GRAY),  # transparency: composited there
    (lambda: png(np.zeros((8, 8), np.uint8))[:45], GRAY),  # truncated inside its pixels
    (lambda: b"GIF89a" + bytes(40), GRAY),  # not a PNG
])
def test_anything_else_is_left_to_pillows_path(make, spec):
    """Another size, mode, depth, interlacing or transparency, a truncated file, another format:
    the fast path declines, and preparing the upload gives what Pillow's path gives (the same
    pixels, or the same refusal)."""
    data = make()
    assert model_shaped_png(data, spec) is None
    preparer = Preparer(resolver=SubgroupResolver(Settings().subgroups.attributes), spec=spec, limits=LimitsConfig())
    try:
        got = preparer.prepare(data, None).pixels
    except InputError as exc:
        with pytest.raises(InputError) as caught:
            general(data, spec)
        assert caught.value.reason == exc.reason
    else:
        assert got.shape == (spec.channels, spec.height, spec.width)


def _interlaced() -> bytes:
    """An 8 x 8 gray PNG written with Adam7 interlacing (Pillow writes none: by hand)."""
    image = np.arange(64, dtype=np.uint8).reshape(8, 8)
    passes = [(0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 4, 8), (0, 2, 4, 4), (2, 0, 2, 4), (0, 1, 2, 2), (1, 0, 1, 2)]
    raw = b"".join(b"".join(b"\x00" + image[y, x0::dx].tobytes() for y in range(y0, 8, dy))
                   for y0, x0, dy, dx in passes)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    header = (8).to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 1])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_the_preparer_takes_the_fast_path_for_model_shaped_pngs(monkeypatch):
    """A model-shaped PNG is prepared without Pillow (its header reader is never called); with a
    subgroup deriver that reads image facts (from Pillow's header), it goes Pillow's way."""
    data = png(np.full((8, 8), 200, np.uint8))
    calls = []
    monkeypatch.setattr(prepare_module, "open_image", lambda *a, **k: calls.append(1) or open_image(*a, **k))
    preparer = Preparer(resolver=SubgroupResolver(Settings().subgroups.attributes), spec=GRAY, limits=LimitsConfig())
    assert not preparer.resolver.wants_facts
    prepared = preparer.prepare(data, None)
    assert calls == [] and np.allclose(prepared.pixels, 200 / 255)
    monkeypatch.setattr(SubgroupResolver, "wants_facts", property(lambda self: True))
    preparer.prepare(data, None)
    assert calls == [1]


def test_a_cut_png_is_never_answered_where_pillow_refuses_it():
    """Every prefix of model-shaped PNGs: where the fast path decodes one, Pillow's path gives
    the same pixels; where Pillow refuses one, the fast path declined it."""
    rng = np.random.default_rng(2)
    for _ in range(10):
        data = png(rng.integers(0, 256, (8, 8), dtype=np.uint8))
        for cut in range(len(data) + 1):
            fast = model_shaped_png(data[:cut], GRAY)
            try:
                slow = general(data[:cut], GRAY)
            except InputError:
                assert fast is None, cut
            else:
                assert fast is None or np.array_equal(fast, slow), cut
