"""The sans-IO node in memory: several nodes driven by the simulator's world, no sleeps."""

from __future__ import annotations

from collections import Counter

import pytest

from meshlimit.cluster.node import Decided, Node
from meshlimit.cluster.node.config import NodeConfig
from meshlimit.core.decision import Decision
from meshlimit.sim.events import NS_PER_S
from meshlimit.sim.scenario import parse_scenario
from meshlimit.sim.world import World


def scenario(timeline: list[str], *, rule: str = "20/2s", nodes: int = 3, rate: int = 200) -> str:
    return f"""
name = "node test"
duration = "30s"
nodes = {nodes}
timeline = {timeline!r}
[limits]
default = "{rule}"
[workload]
clients = 5
rate = {rate}
zipf = 0
"""


def admissions_by_window(world: World) -> tuple[Counter[tuple[str, int]], list[tuple]]:
    """Wrap the checkers to keep every admission with the window it was charged to."""
    tally: Counter[tuple[str, int]] = Counter()
    seen: list[tuple] = []
    original = world.checkers.on_admissions

    def spy(node: str, log: list, now: int, *received: object) -> None:
        for wall, client, rule, cost, allowed, path in log:
            seen.append((now, node, client, allowed, path))
            if allowed and cost:
                tally[(client, wall // rule.window_ns)] += cost
        original(node, log, now, *received)

    world.checkers.on_admissions = spy  # type: ignore[method-assign]
    return tally, seen


def test_healthy_strict_cluster_admits_exactly_the_limit_per_window() -> None:
    world = World(parse_scenario(scenario([])), seed=11)
    tally, _ = admissions_by_window(world)
    world.run()
    settled = {
        k: v
        for k, v in tally.items()
        if k[1] * 2 * NS_PER_S > world.nodes["n1"].clock.wall_ns(5 * NS_PER_S)
    }
    assert settled and max(settled.values()) <= 20
    assert world.checkers.violations == []


def test_a_restarted_node_is_counted_by_the_owner_not_answered_from_a_stale_cache() -> None:
    # A restarted node starts a new life; request ids it reuses must not hit the
    # owner's de-duplication cache from its previous life (found by the demo).
    world = World(parse_scenario(scenario(["at 5s crash n3", "at 7s restart n3"])), seed=5)
    world.run()
    assert world.checkers.violations == []


def test_duplicated_datagrams_never_count_twice() -> None:
    text = scenario(["at 0s duplicate 0.5"])
    world = World(parse_scenario(text), seed=3)
    tally, _ = admissions_by_window(world)
    world.run()
    assert max(tally.values()) <= 20


def test_owner_path_is_immediate_and_forwarded_path_resolves_by_event() -> None:
    config_a = NodeConfig.preset("sim", "a", ("a", 1))
    node = Node(config_a, __import__("random").Random(1), now_ns=0)
    node.start([], now_ns=0)
    decision = node.check("acme", 1, now_ns=1)
    assert isinstance(decision, Decision) and decision.path == "owner"


def test_bad_input_raises_clear_errors_and_garbage_datagrams_are_counted() -> None:
    import random

    node = Node(NodeConfig.preset("sim", "a", ("a", 1)), random.Random(1), now_ns=0)
    node.start([], now_ns=0)
    with pytest.raises(ValueError):
        node.check("", 1, now_ns=1)
    with pytest.raises(ValueError):
        node.check("x" * 300, 1, now_ns=1)
    with pytest.raises(ValueError):
        node.check("acme", -1, now_ns=1)
    node.receive(b"\xff\x00garbage", ("b", 2), now_ns=2)
    node.receive(b"", ("b", 2), now_ns=3)
    assert sum(node.dropped.values()) >= 2
    assert node.check("acme", 1, now_ns=4).allowed  # still serving


def test_forward_timeout_decides_degraded() -> None:
    import random

    a = Node(NodeConfig.preset("sim", "a", ("a", 1)), random.Random(1), now_ns=0)
    a.start([], now_ns=0)
    # Pretend b joined and owns some client, then never answers.
    b = Node(NodeConfig.preset("sim", "b", ("b", 1)), random.Random(2), now_ns=0)
    b.start([("a", 1)], now_ns=0)
    for datagram, _ in b.datagrams_to_send():
        a.receive(datagram, ("b", 1), now_ns=1)
    client = next(c for c in (f"c{i}" for i in range(100)) if a.owner(c) == "b")
    # Silent for a probe interval by the check's deadline (nothing heard since its join):
    # taken for crashed. Heard from within it, it would be busy (``overloaded``).
    sent = a.config.membership.probe_interval_ns
    ticket = a.check(client, 1, now_ns=sent)
    assert isinstance(ticket, int)
    a.tick(now_ns=a.next_deadline())
    a.tick(now_ns=sent + a.config.forward_timeout_ns)
    decided = [e for e in a.events() if isinstance(e, Decided)]
    assert decided and decided[0].ticket == ticket and decided[0].decision.path == "degraded"


def _now(result: Decision | int) -> Decision:
    """A check the node decided at once (not a ticket)."""
    assert isinstance(result, Decision), f"expected a decision, got ticket {result}"
    return result


def _pair() -> tuple[Node, Node]:
    import random

    a = Node(NodeConfig.preset("sim", "a", ("a", 1)), random.Random(1), now_ns=0)
    b = Node(NodeConfig.preset("sim", "b", ("b", 1)), random.Random(2), now_ns=0)
    a.start([], now_ns=0)
    b.start([], now_ns=0)
    return a, b


def test_shadow_rule_allows_and_reports() -> None:
    a, _ = _pair()
    a.set_rule("client:trial", "2/minute shadow", now_ns=1)
    decisions = [_now(a.check("trial", 1, now_ns=2 + i)) for i in range(4)]
    assert all(d.allowed for d in decisions)
    assert [d.shadowed for d in decisions] == [False, False, True, True]
    assert a.stats["shadow_refused"] == 2


def test_reset_clears_counts_and_ignores_stale_gossip() -> None:
    a, _ = _pair()
    for i in range(3):
        a.check("acme", 1, now_ns=10 + i)
    assert not _now(a.check("acme", 100, now_ns=20)).allowed
    stale = a.replication.slots_of(("sliding_window:60000000000", "acme"), 20, own_only=False)
    a.set_rule("reset:acme", None, now_ns=2_000_000)
    assert _now(a.check("acme", 100, now_ns=2_000_001)).allowed
    from meshlimit.cluster.wire.messages import CounterDeltas

    a.replication.merge(CounterDeltas(tuple(stale)), 2_000_002)
    assert a.stats["stale_after_reset"] == len(stale) > 0


def test_key_flood_keeps_memory_bounded_and_legitimate_counts() -> None:
    import random as random_module

    config = NodeConfig.preset("sim", "a", ("a", 1), max_clients=1000, default_rule="10/minute")
    node = Node(config, random_module.Random(1), now_ns=0)
    node.start([], now_ns=0)
    rng = random_module.Random(7)
    admitted = 0
    for i in range(30_000):
        now = 1_000_000 * (i + 1)
        node.check(f"flood-{rng.getrandbits(64):x}", 1, now_ns=now)
        if i % 100 == 0:
            admitted += _now(node.check("legit", 1, now_ns=now)).allowed
    assert len(node.counters) <= 1000
    assert node.counters.evicted_live > 0
    # 300 legit checks within one minute against 10/minute: its count survived the flood.
    assert admitted == 10


def _joined(seed: int) -> Node:
    """Node a with b joined through it (b owns some clients), both in memory."""
    import random

    a = Node(NodeConfig.preset("sim", "a", ("a", 1)), random.Random(seed), now_ns=0)
    a.start([], now_ns=0)
    b = Node(NodeConfig.preset("sim", "b", ("b", 1)), random.Random(seed + 1), now_ns=0)
    b.start([("a", 1)], now_ns=0)
    for datagram, _ in b.datagrams_to_send():
        a.receive(datagram, ("b", 1), now_ns=1)
    a.set_rule("default", "3/minute burst 1", now_ns=2)
    return a


def test_check_many_decides_as_check_does_and_leaves_the_rest() -> None:
    """A batch decides every check this node owns exactly as ``check`` would (refusals,
    counts, stats, what is marked for replication), and leaves the others (None): then
    ``check`` forwards them. Alone, it decides all; a bad client raises before any check."""
    clients = [f"c{i}" for i in range(8)] * 6
    batched, single = _joined(5), _joined(5)
    assert {batched.owner(c) for c in clients} == {"a", "b"}
    for start in range(0, len(clients), 7):
        batch, now = clients[start : start + 7], 10 + start
        decided = batched.check_many(batch, 1, now_ns=now, wall_ns=now)
        for client, decision in zip(batch, decided, strict=True):
            expected = single.check(client, 1, now_ns=now, wall_ns=now)
            if batched.owner(client) == "a":
                assert decision == expected and isinstance(decision, Decision)
            else:
                assert decision is None and isinstance(expected, int)
                assert isinstance(batched.check(client, 1, now_ns=now, wall_ns=now), int)
    assert batched.stats == single.stats and batched.stats["owner_refused"] > 0
    assert list(batched.replication._changed) == list(single.replication._changed)
    alone = Node(NodeConfig.preset("sim", "z", ("z", 1)), __import__("random").Random(1), now_ns=0)
    alone.start([], now_ns=0)
    assert all(d is not None for d in alone.check_many(clients, 1, now_ns=5, wall_ns=5))
    with pytest.raises(ValueError):
        alone.check_many(["ok", ""], 1, now_ns=6, wall_ns=6)
    assert alone.stats["owner_allowed"] + alone.stats["owner_refused"] == len(clients)


def test_check_many_in_local_mode_decides_as_check_does() -> None:
    """Local mode (and a node alone) decides a batch in one loop (``_decide_batch``): the
    same decisions, stats, counters marked for replication and decision log as ``check``
    one by one, under a one-limit rule (fused admissions, refusals) and a multi-limit one."""
    import random

    def local(seed: int, log: bool) -> Node:
        config = NodeConfig.preset("sim", "a", ("a", 1), mode="local")
        a = Node(config, random.Random(seed), now_ns=0)
        a.start([], now_ns=0)
        b = Node(NodeConfig.preset("sim", "b", ("b", 1), mode="local"), random.Random(9), now_ns=0)
        b.start([("a", 1)], now_ns=0)
        for datagram, _ in b.datagrams_to_send():
            a.receive(datagram, ("b", 1), now_ns=1)
        a.set_rule("default", "3/minute burst 1", now_ns=2)
        a.set_rule("client:multi", "2/second;4/minute", now_ns=2)
        a.decision_log = [] if log else None
        return a

    clients = [f"c{i % 5}" for i in range(30)] + ["multi"] * 6
    random.Random(3).shuffle(clients)
    for log in (False, True):
        batched, single = local(5, log), local(5, log)
        assert len(batched.members()) == 2  # peers: admissions are marked for replication
        for start in range(0, len(clients), 7):
            batch, now = clients[start : start + 7], 10 + start
            decided = batched.check_many(batch, 1, now_ns=now, wall_ns=now)
            expected = [single.check(c, 1, now_ns=now, wall_ns=now) for c in batch]
            assert decided == expected
        assert batched.stats == single.stats
        assert batched.stats["local_allowed"] > 0 and batched.stats["local_refused"] > 0
        assert list(batched.replication._changed) == list(single.replication._changed)
        assert batched.decision_log == single.decision_log


def test_check_batch_is_check_of_each_client_and_flush_batches_sends_them() -> None:
    """``check_batch`` answers each client as ``check`` would (a decision where this node
    decides, a ticket where it forwards; the same stats); the forwarded checks leave
    when the driver calls ``flush_batches`` (the default window, 0, has closed), not
    before: nothing but a tick or that call sends them."""
    clients = [f"c{i}" for i in range(8)] * 3
    batched, single = _joined(5), _joined(5)
    results = batched.check_batch(clients, 1, now_ns=10, wall_ns=10)
    expected = [single.check(c, 1, now_ns=10, wall_ns=10) for c in clients]
    assert [type(r) for r in results] == [type(e) for e in expected]
    assert [r for r in results if isinstance(r, Decision)] == [
        e for e in expected if isinstance(e, Decision)
    ]
    tickets = [r for r in results if isinstance(r, int)]
    assert tickets and batched.stats == single.stats
    batched.datagrams_to_send()
    assert batched.stats["batches_sent"] == 0  # still queued: not a tick, not flushed
    batched.flush_batches(now_ns=10)  # window 0: closed at once
    assert [a for _, a in batched.datagrams_to_send()] == [("b", 1)]
    assert batched.stats["batched_checks"] == len(tickets)
    with pytest.raises(ValueError):
        batched.check_batch(["ok", ""], 1, now_ns=11, wall_ns=11)
