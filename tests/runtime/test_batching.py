"""The micro-batcher shares forward passes between concurrent callers without mixing answers."""

import asyncio

import numpy as np
import pytest

from runtime.batching import MicroBatcher


def test_concurrent_calls_share_batches_and_get_their_own_rows():
    """50 concurrent single-row calls take fewer than 50 passes, and each gets its own result."""
    sizes = []

    def infer(x):
        sizes.append(len(x))
        return x * 2

    async def main():
        batcher = MicroBatcher(infer, max_batch_size=16)
        outs = await asyncio.gather(*(batcher(np.array([[float(i)]])) for i in range(50)))
        batcher.close()
        return outs

    outs = asyncio.run(main())
    assert [float(o[0, 0]) for o in outs] == [2.0 * i for i in range(50)]
    assert len(sizes) < 50 and max(sizes) <= 16 and sum(sizes) == 50


def test_oversized_request_is_chunked():
    """One call with more rows than max_batch_size runs in chunks and returns every row in order."""
    sizes = []

    def infer(x):
        sizes.append(len(x))
        return x + 1

    async def main():
        batcher = MicroBatcher(infer, max_batch_size=4)
        out = await batcher(np.arange(10.0)[:, None])
        batcher.close()
        return out

    assert asyncio.run(main())[:, 0].tolist() == [float(i + 1) for i in range(10)]
    assert sizes == [4, 4, 2]


def test_a_failing_pass_fails_its_callers_only():
    """An exception in one pass reaches the callers in that pass; the next call still works."""
    calls = {"n": 0}

    def infer(x):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return x

    async def main():
        batcher = MicroBatcher(infer, max_batch_size=8)
        with pytest.raises(RuntimeError, match="boom"):
            await batcher(np.ones((1, 1)))
        out = await batcher(np.ones((1, 1)))
        batcher.close()
        return out

    assert asyncio.run(main()).shape == (1, 1)


def test_a_tuple_output_is_split_row_by_row_alike():
    """An infer returning (probabilities, regions) gives each caller its own rows of both, also
    when a request is larger than a pass and its chunks are joined."""

    def infer(x):
        return x * 2, (x[:, 0] * 10).astype(np.int64)

    async def main():
        batcher = MicroBatcher(infer, max_batch_size=4)
        outs = await asyncio.gather(*(batcher(np.array([[float(i)]])) for i in range(9)),
                                    batcher(np.arange(10, dtype=np.float64).reshape(10, 1)))
        batcher.close()
        return outs

    outs = asyncio.run(main())
    for i, (probs, regions) in enumerate(outs[:9]):
        assert float(probs[0, 0]) == 2.0 * i and int(regions[0]) == 10 * i
    probs, regions = outs[9]
    assert probs[:, 0].tolist() == [2.0 * i for i in range(10)] and regions.tolist() == [10 * i for i in range(10)]
