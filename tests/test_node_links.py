"""Two to four sans-IO nodes wired over an in-memory link, with a fake clock: no simulator.

In the manner of h11's tests, real :class:`~meshlimit.cluster.node.Node` state
machines talk to each other through :class:`Link`, which moves each node's
``datagrams_to_send()`` into the other nodes' ``receive(...)`` at once (zero
latency, in order) and can drop chosen datagrams. Time is the link's fake
clock: :meth:`Link.advance` moves it to each node's next deadline in turn and
calls ``tick``. Only the node's public surface is used (``start``, ``check``,
``receive``, ``tick``, ``set_rule``, ``leave``, ``datagrams_to_send``,
``events``, ``next_deadline``, ``owner``, ``rule_for``, ``members``, ``ring``,
``stats``, ``counters``, ``decision_log``), so these tests hold however the
node's modules are arranged.

Each test pins one job and says in its assertion messages which part broke:
membership (join), routing and forwarding, replication, rule sync, timeouts.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from typing import Any, TypeVar

import pytest

from meshlimit.cluster.node import Decided, Node
from meshlimit.cluster.node.config import NodeConfig
from meshlimit.cluster.wire.addresses import Address
from meshlimit.core.decision import Decision
from meshlimit.core.rules import Rule

NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000
#: Wall clocks start here: on an hour boundary, so every test runs inside one window.
EPOCH_NS = 1_700_002_800 * NS_PER_S
PORT = 7400
#: Most rounds of delivery one settle may take before the link calls it a livelock.
MAX_ROUNDS = 1_000


class Link:
    """An in-memory network of nodes and the fake clock they share.

    Every node reads the same monotonic time ``now_ns``; its wall clock is
    ``EPOCH_NS + now_ns`` plus its own skew. A node that was crashed or left is
    off the link: nothing reaches it and nothing leaves it. ``events[name]``
    collects what each node reported; ``decision_log`` is on for every node, so a
    test sees which node decided (and counted) each check.
    """

    def __init__(self, default_rule: str = "5/hour", **overrides: Any) -> None:
        self.default_rule = default_rule
        #: NodeConfig fields every node of this link gets (``max_pending_per_owner=3``...).
        self.overrides = overrides
        #: Lives started per name: each life has its own random stream, as a new process.
        self.lives: Counter[str] = Counter()
        self.now_ns = 0
        self.nodes: dict[str, Node] = {}
        self.events: dict[str, list[object]] = {}
        self.skew_ns: dict[str, int] = {}
        self.off: set[str] = set()
        self._names: dict[Address, str] = {}
        self._drops: list[tuple[str, str]] = []  # (src, dst): drop the next such datagram
        self.dropped: list[tuple[str, str]] = []

    # --- building ---------------------------------------------------------------------------

    def add(self, name: str, *, seeds: Iterable[str] = (), skew_ns: int = 0) -> Node:
        """Start node ``name`` (a new life if it ran before) joining through ``seeds``. The
        first life is seeded by the name alone, later ones by name and life."""
        self.lives[name] += 1
        self.off.discard(name)
        addr = (name, PORT)
        config = NodeConfig.preset(
            "sim", name, addr, default_rule=self.default_rule, **self.overrides
        )
        self.skew_ns[name] = skew_ns
        life = self.lives[name]
        rng = random.Random(name if life == 1 else f"{name}:{life}")
        node = Node(config, rng, now_ns=self.now_ns, wall_ns=self.wall(name))
        node.decision_log = []
        self.nodes[name] = node
        self.events[name] = []
        self._names[addr] = name
        node.start([(s, PORT) for s in seeds], now_ns=self.now_ns)
        self.settle()
        return node

    def wall(self, name: str) -> int:
        return EPOCH_NS + self.now_ns + self.skew_ns[name]

    # --- inputs -----------------------------------------------------------------------------

    def check(self, name: str, client: str, cost: int = 1) -> Decision:
        """Check at ``name`` and settle; a forwarded check's answer is taken from its event."""
        result = self.nodes[name].check(client, cost, now_ns=self.now_ns, wall_ns=self.wall(name))
        if isinstance(result, Decision):
            self.settle()
            return result
        self.settle()
        return self.decided(name, result)

    def decided(self, name: str, ticket: int) -> Decision:
        """The decision of ``ticket`` at ``name`` (it must have arrived)."""
        found = [e for e in self.events[name] if isinstance(e, Decided) and e.ticket == ticket]
        assert len(found) == 1, f"forwarding: ticket {ticket} at {name} decided {len(found)} times"
        return found[0].decision

    def set_rule(self, name: str, key: str, value: str | None) -> None:
        """Change a rule at ``name`` without delivering what it sends (see :meth:`settle`)."""
        self.nodes[name].set_rule(key, value, now_ns=self.now_ns, wall_ns=self.wall(name))

    def crash(self, name: str) -> None:
        """Take ``name`` off the link without a word: it sends and receives nothing more."""
        self.off.add(name)

    def leave(self, name: str) -> None:
        """``name`` leaves gracefully: its farewell is delivered, then it is off the link."""
        self.nodes[name].leave(now_ns=self.now_ns)
        self.settle()
        self.off.add(name)

    def drop_next(self, src: str, dst: str) -> None:
        """Lose the next datagram ``src`` sends to ``dst``."""
        self._drops.append((src, dst))

    # --- time and delivery -------------------------------------------------------------------

    def up(self) -> list[tuple[str, Node]]:
        return [(name, node) for name, node in self.nodes.items() if name not in self.off]

    def settle(self) -> None:
        """Tick every node that is due now and deliver until nothing is left to send."""
        for _ in range(MAX_ROUNDS):
            busy = False
            for name, node in self.up():
                if node.next_deadline() <= self.now_ns:
                    node.tick(now_ns=self.now_ns, wall_ns=self.wall(name))
                    busy = True
                busy |= self._deliver(name, node)
                self.events[name].extend(node.events())
            if not busy:
                return
        raise AssertionError(f"link: still busy after {MAX_ROUNDS} rounds at {self.now_ns} ns")

    def _deliver(self, src: str, node: Node) -> bool:
        sent = node.datagrams_to_send()
        for datagram, addr in sent:
            dst = self._names.get(addr)
            if dst is None or dst in self.off:
                continue
            if (src, dst) in self._drops:
                self._drops.remove((src, dst))
                self.dropped.append((src, dst))
                continue
            if not self.carry(src, dst, datagram, node):
                continue
            self.nodes[dst].receive(
                datagram, node.config.addr, now_ns=self.now_ns, wall_ns=self.wall(dst)
            )
        return bool(sent)

    def carry(self, src: str, dst: str, datagram: bytes, sender: Node) -> bool:
        """Whether ``datagram`` from ``src`` reaches ``dst`` (subclasses cut, hold or count)."""
        return True

    def advance(self, duration_ns: int) -> None:
        """Move the clock forward by ``duration_ns``, ticking every node at its deadlines."""
        end = self.now_ns + duration_ns
        self.settle()
        while True:
            due = min((node.next_deadline() for _, node in self.up()), default=end + 1)
            if due > end:
                break
            self.now_ns = max(self.now_ns, due)
            self.settle()
        self.now_ns = end
        self.settle()


