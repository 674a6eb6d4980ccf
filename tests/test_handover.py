"""Hand-over moves only the counters whose holders changed, paced within a byte budget.

A ring change among n members changes the preference list (owner and replicas) of about
a share of the counters; a member that comes back needs only the counters it holds. Both
are measured over the in-memory link of ``test_node_links`` by decoding what each node
receives: a false suspicion or a join must not resend every counter to everyone.
"""

from __future__ import annotations

from collections import Counter

from test_node_links import NS_PER_MS, NS_PER_S, Link, cluster

from meshlimit.cluster.node import Node
from meshlimit.cluster.node.config import NodeConfig
from meshlimit.cluster.node.replication import Replication
from meshlimit.cluster.wire import codec
from meshlimit.cluster.wire.messages import CounterDeltas, CounterSlot, Envelope, Message
from meshlimit.core.counters import CounterStore
from meshlimit.core.registry import RuleRegistry
from meshlimit.core.ring import HashRing
from meshlimit.core.rules import Rule

#: Clients checked before the ring changes (each node holds those it owns or replicates).
CLIENTS = 240


class CountingLink(Link):
    """The in-memory link, also counting the counter slots each node receives."""

    def __init__(self) -> None:
        super().__init__(default_rule="1000/hour")
        self.slots_to: Counter[str] = Counter()
        self.clients_to: dict[str, set[str]] = {}

    def carry(self, src: str, dst: str, datagram: bytes, sender: Node) -> bool:
        for message in codec.decode(datagram, sender.limits).messages:
            if isinstance(message, CounterDeltas):
                self.slots_to[dst] += len(message.deltas)
                self.clients_to.setdefault(dst, set()).update(s.client for s in message.deltas)
        return True


def counting_cluster() -> CountingLink:
    link = CountingLink()
    link.add("a")
    for name in "bc":
        link.add(name, seeds=["a"])
    link.advance(2 * NS_PER_S)
    for i in range(CLIENTS):
        link.check("abc"[i % 3], f"user-{i}")
    link.advance(NS_PER_S)  # replication settles
    link.slots_to.clear()
    link.clients_to.clear()
    return link


def gained(before: HashRing, after: HashRing, clients: list[str], node: str) -> set[str]:
    """The clients whose preference list (owner and one replica) gained ``node``."""
    return {
        c
        for c in clients
        if node in after.preference_list(c, 2) and node not in before.preference_list(c, 2)
    }


def test_a_join_hands_over_only_the_counters_whose_holders_changed() -> None:
    link = counting_cluster()
    clients = [f"user-{i}" for i in range(CLIENTS)]
    old_ring = link.nodes["a"].ring
    link.add("d", seeds=["a"])
    link.advance(2 * NS_PER_S)
    new_ring = link.nodes["a"].ring
    assert new_ring.nodes == frozenset("abcd"), "membership: d did not join"
    # The old members gain no counter they lacked (a join only moves keys to the
    # newcomer, or promotes a replica it already fed): before, each got every counter.
    for name in "abc":
        assert link.slots_to[name] == 0, f"hand-over: {name} got {link.slots_to[name]} slots"
    due = gained(old_ring, new_ring, clients, "d")
    assert link.clients_to["d"] == due, "hand-over: d did not get exactly its new counters"
    assert len(due) < 0.7 * CLIENTS, f"hand-over: {len(due)} of {CLIENTS} is not a share"
    queued = sum(link.nodes[n].stats["handover_queued"] for n in "abc")
    assert queued < 2 * CLIENTS, f"hand-over: {queued} queued for {CLIENTS} counters"


def test_a_false_suspicion_hands_over_only_the_counters_the_member_holds() -> None:
    link = counting_cluster()
    clients = [f"user-{i}" for i in range(CLIENTS)]
    ring = link.nodes["a"].ring
    link.crash("c")
    step = 100 * NS_PER_MS
    for _ in range(200):  # until a and b suspect c (it stays on their rings)
        link.advance(step)
        states = {s for _, _, s, _ in (m for m in link.nodes["a"].members() if m[0] == "c")}
        if states == {"suspect"}:
            break
    assert states == {"suspect"}, f"membership: c is {states}, not suspect"
    link.off.discard("c")  # c was only slow: it refutes and is alive again
    link.slots_to.clear()
    link.clients_to.clear()
    link.advance(3 * NS_PER_S)
    assert all(s == "alive" for _, _, s, _ in link.nodes["a"].members()), "c not alive again"
    assert link.nodes["a"].ring.nodes == ring.nodes, "ring: a suspicion changed the ring"
    held = {c for c in clients if "c" in ring.preference_list(c, 2)}
    assert link.clients_to["c"] == held, "hand-over: c did not get back exactly what it holds"
    for name in "ab":
        assert link.slots_to[name] == 0, f"hand-over: {name} got {link.slots_to[name]} slots"


class RecordingLink:
    """The part of the node's link replication uses, recording what is sent."""

    message_budget = 1200

    def __init__(self) -> None:
        self.sent: list[tuple[str, Message]] = []

    def peers(self) -> list[str]:
        return ["b", "c", "d"]

    def send(self, node: str, message: Message) -> None:
        self.sent.append((node, message))


