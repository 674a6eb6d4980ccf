"""What each life of each node believed about the cluster, mirrored from its own events.

Theory of operation. A node reports every change its membership table accepts
(``MembershipChanged``: a new member, a state change); the checkers replay them per life
into a :class:`View`, the node's table as far as its events tell: every member's state and
when it last changed. From it follow, by the design's rules and independently of the
node's own code for them:

- the **ring**: the members not gone gracefully, the dead included until the table reaps
  them ``dead_reap_ns`` after their last change (no event marks the reaping, so a member
  is *maybe* on the ring from that instant on, give or take the timer's slack);
- the **quorum**, as far as the view can tell: every member seen and not gone gracefully.
  The node's own quorum also counts reaped members a join reply named (no event), and it
  may drop a reaped member on news of its departure (no event either, the roster takes
  it), so the node's quorum holds at least the view's members less the reaped ones;
- the **majority**: more than half of that quorum alive or suspect, once the life knows
  the ring (it started without seeds, or heard from a member).

The node's quorum is never smaller than that and its live members are the same, so a
view in a minority, counting every reaped member as possibly gone, proves the node was in
one. Decisions and events reach the checkers
after the input that caused them, in one batch per instant, and a node decides a datagram's
checks before it applies the datagram's membership news: a decision is judged against the
view before *and* after the events of its own instant (:meth:`View.rings_at`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from meshlimit.cluster.membership import MembershipConfig
from meshlimit.cluster.wire.messages import MemberState
from meshlimit.core.ring import HashRing

from .bounds import with_timer_slack

_LIVE = (MemberState.ALIVE, MemberState.SUSPECT)
_GONE = (MemberState.DEAD, MemberState.LEFT)
#: Members whose reaping is uncertain beyond which every combination is not enumerated.
_MAX_UNCERTAIN = 3
#: Most ``may_own`` answers a view keeps for its current version (then it starts over).
_MAX_OWNS = 65_536
UNREAPED = 2**62


class Rings:
    """Every ring built so far, by member set, with each client's owner cached."""

    def __init__(self) -> None:
        self._rings: dict[frozenset[str], tuple[HashRing, dict[str, str]]] = {}

    def preference(self, members: frozenset[str], client: str, count: int) -> tuple[str, ...]:
        """The client's owner and ring successors, ``count`` members at most."""
        entry = self._rings.get(members)
        if entry is None:
            entry = self._rings[members] = (HashRing(sorted(members)), {})
        return entry[0].preference_list(client, count)

    def owner(self, members: frozenset[str], client: str) -> str:
        entry = self._rings.get(members)
        if entry is None:
            entry = self._rings[members] = (HashRing(sorted(members)), {})
        ring, owners = entry
        owner = owners.get(client)
        if owner is None:
            owner = owners[client] = ring.owner(client)
        return owner


