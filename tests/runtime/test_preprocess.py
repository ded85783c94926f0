"""Uploads of any mode and size become model input; broken ones become clear InputErrors."""

import io

import numpy as np
import pytest
from PIL import Image

from core.errors import InputError
from monitors.reference import InputSpec
from runtime.preprocess import decode_image, encode_png, to_unit_array

SPEC = InputSpec(height=8, width=8, channels=1)
LIMITS = dict(max_pixels=40_000_000, max_side=10_000)


def png(image: Image.Image, fmt="PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_8x8_png_round_trips_exactly():
    """A uint8 8x8 image sent as PNG arrives as the same values / 255 (train = serve)."""
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    unit = to_unit_array(decode_image(encode_png(pixels), **LIMITS), SPEC)
    assert unit.shape == (1, 8, 8) and np.allclose(unit[0], pixels / 255.0)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "P", "CMYK", "I;16", "I", "F", "1"])
def test_every_common_mode_converts(mode):
    """Colour, alpha, palette, CMYK, 16-bit, 32-bit, float and bilevel images all preprocess."""
    image = Image.new("RGB", (64, 48), (200, 200, 200)).convert(mode)
    fmt = "TIFF" if mode in ("CMYK", "I", "F") else "PNG"
    unit = to_unit_array(decode_image(png(image, fmt), **LIMITS), SPEC)
    assert unit.shape == (1, 8, 8) and np.isfinite(unit).all() and 0 <= unit.min() <= unit.max() <= 1


def test_sixteen_bit_is_scaled_not_clipped():
    """A mid-grey 16-bit image reads as mid-grey, not as saturated white."""
    image = Image.fromarray(np.full((8, 8), 32768, np.uint16))
    assert to_unit_array(image, SPEC).mean() == pytest.approx(0.5, abs=0.01)


def test_rgb_models_get_three_channels():
    """A 3-channel input spec produces 3 x H x W."""
    unit = to_unit_array(Image.new("L", (20, 20), 128), InputSpec(height=4, width=5, channels=3,
                                                                  mean=(0, 0, 0), std=(1, 1, 1)))
    assert unit.shape == (3, 4, 5)


@pytest.mark.parametrize("data, reason", [
    (b"", "empty_upload"),
    (b"this is not an image at all", "not_an_image"),
    (png(Image.new("L", (300, 300), 9))[:40], "not_an_image"),
])
def test_broken_bytes_get_a_reason(data, reason):
    """Empty, non-image and header-only uploads raise InputError with the matching reason."""
    with pytest.raises(InputError) as caught:
        decode_image(data, **LIMITS)
    assert caught.value.reason == reason


def test_truncated_pixel_data_is_reported():
    """An image whose header is intact but whose pixel data is cut off is `truncated_image`."""
    noisy = Image.fromarray(np.random.default_rng(1).integers(0, 256, (300, 300), dtype=np.uint8))
    data = png(noisy)
    with pytest.raises(InputError) as caught:
        decode_image(data[: len(data) // 2], **LIMITS)
    assert caught.value.reason == "truncated_image"


def test_decompression_bomb_is_refused_before_decoding():
    """A 20,000 x 20,000 PNG (small on the wire) is refused by its header alone."""
    bomb = png(Image.new("1", (20_000, 20_000)))
    assert len(bomb) < 200_000
    with pytest.raises(InputError) as caught:
        decode_image(bomb, **LIMITS)
    assert caught.value.reason == "image_too_large"
