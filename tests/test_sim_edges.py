"""Reproductions of the cluster-edge bugs (issue 13), kept as regression tests.

Each ``sim/scenarios/edge_*.toml`` reproduces one bug with its own seed. Each test here
was marked ``xfail(strict=True)`` while its bug was open (every one failed, with the
figure quoted in its scenario's description, against the cluster of commit f9c91bb);
the fixes of commit ca54e57 made every one pass, so the marks are gone and a test
that fails again is a regression of its bug.

Where the checkers already give the verdict that names the bug (``over_admission``,
``uncounted_admission``) the test asserts there is none of that kind (other findings in
the same run are other tests' business); where they are too loose
(faulty windows are judged at 1.5-2.5 capacities) or do not judge the thing at all
(refusals, rejoining), the test counts the exact figure from the run's decisions:
admissions per client window by the deciders' clocks, answers at one node.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import pytest

from meshlimit.cluster.membership.members import MemberEvent
from meshlimit.cluster.node.config import NodeConfig
from meshlimit.cluster.wire.messages import MemberState
from meshlimit.core.decision import Decision
from meshlimit.sim.cli import shipped_scenarios
from meshlimit.sim.events import NS_PER_S, SIM_EPOCH_NS
from meshlimit.sim.scenario import load_scenario
from meshlimit.sim.world import World

EDGES = {name: path for name, path in shipped_scenarios().items() if name.startswith("edge_")}
#: The share of a client's capacity the nodes cut off from its owner may admit between
#: them, per window (``docs/design.md``): the fault bound is ``capacity * (1 + this)``.
FRACTION = NodeConfig("x", ("x", 0)).degraded_fraction
#: The checkers' verdicts that name a minority deciding at full capacity.
MINORITY_VERDICTS = ("over_admission", "minority_decided_at_full")


@dataclass(slots=True)
class EdgeRun:
    """One run of an edge scenario with every decision kept."""

    world: World
    #: ``(now_ns, node, client, window_start_s, capacity, cost, allowed, path)`` per decision,
    #: windows named by the start of the decider's wall-clock window, in seconds of run time.
    decided: list[tuple[int, str, str, float, int, int, bool, str]] = field(default_factory=list)
    #: ``(now_ns, node, client, decision)``: the answer each client got, where it asked.
    answers: list[tuple[int, str, str, Decision]] = field(default_factory=list)

    @property
    def violations(self) -> list[str]:
        return [str(v) for v in self.world.checkers.violations]

    def verdicts(self, *kinds: str) -> list[str]:
        """The violations of these kinds: the checkers' verdicts that name one bug (a
        reproduction is not held hostage by findings about something else)."""
        return [v for v in self.violations if v.split(":")[0] in kinds]

    def admitted(self, client: str, *, node: str | None = None) -> Counter[float]:
        """Admissions of ``client`` per window (by window start, s), at ``node`` or all."""
        tally: Counter[float] = Counter()
        for _, decider, who, window_s, _, cost, allowed, _ in self.decided:
            if who == client and allowed and (node is None or decider == node):
                tally[window_s] += cost
        return tally

    def capacity(self, client: str) -> int:
        return max(cap for _, _, who, _, cap, _, _, _ in self.decided if who == client)


@cache
def edge_run(name: str) -> EdgeRun:
    """Run the edge scenario ``name`` once per session with its own seed."""
    scenario = load_scenario(EDGES[name])
    assert scenario.seed is not None, f"{name}: shipped scenarios state their seed"
    world = World(scenario, scenario.seed)
    run = EdgeRun(world)
    checkers = world.checkers
    on_admissions, on_decision = checkers.on_admissions, checkers.on_decision

    def admissions(node: str, log: list, now: int, *received: object) -> None:  # type: ignore[type-arg]
        for wall, client, rule, cost, allowed, path in log:
            window_ns = rule.window_ns
            start_s = ((wall - SIM_EPOCH_NS) // window_ns * window_ns) / NS_PER_S
            run.decided.append((now, node, client, start_s, rule.capacity, cost, allowed, path))
        on_admissions(node, log, now, *received)

    def decision(
        node: str, client: str, answer: Decision, started: int, now: int, **kw: str | None
    ) -> None:
        run.answers.append((now, node, client, answer))
        on_decision(node, client, answer, started, now, **kw)

    checkers.on_admissions = admissions  # type: ignore[method-assign]
    checkers.on_decision = decision  # type: ignore[method-assign]
    world.run()
    return run


def _within(windows: Counter[float], start_s: float, end_s: float) -> dict[float, int]:
    return {w: n for w, n in sorted(windows.items()) if start_s <= w < end_s}


# --- the scenarios themselves ---------------------------------------------------------------


def test_every_edge_scenario_is_there_and_says_what_it_reproduces() -> None:
    expected = {
        "edge_serve_before_join", "edge_same_seed_restart", "edge_same_seed_keyed",
        "edge_restart_in_minority", "edge_minority_owner", "edge_unreachable_seed",
        "edge_small_limit_degraded",
    }  # fmt: skip
    assert expected <= set(EDGES)
    for name, path in EDGES.items():
        scenario = load_scenario(path)
        assert scenario.name == name and scenario.seed is not None
        text = " ".join(scenario.description.split())
        assert "Reproduces issue 13, bug" in text and "Correct:" in text, name
        assert "Bound:" in text, name


@pytest.mark.parametrize("name", sorted(EDGES))
def test_edge_scenario_runs_to_its_end_without_a_simulator_fault(name: str) -> None:
    """Whatever the cluster does wrong, the simulator itself must run the scenario."""
    run = edge_run(name)
    assert run.world.now == run.world.scenario.duration_ns
    assert not run.world.errors
    assert not [v for v in run.violations if v.startswith(("exception", "progress"))]
    assert run.decided and run.answers


def test_the_edge_scenarios_drive_the_paths_they_are_about() -> None:
    """Each reproduction puts the cluster where the bug lives (true today and after fixes)."""
    before = edge_run("edge_serve_before_join")
    early = [d for d in before.decided if d[1] == "n3" and 5 * NS_PER_S <= d[0] < 7 * NS_PER_S]
    assert any(d[2] == "hot" for d in early), "n3 decides the hot client before it joins"
    minority = edge_run("edge_minority_owner")
    assert minority.world.nodes["n6"].generation == 1
    assert any(d[1] == "n6" for d in minority.decided if d[0] >= 50 * NS_PER_S)
    unreachable = edge_run("edge_unreachable_seed")
    assert any(n == "n4" and now < 12 * NS_PER_S for now, n, _, _ in unreachable.answers)
    small = edge_run("edge_small_limit_degraded")
    assert small.capacity("hot") == 5
    assert max(small.admitted("hot").values()) <= 5


# --- the reproductions, now regressions -------------------------------------------------------


def test_a_node_never_decides_at_full_capacity_before_it_has_joined() -> None:
    """Regression: issue 13 bug 1: a node that has not joined decides at full capacity."""
    run = edge_run("edge_serve_before_join")
    capacity = run.capacity("hot")
    windows = _within(run.admitted("hot"), 4, 10)
    bound = math.floor(capacity * (1 + FRACTION))
    assert max(windows.values()) <= bound, f"hot admitted per window {windows}, bound {bound}"


def test_a_restart_with_the_same_seed_is_counted_not_answered_from_a_cache() -> None:
    """Regression: issue 13 bug 2: a same-seed restart is answered from the old life's cache."""
    run = edge_run("edge_same_seed_restart")
    found = run.verdicts("uncounted_admission")
    assert not found, found[:5]


