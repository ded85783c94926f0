"""The active guardrail chain of a worker: start-up, swaps, refusals, and how a swap reaches
the other workers sharing one ChainStore (each GuardrailRuntime here stands for one worker)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from core.config import GuardrailsConfig
from runtime.active_chain import GuardrailRuntime
from runtime.chain_config import ChainContext, load_profiles
from store.chain_store import ChainStore
from tests.runtime.test_chain_config import CONTEXT

PROFILES = Path("config/guardrails.yaml")
ROUTE_TO_EXPERIMENT = [{"type": "route", "target": "classguard-experimental"}]


def swaps(outcome: str) -> float:
    return REGISTRY.get_sample_value("classguard_guardrail_swaps_total", {"outcome": outcome}) or 0.0


def audit_lines(config: GuardrailsConfig) -> list[dict]:
    return [json.loads(line) for line in config.audit_log.read_text().splitlines()]


@pytest.fixture
def config(tmp_path) -> GuardrailsConfig:
    return GuardrailsConfig(profiles_path=PROFILES, audit_log=tmp_path / "audit.jsonl")


@pytest.fixture
def worker(tmp_path, config):
    """A factory of workers sharing one store under tmp_path (each with its own ChainStore, as
    each process has)."""
    shared = tmp_path / "run"
    shared.mkdir()

    def start(context: ChainContext = CONTEXT, cfg: GuardrailsConfig = config) -> GuardrailRuntime:
        return GuardrailRuntime(cfg, context, ChainStore(shared, cfg.audit_log))

    start.shared_file = shared / "guardrails.json"
    return start


def test_startup_installs_the_configured_profile_and_audits_it_once(worker, config):
    """The first worker installs the file's active profile and writes one `startup` audit line
    with its full chain; a second worker of the same start writes none."""
    first = worker()
    declared = load_profiles(PROFILES)
    assert first.chain.profile == declared.active == "allow_all"
    assert list(first.chain.specs) == [{"type": "allow_all"}]
    worker()
    [line] = audit_lines(config)
    assert line["source"] == "startup" and line["profile"] == "allow_all"
    assert line["hash"] == first.chain.config_hash and line["chain"] == [{"type": "allow_all"}]
    assert line["previous_hash"] is None and line["previous_profile"] is None
    assert REGISTRY.get_sample_value("classguard_guardrail_config_info",
                                     {"profile": "allow_all", "hash": first.chain.config_hash}) == 1


def test_configured_active_overrides_the_files_active(worker, tmp_path):
    """guardrails.active names the start-up profile instead of the file's `active`."""
    cfg = GuardrailsConfig(profiles_path=PROFILES, audit_log=tmp_path / "audit.jsonl", active="abstain_when_unsure")
    assert worker(cfg=cfg).chain.profile == "abstain_when_unsure"


def test_a_swap_installs_the_profile_and_chains_the_audit_log(worker, config):
    """swap(profile=...) replaces `.chain`, counts `applied`, and appends an audit line whose
    previous_hash is the chain it replaced."""
    one = worker()
    old = one.chain
    applied = swaps("applied")
    new = one.swap(profile="suppress_phone_confusions", source="cli")
    assert one.chain is new and new.profile == "suppress_phone_confusions" and new.config_hash != old.config_hash
    assert swaps("applied") == applied + 1
    startup, swap = audit_lines(config)
    assert (swap["source"], swap["profile"], swap["hash"]) == ("cli", "suppress_phone_confusions", new.config_hash)
    assert (swap["previous_profile"], swap["previous_hash"]) == ("allow_all", startup["hash"]) == \
           ("allow_all", old.config_hash)
    assert swap["chain"] == list(new.specs) and len(swap["chain"]) == 2


@pytest.mark.parametrize("profile, chain, message", [
    ("no-such-profile", None, "unknown profile"),
    ("bad-model", ROUTE_TO_EXPERIMENT, "not loaded"),
    ("bad-type", [{"type": "no_such_guardrail"}], "does not match"),
    # a declared name must keep meaning its declared chain: the audit log and metrics show names
    ("allow_all", [{"type": "abstain_below", "threshold": 0.5}], "declared profile with another chain"),
])
def test_an_invalid_swap_is_refused_counted_and_changes_nothing(worker, config, profile, chain, message):
    """Each invalid swap raises ValueError with the reason, counts `refused`, and leaves the
    chain, the shared file and the audit log as they were."""
    one = worker()
    before, shared, refused = one.chain, worker.shared_file.read_text(), swaps("refused")
    with pytest.raises(ValueError, match=message):
        one.swap(profile=profile, chain=chain)
    assert one.chain is before
    assert swaps("refused") == refused + 1
    assert worker.shared_file.read_text() == shared and len(audit_lines(config)) == 1


