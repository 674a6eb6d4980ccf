"""Degraded mode: deciding without the owner, within a local quota, and reporting it.

Theory of operation. A check is decided here in degraded mode when its owner is not
known alive (suspected, dead but not yet reaped, or unknown), when the owner stays
silent past the forward timeout, or when this node cannot see a majority of the
cluster. It is then decided against a local quota (``local_quota``: a share of the
client's capacity for the nodes cut off from its owner), counted in this node's own
G-counter slot only.

The majority rule: the quorum is every member ever seen and not gracefully left; a
node sees a majority when more than half of it is alive or suspect, and once its join
has been answered. Without one, every decision is degraded, so that no two sides of a
partition both enforce the full limit; a booting node that has not heard back from
the cluster gets no quota at all (the cluster's size, and so a fair share, is unknown).

Degraded admissions must reach the owner, whose merged count then includes them: each
is re-sent, with the client's replicas, every gossip round while the owner is
unreachable (it can only merge them once it hears us), then ``DEGRADED_RESENDS`` more
rounds once it is alive again, for loss; the end of the counter's window also ends it.
"""

from __future__ import annotations

from collections import Counter, OrderedDict

from meshlimit.cluster.membership import MemberEvent
from meshlimit.cluster.node.config import NodeConfig, local_quota
from meshlimit.cluster.node.replication import Replication, SeriesKey, mark_dirty
from meshlimit.cluster.wire.messages import CounterSlot, MemberState
from meshlimit.core.ring import HashRing
from meshlimit.core.rules import Rule

#: Gossip rounds a degraded admission is re-sent once its owner is reachable (for loss).
DEGRADED_RESENDS = 3


class DegradedMode:
    """Who is reachable, whether this node sees a majority, and degraded admissions to
    report to their owners."""

    def __init__(
        self, config: NodeConfig, replication: Replication, *, dropped: Counter[str]
    ) -> None:
        self._config = config
        self._node_id = config.node_id
        self._replication = replication
        self._dropped = dropped
        # Membership as routing sees it: states by node, and the members that count
        # towards a majority (everyone ever seen and not gracefully left).
        self._states: dict[str, int] = {config.node_id: MemberState.ALIVE}
        self._quorum: set[str] = {config.node_id}
        #: Whether this node sees a majority of the quorum (else every decision is degraded).
        self.majority = True
        # Degraded admissions awaiting report, with the re-sends left once the owner is up.
        self._resends: OrderedDict[SeriesKey, int] = OrderedDict()

    def observe(self, events: list[MemberEvent], states: dict[str, int], *, joined: bool) -> None:
        """Membership changed: ``states`` is every known member's state, ``events`` the news."""
        for event in events:
            if event.new_state == MemberState.LEFT:
                self._quorum.discard(event.node)
        self._states = states
        for node, state in states.items():
            if state != MemberState.LEFT:
                self._quorum.add(node)
        live = sum(1 for s in states.values() if s in (MemberState.ALIVE, MemberState.SUSPECT))
        # A node that has not yet heard back from the cluster it is joining sees only
        # itself: it must not take itself for the whole cluster (after a restart it
        # would otherwise own every client, from zero, until the join completes).
        self.majority = 2 * live > len(self._quorum) and joined

    def owner_unreachable(self, owner: str) -> bool:
        """Whether ``owner`` is anything but known alive (its checks are decided here)."""
        return self._states.get(owner, MemberState.DEAD) != MemberState.ALIVE

    def quota(self, rule: Rule, *, joined: bool) -> int:
        """What this node may admit per window for a client under ``rule``."""
        if not joined:
            # Joining and not yet answered: the cluster's size, and so a fair share of
            # it, is unknown. Refuse rather than let every booting node take a share.
            return 0
        return local_quota(rule.capacity, len(self._quorum), self._config.degraded_fraction)

    def note_admitted(self, series: str, client: str) -> None:
        """A degraded admission: report it to the client's owner until it has it."""
        mark_dirty(
            self._resends,
            (series, client),
            DEGRADED_RESENDS,
            limit=self._config.max_dirty,
            dropped=self._dropped,
        )

    def forget(self, client: str) -> None:
        """An operator reset ``client``: its degraded admissions are no longer news."""
        for series in self._replication.series_windows:
            self._resends.pop((series, client), None)

    def resend(self, wall: int, ring: HashRing) -> None:
        """Send degraded admissions to the client's owner and replicas (one gossip round)."""
        if not self._resends:
            return
        by_node: dict[str, list[CounterSlot]] = {}
        for key, resends in list(self._resends.items()):
            slots = self._replication.slots_of(key, wall, own_only=True)
            if not slots or resends <= 0:
                del self._resends[key]
                continue
            prefs = ring.preference_list(key[1], 1 + self._config.replicas)
            if not self.owner_unreachable(prefs[0]):
                self._resends[key] = resends - 1
            for node in prefs:
                if node != self._node_id:
                    by_node.setdefault(node, []).extend(slots)
        self._replication.send_slots(by_node)
