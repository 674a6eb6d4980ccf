"""The cluster node as a sans-IO state machine.

Theory of operation. A node is fed three kinds of input — ``check`` calls from the
application, datagrams from peers (``receive``) and the passage of time (``tick``) — and
produces three kinds of output that the driver polls: datagrams to send
(``datagrams_to_send``), events (``events``: decisions for checks that waited on the
network, membership changes) and the instant it next needs a tick (``next_deadline``). It
never reads a clock, draws from the global RNG, or touches a socket: the asyncio runtime and
the simulator are two drivers of this one class.

Two times come in: ``now_ns``, a monotonic clock for timeouts, and ``wall_ns``, the wall
clock that windows align to and rule stamps and clock offsets are measured with. ``wall_ns``
defaults to ``now_ns``. One identity comes in too: ``boot_id``, new in every life of the
node (the runtime draws it from the OS and the wall clock, the simulator from a stream per
life), which names this life on the wire: forwarded request ids and, with a cluster key, the
replay windows peers keep. It never comes from the seeded RNG, which repeats itself when a
node restarts with the same ``--seed-rng``.

Readiness. Until ``start`` and, with seeds, until a seed has answered (``joining``), the
node does not know the ring: it is not ``ready`` and decides every check, its own and those
forwarded to it, against the degraded quota. After ``leave`` it still knows the ring (its
own checks go to the new owners) but answers checks forwarded to it from its degraded quota.

Checks. In strict mode a check for a client this node owns is decided here (path ``owner``);
otherwise it is queued for the owner and sent in a batch when the batch window closes or the
datagram is full; the owner's answer resolves it (path ``forwarded``). A check whose owner
is suspected, dead, or silent past the forward timeout is decided here against a local
quota, counted in this node's own G-counter slot (path ``degraded``); those counts reach the
owner by gossip once it is reachable again. A check for an owner that already has
``max_pending_per_owner`` checks awaiting it is refused at once (path ``overloaded``,
counted in stats only): backpressure, not degraded mode, since a busy owner is reachable. In
local mode every node decides on its merged view (path ``local``) and gossips deltas.

Ownership is the consistent-hash ring over members that are alive, suspect, or dead but not
yet forgotten: a dead member's clients stay degraded until membership reaps it, and only
then move to its successor, which has the replicated counts. This keeps split-brain out of
short partitions.

Parts. The node decides checks and dispatches the rest to parts it owns, each with its own
state: ``forwarding`` (batches to owners, pending tickets, the owner's answers),
``replication`` (counter deltas, hand-over, merging), ``rules`` (rule entries, HLC stamps,
anti-entropy), ``degraded`` (the majority rule, the local quota, re-sends to owners), the
link (datagrams in and out) ``joining`` (seeds, join retries, readiness), ``resync`` (a
restarted life waiting for its counts before it decides its clients at full capacity) and
``membership`` (SWIM).
"""

from __future__ import annotations

import random
from collections import Counter

from meshlimit.cluster.membership import Membership
from meshlimit.cluster.membership.members import LIVE
from meshlimit.cluster.node.config import NodeConfig
from meshlimit.cluster.node.deciding import Deciding, DecisionLog
from meshlimit.cluster.node.degraded import DegradedMode
from meshlimit.cluster.node.events import Decided, Event, MembershipChanged
from meshlimit.cluster.node.forwarding import Forwarding
from meshlimit.cluster.node.joining import Joining
from meshlimit.cluster.node.link import Link
from meshlimit.cluster.node.replication import Replication, handed_over
from meshlimit.cluster.node.resync import Resync
from meshlimit.cluster.node.rulesync import RuleSync
from meshlimit.cluster.wire.messages import (
    Address,
    CheckBatch,
    CounterDeltas,
    Envelope,
    HandoverDone,
    Join,
    JoinReply,
    MemberState,
    Message,
    ReplyBatch,
    RuleDigest,
    RuleEntries,
)
from meshlimit.core.counters import CounterStore
from meshlimit.core.decision import Decision
from meshlimit.core.engine import check_cost
from meshlimit.core.registry import MAX_CLIENT_BYTES, RuleRegistry, check_client_id
from meshlimit.core.ring import HashRing
from meshlimit.core.rules import MAX_COUNT, Rule


