"""Lifeguard's local health awareness: a node its peers found slow waits longer to accuse.

The score rises when this node refutes a suspicion of itself and falls with each of its
probes answered in time; it widens the probe's wait for a direct ack (within the probe
interval) and the suspicions this node runs (within Lifeguard's longest), so detection
stays within the bounds of ``docs/design.md``.
"""

from __future__ import annotations

from collections import Counter

from test_node_links import NS_PER_MS, NS_PER_S, cluster

from meshlimit.cluster.membership.awareness import Awareness


def test_the_score_widens_waits_within_their_bounds() -> None:
    awareness = Awareness(8, Counter())
    assert awareness.probe_timeout_ns(500, 1000) == 500
    assert awareness.suspicion_min_ns(2000, 12_000) == 2000
    for _ in range(20):
        awareness.refuted()
    assert awareness.score == 7, "awareness: not capped at awareness_max - 1"
    assert awareness.probe_timeout_ns(500, 1000) == 900, "probe wait outgrew the interval"
    assert awareness.suspicion_min_ns(2000, 12_000) == 12_000, "beyond Lifeguard's longest"
    awareness.probe_answered()
    assert awareness.score == 6
    off = Awareness(1, Counter())
    off.refuted()
    assert off.score == 0 and off.probe_timeout_ns(500, 1000) == 500, "awareness_max 1: off"


def test_a_node_found_slow_raises_its_score_then_heals() -> None:
    link = cluster("abc")
    slow = link.nodes["c"]
    assert slow.membership.local_health == 0
    link.crash("c")  # c stalls: its peers hear nothing from it
    for _ in range(100):
        link.advance(100 * NS_PER_MS)
        if {s for n, _, s, _ in link.nodes["a"].members() if n == "c"} == {"suspect"}:
            break
    link.off.discard("c")  # c resumes, hears it is suspected and refutes
    for _ in range(100):
        link.advance(10 * NS_PER_MS)
        if slow.membership.stats["refutations"]:
            break
    assert slow.membership.stats["refutations"] >= 1, "membership: c did not refute"
    assert slow.membership.local_health >= 1, "awareness: a refutation did not count"
    link.advance(30 * NS_PER_S)  # its probes are answered again
    assert slow.membership.local_health == 0, "awareness: the score did not heal"
    assert all(s == "alive" for _, _, s, _ in link.nodes["a"].members())
