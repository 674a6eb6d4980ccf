"""Minorities that must know they are minorities: the cluster's size outlives reaping.

Real nodes over the in-memory :class:`~partition_link.PartitionLink` (fake clock, lan
timings: dead members are reaped 30 s after they die). Each test pins one rule of
``docs/design.md`` ("Degraded mode and the majority rule"):

- reaped dead members still count toward the majority (the roster), so a node that
  restarts or joins inside a minority learns the cluster's size from a peer and stays
  degraded;
- an owner inside a minority answers forwarded checks from its degraded share;
- a member that left gracefully does not count; one an operator forgets stops counting
  everywhere; one dead longer than ``forget_after_ns`` is forgotten;
- the window that remains (every node of a minority restarted without memory) and how
  ``expected_members`` closes it;
- a healed partition that outlived reaping merges again (push-pull, refutations).
"""

from __future__ import annotations

from partition_link import PartitionLink, membership, partition_cluster
from test_node_links import NS_PER_S, client_owned_by, log_of

from meshlimit.cluster.node import Node

#: Long enough for the far side to be suspected, declared dead and reaped (lan: ~5 s + 30 s).
PAST_REAPING_NS = 60 * NS_PER_S
#: Two push-pull rounds (lan: 30 s each) and a few probe rounds: a healed partition merges.
PUSH_PULLS_NS = 65 * NS_PER_S


def quorum(node: Node) -> set[str]:
    return set(node.membership.quorum())


def table(node: Node) -> set[str]:
    return {name for name, _, _, _ in node.members()}


def owned_by(link: PartitionLink, owner: str, viewers: str) -> str:
    """A client that ``owner`` owns in the view of each of ``viewers``."""
    for i in range(1000):
        client = f"client-{i}"
        if {link.nodes[name].owner(client) for name in viewers} == {owner}:
            return client
    raise AssertionError(f"routing: no client of {owner} among 1000 ids")


def split_past_reaping(link: PartitionLink) -> None:
    """Cut {a, b} from {c, d, e} until each side has reaped the other."""
    link.partition("ab", "cde")
    link.advance(PAST_REAPING_NS)
    b = link.nodes["b"]
    assert table(b) == {"a", "b"}, f"membership: b still holds {sorted(table(b))}"
    assert quorum(b) == set("abcde"), "roster: b forgot the reaped members"
    assert not b.degraded.majority, "majority rule: b took {a, b} for a majority"


def test_a_node_restarting_inside_a_minority_after_reaping_stays_degraded() -> None:
    link = partition_cluster()
    split_past_reaping(link)
    a = link.restart("a", seeds=["b", "c"])  # c is unreachable; b answers
    link.advance(2 * NS_PER_S)
    assert a.ready, "joining: a never joined through b"
    assert quorum(a) == set("abcde"), f"roster: a learnt only {sorted(quorum(a))} from b"
    assert not a.degraded.majority, "majority rule: a restarted into a 2-of-5 'majority'"
    client = owned_by(link, "a", "ab")  # a owns it on the minority's ring
    decisions = [link.check(name, client) for name in "abab" * 3]
    assert {d.path for d in decisions} == {"degraded"}, "minority: decided at full capacity"
    units = a.config.degraded_fraction * a.rule_for(client).capacity
    assert sum(d.allowed for d in decisions) <= units, "minority: more than the degraded units"


def test_a_newcomer_joining_inside_a_minority_learns_the_cluster_size() -> None:
    link = partition_cluster()
    split_past_reaping(link)
    link.partition("abf", "cde")  # f boots on the minority's side
    f = link.add("f", seeds=["a"])
    link.advance(2 * NS_PER_S)
    assert f.ready and quorum(f) == set("abcdef"), f"roster: f knows {sorted(quorum(f))}"
    assert not f.degraded.majority, "majority rule: a newcomer took 3 of 6 for a majority"
    assert link.check("f", "acme").path == "degraded"
    for name in "cde":  # the majority never heard of f: still 3 of 5
        assert link.nodes[name].degraded.majority, f"majority rule: {name} lost its majority"


