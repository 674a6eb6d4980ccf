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
offsets are measured with. ``wall_ns`` defaults to ``now_ns``.

Checks. In strict mode a check for a client this node owns is decided here
(path ``owner``); otherwise it is queued for the owner and sent in a batch
when the batch window closes or the datagram is full; the owner's answer
resolves it (path ``forwarded``). A check whose owner is suspected, dead, or
silent past the forward timeout is decided here against a local quota,
counted in this node's own G-counter slot (path ``degraded``); those counts
reach the owner by gossip once it is reachable again. In local mode every
node decides on its merged view (path ``local``) and gossips deltas.

Ownership is the consistent-hash ring over members that are alive, suspect,
or dead but not yet forgotten: a dead member's clients stay degraded until
membership reaps it, and only then move to its successor, which has the
replicated counts. This keeps split-brain out of short partitions.
"""

from __future__ import annotations

import random
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from meshlimit.cluster.membership import MemberEvent, Membership
from meshlimit.cluster.node.config import NodeConfig, local_quota
from meshlimit.cluster.wire import codec
from meshlimit.cluster.wire.auth import TRAILER_BYTES, Guard, new_guard
from meshlimit.cluster.wire.messages import (
    Address,
    CheckBatch,
    CheckResult,
    CounterDeltas,
    CounterSlot,
    Envelope,
    Join,
    JoinReply,
    MemberState,
    Message,
    ReplyBatch,
    RuleDigest,
    RuleEntries,
    RuleEntry,
)
from meshlimit.core.counters import CounterStore
from meshlimit.core.decision import Decision, make_decision
from meshlimit.core.engine import Engine
from meshlimit.core.hlc import ZERO, Stamp, next_stamp, observe
from meshlimit.core.registry import CLIENT_PREFIX, RESET_PREFIX, check_client_id, value_text
from meshlimit.core.ring import HashRing
from meshlimit.core.rules import MAX_COUNT, Rule

_NEVER = 2**63 - 1
#: Encoded size of one forwarded check beyond its client id: the request id (up to 9
#: bytes), the cost (up to 9), the id's string header (up to 3) and the array header.
CHECK_OVERHEAD_BYTES = 22
#: The most one check can add to a batch (a 256-byte id plus framing).
MAX_CHECK_BYTES = 256 + CHECK_OVERHEAD_BYTES
#: Gossip rounds a degraded admission is re-sent once its owner is reachable (for loss).
DEGRADED_RESENDS = 3


@dataclass(frozen=True, slots=True)
class Decided:
    """A check that waited on the network has been decided."""

    ticket: int
    client: str
    decision: Decision


@dataclass(frozen=True, slots=True)
class MembershipChanged:
    """A member joined, changed state or left (from SWIM)."""

    event: MemberEvent


Event = Decided | MembershipChanged


@dataclass(slots=True)
class _Pending:
    client: str
    cost: int
    owner: str
    deadline_ns: int


class Node:
    """One cluster member: membership, routing, forwarding, gossip and degraded mode."""

    def __init__(
        self, config: NodeConfig, rng: random.Random, *, now_ns: int, wall_ns: int | None = None
    ) -> None:
        wall = now_ns if wall_ns is None else wall_ns
        self.config = config
        self.node_id = config.node_id
        self._rng = rng
        self.engine = Engine(config.default_rule, max_clients=config.max_clients)
        self.counters = CounterStore(config.node_id, max_clients=config.max_clients)
        self.membership = Membership(
            config.node_id, config.addr, config.membership, rng, now_ns=now_ns
        )
        self.membership.wall_offset_ns = wall - now_ns
        self.ring = HashRing([config.node_id])
        self._ring_members: tuple[str, ...] = (config.node_id,)
        self._stamp: Stamp = next_stamp(ZERO, config.node_id, now_ns=wall)
        self._wall_offset = wall - now_ns
        self._last_wall_ns = wall
        # Forwarding state.
        # Tickets double as request ids on the wire, and owners de-duplicate by
        # (sender, id): a restarted node must not reuse the ids of its previous
        # life, or an owner would answer it from the cache without counting.
        self._next_ticket = rng.getrandbits(52) + 1
        self._pending: dict[int, _Pending] = {}
        self._batches: dict[str, list[tuple[int, str, int]]] = {}
        self._batch_bytes: dict[str, int] = {}  # upper bound of each batch's encoded size
        self._batch_due_ns = _NEVER
        self._dedup: dict[str, OrderedDict[int, CheckResult]] = {}
        # Replication / gossip state: counters changed since the last round.
        self._dirty: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._degraded_dirty: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._gossip_at = now_ns + config.gossip_interval_ns
        self._anti_entropy_at = now_ns + config.anti_entropy_interval_ns
        self._handover: deque[tuple[str, str]] = deque()
        # Membership as routing sees it: states by node, and the members that count
        # towards a majority (everyone ever seen and not gracefully left).
        self._states: dict[str, int] = {config.node_id: MemberState.ALIVE}
        self._quorum: set[str] = {config.node_id}
        self._majority = True
        self._membership_dirty = True
        self._membership_seen = (0, False)
        # Outputs.
        self._outbox: list[tuple[Address, Message]] = []
        self._events: list[Event] = []
        self.stats: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        #: When a list, every decision made here is appended as ``(wall_ns, client,
        #: rule, cost, allowed, path)``: the simulator's checkers read it (they only
        #: observe). The driver must drain it; production leaves it None.
        self.decision_log: list[tuple[int, str, Rule, int, bool, str]] | None = None
        self.limits = codec.Limits(max_datagram_bytes=max(config.datagram_budget, 1400))
        self._guard: Guard | None = None
        self._payload_budget = config.datagram_budget
        if config.cluster_keys:
            self._guard = new_guard(
                config.cluster_keys,
                rng.getrandbits(63),
                max_age_ns=config.max_datagram_age_ns,
                dropped=self.dropped,
            )
            self._payload_budget -= TRAILER_BYTES
        # Room for one message alone in a datagram, so split batches always fit.
        self._message_budget = codec.message_budget(
            config.node_id, config.addr, self._payload_budget
        )
        self._series_windows: dict[str, int] = {}
        self._note_rule(self.engine.registry.default)

    # --- inputs -----------------------------------------------------------------------

    def start(self, seeds: list[Address], *, now_ns: int) -> None:
        """Join the cluster through ``seeds`` (none: a cluster of one)."""
        seeds = [s for s in seeds if s != self.config.addr]
        self._send_all(self.membership.join(seeds, now_ns=now_ns))
        self._membership_dirty = True
        self._after_membership_input(now_ns)

    def check(
        self, client: str, cost: int = 1, *, now_ns: int, wall_ns: int | None = None
    ) -> Decision | int:
        """Decide a check now (a :class:`Decision`) or return a ticket whose
        :class:`Decided` event arrives later. Bad arguments raise ``ValueError``."""
        check_client_id(client)  # also refuses text the ring cannot hash
        if type(cost) is not int or not 0 <= cost <= MAX_COUNT:
            raise ValueError(f"cost must be an integer from 0 to {MAX_COUNT}, got {cost!r}")
        wall = now_ns + self._wall_offset if wall_ns is None else wall_ns
        self._wall_offset = self.membership.wall_offset_ns = wall - now_ns
        self._last_wall_ns = wall
        if not self._majority:
            # Cut off from most of the cluster: every decision is a local quota, so
            # that no two sides of a partition both enforce the full limit.
            return self._decide_degraded(client, cost, wall)
        if self.config.mode == "local":
            return self._decide_here(client, cost, wall, "local")
        owner = self.ring.owner(client)
        if owner == self.node_id:
            return self._decide_here(client, cost, wall, "owner")
        if self._owner_unreachable(owner):
            return self._decide_degraded(client, cost, wall)
        if len(self._pending) >= self.config.max_pending:
            self.dropped["pending_full"] += 1
            return self._decide_degraded(client, cost, wall)
        return self._forward(client, cost, owner, now_ns)

    def receive(
        self, datagram: bytes, addr: Address, *, now_ns: int, wall_ns: int | None = None
    ) -> None:
        """Take one datagram from the network; garbage is dropped and counted."""
        wall = now_ns + self._wall_offset if wall_ns is None else wall_ns
        self._wall_offset = self.membership.wall_offset_ns = wall - now_ns
        self._last_wall_ns = wall
        if self._guard is not None:
            opened = self._guard.open(datagram, now_ns=wall)
            if opened is None:  # forged, replayed or stale: dropped before decoding
                return
            datagram = opened
        try:
            envelope = codec.decode(datagram, self.limits)
        except codec.DecodeError as error:
            self.dropped[f"decode_{error.reason}"] += 1
            return
        if envelope.sender == self.node_id:
            self.dropped["from_self"] += 1
            return
        for message in envelope.messages:
            try:
                self._dispatch(envelope, message, now_ns, wall)
            except (ValueError, KeyError, TypeError, AssertionError) as error:  # peer garbage
                self.dropped[f"bad_{type(message).__name__}"] += 1
                self.stats["last_error_" + type(error).__name__] += 1
        self._after_membership_input(now_ns)

    def tick(self, *, now_ns: int, wall_ns: int | None = None) -> None:
        """Advance timers: probes, batch flushes, timeouts, gossip, anti-entropy, sweeps."""
        wall = now_ns + self._wall_offset if wall_ns is None else wall_ns
        self._wall_offset = self.membership.wall_offset_ns = wall - now_ns
        self._last_wall_ns = wall
        self._send_all(self.membership.tick(now_ns=now_ns))
        self._after_membership_input(now_ns)
        if now_ns >= self._batch_due_ns:
            self._flush_batches()
        self._expire_pending(now_ns, wall)
        if now_ns >= self._gossip_at:
            self._gossip_at = now_ns + self.config.gossip_interval_ns
            self._gossip_counters(wall)
            self._continue_handover(wall)
            self.counters.sweep(self._series_windows, now_ns=wall)
        if now_ns >= self._anti_entropy_at:
            self._anti_entropy_at = now_ns + self.config.anti_entropy_interval_ns
            self._anti_entropy()

    def set_rule(
        self, key: str, value: Rule | str | None, *, now_ns: int, wall_ns: int | None = None
    ) -> bool:
        """Change a registry entry here and spread it; ``key`` is ``default``,
        ``tier:NAME`` or ``client:ID``. Raises ``ValueError`` for bad input."""
        wall = now_ns + self._wall_offset if wall_ns is None else wall_ns
        self._stamp = next_stamp(self._stamp, self.node_id, now_ns=wall)
        changed = self.engine.apply_rule(key, value, self._stamp)
        if changed and key.startswith(RESET_PREFIX):
            self._apply_reset(key[len(RESET_PREFIX) :])
        if changed:
            entry = self.engine.registry.entry(key)
            assert entry is not None
            self._note_value(entry.value)
            message = RuleEntries((RuleEntry(key, value_text(entry.value), tuple(entry.stamp)),))
            for node in self._peers():
                self._send(node, message)
        return changed

    def leave(self, *, now_ns: int) -> None:
        """Leave gracefully: hand counts to the next owners and tell the others."""
        self._gossip_counters(now_ns + self._wall_offset)
        ring = (
            HashRing(n for n in self._ring_members if n != self.node_id)
            if len(self._ring_members) > 1
            else None
        )
        if ring is not None:
            self._handover_to(ring, now_ns + self._wall_offset, everything=True)
        self._send_all(self.membership.leave(now_ns=now_ns))
        self._flush_batches()

    # --- outputs ----------------------------------------------------------------------

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        """Everything queued, packed into datagrams with membership news piggybacked."""
        if not self._outbox:
            return []
        by_addr: dict[Address, list[Message]] = {}
        for addr, message in self._outbox:
            by_addr.setdefault(addr, []).append(message)
        self._outbox = []
        out: list[tuple[bytes, Address]] = []
        for addr, messages in by_addr.items():
            messages.extend(self.membership.piggyback())
            packed = codec.pack_datagrams(
                self.node_id, self.config.addr, messages, self._payload_budget, limits=self.limits
            )
            self.dropped["oversized"] += packed.oversized
            self.dropped["invalid_outgoing"] += packed.invalid
            guard = self._guard
            if guard is None:
                out.extend((datagram, addr) for datagram in packed.datagrams)
            else:
                wall = self._last_wall_ns
                out.extend((guard.seal(d, now_ns=wall), addr) for d in packed.datagrams)
        self.stats["datagrams_sent"] += len(out)
        return out

    def events(self) -> list[Event]:
        """Decisions for tickets and membership changes since the last call."""
        events, self._events = self._events, []
        return events

    def next_deadline(self) -> int:
        """The monotonic instant at which ``tick`` next has work."""
        deadline = min(
            self.membership.next_deadline(),
            self._batch_due_ns,
            self._gossip_at,
            self._anti_entropy_at,
        )
        if self._pending:
            # Every forward gets the same timeout, so insertion order is deadline order.
            deadline = min(deadline, next(iter(self._pending.values())).deadline_ns)
        return deadline

    # --- queries ----------------------------------------------------------------------

    def owner(self, client: str) -> str:
        """The member that owns ``client`` in this node's view."""
        return self.ring.owner(client)

    def rule_for(self, client: str) -> Rule:
        """The rule in force for ``client``."""
        return self.engine.registry.resolve(client)

    def members(self) -> list[tuple[str, Address, str, int]]:
        """``(node, addr, state name, incarnation)`` for every known member."""
        return [
            (m.node, m.addr, MemberState.NAMES.get(m.state, "?"), m.incarnation)
            for m in self.membership.members()
        ]

    def pending_count(self) -> int:
        """Forwarded checks awaiting an answer."""
        return len(self._pending)

    # --- deciding ---------------------------------------------------------------------

    def _decide_here(self, client: str, cost: int, wall: int, path: str) -> Decision:
        rule = self.engine.registry.resolve(client)
        allowed, remaining, reset_ns, retry_ns = self.counters.check(
            client, rule, cost, now_ns=wall
        )
        if allowed and cost:
            self._mark_dirty(self._dirty, (rule.series, client))
        self.stats[f"{path}_{'allowed' if allowed else 'refused'}"] += 1
        if self.decision_log is not None:
            self.decision_log.append((wall, client, rule, cost, allowed, path))
        shadow = rule.shadow or self.config.shadow
        if shadow and not allowed:
            self.stats["shadow_refused"] += 1
        return make_decision(allowed, rule.limit, remaining, reset_ns, retry_ns, path, shadow)

    def _decide_degraded(self, client: str, cost: int, wall: int) -> Decision:
        rule = self.engine.registry.resolve(client)
        if self.membership.joined:
            members = len(self._quorum)
            quota = local_quota(rule.capacity, members, self.config.degraded_fraction)
        else:
            # Joining and not yet answered: the cluster's size, and so a fair share of
            # it, is unknown. Refuse rather than let every booting node take a share.
            quota = 0
        allowed, remaining, reset_ns, retry_ns = self.counters.check(
            client, rule, cost, now_ns=wall, capacity=quota
        )
        if allowed and cost:
            self._mark_dirty(self._degraded_dirty, (rule.series, client), DEGRADED_RESENDS)
        self.stats[f"degraded_{'allowed' if allowed else 'refused'}"] += 1
        if self.decision_log is not None:
            self.decision_log.append((wall, client, rule, cost, allowed, "degraded"))
        shadow = rule.shadow or self.config.shadow
        if shadow and not allowed:
            self.stats["shadow_refused"] += 1
        return make_decision(allowed, rule.limit, remaining, reset_ns, retry_ns, "degraded", shadow)

    def _owner_unreachable(self, owner: str) -> bool:
        return self._states.get(owner, MemberState.DEAD) != MemberState.ALIVE

    # --- forwarding -------------------------------------------------------------------

    def _forward(self, client: str, cost: int, owner: str, now_ns: int) -> int:
        ticket = self._next_ticket
        self._next_ticket += 1
        self._pending[ticket] = _Pending(
            client, cost, owner, now_ns + self.config.forward_timeout_ns
        )
        batch = self._batches.setdefault(owner, [])
        batch.append((ticket, client, cost))
        if len(batch) == 1 and self._batch_due_ns == _NEVER:
            self._batch_due_ns = now_ns + self.config.batch_window_ns
        # A check costs its id plus at most ~20 bytes of framing (ticket, cost, array
        # header): send as soon as the next one might not fit one datagram.
        size = self._batch_bytes.get(owner, 0) + len(client.encode()) + CHECK_OVERHEAD_BYTES
        if size + MAX_CHECK_BYTES > self._message_budget:
            self._flush_batch(owner)
        else:
            self._batch_bytes[owner] = size
        return ticket

    def _flush_batches(self) -> None:
        for owner in list(self._batches):
            self._flush_batch(owner)
        self._batch_due_ns = _NEVER

    def _flush_batch(self, owner: str) -> None:
        self._batch_bytes.pop(owner, None)
        batch = self._batches.pop(owner, None)
        if batch:
            self.stats["batches_sent"] += 1
            self.stats["batched_checks"] += len(batch)
            self._send(owner, CheckBatch(tuple(batch)))
        if not self._batches:
            self._batch_due_ns = _NEVER

    def _expire_pending(self, now_ns: int, wall: int) -> None:
        while self._pending:
            ticket, pending = next(iter(self._pending.items()))
            if pending.deadline_ns > now_ns:
                break
            del self._pending[ticket]
            self.stats["forward_timeouts"] += 1
            decision = self._decide_degraded(pending.client, pending.cost, wall)
            self._events.append(Decided(ticket, pending.client, decision))

    def _on_check_batch(self, sender: str, message: CheckBatch, wall: int) -> None:
        seen = self._dedup.setdefault(sender, OrderedDict())
        if len(self._dedup) > self.config.membership.max_members:
            self._dedup.pop(next(iter(self._dedup)))
        results = []
        for request_id, client, cost in message.checks:
            cached = seen.get(request_id)
            if cached is not None:
                self.stats["duplicate_checks"] += 1
                results.append(cached)
                continue
            decision = self._decide_here(client, cost, wall, "forwarded")
            result = CheckResult(
                request_id,
                decision.allowed,
                decision.limit,
                decision.remaining,
                int(decision.reset_after * 1000),
                -1 if decision.retry_after == float("inf") else int(decision.retry_after * 1000),
            )
            seen[request_id] = result
            if len(seen) > self.config.dedup_per_peer:
                seen.popitem(last=False)
            results.append(result)
        self._send(sender, ReplyBatch(tuple(results)))

    def _on_reply_batch(self, sender: str, message: ReplyBatch) -> None:
        for result in message.results:
            pending = self._pending.get(result.request_id)
            if pending is None or pending.owner != sender:
                self.stats["late_replies"] += 1
                continue
            del self._pending[result.request_id]
            retry_ns = -1 if result.retry_after_ms < 0 else result.retry_after_ms * 1_000_000
            decision = make_decision(
                result.allowed,
                result.limit,
                result.remaining,
                result.reset_after_ms * 1_000_000,
                retry_ns,
                "forwarded",
            )
            self.stats[f"forwarded_{'allowed' if result.allowed else 'refused'}"] += 1
            self._events.append(Decided(result.request_id, pending.client, decision))

    # --- counters: replication, gossip, hand-over -------------------------------------

    def _mark_dirty(
        self, dirty: OrderedDict[tuple[str, str], Any], key: tuple[str, str], value: Any = None
    ) -> None:
        dirty[key] = value
        dirty.move_to_end(key)
        if len(dirty) > self.config.max_dirty:
            dirty.popitem(last=False)
            self.dropped["dirty_full"] += 1

    def _slots_of(self, key: tuple[str, str], wall: int, *, own_only: bool) -> list[CounterSlot]:
        series, client = key
        counter = self.counters.get(series, client)
        window_ns = self._series_windows.get(series)
        if counter is None or window_ns is None:
            return []
        if series.startswith("token_bucket"):
            return [CounterSlot(client, series, counter.tat, ())]
        slots = []
        for window, gcounter in ((counter.window, counter.cur), (counter.window - 1, counter.prev)):
            items = [(n, c) for n, c in gcounter.items() if not own_only or n == self.node_id]
            if items and window >= 0:
                slots.append(CounterSlot(client, series, window, tuple(items)))
        return slots

    def _gossip_counters(self, wall: int) -> None:
        """Send changed counters: to replicas (strict), to everyone (local), and degraded
        admissions to the client's owner (and replicas) until they are acknowledged by time."""
        if self._dirty:
            dirty, self._dirty = self._dirty, OrderedDict()
            by_node: dict[str, list[CounterSlot]] = {}
            for key in dirty:
                targets = self._replication_targets(key[1])
                slots = self._slots_of(key, wall, own_only=True)
                for node in targets:
                    by_node.setdefault(node, []).extend(slots)
            self._send_slots(by_node)
        if self._degraded_dirty:
            # Degraded counts are re-sent every round while the owner is unreachable
            # (it can only merge them once it hears us), then a few more times once it
            # is alive again, for loss; their window's end also ends them.
            by_node = {}
            for key, resends in list(self._degraded_dirty.items()):
                slots = self._slots_of(key, wall, own_only=True)
                if not slots or resends <= 0:
                    del self._degraded_dirty[key]
                    continue
                prefs = self.ring.preference_list(key[1], 1 + self.config.replicas)
                if not self._owner_unreachable(prefs[0]):
                    self._degraded_dirty[key] = resends - 1
                for node in prefs:
                    if node != self.node_id:
                        by_node.setdefault(node, []).extend(slots)
            self._send_slots(by_node)

    def _replication_targets(self, client: str) -> list[str]:
        if self.config.mode == "local":
            return self._peers()
        prefs = self.ring.preference_list(client, 1 + self.config.replicas)
        return [n for n in prefs if n != self.node_id]

    def _send_slots(self, by_node: dict[str, list[CounterSlot]]) -> None:
        for node, slots in by_node.items():
            for message in codec.fit_items(CounterDeltas, slots, self._message_budget):
                self._send(node, message)

    def _on_counter_deltas(self, message: CounterDeltas, wall: int) -> None:
        registry = self.engine.registry
        for slot in message.deltas:
            window_ns = self._series_windows.get(slot.series) or self._learn_series(slot.series)
            if window_ns is None:
                self.dropped["unknown_series"] += 1
                continue
            reset_ms = registry.reset_wall_ms(slot.client)
            if reset_ms >= 0 and not _after_reset(slot, window_ns, reset_ms):
                self.stats["stale_after_reset"] += 1
                continue
            if slot.series.startswith("token_bucket"):
                self.counters.merge_tat(slot.client, slot.series, slot.window)
            else:
                self.counters.merge(
                    slot.client, slot.series, slot.window, slot.slots, wall // window_ns
                )

    def _learn_series(self, series: str) -> int | None:
        """A series named by a peer: ``algo:window_ns``; refuse anything malformed."""
        algo, _, window = series.partition(":")
        if not window.isdigit() or algo not in ("sliding_window", "fixed_window", "token_bucket"):
            return None
        window_ns = int(window)
        Rule(1, window_ns, 0, algo)  # validates the window
        if len(self._series_windows) > 1024:
            return None
        self._series_windows[series] = window_ns
        return window_ns

    def _handover_to(self, ring: HashRing, wall: int, *, everything: bool = False) -> None:
        """Queue counters whose preference list changed for sending to the new holders."""
        for key, _ in self.counters.items():
            self._handover.append(key)
        if everything:
            self._continue_handover(wall, ring=ring, budget=len(self._handover))

    def _continue_handover(
        self, wall: int, *, ring: HashRing | None = None, budget: int = 2000
    ) -> None:
        if not self._handover:
            return
        ring = ring or self.ring
        by_node: dict[str, list[CounterSlot]] = {}
        for _ in range(min(budget, len(self._handover))):
            key = self._handover.popleft()
            if self.config.mode == "local":
                targets = self._peers()
            else:
                prefs = ring.preference_list(key[1], 1 + self.config.replicas)
                targets = [n for n in prefs if n != self.node_id]
            slots = self._slots_of(key, wall, own_only=False)
            for node in targets:
                by_node.setdefault(node, []).extend(slots)
        self._send_slots(by_node)

    # --- rules ------------------------------------------------------------------------

    def _note_rule(self, rule: Rule) -> None:
        self._series_windows[rule.series] = rule.window_ns

    def _note_value(self, value: object) -> None:
        if isinstance(value, Rule):
            self._note_rule(value)

    def _on_rule_entries(self, message: RuleEntries, wall: int) -> None:
        for entry in message.entries:
            stamp = Stamp(*entry.stamp)
            self._stamp = observe(self._stamp, stamp, self.node_id, now_ns=wall)
            try:
                if self.engine.apply_rule(entry.key, entry.value, stamp):
                    self.stats["rules_applied"] += 1
                    if entry.key.startswith(RESET_PREFIX):
                        self._apply_reset(entry.key[len(RESET_PREFIX) :])
                        continue
                    self._note_value(self.engine.registry.entry(entry.key).value)  # type: ignore[union-attr]
            except ValueError:
                self.dropped["bad_rule_entry"] += 1

    def _apply_reset(self, client: str) -> None:
        """An operator reset ``client``: forget its counts here. Slots gossiped later for
        windows that began before the reset are ignored (``_on_counter_deltas``), so a
        grow-only counter cannot bring the old counts back."""
        self.counters.reset(client, list(self._series_windows))
        for dirty in (self._dirty, self._degraded_dirty):
            for series in self._series_windows:
                dirty.pop((series, client), None)
        self.stats["resets"] += 1

    def _all_rule_entries(self) -> list[RuleEntry]:
        return [
            RuleEntry(key, value_text(entry.value), tuple(entry.stamp))  # type: ignore[arg-type]
            for key, entry in self.engine.registry.entries()
        ]

    def _send_rules(self, node: str) -> None:
        for message in codec.fit_items(RuleEntries, self._all_rule_entries(), self._message_budget):
            self._send(node, message)

    def _anti_entropy(self) -> None:
        peers = self._peers()
        if peers:
            registry = self.engine.registry
            self._send(
                self._rng.choice(peers), RuleDigest(registry.digest, registry.entry_count(), True)
            )

    def _on_rule_digest(self, sender: str, message: RuleDigest) -> None:
        registry = self.engine.registry
        if message.digest == registry.digest:
            return
        self.stats["anti_entropy_repairs"] += 1
        self._send_rules(sender)
        if message.reply:
            self._send(sender, RuleDigest(registry.digest, registry.entry_count(), False))

    # --- membership -------------------------------------------------------------------

    def _dispatch(self, envelope: Envelope, message: Message, now_ns: int, wall: int) -> None:
        sender = envelope.sender
        kind = type(message)
        if kind is CheckBatch:
            self._on_check_batch(sender, message, wall)  # type: ignore[arg-type]
        elif kind is ReplyBatch:
            self._on_reply_batch(sender, message)  # type: ignore[arg-type]
        elif kind is CounterDeltas:
            self._on_counter_deltas(message, wall)  # type: ignore[arg-type]
        elif kind is RuleEntries:
            self._on_rule_entries(message, wall)  # type: ignore[arg-type]
        elif kind is RuleDigest:
            self._on_rule_digest(sender, message)  # type: ignore[arg-type]
        else:
            out = self.membership.handle(sender, envelope.sender_addr, message, now_ns=now_ns)
            self._send_all(out)
            if kind is Join:
                self._send_rules_to_addr(envelope.sender_addr)
            elif kind is JoinReply:
                self.stats["joined"] += 1

    def _send_rules_to_addr(self, addr: Address) -> None:
        for message in codec.fit_items(RuleEntries, self._all_rule_entries(), self._message_budget):
            self._outbox.append((addr, message))

    def _after_membership_input(self, now_ns: int) -> None:
        events = self.membership.drain_events()
        size, joined = self.membership.size, self.membership.joined
        if not events and not self._membership_dirty and (size, joined) == self._membership_seen:
            return
        self._membership_seen = (size, joined)
        self._membership_dirty = False
        rejoined = False
        for event in events:
            self._events.append(MembershipChanged(event))
            if event.new_state == MemberState.LEFT:
                self._quorum.discard(event.node)
            elif event.new_state == MemberState.ALIVE and event.old_state != MemberState.ALIVE:
                rejoined = True  # a new or restarted member: it needs our counts
        members = self.membership.members()
        self._states = {m.node: m.state for m in members}
        for m in members:
            if m.state != MemberState.LEFT:
                self._quorum.add(m.node)
        live = sum(1 for m in members if m.state in (MemberState.ALIVE, MemberState.SUSPECT))
        # A node that has not yet heard back from the cluster it is joining sees only
        # itself: it must not take itself for the whole cluster (after a restart it
        # would otherwise own every client, from zero, until the join completes).
        self._majority = 2 * live > len(self._quorum) and self.membership.joined
        ring_members = tuple(sorted(m.node for m in members if m.state != MemberState.LEFT))
        if ring_members != self._ring_members:
            self._ring_members = ring_members
            self.ring = HashRing(ring_members)
            self.stats["ring_changes"] += 1
            rejoined = True
        if rejoined:
            # A new or restarted member gets our counts (its own old slot included)
            # now, not at the next gossip round: it may start deciding at once.
            self._handover.clear()
            self._handover_to(self.ring, 0)
            self._continue_handover(now_ns + self._wall_offset)

    def _peers(self) -> list[str]:
        return [n for n in self.membership.alive_nodes() if n != self.node_id]

    def _send(self, node: str, message: Message) -> None:
        addr = self.membership.addr_of(node)
        if addr is None:
            self.dropped["no_address"] += 1
            return
        self._outbox.append((addr, message))

    def _send_all(self, out: list[tuple[Address, Message]]) -> None:
        self._outbox.extend(out)


def _after_reset(slot: CounterSlot, window_ns: int, reset_ms: int) -> bool:
    """Whether gossiped state may be merged after a reset at ``reset_ms``: windows (and
    token-bucket arrival times) from before the reset carry the counts it cleared."""
    reset_ns = reset_ms * 1_000_000
    if slot.series.startswith("token_bucket"):
        # An arrival time does not say when it was earned; one a window past the
        # reset cannot come from before it unless the bucket was deeper than a
        # window (limit + burst > limit): approximate for such rules.
        return slot.window >= reset_ns + window_ns
    return slot.window * window_ns >= reset_ns


def client_key(client: str) -> str:
    """The registry key of a client's own rule."""
    return CLIENT_PREFIX + client
