"""Scenarios a reviewer wrote against the simulator, each once a crash or a verdict too
strict for what ``docs/design.md`` promises: a cluster of one with no membership event at
all, rules in the ``N per WINDOW`` notation, and a fault-free cluster over slow links
(whose owners are ``slow`` by design, so its ``overloaded`` answers have a cause)."""

from __future__ import annotations

from meshlimit.sim.runner import run_scenario
from meshlimit.sim.scenario import parse_scenario


def run(text: str) -> list[str]:
    return run_scenario(parse_scenario(text), 1).violations


def test_a_cluster_of_one_with_no_membership_event_is_judged() -> None:
    # The end-of-run health check took the latest membership event of an empty list.
    assert run('duration = "3s"\nnodes = 1\n[limits]\ndefault = "5/s"\n[workload]\n'
               "clients = 10\nrate = 20.0\n") == []  # fmt: skip


def test_rules_in_the_per_notation_are_rules_not_tiers() -> None:
    # The world took every value without a "/" for a tier name: the node raised.
    assert run('duration = "4s"\nnodes = 3\ntimeline = ["at 1s set_rule c1 10 per minute"]\n'
               '[limits]\ndefault = "5/s"\n[limits.tiers]\ngold = "50 per second"\n'
               '[limits.clients]\nc0 = "gold"\nc2 = "20 per minute"\n[workload]\n'
               "clients = 10\nrate = 40.0\n") == []  # fmt: skip


def test_slow_links_are_a_cause_for_overloaded_answers() -> None:
    # Round trips near half the forward timeout mark owners slow (``owner_slow``), by design.
    found = run(
        'duration = "8s"\nnodes = 3\n[limits]\ndefault = "20/s"\n[workload]\n'
        'clients = 20\nrate = 100.0\n[network]\nlatency = "50ms"\njitter = "30ms"\n'
    )
    assert not [v for v in found if v.startswith("overloaded_without_cause")], found
