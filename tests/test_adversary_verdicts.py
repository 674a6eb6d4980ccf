"""The verdicts sharpened for the adversary's planted bugs (``scripts/mutation/adversary.py``),
fed hand-made observations: each fires on the bug it is for and stays quiet on what a correct
cluster does.

The degraded share of a node still joining (``sim/deciders.py``), the token bucket replayed
over a decider's own admissions (``sim/algorithm.py``), member records that never go back
(``sim/news.py``), a suspicion that outlives its timeout (``sim/suspicions.py``), counts from
before a reset held at the end (``sim/reset_state.py``) and a restarted owner that skipped
its wait for a silent peer (``sim/resync_wait.py``).
"""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace
from typing import Any

from test_checkers import (
    ALIVE,
    DEAD,
    MS,
    RULE,
    SUSPECT,
    S,
    decide,
    everyone_knows,
    fake_node,
    finish,
    kinds,
    owned_by,
    reset_written,
    scenario,
    start,
    tell,
    until,
)
from test_strict_verdicts import datagram, held

from meshlimit.cluster.node.replication import epoch_name
from meshlimit.cluster.wire.messages import MemberUpdate
from meshlimit.core.hlc import Stamp
from meshlimit.core.registry import RuleRegistry
from meshlimit.core.rules import parse_rule
from meshlimit.sim.checkers import Checkers
from meshlimit.sim.events import SIM_EPOCH_NS

NAMES = ["n1", "n2", "n3"]
BUCKET = parse_rule("10/s algo token_bucket")
SLOW = parse_rule("10/10s")

# --- a node still joining deals the degraded units over at least two ---------------------


def test_a_node_that_does_not_know_the_ring_takes_at_most_half_the_units() -> None:
    client = owned_by("n1", NAMES)

    def run(admitted: int) -> set[str]:
        checkers = start(scenario())
        for observer, member in (("n1", "n3"), ("n3", "n1")):  # n2 has heard of nobody yet
            tell(checkers, observer, member, ALIVE, 0)
        decide(checkers, "n2", S + 100 * MS, client, RULE, n=admitted, path="degraded")
        return kinds(finish(checkers, 5 * S))

    # units = floor(10 x 0.5) = 5, dealt over the seeds and itself (at least 2): 3 at most
    assert "over_share" not in run(3)
    assert "over_share" in run(4)  # the whole 5: it took itself for the cluster


# --- the token bucket, replayed over the decider's own admissions ------------------------


def test_a_token_bucket_admits_no_more_than_its_depth_at_once() -> None:
    client = owned_by("n1", NAMES)

    def run(admitted: int) -> list[str]:
        checkers = start(scenario())
        everyone_knows(checkers, NAMES)
        decide(checkers, "n1", S + 100 * MS, client, BUCKET, n=admitted)
        return finish(checkers, 5 * S)

    assert run(10) == []  # limit + burst tokens, 1 ms apart: the bucket is full, not over
    found = run(11)  # one token more: within the window's tally (2 limit + burst), not GCRA
    assert kinds(found) == {"token_bucket_broken"}, found


def test_the_token_bucket_refills_at_the_rule_rate() -> None:
    client = owned_by("n1", NAMES)
    checkers = start(scenario())
    everyone_knows(checkers, NAMES)
    decide(checkers, "n1", S, client, BUCKET, n=10)
    decide(checkers, "n1", S + 300 * MS, client, BUCKET, n=2)  # 3 tokens back after 300 ms
    assert finish(checkers, 5 * S) == []


# --- member records never go back ---------------------------------------------------------


def test_a_dead_member_is_not_revived_by_news_at_its_incarnation() -> None:
    def run(after: list[tuple[str, object, str, int]]) -> set[str]:
        checkers = start(scenario())
        everyone_knows(checkers, NAMES)
        tell(checkers, "n1", "n3", SUSPECT, S)
        dead = held(("n1", "alive", 0), ("n2", "alive", 0), ("n3", "dead", 2))
        gossip = datagram("n2", MemberUpdate("n2", ("n2", 7400), ALIVE, 0))
        checkers.on_datagram("n1", gossip, dead, 3 * S)
        old = datagram("n2", MemberUpdate("n3", ("n3", 7400), ALIVE, 2))
        checkers.on_datagram("n1", old, after, 4 * S)
        return kinds(finish(checkers, 5 * S))

    revived = held(("n1", "alive", 0), ("n2", "alive", 0), ("n3", "alive", 2))
    assert "stale_member_state" in run(revived)
    kept = held(("n1", "alive", 0), ("n2", "alive", 0), ("n3", "dead", 2))
    assert "stale_member_state" not in run(kept)
    new_life = held(("n1", "alive", 0), ("n2", "alive", 0), ("n3", "alive", 3))
    assert "stale_member_state" not in run(new_life)


