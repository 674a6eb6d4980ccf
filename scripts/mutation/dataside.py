"""Planted bugs on the data side: the burst carry, rule stamps, stranded forwards,
hand-over to new replicas, a restarted owner's resync and degraded re-sends.

Written as a reviewer would (after the shipped catalogues), each one small, realistic slip
the checkers must catch with the shipped scenarios and the default fuzz: a carry that
never decays, an HLC that forgets the remote counter, checks left stranded at a dead
owner, a hand-over that skips members new to a preference list, a resync that counts plain
replication as hand-over, and degraded re-sends spent while the owner is unreachable.
"""

from __future__ import annotations

from typing import Any

from meshlimit.cluster.node import Node
from mutation.catalogue import Mutant, Patch


def _patch_carry_never_decays() -> list[Patch]:
    """A roll keeps the larger of the old carry and the new one (``max(carry, ...)``, where
    only the new one was meant): a burst once used is never paid back, and a client that
    went over once is held to ``limit`` for good."""
    from meshlimit.core import algorithms

    def roll_window(
        idx: int, cur: int, prev: int, carry: int, limit: int, burst: int, now_idx: int
    ) -> tuple[int, int, int]:
        gap = (now_idx - idx) & algorithms.WINDOW_MASK
        if gap == 0:
            return cur, prev, carry
        if burst:
            carry = min(burst, max(carry, carry + cur - gap * limit))
        if gap == 1:
            return 0, cur, carry
        return 0, 0, carry

    return [(algorithms, "roll_window", roll_window)]


def _patch_hlc_observe_drops_remote_counter() -> list[Patch]:
    """Receiving a stamp at our own wall millisecond keeps our counter, not the larger
    of the two (``last.counter + 1`` for ``max(...) + 1``): our next write in that
    millisecond is stamped below the remote write it follows."""
    from meshlimit.cluster.node import rulesync
    from meshlimit.core.hlc import NS_PER_MS, Stamp
    from meshlimit.core.hlc import observe as original

    def observe(last: Stamp, remote: Stamp, node: str, *, now_ns: int) -> Stamp:
        wall_ms = now_ns // NS_PER_MS
        top = max(wall_ms, last.wall_ms, remote.wall_ms)
        if last.wall_ms == remote.wall_ms == top:
            return Stamp(top, last.counter + 1, node)
        return original(last, remote, node, now_ns=now_ns)

    return [(rulesync, "observe", observe)]


def _plant_stranded_not_released(node: Node) -> None:
    """Checks forwarded to an owner that stopped being alive wait for their timeout
    (``stranded`` returns nothing): detection no longer ends the wait."""
    node.degraded.stranded = lambda pending: []  # type: ignore[method-assign]


def _patch_handover_skips_new_replicas() -> list[Patch]:
    """A ring change hands a counter to its new owner only, not to members new to its
    preference list as replicas: the replica a later crash promotes starts without the
    counts of others' slots."""
    from meshlimit.cluster.node import replication

    def due(
        old: Any, new: Any, client: str, width: int, me: str, back: frozenset[str], *,
        same_ring: bool,
    ) -> frozenset[str]:  # fmt: skip
        after = new.preference_list(client, width)
        before = after if same_ring else old.preference_list(client, width)
        if before == after:
            return back.intersection(after) if back else frozenset()
        return frozenset(
            n for i, n in enumerate(after)
            if n != me and (n in back or (i == 0 and before[0] != n))
        )  # fmt: skip

    return [(replication, "_due", due)]


def _patch_resync_counts_replication() -> list[Patch]:
    """A restarted node counts every slot a peer sends towards its hand-over (plain
    replication too, not only slots naming another node): the wait ends once as many
    slots as the done names arrived, though the hand-over's own may still be on the way."""
    from meshlimit.cluster.node import node as node_module

    return [(node_module, "handed_over", lambda slots, sender: len(slots))]


def _plant_degraded_resends_spent_cut_off(node: Node) -> None:
    """A degraded admission's re-sends are spent while its owner is still unreachable
    (the ``if`` around the decrement dropped): after three rounds of a partition nothing
    is re-sent, and the owner never learns what was admitted early in it."""
    from meshlimit.cluster.node.config import per_round
    from meshlimit.cluster.node.degraded import DEGRADED_RESEND_MIN, DEGRADED_RESENDS_PER_S

    degraded = node.degraded

    def resend(wall: int, ring: Any) -> None:
        by_node: dict[str, list[Any]] = {}
        resends_of = degraded._resends
        budget = per_round(
            DEGRADED_RESENDS_PER_S, degraded._config.gossip_interval_ns, DEGRADED_RESEND_MIN
        )
        for _ in range(min(len(resends_of), budget)):
            key, resends = resends_of.popitem(last=False)
            slots = degraded._replication.slots_of(key, wall, own_only=True)
            if not slots or resends <= 0:
                continue
            prefs = ring.preference_list(key[1], 1 + degraded._config.replicas)
            resends -= 1
            if resends > 0:
                resends_of[key] = resends
            for peer in prefs:
                if peer != degraded._node_id:
                    by_node.setdefault(peer, []).extend(slots)
        degraded._replication.send_slots(by_node)

    degraded.resend = resend  # type: ignore[method-assign]