class Node(Deciding):
    """One cluster member: membership, routing, forwarding, gossip and degraded mode."""

    def __init__(
        self,
        config: NodeConfig,
        rng: random.Random,
        *,
        now_ns: int,
        wall_ns: int | None = None,
        boot_id: int | None = None,
    ) -> None:
        """``boot_id``: this life's identity (see the module's docstring). Drivers pass
        one; None draws it from ``rng``, for tests of a single life only."""
        wall = now_ns if wall_ns is None else wall_ns
        boot = rng.getrandbits(64) if boot_id is None else boot_id
        #: This life's identity on the wire (request ids, authentication trailers).
        self.boot_id = boot & (2**64 - 1)
        self.config = config
        self.node_id = config.node_id
        self.registry = RuleRegistry(config.default_rule)
        self.counters = CounterStore(config.node_id, max_clients=config.max_clients)
        self.membership = Membership(
            config.node_id, config.addr, config.membership, rng, now_ns=now_ns
        )
        self.membership.wall_offset_ns = wall - now_ns
        self.ring = HashRing([config.node_id])
        self._ring_members: tuple[str, ...] = (config.node_id,)
        #: The ring is this node alone: it owns every client and has nobody to replicate to.
        self._alone = True
        self._wall_offset = wall - now_ns
        self._last_wall_ns = wall
        self._gossip_at = now_ns + config.gossip_interval_ns
        self._anti_entropy_at = now_ns + config.anti_entropy_interval_ns
        self._membership_dirty = True
        self._membership_seen = (0, False, False)
        self._membership_changes = -1  # membership.changes when last looked at
        self._events: list[Event] = []
        self.stats: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        #: When a list, every decision made here is appended as ``(wall_ns, client,
        #: rule, cost, allowed, path)``: the simulator's checkers read it (they only
        #: observe). The driver must drain it; production leaves it None.
        self.decision_log: DecisionLog | None = None
        stats, dropped = self.stats, self.dropped
        self._link = Link(
            config, self.membership, boot_id=self.boot_id, stats=stats, dropped=dropped
        )
        self.limits = self._link.limits
        self.joining = Joining(config, self.membership, self._link, dropped=dropped)
        self._knows_ring = False  # joining's answers, cached for the hot paths
        self._ready = False
        # Tickets double as request ids on the wire, named by this life (forwarding.py).
        self.forwarding = Forwarding(config, self._link, stats=stats, boot_id=self.boot_id)
        self.replication = Replication(
            config, self.counters, self.registry, self._link, stats=stats, dropped=dropped
        )
        self.degraded = DegradedMode(config, self.replication, dropped=dropped)
        self.resync = Resync(config.resync_wait_ns, stats=stats)
        self._strict = config.mode == "strict"
        self.rules = RuleSync(
            config.node_id,
            self.registry,
            self._link,
            rng,
            wall_ns=wall,
            stats=stats,
            dropped=dropped,
            on_rule=self.replication.note_rule,
            on_reset=self._apply_reset,
        )
        self.replication.note_rule(self.registry.default)

    # --- inputs -----------------------------------------------------------------------

    def start(self, seeds: list[Address], *, now_ns: int, resolve: bool = False) -> None:
        """Join the cluster through ``seeds`` (none: a cluster of one).

        ``resolve``: the seeds are names the driver resolves; ``seeds`` are the addresses
        found so far (none yet: the node stays joining, never alone) and ``SeedsWanted``
        events ask for fresh ones (:meth:`set_seeds`). See ``joining.py``."""
        self.joining.start(seeds, now_ns=now_ns, resolve=resolve)
        self._membership_dirty = True
        self._after_membership_input(now_ns)

    def set_seeds(self, seeds: list[Address], *, now_ns: int) -> None:
        """Fresh addresses of the seeds, resolved by the driver after ``SeedsWanted``."""
        self.joining.set_seeds(seeds, now_ns=now_ns)
        self._after_membership_input(now_ns)

    def check(
        self, client: str, cost: int = 1, *, now_ns: int, wall_ns: int | None = None
    ) -> Decision | int:
        """Decide a check now (a :class:`Decision`) or return a ticket whose
        :class:`Decided` event arrives later. Bad arguments raise ``ValueError``."""
        if (
            type(client) is not str
            or not client.isascii()
            or not 0 < len(client) <= MAX_CLIENT_BYTES
        ):
            check_client_id(client)  # also refuses text the ring cannot hash
        if type(cost) is not int or not 0 <= cost <= MAX_COUNT:
            check_cost(cost)
        # ``_advance``, inlined on this hot path.
        wall = now_ns + self._wall_offset if wall_ns is None else wall_ns
        self._wall_offset = self.membership.wall_offset_ns = wall - now_ns
        self._last_wall_ns = wall
        if not self._knows_ring or not self.degraded.majority:
            # Not joined (the ring is unknown) or cut off from most of the cluster: every
            # decision is a local quota, so that no node that may not be the owner, and
            # no two sides of a partition, enforce the full limit.
            return self._decide_degraded(client, cost, wall)
        if self.config.mode == "local":
            return self._decide_here(client, cost, wall, "local")
        owner = self.node_id if self._alone else self.ring.owner(client)
        if owner == self.node_id:
            if self.resync.active:  # restarted: our counts are still coming back
                return self._decide_degraded(client, cost, wall)
            return self._decide_here(client, cost, wall, "owner")
        return self._check_elsewhere(client, cost, owner, now_ns, wall)

    def _check_elsewhere(
        self, client: str, cost: int, owner: str, now_ns: int, wall: int
    ) -> Decision | int:
        """:meth:`check` of a client another node owns: forwarded (its ticket), or decided
        here when the owner is unreachable or too busy."""
        if self.degraded.owner_unreachable(owner):
            return self._decide_degraded(client, cost, wall)
        if self.forwarding.full:
            self.dropped["pending_full"] += 1
            return self._decide_degraded(client, cost, wall)
        if self.forwarding.owner_backlogged(owner):
            return self.overloaded(client, "owner_backlog")
        return self.forwarding.forward(client, cost, owner, now_ns)

    def check_many(
        self, clients: list[str], cost: int, *, now_ns: int, wall_ns: int
    ) -> list[Decision | None]:
        """A front-end's batch at one instant: for each client in turn, the decision
        :meth:`check` makes when this node decides on its own counts (the owner, local
        mode), with what the checks share done once; None where it would not (owned
        elsewhere, not ready, a minority): nothing done, :meth:`check` it. Raises as
        :meth:`check` for a bad cost or client, before any check."""
        check_args(clients, cost)
        if not self._knows_ring or not self.degraded.majority or self.resync.active:
            return [None] * len(clients)  # :meth:`check` decides these, one by one
        wall = self._advance(now_ns, wall_ns)
        path = "local" if self.config.mode == "local" else "owner"
        if path == "local" or self._alone:
            return self._decide_batch(clients, cost, wall, path)
        owner, me, decide = self.ring.owner, self.node_id, self._decide_here
        return [decide(c, cost, wall, path) if owner(c) == me else None for c in clients]

    def check_batch(
        self, clients: list[str], cost: int, *, now_ns: int, wall_ns: int
    ) -> list[Decision | int]:
        """:meth:`check` of each client at one instant, in order: its decision, or the
        ticket of a check forwarded to its owner (a front-end's batch), with what the checks
        share done once (as :meth:`check_many`; the owner is looked up once a check).
        Raises as :meth:`check` for a bad cost or client, before any check."""
        if (
            not self._knows_ring
            or not self.degraded.majority
            or self.resync.active
            or self._alone
            or self.config.mode == "local"
        ):
            decided = self.check_many(clients, cost, now_ns=now_ns, wall_ns=wall_ns)
            check = self.check
            return [
                check(c, cost, now_ns=now_ns, wall_ns=wall_ns) if d is None else d
                for c, d in zip(clients, decided, strict=True)
            ]
        check_args(clients, cost)
        wall = self._advance(now_ns, wall_ns)
        owner_of, me = self.ring.owner, self.node_id
        decide, elsewhere = self._decide_here, self._check_elsewhere
        out: list[Decision | int] = []
        append = out.append
        for client in clients:
            owner = owner_of(client)
            if owner == me:
                append(decide(client, cost, wall, "owner"))
            else:
                append(elsewhere(client, cost, owner, now_ns, wall))
        return out

    def receive(
        self, datagram: bytes, addr: Address, *, now_ns: int, wall_ns: int | None = None
    ) -> None:
        """Take one datagram from the network; garbage is dropped and counted."""
        wall = self._advance(now_ns, wall_ns)
        envelope = self._link.open(datagram, wall_ns=wall)
        if envelope is None:
            return
        self.forwarding.heard(envelope.sender, now_ns)
        dispatch = self._dispatch
        for message in envelope.messages:
            # A peer's garbage surfaces as one of these and is dropped with its message;
            # an AssertionError is this node's bug, not the peer's, and escapes.
            try:
                dispatch(envelope, message, now_ns, wall)
            except (ValueError, KeyError, TypeError) as error:
                self.dropped[f"bad_{type(message).__name__}"] += 1
                self.stats["last_error_" + type(error).__name__] += 1
        self._after_membership_input(now_ns)

    def tick(self, *, now_ns: int, wall_ns: int | None = None) -> None:
        """Advance timers: probes, batch flushes, timeouts, gossip, anti-entropy, sweeps."""
        wall = self._advance(now_ns, wall_ns)
        out = self.membership.tick(now_ns=now_ns)
        if out:
            self._link.send_all(out)
        wanted = self.joining.tick(now_ns=now_ns)
        if wanted:
            self._events.extend(wanted)
        self.resync.tick(now_ns=now_ns)
        self._after_membership_input(now_ns)
        self.forwarding.flush_due(now_ns)
        for ticket, request in self.forwarding.expire(now_ns):
            # A check lost on the way (its owner answers, promptly) is sent once more.
            # Otherwise it is answered once, here: a late reply from the owner is counted,
            # not used. A slow or stalled owner is busy, not unreachable: overloaded
            # (counted nowhere), not degraded.
            slow = self.forwarding.owner_slow(request.owner, now_ns)
            if not slow and self.forwarding.lost_in_transit(request):
                self.forwarding.retry(ticket, request, now_ns)
                continue
            if slow:
                decision = self.overloaded(request.client, "slow_owner")
            elif self.forwarding.owner_stalled(request.owner, request.sent_ns, request.deadline_ns):
                decision = self.overloaded(request.client, "stalled_owner")
            else:
                decision = self._decide_degraded(request.client, request.cost, wall)
            admitted = decision.allowed and not decision.shadowed and request.cost > 0
            self.forwarding.gave_up(ticket, request, admitted=admitted)
            self._events.append(Decided(ticket, request.client, decision))
        if now_ns >= self._gossip_at:
            self._gossip_at = now_ns + self.config.gossip_interval_ns
            self._gossip_counters(wall)
            self._continue_handover(wall)
            self.replication.sweep(wall)
        if now_ns >= self._anti_entropy_at:
            self._anti_entropy_at = now_ns + self.config.anti_entropy_interval_ns
            self.rules.anti_entropy()

    def set_rule(
        self, key: str, value: Rule | str | None, *, now_ns: int, wall_ns: int | None = None
    ) -> bool:
        """Change a registry entry here and spread it; ``key`` is ``default``,
        ``tier:NAME`` or ``client:ID``. Raises ``ValueError`` for bad input."""
        wall = now_ns + self._wall_offset if wall_ns is None else wall_ns
        return self.rules.set(key, value, wall)

    def forget(self, node: str, *, now_ns: int) -> str:
        """An operator removes ``node`` for good (``meshlimit ctl forget``): it stops
        counting toward the majority here and, as the news spreads, everywhere. Returns
        what :meth:`Membership.forget` says (``forgotten``, ``gone``, ``unknown``, ...)."""
        result = self.membership.forget(node, now_ns=now_ns)
        self._after_membership_input(now_ns)
        return result

    def leave(self, *, now_ns: int) -> None:
        """Leave gracefully: hand counts to the next owners and tell the others."""
        wall = now_ns + self._wall_offset
        self._gossip_counters(wall)
        if len(self._ring_members) > 1:
            successors = HashRing(n for n in self._ring_members if n != self.node_id)
            self.replication.hand_over_everything(successors, wall)
        self._link.send_all(self.membership.leave(now_ns=now_ns))
        self.joining.leave()
        self.forwarding.flush()
        # Our own LEFT state takes us off our ring: checks made here while the driver
        # drains go to the new owners.
        self._membership_dirty = True
        self._after_membership_input(now_ns)

    def flush_batches(self, *, now_ns: int) -> None:
        """Send the forward batches whose window has closed, as :meth:`tick` does, and do
        nothing else: a driver calls it at the end of each loop turn, so that with the
        default window (0) the checks of a turn leave at its end without a timer, while
        timeouts stay judged by :meth:`tick` alone."""
        self.forwarding.flush_due(now_ns)

    # --- outputs ----------------------------------------------------------------------

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        """Everything queued, packed into datagrams with membership news piggybacked.

        In strict mode the owner's admissions since the last call go to its replicas now,
        with the answers: a check the owner answered "allowed" is at its replicas unless a
        datagram was lost, so an owner killed and restarted at once gets every admission a
        client heard of back (``resync.py``), not all but its last gossip interval's."""
        if self._strict:
            self.replication.gossip(self._last_wall_ns, self.ring)
        link = self._link
        return link.datagrams(wall_ns=self._last_wall_ns) if link.queue else []

    def events(self) -> list[Event]:
        """Decisions for tickets and membership changes since the last call."""
        events, self._events = self._events, []
        return events

    def next_deadline(self) -> int:
        """The monotonic instant at which ``tick`` next has work."""
        return min(
            self.membership.next_deadline(),
            self.forwarding.next_deadline(),
            self.joining.next_deadline(),
            self.resync.next_deadline(),
            self._gossip_at,
            self._anti_entropy_at,
        )

    # --- queries ----------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Started, joined (or without seeds) and not left: the node knows the ring and
        decides at full capacity where it owns; before joining, everything is degraded."""
        return self._ready

    def owner(self, client: str) -> str:
        """The member that owns ``client`` in this node's view."""
        return self.ring.owner(client)

    def rule_for(self, client: str) -> Rule:
        """The rule in force for ``client``."""
        return self.registry.resolve(client)

    def members(self) -> list[tuple[str, Address, str, int]]:
        """``(node, addr, state name, incarnation)`` for every known member."""
        return [
            (m.node, m.addr, MemberState.NAMES.get(m.state, "?"), m.incarnation)
            for m in self.membership.members()
        ]

    def pending_count(self) -> int:
        """Forwarded checks awaiting an answer."""
        return len(self.forwarding.pending)

    # --- deciding ---------------------------------------------------------------------

    def _decide_forwarded(self, client: str, cost: int, wall: int, path: str) -> Decision:
        """Decide a check forwarded to this node as its owner: on the merged counts only
        when ready, in a majority, and the owner in its own ring too. A restarted owner
        that has not yet rejoined, one cut off from most of the cluster, and one asked by
        a peer whose ring is not ours (a join or a death still spreading: the real owner
        may be enforcing the full limit meanwhile) answer from the degraded quota; so does a
        restarted owner until its counts are back (``resync.py``)."""
        if (
            not self._ready
            or not self.degraded.majority
            or self.ring.owner(client) != self.node_id
            or self.resync.active
        ):
            return self._decide_degraded(client, cost, wall)
        return self._decide_here(client, cost, wall, path)

    # --- dispatch ---------------------------------------------------------------------

    def _dispatch(self, envelope: Envelope, message: Message, now_ns: int, wall: int) -> None:
        """Hand one message to the part whose job it is (membership takes the rest)."""
        sender = envelope.sender
        if isinstance(message, CheckBatch):
            reply_to = envelope.sender_addr
            decide = self._decide_forwarded
            if self.membership.addr_of(sender) is None:
                # A stranger takes us for an owner: it knows a cluster we do not (a seedless
                # node restarted at once comes back alone). Degraded until we have met it.
                self._link.send_all(self.membership.meet_stranger(sender, reply_to, now_ns))
                decide = self._decide_degraded
            self.forwarding.answer(sender, reply_to, message, wall, decide)
        elif isinstance(message, ReplyBatch):
            self._events.extend(self.forwarding.resolve(sender, message, now_ns, self._window_of))
        elif isinstance(message, CounterDeltas):
            self.replication.merge(message, wall)
            if self.resync.active:
                self.resync.on_slots(sender, handed_over(message.deltas, sender))
        elif isinstance(message, HandoverDone):
            if message.member == self.node_id:
                self.resync.on_done(sender, message)
            else:  # meant for another node (a datagram that reached the wrong address)
                self.dropped["misaddressed_HandoverDone"] += 1
        elif isinstance(message, RuleEntries):
            self.rules.on_entries(message, wall)
        elif isinstance(message, RuleDigest):
            self.rules.on_digest(sender, message)
        else:
            out = self.membership.handle(sender, envelope.sender_addr, message, now_ns=now_ns)
            self._link.send_all(out)
            if isinstance(message, Join):
                self.rules.send_all_to(envelope.sender_addr)
            elif isinstance(message, JoinReply):
                self.stats["joined"] += 1

    def _after_membership_input(self, now_ns: int) -> None:
        """Pass membership news on: events out, reachability and majority, ring, hand-over."""
        membership = self.membership
        if membership.changes == self._membership_changes and not self._membership_dirty:
            return  # no membership entry point ran since: no events, the same states
        self._membership_changes = membership.changes
        events = membership.drain_events()
        generation = membership.generation  # any change of states, table or roster
        joined = self.joining.knows_ring
        ready = joined and not self.joining.left  # joining.ready, without asking twice
        seen = (generation, joined, ready)
        if not events and not self._membership_dirty and seen == self._membership_seen:
            return
        self._membership_seen = seen
        self._membership_dirty = False
        self._knows_ring, self._ready = joined, ready
        self._events.extend(MembershipChanged(event) for event in events)
        states = {m.node: m.state for m in self.membership.members()}
        self.degraded.observe(self.membership, states, joined=joined)
        # Checks forwarded to an owner that just stopped being alive: decide them now.
        for ticket, request in self.degraded.stranded(self.forwarding.pending):
            self.stats["stranded_forwards"] += 1
            self.forwarding.released(request.owner)
            wall = now_ns + self._wall_offset
            decision = self._decide_degraded(request.client, request.cost, wall)
            self._events.append(Decided(ticket, request.client, decision))
        # A member back alive (perhaps restarted without memory) needs the counts it holds,
        # and so does a new ring's holder: only the counters whose holders changed are
        # handed over, paced per second (``replication.py``), so that a false suspicion
        # under load costs a bounded share of a core, not a flood that breeds the next.
        rejoined = [
            e.node
            for e in events
            if e.new_state == MemberState.ALIVE  # new, back, or alive at a new incarnation
        ]
        for node in rejoined:
            self.forwarding.revived(node, now_ns)
        old_ring = self.ring
        ring_members = tuple(sorted(n for n, s in states.items() if s != MemberState.LEFT))
        ring_members = ring_members or (self.node_id,)  # the last one out keeps its ring
        if ring_members != self._ring_members:
            self._ring_members = ring_members
            self._alone = ring_members == (self.node_id,)
            self.ring = HashRing(ring_members)
            self.stats["ring_changes"] += 1
        if rejoined or self.ring is not old_ring:
            # The first round leaves now, not at the next gossip round: a new or restarted
            # member waits for it (``resync.py``), and needs its own old slot back.
            self.replication.queue_handover(old_ring, self.ring, rejoined)
            self._continue_handover(now_ns + self._wall_offset)
        self._resync(states, now_ns)

    def _resync(self, states: dict[str, int], now_ns: int) -> None:
        """A life that found an earlier one of itself in the cluster waits for its counts
        from every peer it holds live (``resync.py``), after telling each of them at once."""
        live = [n for n, s in states.items() if s in LIVE and n != self.node_id]
        if self.resync.begun:
            self.resync.keep_only(live)
        elif self.membership.earlier_life and self._knows_ring:
            self._link.send_all(self.membership.announce(live))
            self.resync.begin(live, incarnation=self.membership.incarnation, now_ns=now_ns)

    def _continue_handover(self, wall: int) -> None:
        """A hand-over round; members whose hand-over ended are told so."""
        self.replication.continue_handover(wall, self.ring)
        for node, slots in self.replication.finished_syncs():
            held = (m.incarnation for m in self.membership.members() if m.node == node)
            self._link.send(node, HandoverDone(node, next(held, 0), slots))

    def _gossip_counters(self, wall: int) -> None:
        """One gossip round of counters: replication, then degraded admissions."""
        self.replication.gossip(wall, self.ring)
        self.degraded.resend(wall, self.ring)

    def _apply_reset(self, client: str) -> None:
        """An operator reset ``client`` (a ``reset:`` entry took effect): forget its counts."""
        self.replication.reset(client)
        self.degraded.forget(client)
        self.stats["resets"] += 1

    def _advance(self, now_ns: int, wall_ns: int | None) -> int:
        """Take the wall clock given with an input (else keep its offset from ``now_ns``)."""
        wall = now_ns + self._wall_offset if wall_ns is None else wall_ns
        self._wall_offset = self.membership.wall_offset_ns = wall - now_ns
        self._last_wall_ns = wall
        return wall


def check_args(clients: list[str], cost: int) -> None:
    """Raise as :meth:`Node.check` does for a bad client id or cost."""
    for client in clients:
        if (
            type(client) is not str
            or not client.isascii()
            or not 0 < len(client) <= MAX_CLIENT_BYTES
        ):
            check_client_id(client)
    if type(cost) is not int or not 0 <= cost <= MAX_COUNT:
        check_cost(cost)
