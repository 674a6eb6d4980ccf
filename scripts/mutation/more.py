"""More planted bugs: the ones an adversary writing a hidden set would try next.

Each is as small and realistic as those of :mod:`mutation.catalogue`: an off-by-one, a
wrong operand, a sign, a forgotten case, in forwarding, replication and hand-over, window
arithmetic, burst carry, membership, de-duplication, rule ordering, clock offsets, resets,
the degraded quota, the majority rule, joining and restarts with the same identity. Every
one is caught by a shipped scenario or the default fuzz (``scripts/mutants.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from meshlimit.cluster.node import Node
from mutation.catalogue import _LIVE, Mutant, Patch, _noop, _wrap

# --- forwarding and de-duplication ------------------------------------------------------


def _plant_dedup_cache_one(node: Node) -> None:
    """The owner remembers one answer per peer (``dedup_per_peer`` read as 1): a duplicate
    arriving after any other check from that peer is decided again."""
    node.forwarding._config = replace(node.forwarding._config, dedup_per_peer=1)


def _plant_request_ids_per_node(node: Node) -> None:
    """Request ids drawn from the node's name, not its life's boot id: every life of a node
    reuses the ids of the last, and owners answer the new life from the old one's cache."""
    from meshlimit.cluster.node.forwarding import request_ids
    from meshlimit.sim.events import derive_rng

    boot = derive_rng(0, "ids", node.node_id).getrandbits(64)
    node.forwarding._life, node.forwarding._seq = request_ids(boot)


