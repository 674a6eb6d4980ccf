"""SWIM membership: formulas, the broadcast queue, and whole clusters on a fake network.

The :class:`Net` harness holds several :class:`Membership` instances and a virtual
clock. Outputs are grouped by destination into one datagram, the sender's
``piggyback()`` is attached (as memberlist's compound packets), and every datagram
arrives after a fixed 1 ms. Time jumps to the earliest node deadline or delivery.
No sleeps, no sockets; every run is a function of its seed.
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshlimit.cluster.membership import (
    Member,
    MemberEvent,
    Membership,
    MembershipConfig,
    expected_confirmations,
    lifeguard_timeout_ns,
    retransmit_limit,
    suspicion_timeout_ns,
)
from meshlimit.cluster.membership.broadcasts import BroadcastQueue
from meshlimit.cluster.wire.messages import (
    Ack,
    Address,
    CheckBatch,
    IndirectAck,
    Join,
    JoinReply,
    MemberState,
    MemberUpdate,
    Message,
    Ping,
    PingReq,
)

MS = 1_000_000
S = 1_000_000_000
T0 = 1_700_000_000 * S  # a plausible wall clock, so offsets are computed on real-sized numbers
LATENCY_NS = 1 * MS
ALIVE, SUSPECT, DEAD, LEFT = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD, 3


def addr_of(i: int) -> Address:
    return (f"10.0.0.{i + 1}", 7400)


class Net:
    """Membership nodes on an in-memory network with fixed latency and a virtual clock."""

    def __init__(self, config: MembershipConfig, seed: int = 1) -> None:
        self.config = config
        self.seed = seed
        self.now = T0
        self.nodes: dict[str, Membership] = {}
        self.at: dict[Address, str] = {}  # who listens on an address now
        self.skew: dict[str, int] = {}
        self.down: set[str] = set()
        self.cut: set[tuple[str, str]] = set()  # directed links that lose everything
        self.inflight: list[tuple[int, int, str, Address, Address, tuple[Message, ...]]] = []
        self.events: list[tuple[int, str, MemberEvent]] = []  # (time, observer, event)
        self.datagrams = 0
        self._n = 0

    # -- building ------------------------------------------------------------------------

    def add(
        self,
        node_id: str,
        addr: Address,
        seeds: tuple[Address, ...] = (),
        *,
        incarnation: int = 0,
        skew_ns: int = 0,
    ) -> Membership:
        self.skew[node_id] = skew_ns
        self.down.discard(node_id)
        rng = random.Random(f"{self.seed}:{node_id}")
        m = Membership(
            node_id, addr, self.config, rng, now_ns=self.local(node_id), incarnation=incarnation
        )
        self.nodes[node_id] = m
        self.at[addr] = node_id
        self.send(node_id, m.join(list(seeds), now_ns=self.local(node_id)))
        return m

    def cluster(self, n: int) -> list[str]:
        """``n`` nodes, ``n0`` the seed of all; returns their ids."""
        ids = [f"n{i}" for i in range(n)]
        for i, node_id in enumerate(ids):
            self.add(node_id, addr_of(i), () if i == 0 else (addr_of(0),))
        return ids

    def local(self, node_id: str) -> int:
        return self.now + self.skew[node_id]

    def up(self) -> list[str]:
        return sorted(n for n in self.nodes if n not in self.down)

    # -- the network ---------------------------------------------------------------------

    def send(self, src: str, outputs: list[tuple[Address, Message]]) -> None:
        by_addr: dict[Address, list[Message]] = {}
        for addr, msg in outputs:
            by_addr.setdefault(addr, []).append(msg)
        node = self.nodes[src]
        for addr, msgs in by_addr.items():
            msgs += node.piggyback()
            self._n += 1
            self.datagrams += 1
            item = (self.now + LATENCY_NS, self._n, src, node.addr, addr, tuple(msgs))
            heapq.heappush(self.inflight, item)

    def deliver(self, item: tuple[int, int, str, Address, Address, tuple[Message, ...]]) -> None:
        _, _, src, src_addr, addr, msgs = item
        dst = self.at.get(addr)
        if dst is None or src in self.down or dst in self.down or (src, dst) in self.cut:
            return
        node = self.nodes[dst]
        out: list[tuple[Address, Message]] = []
        for msg in msgs:
            out += node.handle(src, src_addr, msg, now_ns=self.local(dst))
        self.send(dst, out)
        self.after_step(dst)

    def tick(self, node_id: str) -> None:
        node = self.nodes[node_id]
        self.send(node_id, node.tick(now_ns=self.local(node_id)))
        assert node.next_deadline() > self.local(node_id), "tick left due work behind"
        self.after_step(node_id)

    def after_step(self, node_id: str) -> None:
        node = self.nodes[node_id]
        node._check()
        self.events += [(self.now, node_id, e) for e in node.drain_events()]

    def run(self, duration_ns: int) -> None:
        end = self.now + duration_ns
        while True:
            times = [self.nodes[n].next_deadline() - self.skew[n] for n in self.up()]
            if self.inflight:
                times.append(self.inflight[0][0])
            t = min(times, default=end + 1)
            if t > end:
                break
            self.now = max(self.now, t)
            while self.inflight and self.inflight[0][0] <= self.now:
                self.deliver(heapq.heappop(self.inflight))
            for n in self.up():
                if self.nodes[n].next_deadline() <= self.local(n):
                    self.tick(n)
        self.now = end

    # -- faults --------------------------------------------------------------------------

    def crash(self, node_id: str) -> None:
        self.down.add(node_id)

    def cut_link(self, a: str, b: str) -> None:
        self.cut |= {(a, b), (b, a)}

    # -- observations --------------------------------------------------------------------

    def state(self, observer: str, node: str) -> int | None:
        for m in self.nodes[observer].members():
            if m.node == node:
                return m.state
        return None

    def first(self, observer: str, node: str, state: int, since: int = 0) -> int | None:
        for t, who, e in self.events:
            if who == observer and e.node == node and e.new_state == state and t >= since:
                return t
        return None

    def events_about(self, node: str, states: tuple[int, ...]) -> list[tuple[int, str, int]]:
        return [
            (t, w, e.new_state)
            for t, w, e in self.events
            if e.node == node and e.new_state in states
        ]


def converged(net: Net, expected: list[str]) -> bool:
    want = sorted(expected)
    return all(net.nodes[n].alive_nodes() == want for n in expected) and all(
        net.state(o, n) == ALIVE for o in expected for n in expected
    )


def healthy_cluster(n: int = 5, seed: int = 1, config: MembershipConfig | None = None) -> Net:
    net = Net(config or MembershipConfig.lan(), seed)
    ids = net.cluster(n)
    net.run(5 * S)
    assert converged(net, ids)
    return net


# --- formulas -----------------------------------------------------------------------------


def test_suspicion_timeout_pinned_values() -> None:
    lan = MembershipConfig.lan()
    assert suspicion_timeout_ns(lan, 1) == 2 * S
    assert suspicion_timeout_ns(lan, 5) == 2 * S  # log10(5) < 1: the floor of 1 applies
    assert suspicion_timeout_ns(lan, 100) == 4 * S
    wan = MembershipConfig.wan()
    assert suspicion_timeout_ns(wan, 100) == 60 * S  # 6 * 2 * 5 s


def test_retransmit_limit_pinned_values() -> None:
    lan = MembershipConfig.lan()
    assert retransmit_limit(lan, 1) == 4  # 4 * ceil(log10 2)
    assert retransmit_limit(lan, 5) == 4  # 4 * ceil(log10 6)
    assert retransmit_limit(lan, 9) == 4  # 4 * ceil(log10 10): exactly 1, no float slop
    assert retransmit_limit(lan, 10) == 8
    assert retransmit_limit(lan, 100) == 12  # 4 * ceil(log10 101)


def test_lifeguard_timeout_pinned_values() -> None:
    assert lifeguard_timeout_ns(2 * S, 12 * S, 2, 0) == 12 * S
    assert lifeguard_timeout_ns(2 * S, 12 * S, 2, 1) == 5_690_702_464  # 12 - 10 * log 2 / log 3
    assert lifeguard_timeout_ns(2 * S, 12 * S, 2, 2) == 2 * S
    assert lifeguard_timeout_ns(2 * S, 12 * S, 0, 0) == 2 * S  # nobody could confirm
    lan = MembershipConfig.lan()
    assert [expected_confirmations(lan, n) for n in (1, 3, 4, 5, 100)] == [0, 0, 1, 2, 2]


def test_lan_preset_declares_a_crash_dead_within_about_5s_by_formula() -> None:
    lan = MembershipConfig.lan()
    # Expected first probe of the crashed node (< one interval with 4 probers), one interval
    # for the direct and indirect probes to fail, then the base suspicion timeout.
    bound = 2 * lan.probe_interval_ns + suspicion_timeout_ns(lan, 5)
    assert bound <= 5 * S
    assert lan.probe_interval_ns == 1 * S and lan.probe_timeout_ns == 500 * MS
    assert MembershipConfig.sim() == lan


def test_local_preset_probes_as_patiently_as_memberlists_local_config() -> None:
    # memberlist's DefaultLocalConfig: 1 s probes, 200 ms probe timeout, suspicion mult 3.
    # 200 ms probes with a 100 ms timeout flapped a loaded loopback cluster (issue 14).
    local = MembershipConfig.local()
    assert (local.probe_interval_ns, local.probe_timeout_ns) == (1 * S, 200 * MS)
    assert local.suspicion_mult == 3
    assert 2 * local.probe_interval_ns + suspicion_timeout_ns(local, 3) <= 5 * S


# --- the broadcast queue ------------------------------------------------------------------


def _u(node: str, inc: int = 0, state: int = ALIVE) -> MemberUpdate:
    return MemberUpdate(node, ("h", 1), state, inc)


def test_broadcasts_least_sent_first_and_limited() -> None:
    from collections import Counter

    q = BroadcastQueue(cap=10, dropped=Counter())
    q.push(_u("a"))
    q.push(_u("b"))
    assert q.take(1, limit=2) == [_u("b")]  # newest first among the unsent
    q.push(_u("c"))
    assert q.take(2, limit=2) == [_u("c"), _u("a")]  # the unsent before the sent-once
    assert q.take(10, limit=2) == [_u("c"), _u("b"), _u("a")]  # all sent once: newest first
    assert q.take(10, limit=2) == [] and len(q) == 0  # each went out twice: the limit
    q._check()


def test_broadcasts_newer_replaces_older_and_cap_drops_most_sent() -> None:
    from collections import Counter

    dropped: Counter[str] = Counter()
    q = BroadcastQueue(cap=2, dropped=dropped)
    q.push(_u("a", 0))
    q.push(_u("a", 1, SUSPECT))
    assert len(q) == 1
    q.take(1, limit=5)  # a sent once
    q.push(_u("b"))
    q.push(_u("c"))  # over the cap: a, the most sent, goes
    assert dropped["broadcast_overflow"] == 1
    assert sorted(u.node for u in q.take(5, limit=5)) == ["b", "c"]
    q._check()


def test_piggyback_drops_after_retransmit_limit() -> None:
    m = Membership("a", addr_of(0), MembershipConfig.lan(), random.Random(1), now_ns=T0)
    m.handle("b", addr_of(1), Join("b", addr_of(1), 0), now_ns=T0)
    limit = retransmit_limit(m.config, 2)
    sends = [m.piggyback() for _ in range(limit + 2)]
    assert sends[:limit] == [[MemberUpdate("b", addr_of(1), ALIVE, 0)]] * limit
    assert sends[limit:] == [[], []]


# --- unit behaviour -----------------------------------------------------------------------


def _node(node_id: str = "a", **kw: object) -> Membership:
    config = replace(MembershipConfig.lan(), **kw)
    return Membership(node_id, addr_of(0), config, random.Random(7), now_ns=T0)


def test_ping_for_another_id_is_not_acked() -> None:
    m = _node("new-id")
    assert m.handle("b", addr_of(1), Ping(1, "old-id", T0), now_ns=T0) == []
    assert m.handle("b", addr_of(1), Ping(1, "new-id", T0), now_ns=T0 + 5) == [
        (addr_of(1), Ack(1, T0, T0 + 5)),
        (addr_of(1), Join("new-id", addr_of(0), 0)),  # a stranger knows us: ask its state
    ]
    assert m.alive_nodes() == ["new-id"], "a ping alone must not add its sender"


def test_stranger_joins_are_rate_limited_and_add_no_one() -> None:
    m = _node()
    out = m.handle("b", addr_of(1), Ping(1, "a", T0), now_ns=T0)
    assert (addr_of(1), Join("a", addr_of(0), 0)) in out
    out = m.handle("c", addr_of(2), Ping(1, "a", T0), now_ns=T0 + S // 2)
    assert out == [(addr_of(2), Ack(1, T0, T0 + S // 2))]  # at most one per probe interval
    assert m.stats["stranger_joins"] == 1 and m.alive_nodes() == ["a"]


def test_messages_from_self_and_of_other_types_are_ignored() -> None:
    m = _node()
    assert m.handle("a", addr_of(0), _u("x"), now_ns=T0) == []
    assert m.handle("b", addr_of(1), CheckBatch(()), now_ns=T0) == []
    assert m.alive_nodes() == ["a"]


def test_lone_node_is_joined_and_idle() -> None:
    m = _node()
    assert m.joined and m.join([addr_of(0)], now_ns=T0) == [] and m.joined
    assert m.tick(now_ns=m.next_deadline()) == []
    assert m.next_deadline() > T0


def test_join_is_retried_every_probe_interval_until_answered() -> None:
    m = _node()
    assert m.join([addr_of(1), addr_of(0)], now_ns=T0) == [(addr_of(1), Join("a", addr_of(0), 0))]
    assert not m.joined
    assert m.next_deadline() <= T0 + S
    assert (addr_of(1), Join("a", addr_of(0), 0)) in m.tick(now_ns=T0 + S)
    m.handle("s", addr_of(1), JoinReply((_u("s"),)), now_ns=T0 + S + 1)
    assert m.joined
    assert not any(isinstance(msg, Join) for _, msg in m.tick(now_ns=T0 + 2 * S))


def test_members_are_bounded() -> None:
    m = _node(max_members=3)
    reply = JoinReply(tuple(MemberUpdate(f"m{i}", ("h", i + 1), ALIVE, 0) for i in range(5)))
    m.handle("m0", ("h", 1), reply, now_ns=T0)
    assert len(m.members()) == 3
    assert m.dropped["members_full"] + m.dropped["join_reply_overflow"] == 3


def test_lifeguard_timer_starts_long_and_shrinks_with_confirmations() -> None:
    m = _node()
    for i, peer in enumerate("bcde", start=1):
        m.handle(peer, addr_of(i), Join(peer, addr_of(i), 0), now_ns=T0)
    suspect_e = MemberUpdate("e", addr_of(4), SUSPECT, 0)
    m.handle("b", addr_of(1), suspect_e, now_ns=T0)  # n = 5: base 2 s, max 12 s, K = 2
    timer = m._table.suspicions["e"]
    assert timer.deadline == T0 + 12 * S  # a lone accuser: the long timeout
    m.handle("b", addr_of(1), suspect_e, now_ns=T0 + S)
    assert timer.deadline == T0 + 12 * S  # the same accuser again is no confirmation
    m.handle("c", addr_of(2), suspect_e, now_ns=T0 + S)
    assert timer.deadline == T0 + 5_690_702_464
    m.handle("d", addr_of(3), suspect_e, now_ns=T0 + S)
    assert timer.deadline == T0 + 2 * S
    m.tick(now_ns=T0 + 2 * S)
    assert [e.new_state for e in m.drain_events() if e.node == "e"] == [ALIVE, SUSPECT, DEAD]
    assert m.alive_nodes() == ["a", "b", "c", "d"]


def test_left_node_does_not_refute_or_probe() -> None:
    m = _node()
    m.handle("b", addr_of(1), Join("b", addr_of(1), 0), now_ns=T0)
    out = m.leave(now_ns=T0)
    assert out == [(addr_of(1), MemberUpdate("a", addr_of(0), LEFT, 1))]
    assert m.leave(now_ns=T0) == [] and m.incarnation == 1 and m.alive_nodes() == ["b"]
    m.handle("b", addr_of(1), MemberUpdate("a", addr_of(0), DEAD, 5), now_ns=T0)
    assert m.incarnation == 1
    sent = [msg for _, msg in m.tick(now_ns=T0 + 10 * S)]
    assert not any(isinstance(msg, Ping | PingReq | Join) for msg in sent)


def test_unknown_ack_and_indirect_ack_are_harmless() -> None:
    m = _node()
    assert m.handle("b", addr_of(1), Ack(99, T0, T0), now_ns=T0) == []
    assert m.handle("b", addr_of(1), IndirectAck(99, "c"), now_ns=T0) == []
    assert m.stats["late_acks"] == 1


# --- garbage ------------------------------------------------------------------------------

GARBAGE: list[object] = [
    MemberUpdate("x", ("h", 1), 99, 0),
    MemberUpdate("x", ("h", 1), -1, 0),
    MemberUpdate("x", ("h", 1), "alive", 0),  # type: ignore[arg-type]
    MemberUpdate("x", ("h", 1), True, 0),  # type: ignore[arg-type]
    MemberUpdate("x", ("h", 1), ALIVE, -1),
    MemberUpdate("x", ("h", 1), ALIVE, 2**70),
    MemberUpdate("", ("h", 1), ALIVE, 0),
    MemberUpdate(7, ("h", 1), ALIVE, 0),  # type: ignore[arg-type]
    MemberUpdate("x" * 10_000, ("h", 1), ALIVE, 0),
    MemberUpdate("x", ("h",), ALIVE, 0),  # type: ignore[arg-type]
    MemberUpdate("x", ("h", 70_000), ALIVE, 0),
    MemberUpdate("x", ["h", 1], ALIVE, 0),  # type: ignore[arg-type]
    MemberUpdate("x", None, ALIVE, 0),  # type: ignore[arg-type]
    Ping("seq", "a", 0),  # type: ignore[arg-type]
    Ping(1, None, 0),  # type: ignore[arg-type]
    Ack(1, None, 0),  # type: ignore[arg-type]
    PingReq(1, "c", "nowhere"),  # type: ignore[arg-type]
    IndirectAck(-5, "c"),
    Join("x", ("h", 1), 0),  # node differs from the sender
    Join("b", ("h", 1), "0"),  # type: ignore[arg-type]
    JoinReply(None),  # type: ignore[arg-type]
    JoinReply(("junk", None, MemberUpdate("y", ("h", 2), 42, 0))),
]


@pytest.mark.parametrize("msg", GARBAGE, ids=lambda m: type(m).__name__)
def test_garbage_is_dropped_and_counted(msg: object) -> None:
    m = _node()
    before = m.members()
    assert m.handle("b", addr_of(1), msg, now_ns=T0) == []
    assert sum(m.dropped.values()) >= 1
    assert m.members() == before
    m._check()


def test_bad_sender_is_dropped() -> None:
    m = _node()
    for sender, addr in [("", addr_of(1)), (None, addr_of(1)), ("b", "nowhere"), ("b", ("h", -1))]:
        assert m.handle(sender, addr, _u("x"), now_ns=T0) == []  # type: ignore[arg-type]
    assert m.dropped["bad_sender"] == 4
    for junk in (None, 42, "ping", object()):
        assert m.handle("b", addr_of(1), junk, now_ns=T0) == []


_anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.text(max_size=5),
    st.tuples(st.text(max_size=3), st.integers()),
)
_member_states = st.one_of(st.integers(-2, 5), _anything)


@st.composite
def _messages(draw: st.DrawFn) -> object:
    name = st.sampled_from(["a", "b", "c", "d"])
    addr = st.one_of(st.sampled_from([addr_of(i) for i in range(4)]), _anything)
    inc = st.one_of(st.integers(0, 3), _anything)
    update = st.builds(MemberUpdate, st.one_of(name, _anything), addr, _member_states, inc)
    return draw(
        st.one_of(
            update,
            st.builds(
                Ping, st.one_of(st.integers(0, 9), _anything), st.one_of(name, _anything), _anything
            ),
            st.builds(Ack, st.integers(0, 9), _anything, _anything),
            st.builds(PingReq, st.integers(0, 9), name, addr),
            st.builds(IndirectAck, st.integers(0, 9), st.one_of(name, _anything)),
            st.builds(Join, name, addr, inc),
            st.builds(JoinReply, st.one_of(st.tuples(update, update), _anything)),
        )
    )


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["b", "c", "d", "a"]), _messages(), st.integers(0, 3 * S)),
        max_size=30,
    )
)
def test_fuzzed_messages_and_ticks_never_raise(steps: list[tuple[str, object, int]]) -> None:
    m = _node()
    now = T0
    for sender, msg, dt in steps:
        now += dt
        m.handle(sender, addr_of(1), msg, now_ns=now)
        m._check()
        if m.next_deadline() <= now:
            m.tick(now_ns=now)
        m._check()


# --- whole clusters -----------------------------------------------------------------------


def test_five_nodes_joining_through_one_seed_converge() -> None:
    net = Net(MembershipConfig.lan(), seed=3)
    ids = net.cluster(5)
    net.run(1 * S)
    assert converged(net, ids)
    assert all(net.nodes[n].joined for n in ids)
    joins = [t for t, _, e in net.events if e.old_state is None]
    assert len(joins) == 5 * 4
    assert max(joins) - T0 < 500 * MS


def crash_and_measure(seed: int, victim: str) -> tuple[int, int]:
    """Crash ``victim`` in a converged 5-node LAN cluster; return (first suspicion, the last
    observer's DEAD verdict), both in ns after the crash, checking the story on the way."""
    net = healthy_cluster(5, seed=seed)
    crashed_at = net.now
    net.crash(victim)
    net.run(20 * S)
    observers = [n for n in net.up()]
    for o in observers:
        suspect = net.first(o, victim, SUSPECT, since=crashed_at)
        dead = net.first(o, victim, DEAD, since=crashed_at)
        assert suspect is not None and dead is not None and suspect <= dead, o
        assert net.state(o, victim) == DEAD and victim not in net.nodes[o].alive_nodes()
    suspected = min(net.first(o, victim, SUSPECT, since=crashed_at) for o in observers)
    dead = max(net.first(o, victim, DEAD, since=crashed_at) for o in observers)
    return suspected - crashed_at, dead - crashed_at


def test_crashed_node_is_suspected_then_declared_dead_by_all() -> None:
    suspected, dead = crash_and_measure(seed=2, victim="n3")
    # Pinned, so that a change in timing shows: first probe of n3 at 0.17 s, suspected at the
    # end of that probe interval, dead 2 s (the base suspicion timeout) later everywhere.
    # (A fresh life's confirmation pings moved the cluster's convergence, and so the crash
    # instant within the probe rounds: it was 0.6 s, then 1.602 s and 3.603 s.)
    assert (suspected, dead) == (1_169_835_824, 3_170_835_824)


@pytest.mark.parametrize("seed", range(20, 40))
def test_five_nodes_converge_within_one_probe_round_for_any_seed(seed: int) -> None:
    # Gossip alone may miss a member (SWIM is probabilistic); a member that probes a node
    # which never heard of it triggers a push-pull, so a round of probes repairs any gap.
    net = Net(MembershipConfig.lan(), seed)
    ids = net.cluster(5)
    net.run(2 * 4 * S)  # two shuffled rounds of 4 probes
    assert converged(net, ids)


def test_crash_detection_time_on_lan_is_about_4s_and_at_most_6s() -> None:
    """Detection = wait for someone's probe + one probe interval + suspicion timeout (2 s).

    The wait is the random part: 4 probers each probe one of 4 members per second, so
    nobody probes the victim for 2 s about one time in ten, and then detection passes 5 s
    (over seeds 1-60: mean 3.8 s, median 3.6 s, 8 runs above 5 s, worst 5.9 s).
    """
    detections = sorted(crash_and_measure(seed, f"n{seed % 5}")[1] for seed in range(1, 21))
    assert detections[len(detections) // 2] <= 4 * S  # median
    assert sum(detections) / len(detections) <= 4 * S  # mean
    assert detections[-1] <= 6 * S  # a bad draw: every prober had the victim late in its round


def test_dead_members_are_forgotten_after_dead_reap() -> None:
    net = healthy_cluster(5, seed=4)
    net.crash("n1")
    net.run(10 * S)
    assert net.state("n0", "n1") == DEAD
    net.run(net.config.dead_reap_ns)
    assert net.nodes["n0"].addr_of("n1") is None
    assert all(m.node != "n1" for m in net.nodes["n0"].members())


def test_no_false_suspicion_in_a_healthy_cluster_over_120s() -> None:
    net = healthy_cluster(5, seed=5)
    start = len(net.events)
    net.run(120 * S)
    assert net.events[start:] == []
    for n in net.up():
        assert net.nodes[n].stats["suspicions"] == 0
        assert net.nodes[n].stats["false_suspicions"] == 0
        assert net.nodes[n].stats["probes"] >= 110


def test_false_suspicion_is_refuted_with_a_higher_incarnation() -> None:
    net = healthy_cluster(5, seed=6)
    victim = net.nodes["n4"]
    inc = victim.incarnation
    lie = MemberUpdate("n4", victim.addr, SUSPECT, inc)
    # the lie comes in to n1 as if n2 had sent it
    net.nodes["n1"].handle("n2", net.nodes["n2"].addr, lie, now_ns=net.local("n1"))
    net.after_step("n1")
    assert net.nodes["n1"].is_suspect("n4")
    net.run(10 * S)
    # Every copy of the lie that reaches n4 is refuted (the copies still spreading too).
    assert victim.incarnation == inc + victim.stats["refutations"] > inc
    for n in net.up():
        assert net.state(n, "n4") == ALIVE
        assert [m.incarnation for m in net.nodes[n].members() if m.node == "n4"] == [
            victim.incarnation
        ]
    assert net.events_about("n4", (DEAD, LEFT)) == []
    assert net.nodes["n1"].stats["false_suspicions"] == 1


def test_suspicion_of_ourselves_in_a_direct_update_is_refuted() -> None:
    m = _node()
    m.handle("b", addr_of(1), Join("b", addr_of(1), 0), now_ns=T0)
    while m.piggyback():
        pass  # send the join's news until the retransmit limit drops it
    m.handle("b", addr_of(1), MemberUpdate("a", addr_of(0), DEAD, 0), now_ns=T0)
    assert m.incarnation == 1
    assert m.piggyback() == [MemberUpdate("a", addr_of(0), ALIVE, 1)]
    m.handle("b", addr_of(1), MemberUpdate("a", addr_of(0), SUSPECT, 0), now_ns=T0)
    # A member still telling it never heard our refutation: refute again, above both.
    assert m.incarnation == 2, "a stale rumour of our suspicion is not refuted"
    assert m.piggyback() == [MemberUpdate("a", addr_of(0), ALIVE, 2)]


def test_a_rumour_of_our_death_below_our_incarnation_is_refuted() -> None:
    """The refutation gap: a member told it is dead at an incarnation below its own must
    re-announce itself, or a peer that missed its newer news keeps it dead."""
    m = _node()
    m.handle("b", addr_of(1), Join("b", addr_of(1), 0), now_ns=T0)
    m.handle("b", addr_of(1), MemberUpdate("a", addr_of(0), SUSPECT, 3), now_ns=T0)
    assert m.incarnation == 4
    while m.piggyback():
        pass  # the refutation ran out of retransmissions; b never heard it
    m.handle("b", addr_of(1), MemberUpdate("a", addr_of(0), DEAD, 3), now_ns=T0)
    assert m.incarnation == 5
    assert m.piggyback() == [MemberUpdate("a", addr_of(0), ALIVE, 5)]
    other = _node("b")
    other.handle("c", addr_of(2), MemberUpdate("a", addr_of(0), DEAD, 3), now_ns=T0)
    other.handle("a", addr_of(0), MemberUpdate("a", addr_of(0), ALIVE, 5), now_ns=T0)
    assert [(u.state, u.incarnation) for u in other.members() if u.node == "a"] == [(ALIVE, 5)]
    # News that we are alive, at or below what we say, needs no answer.
    while m.piggyback():
        pass
    m.handle("b", addr_of(1), MemberUpdate("a", addr_of(0), ALIVE, 5), now_ns=T0)
    assert m.incarnation == 5 and m.piggyback() == []


def test_indirect_probe_keeps_a_node_with_a_cut_link_alive() -> None:
    net = healthy_cluster(5, seed=7)
    net.cut_link("n0", "n1")
    start = len(net.events)
    net.run(60 * S)
    assert net.events[start:] == []
    assert net.state("n0", "n1") == ALIVE and net.state("n1", "n0") == ALIVE
    assert net.nodes["n0"].stats["indirect_acks"] > 0
    assert net.nodes["n1"].stats["indirect_acks"] > 0


def test_graceful_leave_is_seen_as_left_quickly_never_dead() -> None:
    net = healthy_cluster(5, seed=8)
    left_at = net.now
    leaver = net.nodes["n2"]
    net.send("n2", leaver.leave(now_ns=net.local("n2")))
    assert leaver.alive_nodes() == ["n0", "n1", "n3", "n4"]
    net.run(100 * MS)
    net.crash("n2")  # the process exits
    net.run(20 * S)
    for o in ("n0", "n1", "n3", "n4"):
        seen = net.first(o, "n2", LEFT, since=left_at)
        assert seen is not None and seen - left_at <= 500 * MS, o
        assert net.state(o, "n2") == LEFT
        assert "n2" not in net.nodes[o].alive_nodes()
    assert net.events_about("n2", (SUSPECT, DEAD)) == []


def test_restarted_node_with_a_new_id_on_the_same_address_rejoins() -> None:
    net = healthy_cluster(5, seed=9)
    net.crash("n3")
    net.run(300 * MS)
    net.add("n3-b", addr_of(3), (addr_of(0),))  # same address, new process, new id
    net.run(20 * S)
    for o in net.up():
        assert net.state(o, "n3-b") == ALIVE
        assert net.state(o, "n3") == DEAD, "nobody may ack for the old id"
        assert net.nodes[o].alive_nodes() == ["n0", "n1", "n2", "n3-b", "n4"]


def test_restarted_node_with_the_same_id_refutes_its_death() -> None:
    net = healthy_cluster(5, seed=10)
    net.crash("n3")
    net.run(15 * S)
    assert net.state("n0", "n3") == DEAD
    reborn = net.add("n3", addr_of(3), (addr_of(0),))  # a fresh process: incarnation 0
    net.run(5 * S)
    assert reborn.incarnation >= 1
    ids = ["n0", "n1", "n2", "n3", "n4"]
    assert converged(net, ids)


def test_partition_longer_than_the_reap_time_heals_by_push_pull() -> None:
    net = healthy_cluster(4, seed=11)
    for a in ("n0", "n1"):
        for b in ("n2", "n3"):
            net.cut_link(a, b)
    net.run(60 * S)
    assert net.nodes["n0"].alive_nodes() == ["n0", "n1"]
    assert net.nodes["n3"].alive_nodes() == ["n2", "n3"]
    net.cut.clear()
    net.run(2 * net.config.push_pull_interval_ns)
    assert converged(net, ["n0", "n1", "n2", "n3"])


def test_clock_offsets_and_rtts_are_measured() -> None:
    net = Net(MembershipConfig.lan(), seed=12)
    net.add("n0", addr_of(0))
    net.add("n1", addr_of(1), (addr_of(0),), skew_ns=50 * MS)
    net.add("n2", addr_of(2), (addr_of(0),), skew_ns=-20 * MS)
    net.run(30 * S)
    offsets = net.nodes["n0"].clock_offsets()
    assert abs(offsets["n1"] - 50 * MS) <= 1000 and abs(offsets["n2"] + 20 * MS) <= 1000
    assert abs(net.nodes["n1"].clock_offsets()["n2"] + 70 * MS) <= 1000
    assert net.nodes["n0"].rtts()["n1"] == 2 * LATENCY_NS


def _trace(seed: int) -> list[tuple[int, str, MemberEvent]]:
    net = Net(MembershipConfig.lan(), seed)
    net.cluster(5)
    net.run(5 * S)
    net.crash("n1")
    net.run(10 * S)
    return net.events


def test_same_seed_gives_the_same_events() -> None:
    assert _trace(42) == _trace(42)
    assert any(e.new_state == DEAD for _, _, e in _trace(42))


def test_member_copies_do_not_leak_state() -> None:
    net = healthy_cluster(3, seed=13)
    copies = net.nodes["n0"].members()
    copies[0].state = DEAD
    assert all(isinstance(m, Member) for m in copies)
    assert net.state("n0", copies[0].node) == ALIVE


# --- the roster: the cluster's size outlives reaping ---------------------------------------


def reaped(net: Net, victim: str) -> None:
    """Crash ``victim`` and run until every other member has reaped it."""
    net.crash(victim)
    net.run(10 * S + net.config.dead_reap_ns)
    for o in net.up():
        assert net.nodes[o].addr_of(victim) is None, f"{o} has not reaped {victim}"


def test_a_reaped_dead_member_still_counts_and_a_newcomer_learns_it() -> None:
    net = healthy_cluster(5, seed=21)
    reaped(net, "n1")
    n0 = net.nodes["n0"]
    assert n0.quorum() == ("n0", "n1", "n2", "n3", "n4"), (
        "roster: the reaped member stopped counting"
    )
    assert [(u.node, u.state) for u in n0.remembered()] == [("n1", DEAD)]
    newcomer = net.add("n5", addr_of(5), (addr_of(2),))
    net.run(2 * S)
    assert newcomer.quorum() == ("n0", "n1", "n2", "n3", "n4", "n5"), "join reply lacks n1"
    assert all(m.node != "n1" for m in newcomer.members()), "a remembered member is not probed"


def test_the_join_reply_carries_the_dead_before_the_living() -> None:
    m = _node()
    m.handle("b", addr_of(1), MemberUpdate("dead", addr_of(9), DEAD, 4), now_ns=T0)
    out = m.handle("c", addr_of(2), Join("c", addr_of(2), 0), now_ns=T0)
    replies = [msg for _, msg in out if isinstance(msg, JoinReply)]
    assert len(replies) == 1
    states = [(u.node, u.state) for u in replies[0].members]
    assert states[0] == ("dead", DEAD) and set(states[1:]) == {("a", ALIVE)}, "joiner echoed"


def test_a_fresh_life_named_in_its_first_join_reply_announces_a_new_one() -> None:
    """A node killed and restarted before anyone noticed: the seed still holds its earlier
    life alive at the same incarnation. The reply names that record (not the echo of the
    Join), and the new life announces itself above it, so peers can tell it came back."""
    seed = _node("s")
    old = _node("a")
    seed.handle("a", addr_of(0), Join("a", addr_of(0), old.incarnation), now_ns=T0)
    new = _node("a")  # the same id and address, a new life, incarnation 0 again
    out = new.join([addr_of(1)], now_ns=T0)
    (_, join) = out[0]
    replies = seed.handle("a", addr_of(0), join, now_ns=T0)
    reply = next(msg for _, msg in replies if isinstance(msg, JoinReply))
    assert MemberUpdate("a", addr_of(0), ALIVE, 0) in reply.members
    new.handle("s", addr_of(1), reply, now_ns=T0)
    assert new.earlier_life and new.incarnation == 1
    seed.handle("a", addr_of(0), MemberUpdate("a", addr_of(0), ALIVE, 1), now_ns=T0)
    renewed = [e for e in seed.drain_events() if e.node == "a"][-1]
    assert (renewed.old_state, renewed.new_state) == (ALIVE, ALIVE)
    # A first join, by contrast, is not told of itself: no earlier life.
    first = _node("b")
    (_, join_b) = first.join([addr_of(1)], now_ns=T0)[0]
    reply_b = next(
        m for _, m in seed.handle("b", addr_of(2), join_b, now_ns=T0) if isinstance(m, JoinReply)
    )
    first.handle("s", addr_of(1), reply_b, now_ns=T0)
    assert not first.earlier_life and first.incarnation == 0


def test_forgetting_spreads_and_its_tombstone_keeps_stale_news_out() -> None:
    net = healthy_cluster(5, seed=22)
    reaped(net, "n1")
    n0 = net.nodes["n0"]
    assert n0.forget("n1", now_ns=net.local("n0")) == "forgotten"
    assert "n1" not in n0.quorum()
    net.run(2 * S)
    for o in net.up():
        assert "n1" not in net.nodes[o].quorum(), f"{o} never heard that n1 was forgotten"
    n2 = net.nodes["n2"]
    n2.handle("n3", addr_of(3), MemberUpdate("n1", addr_of(1), DEAD, 0), now_ns=net.local("n2"))
    assert "n1" not in n2.quorum(), "stale news of n1's death made it count again"
    assert n0.forget("n1", now_ns=net.local("n0")) == "gone"
    assert n0.forget("n2", now_ns=net.local("n0")) == "alive"
    assert n0.forget("n0", now_ns=net.local("n0")) == "self"
    assert n0.forget("nobody", now_ns=net.local("n0")) == "unknown"


def test_forgetting_a_suspect_or_dead_member_in_the_table_makes_it_left() -> None:
    net = healthy_cluster(5, seed=23)
    net.crash("n1")
    net.run(10 * S)
    assert net.state("n0", "n1") == DEAD
    assert net.nodes["n0"].forget("n1", now_ns=net.local("n0")) == "forgotten"
    net.run(2 * S)
    for o in net.up():
        assert net.state(o, "n1") == LEFT and "n1" not in net.nodes[o].quorum(), o


def test_a_member_dead_past_the_forget_time_is_forgotten_then_its_tombstone_dropped() -> None:
    config = replace(MembershipConfig.lan(), forget_after_ns=100 * S)
    net = healthy_cluster(5, seed=24, config=config)
    reaped(net, "n1")
    assert "n1" in net.nodes["n0"].quorum()
    net.run(70 * S)  # about 110 s after it died
    for o in net.up():
        assert "n1" not in net.nodes[o].quorum(), f"{o} still counts n1"
        assert [(u.node, u.state) for u in net.nodes[o].remembered()] == [("n1", LEFT)]
    net.run(110 * S)
    assert all(net.nodes[o].remembered() == [] for o in net.up()), "tombstones are kept forever"


def test_the_roster_is_bounded() -> None:
    m = _node(max_members=4)
    for i in range(10):
        m.handle("b", addr_of(1), MemberUpdate(f"d{i}", addr_of(i), DEAD, 0), now_ns=T0 + i)
        m._check()
    assert len(m.remembered()) == 4 and m.dropped["roster_full"] == 6
    assert set(m.quorum()) == {"a", "d6", "d7", "d8", "d9"}, "the first to expire goes first"


def test_a_remembered_member_that_comes_back_refutes_and_rejoins() -> None:
    net = healthy_cluster(5, seed=25)
    reaped(net, "n1")
    reborn = net.add("n1", addr_of(1), (addr_of(0),))  # a fresh process: incarnation 0
    net.run(5 * S)
    assert reborn.incarnation >= 1, "the roster's DEAD at incarnation 0 was not refuted"
    ids = ["n0", "n1", "n2", "n3", "n4"]
    assert converged(net, ids)
    assert all(net.nodes[o].remembered() == [] for o in ids)


def test_join_retries_back_off_to_a_cap() -> None:
    from meshlimit.cluster.membership.timing import JOIN_RETRY_CAP_PROBES, join_retry_delay_ns

    interval = 1_000_000_000
    delays = [join_retry_delay_ns(a, interval) // interval for a in range(1, 7)]
    assert delays == [1, 2, 4, 4, 4, 4] and JOIN_RETRY_CAP_PROBES == 4


def test_a_node_whose_seed_is_silent_sends_joins_with_backoff() -> None:
    import random

    from meshlimit.cluster.membership import Membership, MembershipConfig
    from meshlimit.cluster.wire.messages import Join

    config = MembershipConfig.lan()
    m = Membership("a", ("a", 1), config, random.Random(1), now_ns=0)
    sent_at = [0] if any(isinstance(msg, Join) for _, msg in m.join([("s", 1)], now_ns=0)) else []
    step = config.probe_interval_ns // 10
    for now in range(step, 20 * config.probe_interval_ns, step):
        if any(isinstance(msg, Join) for _, msg in m.tick(now_ns=now)):
            sent_at.append(now)
    gaps = [(b - a) // config.probe_interval_ns for a, b in itertools.pairwise(sent_at)]
    assert gaps[:4] == [1, 2, 4, 4], gaps  # not one Join a second forever


@pytest.mark.parametrize("seed", [11, 17, 20, 21, 24, 30])
def test_a_member_made_dead_by_a_join_reply_is_told_at_once(seed: int) -> None:
    """After a partition longer than the reap time, a push-pull's reply carries the far
    side's verdicts: a member we hold alive, dead at its incarnation. We take it (newest
    news wins) and tell that member at once, so it refutes now; before, two members of
    one side could each hold the other dead until a third push-pull (90 s to converge
    for 5 of 40 seeds, these among them)."""
    net = healthy_cluster(4, seed=seed)
    for a in ("n0", "n1"):
        for b in ("n2", "n3"):
            net.cut_link(a, b)
    net.run(60 * S)
    net.cut.clear()
    net.run(2 * net.config.push_pull_interval_ns)
    assert converged(net, ["n0", "n1", "n2", "n3"])