def test_a_minority_owner_answers_forwarded_checks_from_its_share() -> None:
    # b and c see a majority (3 of 3); a was told the cluster has 7 members, so it sees
    # a minority (3 of 7): it owns clients on everyone's ring but must not decide them
    # at full capacity, even when a peer that sees a majority forwards them.
    link = PartitionLink()
    link.overrides = {"expected_members": 7}
    link.add("a")
    link.overrides = {}
    link.add("b", seeds=["a"])
    link.add("c", seeds=["a"])
    link.advance(2 * NS_PER_S)
    a = link.nodes["a"]
    assert link.nodes["b"].degraded.majority and not a.degraded.majority
    client = client_owned_by(link, "a")
    decisions = [link.check("b", client) for _ in range(5)]
    assert {d.path for d in decisions} == {"forwarded"}, "b should forward to the owner"
    share = a.degraded.quota(a.rule_for(client), client, link.wall("a"))
    assert [d.allowed for d in decisions] == [True] * share + [False] * (5 - share)
    assert {path for path, _ in log_of(link, "a", client)} == {"degraded"}, (
        "minority owner: decided forwarded checks on the merged counts"
    )
    refused = decisions[-1]
    assert 0 < refused.retry_after < float("inf"), "a degraded refusal must say when to retry"


def test_a_member_that_left_gracefully_does_not_count_but_a_crashed_one_does() -> None:
    left = partition_cluster("abcd")
    for name in "cd":
        left.leave(name)
    left.advance(PAST_REAPING_NS)
    assert quorum(left.nodes["a"]) == {"a", "b"} and left.nodes["a"].degraded.majority
    crashed = partition_cluster("abcd")
    for name in "cd":
        crashed.crash(name)
    crashed.advance(PAST_REAPING_NS)
    a = crashed.nodes["a"]
    assert quorum(a) == set("abcd") and table(a) == {"a", "b"}
    assert not a.degraded.majority, "majority rule: two crashed members stopped counting"


def test_forgetting_dead_members_restores_the_majority_everywhere() -> None:
    link = partition_cluster()
    for name in "cde":
        link.crash(name)
    link.advance(PAST_REAPING_NS)
    a, b = link.nodes["a"], link.nodes["b"]
    assert not a.degraded.majority and not b.degraded.majority
    assert a.forget("b", now_ns=link.now_ns) == "alive", "forget: a live member was forgotten"
    assert a.forget("a", now_ns=link.now_ns) == "self"
    assert a.forget("zz", now_ns=link.now_ns) == "unknown"
    assert a.forget("c", now_ns=link.now_ns) == "forgotten"
    assert a.forget("c", now_ns=link.now_ns) == "gone", "forget: not idempotent"
    assert not a.degraded.majority, "2 of 4 is not a majority yet"
    assert a.forget("d", now_ns=link.now_ns) == "forgotten"
    assert quorum(a) == {"a", "b", "e"} and a.degraded.majority, "forget: still counted"
    link.advance(2 * NS_PER_S)  # the news spreads by gossip
    assert quorum(b) == {"a", "b", "e"} and b.degraded.majority, "forget: b never heard"
    assert link.check("b", client_owned_by(link, "b")).path == "owner"
    # A newcomer learns the tombstones too: it does not count c or d.
    f = link.add("f", seeds=["b"])
    link.advance(2 * NS_PER_S)
    assert quorum(f) == {"a", "b", "e", "f"} and f.degraded.majority


def test_a_forgotten_member_that_is_alive_refutes_and_counts_again() -> None:
    link = partition_cluster()
    link.partition("ab", "cde")
    link.advance(PAST_REAPING_NS)
    for name in "cde":
        assert link.nodes["a"].forget(name, now_ns=link.now_ns) == "forgotten"
    link.advance(NS_PER_S)
    assert link.nodes["a"].degraded.majority and link.nodes["b"].degraded.majority
    link.heal()
    link.advance(PUSH_PULLS_NS)
    for name, node in link.up():
        assert quorum(node) == set("abcde"), f"{name} counts {sorted(quorum(node))}"
        assert node.degraded.majority and table(node) == set("abcde"), name


