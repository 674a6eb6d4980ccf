"""Joining and lives, node by node over the in-memory link: no decision at full capacity
before the ring is known, seeds that do not answer (then do), seeds the driver resolves,
and a restart with the same identity that is still a new life for its peers.

The link and its fake clock are ``tests/test_node_links.py``'s; :class:`Lives` adds
nodes whose RNG seed, boot id, keys and start are chosen by the test, as a restart with
the same ``--node-id`` and ``--seed-rng`` makes them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable

import pytest
from test_node_links import PORT, Link, client_owned_by, log_of

from meshlimit.cluster.node import Node, SeedsWanted
from meshlimit.cluster.node.config import NodeConfig
from meshlimit.cluster.node.forwarding import SEQ_BITS, life_of, mix64, request_ids
from meshlimit.cluster.node.joining import RETRY_CAP_PROBES, retry_delay_ns
from meshlimit.core.decision import Decision

NS_PER_S = 1_000_000_000
KEY = b"k" * 32
PROBE_NS = NodeConfig.preset("sim", "x", ("x", 1)).membership.probe_interval_ns


class Lives(Link):
    """The in-memory link, where each start of a node is a life the test describes."""

    def life(
        self,
        name: str,
        *,
        seeds: Iterable[str] = (),
        rng_seed: int = 7,
        boot_id: int,
        keys: tuple[bytes, ...] = (),
        start: bool = True,
        resolve: bool = False,
    ) -> Node:
        """A new life of ``name`` (the old one, if any, is gone), started unless told not."""
        addr = (name, PORT)
        config = NodeConfig.preset(
            "sim", name, addr, default_rule=self.default_rule, cluster_keys=keys
        )
        self.skew_ns.setdefault(name, 0)
        node = Node(
            config,
            random.Random(rng_seed),
            now_ns=self.now_ns,
            wall_ns=self.wall(name),
            boot_id=boot_id,
        )
        node.decision_log = []
        self.nodes[name] = node
        self.events[name] = []
        self._names[addr] = name
        self.off.discard(name)
        if start:
            self.start(name, seeds=seeds, resolve=resolve)
        return node

    def start(self, name: str, *, seeds: Iterable[str] = (), resolve: bool = False) -> None:
        addrs = [(s, PORT) for s in seeds]
        self.nodes[name].start(addrs, now_ns=self.now_ns, resolve=resolve)
        self.settle()

    def wanted(self, name: str) -> list[SeedsWanted]:
        return [e for e in self.events[name] if isinstance(e, SeedsWanted)]


def two(keys: tuple[bytes, ...] = ()) -> Lives:
    """a and b, joined: a started alone, b through a."""
    link = Lives()
    link.life("a", boot_id=1, rng_seed=1, keys=keys)
    link.life("b", seeds="a", boot_id=2, keys=keys)
    link.advance(2 * NS_PER_S)
    assert link.nodes["b"].ready and len(link.nodes["a"].membership.alive_nodes()) == 2
    return link


# --- formulas -------------------------------------------------------------------------


def test_join_retry_backs_off_from_one_probe_interval_to_the_cap() -> None:
    delays = [retry_delay_ns(attempt, 1_000) for attempt in range(1, 9)]
    assert delays == [1_000, 2_000, 4_000, 8_000, 16_000, 16_000, 16_000, 16_000]
    assert retry_delay_ns(10**6, 1_000) == RETRY_CAP_PROBES * 1_000


def test_request_ids_name_their_life() -> None:
    assert mix64(0) == 0 and mix64(1) == 0x5692161D100B05E5  # SplitMix64's finaliser
    life, first = request_ids(1)
    assert (life, first) == (0x5692161D100B05E5 >> 41, 0x5692161D100B05E5 & (2**39 - 1))
    assert life_of(life << SEQ_BITS | first) == life
    # Boot ids that differ in one bit (two lives started in the same second) name
    # different lives; every id stays below 2**63.
    lives = {request_ids((1_700_000_000 << 32) | r)[0] for r in range(1000)}
    assert len(lives) == 1000 and max(lives) < 2**23


# --- no full capacity before the ring is known (bug 1) ----------------------------------


def test_a_node_decides_degraded_before_start_and_until_a_seed_answers() -> None:
    link = Lives("5/hour")
    link.life("a", boot_id=1, rng_seed=1)
    link.crash("a")  # the seed is down
    b = link.life("b", boot_id=2, start=False)
    before = b.check("acme", now_ns=link.now_ns, wall_ns=link.wall("b"))
    assert isinstance(before, Decision) and before.path == "degraded", "decided before start"
    link.start("b", seeds="a")
    link.advance(10 * PROBE_NS)
    assert not b.ready
    decisions = [link.check("b", f"c{i}") for i in range(20) for _ in range(3)]
    assert {d.path for d in decisions} == {"degraded"}, "a joining node took itself for a ring"
    refused = [d for d in decisions if not d.allowed]
    assert refused, "every client admitted 3 of 5/hour in degraded mode?"
    assert all(0 < d.retry_after < math.inf for d in refused), "retry never, while joining"
    # A limit whose degraded share is nothing: refused, but worth retrying soon (not -1).
    link.set_rule("b", "client:tiny", "1/hour")
    tiny = link.check("b", "tiny")
    assert not tiny.allowed and 0 < tiny.retry_after <= PROBE_NS / NS_PER_S, tiny
    # The seed comes up: b joins within a probe interval or two, and then routes.
    link.off.discard("a")
    link.advance(2 * PROBE_NS)
    assert b.ready, "b did not join once its seed answered"
    assert link.check("b", client_owned_by(link, "a", "x")).path == "forwarded"
    assert link.check("b", client_owned_by(link, "b", "y")).path == "owner"


def test_an_owner_that_has_not_rejoined_answers_forwards_from_its_degraded_quota() -> None:
    link = two()
    client = client_owned_by(link, "b")
    link.crash("b")
    # b's new life waits on a seed that is down; a still holds the old b alive.
    link.life("c", boot_id=3, rng_seed=3)
    link.crash("c")
    b = link.life("b", seeds="c", boot_id=4)
    assert not b.ready
    link.check("a", client)
    assert [path for path, _ in log_of(link, "b", client)] == ["degraded"], "full capacity"
    # The forward told b where the cluster is: it joined through a, a stranger to it.
    assert b.ready and b.membership.stats["stranger_joins"] == 1


# --- the same identity, a new life (bug 2) ----------------------------------------------


@pytest.mark.parametrize("keys", [(), (KEY,)], ids=["open", "keyed"])
def test_a_restart_with_the_same_seed_is_counted_as_a_new_life(keys: tuple[bytes, ...]) -> None:
    link = two(keys)
    client = client_owned_by(link, "a")
    first = [link.check("b", client) for _ in range(3)]
    assert [d.path for d in first] == ["forwarded"] * 3 and all(d.allowed for d in first)
    link.crash("b")
    link.advance(NS_PER_S // 2)  # not long enough for a to notice
    b = link.life("b", seeds="a", boot_id=5, keys=keys)  # same rng seed, new boot id
    link.advance(2 * NS_PER_S)
    assert b.ready, f"b's new life never rejoined (dropped: {dict(link.nodes['a'].dropped)})"
    second = [link.check("b", client) for _ in range(5)]
    assert [d.path for d in second] == ["forwarded"] * 5
    assert sum(d.allowed for d in first + second) == 5, "answered from the old life's cache"


def test_the_owner_keeps_answers_per_life_and_bounded() -> None:
    link = two()
    a = link.nodes["a"]
    client = client_owned_by(link, "a")
    link.check("b", client)
    lives = a.config.membership.max_members
    for boot in range(10, 10 + lives + 5):
        link.crash("b")
        link.life("b", seeds="a", boot_id=boot)
        link.check("b", client)
    assert len(a.forwarding._dedup) <= lives


# --- seeds the driver resolves ---------------------------------------------------------


def test_named_seeds_that_resolve_to_nothing_leave_the_node_joining_not_alone() -> None:
    link = Lives()
    b = link.life("b", boot_id=2, resolve=True)  # its seed names resolved to nothing
    assert not b.ready and b.joining.awaiting_seeds
    assert link.check("b", "acme").path == "degraded"
    link.advance(40 * PROBE_NS)
    asks = [e.attempt for e in link.wanted("b")]
    assert asks == [1, 2, 3, 4, 5, 6], "asks for the seeds at 1, 2, 4, 8, 16, 16... intervals"
    b.set_seeds([], now_ns=link.now_ns)
    assert not b.ready, "still nothing resolved"
    b.set_seeds([("b", PORT)], now_ns=link.now_ns)  # the name resolves to this node only
    assert b.ready, "the only seed is this node: a cluster of one"


def test_a_seed_that_resolves_later_is_joined() -> None:
    link = Lives()
    link.life("a", boot_id=1, rng_seed=1)
    b = link.life("b", boot_id=2, resolve=True)
    link.advance(3 * PROBE_NS)
    b.set_seeds([("a", PORT), ("b", PORT)], now_ns=link.now_ns)
    link.advance(PROBE_NS)
    assert b.ready and {m[0] for m in b.members()} == {"a", "b"}


def test_pieces_that_booted_apart_merge_when_the_seeds_resolve_to_both() -> None:
    link = Lives()
    a = link.life("a", boot_id=1, rng_seed=1, resolve=True)
    b = link.life("b", boot_id=2, rng_seed=2, resolve=True)
    a.set_seeds([("a", PORT)], now_ns=link.now_ns)  # each saw only itself in DNS
    b.set_seeds([("b", PORT)], now_ns=link.now_ns)
    assert a.ready and b.ready and len(a.membership.alive_nodes()) == 1
    link.settle()
    push_pull = a.config.membership.push_pull_interval_ns
    link.advance(push_pull)
    assert link.wanted("a"), "a joined node still asks for its seeds now and then"
    a.set_seeds([("a", PORT), ("b", PORT)], now_ns=link.now_ns)
    link.advance(PROBE_NS)
    assert set(a.membership.alive_nodes()) == set(b.membership.alive_nodes()) == {"a", "b"}


# --- leaving ----------------------------------------------------------------------------


def test_a_leaving_node_forwards_its_checks_to_the_new_owners() -> None:
    link = two()
    client = client_owned_by(link, "b")
    b = link.nodes["b"]
    b.leave(now_ns=link.now_ns)
    link.settle()
    assert not b.ready and b.owner(client) == "a"
    assert link.check("b", client).path == "forwarded"
    assert math.isfinite(link.check("b", client).retry_after)


def test_a_node_asked_for_a_client_its_ring_gives_to_another_answers_degraded() -> None:
    link = two()
    link.crash("a")  # a hears nothing of the join that follows
    link.life("c", seeds="b", boot_id=3, rng_seed=3)
    link.off.discard("a")
    client = next(
        f"k{i}"
        for i in range(1000)
        if link.nodes["a"].owner(f"k{i}") == "b" and link.nodes["b"].owner(f"k{i}") == "c"
    )
    decision = link.check("a", client)  # a's ring still says b; b's says c
    assert [path for path, _ in log_of(link, "b", client)] == ["degraded"], decision
