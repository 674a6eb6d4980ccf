"""The verdicts for state kept stale while every window's total looks right: a decision
under a rule the node's registry no longer holds (``stale_rule``, ``sim/rules_in_force.py``)
and a sliding window weighed against a previous window its decider lost
(``sliding_overweight``, ``sim/sliding.py``). Each scenario passes as shipped and fails with
the planted bug it is for (``scripts/mutation/stale_state.py``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from mutation.stale_state import STALE_STATE_MUTANTS  # noqa: E402

from meshlimit.sim.runner import SCENARIO_DIR, run_scenario  # noqa: E402
from meshlimit.sim.scenario import load_scenario  # noqa: E402

CASES = [("rule_cached", "rule_change_storm", "stale_rule"),
         ("handover_current_only", "handover_sliding_hot", "sliding_overweight")]  # fmt: skip


@pytest.mark.parametrize(("mutant", "scenario", "verdict"), CASES)
def test_the_planted_bug_fails_the_scenario_that_passes_without_it(
    mutant: str, scenario: str, verdict: str
) -> None:
    plant = {m.name: m.plant for m in STALE_STATE_MUTANTS}[mutant]
    sc = load_scenario(SCENARIO_DIR / f"{scenario}.toml")
    assert run_scenario(sc, sc.seed).violations == []
    planted = run_scenario(sc, sc.seed, plant=plant).violations
    assert any(str(v).startswith(verdict) for v in planted), planted
