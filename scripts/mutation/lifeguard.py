"""Planted bugs in Lifeguard and the membership around it: the suspicion timer's
confirmations and size, the local health score (``awareness.py``), the roster of reaped
members and the quorum of the majority rule.

Each keeps every admission within its bound for a while; what breaks is *when* a member is
declared dead, what a node holds of a dead one, or which members a majority is taken of.
They are caught by ``sim/lifeguard.py`` (deaths against Lifeguard's timeout, the health
score coming back, records that never go back across reaping), by ``degraded_without_cause``
in runs whose only faults are graceful leaves and joins (``sim/deciders.py``), and by the
scenarios named with each. The trial set's ``probe_schedule_ignored`` is not here: it stays
within ``detection_bound`` (``docs/simulator.md``); its ``refute_not_above_rumour`` ships
in ``mutation/adversary2.py``.
"""

from __future__ import annotations

from typing import Any

from meshlimit.cluster.node import Node
from mutation.catalogue import Mutant, Patch, _noop

# --- the suspicion timer --------------------------------------------------------------


def _patch_confirm_counts_first_accuser() -> list[Patch]:
    """A suspicion's confirmations count the first accuser too (``len(confirmers)`` for
    ``len - 1``): every suspicion with one confirmation runs as if it had two."""
    from meshlimit.cluster.membership.suspicion import Suspicion, lifeguard_timeout_ns

    def confirm(self: Suspicion, node: str) -> None:
        if node in self.confirmers or len(self.confirmers) > self.expected:
            return
        self.confirmers.add(node)
        confirmed = len(self.confirmers)
        timeout = lifeguard_timeout_ns(self.min_ns, self.max_ns, self.expected, confirmed)
        self.deadline = self.started_ns + timeout

    return [(Suspicion, "confirm", confirm)]


def _patch_suspicion_members_off_by_one() -> list[Patch]:
    """A suspicion's timer is sized for the live members other than self (``live_count -
    1``): Lifeguard's K is one too small, so one confirmation already brings it to the base
    timeout."""
    from meshlimit.cluster.membership import members
    from meshlimit.cluster.membership.members import MemberTable
    from meshlimit.cluster.membership.suspicion import Suspicion

    def start(self: MemberTable, node: str, accuser: str, now: int) -> None:
        n = self.live_count - 1
        base = members.suspicion_timeout_ns(self.config, n)
        longest = base * self.config.suspicion_max_mult
        self.suspicions[node] = Suspicion.start(
            now,
            self._awareness.suspicion_min_ns(base, longest),
            longest,
            members.expected_confirmations(self.config, n),
            accuser,
        )
        self._stats["suspicions"] += 1

    return [(MemberTable, "_start_suspicion", start)]


# --- local health (awareness) ---------------------------------------------------------


def _plant_awareness_never_recovers(node: Node) -> None:
    """Lifeguard's local health score never comes down (answered probes no longer lower
    it): one refutation or stall leaves a node slow to accuse for the rest of its life."""
    node.membership._awareness.probe_answered = _noop  # type: ignore[method-assign]


def _plant_awareness_refute_ignored(node: Node) -> None:
    """A refutation no longer raises the health score (``refuted`` does nothing): a node
    its peers find slow keeps accusing them as fast as a healthy one."""
    node.membership._awareness.refuted = _noop  # type: ignore[method-assign]


def _plant_awareness_not_applied(node: Node) -> None:
    """The health score no longer widens the suspicions this node raises (the base
    timeout whatever the score): a node that is itself slow accuses as fast as a healthy
    one, which is what Lifeguard is there to stop."""
    node.membership._awareness.suspicion_min_ns = lambda base, longest: base  # type: ignore[method-assign]


# --- the roster, the probe schedule, the quorum ---------------------------------------


def _patch_roster_revives_same_incarnation() -> list[Patch]:
    """The roster takes news of a reaped dead member alive at the incarnation it died at
    as newer (incarnations compared alone, ``<`` for ``<=`` on the pair): a stale alive
    rumour brings a dead member back into the table."""
    from meshlimit.cluster.membership.roster import Roster
    from meshlimit.cluster.wire.messages import MemberState

    original = Roster.merge

    def merge(self: Roster, update: Any, now_ns: int) -> bool:
        entry = self.entries.get(update.node)
        if (
            entry is not None
            and entry.update.state == MemberState.DEAD
            and update.state == MemberState.ALIVE
            and update.incarnation == entry.update.incarnation
        ):
            del self.entries[update.node]
            self.generation += 1
            return False
        return bool(original(self, update, now_ns))

    return [(Roster, "merge", merge)]


def _patch_roster_counts_tombstones() -> list[Patch]:
    """The roster counts every entry toward the cluster's size, tombstones too (the
    ``state == DEAD`` filter dropped): once the table reaps a member that left gracefully,
    it counts again, as if it had died."""
    from meshlimit.cluster.membership.roster import Roster

    return [(Roster, "counted", lambda self: list(self.entries))]


def _patch_quorum_counts_left() -> list[Patch]:
    """The quorum keeps members that left gracefully (``!= LEFT`` dropped): after a
    leave the rest need a majority of a cluster that no longer exists."""
    from meshlimit.cluster.membership.swim import Membership

    def quorum(self: Membership) -> tuple[str, ...]:
        generation = self.generation
        if self._quorum[0] != generation:
            kept = list(self._members)
            self._quorum = (generation, tuple(sorted(kept + self._roster.counted())))
        return self._quorum[1]

    return [(Membership, "quorum", quorum)]


LIFEGUARD_MUTANTS: tuple[Mutant, ...] = (
    Mutant("confirm_counts_first_accuser", "membership: suspicion",
           "a suspicion's confirmations count its first accuser too",
           ("lifeguard_triple_crash", "owner_crash"),
           patches=_patch_confirm_counts_first_accuser),
    Mutant("suspicion_members_off_by_one", "membership: suspicion",
           "a suspicion's timer is sized for the live members other than self",
           ("lifeguard_triple_crash", "owner_crash"),
           patches=_patch_suspicion_members_off_by_one),
    Mutant("awareness_never_recovers", "membership: Lifeguard",
           "the local health score never comes down after a refutation or a stall",
           ("lossy_then_clean", "lifeguard_triple_crash"),
           plant=_plant_awareness_never_recovers),
    Mutant("awareness_refute_ignored", "membership: Lifeguard",
           "a refutation no longer raises the local health score",
           ("lifeguard_triple_crash", "lossy_then_clean"),
           plant=_plant_awareness_refute_ignored),
    Mutant("awareness_not_applied", "membership: Lifeguard",
           "the local health score no longer widens the suspicions a node raises",
           ("lifeguard_triple_crash", "lossy_then_clean"),
           plant=_plant_awareness_not_applied),
    Mutant("roster_revives_same_incarnation", "membership: roster",
           "the roster takes a stale alive rumour at the death's incarnation as news",
           ("partition_outlives_reap", "restart_before_reap"),
           patches=_patch_roster_revives_same_incarnation),
    Mutant("quorum_counts_left", "majority rule",
           "members that left gracefully still count in the quorum",
           ("leaves_to_half", "join_leave"), patches=_patch_quorum_counts_left),
    Mutant("roster_counts_tombstones", "majority rule",
           "members that left count again once the table reaps them",
           ("leaves_to_half", "join_leave"), patches=_patch_roster_counts_tombstones),
)  # fmt: skip
