"""New regions: a group that appears in `novel`, found and named while it arrives.

`novel` holds every prediction farther from the codebook's prototypes than validation's
`novel_quantile`: ordinary outliers and, when one comes, a new group, mixed (a route on
`novel` catches both). A new group is many *different* images close to one another, where
ordinary outliers are few and far apart. So:

- `NovelRing` keeps the latest novel embeddings (a bounded ring, O(1) per event); each worker
  searches its own, and the store (store/new_regions.py) makes what one finds everyone's;
- `discover` looks, among the ring's distinct embeddings inside the window, for a ball of
  the codebook's own width (`radius`: the validation's q90 distance from an image to its
  prototype) holding at least `min_members` of them. Such a ball becomes a new region, its
  centre the mean of its members; the search repeats on what is left, up to NEW_SLOTS
  regions in all (a fixed layout: metric labels and the fleet's windows stay bounded);
- `NewRegions.place` puts a prediction the codebook calls novel into the first new region
  whose centre lies within its radius; the rest stay `novel`.

A repeated image counts once (a client resending one picture is not a group). The names are
`n00`, `n01`, ... in the order the regions formed, apart from the codebook's `r00`..: a new
region has no validation reference, and says when it formed and from how many images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

NEW_SLOTS = 8
MIN_MEMBERS = 20  # distinct images in one ball before it is a group (ordinary outliers: 0-1 here)
RING = 2_048  # novel embeddings kept per worker: the pairwise search is RING^2 distances at most


def new_region_names(slots: int = NEW_SLOTS) -> list[str]:
    return [f"n{i:02d}" for i in range(slots)]


@dataclass(frozen=True, eq=False)  # an array field
class NewRegion:
    """One region formed from novel traffic: where, how wide, when (fleet time) and from how
    many distinct images."""

    slot: int
    centre: np.ndarray
    radius: float
    born: float
    members: int

    def to_dict(self) -> dict:
        return {"slot": self.slot, "centre": self.centre.astype(float).tolist(), "radius": self.radius,
                "born": self.born, "members": self.members}

    @classmethod
    def from_dict(cls, data: dict) -> "NewRegion":
        return cls(int(data["slot"]), np.asarray(data["centre"], np.float32), float(data["radius"]),
                   float(data["born"]), int(data["members"]))


class NewRegions:
    """The new regions formed so far (at most NEW_SLOTS), and where a novel embedding goes."""

    def __init__(self, regions: Sequence[NewRegion] = (), slots: int = NEW_SLOTS) -> None:
        self.slots = slots
        self.regions = sorted(regions, key=lambda r: r.slot)
        if len({r.slot for r in self.regions}) != len(self.regions) or any(
                not 0 <= r.slot < slots for r in self.regions):
            raise ValueError(f"new regions need distinct slots in [0, {slots})")
        if self.regions:
            self._centres = np.stack([r.centre for r in self.regions]).astype(np.float32)
            self._radius2 = np.array([r.radius ** 2 for r in self.regions], np.float32)
            self._slot = np.array([r.slot for r in self.regions], np.int64)

    def __len__(self) -> int:
        return len(self.regions)

    def free(self) -> list[int]:
        taken = {r.slot for r in self.regions}
        return [s for s in range(self.slots) if s not in taken]

    def place(self, embeddings: np.ndarray) -> np.ndarray:
        """(N, d) embeddings the codebook called novel -> the slot of the nearest new region
        whose radius holds each, or -1."""
        x = np.asarray(embeddings, np.float32)
        if not self.regions or len(x) == 0:
            return np.full(len(x), -1, np.int64)
        d2 = _squared_distances(x, self._centres)
        inside = d2 <= self._radius2
        nearest = np.where(inside, d2, np.inf).argmin(axis=1)
        return np.where(inside.any(axis=1), self._slot[nearest], -1)


class NovelRing:
    """The latest `capacity` novel embeddings with their times; older ones are overwritten."""

    def __init__(self, width: int, capacity: int = RING) -> None:
        self.width, self.capacity = width, capacity
        self.embeddings = np.zeros((capacity, width), np.float32)
        self.times = np.full(capacity, -np.inf)
        self._next = 0
        self.added = 0  # ever, so a caller can tell whether anything arrived since it last looked

    def add(self, t: np.ndarray, embeddings: np.ndarray) -> None:
        self.added += len(embeddings)
        x = np.asarray(embeddings, np.float32)[-self.capacity:]
        t = np.asarray(t, np.float64)[-self.capacity:]
        at = (self._next + np.arange(len(x))) % self.capacity
        self.embeddings[at], self.times[at] = x, t
        self._next = int((self._next + len(x)) % self.capacity)

    def since(self, start: float) -> np.ndarray:
        return self.embeddings[self.times >= start]


def discover(embeddings: np.ndarray, *, radius: float, known: NewRegions, now: float,
             min_members: int = MIN_MEMBERS) -> list[NewRegion]:
    """New regions among `embeddings` (novel ones, from the window): balls of `radius` around
    a distinct embedding holding at least `min_members` distinct embeddings, none of them
    inside a region already known; greedy, densest first, into `known`'s free slots."""
    free = known.free()
    x = np.unique(np.asarray(embeddings, np.float32), axis=0)
    if len(known):
        x = x[known.place(x) < 0]
    if not free or len(x) < min_members:
        return []
    r2 = np.float32(radius) ** 2
    near = _squared_distances(x, x) <= r2  # (n, n): each distinct embedding's neighbours
    alive = np.ones(len(x), bool)
    found: list[NewRegion] = []
    while free:
        counts = (near & alive).sum(axis=1) * alive
        seed = int(counts.argmax())
        if counts[seed] < min_members:
            break
        # the ball around its mean holds the group better than the ball around one member
        centre = x[near[seed] & alive].mean(axis=0)
        members = alive & (_squared_distances(x, centre[None])[:, 0] <= r2)
        if members.sum() < min_members:
            alive[seed] = False  # an edge of something sparser: not a group
            continue
        found.append(NewRegion(free.pop(0), centre.astype(np.float32), float(radius), float(now),
                               int(members.sum())))
        alive &= ~members
    return found


def _squared_distances(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    d2 = (x * x).sum(axis=1)[:, None] + (centres * centres).sum(axis=1)[None, :] - 2.0 * x @ centres.T
    return np.maximum(d2, 0.0)
