"""A batch's images prepared together (decoded side by side in the bounded pool, or one after
another, then scaled, normalised and given subgroups in one pass): the same inputs and the same
per-slot refusals, in upload order, as preparing each image on its own."""

import asyncio
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from core.config import LimitsConfig, Settings
from core.errors import InputError
from monitors.reference import InputSpec
from runtime.prepare import Preparer, attempt
from runtime.subgroups import SubgroupResolver


def png(side: int, seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_batch_preparation_equals_preparing_each_image():
    """Six uploads (large noise PNGs, a truncated one, text, a bad context, a phone context): pixels,
    subgroups and refusal reasons equal slot by slot, pooled or not."""
    preparer = Preparer(resolver=SubgroupResolver(Settings().subgroups.attributes), spec=InputSpec(),
                        limits=LimitsConfig())
    big = [png(300, seed) for seed in range(3)]
    uploads = [big[0], big[1][: len(big[1]) // 2], big[2], b"not an image", big[0], big[1]]
    contexts = [None, None, '{"capture": "phone"}', None, "{not json", None]
    opened = [preparer.open(u, None) for u in uploads if u != b"not an image"]
    assert sum(o.cost for o in opened) > 256 * 1024  # what sends a batch to the pool (headers' cost, in all)

    async def prepared():
        each = [attempt(preparer.prepare, u, c) for u, c in zip(uploads, contexts)]
        with ThreadPoolExecutor(2) as pool:
            pooled = await preparer.prepare_many(uploads, contexts, pool)
        return each, pooled, await preparer.prepare_many(uploads, contexts, None)

    each, pooled, inline = asyncio.run(prepared())
    for batch in (pooled, inline):
        assert batch.slots == [0, 2, 5] and sorted(batch.refused) == [1, 3, 4]
        assert batch.images == [uploads[i] for i in batch.slots]  # what the log hashes
        for j, i in enumerate(batch.slots):
            assert np.array_equal(each[i].pixels, batch.pixels[j]) and each[i].subgroup == batch.subgroups[j]
        for i, error in batch.refused.items():
            assert isinstance(each[i], InputError) and (each[i].reason, each[i].detail) == (error.reason, error.detail)
