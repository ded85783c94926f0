"""What every monitor shares: its window is one BucketedCounts, so resetting, merging and
shipping state between workers is the same for all of them; and its configuration
round-trips through plain data (`get_config()` / `from_config()`), profiles aside."""

from __future__ import annotations

import inspect
from dataclasses import asdict
from typing import Any, Sequence

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

    def decisions(self, now: float) -> np.ndarray:
        """Every decision rule's verdict as one boolean vector: the alarms `results(now)` carries,
        in a fixed order, without building its scores (cheap enough to run after every drain)."""
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        """The constructor's arguments as plain data (JSON-able), except reference profiles."""
        names = [n for n in inspect.signature(type(self)).parameters if n != "profiles"]
        config = {n: getattr(self, n) for n in names}
        config["window"] = asdict(self.window)
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any], profiles: Sequence[Any] = ()) -> "WindowedMonitor":
        kwargs = {**config, "window": WindowConfig(**config["window"])}
        if "profiles" in inspect.signature(cls).parameters:
            kwargs["profiles"] = profiles
        return cls(**kwargs)