L = TypeVar("L", bound=Link)


def cluster(names: str = "abc", *, kind: type[L] = Link, **link_options: Any) -> L:
    """A cluster of ``names`` on a link of ``kind`` that has finished joining: the first
    is every other's seed."""
    link = kind(**link_options)
    first, *rest = names
    link.add(first)
    for name in rest:
        link.add(name, seeds=[first])
    link.advance(2 * NS_PER_S)
    return link


def client_owned_by(link: Link, owner: str, prefix: str = "client") -> str:
    """A client id that ``owner`` owns in every node's view."""
    for i in range(1000):
        client = f"{prefix}-{i}"
        if {node.owner(client) for _, node in link.up()} == {owner}:
            return client
    raise AssertionError(f"routing: no client of {owner} among 1000 ids")


def log_of(link: Link, name: str, client: str) -> list[tuple[str, bool]]:
    """``(path, allowed)`` of every decision ``name`` made for ``client``."""
    log = link.nodes[name].decision_log
    assert log is not None
    return [(path, allowed) for _, c, _, _, allowed, path in log if c == client]


# --- membership -----------------------------------------------------------------------------


def test_three_nodes_join_and_agree_on_members_and_ring() -> None:
    link = cluster("abc")
    everyone = {("a", "alive"), ("b", "alive"), ("c", "alive")}
    for name, node in link.up():
        seen = {(member, state) for member, _, state, _ in node.members()}
        assert seen == everyone, f"membership: {name} sees {sorted(seen)}"
        assert node.ring.nodes == frozenset("abc"), f"ring: {name} has {sorted(node.ring.nodes)}"
    owners = {tuple(node.owner(f"k{i}") for _, node in link.up()) for i in range(50)}
    assert all(len(set(view)) == 1 for view in owners), "ring: nodes disagree on an owner"
    assert {view[0] for view in owners} == set("abc"), "ring: some node owns none of 50 clients"


