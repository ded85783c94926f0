"""A large batch's images decode side by side in the bounded pool: the same prepared inputs and the same
per-slot refusals, in upload order, as decoding them one after another."""

import asyncio
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from monitors.reference import InputSpec
from runtime.subgroups import SubgroupResolver
from service.classify import ClassifyEndpoints, _outcome, prepare_in_pool
from service.config import LimitsConfig, Settings
from service.errors import InputError
from service.http_input import Upload


def png(side: int, seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_pooled_preparation_equals_one_after_another():
    """Six uploads (large noise PNGs, a truncated one, text, a bad context): pixels, subgroups and refusal
    reasons equal slot by slot."""
    endpoints = ClassifyEndpoints(serving=None, resolver=SubgroupResolver(Settings().subgroups.attributes),
                                  spec=InputSpec(), limits=LimitsConfig(), model_tag="m", hash_images=False)
    big = [png(300, seed) for seed in range(3)]
    uploads = [Upload(big[0], "a.png"), Upload(big[1][: len(big[1]) // 2], "cut.png"), Upload(big[2], "c.png"),
               Upload(b"not an image", "t.txt"), Upload(big[0], "d.png"), Upload(big[1], "e.png")]
    contexts = [None, None, '{"capture": "phone"}', None, "{not json", None]
    assert sum(len(u.data) for u in uploads) > 256 * 1024  # what sends a batch to the pool

    async def both():
        one_by_one = [await _outcome(endpoints.prepare_async(u, c)) for u, c in zip(uploads, contexts)]
        with ThreadPoolExecutor(2) as pool:
            pooled = await prepare_in_pool(endpoints.prepare, uploads, contexts, pool)
        return one_by_one, pooled

    one_by_one, pooled = asyncio.run(both())
    assert len(pooled) == len(uploads)
    for a, b in zip(one_by_one, pooled):
        if isinstance(a, InputError):
            assert isinstance(b, InputError) and (a.reason, a.detail) == (b.reason, b.detail)
        else:
            assert np.array_equal(a.pixels, b.pixels) and a.subgroup == b.subgroup
    assert [type(x).__name__ for x in pooled] == ["Prepared", "InputError", "Prepared", "InputError", "InputError",
                                                   "Prepared"]