def test_a_member_dead_longer_than_the_forget_time_stops_counting() -> None:
    link = partition_cluster(membership=membership(forget_after_ns=120 * NS_PER_S))
    for name in "cde":
        link.crash(name)
    link.advance(PAST_REAPING_NS)
    a = link.nodes["a"]
    assert quorum(a) == set("abcde") and not a.degraded.majority
    link.advance(PAST_REAPING_NS + 10 * NS_PER_S)  # 130 s since they died: forgotten
    assert quorum(a) == {"a", "b"} and a.degraded.majority
    assert (
        a.membership.stats["forgotten_by_time"]
        + link.nodes["b"].membership.stats["forgotten_by_time"]
        >= 3
    )


def restart_together(link: PartitionLink) -> None:
    """a and b crash together, then come back with no memory, each the other's seed."""
    link.crash("a")
    link.crash("b")
    link.add("a", seeds=["b"])
    link.add("b", seeds=["a"])
    link.advance(5 * NS_PER_S)


def test_the_remaining_window_and_expected_members_closing_it() -> None:
    # Every node of the minority restarts with no memory while the partition lasts:
    # they learn the cluster's size from no one. Without expected_members they take
    # themselves for the whole cluster (the window docs/design.md states) ...
    link = partition_cluster()
    split_past_reaping(link)
    restart_together(link)
    assert quorum(link.nodes["a"]) == {"a", "b"} and link.nodes["a"].degraded.majority
    # ... and with it, the cluster's size survives the loss of every memory of it.
    link = partition_cluster(expected_members=5)
    split_past_reaping(link)
    restart_together(link)
    for name in "ab":
        node = link.nodes[name]
        assert node.ready and quorum(node) == {"a", "b"}
        assert not node.degraded.majority, f"expected_members: {name} took 2 for a majority"
        assert link.check(name, "acme").path == "degraded"


def test_a_healed_partition_that_outlived_reaping_merges_again() -> None:
    # Each side holds the other dead in its roster and refuses their stale ALIVE news at
    # the same incarnation: push-pull, the news of their death and refutations merge them.
    link = partition_cluster()
    split_past_reaping(link)
    link.heal()
    link.advance(PUSH_PULLS_NS)
    for name, node in link.up():
        assert table(node) == set("abcde"), f"membership: {name} holds {sorted(table(node))}"
        assert node.degraded.majority, f"majority rule: {name} still in a minority"


def test_a_member_back_from_the_dead_over_a_one_way_link_makes_no_majority() -> None:
    """c can hear a and b but not reach them (a one-way cut), so it holds them dead, in
    a minority. A new life of a comes back and its news reaches c over the working
    direction: c must not count it live (it cannot hear c) until it acks c's ping, which
    it can only do once the cut heals; then confirmation pings restore c's majority
    within a few probe intervals, not a round of the cluster. Before, c counted a live
    on the news alone and decided at full capacity in a minority (long fuzz seeds
    31415094246, 31415094372, 31415094402)."""
    link = partition_cluster("abc")
    link.cut |= {("c", "a"), ("c", "b")}
    link.advance(PAST_REAPING_NS)
    c = link.nodes["c"]
    assert quorum(c) == set("abc") and not c.degraded.majority
    link.restart("a", seeds=["b"])
    heard = False
    for _ in range(2 * PUSH_PULLS_NS // NS_PER_S):
        link.advance(NS_PER_S)
        heard = heard or "a" in c.membership.alive_nodes()
        assert not c.degraded.majority, "majority rule: c counted news over a one-way link"
    assert heard, "the test needs c to hear of a's new life"
    assert "a" in c.membership.unconfirmed[0] or "a" not in c.membership.alive_nodes()
    link.cut.clear()
    probe_ns = c.config.membership.probe_interval_ns
    link.advance(3 * probe_ns)
    assert c.degraded.majority or set(c.membership.alive_nodes()) != set("abc")
    link.advance(PUSH_PULLS_NS)  # whatever news is still owed has merged by now
    assert c.degraded.majority and not c.membership.unconfirmed[0]