def test_a_restart_with_the_same_seed_rejoins_a_keyed_cluster() -> None:
    """Regression: issue 13 bug 2: a same-seed restart reuses its boot id; peers drop it."""
    run = edge_run("edge_same_seed_keyed")
    degraded = [now for now, _, _, answer in run.answers if answer.path == "degraded"]
    late = [now / NS_PER_S for now in degraded if now >= 10 * NS_PER_S]
    assert not late, f"{len(late)} degraded answers after 10 s, the last at {late[-1]:.3f} s"
    members = run.world.nodes["n3"].node.members()  # type: ignore[union-attr]
    assert sum(1 for m in members if m[2] == "alive") == 5


def test_a_node_restarting_inside_a_minority_stays_degraded() -> None:
    """Regression: issue 13 bug 3: a node restarting in a minority decides at full capacity."""
    run = edge_run("edge_restart_in_minority")
    capacity = run.capacity("hot")
    windows = _within(run.admitted("hot"), 52, 65)
    bound = math.floor(capacity * (1 + FRACTION))
    assert max(windows.values()) <= bound, f"hot admitted per window {windows}, bound {bound}"
    found = run.verdicts(*MINORITY_VERDICTS)
    assert not found, found[:5]


def test_an_owner_inside_a_minority_answers_from_its_degraded_quota() -> None:
    """Regression: issue 13 bug 3: an owner in a minority answers forwarded checks in full."""
    run = edge_run("edge_minority_owner")
    capacity = run.capacity("hot")
    at_owner = _within(run.admitted("hot", node="n1"), 52, 65)
    allowance = math.floor(capacity * FRACTION)
    assert max(at_owner.values()) <= allowance, (
        f"n1, cut off from the majority, admitted per window {at_owner}; at most {allowance}"
    )
    windows = _within(run.admitted("hot"), 52, 65)
    assert max(windows.values()) <= math.floor(capacity * (1 + FRACTION)), windows
    found = run.verdicts(*MINORITY_VERDICTS)
    assert not found, found[:5]


