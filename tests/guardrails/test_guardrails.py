"""Each guardrail alone, and the chain's ordering: decisions are data, answers change only as documented."""

import numpy as np
import pytest

from guardrails.answers import AbstainBelow, AllowAll, ConfusionGuard, SuppressLabels
from guardrails.chain import Chain
from guardrails.core import Answer, Request
from guardrails.routing import Route, Shadow

LABELS = tuple("0123456789")
PHONE = Request("req-1", {"capture": "phone"}, "capture=phone")
SCANNER = Request("req-2", {"capture": "scanner"}, "capture=scanner")


def answer(top: int, p_top: float, second: int, p_second: float, flags=()) -> Answer:
    probs = np.full(10, (1.0 - p_top - p_second) / 8)
    probs[top], probs[second] = p_top, p_second
    return Answer.of("base", LABELS, probs, flags)


class TestSuppressLabels:
    def test_falls_back_to_the_best_allowed_label_above_the_floor(self):
        """A suppressed top label gives way to the next label when it clears the floor."""
        out = SuppressLabels(["0"], floor=0.3)(PHONE, answer(0, 0.5, 6, 0.4))
        assert out.label == 6 and [d.action for d in out.decisions] == ["suppress", "fallback_label"]

    def test_abstains_when_nothing_allowed_clears_the_floor(self):
        """Below the floor the service abstains instead of guessing."""
        out = SuppressLabels(["0"], floor=0.5)(PHONE, answer(0, 0.5, 6, 0.4))
        assert out.abstained and out.decisions[-1].action == "abstain"

    def test_top_k_never_leaks_a_suppressed_label(self):
        """Even when the emitted label is allowed, a suppressed label is kept out of top_k."""
        out = SuppressLabels(["6"])(PHONE, answer(0, 0.5, 6, 0.4))
        assert out.label == 0 and "6" not in [label for label, _ in out.top_k(5)]
        assert out.decisions[0].action == "pass"

    def test_only_listed_subgroups(self):
        """With subgroups given, other subgroups' answers are untouched and unrecorded."""
        guard = SuppressLabels(["0"], subgroups=["capture=phone"])
        original = answer(0, 0.9, 6, 0.05)
        assert guard(SCANNER, original) is original
        assert guard(PHONE, original).label != 0

    def test_bad_options_fail_at_construction(self):
        with pytest.raises(ValueError, match="floor"):
            SuppressLabels(["0"], floor=1.5)
        with pytest.raises(ValueError, match="at least one"):
            SuppressLabels([])


class TestAbstainBelow:
    def test_global_and_per_subgroup_thresholds(self):
        """0.6 confidence passes the global 0.5 but not phone's own 0.7."""
        guard = AbstainBelow(0.5, per_subgroup={"capture=phone": 0.7})
        assert guard(SCANNER, answer(3, 0.6, 5, 0.3)).label == 3
        out = guard(PHONE, answer(3, 0.6, 5, 0.3))
        assert out.abstained and "0.600 < 0.7" in out.decisions[0].reason

    def test_the_reason_never_rounds_up_to_the_threshold(self):
        """Confidence 0.9996 under threshold 1.0 reads "0.999600 < 1.0", not "1.000 < 1.0"."""
        out = AbstainBelow(1.0)(PHONE, answer(3, 0.9996, 5, 0.0002))
        assert out.decisions[0].reason == "confidence 0.999600 < 1.0"


class TestConfusionGuard:
    def test_abstains_when_a_known_confusion_fired(self):
        """A known_confusion flag on the prediction makes the service abstain."""
        out = ConfusionGuard()(PHONE, answer(0, 0.5, 6, 0.4, flags=["known_confusion:6->0"]))
        assert out.abstained and "6->0" in out.decisions[0].reason

    def test_suppress_mode_falls_back(self):
        """In suppress mode the emitted label is withheld and the runner-up answers."""
        out = ConfusionGuard(action="suppress", floor=0.3)(PHONE, answer(0, 0.5, 6, 0.4, flags=["known_confusion:6->0"]))
        assert out.label == 6 and "0" not in [label for label, _ in out.top_k(3)]

    def test_quiet_without_a_matching_flag(self):
        """No flag, or a flag for a pair it does not guard: the answer passes unchanged."""
        original = answer(0, 0.5, 6, 0.4, flags=["known_confusion:2->7", "low_confidence"])
        assert ConfusionGuard(pairs=["6->0"])(PHONE, original) is original
        assert ConfusionGuard()(PHONE, answer(0, 0.5, 6, 0.4)).label == 0


class TestRoute:
    def test_matches_on_subgroup(self):
        route = Route("fixed", subgroups=["capture=phone"])
        assert route(PHONE).model == "fixed" and route(SCANNER) is None

    def test_matches_on_flag_only_after_the_model_ran(self):
        """Flag conditions need the primary's flags; the chain asks them only then."""
        route = Route("fixed", flags=["low_confidence"])
        assert route.after_primary and route(PHONE, ["low_confidence"]).model == "fixed"
        assert route(PHONE, ["known_confusion:6->0"]) is None

    def test_matches_on_active_alert(self):
        route = Route("fixed", alerts=["representation"])
        alarmed = Request("r", {"capture": "phone"}, "capture=phone", frozenset({"representation"}))
        assert route(alarmed).model == "fixed" and route(PHONE) is None

    def test_canary_is_deterministic_and_close_to_its_share(self):
        """The same request id always gets the same decision; 20% of 5,000 ids land near 20%."""
        route = Route("fixed", canary=0.2)
        ids = [Request(f"id-{i}", {}, "") for i in range(5000)]
        first = [route(r) is not None for r in ids]
        assert first == [route(r) is not None for r in ids]
        assert 0.18 < np.mean(first) < 0.22


class TestShadow:
    def test_samples_its_share_deterministically(self):
        shadow = Shadow("fixed", share=0.5)
        ids = [Request(f"id-{i}", {}, "") for i in range(4000)]
        picked = [shadow(r) is not None for r in ids]
        assert picked == [shadow(r) is not None for r in ids] and 0.47 < np.mean(picked) < 0.53
        assert Shadow("fixed", share=0.0)(PHONE) is None


class TestChain:
    def test_first_matching_route_wins(self):
        chain = Chain([Route("a", subgroups=["capture=phone"]), Route("b")])
        assert chain.route(PHONE).model == "a" and chain.route(SCANNER).model == "b"
        assert chain.models() == {"a", "b"}

    def test_answer_guardrails_run_in_list_order(self):
        """Suppress-then-abstain and abstain-then-suppress leave different, recorded traces."""
        start = answer(0, 0.55, 6, 0.35)
        a = Chain([SuppressLabels(["0"], floor=0.3), AbstainBelow(0.5)]).answer(PHONE, start)
        b = Chain([AbstainBelow(0.5), SuppressLabels(["0"], floor=0.3)]).answer(PHONE, start)
        assert [d.guardrail for d in a.decisions] == ["suppress_labels", "suppress_labels", "abstain_below"]
        assert a.abstained  # the fallback label 6 (0.35) is below 0.5
        assert b.label == 6 and [d.action for d in b.decisions] == ["suppress", "fallback_label"]

    def test_allow_all_records_itself(self):
        out = Chain([AllowAll()]).answer(PHONE, answer(1, 0.9, 2, 0.05))
        assert out.label == 1 and out.decisions[0].action == "allow"