def test_a_lone_node_owns_everything_and_decides_at_once() -> None:
    link = Link()
    link.add("a")
    decision = link.check("a", "acme")
    assert decision.path == "owner" and decision.allowed
    assert link.nodes["a"].members() == [("a", ("a", PORT), "alive", 0)]


# --- forwarding -----------------------------------------------------------------------------


def test_a_non_owner_forwards_and_the_owner_decides_and_counts() -> None:
    link = cluster("abc")
    client = client_owned_by(link, "a")
    decision = link.check("b", client)
    assert (decision.path, decision.allowed, decision.remaining) == ("forwarded", True, 4)
    assert log_of(link, "a", client) == [("forwarded", True)], "owner: did not decide and count"
    assert log_of(link, "b", client) == [], "forwarding: the asking node decided itself"
    assert link.nodes["b"].pending_count() == 0, "forwarding: the answer left a pending check"
    assert link.nodes["b"].stats["batches_sent"] == 1


def test_the_limit_holds_exactly_across_nodes() -> None:
    link = cluster("abc")
    client = client_owned_by(link, "a")
    order = "bcabcabca"  # nine checks against 5/hour, from all three nodes
    decisions = [link.check(name, client) for name in order]
    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 4
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0, 0, 0, 0, 0]
    expected_paths = ["owner" if name == "a" else "forwarded" for name in order]
    assert [d.path for d in decisions] == expected_paths
    assert len(log_of(link, "a", client)) == 9, "owner: not every check was decided there"
    assert log_of(link, "b", client) == log_of(link, "c", client) == []


# --- replication ----------------------------------------------------------------------------


def _series(link: Link, client: str) -> str:
    return link.nodes["a"].rule_for(client).series


def test_the_owners_counts_reach_its_replica() -> None:
    link = cluster("abc")
    client = client_owned_by(link, "a")
    owner, replica = link.nodes["a"].ring.preference_list(client, 2)
    other = ({"b", "c"} - {replica}).pop()
    for _ in range(3):
        assert link.check("a", client).path == "owner"
    link.advance(link.nodes["a"].config.gossip_interval_ns)
    counter = link.nodes[replica].counters.get(_series(link, client), client)
    assert counter is not None, f"replication: {replica} holds no counter of {owner}'s client"
    assert counter.cur.get(owner) == 3, f"replication: {replica} has {counter.cur!r}"
    assert link.nodes[other].counters.get(_series(link, client), client) is None, (
        "replication: a node outside the preference list got the counts"
    )