def test_a_node_whose_seeds_do_not_answer_serves_from_its_degraded_quota() -> None:
    """Regression: issue 13 bug 4: a node whose seed never answers refuses with retry 'never'."""
    run = edge_run("edge_unreachable_seed")
    waiting = [a for now, n, _, a in run.answers if n == "n4" and now < 12 * NS_PER_S]
    retries = Counter(a.retry_after for a in waiting if not a.allowed)
    bad = {r: k for r, k in retries.items() if not 0 < r < math.inf}
    assert not bad, f"refusals at n4 with retry_after not finite and positive: {bad}"
    assert any(a.allowed for a in waiting), "n4 admitted nothing while its seed was down"
    assert run.world.nodes["n4"].node.membership.joined  # type: ignore[union-attr]


def test_small_limits_still_admit_in_degraded_mode() -> None:
    """Regression: issue 13 bug 9: a degraded share of a small limit rounds to zero."""
    run = edge_run("edge_small_limit_degraded")
    capacity = run.capacity("hot")
    admitted = run.admitted("hot")
    windows = {float(s): admitted.get(float(s), 0) for s in range(6, 35)}
    empty = [w for w, n in windows.items() if n == 0]
    assert not empty, f"{len(empty)} of {len(windows)} windows admitted nothing: {empty[:5]}..."
    assert max(windows.values()) <= math.floor(capacity * (1 + FRACTION)), windows


def test_an_owner_killed_and_restarted_at_once_gets_its_counts_back() -> None:
    """The fast restart: an owner killed and started again before its peers notice must not
    admit its clients' whole capacity again. The window is judged at the resync bound
    (capacity, plus what the old life admitted in its last delay, plus the new life's
    degraded share), not each life alone (``per_node``), and holds to it."""
    scenario = load_scenario(shipped_scenarios()["fast_restart_owner"])
    world = World(scenario, scenario.seed)
    world.run()
    checkers = world.checkers
    found = [str(v) for v in checkers.violations]
    assert not found, found[:5]
    assert checkers.judged["resync"] >= 1, dict(checkers.judged)
    assert checkers.judged["per_node"] == 0, dict(checkers.judged)
    restarted = world.nodes["n1"].node
    assert restarted is not None and restarted.stats["resyncs"] == 1


def test_a_live_member_held_dead_by_a_stale_rumour_refutes_it() -> None:
    """The refutation gap: a member told it is dead at an incarnation below its own must
    re-announce itself. Before, ``lossy_then_clean`` at seed 1 left a live member dead in
    every other view for 21-23 s after the loss had ended (until a push-pull)."""
    scenario = load_scenario(shipped_scenarios()["lossy_then_clean"])
    world = World(scenario, 1)
    dead_since: dict[tuple[str, str], int] = {}
    longest = 0
    on_membership = world.checkers.on_membership

    def membership(observer: str, event: MemberEvent, now: int, **kw: Any) -> None:
        nonlocal longest
        key = (observer, event.node)
        if event.new_state == MemberState.DEAD:
            dead_since.setdefault(key, now)
        elif event.new_state in (MemberState.ALIVE, MemberState.SUSPECT) and key in dead_since:
            longest = max(longest, now - dead_since.pop(key))
        on_membership(observer, event, now, **kw)

    world.checkers.on_membership = membership  # type: ignore[method-assign]
    world.run()
    still = [key for key, since in dead_since.items() if world.nodes[key[1]].node is not None]
    assert not still, f"live members still held dead at the end: {still}"
    assert longest < 10 * NS_PER_S, f"a live member was held dead for {longest / NS_PER_S:.1f} s"
