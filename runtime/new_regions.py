"""A worker's side of new regions (monitors/new_regions.py): on the request path, place each
embedding the codebook calls novel into a new region the fleet has formed, and keep it in
the worker's ring of novel embeddings; at each publish, look in that ring for a group, claim
what is found in the shared store (store/new_regions.py), and take up every region formed so
far, by any worker or replica."""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timezone
from typing import Any

import numpy as np

from core import metrics
from core.clock import CLOCK
from monitors.new_regions import NewRegion, NewRegions, NovelRing, discover, new_region_names

log = logging.getLogger("classguard.monitors")


class NewRegionTracker:
    def __init__(self, codebook: Any, store: Any) -> None:
        self.novel = codebook.k  # the codebook's index of novel; slot j is region novel + 1 + j
        self.radius = codebook.new_radius
        self.store = store
        self.known = NewRegions()  # replaced whole at a refresh, never changed in place
        self._ring = NovelRing(codebook.prototypes.shape[1])
        self._lock = threading.Lock()  # the request path adds while a publish reads
        self._looked = 0  # ring.added at the last search

    def place(self, vectors: np.ndarray, regions: np.ndarray, now: float | None = None) -> np.ndarray:
        """Region indices with novel rows moved to the new region holding them, if any (the
        novel rows are kept, stamped `now`, fleet time by default)."""
        novel = regions == self.novel
        if not novel.any():
            return regions
        rows = vectors[novel]
        known = self.known
        with self._lock:
            self._ring.add(np.full(len(rows), CLOCK.now() if now is None else now), rows)
        slots = known.place(rows) if len(known) else np.full(len(rows), -1)
        placed = regions.copy()
        placed[novel] = np.where(slots >= 0, self.novel + 1 + slots, self.novel)
        return placed

    def refresh(self, now: float, window_seconds: float) -> list[NewRegion]:
        """Search this worker's novel embeddings of the window when new ones arrived, store what
        is found, and take up the store's regions; returns the regions new to this worker."""
        with self._lock:
            fresh = self._ring.added != self._looked
            candidates = self._ring.since(now - window_seconds).copy() if fresh else None
            self._looked = self._ring.added
        if candidates is not None and len(self.known) < len(new_region_names()):
            found = discover(candidates, radius=self.radius, known=self.known, now=now)
            if found:
                self.store.claim(found)
        return self._take_up(self.store.load())

    def retire(self, name: str) -> dict[str, Any] | None:
        """Free the slot of new region `name` (`nNN`) for every worker and replica (the others
        at their next refresh); what it was, or None when no region has that name now."""
        names = new_region_names()
        if name not in names:
            raise ValueError(f"{name!r} is not a new region's name (n00..{names[-1]})")
        gone = self.store.retire(names.index(name))  # known to the store, if not yet to this worker
        self._take_up(self.store.load())
        return _described(gone) if gone is not None else None

    def _take_up(self, stored: list[NewRegion]) -> list[NewRegion]:
        """Make the store's regions this worker's; returns those new to it."""
        before = {(r.slot, r.born) for r in self.known.regions}
        after = {(r.slot, r.born) for r in stored}
        if before == after:
            return []
        arrived = [r for r in stored if (r.slot, r.born) not in before]
        self.known = NewRegions(stored)
        metrics.NEW_REGIONS.set(len(stored))
        for r in arrived:
            log.warning("new region %s: %d distinct images novel to the codebook within %.3g of one centre, "
                        "since %s", new_region_names()[r.slot], r.members, r.radius, _when(r.born))
        for slot, born in sorted(before - after):
            log.warning("new region %s (since %s) retired: its slot is free", new_region_names()[slot], _when(born))
        return arrived

    def describe(self) -> dict[str, dict[str, Any]]:
        """Each formed region's name -> why it is a region and since when (for reports)."""
        return {new_region_names()[r.slot]: _described(r) for r in self.known.regions}


def _described(r: NewRegion) -> dict[str, Any]:
    return {"since": _when(r.born), "members": r.members, "radius": round(r.radius, 4),
            "why": f"{r.members} distinct images novel to the codebook within {r.radius:.3g} of one centre"}


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")
