"""Rules of several limits (``10/second;1000/hour``) in the cluster node: each limit is a
counter of its own, forwarded, replicated and decided degraded like any other, and a
check is admitted only if every limit admits it (``cluster/node/node.py``)."""

from __future__ import annotations

import random

from meshlimit.cluster.node import Decided, Node
from meshlimit.cluster.node.config import NodeConfig
from meshlimit.core.decision import Decision
from meshlimit.core.rules import parse_rule
from meshlimit.sim.scenario import parse_scenario
from meshlimit.sim.world import World

S = 1_000_000_000
T0 = 1_700_000_040 * S  # a whole minute: windows start here
RULE = "3/second;5/minute"


def node(name: str, seed: int, **overrides: object) -> Node:
    overrides.setdefault("default_rule", RULE)
    config = NodeConfig.preset("sim", name, (name, 1), **overrides)
    return Node(config, random.Random(seed), now_ns=0, wall_ns=T0)


def pump(nodes: dict[str, Node], now: int, rounds: int = 6) -> list[Decided]:
    """Deliver every datagram (by address host) until the nodes fall quiet."""
    decided: list[Decided] = []
    for _ in range(rounds):
        for sender in nodes.values():
            for datagram, (host, _) in sender.datagrams_to_send():
                nodes[host].receive(datagram, sender.config.addr, now_ns=now, wall_ns=T0 + now)
        for one in nodes.values():
            decided += [e for e in one.events() if isinstance(e, Decided)]
    return decided


def joined_pair() -> dict[str, Node]:
    a, b = node("a", 1), node("b", 2)
    a.start([], now_ns=0)
    b.start([("a", 1)], now_ns=0)
    nodes = {"a": a, "b": b}
    pump(nodes, 1)
    assert a.ready and b.ready and len(a.members()) == len(b.members()) == 2
    return nodes


def decided_now(result: Decision | int) -> Decision:
    assert isinstance(result, Decision), f"a ticket, not a decision: {result}"
    return result


def test_the_owner_admits_only_what_every_limit_admits_and_reports_the_tightest() -> None:
    a = node("a", 1)
    a.start([], now_ns=0)
    first = [decided_now(a.check("acme", 1, now_ns=10, wall_ns=T0)) for _ in range(4)]
    assert [d.allowed for d in first] == [True, True, True, False]
    assert [(d.limit, d.remaining, d.window_ns) for d in first[:3]] == [
        (3, 2, S),
        (3, 1, S),
        (3, 0, S),
    ]
    # Two seconds on: the minute has 2 left (the refused fourth counted nowhere).
    later = [decided_now(a.check("acme", 1, now_ns=20, wall_ns=T0 + 2 * S)) for _ in range(3)]
    assert [d.allowed for d in later] == [True, True, False]
    assert (later[2].limit, later[2].window_ns) == (5, 60 * S) and later[2].retry_after > 50
    # Both limits' counters exist and are marked for replication.
    series = {s for s, client in a.counters._counters if client == "acme"}
    assert series == {limit.series for limit in parse_rule(RULE).limits}


def test_a_forwarded_check_counts_at_the_owner_and_names_the_window_here() -> None:
    nodes = joined_pair()
    a, b = nodes["a"], nodes["b"]
    client = next(c for c in (f"c{i}" for i in range(200)) if a.owner(c) == "b")
    tickets = [a.check(client, 1, now_ns=100, wall_ns=T0 + 100) for _ in range(4)]
    assert all(isinstance(t, int) for t in tickets)
    sent_at = 100 + a.config.batch_window_ns
    a.tick(now_ns=sent_at, wall_ns=T0 + sent_at)  # the batch window closes: it leaves
    decided = {d.ticket: d.decision for d in pump(nodes, sent_at)}
    decisions = [decided[t] for t in tickets]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert {d.path for d in decisions} == {"forwarded"}
    assert [d.window_ns for d in decisions] == [S] * 4  # from a's copy of the rule
    # The owner counted in both series.
    assert {s for s, c in b.counters._counters if c == client} == {
        limit.series for limit in parse_rule(RULE).limits
    }


def test_degraded_checks_hold_every_limit_against_its_local_quota() -> None:
    a = node("a", 1, default_rule="100/second;4/minute", degraded_fraction=1.0)
    a.start([("z", 9)], now_ns=0)  # a seed that never answers: not joined, degraded
    decisions = [decided_now(a.check("acme", 1, now_ns=5, wall_ns=T0)) for _ in range(10)]
    assert {d.path for d in decisions} == {"degraded"}
    admitted = sum(d.allowed for d in decisions)
    assert 0 < admitted <= 4  # the minute's quota binds, though the second's is larger
    refused = next(d for d in decisions if not d.allowed)
    assert refused.window_ns == 60 * S and refused.retry_after > 0


def test_a_simulated_cluster_under_a_multi_limit_rule_keeps_its_invariants() -> None:
    text = """
name = "multi-limit"
duration = "20s"
nodes = 3
timeline = ["at 8s crash n2", "at 12s restart n2"]
[limits]
default = "20/2s;60/10s"
[workload]
clients = 5
rate = 200
zipf = 0
"""
    world = World(parse_scenario(text), seed=4)
    world.run()
    assert world.checkers.violations == []