# --- a suspicion with no confirmations expected runs the base timeout --------------------


def test_a_suspicion_in_three_runs_the_base_timeout() -> None:
    sc = scenario(timeline=("at 1s crash n3",))

    def run(dead_at: int, *, accused_first: bool = False) -> set[str]:
        checkers = start(sc)
        everyone_knows(checkers, NAMES)
        if accused_first:  # n1 was suspected itself: its local health may widen its timers
            tell(checkers, "n2", "n1", SUSPECT, 500 * MS)
            tell(checkers, "n2", "n1", ALIVE, 600 * MS)
        tell(checkers, "n1", "n3", SUSPECT, 2 * S)
        tell(checkers, "n1", "n3", DEAD, dead_at)
        return kinds(finish(checkers, 30 * S))

    assert "slow_suspicion" not in run(4 * S)  # the base timeout: 2 x 1 s
    assert "slow_suspicion" in run(14 * S)  # the longest, unconfirmed one: 6 x base
    assert "slow_suspicion" not in run(14 * S, accused_first=True)


# --- what nodes hold for a reset client at the end ---------------------------------------


def _holding(name: str, registry: RuleRegistry, slots: tuple[tuple[str, int], ...]) -> Any:
    node = fake_node(name, NAMES, registry=registry)
    node.replication = SimpleNamespace(series_windows={SLOW.series: SLOW.window_ns})
    index = (SIM_EPOCH_NS + S) // SLOW.window_ns  # the window the reset fell in
    if slots:
        node.counters.merge("c", SLOW.series, index, slots, index)
    return node


def test_a_node_the_reset_reached_holds_no_older_slot_of_a_peer() -> None:
    reset_at = 1500 * MS
    reset_ms = (SIM_EPOCH_NS + reset_at) // MS

    def run(replica_slots: tuple[tuple[str, int], ...]) -> list[str]:
        checkers = start(scenario(timeline=("at 1500ms reset c",)))
        everyone_knows(checkers, NAMES)
        reset_written(checkers, "c", "n1", reset_at)
        nodes = {}
        for name in NAMES:
            registry = RuleRegistry("10/s")
            registry.apply("reset:c", None, Stamp(reset_ms, 0, "n1"))
            nodes[name] = (_holding(name, registry, replica_slots if name == "n2" else ()), 0)
        checkers.on_final_state(nodes, 5 * S)  # type: ignore[arg-type]
        return finish(checkers, 5 * S)

    stale = run((("n1", 7),))  # the owner's count from before the reset, never cleared
    assert any(v.startswith("reset_not_kept") and "n2 holds c's counts" in v for v in stale)
    assert run(((epoch_name("n1", reset_ms), 3),)) == []  # counted since it, named for it
    assert run((("n2", 2),)) == []  # its own slot: what it admitted since it cleared


# --- a restarted owner waits for the peers it holds live ---------------------------------


def _resynced(checkers: Checkers) -> dict[str, Any]:
    nodes = {}
    for name in NAMES:
        node = fake_node(name, NAMES)
        node.stats = Counter({"resyncs": 1} if name == "n1" else {})
        node.config = SimpleNamespace(resync_wait_ns=10 * S)
        node.replication = SimpleNamespace(series_windows={})
        nodes[name] = (node, 0)
    return nodes


def test_a_restarted_owner_waits_for_a_silent_peer_it_holds_live() -> None:
    client = owned_by("n1", NAMES)
    sc = scenario(
        timeline=("at 1900ms pause n3 for 2s", "at 1950ms crash n1", "at 2s restart n1",
                  "at 3900ms resume n3")
    )  # fmt: skip

    def run(full_at: int) -> list[str]:
        checkers = start(sc)
        everyone_knows(checkers, NAMES)
        until(checkers, 2 * S)
        tell(checkers, "n1", "n2", ALIVE, 2 * S + 20 * MS)  # n2's join reply names both
        tell(checkers, "n1", "n3", ALIVE, 2 * S + 20 * MS)
        decide(checkers, "n1", full_at, client, SLOW, n=1)
        end = full_at + 2 * S
        checkers.on_final_state(_resynced(checkers), end)
        return finish(checkers, end)

    skipped = run(2 * S + 100 * MS)  # n3, paused since before n1 started, never spoke
    assert any(v.startswith("resync_skipped") and "while n3" in v for v in skipped), skipped
    assert "resync_skipped" not in kinds(run(4 * S))  # n3 runs again from 3.9 s
    assert "resync_skipped" not in kinds(run(12 * S + 100 * MS))  # the wait ran out
