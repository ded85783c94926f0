"""Subgroup resolution never produces a value outside the configured set."""

import numpy as np

from core.config import AttributeConfig
from core.keys import subgroup_key
from runtime.derived import capture_from_border
from runtime.subgroups import SubgroupResolver
from training.digits import build_incident

ATTRS = {"capture": AttributeConfig(values=["scanner", "phone"], derive="runtime.derived:capture_from_border"),
         "region": AttributeConfig(values=["eu", "us"])}
DARK, BRIGHT = np.zeros((1, 8, 8), np.float32), np.full((1, 8, 8), 0.7, np.float32)


def test_unknown_and_malformed_values_become_other():
    """Undeclared values, non-strings and missing attributes without a deriver map to `other`."""
    trusting = {**ATTRS, "capture": AttributeConfig(values=["scanner", "phone"], derive=ATTRS["capture"].derive,
                                                     prefer="client")}
    resolver = SubgroupResolver(trusting)
    assert resolver.resolve({"capture": "fax", "region": 7}, DARK) == {"capture": "other", "region": "other"}
    assert resolver.resolve({"capture": "phone"}, DARK) == {"capture": "phone", "region": "other"}


def test_the_derived_value_decides_unless_clients_are_trusted():
    """Where a deriver exists the image decides by default, whatever the client claims; with
    prefer=client the claim wins; without a claim the deriver fills in either way."""
    assert SubgroupResolver(ATTRS).resolve(None, BRIGHT)["capture"] == "phone"
    assert SubgroupResolver(ATTRS).resolve({"capture": "scanner"}, BRIGHT)["capture"] == "phone"
    assert SubgroupResolver(ATTRS).resolve({"capture": "fax"}, BRIGHT)["capture"] == "phone"
    trusting = {"capture": AttributeConfig(values=["scanner", "phone"], derive=ATTRS["capture"].derive, prefer="client")}
    assert SubgroupResolver(trusting).resolve({"capture": "scanner"}, BRIGHT)["capture"] == "scanner"
    assert SubgroupResolver(trusting).resolve(None, BRIGHT)["capture"] == "phone"


def test_every_claim_a_deriver_can_check_is_counted_within_the_declared_values():
    """Claims are counted per (attribute, claimed, derived, outcome), values outside the
    declared set as `other`, attributes without a deriver not at all, for both preferences and
    both the single and the batch form; every counted label set is one claim_labels() lists."""
    from prometheus_client import REGISTRY

    def claims(**labels):
        return REGISTRY.get_sample_value("classguard_subgroup_claims_total", labels) or 0.0

    pixels = np.stack([BRIGHT, DARK, BRIGHT, DARK])
    contexts = [{"capture": "scanner", "region": "eu"}, {"capture": "scanner"}, {"capture": "x" * 30}, None]
    for prefer in ("derived", "client"):
        attributes = {**ATTRS, "capture": AttributeConfig(values=["scanner", "phone"], derive=ATTRS["capture"].derive,
                                                          prefer=prefer)}
        resolver = SubgroupResolver(attributes)
        assert {labels[0] for labels in resolver.claim_labels()} == {"capture"}
        for resolve in (lambda: resolver.resolve_many(contexts, pixels),
                        lambda: [resolver.resolve(c, p) for c, p in zip(contexts, pixels)]):
            expected = {("scanner", "phone", "disagree"): 1, ("scanner", "scanner", "agree"): 1,
                        ("other", "phone", "disagree"): 1}
            before = {k: claims(attribute="capture", claimed=k[0], derived=k[1], outcome=k[2])
                      for k in expected}
            resolve()
            for (claimed, seen, outcome), n in expected.items():
                assert ("capture", claimed, seen, outcome) in resolver.claim_labels()
                assert claims(attribute="capture", claimed=claimed, derived=seen, outcome=outcome) - \
                    before[claimed, seen, outcome] == n


def test_keys_enumerate_every_possible_label_value():
    """`keys()` lists every combination including `other`, and resolve() only produces those."""
    resolver = SubgroupResolver(ATTRS)
    keys = resolver.keys()
    assert len(keys) == 9 and "capture=other,region=other" in keys
    rng = np.random.default_rng(0)
    for _ in range(200):
        context = {"capture": str(rng.integers(5)), "region": rng.choice(["eu", "xx"])}
        assert subgroup_key(resolver.resolve(context, DARK)) in keys


