"""The verdicts for state kept stale while every window's total looks right: a decision
under a rule the node's registry no longer holds (``stale_rule``, ``sim/rules_in_force.py``),
a sliding window weighed against a previous window its decider lost (``sliding_overweight``,
``sim/sliding.py``) and two writes of one node under one HLC stamp
(``stamps_not_increasing``); and the token-bucket scenarios shipped for a merge that winds a
bucket back and an idle bucket that banks credit. Each scenario passes as shipped and fails
with the planted bug it is for (``scripts/mutation/stale_state.py``, ``adversary2.py``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from mutation.adversary2 import SECOND_ADVERSARY_MUTANTS  # noqa: E402
from mutation.catalogue import _patched  # noqa: E402
from mutation.stale_state import STALE_STATE_MUTANTS  # noqa: E402

from meshlimit.sim.runner import SCENARIO_DIR, run_scenario  # noqa: E402
from meshlimit.sim.scenario import load_scenario  # noqa: E402

CASES = [("rule_cached", "rule_change_storm", "stale_rule"),
         ("handover_current_only", "handover_sliding_hot", "sliding_overweight"),
         ("next_stamp_same_ms", "concurrent_rule_writes", "stamps_not_increasing"),
         ("merge_tat_overwrites", "token_bucket_lossy", "over_admission"),
         ("token_bucket_idle_credit", "token_bucket_idle_bursts", "token_bucket_broken")]  # fmt: skip
MUTANTS = {m.name: m for m in STALE_STATE_MUTANTS + SECOND_ADVERSARY_MUTANTS}


@pytest.mark.parametrize(("mutant", "scenario", "verdict"), CASES)
def test_the_planted_bug_fails_the_scenario_that_passes_without_it(
    mutant: str, scenario: str, verdict: str
) -> None:
    planted_bug = MUTANTS[mutant]
    sc = load_scenario(SCENARIO_DIR / f"{scenario}.toml")
    assert run_scenario(sc, sc.seed).violations == []
    with _patched(planted_bug.patches() if planted_bug.patches else []):
        planted = run_scenario(sc, sc.seed, plant=planted_bug.plant).violations
    assert any(str(v).startswith(verdict) for v in planted), planted
