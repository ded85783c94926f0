"""In-process micro-batching: concurrent requests share one forward pass.

BentoML's adaptive batcher reaches the model through a proxy with pickling, which costs
more than a small model's forward pass (see README, "Design choices"). Here requests queue
in the worker's own event loop; while one forward pass runs on the inference thread, new
requests gather, and the next pass takes all of them (up to `max_batch_size` images). With
`max_wait_s` > 0 the first image of a batch also waits that long for company, which helps a
GPU more than a CPU.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np


class MicroBatcher:
    def __init__(
        self,
        infer: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch_size: int,
        max_wait_s: float = 0.0,
        on_batch: Callable[[int, float], None] | None = None,
        name: str = "model",
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.infer = infer
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.on_batch = on_batch
        self._pending: deque[tuple[np.ndarray, asyncio.Future]] = deque()
        self._worker: asyncio.Task | None = None
        # one thread per model: forward passes of one model never overlap, so batches grow
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{name}")

    async def __call__(self, inputs: np.ndarray) -> np.ndarray:
        """Probabilities for `inputs` (N x ...), computed in some shared batch."""
        future = asyncio.get_running_loop().create_future()
        self._pending.append((inputs, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await future

    def _take(self) -> list[tuple[np.ndarray, asyncio.Future]]:
        taken, rows = [self._pending.popleft()], 0
        rows = len(taken[0][0])
        while self._pending and rows + len(self._pending[0][0]) <= self.max_batch_size:
            item = self._pending.popleft()
            taken.append(item)
            rows += len(item[0])
        return taken

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            if self.max_wait_s > 0:
                await asyncio.sleep(self.max_wait_s)
            taken = self._take()
            batch = taken[0][0] if len(taken) == 1 else np.concatenate([x for x, _ in taken])
            started = time.perf_counter()
            try:
                out = await loop.run_in_executor(self._executor, self._infer_chunked, batch)
            except Exception as exc:  # every waiting request learns of it; the batcher lives on
                for _, future in taken:
                    if not future.done():
                        future.set_exception(exc)
                continue
            if self.on_batch:
                self.on_batch(len(batch), time.perf_counter() - started)
            offset = 0
            for x, future in taken:
                if not future.done():
                    future.set_result(_rows(out, offset, offset + len(x)))
                offset += len(x)

    def _infer_chunked(self, batch: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]:
        if len(batch) <= self.max_batch_size:
            return self.infer(batch)
        parts = [self.infer(batch[i : i + self.max_batch_size]) for i in range(0, len(batch), self.max_batch_size)]
        if isinstance(parts[0], tuple):
            return tuple(np.concatenate(column) for column in zip(*parts))
        return np.concatenate(parts)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _rows(out: np.ndarray | tuple[np.ndarray, ...], start: int, stop: int):
    """Rows start:stop of an output: one array, or a tuple of arrays with a row per input alike
    (probabilities and each row's region, say)."""
    return tuple(o[start:stop] for o in out) if isinstance(out, tuple) else out[start:stop]