class View:
    """One life's membership table, as its events tell it (see the module docstring)."""

    def __init__(
        self, node: str, started_at: int, *, knows_ring: bool, config: MembershipConfig
    ) -> None:
        self.node = node
        self.started_at = started_at
        self.knows_ring = knows_ring
        self.states: dict[str, int] = {node: MemberState.ALIVE}
        """Members in the table: reaped ones leave it (they may still count, see quorum)."""
        self.changed_at: dict[str, int] = {node: started_at}
        self.quorum: set[str] = {node}
        #: Members reaped from ``states``, with their last change (the roster's clock).
        self.reaped: dict[str, int] = {}
        self._forget_after_ns = config.forget_after_ns
        self.events = 0
        self.last_event_at = -1
        self._reap_early_ns = 2 * config.dead_reap_ns - with_timer_slack(config.dead_reap_ns)
        self.reap_late_ns = with_timer_slack(config.dead_reap_ns)
        #: ``(instant, members)`` each time the ring's members changed (an event, or the
        #: table reaping a member, taken at the latest instant it can happen): when this
        #: life handed its counters over.
        self.ring_history: list[tuple[int, frozenset[str]]] = [(started_at, frozenset({node}))]
        #: ``(instant, member, state)`` of every event, to ask what the view held when.
        self.log: list[tuple[int, str, int]] = []
        # The view just before the events of the last instant that had some.
        self._before = self._snapshot()
        # Caches for the hot path (a decision asks about its view): the view's version,
        # the earliest instant a member may be reaped, and answers for this version.
        self._version = 0
        self._next_reap = UNREAPED
        self._cache: dict[tuple[int, bool, str], Any] = {}
        self._owns: dict[tuple[bool, str], bool] = {}  # may_own's answers for this version

    def _snapshot(self) -> tuple[dict[str, int], dict[str, int], bool, int]:
        return dict(self.states), dict(self.changed_at), self.knows_ring, self._quorum_floor()

    def _quorum_floor(self) -> int:
        """The fewest members the node's quorum may hold (reaped ones may have left)."""
        return len(self.quorum) - len(self.quorum - self.states.keys())

    def quorum_floor(self, now: int, may_have_left: set[str]) -> int:
        """The fewest members the node's quorum may hold at ``now``, given the members that
        may have left gracefully by then. The node counts a member it reaped (in its
        roster) until news of its departure reaches it, which comes without an event; its
        timer may reap a dead member before the view's latest instant for it. So each
        member the node may have reaped and that may have left may be out."""
        self.advance(now)
        early = self._reap_early_ns
        forget_ns = self._forget_after_ns
        out = 0
        for member in self.quorum:
            if member == self.node:
                continue
            if member in self.states:
                if self.states[member] != MemberState.DEAD:
                    continue
                changed = self.changed_at[member]
                if now < changed + early:
                    continue
            else:
                changed = self.reaped.get(member, -1)
            if member in may_have_left or now >= changed + forget_ns:
                out += 1
        return len(self.quorum) - out

    def advance(self, now: int) -> None:
        """Reap, as the table does, the dead and departed members kept long enough."""
        if now < self._next_reap:
            return
        due = sorted(
            (self.changed_at[m] + self.reap_late_ns, m)
            for m, state in self.states.items()
            if state in _GONE and self.changed_at[m] + self.reap_late_ns <= now
        )
        for at, member in due:
            self.reaped[member] = self.changed_at[member]
            del self.states[member], self.changed_at[member]
            self._note_ring(at)
        self._changed()

    def _changed(self) -> None:
        self._version += 1
        self._cache.clear()
        self._owns.clear()
        before_states, before_changed = self._before[0], self._before[1]
        gone = [self.changed_at[m] for m, s in self.states.items() if s in _GONE]
        gone += [before_changed[m] for m, s in before_states.items() if s in _GONE]
        self._next_reap = min(gone) + self._reap_early_ns if gone else UNREAPED

    def joined(self, now: int) -> None:
        """The node learnt the ring at ``now``: only a seed's join reply teaches it (news of
        members before that leaves it joining: fuzz seed 4712014151, where a view that took
        any event for a join judged a joining node's degraded share as a joined one's)."""
        if self.knows_ring:
            return
        self.advance(now)
        if now != self.last_event_at:
            self._before = self._snapshot()
            self.last_event_at = now
        self.knows_ring = True
        self._changed()

    def apply(self, member: str, new_state: int, now: int) -> None:
        """One membership event of this life at ``now``."""
        self.advance(now)
        if now != self.last_event_at:
            self._before = self._snapshot()
            self.last_event_at = now
        self.events += 1
        self.log.append((now, member, new_state))
        self.reaped.pop(member, None)
        if self.states.get(member) != new_state:
            self.changed_at[member] = now
        self.states[member] = new_state
        if new_state == MemberState.LEFT:
            self.quorum.discard(member)
        else:
            self.quorum.add(member)
        self._note_ring(now)
        self._changed()

    def _note_ring(self, at: int) -> None:
        ring = frozenset(m for m, s in self.states.items() if s != MemberState.LEFT)
        if ring != self.ring_history[-1][1]:
            self.ring_history.append((max(at, self.ring_history[-1][0]), ring))

    # --- judging ----------------------------------------------------------------------

    def _versions(self, now: int) -> Iterator[tuple[dict[str, int], dict[str, int], bool, int]]:
        self.advance(now)
        yield self.states, self.changed_at, self.knows_ring, self._quorum_floor()
        if now == self.last_event_at:
            yield self._before

    def rings_at(self, now: int, config: MembershipConfig) -> Iterator[frozenset[str]]:
        """Every member set this life's ring may have had at ``now``."""
        for states, changed_at, _, _ in self._versions(now):
            certain, maybe = set(), []
            for member, state in states.items():
                if state == MemberState.LEFT:
                    continue
                if state == MemberState.DEAD and now >= changed_at[member] + self._reap_early_ns:
                    if now >= changed_at[member] + self.reap_late_ns:
                        continue  # reaped for sure
                    maybe.append(member)
                else:
                    certain.add(member)
            if len(maybe) > _MAX_UNCERTAIN:
                maybe = maybe[:_MAX_UNCERTAIN]
            for mask in range(1 << len(maybe)):
                extra = {m for i, m in enumerate(maybe) if mask >> i & 1}
                yield frozenset(certain | extra | {self.node})

    def may_own(self, client: str, now: int, config: MembershipConfig, rings: Rings) -> bool:
        """Whether this life may have been ``client``'s owner in its own view at ``now``."""
        self.advance(now)
        if now >= self._next_reap:  # a reaping in doubt: the member sets depend on ``now``
            return any(rings.owner(m, client) == self.node for m in self.rings_at(now, config))
        # No reaping in doubt: the sets, and so the answer, depend on the version alone.
        latest = now == self.last_event_at
        owns = self._owns
        answer = owns.get((latest, client))
        if answer is None:
            key = (self._version, latest, "rings")
            sets = self._cache.get(key)
            if sets is None:
                sets = self._cache[key] = list(self.rings_at(now, config))
            if len(owns) >= _MAX_OWNS:
                owns.clear()
            answer = owns[(latest, client)] = any(rings.owner(m, client) == self.node for m in sets)
        return bool(answer)

    def may_own_once_reaped(self, client: str, rings: Rings) -> bool:
        """Whether this life would own ``client`` once it reaps every member it holds dead
        (a peer whose timer ran out first may already forward it here)."""
        ring = frozenset(m for m, s in self.states.items() if s not in _GONE) | {self.node}
        return rings.owner(ring, client) == self.node

    def may_have_majority(self, now: int) -> bool:
        """Whether this life may have seen a majority at ``now`` (the view cannot rule it out:
        the node's quorum is at least the view's, its live members the same)."""
        self.advance(now)
        key = (self._version, now == self.last_event_at, "majority")
        answer = self._cache.get(key)
        if answer is None:
            answer = self._cache[key] = self._majority(now)
        return bool(answer)

    def _majority(self, now: int) -> bool:
        for states, _, knows_ring, quorum in self._versions(now):
            live = sum(1 for s in states.values() if s in _LIVE)
            if knows_ring and 2 * live > quorum:
                return True
        return False

    def live(self, member: str) -> bool:
        """Whether ``member`` is alive or suspect in this view now."""
        return self.states.get(member) in _LIVE

    def live_throughout(self, member: str, start: int, end: int) -> bool:
        """Whether ``member`` was alive or suspect in this view at every instant of
        ``[start, end]`` (so this life sent it whatever it sends to every live peer)."""
        state = MemberState.ALIVE if member == self.node else None
        for at, who, new_state in self.log:
            if who != member:
                continue
            if at > end:
                break
            if at > start and new_state not in _LIVE:
                return False
            if at <= start:
                state = new_state
        return state in _LIVE
