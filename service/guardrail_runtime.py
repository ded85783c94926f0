"""The active guardrail chain of a worker, and how a swap reaches every worker.

A swap (admin route or CLI) validates and compiles the new chain first: an invalid one is
refused and the old chain stays. Then it is written to `<runtime dir>/guardrails.json`
(atomic rename), appended to the audit log, and installed by replacing one reference.
Every worker checks that file every `sync_seconds` and installs a chain whose hash differs,
so a swap reaches all workers within about `sync_seconds`.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from pathlib import Path

from guardrails.chain import Chain
from service import metrics
from service.config import GuardrailsConfig
from service.guardrail_config import CHAIN, Profiles, compile_chain, load_profiles

log = logging.getLogger("classguard.guardrails")


def active_profile(config: GuardrailsConfig, profiles: Profiles) -> str:
    name = config.active or profiles.active
    if name not in profiles.profiles:
        raise ValueError(f"guardrails.active {name!r} is not a profile in {config.profiles_path}; "
                         f"profiles: {sorted(profiles.profiles)}")
    return name


def check_startup_chain(settings) -> None:
    """Compile the start-up chain against the configured models and subgroups, so a route to a
    model that is not loaded stops `bentoml serve` at import with the reason, instead of
    crash-looping its workers."""
    from service.subgroups import SubgroupResolver

    profiles = load_profiles(settings.guardrails.profiles_path)
    name = active_profile(settings.guardrails, profiles)
    models = {tag.split(":")[0] for tag in settings.models.tags()}
    subgroups = set(SubgroupResolver(settings.subgroups.attributes).keys())
    try:
        compile_chain(profiles.profiles[name], name, models=models, subgroups=subgroups)
    except ValueError as exc:
        raise ValueError(f"guardrail profile {name!r}: {exc}") from None


class GuardrailRuntime:
    def __init__(self, config: GuardrailsConfig, *, models: set[str], subgroups: set[str], shared_dir: Path) -> None:
        self.config, self.models, self.subgroups = config, models, subgroups
        self.profiles: Profiles = load_profiles(config.profiles_path)
        name = active_profile(config, self.profiles)
        self.shared_file = Path(shared_dir) / "guardrails.json"
        self._seen_mtime = 0.0
        self.chain: Chain = self._compile(self.profiles.profiles[name], name)
        self._publish_info(None, self.chain)
        self.sync()  # a worker (re)started after a swap takes the swapped chain

    def _compile(self, specs, profile: str) -> Chain:
        return compile_chain(specs, profile, models=self.models, subgroups=self.subgroups)

    def swap(self, *, profile: str, chain: list | None = None, source: str = "admin") -> Chain:
        """Install `chain` (or the named profile's chain). Raises ValueError when invalid."""
        try:
            chain = self.profiles.chain(profile) if chain is None else chain
            new = self._compile(chain, profile)
        except Exception:
            metrics.GUARDRAIL_SWAPS.labels("refused").inc()
            raise
        specs = CHAIN.dump_python(CHAIN.validate_python(chain), mode="json", exclude_none=True)
        record = {"time": time.time(), "profile": profile, "hash": new.config_hash, "chain": specs}
        # one swap at a time across workers, each starting from the chain that is really active
        with open(self.shared_file.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.sync()
            tmp = self.shared_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(record))
            os.replace(tmp, self.shared_file)
            old, self.chain = self.chain, new
            self._seen_mtime = self.shared_file.stat().st_mtime
            self._audit(old, new, source)
        self._publish_info(old, new)
        metrics.GUARDRAIL_SWAPS.labels("applied").inc()
        return new

    def sync(self) -> bool:
        """Install the shared chain if another worker swapped it. True when it changed."""
        try:
            mtime = self.shared_file.stat().st_mtime
        except FileNotFoundError:
            return False
        if mtime == self._seen_mtime:
            return False
        self._seen_mtime = mtime
        try:
            record = json.loads(self.shared_file.read_text())
            if record["hash"] == self.chain.config_hash:
                return False
            old, self.chain = self.chain, self._compile(record["chain"], record["profile"])
        except Exception:
            metrics.GUARDRAIL_SWAPS.labels("sync_failed").inc()
            log.exception("could not install the shared guardrail chain")
            return False
        self._publish_info(old, self.chain)
        return True

    async def run(self) -> None:
        """Forever: pick up chains other workers installed."""
        import asyncio

        while True:
            await asyncio.sleep(self.config.sync_seconds)
            self.sync()

    def _audit(self, old: Chain, new: Chain, source: str) -> None:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "source": source, "pid": os.getpid(),
                 "profile": new.profile, "hash": new.config_hash,
                 "previous_profile": old.profile, "previous_hash": old.config_hash}
        try:
            self.config.audit_log.parent.mkdir(parents=True, exist_ok=True)
            with open(self.config.audit_log, "a") as f:
                f.write(json.dumps(entry) + "\n")
        except OSError:
            metrics.GUARDRAIL_SWAPS.labels("audit_failed").inc()
            log.exception("could not write the guardrail audit log %s", self.config.audit_log)

    @staticmethod
    def _publish_info(old: Chain | None, new: Chain) -> None:
        if old is not None and old.config_hash != new.config_hash:
            metrics.GUARDRAIL_CONFIG_INFO.labels(old.profile, old.config_hash).set(0)
        metrics.GUARDRAIL_CONFIG_INFO.labels(new.profile, new.config_hash).set(1)

    def describe(self) -> dict:
        return {"profile": self.chain.profile, "hash": self.chain.config_hash,
                "profiles": sorted(self.profiles.profiles)}

