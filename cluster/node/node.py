"""The cluster node as a sans-IO state machine.

Theory of operation. A node is fed three kinds of input — ``check`` calls
from the application, datagrams from peers (``receive``) and the passage of
time (``tick``) — and produces three kinds of output that the driver polls:
datagrams to send (``datagrams_to_send``), events (``events``: decisions for
checks that waited on the network, membership changes) and the instant it
next needs a tick (``next_deadline``). It never reads a clock, draws from the
global RNG, or touches a socket: the asyncio runtime and the simulator are
two drivers of this one class.

Two times come in: ``now_ns``, a monotonic clock for timeouts, and
``wall_ns``, the wall clock that windows align to and rule stamps and clock
offsets are measured with. ``wall_ns`` defaults to ``now_ns``. One identity
comes in too: ``boot_id``, new in every life of the node (the runtime draws it
from the OS and the wall clock, the simulator from a stream per life), which
names this life on the wire: forwarded request ids and, with a cluster key, the
replay windows peers keep. It never comes from the seeded RNG, which repeats
itself when a node restarts with the same ``--seed-rng``.

Readiness. Until ``start`` and, with seeds, until a seed has answered
(``joining``), the node does not know the ring: it is not ``ready`` and decides
every check, its own and those forwarded to it, against the degraded quota.
After ``leave`` it still knows the ring (its own checks go to the new owners)
but answers checks forwarded to it from its degraded quota.

Checks. In strict mode a check for a client this node owns is decided here
(path ``owner``); otherwise it is queued for the owner and sent in a batch
when the batch window closes or the datagram is full; the owner's answer
resolves it (path ``forwarded``). A check whose owner is suspected, dead, or
silent past the forward timeout is decided here against a local quota,
counted in this node's own G-counter slot (path ``degraded``); those counts
reach the owner by gossip once it is reachable again. A check for an owner that
already has ``max_pending_per_owner`` checks awaiting it is refused at once (path
``overloaded``, counted in stats only): backpressure, not degraded mode, since a busy
owner is reachable. In local mode every node decides on its merged view (path
``local``) and gossips deltas.

Ownership is the consistent-hash ring over members that are alive, suspect,
or dead but not yet forgotten: a dead member's clients stay degraded until
membership reaps it, and only then move to its successor, which has the
replicated counts. This keeps split-brain out of short partitions.

Parts. The node decides checks and dispatches the rest to parts it owns, each
with its own state: ``forwarding`` (batches to owners, pending tickets, the
owner's answers), ``replication`` (counter deltas, hand-over, merging),
``rules`` (rule entries, HLC stamps, anti-entropy), ``degraded`` (the majority
rule, the local quota, re-sends to owners), the link (datagrams in and out)
``joining`` (seeds, join retries, readiness) and ``membership`` (SWIM).
"""

from __future__ import annotations

import random
from collections import Counter

from meshlimit.cluster.membership import Membership
from meshlimit.cluster.node.config import NodeConfig
from meshlimit.cluster.node.degraded import DegradedMode
from meshlimit.cluster.node.events import Decided, Event, MembershipChanged
from meshlimit.cluster.node.forwarding import Forwarding
from meshlimit.cluster.node.joining import Joining
from meshlimit.cluster.node.link import Link
from meshlimit.cluster.node.replication import Replication
from meshlimit.cluster.node.rulesync import RuleSync
from meshlimit.cluster.wire.messages import (
    Address,
    CheckBatch,
    CounterDeltas,
    Envelope,
    Join,
    JoinReply,
    MemberState,
    Message,
    ReplyBatch,
    RuleDigest,
    RuleEntries,
)
from meshlimit.core.counters import CounterStore, Outcome
from meshlimit.core.decision import Decision, make_decision, most_restrictive
from meshlimit.core.engine import check_cost
from meshlimit.core.fastpath import admit_counter
from meshlimit.core.registry import MAX_CLIENT_BYTES, RuleRegistry, check_client_id
from meshlimit.core.ring import HashRing
from meshlimit.core.rules import MAX_COUNT, Rule