def replication_with(
    clients: int, *, byte_budget: int
) -> tuple[Replication, RecordingLink, Counter[str]]:
    config = NodeConfig.preset("sim", "a", ("a", 1), handover_bytes_per_round=byte_budget)
    counters = CounterStore("a", max_clients=10 * clients)
    rule = Rule.parse("1000/hour")
    for i in range(clients):
        counters.check(f"user-{i}", rule, 1, now_ns=NS_PER_S)
    link = RecordingLink()
    stats: Counter[str] = Counter()
    replication = Replication(
        config,
        counters,
        RuleRegistry("1000/hour"),
        link,  # type: ignore[arg-type]  # a stand-in for the node's Link
        stats=stats,
        dropped=Counter(),
    )
    replication.note_rule(rule)
    return replication, link, stats


def test_hand_over_is_paced_within_the_byte_budget() -> None:
    replication, link, stats = replication_with(3000, byte_budget=8 * 1024)
    old, new = HashRing("abc"), HashRing("abcd")
    replication.queue_handover(old, new)
    clients = [f"user-{i}" for i in range(3000)]
    due = {c for c in clients if gained(old, new, [c], "d") or _owner_moved(old, new, c)}
    assert len(due) < 3000 * 0.7, f"hand-over: {len(due)} of 3000 is not a share"
    sent: set[str] = set()
    rounds = 0
    while replication.handover_backlog():
        link.sent.clear()
        replication.continue_handover(NS_PER_S, new)
        rounds += 1
        size = sum(
            len(codec.encode(Envelope("a", ("a", 1), (message,)))) for _, message in link.sent
        )
        assert size <= 8 * 1024 + 1400, f"pacing: {size} bytes in one round"
        for _, message in link.sent:
            assert isinstance(message, CounterDeltas)
            sent.update(s.client for s in message.deltas)
    assert sent == due, "hand-over: the counters sent are not those due"
    assert stats["handover_queued"] == len(due), f"hand-over: queued {stats['handover_queued']}"
    assert rounds > 5, f"pacing: {len(due)} counters left in {rounds} rounds"


def _owner_moved(old: HashRing, new: HashRing, client: str) -> bool:
    after = new.preference_list(client, 2)
    return after[0] != old.owner(client) and after[0] != "a"


def test_leave_still_hands_over_everything_at_once() -> None:
    replication, link, _ = replication_with(500, byte_budget=1024)
    replication.hand_over_everything(HashRing("bcd"), NS_PER_S)
    slots: list[CounterSlot] = [
        s for _, m in link.sent if isinstance(m, CounterDeltas) for s in m.deltas
    ]
    assert {s.client for s in slots} == {f"user-{i}" for i in range(500)}
    assert replication.handover_backlog() == 0


def test_finding_the_counters_due_is_paced_too() -> None:
    replication, _, stats = replication_with(3000, byte_budget=2**30)
    budget = replication.scan_budget()
    assert budget < 3000, "the test needs more counters than one round examines"
    ring = HashRing("abcd")
    replication.queue_handover(ring, ring, ["b"])  # b came back: it needs what it holds
    assert stats["handover_queued"] == 0, "hand-over: examined counters before a round"
    replication.continue_handover(NS_PER_S, ring)
    first = stats["handover_queued"]
    assert 0 < first <= budget, f"scan: {first} queued in one round"
    while replication.handover_backlog():
        replication.continue_handover(NS_PER_S, ring)
    clients = [f"user-{i}" for i in range(3000)]
    held_by_b = sum("b" in ring.preference_list(c, 2) for c in clients)
    assert stats["handover_queued"] == held_by_b, "hand-over: b did not get its share"


def test_a_reset_windows_slots_are_named_for_the_reset() -> None:
    """After a reset, a node's slot of the window the reset fell in is sent under a name
    made for it, and only such slots of that window merge: a peer's plain slot mixes counts
    from before the reset, while its named one holds what it admitted since."""
    from meshlimit.cluster.node.replication import epoch_name

    link = cluster("abc")
    client = "acme"
    a = link.nodes["a"]
    link.set_rule("a", f"reset:{client}", None)
    link.settle()
    reset_ms = a.registry.reset_wall_ms(client)
    assert reset_ms >= 0
    rule = a.rule_for(client)
    window = link.wall("a") // rule.window_ns
    assert window == reset_ms * 1_000_000 // rule.window_ns, "the test needs the same window"
    a.counters.check(client, rule, 2, now_ns=link.wall("a"))
    sent = a.replication.slots_of((rule.series, client), link.wall("a"), own_only=True)
    assert [s.slots for s in sent if s.window == window] == [((epoch_name("a", reset_ms), 2),)]
    stale = CounterSlot(client, rule.series, window, (("b", 5), (epoch_name("b", reset_ms), 1)))
    a.replication.merge(CounterDeltas((stale,)), link.wall("a"))
    counter = a.counters.get(rule.series, client)
    assert counter is not None and counter.cur.total == 2 + 1  # b's plain 5 stays out