def test_after_the_owner_crashes_the_replica_continues_from_the_replicated_count() -> None:
    link = cluster("abc")
    client = client_owned_by(link, "a")
    replica = link.nodes["a"].ring.preference_list(client, 2)[1]
    for _ in range(3):
        link.check("a", client)
    link.advance(link.nodes["a"].config.gossip_interval_ns)  # replicated; then a dies
    link.crash("a")
    membership = link.nodes[replica].config.membership
    link.advance(10 * NS_PER_S + membership.dead_reap_ns)  # declared dead, then forgotten
    for name, node in link.up():
        assert node.ring.nodes == frozenset({"b", "c"}), f"ring: {name} still has a"
        assert node.owner(client) == replica, f"ring: {replica} is not the next owner at {name}"
    decisions = [link.check(name, client) for name in "bc"]
    assert [d.remaining for d in decisions] == [1, 0], "replication: the count restarted"
    assert [d.allowed for d in decisions] == [True, True]
    assert not link.check(replica, client).allowed, "replication: the limit did not hold"


def test_after_the_owner_leaves_the_next_owner_continues_from_its_count() -> None:
    link = cluster("abc")
    client = client_owned_by(link, "a")
    successor = link.nodes["a"].ring.preference_list(client, 2)[1]
    for _ in range(4):
        link.check("a", client)
    link.leave("a")  # no gossip round in between: the leave itself hands the counts over
    for name, node in link.up():
        states = {member: state for member, _, state, _ in node.members()}
        assert states.get("a") == "left", f"membership: {name} sees a as {states.get('a')}"
        assert node.owner(client) == successor, f"ring: {name} routes to {node.owner(client)}"
    first, second = link.check("b", client), link.check("c", client)
    assert (first.allowed, first.remaining) == (True, 0), "hand-over: the count restarted"
    assert not second.allowed, "hand-over: the limit did not hold after the leave"


# --- rule sync ------------------------------------------------------------------------------


def test_a_rule_set_on_one_node_reaches_the_others() -> None:
    link = cluster("abc")
    link.set_rule("b", "client:acme", "7/minute")
    link.settle()
    for name, node in link.up():
        assert node.rule_for("acme") == Rule.parse("7/minute"), f"rule sync: {name}"
        assert node.rule_for("other") == Rule.parse("5/hour"), f"rule sync: {name}'s default"


def test_concurrent_rule_writes_converge_on_the_highest_stamp_not_the_last_arrival() -> None:
    # c's wall clock runs 5 s ahead, so its write carries the higher HLC stamp even
    # though a writes after it in real time: every node must keep c's rule.
    link = Link()
    link.add("a")
    link.add("b", seeds=["a"])
    link.add("c", seeds=["a"], skew_ns=5 * NS_PER_S)
    link.advance(2 * NS_PER_S)
    link.set_rule("c", "client:acme", "9/minute")
    link.now_ns += NS_PER_MS
    link.set_rule("a", "client:acme", "3/minute")
    link.settle()
    link.advance(link.nodes["a"].config.anti_entropy_interval_ns * 3)
    for name, node in link.up():
        assert node.rule_for("acme") == Rule.parse("9/minute"), f"rule sync: {name} kept a's"


def test_a_late_joiner_gets_the_rules_with_the_join() -> None:
    link = cluster("abc")
    link.set_rule("b", "client:acme", "7/minute")
    link.set_rule("c", "default", "11/hour")
    link.settle()
    late = link.add("d", seeds=["a"])  # settled at once: no anti-entropy round has run
    assert late.rule_for("acme") == Rule.parse("7/minute"), "rule sync: the join sent no rules"
    assert late.rule_for("someone") == Rule.parse("11/hour"), "rule sync: default not sent"


# --- a lost datagram ------------------------------------------------------------------------


