"""The roster: members the cluster still counts after the member table has reaped them.

Theory of operation. The member table forgets dead and left members ``dead_reap_ns``
(30 s) after they went, so that it stays small and probes only the living. The majority
rule (``cluster/node/degraded.py``) must count a dead member for much longer: a minority
that outlives the reaping, or a node restarting or joining inside it, would otherwise
count only what it sees and take itself for the whole cluster. The roster keeps, for
every member the table no longer holds, the last news of it:

- a DEAD member is *remembered*: it counts toward the cluster's size until it comes back
  (news of it alive at a higher incarnation, which the table then takes), until an
  operator forgets it (:meth:`Roster.forget`), or until ``forget_after_ns`` has passed
  since it died;
- a LEFT member is a *tombstone*: it does not count (a member that left gracefully
  handed its clients over and said so), and stale news cannot bring it back, for
  ``forget_after_ns`` more; then it is dropped.

Forgetting a member is news: it becomes LEFT at one incarnation above what it was last
known at, queued for piggybacking like any change, so one operator command (or the
first node whose timer runs out) forgets it cluster-wide. A member that is in fact alive
hears it and refutes, as it would a death. Entries merge by the table's rule (a higher
incarnation wins, then the more severe state), so the roster a join reply carries
(:meth:`Roster.updates`) merges in any order, repeatedly, at any member.

Bounded by ``max_members``: past it, the entry that expires first is dropped and counted
(``roster_full``); a dropped remembered member no longer counts, so the bound is stated in
``docs/design.md``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from meshlimit.cluster.membership.broadcasts import BroadcastQueue
from meshlimit.cluster.membership.timing import NEVER, MembershipConfig
from meshlimit.cluster.wire.messages import Address, MemberState, MemberUpdate

_DEAD, _LEFT = MemberState.DEAD, MemberState.LEFT
_MAX_INCARNATION = 2**63 - 2  # members.MAX_INCARNATION (members imports this module)


@dataclass(frozen=True, slots=True)
class RosterEntry:
    """The last news of a member the table no longer holds, and when it expires."""

    update: MemberUpdate
    """State DEAD (remembered: counts) or LEFT (a tombstone: does not count)."""
    expires_ns: int
    """DEAD: when it is forgotten (becomes a tombstone). LEFT: when it is dropped."""


class Roster:
    """Remembered dead members and tombstones, by node id; O(1) per news, O(r) per expiry."""

    def __init__(
        self,
        config: MembershipConfig,
        *,
        queue: BroadcastQueue,
        stats: Counter[str],
        dropped: Counter[str],
    ) -> None:
        self._config = config
        self._queue = queue
        self._stats = stats
        self._dropped = dropped
        self.entries: dict[str, RosterEntry] = {}
        self.expires_at = NEVER
        """No entry expires before this instant."""
        self.generation = 0
        """Bumped by every change of which members count (the node re-reads the quorum)."""

    def __len__(self) -> int:
        return len(self.entries)

    def counted(self) -> list[str]:
        """The remembered (DEAD) members: they count toward the cluster's size."""
        return [node for node, e in self.entries.items() if e.update.state == _DEAD]

    def addresses(self) -> list[Address]:
        """Where the remembered members were last seen (push-pull asks them now and then)."""
        return [e.update.addr for e in self.entries.values() if e.update.state == _DEAD]

    def updates(self) -> list[MemberUpdate]:
        """Every entry as news, remembered members first (a join reply carries them)."""
        dead = [e.update for e in self.entries.values() if e.update.state == _DEAD]
        return dead + [e.update for e in self.entries.values() if e.update.state != _DEAD]

    def get(self, node: str) -> MemberUpdate | None:
        entry = self.entries.get(node)
        return None if entry is None else entry.update

    # -- news ------------------------------------------------------------------------------

    def keep(self, update: MemberUpdate, since_ns: int) -> None:
        """The table reaped a member that went DEAD or LEFT at ``since_ns``: keep its news."""
        assert update.state in (_DEAD, _LEFT), "only the dead and the left are reaped"
        self._put(update, since_ns + self._config.forget_after_ns, spread=False)

    def merge(self, update: MemberUpdate, now_ns: int) -> bool:
        """News of a member the table does not hold. True when the roster settled it (it
        was stale, or it is a death or a departure, now recorded); False when the table
        should take it: the member is alive at an incarnation newer than our news of it."""
        entry = self.entries.get(update.node)
        if entry is not None:
            known = entry.update
            if (update.incarnation, update.state) <= (known.incarnation, known.state):
                return True  # stale or a repeat
        if update.state not in (_DEAD, _LEFT):
            if entry is not None:
                del self.entries[update.node]
                self.generation += 1
            return False
        self._put(update, now_ns + self._config.forget_after_ns, spread=True)
        return True

    def forget(self, node: str, now_ns: int) -> MemberUpdate | None:
        """An operator forgets a remembered member: a tombstone, spread; None if not one."""
        entry = self.entries.get(node)
        if entry is None or entry.update.state != _DEAD:
            return None
        self._stats["forgotten"] += 1
        return self._tombstone(entry.update, now_ns)

    def expire(self, now_ns: int) -> None:
        """Forget the remembered members whose time is up; drop the old tombstones."""
        if now_ns < self.expires_at:
            return
        for node, entry in list(self.entries.items()):
            if now_ns < entry.expires_ns:
                continue
            if entry.update.state == _DEAD:
                self._stats["forgotten_by_time"] += 1
                self._tombstone(entry.update, now_ns)
            else:
                del self.entries[node]
        self.expires_at = min((e.expires_ns for e in self.entries.values()), default=NEVER)

    # -- helpers ---------------------------------------------------------------------------

    def _tombstone(self, update: MemberUpdate, now_ns: int) -> MemberUpdate:
        incarnation = min(update.incarnation + 1, _MAX_INCARNATION)
        left = MemberUpdate(update.node, update.addr, _LEFT, incarnation)
        self._put(left, now_ns + self._config.forget_after_ns, spread=True)
        return left

    def _put(self, update: MemberUpdate, expires_ns: int, *, spread: bool) -> None:
        if update.node not in self.entries and len(self.entries) >= self._config.max_members:
            first = min(self.entries, key=lambda n: self.entries[n].expires_ns)
            del self.entries[first]
            self._dropped["roster_full"] += 1
        self.entries[update.node] = RosterEntry(update, expires_ns)
        self.expires_at = min(self.expires_at, expires_ns)
        self.generation += 1
        if spread:
            self._queue.push(update)

    def _check(self) -> None:
        """Assert the roster's invariants (through ``Membership._check``)."""
        assert len(self.entries) <= self._config.max_members
        for node, entry in self.entries.items():
            assert entry.update.node == node and entry.update.state in (_DEAD, _LEFT)
            assert self.expires_at <= entry.expires_ns
