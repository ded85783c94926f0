"""The active guardrail chain of a worker, and how a swap reaches every worker.

A swap (admin route or CLI) validates and compiles the new chain first: an invalid one is
refused and the old chain stays. Then it is written to the shared store (one host: a file in
the runtime directory and the audit log; a fleet: a row in PostgreSQL, store.chain_store),
and installed by replacing one reference. Every worker polls the store every `sync_seconds`
and installs a chain whose hash differs, so a swap reaches all workers (of every replica)
within about `sync_seconds`.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Iterable

from core import metrics
from core.config import GuardrailsConfig
from guardrails.chain import Chain
from runtime.chain_config import ChainContext, Profiles, compile_chain, config_hash, load_profiles
from store.chain_store import ChainStore, FleetChainStore
from store.database import StoreUnavailable, off_loop
from store.model_store import split_tag

log = logging.getLogger("classguard.guardrails")


def active_profile(config: GuardrailsConfig, profiles: Profiles) -> str:
    name = config.active or profiles.active
    if name not in profiles.profiles:
        raise ValueError(f"guardrails.active {name!r} is not a profile in {config.profiles_path}; "
                         f"profiles: {sorted(profiles.profiles)}")
    return name


def chain_context(settings, labels: Iterable[str], regions: Iterable[str] = ()) -> ChainContext:
    """What chains may name under these settings, given the loaded models' class names and the
    primary's region names (its codebook's; ignored when monitors.regions is off)."""
    from runtime.subgroups import SubgroupResolver

    return ChainContext(models=frozenset(split_tag(tag)[0] for tag in settings.models.tags()),
                        subgroups=frozenset(SubgroupResolver(settings.subgroups.attributes).keys()),
                        labels=frozenset(labels),
                        pairs=frozenset(p.name for p in settings.monitors.known_confusions),
                        regions=frozenset(regions) if settings.monitors.regions else frozenset())


def check_startup_chain(settings, context: ChainContext) -> None:
    """Compile the start-up chain, so a route to a model that is not loaded stops
    `bentoml serve` at import with the reason, instead of crash-looping its workers."""
    profiles = load_profiles(settings.guardrails.profiles_path)
    name = active_profile(settings.guardrails, profiles)
    try:
        compile_chain(profiles.profiles[name], name, context)
    except ValueError as exc:
        raise ValueError(f"guardrail profile {name!r}: {exc}") from None


class GuardrailRuntime:
    """On one host, a swapped chain lasts until the service restarts, which installs the
    configured profile again (configuration stays the one source of truth for a fresh start; to
    keep a chain, make it the configured `active` profile). In a fleet, the store's chain is the
    fleet's: a replica that starts (scaled out, restarted, rolled) joins it rather than
    resetting every other replica to its configured profile; only the first replica of an
    empty store installs the configured one. The audit log records every chain that was
    installed, the start-up one included, with its full guardrail list: what answered at any
    moment is the last entry before that moment."""

    def __init__(self, config: GuardrailsConfig, context: ChainContext, store: ChainStore | FleetChainStore) -> None:
        self.config, self.context, self.store = config, context, store
        self.profiles: Profiles = load_profiles(config.profiles_path)
        name = active_profile(config, self.profiles)
        self.chain: Chain = self._compile(self.profiles.profiles[name], name)
        with store.locked():
            if store.is_empty():  # the first worker of this start records it
                self._share(self.chain, None, "startup")
        self._publish_info(self.chain)
        self.sync()  # a worker (re)started after a swap takes the swapped chain

    def _compile(self, specs, profile: str) -> Chain:
        return compile_chain(specs, profile, self.context)

    def compile(self, specs, profile: str) -> Chain:
        """A chain of these specs under this service's models and names; ValueError when invalid."""
        return self._compile(specs, profile)

    def swap(self, *, profile: str, chain: list | None = None, source: str = "admin") -> Chain:
        """Install `chain` (or the named profile's chain). Raises ValueError when invalid."""
        try:
            new = self._compile(self.profiles.chain(profile) if chain is None else chain, profile)
            declared = self.profiles.profiles.get(profile)
            if declared is not None and new.config_hash != config_hash(declared):
                raise ValueError(f"{profile!r} is a declared profile with another chain; apply it without a chain, "
                                 "or give this chain a name of its own")
        except Exception:
            metrics.GUARDRAIL_SWAPS.labels("refused").inc()
            raise
        # one swap at a time across workers (and replicas), each starting from the chain that is
        # really active; shared first: a chain the others cannot see is never installed here alone
        try:
            with self.store.locked():
                self.sync()
                self.share_locked(new, source)
        except (OSError, StoreUnavailable):
            metrics.GUARDRAIL_SWAPS.labels("refused").inc()
            raise
        self.adopt(new)
        return new

    def share_locked(self, new: Chain, source: str, audit: dict | None = None) -> None:
        """Share `new`, inside `store.locked()` after a `sync()`, for callers that decide what to
        install from the chain really active (runtime/automation.py); once the lock's block has
        ended without error (in a fleet: committed), `adopt(new)` installs it here. `audit`: more
        for the audit entry (an automatic action's alert and evidence)."""
        self._share(new, self.chain, source, audit)

    def adopt(self, new: Chain) -> None:
        self.chain = new
        self._publish_info(new)
        metrics.GUARDRAIL_SWAPS.labels("applied").inc()

    def _share(self, new: Chain, old: Chain | None, source: str, extra: dict | None = None) -> None:
        specs = list(new.specs)
        record = {"time": time.time(), "profile": new.profile, "hash": new.config_hash, "chain": specs}
        audit = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "source": source, "pid": os.getpid(),
                 "profile": new.profile, "hash": new.config_hash, "chain": specs,
                 "previous_profile": old.profile if old else None, "previous_hash": old.config_hash if old else None,
                 **(extra or {})}
        self.store.publish(record, audit)

    _failed_hash: str | None = None  # the shared chain this worker could not install, if any

    def sync(self) -> bool:
        """Install the shared chain if another worker swapped it. True when it changed."""
        record = None
        try:
            record = self.store.changed()
            if record is None or record["hash"] == self.chain.config_hash:
                return False
            self.chain = self._compile(record["chain"], record["profile"])
        except Exception:
            metrics.GUARDRAIL_SWAPS.labels("sync_failed").inc()
            failed = record.get("hash") if isinstance(record, dict) else None
            if failed is None or failed != self._failed_hash:  # once per chain, not every sync
                log.exception("could not install the shared guardrail chain; trying again at every sync")
            self._failed_hash = failed
            self.store.retry()
            return False
        self._failed_hash = None
        self._publish_info(self.chain)
        return True

    async def run(self) -> None:
        """Forever: pick up chains other workers installed."""
        import asyncio

        while True:
            await asyncio.sleep(self.config.sync_seconds)
            # in a thread: in a fleet this is a database query, and a database that stops
            # answering (a partition, no reset) would otherwise hold every request of the worker
            await off_loop(self.sync)

    @staticmethod
    def _publish_info(chain: Chain) -> None:
        metrics.publish_active_chain(chain.profile, chain.config_hash)

    def describe(self) -> dict:
        return {"profile": self.chain.profile, "hash": self.chain.config_hash,
                "profiles": sorted(self.profiles.profiles)}