def test_a_lost_forward_times_out_into_an_overloaded_answer() -> None:
    # The owner never answered this node, but its acks keep coming: it is there, so the
    # check is refused as overloaded (counted nowhere), not taken from the degraded quota.
    # A check lost while the owner answers others is sent again (below); degraded is for
    # an owner silent for a probe interval (test_overload.py).
    link = cluster("abc")
    client = client_owned_by(link, "a")
    asker = link.nodes["b"]
    link.drop_next("b", "a")
    ticket = asker.check(client, 1, now_ns=link.now_ns, wall_ns=link.wall("b"))
    assert isinstance(ticket, int), "forwarding: a non-owner decided at once"
    link.settle()
    assert link.dropped == [("b", "a")], "link: the forward was not the datagram dropped"
    answered = [e for e in link.events["b"] if isinstance(e, Decided)]
    assert asker.pending_count() == 1 and not answered, "forwarding: answered anyway"
    timeout_ns = asker.config.forward_timeout_ns
    link.advance(timeout_ns - 1)
    assert asker.pending_count() == 1, "forwarding: timed out early"
    link.advance(1)
    decision = link.decided("b", ticket)
    assert decision.path == "overloaded", f"forwarding: {decision.path} after a lost forward"
    assert not decision.allowed
    assert asker.stats["forward_timeouts"] == 1
    assert asker.stats["overloaded_stalled_owner"] == 1
    assert log_of(link, "a", client) == [], "owner: decided a check it never received"
    assert log_of(link, "b", client) == [], "asker: counted a refusal"
    assert link.check("b", client).path == "forwarded", "forwarding: did not recover"


@pytest.mark.parametrize("lost", ["check", "reply"])
def test_a_lost_forward_is_sent_again_when_its_owner_answers_others(lost: str) -> None:
    """A forward (or its reply) lost while the owner answers later checks promptly: the
    owner is reachable, so at the timeout the check is sent once more under the same id,
    not decided degraded (which a healthy cluster under load must never do). The owner
    de-duplicates: a check it counted is answered from its cache, counted once."""
    link = cluster("abc")
    client = client_owned_by(link, "a")
    asker = link.nodes["b"]
    if lost == "check":
        link.drop_next("b", "a")
    else:
        link.drop_next("a", "b")
    ticket = asker.check(client, 1, now_ns=link.now_ns, wall_ns=link.wall("b"))
    assert isinstance(ticket, int), "forwarding: a non-owner decided at once"
    link.settle()
    assert link.check("b", client).path == "forwarded"  # a later check, answered promptly
    link.advance(asker.config.forward_timeout_ns)
    decision = link.decided("b", ticket)
    assert decision.path == "forwarded", f"forwarding: {decision.path} for a lost check"
    assert asker.stats["forward_retries"] == 1 and asker.stats["forward_timeouts"] == 1
    assert log_of(link, "b", client) == [], "asker: counted a check its owner decided"
    counted = [True] * 2  # the later check and the lost one, each once
    assert log_of(link, "a", client) == [("forwarded", True) for _ in counted]
    assert link.nodes["a"].stats["duplicate_checks"] == (lost == "reply")


def test_a_seedless_owner_restarted_at_once_meets_whoever_forwards_to_it() -> None:
    """The first node has no seeds: killed and restarted at once, its new life is alone and
    owns everything, from zero counts. A forwarded check from a member it does not know is
    the sign: it answers that from the degraded quota and joins through the sender, whose
    reply names its earlier life, so it waits for its counts (``resync``) before deciding
    at full capacity again. Before, it answered every forwarded check at full capacity."""
    link = cluster("abc")
    client = client_owned_by(link, "a")
    first = [link.check("b", client).allowed for _ in range(3)]
    assert first == [True] * 3
    link.advance(NS_PER_S)  # the owner's counts reach its replica
    link.crash("a")
    link.add("a")  # at once, no seeds: the seedless first node's flags
    decision = link.check("b", client)
    assert log_of(link, "a", client)[-1][0] == "degraded", log_of(link, "a", client)
    assert link.nodes["a"].membership.stats["stranger_joins"] == 1
    link.advance(2 * NS_PER_S)
    assert link.nodes["a"].stats["resyncs"] == 1
    later = [link.check(name, client).allowed for name in "abc" for _ in range(3)]
    # The resync bound (docs/design.md): the limit, plus the new life's degraded share
    # (its slot, handed back from the old life, overwrites what it admitted meanwhile).
    share = link.nodes["a"].degraded.quota(link.nodes["a"].rule_for(client), client, 0)
    assert share <= 1
    assert sum(first) + decision.allowed + sum(later) <= 5 + 1


