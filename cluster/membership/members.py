"""The member table: what one node believes about every member, and how news merges into it.

Theory of operation. Every member is ALIVE, SUSPECT, DEAD or LEFT at some incarnation. News
about a member is a :class:`MemberUpdate`; a higher incarnation wins and, at equal
incarnation, the more severe state wins (the order of :class:`MemberState`), so updates merge
in any order and duplicates are harmless. Only a member raises its own incarnation: to
refute a suspicion or death about itself, and to leave. This is memberlist's aliveNode,
suspectNode and deadNode in state.go.

Every change the table accepts is queued for piggybacking, so it spreads on, and becomes a
:class:`MemberEvent` for the node above. A SUSPECT member has a running
:class:`~meshlimit.cluster.membership.suspicion.Suspicion`; the probe loop turns an expired
one into DEAD. Dead and left members are kept for ``dead_reap_ns``, so stale ALIVE gossip
cannot resurrect them, then reaped, which keeps the table bounded; the
:class:`~meshlimit.cluster.membership.roster.Roster` takes them over (a dead member still
counts toward the cluster's size there) and settles news of members the table lacks.

Peer input is validated here too (the codec checks as well; this layer must not trust it).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

from meshlimit.cluster.membership.awareness import Awareness
from meshlimit.cluster.membership.broadcasts import BroadcastQueue
from meshlimit.cluster.membership.roster import Roster
from meshlimit.cluster.membership.suspicion import Suspicion
from meshlimit.cluster.membership.timing import (
    NEVER,
    MembershipConfig,
    expected_confirmations,
    suspicion_timeout_ns,
)
from meshlimit.cluster.wire.messages import Address, JoinReply, MemberState, MemberUpdate

ALIVE, SUSPECT, DEAD, LEFT = (
    MemberState.ALIVE,
    MemberState.SUSPECT,
    MemberState.DEAD,
    MemberState.LEFT,
)
LIVE = (ALIVE, SUSPECT)
"""The states of a member that counts: probed, on the ring, ``n`` in the formulas."""
MAX_INCARNATION = 2**63 - 2  # so that a refutation's +1 still fits the wire's u64
_MAX_NODE_CHARS = 256  # the codec is stricter (64 bytes); this only keeps memory bounded


@dataclass(slots=True)
class Member:
    """One row of the membership table (queries hand out copies)."""

    node: str
    addr: Address
    state: int
    incarnation: int
    state_changed_ns: int


@dataclass(frozen=True, slots=True)
class MemberEvent:
    """A change in another member: new (``old_state`` None), state change, address change,
    or alive again at a higher incarnation (``old_state`` ALIVE: perhaps a new life)."""

    node: str
    addr: Address
    old_state: int | None
    new_state: int


def update_of(m: Member) -> MemberUpdate:
    """The news that states what we know of ``m``."""
    return MemberUpdate(m.node, m.addr, m.state, m.incarnation)


# --- validation of peer input (the codec checks too; this layer must not trust it) ---------


def is_int(v: object, lo: int = 0, hi: int = 2**64) -> bool:
    return type(v) is int and lo <= v < hi


def is_node(v: object) -> bool:
    return type(v) is str and 0 < len(v) <= _MAX_NODE_CHARS


def is_addr(v: object) -> bool:
    return (
        type(v) is tuple
        and len(v) == 2
        and type(v[0]) is str
        and 0 < len(v[0]) <= 255
        and is_int(v[1], 0, 65536)
    )


def is_valid_update(m: object) -> bool:
    return (
        type(m) is MemberUpdate
        and is_node(m.node)
        and is_addr(m.addr)
        and type(m.state) is int  # before the lookup: an unhashable state must not raise
        and m.state in MemberState.NAMES
        and is_int(m.incarnation, 0, MAX_INCARNATION + 1)
    )


# --- the table --------------------------------------------------------------------------


class MemberTable:
    """Members by node id, self included; merges news, runs suspicions, emits events.

    ``queue``, ``roster``, ``stats`` and ``dropped`` are shared with the owning
    :class:`~meshlimit.cluster.membership.swim.Membership`; ``on_live`` is called with each
    member that becomes live (new or revived), so the probe loop can schedule it.
    """

    def __init__(
        self,
        node_id: str,
        addr: Address,
        config: MembershipConfig,
        *,
        now_ns: int,
        incarnation: int,
        queue: BroadcastQueue,
        roster: Roster,
        stats: Counter[str],
        dropped: Counter[str],
        on_live: Callable[[str], None],
        awareness: Awareness | None = None,
    ) -> None:
        self.node_id = node_id
        self.config = config
        self._awareness = Awareness(1, stats) if awareness is None else awareness
        self.me = Member(node_id, addr, ALIVE, incarnation, now_ns)
        self.members: dict[str, Member] = {node_id: self.me}
        self.suspicions: dict[str, Suspicion] = {}
        self.events: deque[MemberEvent] = deque()
        self.live_count = 1  # ALIVE and SUSPECT members, self included (n in the formulas)
        self.reap_at = NEVER  # no earlier than the first dead or left member may be forgotten
        self.generation = 0  # bumped by every event, leave and reaping: see Membership.quorum
        self._queue = queue
        self._roster = roster
        self._stats = stats
        self._dropped = dropped
        self._on_live = on_live
        #: Members back from the dead or from a departure (held DEAD or LEFT, in the table
        #: or the roster) that have not acked a probe of ours since: the news may have come
        #: over a one-way link, from a side that cannot hear us, so they do not count as
        #: live for the majority rule until they answer us (``acked``). So are the members a
        #: fresh life first hears of in its join reply (but its sender): a peer's view, stale
        #: if that peer was paused; confirmation pings go out at once. Members never held
        #: before and heard of in gossip or a Join are ``newcomers``, a subset.
        self.unconfirmed: set[str] = set()
        #: Members never held before (no record, no roster entry), heard of in gossip or in
        #: their own Join, that have not acked us: they count in the majority rule neither
        #: as live nor in the quorum, so a cluster forming or growing keeps its majority
        #: until it has probed them, and a Join over a one-way link (a newcomer that hears
        #: nothing of ours) makes no majority of a node cut off (long fuzz seed 6000029).
        self.newcomers: set[str] = set()
        #: Members a join reply (a peer's whole view: a push-pull after a partition) made
        #: DEAD while we held them live: each is told at once, so that it refutes if it is
        #: alive (``take_rumoured_dead``), rather than at its next push-pull. At most 64.
        self.rumoured_dead: list[Member] = []
        #: This life has had no join reply yet, nor answered a Join (which tells the joiner
        #: of it): a record of us in the first reply is an earlier life's (``_about_self``).
        self.fresh = True
        #: A join reply named an earlier life of this node: it was a member before.
        self.earlier_life = False

    def gone(self) -> list[Member]:
        """Dead and left members not yet forgotten."""
        return [m for m in self.members.values() if m.state not in LIVE and m is not self.me]

    # -- applying news ---------------------------------------------------------------------

    def apply(self, u: MemberUpdate, sender: str, now: int, *, transfer: bool = False) -> None:
        """Merge news ``u`` relayed by ``sender``: newer news wins, a repeat may confirm.
        ``transfer``: ``u`` came in a join reply (a peer's whole table)."""
        if u.node == self.node_id:
            self._about_self(u, transfer=transfer)
            return
        m = self.members.get(u.node)
        if m is None:
            remembered = self._roster.get(u.node)
            if not self._roster.merge(u, now):
                self._add(u, sender, now)
                if u.node not in self.members:
                    pass
                elif remembered is not None or (transfer and self.fresh and u.node != sender):
                    # remembered dead or gone: back; or, joining, another's view, maybe stale
                    self.unconfirmed.add(u.node)
                elif not (transfer and self.fresh):  # the seed that answered our Join: heard
                    self.unconfirmed.add(u.node)
                    self.newcomers.add(u.node)
        elif u.incarnation > m.incarnation or (
            u.incarnation == m.incarnation and u.state > m.state
        ):
            was_live = m.state in LIVE
            self.change(m, u, sender, now)
            if transfer and was_live and u.state == DEAD and len(self.rumoured_dead) < 64:
                self.rumoured_dead.append(m)
        elif u.state == SUSPECT and m.state == SUSPECT and u.incarnation == m.incarnation:
            self.confirm(u.node, sender)

    def _about_self(self, u: MemberUpdate, *, transfer: bool) -> None:
        """News of ourselves. Any rumour that we are suspect, dead or gone is refuted,
        whatever its incarnation: we re-announce ourselves at ``max(own, rumour) + 1``
        (SWIM, memberlist's refute). A rumour below our incarnation is stale, but a member
        still holding it never heard our newer news (it ran out of retransmissions), so
        ignoring it left us dead in its view until the next push-pull. News that we are
        alive at a higher incarnation is refuted too (it outranks what we say).

        A fresh life's first join reply names what the cluster knew of us *before* our
        Join (``Membership._on_join``): any record of us there is an earlier life's
        (perhaps killed and restarted before anyone noticed), and we announce a new one
        above it so that peers hand its counts back (``earlier_life``)."""
        me = self.me
        if me.state == LEFT:
            return  # we are leaving: let the news of our departure win
        earlier = transfer and self.fresh
        if u.state == ALIVE and not earlier and u.incarnation <= me.incarnation:
            return
        me.incarnation = min(max(me.incarnation, u.incarnation) + 1, MAX_INCARNATION)
        self._queue.push(update_of(me))
        if earlier:
            self.earlier_life = True
            self.generation += 1  # news for the node above (``Node._after_membership_input``)
            self._stats["earlier_life"] += 1
            return
        self._stats["refutations"] += 1
        self._awareness.refuted()

    def join_reply(
        self, joiner: str, before: MemberUpdate | None, remembered: list[MemberUpdate]
    ) -> JoinReply:
        """The state transfer answering ``joiner``'s Join: the ``remembered`` (roster) and
        the table, the dead and the left first (should the reply span datagrams and one be
        lost, the joiner errs towards too large a cluster, never too small a one). Of the
        joiner, its record from ``before`` the Join: it tells a fresh life of an earlier
        one (``_about_self``), where the echo of its Join would tell it nothing. Answering
        tells the joiner of this life of ours: we are no longer fresh."""
        self.fresh = False
        table = sorted(self.members.values(), key=lambda m: m.state in LIVE)
        updates = [] if before is None else [before]
        updates += [u for u in remembered if u.node != joiner]
        updates += [update_of(m) for m in table if m.node != joiner]
        return JoinReply(tuple(updates))

    def _add(self, u: MemberUpdate, sender: str, now: int) -> None:
        if u.state not in LIVE:
            return  # the roster keeps deaths and departures of members we do not hold
        if len(self.members) >= self.config.max_members:
            self._dropped["members_full"] += 1
            return
        m = Member(u.node, u.addr, u.state, u.incarnation, now)
        self.members[u.node] = m
        self.live_count += 1
        self._on_live(u.node)
        if u.state == SUSPECT:
            self._start_suspicion(u.node, sender, now)
        self._queue.push(u)
        self._emit(m, None)

    def change(self, m: Member, u: MemberUpdate, sender: str, now: int) -> None:
        """Set ``m`` to what ``u`` says, without asking whether ``u`` is newer."""
        old_state, old_addr, old_inc = m.state, m.addr, m.incarnation
        m.state, m.incarnation, m.addr = u.state, u.incarnation, u.addr
        self._queue.push(u)
        if u.state == SUSPECT:
            if m.node in self.suspicions:
                self.confirm(m.node, sender)
            else:
                self._start_suspicion(m.node, sender, now)
        else:
            self.suspicions.pop(m.node, None)
        if old_state == SUSPECT and u.state == ALIVE:
            self._stats["false_suspicions"] += 1
        if old_state not in LIVE and u.state in LIVE:
            self._on_live(m.node)
            self.unconfirmed.add(m.node)  # back from the dead, or from a departure
        elif u.state not in LIVE:
            self.unconfirmed.discard(m.node)
            self.newcomers.discard(m.node)
        if old_state != u.state:
            m.state_changed_ns = now
            self.live_count += (u.state in LIVE) - (old_state in LIVE)
        if u.state not in LIVE:
            self.reap_at = min(self.reap_at, now + self.config.dead_reap_ns)
        # A live member alive again at a higher incarnation refuted news we never heard,
        # or is a new life of it that announced itself over an earlier one (restarted
        # before anyone noticed): either way it may lack counts it held, so it is news.
        renewed = old_state == ALIVE and u.state == ALIVE and u.incarnation > old_inc
        if old_state != u.state or old_addr != u.addr or renewed:
            self._emit(m, old_state)

    def take_rumoured_dead(self) -> list[tuple[Address, MemberUpdate]]:
        """The news of each member a join reply made DEAD, addressed to it."""
        told = [(m.addr, update_of(m)) for m in self.rumoured_dead]
        self.rumoured_dead.clear()
        return told

    def acked(self, node: str) -> None:
        """``node`` acked a probe of ours directly: it hears us, and counts as live again."""
        if node in self.unconfirmed:
            self.unconfirmed.discard(node)
            self.newcomers.discard(node)
            self.generation += 1  # the majority may change (``Node._after_membership_input``)

    def _start_suspicion(self, node: str, accuser: str, now: int) -> None:
        n = self.live_count
        base = suspicion_timeout_ns(self.config, n)
        longest = base * self.config.suspicion_max_mult
        self.suspicions[node] = Suspicion.start(
            now,
            self._awareness.suspicion_min_ns(base, longest),  # slow here: slower to accuse
            longest,
            expected_confirmations(self.config, n),
            accuser,
        )
        self._stats["suspicions"] += 1

    def confirm(self, node: str, sender: str) -> None:
        """``sender`` also suspects ``node``: shorten its suspicion's timer, if one runs."""
        # Lifeguard counts independent accusers. MemberUpdate carries no accuser, so the
        # member that relayed the suspicion to us stands in for one (see the report).
        s = self.suspicions.get(node)
        if s is not None:
            s.confirm(sender)

    def _emit(self, m: Member, old_state: int | None) -> None:
        if len(self.events) >= 4 * self.config.max_members:
            self.events.popleft()
            self._dropped["events_overflow"] += 1
        self.events.append(MemberEvent(m.node, m.addr, old_state, m.state))
        self.generation += 1

    # -- our own departure, and time passing ----------------------------------------------

    def leave(self, now: int) -> MemberUpdate:
        """Mark ourselves LEFT at a higher incarnation; returns the news (already queued)."""
        me = self.me
        me.state, me.incarnation, me.state_changed_ns = LEFT, me.incarnation + 1, now
        self.live_count -= 1
        self.generation += 1
        self.suspicions.clear()
        update = update_of(me)
        self._queue.push(update)
        return update

    def expire_suspicions(self, now: int) -> None:
        """Declare DEAD every suspect whose timer ran out."""
        for node, s in list(self.suspicions.items()):
            if now >= s.deadline:
                m = self.members[node]
                self.change(m, MemberUpdate(node, m.addr, DEAD, m.incarnation), self.node_id, now)
                self._stats["declared_dead"] += 1

    def reap(self, now: int) -> list[str]:
        """Hand the dead and left members kept long enough to the roster; returns their ids."""
        if now < self.reap_at:
            return []
        self.reap_at = NEVER
        forgotten = []
        for m in self.gone():
            forget_at = m.state_changed_ns + self.config.dead_reap_ns
            if now >= forget_at:
                del self.members[m.node]
                self._roster.keep(update_of(m), m.state_changed_ns)
                self.generation += 1
                forgotten.append(m.node)
                self._stats["reaped"] += 1
            else:
                self.reap_at = min(self.reap_at, forget_at)
        return forgotten

    def _check(self) -> None:
        """Assert the table's invariants (through ``Membership._check``)."""
        assert self.members.get(self.node_id) is self.me
        assert not self.members.keys() & self._roster.entries.keys(), "in table and roster"
        assert len(self.members) <= self.config.max_members
        for node, s in self.suspicions.items():
            assert self.members[node].state == SUSPECT and s.deadline >= s.started_ns
        if self.me.state != LEFT:
            for n, m in self.members.items():
                assert m.state != SUSPECT or n in self.suspicions, n
        assert self.live_count == sum(1 for m in self.members.values() if m.state in LIVE)
        assert all(self.members[n].state in LIVE for n in self.unconfirmed), "unconfirmed dead"
        assert self.newcomers <= self.unconfirmed, "a newcomer confirmed"
        for m in self.gone():
            assert self.reap_at <= m.state_changed_ns + self.config.dead_reap_ns
