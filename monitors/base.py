"""What every monitor shares: its window is one BucketedCounts, so resetting, merging and
shipping state between workers is the same for all of them."""

from __future__ import annotations

import numpy as np

from monitors.events import WindowConfig


class WindowedMonitor:
    name: str
    window: WindowConfig
    counts_shape: tuple[int, ...]  # set by the subclass before calling reset()

    def reset(self) -> None:
        self._counts = self.window.counts(self.counts_shape)

    def merge(self, other: "WindowedMonitor") -> "WindowedMonitor":
        self._counts.merge(other._counts)
        return self

    def state(self) -> dict[str, np.ndarray]:
        return self._counts.state()

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self._counts.load_state(state)