def test_a_resyncing_owner_leaves_its_batches_to_check() -> None:
    """A front-end's batch (``check_many``, RESP pipelines) must not bypass the resync
    wait: while a restarted owner waits for its counts it decides nothing on them."""
    link = cluster("abc")
    client = client_owned_by(link, "b")
    assert all(link.check("c", client).allowed for _ in range(3))
    link.advance(NS_PER_S)
    link.crash("b")
    restarted = link.add("b", seeds=["a"])  # at once, same name: a new life
    assert restarted.stats["resyncs"] == 1  # on this lossless link it is over at once:
    restarted.resync.begin(["a"], incarnation=99, now_ns=link.now_ns)  # say "a" is slow
    assert restarted.resync.active
    wall = link.wall("b")
    assert restarted.check_many([client], 1, now_ns=link.now_ns, wall_ns=wall) == [None]
    assert restarted.check(client, now_ns=link.now_ns, wall_ns=wall).path == "degraded"


def test_a_handover_done_for_another_node_ends_no_wait() -> None:
    """``HandoverDone`` names the life it is for: one that reaches another node (a
    misdelivered datagram) is dropped and counted, and ends no resync wait there."""
    from meshlimit.cluster.wire.messages import HandoverDone

    link = cluster("abc")
    link.crash("b")
    restarted = link.add("b", seeds=["a"])  # at once, same name: a new life
    restarted.resync.begin(["a"], incarnation=99, now_ns=link.now_ns)  # waits for "a"
    link.nodes["a"]._link.send("b", HandoverDone("c", 99, 0))  # meant for "c"
    link.settle()
    assert restarted.resync.active
    assert restarted.dropped["misaddressed_HandoverDone"] == 1
    link.nodes["a"]._link.send("b", HandoverDone("b", 99, 0))
    link.settle()
    assert not restarted.resync.active


def test_a_check_is_not_sent_again_to_an_owner_restarted_since() -> None:
    """A check whose reply was lost is not resent once its owner is alive anew: the new
    life's answer cache cannot know the killed one counted it, so it would count it again
    (fuzz seed 9292028142). It is answered here at the timeout instead."""
    link = cluster("abc")
    client = client_owned_by(link, "a")
    asker = link.nodes["b"]
    link.drop_next("a", "b")  # the owner counts it; its answer is lost
    ticket = asker.check(client, 1, now_ns=link.now_ns, wall_ns=link.wall("b"))
    assert isinstance(ticket, int)
    link.settle()
    link.crash("a")
    link.add("a", seeds=["b"])  # at once, same name: a new life
    link.settle()
    assert link.check("b", client).path in ("forwarded", "degraded")  # answered promptly
    link.advance(asker.config.forward_timeout_ns)
    assert link.decided("b", ticket).path != "forwarded"
    assert asker.stats["forward_retries"] == 0


def test_a_forwarded_refusal_never_says_retry_now() -> None:
    """The owner sends a refusal's ``retry_after`` in whole milliseconds, rounded up: a wait
    under one millisecond told as 0 would send the client back before it can be admitted."""
    link = cluster("ab", default_rule="1000/s algo token_bucket")  # a token every ms
    client = client_owned_by(link, "a")
    waits = []
    for _ in range(40):
        for _ in range(1100):
            decision = link.check("b", client)
            if not decision.allowed:
                assert decision.path == "forwarded", decision
                waits.append(decision.retry_after)
                break
        link.advance(130_000)  # a fraction of a token's interval
    assert waits and min(waits) > 0, sorted(waits)[:5]