def test_capture_inference_agrees_with_truth_on_test_split():
    """The demo's derived `capture` matches the true capture on at least 99% of test images."""
    test = build_incident().test
    inferred = np.array([capture_from_border(img[None].astype(np.float32) / 255) for img in test.images])
    assert np.mean(inferred == test.captures) >= 0.99


def test_resolve_many_equals_resolve_image_by_image():
    """The batch form of the capture inference gives, image by image, what resolving each
    image alone gives: client values, derived values and `other` alike, for both preferences."""
    pixels = build_incident().test.images[:, None].astype(np.float32) / 255.0
    contexts = [None, {"capture": "phone"}, {"capture": "bogus", "region": "eu"}, {}] * (len(pixels) // 4)
    prefer = {**ATTRS, "capture": AttributeConfig(values=["scanner", "phone"], derive=ATTRS["capture"].derive,
                                                   prefer="client")}
    for attributes in (ATTRS, prefer):
        resolver = SubgroupResolver(attributes)
        assert resolver.resolve_many(contexts, pixels) == [resolver.resolve(c, p) for c, p in zip(contexts, pixels)]


def _failures(attribute, reason):
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("classguard_subgroup_derive_failures_total",
                                     {"attribute": attribute, "reason": reason}) or 0.0


def flaky(pixels):
    """Raises on dark images, answers `lens` for bright ones, `zoom` (undeclared) for grey ones."""
    level = float(pixels.mean())
    if level < 0.1:
        raise ZeroDivisionError("dark image")
    return "lens" if level > 0.6 else "zoom"


def broken_batch(pixels):
    raise RuntimeError("batch form broken")


def flaky_with_broken_batch(pixels):
    return flaky(pixels)


flaky_with_broken_batch.batch = broken_batch


def maker_from_facts(pixels, facts):
    return "wide" if facts.width > 2 * facts.height else "other"


def test_a_deriver_that_raises_or_answers_an_undeclared_value_gives_other_and_is_counted():
    """A raising deriver and one giving a value outside the declared set both resolve to
    `other` (the request is answered) and are counted by reason, per image, for the single
    and the batch forms; a broken `batch` form falls back to the deriver image by image."""
    grey = np.full((1, 8, 8), 0.4, np.float32)
    pixels = np.stack([DARK, BRIGHT, grey])
    for path in ("tests.runtime.test_subgroups:flaky", "tests.runtime.test_subgroups:flaky_with_broken_batch"):
        resolver = SubgroupResolver({"optics": AttributeConfig(values=["lens"], derive=path)})
        assert set(resolver.failure_labels()) == {("optics", "raised"), ("optics", "unknown")}
        raised, unknown = _failures("optics", "raised"), _failures("optics", "unknown")
        assert [r["optics"] for r in resolver.resolve_many([None] * 3, pixels)] == ["other", "lens", "other"]
        assert resolver.resolve(None, DARK) == {"optics": "other"}
        assert _failures("optics", "raised") == raised + 2 and _failures("optics", "unknown") == unknown + 1


def test_a_deriver_taking_facts_reads_the_uploads_header():
    """A deriver with a second parameter gets each image's ImageFacts; one without never does."""
    from runtime.derived import camera_maker
    from runtime.subgroups import ImageFacts

    resolver = SubgroupResolver({"shape": AttributeConfig(values=["wide"], derive="tests.runtime.test_subgroups:maker_from_facts"),
                                 "capture": ATTRS["capture"]})
    assert resolver.wants_facts and resolver.with_facts == {"shape"}
    facts = [ImageFacts(400, 100, "PNG"), ImageFacts(100, 100, "JPEG")]
    assert [r["shape"] for r in resolver.resolve_many([None, None], np.stack([DARK, DARK]), facts)] == ["wide", "other"]
    assert not SubgroupResolver(ATTRS).wants_facts
    assert camera_maker(DARK, ImageFacts(1, 1, "JPEG", "Apple iPhone 12")) == "apple"
    assert camera_maker(DARK, ImageFacts(1, 1, "JPEG", "NIKON CORPORATION NIKON D5")) == "nikon"
    assert camera_maker(DARK, ImageFacts(1, 1, "PNG")) == "other"


def test_the_camera_is_read_from_a_jpegs_exif():
    """`camera_of` reads EXIF Make and Model from an upload's header; an image without EXIF has none."""
    import io

    from PIL import Image

    from runtime.subgroups import camera_of

    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Apple", "iPhone 12"
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, "JPEG", exif=exif)
    assert camera_of(Image.open(io.BytesIO(out.getvalue()))) == "Apple iPhone 12"
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, "PNG")
    assert camera_of(Image.open(io.BytesIO(out.getvalue()))) is None
