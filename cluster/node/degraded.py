"""Degraded mode: deciding without the owner, within a share of the limit, and reporting it.

Theory of operation. A check is decided here in degraded mode when its owner is not
known alive (suspected, dead but not yet reaped, or unknown), when the owner stays
silent past the forward timeout, or when this node cannot see a majority of the
cluster (then every check, its own clients' and those peers forward to it, is
degraded). It is decided against this node's share of the client's degraded units
(``degraded_share`` in ``config.py``: ``floor(capacity * degraded_fraction)`` dealt out
over the members, the spare units to positions hashed from the client and the window),
counted in this node's own G-counter slot only.

Who counts. The quorum is ``Membership.quorum()``: every member not gone gracefully,
the dead included until reaped, and reaped dead members the roster still remembers
(until they come back, an operator forgets them, or ``forget_after_ns``), at least
``expected_members``. A node sees a majority when more than half of it is alive or
suspect and its join has been answered. A node whose join is unanswered knows neither
the cluster nor its place in it: it takes the share of a position hashed from its id
among ``max(expected_members, seeds + 1)`` members.

Once an owner stops being known alive, checks already forwarded to it are decided at
once (``stranded``) rather than at their forward timeout: detection ends the wait.

Degraded admissions must reach the owner, whose merged count then includes them: each
is re-sent, with the client's replicas, while the owner is unreachable (it can only
merge them once it hears us), then ``DEGRADED_RESENDS`` more times once it is alive
again, for loss; the end of the counter's window also ends it. At most
``DEGRADED_RESENDS_PER_S`` go a second, the longest waiting first: every round while
there are fewer, each every ``ceil(waiting / budget)`` rounds beyond.
"""

from __future__ import annotations

from collections import Counter, OrderedDict

import mmh3

from meshlimit.cluster.membership import Membership
from meshlimit.cluster.membership.members import LIVE
from meshlimit.cluster.node.config import NodeConfig, degraded_share, per_round
from meshlimit.cluster.node.forwarding import PendingCheck
from meshlimit.cluster.node.replication import Replication, SeriesKey, mark_dirty
from meshlimit.cluster.wire.messages import CounterSlot, MemberState
from meshlimit.core.ring import HashRing
from meshlimit.core.rules import Rule

#: Gossip rounds a degraded admission is re-sent once its owner is reachable (for loss).
DEGRADED_RESENDS = 3
#: Most degraded admissions reported per second (the longest waiting first), as a gossip
#: round's share (``per_round``), at least ``DEGRADED_RESEND_MIN`` a round. Why 10,000: as
#: many as a hand-over moves; a burst of degraded admissions is then reported over
#: several rounds rather than in one flood that delays the probes.
DEGRADED_RESENDS_PER_S = 10_000
DEGRADED_RESEND_MIN = 100


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
        # Membership as routing sees it: states by node; owners that stopped being alive
        # since the last look (their forwarded checks are stranded).
        self._states: dict[str, int] = {config.node_id: MemberState.ALIVE}
        self._lost: set[str] = set()
        #: Whether this node sees a majority of the quorum (else every decision is degraded).
        self.majority = True
        #: The members the degraded units are dealt over, and this node's place among them.
        self.members, self.position = self._unknown_place(seeds=0)
        # Degraded admissions awaiting report, with the re-sends left once the owner is up.
        self._resends: OrderedDict[SeriesKey, int] = OrderedDict()

    def observe(self, membership: Membership, states: dict[str, int], *, joined: bool) -> None:
        """Membership changed: ``states`` is every member's state in the table; ``joined``
        whether the node knows the ring (started, and a seed answered, or it has none)."""
        alive = MemberState.ALIVE
        self._lost |= {n for n, s in self._states.items() if s == alive and states.get(n) != alive}
        self._states = states
        quorum = membership.quorum()
        expected = self._config.expected_members
        if joined and self._node_id in quorum:
            self.members = max(len(quorum), expected)
            self.position = quorum.index(self._node_id)
        else:
            self.members, self.position = self._unknown_place(len(membership.seeds))
        # Heard of, maybe over a one-way link only; and never held before, among them.
        unconfirmed, newcomers = membership.unconfirmed
        live = sum(1 for n in quorum if states.get(n) in LIVE and n not in unconfirmed)
        counted = (
            len(quorum) - sum(1 for n in quorum if n in newcomers) if newcomers else len(quorum)
        )
        # A node that has not yet heard back from the cluster it is joining sees only
        # itself: it must not take itself for the whole cluster (after a restart it
        # would otherwise own every client, from zero, until the join completes).
        self.majority = joined and 2 * live > max(counted, expected)

    def _unknown_place(self, seeds: int) -> tuple[int, int]:
        """Members and position while the cluster and our place in it are unknown (not
        joined, or left): the seeds and ourselves (at least two: a node with seeds is not
        alone, even while their names resolve to nothing) or the size the operator
        stated, and a place hashed from our id."""
        members = max(seeds + 1, 2, self._config.expected_members)
        return members, mmh3.hash(self._node_id, signed=False) % members

    def owner_unreachable(self, owner: str) -> bool:
        """Whether ``owner`` is anything but known alive (its checks are decided here)."""
        return self._states.get(owner, MemberState.DEAD) != MemberState.ALIVE

    def stranded(self, pending: dict[int, PendingCheck]) -> list[tuple[int, PendingCheck]]:
        """Remove and return the forwarded checks whose owner stopped being known alive
        since the last call: they are decided here now, not at their forward timeout."""
        if not self._lost:
            return []
        self._lost.clear()
        out = [(t, p) for t, p in pending.items() if self.owner_unreachable(p.owner)]
        for ticket, _ in out:
            del pending[ticket]
        return out

    def quota(self, rule: Rule, client: str, wall: int) -> int:
        """What this node may admit for ``client`` in the window holding ``wall``."""
        return degraded_share(
            rule.capacity,
            self._config.degraded_fraction,
            members=self.members,
            position=self.position,
            client=client,
            window=wall // rule.window_ns,
        )

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
        """Send degraded admissions to the client's owner and replicas (one gossip round):
        the longest waiting (``DEGRADED_RESENDS_PER_S``), each then queued again at the back
        while it has re-sends left, so a flood of degraded admissions is reported at a
        bounded pace and never crowds out probes and checks."""
        by_node: dict[str, list[CounterSlot]] = {}
        resends_of = self._resends
        budget = per_round(
            DEGRADED_RESENDS_PER_S, self._config.gossip_interval_ns, DEGRADED_RESEND_MIN
        )
        for _ in range(min(len(resends_of), budget)):
            key, resends = resends_of.popitem(last=False)
            slots = self._replication.slots_of(key, wall, own_only=True)
            if not slots or resends <= 0:
                continue
            prefs = ring.preference_list(key[1], 1 + self._config.replicas)
            if not self.owner_unreachable(prefs[0]):
                resends -= 1
            if resends > 0:
                resends_of[key] = resends
            for node in prefs:
                if node != self._node_id:
                    by_node.setdefault(node, []).extend(slots)
        self._replication.send_slots(by_node)