def _plant_timeout_drops_check(node: Node) -> None:
    """A forwarded check whose owner stays silent is dropped at its deadline instead of
    decided from the degraded quota: the client never gets an answer."""

    def make(expire: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(now_ns: int) -> list[Any]:
            expire(now_ns)
            return []

        return wrapped

    _wrap(node.forwarding, "expire", make)


# --- replication and hand-over ----------------------------------------------------------


def _plant_handover_half(node: Node) -> None:
    """A hand-over round sends every other counter of its batch (a stride bug)."""
    replication = node.replication
    send_slots = replication.send_slots

    def halved(by_node: dict[str, list[Any]]) -> None:
        send_slots({peer: slots[::2] for peer, slots in by_node.items()})

    def make(handover: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> None:
            replication.send_slots = halved  # type: ignore[method-assign]
            try:
                handover(*args, **kwargs)
            finally:
                replication.send_slots = send_slots  # type: ignore[method-assign]

        return wrapped

    _wrap(replication, "continue_handover", make)


def _plant_gossip_drops_overflow(node: Node) -> None:
    """Deltas that do not fit one datagram are dropped: only the first message per peer of
    a round goes out (replication, hand-over and degraded reports alike)."""
    from meshlimit.cluster.wire import codec
    from meshlimit.cluster.wire.messages import CounterDeltas

    replication = node.replication
    link = replication._link

    def send_slots(by_node: dict[str, list[Any]]) -> None:
        for peer, slots in by_node.items():
            for message in codec.fit_items(CounterDeltas, slots, link.message_budget):
                link.send(peer, message)
                break

    replication.send_slots = send_slots  # type: ignore[method-assign]


def _patch_merge_overwrites() -> list[Patch]:
    """A G-counter slot takes the merged value even when it is lower (assignment for max):
    a late or re-sent delta winds a replica's count back."""
    from meshlimit.core.gcounter import GCounter

    original = GCounter.merge_slot

    def merge_slot(self: GCounter, node: str, count: int) -> bool:
        if 0 < count < self.get(node):
            _set_slot(self, node, count)
            return False
        return bool(original(self, node, count))

    return [(GCounter, "merge_slot", merge_slot)]


def _set_slot(counter: Any, node: str, count: int) -> None:
    if counter._node == node:
        counter._count = count
    elif counter._more is not None and node in counter._more:
        counter._more[node] = count


# --- window arithmetic and burst carry -------------------------------------------------


def _patch_fixed_window_misaligned() -> list[Patch]:
    """Fixed windows start half a window late (an offset added to the clock before the
    division): each of the node's windows spans two of the rule's."""
    from meshlimit.core import counters
    from meshlimit.core.algorithms import fixed_window as original

    def fixed_window(*args: Any) -> Any:
        *head, window_ns, cost, now_ns = args
        return original(*head, window_ns, cost, now_ns + window_ns // 2)

    return [(counters, "fixed_window", fixed_window)]


def _patch_sweep_one_window_early() -> list[Patch]:
    """Counters are swept once their window ends, not once the one after it ends (horizon
    1 for 2): a sliding window loses the previous window's count."""
    from meshlimit.core.counters import ClientCounter

    original = ClientCounter.is_dead

    def is_dead(self: ClientCounter, now_idx: int, horizon: int, now_ns: int) -> bool:
        return bool(original(self, now_idx, max(1, horizon - 1), now_ns))

    return [(ClientCounter, "is_dead", is_dead)]


def _patch_token_bucket_refill_double() -> list[Patch]:
    """The token bucket's emission interval is halved (``window / 2 limit``): it refills
    twice as fast as the rule allows."""
    from meshlimit.core import counters
    from meshlimit.core.algorithms import token_bucket as original

    def token_bucket(tat: int, limit: int, burst: int, window_ns: int, *rest: Any) -> Any:
        return original(tat, 2 * limit, burst - limit if burst >= limit else 0, window_ns, *rest)

    return [(counters, "token_bucket", token_bucket)]


def _patch_carry_not_capped() -> list[Patch]:
    """Each window that rolls by pays off half a limit more of the burst carry than it
    should: over-use is forgiven faster than the sustained rate allows."""
    from meshlimit.core import algorithms

    original = algorithms.roll_window

    def roll_window(
        idx: int, cur: int, prev: int, carry: int, limit: int, burst: int, now_idx: int
    ) -> tuple[int, int, int]:
        cur2, prev2, carry2 = original(idx, cur, prev, carry, limit, burst, now_idx)
        return cur2, prev2, max(0, carry2 - limit // 2)

    return [(algorithms, "roll_window", roll_window)]


# --- membership ------------------------------------------------------------------------


def _plant_reap_immediately(node: Node) -> None:
    """Dead members are reaped at once (``dead_reap`` read in seconds as milliseconds): a
    dead owner's clients move to its successor before the rest of the cluster agrees."""
    table = node.membership._table
    table.config = replace(table.config, dead_reap_ns=table.config.dead_reap_ns // 1000)


def _plant_suspect_news_ignored(node: Node) -> None:
    """News that a member is suspected is dropped unless it comes from our own probe:
    suspicions never spread, so a crashed member is declared dead by each node alone."""
    table = node.membership._table
    from meshlimit.cluster.wire.messages import MemberState

    def make(apply: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(u: Any, sender: str, now: int) -> None:
            if u.state == MemberState.SUSPECT and u.node != table.node_id:
                return
            apply(u, sender, now)

        return wrapped

    _wrap(table, "apply", make)


# --- rules, clocks, resets --------------------------------------------------------------


def _patch_hlc_ignores_wall() -> list[Patch]:
    """Rule stamps count writes but ignore the wall clock: a restarted node stamps its
    first write ``(0, 1)``, below every write of its past life, and the write is lost."""
    from meshlimit.cluster.node import rulesync
    from meshlimit.core.hlc import Stamp

    def next_stamp(last: Stamp, node: str, *, now_ns: int) -> Stamp:
        return Stamp(last.wall_ms, last.counter + 1, node)

    return [(rulesync, "next_stamp", next_stamp)]


def _plant_clock_offset_sign(node: Node) -> None:
    """A peer's clock offset is recorded with its sign flipped (ours minus theirs)."""
    clocks = node.membership._clocks

    def make(sample: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(peer: str, rtt_ns: int, offset_ns: int) -> None:
            sample(peer, rtt_ns, -offset_ns)

        return wrapped

    _wrap(clocks, "sample", make)


def _patch_reset_filter_window_end() -> list[Patch]:
    """After a reset, slots are filtered by their window's end, not its start: a window the
    reset fell in is merged again, with the counts the reset cleared."""
    from meshlimit.cluster.node import replication

    original = replication._after_reset

    def after_reset(slot: Any, window_ns: int, reset_ms: int) -> bool:
        if slot.series.startswith("token_bucket"):
            return bool(original(slot, window_ns, reset_ms))
        return bool((slot.window + 1) * window_ns >= reset_ms * 1_000_000)

    return [(replication, "_after_reset", after_reset)]


# --- degraded quota, majority rule, joining ---------------------------------------------


def _patch_degraded_share_n_minus_1() -> list[Patch]:
    """The degraded units are dealt over ``members - 1`` (the owner left out): the cut-off
    nodes together may admit more than the units."""
    from meshlimit.cluster.node import degraded
    from meshlimit.cluster.node.config import degraded_share as original

    def share(capacity: int, fraction: float, **kwargs: Any) -> int:
        members = max(1, kwargs["members"] - 1)
        position = kwargs["position"] % members
        return int(original(capacity, fraction, **{**kwargs, "members": members,
                                                   "position": position}))  # fmt: skip

    return [(degraded, "degraded_share", share)]


def _plant_majority_counts_dead(node: Node) -> None:
    """The majority counts dead members not yet reaped as live: a minority that declared the
    majority dead keeps deciding at full capacity until it reaps them."""
    from meshlimit.cluster.wire.messages import MemberState

    degraded = node.degraded

    def make(observe: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(membership: Any, states: dict[str, int], *, joined: bool) -> None:
            observe(membership, states, joined=joined)
            quorum = membership.quorum()
            live = sum(1 for n in quorum if states.get(n) in (*_LIVE, MemberState.DEAD))
            expected = node.config.expected_members
            degraded.majority = joined and 2 * live > max(len(quorum), expected)

        return wrapped

    _wrap(degraded, "observe", make)


def _plant_decides_before_join(node: Node) -> None:
    """A node that has not heard back from its seeds takes itself for the cluster: it
    decides at full capacity, owning every client, until its join is answered."""
    joining = node.joining
    cls = type(joining)

    class Eager(cls):  # type: ignore[valid-type,misc]
        @property
        def knows_ring(self) -> bool:
            return bool(self.started)

    joining.__class__ = Eager


def _plant_new_life_not_handed_over(node: Node) -> None:
    """A member alive again at a higher incarnation (a new life announced over an earlier
    one, or back from the dead) is told its hand-over is done, but the scan hands it
    none of the counters it holds: only members new to the ring get theirs."""
    replication = node.replication

    def make(queue: Any) -> Any:
        def wrapped(old: Any, new: Any, rejoined: Any = ()) -> Any:
            queue(old, new, rejoined)
            scan = replication._scan
            if scan is not None:
                scan.back = scan.back & (new.nodes - old.nodes)

        return wrapped

    _wrap(replication, "queue_handover", make)


def _plant_resync_not_awaited(node: Node) -> None:
    """A restarted node that found an earlier life of its own decides its clients at full
    capacity at once, without waiting for its peers to hand its counts back."""
    node.resync.begin = _noop  # type: ignore[method-assign]


MORE_MUTANTS: tuple[Mutant, ...] = (
    Mutant("dedup_cache_one", "de-duplication",
           "the owner remembers one answer per peer, so a late duplicate is decided again",
           ("duplication_reordering",), plant=_plant_dedup_cache_one),
    Mutant("request_ids_per_node", "restart with same identity",
           "request ids come from the node's name, so a new life reuses the last one's",
           ("rolling_restart", "owner_crash", "edge_same_seed_restart"),
           plant=_plant_request_ids_per_node),
    Mutant("timeout_drops_check", "forwarding",
           "a forwarded check that times out is dropped, never answered",
           ("loss_20pct", "flapping_link", "misdelivery"), plant=_plant_timeout_drops_check),
    Mutant("handover_half", "hand-over",
           "a hand-over round sends every other counter of its batch",
           ("join_under_load", "rolling_restart", "join_leave", "fast_restart_owner"),
           plant=_plant_handover_half),
    Mutant("gossip_drops_overflow", "replication",
           "counter deltas beyond one datagram per peer and round are dropped",
           ("join_under_load", "rolling_restart", "owner_crash"),
           plant=_plant_gossip_drops_overflow),
    Mutant("merge_overwrites", "replication",
           "a G-counter slot takes a merged value even when it is lower",
           ("join_under_load", "rolling_restart", "join_leave"),
           patches=_patch_merge_overwrites),
    Mutant("fixed_window_misaligned", "window arithmetic",
           "fixed windows start half a window late",
           ("operator_reset", "rule_change_storm"), patches=_patch_fixed_window_misaligned),
    Mutant("sweep_one_window_early", "window arithmetic",
           "counters are swept when their window ends, losing the previous window",
           ("healthy", "hot_client"), patches=_patch_sweep_one_window_early),
    Mutant("token_bucket_refill_double", "burst carry",
           "the token bucket refills twice as fast as its rule",
           ("token_bucket_hot",), patches=_patch_token_bucket_refill_double),
    Mutant("carry_paid_twice", "burst carry",
           "each window pays off half a limit more of the carry than it earned",
           ("hot_client", "misdelivery"), patches=_patch_carry_not_capped),
    Mutant("reap_immediately", "membership: dead",
           "dead members are reaped at once, not after dead_reap",
           ("owner_crash", "restart_before_reap"), plant=_plant_reap_immediately),
    Mutant("suspect_news_ignored", "membership: suspicion",
           "news of a suspicion from another member is dropped",
           ("owner_crash", "lossy_then_clean"), plant=_plant_suspect_news_ignored),
    Mutant("hlc_ignores_wall", "rule ordering",
           "rule stamps ignore the wall clock, so a restarted node's writes lose",
           ("rule_restart", "concurrent_rule_writes"), patches=_patch_hlc_ignores_wall),
    Mutant("clock_offset_sign", "clock offsets",
           "a peer's clock offset is recorded with its sign flipped",
           ("clock_skew",), plant=_plant_clock_offset_sign),
    Mutant("reset_filter_window_end", "resets",
           "after a reset, slots are filtered by their window's end, not its start",
           ("reset_during_partition", "operator_reset"), patches=_patch_reset_filter_window_end),
    Mutant("degraded_share_n_minus_1", "degraded quota",
           "the degraded units are dealt over members - 1",
           ("minority_partition", "owner_crash", "even_split"),
           patches=_patch_degraded_share_n_minus_1),
    Mutant("majority_counts_dead", "majority rule",
           "the majority counts dead members not yet reaped as live",
           ("minority_partition", "even_split", "edge_minority_owner"),
           plant=_plant_majority_counts_dead),
    Mutant("decides_before_join", "joining before ring known",
           "a node decides at full capacity before its join is answered",
           ("join_under_load", "healthy", "edge_serve_before_join"),
           plant=_plant_decides_before_join),
    Mutant("new_life_not_handed_over", "hand-over to a restarted node",
           "a member alive again at a higher incarnation is not handed its counters",
           ("fast_restart_owner",), plant=_plant_new_life_not_handed_over),
    Mutant("resync_not_awaited", "hand-over to a restarted node",
           "a restarted owner decides at full capacity before its counts are back",
           ("fast_restart_owner",), plant=_plant_resync_not_awaited),
)  # fmt: skip