def test_a_declared_profiles_own_chain_under_its_name_is_accepted(worker):
    """The declared chain sent in full under its own name (defaults spelled out) is the same
    chain, so it is applied, not refused as a different one."""
    one = worker()
    declared = load_profiles(PROFILES).profiles["suppress_phone_confusions"]
    spelled = [spec.model_dump() for spec in declared]
    assert spelled[1] == {"type": "confusion_guard", "action": "abstain", "floor": 0.5, "pairs": None,
                          "subgroups": ["capture=phone"], "regions": None}
    assert one.swap(profile="suppress_phone_confusions", chain=spelled).profile == "suppress_phone_confusions"


def test_another_worker_picks_up_a_swap_once(worker):
    """A swap on one worker reaches another through sync(): True once, then False."""
    one, two = worker(), worker()
    assert two.sync() is False  # nothing swapped yet
    new = one.swap(profile="route_phone_to_retrained")
    assert two.chain.config_hash != new.config_hash
    assert two.sync() is True
    assert (two.chain.profile, two.chain.config_hash) == ("route_phone_to_retrained", new.config_hash)
    assert two.sync() is False


def test_a_worker_started_after_a_swap_takes_the_swapped_chain(worker, config):
    """A worker (re)started after a swap serves the swapped chain from its first request, and
    does not write a second `startup` line."""
    one = worker()
    new = one.swap(profile="shadow_retrained")
    late = worker()
    assert (late.chain.profile, late.chain.config_hash) == ("shadow_retrained", new.config_hash)
    assert [line["source"] for line in audit_lines(config)] == ["startup", "admin"]


def test_a_shared_chain_that_does_not_compile_here_is_counted_and_not_installed(worker):
    """A shared chain this worker cannot compile (it routes to a model only the swapping worker
    knows): sync() returns False, counts `sync_failed` and keeps serving the chain it had."""
    wider = ChainContext(models=CONTEXT.models | {"classguard-experimental"}, subgroups=CONTEXT.subgroups,
                         labels=CONTEXT.labels, pairs=CONTEXT.pairs)
    narrow, wide = worker(), worker(wider)
    before, failed = narrow.chain, swaps("sync_failed")
    wide.swap(profile="experiment", chain=ROUTE_TO_EXPERIMENT)
    assert narrow.sync() is False
    assert swaps("sync_failed") == failed + 1
    assert narrow.chain is before
    assert narrow.sync() is False and swaps("sync_failed") == failed + 2  # it keeps trying, counted each time


def test_a_corrupt_shared_file_is_counted_and_not_installed(worker):
    """A shared file that is not a chain record at all (truncated JSON) fails sync() the same way."""
    one = worker()
    before, failed = one.chain, swaps("sync_failed")
    worker.shared_file.write_text('{"profile": "allow_all", "hash":')
    assert one.sync() is False
    assert swaps("sync_failed") == failed + 1 and one.chain is before


def test_a_swap_in_the_same_file_time_tick_still_reaches_another_worker(worker):
    """A swap whose shared file carries the same modification time as the one another worker
    last read (two writes in one tick of a coarse file clock) still reaches that worker."""
    one, two = worker(), worker()
    two.sync()
    seen = worker.shared_file.stat()
    new = one.swap(profile="route_phone_to_retrained")
    os.utime(worker.shared_file, ns=(seen.st_atime_ns, seen.st_mtime_ns))  # as a coarse clock would stamp it
    assert two.sync() is True and two.chain.config_hash == new.config_hash


def test_a_swap_that_cannot_be_shared_is_installed_nowhere(worker, monkeypatch):
    """When writing the shared chain fails (disk full), the swapping worker keeps its chain too, the
    swap is counted as refused, and the workers still agree."""
    one, two = worker(), worker()
    before, refused = one.chain.config_hash, swaps("refused")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(one.store, "publish", full_disk)
    with pytest.raises(OSError):
        one.swap(profile="route_phone_to_retrained")
    assert one.chain.config_hash == before and swaps("refused") == refused + 1
    two.sync()
    assert two.chain.config_hash == before