# --- more slips of the same kind, written with the verdicts above ------------------------


def _plant_stranded_only_dead(node: Node) -> None:
    """Checks forwarded to an owner are released only once it is declared dead, not when it
    is first suspected (``== DEAD`` for ``!= ALIVE``): a suspicion, the seconds before the
    verdict, leaves them waiting for their forward timeout."""
    from meshlimit.cluster.wire.messages import MemberState

    degraded = node.degraded

    def stranded(pending: dict[int, Any]) -> list[tuple[int, Any]]:
        if not degraded._lost:
            return []
        degraded._lost.clear()
        gone = (MemberState.DEAD, MemberState.LEFT)
        out = [(t, p) for t, p in pending.items() if degraded._states.get(p.owner) in gone]
        for ticket, _ in out:
            del pending[ticket]
        return out

    degraded.stranded = stranded  # type: ignore[method-assign]


def _plant_degraded_reports_owner_only(node: Node) -> None:
    """Degraded admissions are re-sent to the client's owner only, not with its replicas
    (``prefs[:1]``): while the owner is down, nobody that will take the client over hears
    of them."""
    degraded = node.degraded

    def make(send_slots: Any) -> Any:
        ring_of = node

        def only_owners(by_node: dict[str, list[Any]]) -> Any:
            kept: dict[str, list[Any]] = {}
            for peer, slots in by_node.items():
                mine = [s for s in slots if ring_of.ring.owner(s.client) == peer]
                if mine:
                    kept[peer] = mine
            return send_slots(kept)

        return only_owners

    replication = degraded._replication
    original = replication.send_slots

    def resend(wall: int, ring: Any) -> None:
        replication.send_slots = make(original)  # type: ignore[method-assign]
        try:
            type(degraded).resend(degraded, wall, ring)
        finally:
            replication.send_slots = original  # type: ignore[method-assign]

    degraded.resend = resend  # type: ignore[method-assign]


DATASIDE_MUTANTS: tuple[Mutant, ...] = (
    Mutant("carry_never_decays", "burst carry",
           "a roll keeps the larger of old and new carry: a burst once used is never repaid",
           ("hot_client", "burst_carry_repaid", "healthy"), patches=_patch_carry_never_decays),
    Mutant("hlc_observe_drops_remote_counter", "rule ordering",
           "a received stamp at our own millisecond keeps our counter, not the larger",
           ("hlc_relay_same_ms", "rule_races", "concurrent_rule_writes"),
           patches=_patch_hlc_observe_drops_remote_counter),
    Mutant("stranded_not_released", "forwarding",
           "checks forwarded to an owner that stopped being alive wait for their timeout",
           ("owner_crash", "minority_partition"), plant=_plant_stranded_not_released),
    Mutant("handover_skips_new_replicas", "hand-over",
           "a ring change hands counters to the new owner only, not to new replicas",
           ("replica_promoted_long_window", "join_under_load", "join_leave", "rolling_restart"),
           patches=_patch_handover_skips_new_replicas),
    Mutant("resync_counts_replication", "hand-over to a restarted node",
           "a restarted node counts plain replication towards the hand-over it waits for",
           ("resync_reordered", "fast_restart_owner", "restart_replica_paused", "edge_same_seed_restart"),
           patches=_patch_resync_counts_replication),
    Mutant("degraded_resends_spent_cut_off", "degraded quota",
           "a degraded admission's re-sends are spent while its owner is unreachable",
           ("degraded_report_after_cut", "minority_partition", "owner_crash", "even_split"),
           plant=_plant_degraded_resends_spent_cut_off),
    Mutant("stranded_only_dead", "forwarding",
           "checks at an owner are released when it is declared dead, not when suspected",
           ("owner_crash", "minority_partition"), plant=_plant_stranded_only_dead),
    Mutant("degraded_reports_owner_only", "degraded quota",
           "degraded admissions are re-sent to the owner only, not with its replicas",
           ("degraded_report_after_cut", "owner_crash", "minority_partition"),
           plant=_plant_degraded_reports_owner_only),
)  # fmt: skip
