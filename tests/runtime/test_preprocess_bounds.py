"""Preparing an upload costs memory bounded by its decoded size, and answers exactly what
converting the whole image at once answered (the version before strips, kept below as the
reference): the test split, and every mode, size and bit depth drawn here."""

import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from core.config import LimitsConfig
from harness.uploads import encoded, png_of_zeros, text_bomb
from core.errors import InputError
from monitors.reference import InputSpec
from runtime.preprocess import decode_image, to_pixels

SPEC = InputSpec()  # the digit models' 8 x 8 grey input
RGB_SPEC = InputSpec(height=5, width=7, channels=3, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
LIMITS = LimitsConfig()
BOUNDS = dict(max_pixels=LIMITS.max_image_pixels, max_side=LIMITS.max_image_side)
MiB = 1 << 20


def reference_pixels(image: Image.Image, spec: InputSpec) -> np.ndarray:
    """The whole-image preparation this module replaced (float64 copies of the full image)."""
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        array = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16"):
            scale = 65535.0
        elif image.mode == "F":
            scale = 1.0 if array.size and float(np.nanmax(np.abs(array))) <= 1.0 else 255.0
        else:
            scale = max(float(np.nanmax(array)) if array.size else 0.0, 255.0)
        array = np.nan_to_num(array, nan=0.0, posinf=scale, neginf=0.0)
        image = Image.fromarray(np.clip(array / scale * 255.0, 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    mode = "L" if spec.channels == 1 else "RGB"
    image = image if image.mode == mode else image.convert(mode)
    if image.size != (spec.width, spec.height):
        image = image.resize((spec.width, spec.height), Image.Resampling.BOX)
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if spec.channels == 1 else array.transpose(2, 0, 1)


def drawn_images(seed: int = 0) -> list[Image.Image]:
    """Seeded images in every mode a client can send, at sizes that cross strip boundaries
    (a 6,000-wide strip is 21 rows), narrower and wider than the model, and tiny."""
    rng = np.random.default_rng(seed)
    sizes = [(1, 1), (8, 8), (7, 9), (64, 48), (300, 301), (6000, 45), (3, 700)]
    images = []
    for width, height in sizes:
        grey = rng.integers(0, 256, (height, width), dtype=np.uint8)
        colour = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
        images += [Image.fromarray(grey), Image.fromarray(colour[..., :3]), Image.fromarray(colour, "RGBA"),
                   Image.fromarray(colour[..., :2].copy(), "LA"), Image.fromarray(grey).convert("1"),
                   Image.fromarray(colour[..., :3]).convert("CMYK"),
                   Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16)),
                   Image.fromarray(rng.integers(-300, 70000, (height, width), dtype=np.int32), "I"),
                   Image.fromarray(rng.normal(0.5, 0.3, (height, width)).astype(np.float32), "F"),
                   Image.fromarray(rng.uniform(-2, 900, (height, width)).astype(np.float32), "F")]
        palette = Image.fromarray(colour[..., :3]).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        transparent = palette.copy()
        transparent.info["transparency"] = 3
        images += [palette, transparent]
    odd = np.full((20, 30), np.nan, np.float32)
    odd[3, 4], odd[5, 6] = np.inf, -np.inf
    images += [Image.fromarray(odd, "F"), Image.fromarray(np.full((20, 30), np.nan, np.float32), "F")]
    return images


def test_the_test_split_is_prepared_exactly_as_before():
    """All 720 test-split uploads: the pixels handed to the model equal the whole-image version's."""
    from harness.traffic import holdout_samples

    samples = holdout_samples()
    assert len(samples) == 720
    for sample in samples:
        image = decode_image(sample.png, **BOUNDS)
        assert np.array_equal(to_pixels(image, SPEC), reference_pixels(image, SPEC))


@pytest.mark.filterwarnings("ignore:All-NaN slice")  # the reference's, on the all-NaN float image
@pytest.mark.parametrize("spec", [SPEC, RGB_SPEC], ids=["grey", "rgb"])
def test_every_mode_and_size_is_prepared_exactly_as_before(spec):
    """1-bit, grey, RGB, RGBA, LA, CMYK, palette (with and without transparency), 16-bit, 32-bit
    and float images (NaN and infinities included), 1 x 1 to 6,000 wide: equal, value for value."""
    for image in drawn_images():
        assert np.array_equal(to_pixels(image, spec), reference_pixels(image, spec)), (image.mode, image.size)


def test_sixteen_bit_uses_its_whole_range():
    """16-bit grey 0, 32768 and 65535, in either byte order, become 0, 127 and 255 (scaled, not
    clipped at 255)."""
    values = np.repeat(np.array([0, 32768, 65535], np.uint16), 8)[:, None].repeat(8, 1)
    for image in (Image.fromarray(values), Image.frombytes("I;16B", (8, 24), values.astype(">u2").tobytes())):
        assert list(to_pixels(image, InputSpec(height=3, width=1))[0, :, 0]) == [0, 127, 255], image.mode


def test_sixteen_bit_colour_and_grey_with_alpha_are_answered():
    """16-bit RGBA, RGB and grey-with-alpha PNGs (Pillow reads them as 8-bit) within the limits prepare."""
    for colour, channels in ((6, 4), (2, 3), (4, 2)):
        pixels = to_pixels(decode_image(png_of_zeros(640, 480, 16, colour, channels), **BOUNDS), SPEC)
        assert pixels.shape == (1, 8, 8) and pixels.dtype == np.uint8


def test_a_6300_square_16_bit_png_allocates_no_full_size_copy():
    """The issue's 77 KB 6300 x 6300 16-bit PNG: the largest numpy/Python allocation alive at once
    while it is prepared is under 8 MiB (the full-image float64 version: 1.2 GB), and the answer
    is the all-black image's."""
    image = decode_image(png_of_zeros(6300, 6300, 16, 0, 1), **BOUNDS)
    tracemalloc.start()
    try:
        pixels = to_pixels(image, SPEC)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * MiB, f"{peak / MiB:.0f} MiB"
    assert not pixels.any()


PEAK_CHILD = r"""
import sys
from runtime.preprocess import decode_image, to_pixels
from monitors.reference import InputSpec
from core.config import LimitsConfig
from harness.uploads import encoded, png_of_zeros, text_bomb
limits = LimitsConfig()
data = open(sys.argv[1], "rb").read()
def hwm():
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM"))
base = hwm()
to_pixels(decode_image(data, max_pixels=limits.max_image_pixels, max_side=limits.max_image_side), InputSpec())
print(hwm() - base)
"""


@pytest.mark.parametrize("name, data, decoded", [
    ("16-bit grey 6300 x 6300 PNG", lambda: png_of_zeros(6300, 6300, 16, 0, 1), 6300 * 6300 * 2),
    ("16-bit RGBA 6324 x 6324 PNG", lambda: png_of_zeros(6324, 6324, 16, 6, 4), 6324 * 6324 * 4),
])
def test_real_peak_memory_is_the_decoded_image_and_its_8_bit_copy(tmp_path, name, data, decoded):
    """In a fresh process (Pillow's own image memory is invisible to tracemalloc), decoding and
    preparing the upload raises peak RSS by at most its decoded size (as Pillow stores it), its
    8-bit grey copy and 16 MiB; the full-image version took the 16-bit grey one to 985 MB, 12
    times its 79 MB. `preparing_bytes` states no less than what was used."""
    path = tmp_path / "upload.png"
    path.write_bytes(data())
    done = subprocess.run([sys.executable, "-c", PEAK_CHILD, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    used, side = int(done.stdout), int(decoded ** 0.5 // (2 if "grey" in name else 1) ** 0.5)
    assert used < decoded + side * side + 16 * MiB, f"{name}: {used / MiB:.0f} MiB"
    from runtime.preprocess import open_image, preparing_bytes

    assert used < preparing_bytes(open_image(path.read_bytes(), **BOUNDS), SPEC) + 16 * MiB


@pytest.mark.parametrize("name, make, fits", [
    ("40M-pixel RGBA PNG", lambda: png_of_zeros(6324, 6324, 8, 6, 4), True),
    ("40M-pixel float TIFF", lambda: encoded(Image.new("F", (6324, 6324), 0.5), "TIFF", compression="tiff_adobe_deflate"), True),
    ("40M-pixel lossless WebP", lambda: encoded(Image.new("RGBA", (6324, 6324)), "WEBP", lossless=True), False),
    ("40M-pixel progressive RGB JPEG", lambda: encoded(Image.new("RGB", (6324, 6324)), "JPEG", progressive=True), False),
    ("16M-pixel progressive RGB JPEG", lambda: encoded(Image.new("RGB", (4000, 4000)), "JPEG", progressive=True), True),
])
def test_what_preparing_would_cost_is_judged_from_the_header(name, make, fits):
    """Within the pixel limits, images whose decoders hold several copies (WebP's canvas, a
    progressive JPEG's coefficients) are refused as `image_too_large` before any pixel is decoded;
    those within the configured byte bound are not."""
    from runtime.preprocess import open_image, refuse_costly

    image = open_image(make(), **BOUNDS)
    if fits:
        assert refuse_costly(image, SPEC, LIMITS.max_decoded_bytes) <= LIMITS.max_decoded_bytes
        return
    with pytest.raises(InputError) as caught:
        refuse_costly(image, SPEC, LIMITS.max_decoded_bytes)
    assert caught.value.reason == "image_too_large" and "to decode" in caught.value.detail


def test_compressed_text_is_refused_at_the_header():
    """A 67 KB PNG whose text chunks decompress to 64 MB (Pillow's own cap) is `image_too_large`
    after 1 MB of it, before any pixel is decoded; ordinary text metadata still opens."""
    from runtime.preprocess import open_image

    with pytest.raises(InputError) as caught:
        open_image(text_bomb(), **BOUNDS)
    assert caught.value.reason == "image_too_large" and "bytes of text" in caught.value.detail
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * 100_000, zip=True)
    assert open_image(encoded(Image.new("L", (8, 8)), pnginfo=info), **BOUNDS).info["comment"] == "x" * 100_000
