"""The data-side verdicts: stranded forwards (``sim/stranded.py``), the burst carry replayed
for refusals (``sim/carry.py``), a write kept by its own writer (``sim/own_writes.py``) and a
crashed owner's counts at every new holder (``sim/promoted.py``), degraded slots re-sent
while their owner is unreachable (``sim/reports.py``). Each fires on the planted bug it was
added for (``scripts/mutation/dataside.py``; those runs in the slow lane) and stays quiet on a
correct run (the shipped scenarios themselves run in ``tests/test_sim_runs.py``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from meshlimit.cluster.membership import MembershipConfig
from meshlimit.cluster.wire.messages import MemberState
from meshlimit.core.rules import parse_rule
from meshlimit.sim.carry import CarryBounds
from meshlimit.sim.history import Life
from meshlimit.sim.own_writes import own_write_kept
from meshlimit.sim.runner import SCENARIO_DIR, run_scenario
from meshlimit.sim.scenario import load_scenario
from meshlimit.sim.stranded import STRANDED_SLACK_NS, judge_stranded
from meshlimit.sim.views import View
from meshlimit.sim.windows import WindowTally

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from mutation.catalogue import _patched  # noqa: E402
from mutation.dataside import DATASIDE_MUTANTS  # noqa: E402

MS = 1_000_000
S = 1_000 * MS


def _findings() -> tuple[list[str], Any]:
    found: list[str] = []
    return found, lambda kind, life, client, now, detail: found.append(kind)


def _view() -> View:
    return View("n1", 0, knows_ring=True, config=MembershipConfig())


# --- stranded forwards -----------------------------------------------------------------------


def test_a_check_left_waiting_after_its_owner_is_suspected_is_stranded() -> None:
    view, life = _view(), Life("n1", 1, 0, seeded=False)
    view.apply("n2", MemberState.ALIVE, 1 * S)
    view.apply("n2", MemberState.SUSPECT, 5 * S)
    found, add = _findings()
    judge_stranded(add, life, view, "c", "n2", 5 * S - 50 * MS, 5 * S)  # released at once
    judge_stranded(add, life, view, "c", "n2", 4 * S, 4 * S + 200 * MS)  # before the suspicion
    assert found == []
    judge_stranded(add, life, view, "c", "n2", 5 * S - 50 * MS, 5 * S + 150 * MS)
    assert found == ["stranded_wait"]


def test_a_suspicion_refuted_within_its_instant_strands_nothing() -> None:
    view, life = _view(), Life("n1", 1, 0, seeded=False)
    view.apply("n2", MemberState.ALIVE, 1 * S)
    view.apply("n2", MemberState.SUSPECT, 5 * S)
    view.apply("n2", MemberState.ALIVE, 5 * S)
    found, add = _findings()
    judge_stranded(add, life, view, "c", "n2", 5 * S - MS, 5 * S + 2 * STRANDED_SLACK_NS)
    assert found == []


# --- the burst carry replayed for refusals ---------------------------------------------------


def _tally(admitted: int, rule: Any) -> WindowTally:
    window = WindowTally(capacity=rule.capacity, limit=rule.limit)
    window.add(("n1", 1), 0, admitted, full=True)
    return window


def test_a_carry_is_repaid_at_the_limit_a_window() -> None:
    rule = parse_rule("100/s burst 50 algo fixed_window")
    windows = {("c", rule.series, 10): _tally(150, rule), ("c", rule.series, 11): _tally(20, rule)}
    carry = CarryBounds(windows, set())
    for index in (10, 11):
        carry.counted("c", rule.series, index)
    assert carry.bound(("c", rule.series, 11), rule) == 50  # the burst used in window 10
    # Window 11 admitted 20 < limit: window 12 starts with no carry, its whole capacity.
    assert carry.fits(("c", rule.series, 12), rule, 1, 0)
    windows[("c", rule.series, 12)] = _tally(120, rule)
    assert carry.fits(("c", rule.series, 12), rule, 30, 0)  # 150 in all: what is left
    assert not carry.fits(("c", rule.series, 12), rule, 31, 0)


def test_an_uncertain_window_makes_the_carry_its_most() -> None:
    rule = parse_rule("100/s burst 50 algo fixed_window")
    windows = {("c", rule.series, 10): _tally(20, rule)}
    carry = CarryBounds(windows, {("c", rule.series, 10)})
    carry.counted("c", rule.series, 10)
    assert carry.bound(("c", rule.series, 11), rule) == 50


# --- a write is the entry its writer holds right after ---------------------------------------


def test_a_write_its_writer_does_not_keep_is_lost() -> None:
    found, add = _findings()
    life = Life("n3", 1, 0, seeded=False)
    own_write_kept(add, life, "client:k", (1000, 4, "n3"), S)
    assert found == []
    own_write_kept(add, life, "client:k", (1000, 5, "n2"), S)
    assert found == ["own_write_lost"]


# --- the planted bugs, on the shipped scenarios that reach them ------------------------------


def _run(scenario: str, mutant: str | None) -> list[str]:
    planted = {m.name: m for m in DATASIDE_MUTANTS}.get(mutant or "")
    patches = planted.patches() if planted is not None and planted.patches else []
    with _patched(patches):
        result = run_scenario(
            load_scenario(SCENARIO_DIR / f"{scenario}.toml"), 1,
            plant=None if planted is None else planted.plant,
        )  # fmt: skip
    return [v.split(":", 1)[0] for v in result.violations]


@pytest.mark.slow
def test_an_hlc_that_drops_the_remote_counter_loses_a_write() -> None:
    assert _run("hlc_relay_same_ms", None) == []
    assert "own_write_lost" in _run("hlc_relay_same_ms", "hlc_observe_drops_remote_counter")


@pytest.mark.slow
def test_a_hand_over_that_skips_new_replicas_leaves_them_behind() -> None:
    assert "holder_behind" in _run("replica_promoted_long_window", "handover_skips_new_replicas")


@pytest.mark.slow
def test_degraded_resends_spent_in_a_cut_leave_a_replica_behind() -> None:
    assert "report_behind" in _run("degraded_report_after_cut", "degraded_resends_spent_cut_off")


@pytest.mark.slow
def test_a_resync_that_counts_replication_ends_before_the_counts_are_back() -> None:
    assert "counts_lost" in _run("resync_reordered", "resync_counts_replication")
