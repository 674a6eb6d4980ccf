"""Degraded mode: the share formulas, and nodes deciding without their owner.

The formulas (``cluster/node/config.py``) are pinned by values and by hypothesis
properties: over the members, the shares of a window sum to exactly the degraded units
``floor(capacity * fraction)``, each within one of the others, so no window hands out
more and small limits still admit. Then real nodes over the in-memory link
(``tests/partition_link.py``): a small limit admits while its owner is down (it
rounded to nothing before), a node whose seeds do not answer decides from a bounded
share instead of failing closed, and checks already forwarded to an owner that is
then suspected are decided at that moment, not at their forward timeout.
"""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st
from partition_link import PartitionLink, partition_cluster
from test_node_links import NS_PER_MS, NS_PER_S, client_owned_by

from meshlimit.cluster.node import Decided
from meshlimit.cluster.node.config import (
    degraded_share,
    degraded_start,
    degraded_units,
    local_quota,
)
from meshlimit.core.decision import Decision

# --- the formulas ---------------------------------------------------------------------------


def test_degraded_units_pinned_values() -> None:
    assert degraded_units(7, 0.5) == 3
    assert degraded_units(3, 1.0) == 3
    assert degraded_units(10, 0.0) == 0  # fails closed
    assert degraded_units(100, 0.29) == 28  # int(100 * 0.29) in IEEE doubles: 28.999...


def test_degraded_start_pinned_values() -> None:
    assert [degraded_start("acme", w, 5) for w in range(6)] == [3, 1, 0, 4, 1, 1]
    assert degraded_start("acme", 2**32 + 3, 5) == degraded_start("acme", 3, 5)  # seed mod 2**32


def test_a_capacity_of_four_on_five_nodes_is_dealt_two_units_a_window() -> None:
    deals = [
        [degraded_share(4, 0.5, members=5, position=p, client="acme", window=w) for p in range(5)]
        for w in range(4)
    ]
    assert deals == [[0, 0, 0, 1, 1], [0, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 0, 0, 0, 1]]
    assert local_quota(4, 5, 0.5) == 1
    assert local_quota(100, 5, 0.5) == 10 and local_quota(101, 5, 0.5) == 10  # 50 over 5


@given(
    capacity=st.integers(0, 10**7),
    members=st.integers(1, 64),
    fraction=st.floats(0.0, 1.0),
    window=st.integers(0, 2**45),
    client=st.text(min_size=1, max_size=20),
)
def test_the_shares_of_a_window_sum_to_exactly_the_degraded_units(
    capacity: int, members: int, fraction: float, window: int, client: str
) -> None:
    units = degraded_units(capacity, fraction)
    shares = [
        degraded_share(
            capacity, fraction, members=members, position=p, client=client, window=window
        )
        for p in range(members)
    ]
    assert sum(shares) == units <= math.floor(capacity * fraction)
    assert set(shares) <= {units // members, -(-units // members)}
    assert max(shares) <= local_quota(capacity, members, fraction)
    if members <= units:
        assert min(shares) >= 1, "every node gets a unit when there are enough"


@given(members=st.integers(2, 12), spare=st.integers(1, 11), client=st.text(max_size=8))
def test_the_spare_units_visit_every_position(members: int, spare: int, client: str) -> None:
    spare = min(spare, members - 1)
    capacity = 2 * (members + spare)  # units = members + spare at fraction 0.5
    got = [0] * members
    for window in range(40 * members):
        for p in range(members):
            share = degraded_share(
                capacity, 0.5, members=members, position=p, client=client, window=window
            )
            got[p] += share - 1
    assert sum(got) == 40 * members * spare
    assert min(got) > 0, f"a position never got a spare unit in {40 * members} windows: {got}"


# --- nodes ----------------------------------------------------------------------------------


def test_a_small_limit_still_admits_while_its_owner_is_down() -> None:
    # 4/hour at f = 0.5 is 2 units over 5 members: each node's old share, 2 // 4, was 0.
    link = partition_cluster(default_rule="4/hour")
    clients = [client_owned_by(link, "a", prefix=f"c{i}") for i in range(12)]
    link.crash("a")
    link.advance(10 * NS_PER_S)  # a is dead (not yet reaped): every check of its is degraded
    admitted = 0
    for client in clients:
        allowed = 0
        for name in "bcde":
            node = link.nodes[name]
            share = node.degraded.quota(node.rule_for(client), client, link.wall(name))
            decisions = [link.check(name, client) for _ in range(3)]
            assert {d.path for d in decisions} == {"degraded"}
            assert [d.allowed for d in decisions] == [True] * share + [False] * (3 - share)
            allowed += share
        assert allowed <= 2, f"{client}: the shares of one window exceed the degraded units"
        admitted += allowed
    assert admitted >= len(clients), "small limits rounded to nothing in degraded mode"


def test_a_node_whose_seeds_do_not_answer_decides_from_a_bounded_share() -> None:
    link = PartitionLink(default_rule="10/hour")
    node = link.add("x", seeds=["nowhere"])
    link.advance(5 * NS_PER_S)
    assert not node.ready, "joining: a node joined through a seed that does not exist"
    rule = node.rule_for("acme")
    share = node.degraded.quota(rule, "acme", link.wall("x"))
    assert 1 <= share <= local_quota(rule.capacity, 2, 0.5), "the seed and itself: 2 members"
    decisions = [link.check("x", "acme") for _ in range(share + 2)]
    assert {d.path for d in decisions} == {"degraded"}
    assert [d.allowed for d in decisions] == [True] * share + [False] * 2
    for refused in decisions[share:]:
        assert 0 < refused.retry_after < math.inf, "a refusal while joining must say when"


def test_expected_members_bounds_the_share_of_a_node_still_joining() -> None:
    link = PartitionLink(default_rule="10/hour", expected_members=5)
    node = link.add("x", seeds=["nowhere"])
    rule = node.rule_for("acme")
    assert node.degraded.members == 5
    assert node.degraded.quota(rule, "acme", link.wall("x")) <= local_quota(10, 5, 0.5) == 1


def test_checks_forwarded_to_an_owner_are_decided_as_soon_as_it_is_suspected() -> None:
    link = partition_cluster("abc")
    client = client_owned_by(link, "a")
    b = link.nodes["b"]
    link.crash("a")
    tickets = []
    while dict((n, s) for n, _, s, _ in b.members())["a"] == "alive":
        ticket = b.check(client, 1, now_ns=link.now_ns, wall_ns=link.wall("b"))
        assert isinstance(ticket, int), "b decided before it suspected a"
        tickets.append(ticket)
        link.advance(20 * NS_PER_MS)  # a fraction of the 200 ms forward timeout
    assert b.pending_count() == 0, "forwarding: checks wait for their timeout after detection"
    assert b.stats["stranded_forwards"] >= 1
    decided = {e.ticket for e in link.events["b"] if isinstance(e, Decided)}
    assert decided == set(tickets), "forwarding: a ticket was never decided"
    # From now on every check of a's is decided at once, where it arrives.
    after = [b.check(client, 1, now_ns=link.now_ns, wall_ns=link.wall("b")) for _ in range(50)]
    assert all(isinstance(d, Decision) and d.path == "degraded" for d in after)
