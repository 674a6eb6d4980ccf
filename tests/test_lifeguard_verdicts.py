"""The Lifeguard verdicts (``sim/lifeguard.py``) and the majority rule after graceful leaves:
a death a node's own timer declared before Lifeguard's timeout for its suspicion
(``dead_too_soon``: confirmations, local health), a health score still up after a quiet
span (``health_not_recovered``), a member record that goes back across reaping
(``stale_member_state``) and degraded decisions while the cluster that is left is a
majority (``degraded_without_cause``, graceful leaves being no fault). Each scenario passes
as shipped and fails with the planted bug it is for (``scripts/mutation/lifeguard.py``)."""

from __future__ import annotations

import sys
from functools import cache
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from mutation.catalogue import _patched  # noqa: E402
from mutation.lifeguard import LIFEGUARD_MUTANTS  # noqa: E402

from meshlimit.cluster.membership import MembershipConfig  # noqa: E402
from meshlimit.cluster.membership.suspicion import lifeguard_timeout_ns  # noqa: E402
from meshlimit.cluster.membership.timing import (  # noqa: E402
    expected_confirmations,
    suspicion_timeout_ns,
)
from meshlimit.sim.lifeguard import suspicion_runs_ns  # noqa: E402
from meshlimit.sim.runner import SCENARIO_DIR, run_scenario  # noqa: E402
from meshlimit.sim.scenario import load_scenario  # noqa: E402

CASES = [("confirm_counts_first_accuser", "lifeguard_triple_crash", "dead_too_soon"),
         ("suspicion_members_off_by_one", "lifeguard_triple_crash", "dead_too_soon"),
         ("awareness_not_applied", "lifeguard_triple_crash", "dead_too_soon"),
         ("awareness_never_recovers", "lossy_then_clean", "health_not_recovered"),
         ("awareness_refute_ignored", "lifeguard_triple_crash", "health_not_raised"),
         ("roster_revives_same_incarnation", "partition_outlives_reap", "stale_member_state"),
         ("quorum_counts_left", "leaves_to_half", "degraded_without_cause"),
         ("roster_counts_tombstones", "leaves_to_half", "degraded_without_cause")]  # fmt: skip
MUTANTS = {m.name: m for m in LIFEGUARD_MUTANTS}
S = 1_000_000_000


@cache
def _clean(scenario: str) -> list[str]:
    sc = load_scenario(SCENARIO_DIR / f"{scenario}.toml")
    return run_scenario(sc, sc.seed).violations


@pytest.mark.parametrize(("mutant", "scenario", "verdict"), CASES)
def test_the_planted_bug_fails_the_scenario_that_passes_without_it(
    mutant: str, scenario: str, verdict: str
) -> None:
    planted_bug = MUTANTS[mutant]
    sc = load_scenario(SCENARIO_DIR / f"{scenario}.toml")
    assert _clean(scenario) == []
    with _patched(planted_bug.patches() if planted_bug.patches else []):
        planted = run_scenario(sc, sc.seed, plant=planted_bug.plant).violations
    assert any(str(v).startswith(verdict) for v in planted), planted


def test_every_lifeguard_mutant_has_a_case() -> None:
    assert {case[0] for case in CASES} == set(MUTANTS)


@pytest.mark.parametrize("config", [MembershipConfig.lan(), MembershipConfig.wan()])
def test_the_restated_timeout_is_the_nodes(config: MembershipConfig) -> None:
    """The verdict's formula, restated apart from the node's, agrees with it: base
    timeout, Lifeguard's K and the log-scale shrink, with the health score's widening."""
    for n in (2, 3, 4, 5, 9, 12, 40):
        base = suspicion_timeout_ns(config, n)
        longest = base * config.suspicion_max_mult
        k = expected_confirmations(config, n)
        for health in range(config.awareness_max):
            shortest = min(base * (health + 1), longest)
            for confirmed in range(k + 2):
                node = lifeguard_timeout_ns(shortest, longest, k, confirmed)
                assert suspicion_runs_ns(config, n, health, confirmed) == node


def test_worked_values() -> None:
    """Five members (K = 2), 1 s probes, suspicion_mult 2, max 6: 12 s unconfirmed,
    ``12 - 10 log 2 / log 3`` = 5.69 s with one confirmation, the base 2 s with two; a
    score of 1 doubles the base."""
    lan = MembershipConfig.lan()
    assert suspicion_runs_ns(lan, 5, 0, 0) == 12 * S
    assert suspicion_runs_ns(lan, 5, 0, 1) == pytest.approx(5.691 * S, rel=1e-3)
    assert suspicion_runs_ns(lan, 5, 0, 2) == 2 * S
    assert suspicion_runs_ns(lan, 5, 1, 2) == 4 * S
    assert suspicion_runs_ns(lan, 3, 0, 0) == 2 * S  # K = 0: the base, at once
    assert suspicion_runs_ns(lan, 5, 7, 2) == 12 * S  # widened no further than the longest
