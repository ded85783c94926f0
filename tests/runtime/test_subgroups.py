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
