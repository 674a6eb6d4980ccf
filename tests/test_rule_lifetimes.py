"""How rule entries end across a cluster of sans-IO nodes (``core/registry.py`` and
``cluster/node/rulesync.py``): per-call entries spread once, reach joiners, are never
repaired by anti-entropy and expire on every node once idle; graves are purged after the
horizon and a too-old removal arriving late is not stored again.

The nodes run over the in-memory link of ``test_node_links.py`` with its fake clock.
"""

from __future__ import annotations

from test_node_links import NS_PER_S, cluster

from meshlimit.core.rules import Rule

THROTTLE = "1/2s burst 15 algo token_bucket"
KEY = "client:cl.throttle:k"
NS_PER_MS = 1_000_000


def test_a_per_call_entry_spreads_reaches_a_joiner_and_expires_everywhere_once_idle() -> None:
    link = cluster("abc")
    link.set_rule("b", KEY, THROTTLE)
    link.settle()
    for name, node in link.up():
        assert node.rule_for("cl.throttle:k") == Rule.parse(THROTTLE), f"{name}: not spread"
        assert node.registry.entry_count() == 1, f"{name}: a per-call entry counted as durable"
    late = link.add("d", seeds=["a"])
    assert late.rule_for("cl.throttle:k") == Rule.parse(THROTTLE), "the join sent no calls"
    digests = {node.registry.digest for _, node in link.up()}
    assert len(digests) == 1, "per-call entries changed the digest"
    life_ns = late.registry.call_lifetime_ms(Rule.parse(THROTTLE)) * NS_PER_MS
    link.advance(life_ns + NS_PER_S)  # gossip rounds sweep the registry as they go
    for name, node in link.up():
        assert node.registry.call_count() == 0, f"{name}: the idle per-call entry stayed"
        assert node.registry.stats["calls_expired"] == 1, f"{name}: expiry not counted"
        assert node.rule_for("cl.throttle:k") == Rule.parse("5/hour")


def test_anti_entropy_neither_repairs_nor_resurrects_per_call_entries() -> None:
    link = cluster("ab")
    link.drop_next("a", "b")  # the one datagram carrying the entry is lost
    link.set_rule("a", KEY, THROTTLE)
    link.settle()
    link.set_rule("a", "client:acme", "7/minute")  # a durable entry: repaired if lost
    link.settle()
    link.advance(link.nodes["a"].config.anti_entropy_interval_ns * 5)
    b = link.nodes["b"]
    assert b.rule_for("acme") == Rule.parse("7/minute")
    assert b.registry.call_count() == 0, "anti-entropy repaired a per-call entry"


def test_a_removal_is_purged_after_the_horizon_and_not_taken_back_from_a_late_peer() -> None:
    link = cluster("ab")
    horizon_ms = 60_000  # a day in production (GRAVE_HORIZON_MS); a minute keeps this quick
    for _, node in link.up():
        node.registry.grave_horizon_ms = horizon_ms
    link.set_rule("a", "client:acme", "7/minute")
    link.settle()
    link.set_rule("a", "client:acme", None)
    link.settle()
    a, b = link.nodes["a"], link.nodes["b"]
    assert a.registry.grave_count() == b.registry.grave_count() == 1
    grave = a.registry.entry("client:acme")
    assert grave is not None and grave.value is None
    link.advance((horizon_ms + 1000) * NS_PER_MS)
    for name, node in link.up():
        assert node.registry.grave_count() == 0, f"{name}: the grave was not purged"
        assert node.registry.entry("client:acme") is None
        assert node.registry.stats["graves_purged"] == 1
    assert a.registry.digest == b.registry.digest
    # A peer that was away sends the removal again: too old to keep, it is not stored.
    now_ms = link.wall("a") // NS_PER_MS
    assert not a.registry.apply("client:acme", None, grave.stamp, now_ms=now_ms)
    assert a.registry.entry("client:acme") is None and a.registry.grave_count() == 0