#: The stats key of an admitted decision, by path (``_report`` builds the same).
_ALLOWED = {path: f"{path}_allowed" for path in ("owner", "forwarded", "local")}


class Node:
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
        self._events: list[Event] = []
        self.stats: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        #: When a list, every decision made here is appended as ``(wall_ns, client,
        #: rule, cost, allowed, path)``: the simulator's checkers read it (they only
        #: observe). The driver must drain it; production leaves it None.
        self.decision_log: list[tuple[int, str, Rule, int, bool, str]] | None = None
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
            return self._decide_here(client, cost, wall, "owner")
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
        for client in clients:
            if (
                type(client) is not str
                or not client.isascii()
                or not 0 < len(client) <= MAX_CLIENT_BYTES
            ):
                check_client_id(client)
        if type(cost) is not int or not 0 <= cost <= MAX_COUNT:
            check_cost(cost)
        if not self._knows_ring or not self.degraded.majority:
            return [None] * len(clients)
        wall = self._advance(now_ns, wall_ns)
        path = "local" if self.config.mode == "local" else "owner"
        if path == "local" or self._alone:
            return [self._decide_here(client, cost, wall, path) for client in clients]
        owner, me, decide = self.ring.owner, self.node_id, self._decide_here
        return [decide(c, cost, wall, path) if owner(c) == me else None for c in clients]

    def receive(
        self, datagram: bytes, addr: Address, *, now_ns: int, wall_ns: int | None = None
    ) -> None:
        """Take one datagram from the network; garbage is dropped and counted."""
        wall = self._advance(now_ns, wall_ns)
        envelope = self._link.open(datagram, wall_ns=wall)
        if envelope is None:
            return
        for message in envelope.messages:
            # A peer's garbage surfaces as one of these and is dropped with its message;
            # an AssertionError is this node's bug, not the peer's, and escapes.
            try:
                self._dispatch(envelope, message, now_ns, wall)
            except (ValueError, KeyError, TypeError) as error:
                self.dropped[f"bad_{type(message).__name__}"] += 1
                self.stats["last_error_" + type(error).__name__] += 1
        self._after_membership_input(now_ns)

    def tick(self, *, now_ns: int, wall_ns: int | None = None) -> None:
        """Advance timers: probes, batch flushes, timeouts, gossip, anti-entropy, sweeps."""
        wall = self._advance(now_ns, wall_ns)
        self._link.send_all(self.membership.tick(now_ns=now_ns))
        self._events.extend(self.joining.tick(now_ns=now_ns))
        self._after_membership_input(now_ns)
        self.forwarding.flush_due(now_ns)
        for ticket, request in self.forwarding.expire(now_ns):
            # Answered once, here: a late reply from the owner is counted, not used. A slow
            # owner is busy, not unreachable: overloaded (counted nowhere), not degraded.
            if self.forwarding.owner_slow(request.owner, now_ns):
                decision = self.overloaded(request.client, "slow_owner")
            else:
                decision = self._decide_degraded(request.client, request.cost, wall)
            admitted = decision.allowed and not decision.shadowed and request.cost > 0
            self.forwarding.gave_up(ticket, request, admitted=admitted)
            self._events.append(Decided(ticket, request.client, decision))
        if now_ns >= self._gossip_at:
            self._gossip_at = now_ns + self.config.gossip_interval_ns
            self._gossip_counters(wall)
            self.replication.continue_handover(wall, self.ring)
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

    # --- outputs ----------------------------------------------------------------------

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        """Everything queued, packed into datagrams with membership news piggybacked."""
        return self._link.datagrams(wall_ns=self._last_wall_ns)

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

    def _decide_here(self, client: str, cost: int, wall: int, path: str) -> Decision:
        """Decide on the merged counts: as the owner, for a forwarder, or in local mode."""
        rule = self.registry.resolve(client)
        if rule.also:
            return self._decide_all(client, rule, cost, wall, path)
        decision = admit_counter(self.counters, client, rule, cost, wall, path)
        if decision is not None:  # the common case, fused (``core/fastpath.py``)
            if cost and not self._alone:  # alone: nobody to replicate to (``gossip``)
                self.replication.mark_changed(rule.series, client)
            self.stats[_ALLOWED[path]] += 1
            if self.decision_log is not None:
                self.decision_log.append((wall, client, rule, cost, True, path))
            return decision
        outcome = self.counters.check(client, rule, cost, now_ns=wall)
        if outcome[0] and cost:
            self.replication.mark_changed(rule.series, client)
        return self._report(wall, client, rule, cost, path, outcome)

    def _decide_all(self, client: str, rule: Rule, cost: int, wall: int, path: str) -> Decision:
        """A rule of several limits: each answers first (against its local quota when
        degraded); only if all allow does each count, and the decision reports the most
        restrictive (``most_restrictive``). Every limit is one counter like any other:
        forwarded to, replicated, handed over and reported by the same machinery."""
        degraded = path == "degraded"
        limits = rule.limits
        quotas = [
            self.degraded.quota(limit, client, wall) if degraded else None for limit in limits
        ]
        outcomes = [
            self.counters.check(client, limit, cost, now_ns=wall, capacity=quota, commit=False)
            for limit, quota in zip(limits, quotas, strict=True)
        ]
        allowed = all(outcome[0] for outcome in outcomes)
        if allowed and cost:
            for limit, quota in zip(limits, quotas, strict=True):
                self.counters.check(client, limit, cost, now_ns=wall, capacity=quota)
                if degraded:
                    self.degraded.note_admitted(limit.series, client)
                else:
                    self.replication.mark_changed(limit.series, client)
        elif degraded:
            outcomes = [
                self._retry_soon(outcome, limit, wall)
                if outcome[3] < 0 and cost <= limit.capacity
                else outcome
                for limit, outcome in zip(limits, outcomes, strict=True)
            ]
        index, outcome = most_restrictive(outcomes)
        return self._report(wall, client, rule, cost, path, outcome, limits[index])

    def _decide_forwarded(self, client: str, cost: int, wall: int, path: str) -> Decision:
        """Decide a check forwarded to this node as its owner: on the merged counts only
        when ready, in a majority, and the owner in its own ring too. A restarted owner
        that has not yet rejoined, one cut off from most of the cluster, and one asked by
        a peer whose ring is not ours (a join or a death still spreading: the real owner
        may be enforcing the full limit meanwhile) answer from the degraded quota."""
        if not self._ready or not self.degraded.majority or self.ring.owner(client) != self.node_id:
            return self._decide_degraded(client, cost, wall)
        return self._decide_here(client, cost, wall, path)

    def _decide_degraded(self, client: str, cost: int, wall: int) -> Decision:
        """Decide without the owner, against this node's local quota."""
        rule = self.registry.resolve(client)
        if rule.also:
            return self._decide_all(client, rule, cost, wall, "degraded")
        quota = self.degraded.quota(rule, client, wall)
        outcome = self.counters.check(client, rule, cost, now_ns=wall, capacity=quota)
        if outcome[0] and cost:
            self.degraded.note_admitted(rule.series, client)
        elif outcome[3] < 0 and cost <= rule.capacity:
            outcome = self._retry_soon(outcome, rule, wall)
        return self._report(wall, client, rule, cost, "degraded", outcome)

    def overloaded(self, client: str, reason: str) -> Decision:
        """Refuse a check because the cluster is too busy to decide it in time: its (alive)
        owner already has ``max_pending_per_owner`` checks awaiting it, or was slow to
        answer and the check timed out (``reason``: ``owner_backlog``, ``slow_owner``, or a
        driver's own, such as ``waiting_full``). Explicit backpressure, counted in stats
        only (``overloaded`` and ``overloaded_REASON``; no counter, no decision log), to
        retry after a forward timeout. Not degraded: a busy owner is reachable."""
        self.stats["overloaded"] += 1
        self.stats[f"overloaded_{reason}"] += 1
        rule = self.registry.resolve(client)
        retry_ns = self.config.forward_timeout_ns
        shadow = rule.shadow or self.config.shadow
        return make_decision(
            False, rule.limit, 0, retry_ns, retry_ns, "overloaded", shadow, rule.window_ns
        )

    def _retry_soon(self, outcome: Outcome, rule: Rule, wall: int) -> Outcome:
        """A degraded refusal of a cost the rule admits but the local quota never does
        (a quota of zero, say, while joining): worth retrying when the quota renews with
        the next window, or after a probe interval, whichever is sooner, since the owner
        may be reachable by then. Never "retry never" (-1) for a passing condition."""
        allowed, remaining, reset_ns, _ = outcome
        to_next_window = rule.window_ns - wall % rule.window_ns
        retry_ns = min(to_next_window, self.config.membership.probe_interval_ns)
        return allowed, remaining, reset_ns, max(retry_ns, 1_000_000)

    def _report(
        self,
        wall: int,
        client: str,
        rule: Rule,
        cost: int,
        path: str,
        outcome: Outcome,
        shown: Rule | None = None,
    ) -> Decision:
        """Count a decision, log it for the simulator, and apply shadow mode. ``shown``:
        the limit the decision reports (a rule of several limits), else ``rule``."""
        allowed, remaining, reset_ns, retry_ns = outcome
        self.stats[f"{path}_{'allowed' if allowed else 'refused'}"] += 1
        if self.decision_log is not None:
            self.decision_log.append((wall, client, rule, cost, allowed, path))
        shadow = rule.shadow or self.config.shadow
        if shadow and not allowed:
            self.stats["shadow_refused"] += 1
        limit = rule if shown is None else shown
        return make_decision(
            allowed, limit.limit, remaining, reset_ns, retry_ns, path, shadow, limit.window_ns
        )

    # --- dispatch ---------------------------------------------------------------------

    def _dispatch(self, envelope: Envelope, message: Message, now_ns: int, wall: int) -> None:
        """Hand one message to the part whose job it is (membership takes the rest)."""
        sender = envelope.sender
        if isinstance(message, CheckBatch):
            reply_to = envelope.sender_addr
            self.forwarding.answer(sender, reply_to, message, wall, self._decide_forwarded)
        elif isinstance(message, ReplyBatch):
            self._events.extend(self.forwarding.resolve(sender, message, now_ns, self._window_of))
        elif isinstance(message, CounterDeltas):
            self.replication.merge(message, wall)
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
        events = self.membership.drain_events()
        generation = self.membership.generation  # any change of states, table or roster
        joined, ready = self.joining.knows_ring, self.joining.ready
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
            if e.new_state == MemberState.ALIVE and e.old_state != MemberState.ALIVE
        ]
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
            # member may start deciding at once, and needs its own old slot back.
            self.replication.queue_handover(old_ring, self.ring, rejoined)
            self.replication.continue_handover(now_ns + self._wall_offset, self.ring)

    def _gossip_counters(self, wall: int) -> None:
        """One gossip round of counters: replication, then degraded admissions."""
        self.replication.gossip(wall, self.ring)
        self.degraded.resend(wall, self.ring)

    def _window_of(self, client: str, limit: int, reset_ns: int) -> int:
        """The window of an owner's decision that reported ``limit``: that of our copy of
        the client's rule whose limit it is (0 if none: the rule is changing). Of several
        limits with that number, the shortest window that can hold ``reset_ns``."""
        windows = [
            part.window_ns for part in self.registry.resolve(client).limits if part.limit == limit
        ]
        if len(windows) > 1:
            windows = sorted(w for w in windows if w >= reset_ns) or windows
        return windows[0] if windows else 0

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
