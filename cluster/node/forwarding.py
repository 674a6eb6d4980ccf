"""Forwarding: checks sent to their client's owner in batches, and the owner's answers.

Theory of operation. The asking side: ``forward`` gives a check a ticket, records it
as pending with a deadline, and queues it in the batch for its owner. A batch leaves
when the batch window closes (``flush_due``) or as soon as the next check might not
fit one datagram. A reply resolves a pending check only when it comes from the owner
asked; later or foreign replies are counted and ignored. A check still pending at its
deadline is handed back (``expire``) for the node to decide. Forwards get the timeout
of the moment they leave, which moves slowly, so the pending map's insertion order is
nearly its deadline order (``expire`` stops at the first not yet due).

A timed-out check is answered once. If its owner is *slow* (``owner_slow``) -- one of
its replies took at least half the forward timeout, or came after it, within the last
``SLOW_MEMORY_MULT`` timeouts -- or *stalled* (``owner_stalled``) -- it has answered
nothing since this check left, but a datagram of its (a reply, an ack, gossip) came less
than a probe interval before the deadline -- the owner is reachable but busy, and the
node answers ``overloaded``: refused, counted nowhere, so the late reply (which the
owner counted) is the only count. The timeout itself adapts as TCP's does
(``timeout_ns``: the smoothed round trip plus four deviations, from the configured
timeout up to ``MAX_TIMEOUT_MULT`` times it), so a loaded cluster whose answers are slow
but coming is waited for. Degraded mode is for owners that are really unreachable: a
check whose owner is neither (a datagram lost twice: the owner answered later checks,
and the check sent again; an owner silent for a probe interval, crashed but not yet
detected) is decided from the degraded quota and counted in this node's slot; the owner
may have counted it too. A late reply resolves nothing: no second answer, no count here; it is
counted (``late_replies``, and ``late_replies_counted_twice`` when both admitted). That
double count errs on the strict side and is bounded by the degraded quota this node may
use per window. Timeouts never touch membership: only SWIM probes suspect a member.

Tickets double as request ids on the wire, and owners de-duplicate them: a restarted
node must not have the ids of its previous life answered from an owner's cache without
being counted (170 admitted against a bound of 50, when a daemon restarted with the same
``--seed-rng`` drew the same first id). So ids are per life: each is ``life << SEQ_BITS
| seq``, where ``life`` (``LIFE_BITS``) and the first ``seq`` come from the node's boot
id, which its driver draws anew for every process life (never from the seeded RNG; see
``request_ids``). ``seq`` wraps within its life after 2**40 forwards.

The owner's side: ``answer`` decides each check of a batch once and replies with the
results. It remembers the results per (peer, life) (``dedup_per_peer`` of them, for at
most ``max_members`` lives, the least recently used forgotten first), so a duplicated
datagram is answered again without counting twice, and a new life of a peer starts with
an empty cache: the old life's answers can never be served to it.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from math import ceil

from meshlimit.cluster.node.config import NodeConfig
from meshlimit.cluster.node.events import Decided, decided_event
from meshlimit.cluster.node.link import Link
from meshlimit.cluster.wire.messages import (
    Address,
    CheckBatch,
    CheckResult,
    ReplyBatch,
    check_result,
)
from meshlimit.core.decision import Decision, make_decision

_NEVER = 2**63 - 1
#: The adaptive forward timeout (``Forwarding.timeout_ns``) is at most this many times the
#: configured one. Why 4: an owner that answers ~4x slower than the operator allowed
#: for is overloaded or gone, and a caller should not wait longer.
MAX_TIMEOUT_MULT = 4
#: How long an owner that answered slowly counts as slow, in forward timeouts. Why 25 (5 s
#: with ``lan``): load comes in waves, and a node that itself stalls a second resolves no
#: reply meanwhile; a shorter memory would read the next timeout as a crash. An owner that
#: really crashed while slow is refused ``overloaded`` until SWIM detects it (seconds).
SLOW_MEMORY_MULT = 25
_INF = float("inf")
_ALLOWED, _REFUSED = "forwarded_allowed", "forwarded_refused"
#: A stand-in for a batch's answer cache before its first check names the life.
_NO_ANSWERS: OrderedDict[int, CheckResult] = OrderedDict()
#: Encoded size of one forwarded check beyond its client id: the request id (up to 9
#: bytes), the cost (up to 9), the id's string header (up to 3) and the array header.
CHECK_OVERHEAD_BYTES = 22
#: The most one check can add to a batch (a 256-byte id plus framing).
MAX_CHECK_BYTES = 256 + CHECK_OVERHEAD_BYTES

#: Bits of a request id that number the checks of one life; the bits above name the life.
SEQ_BITS = 40
#: Bits naming a life: ids stay below 2**63 (a signed 64-bit integer on any peer).
LIFE_BITS = 23
_SEQ_MASK = (1 << SEQ_BITS) - 1
_MASK64 = (1 << 64) - 1


def mix64(value: int) -> int:
    """SplitMix64's finaliser: spreads every bit of ``value`` over all 64 (a boot id made
    of a clock and random bits then gives uniform life tags)."""
    z = value & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def request_ids(boot_id: int) -> tuple[int, int]:
    """``(life, first seq)`` of a node life: both drawn from its boot id. The first seq
    lies in the lower half of the seq space, so a life wraps only after 2**39 forwards."""
    mixed = mix64(boot_id)
    return mixed >> (64 - LIFE_BITS), mixed & (_SEQ_MASK >> 1)


def life_of(request_id: int) -> int:
    """The life a request id belongs to."""
    return request_id >> SEQ_BITS


#: How the owner decides one forwarded check: ``(client, cost, wall_ns, path)``.
Decide = Callable[[str, int, int, str], Decision]
#: The window of a forwarded decision, ``(client, limit, reset_ns) -> window_ns`` (0:
#: unknown). A reply carries no window (its record predates them, and older peers must
#: still read it), so the asking node names it from its own copy of the client's rule.
WindowOf = Callable[[str, int, int], int]


@dataclass(slots=True)
class PendingCheck:
    """A forwarded check awaiting its owner's answer."""

    client: str
    cost: int
    owner: str
    sent_ns: int
    deadline_ns: int
    retried: bool = False
    """Sent a second time (``retry``): its next timeout is final."""


class Forwarding:
    """Pending forwarded checks, the batches being filled, and the owner's answer cache."""

    def __init__(
        self, config: NodeConfig, link: Link, *, stats: Counter[str], boot_id: int
    ) -> None:
        self._config = config
        self._link = link
        self._stats = stats
        self._life, self._seq = request_ids(boot_id)
        #: Forwarded checks awaiting an answer, by ticket, in deadline order.
        self.pending: dict[int, PendingCheck] = {}
        self._per_owner: Counter[str] = Counter()  # pending checks by owner
        self._batches: dict[str, list[tuple[int, str, int]]] = {}
        self._batch_bytes: dict[str, int] = {}  # upper bound of each batch's encoded size
        self._batch_due_ns = _NEVER
        #: Tickets given up on (``expire``), oldest first: ticket -> (owner, whether this
        #: node admitted it degraded, when it was sent). At most ``max_pending``; a reply
        #: for one is late.
        self._timed_out: OrderedDict[int, tuple[str, bool, int]] = OrderedDict()
        # Round trips of forwarded checks, smoothed as TCP's (RFC 6298): ``timeout_ns``.
        self._srtt_ns = 0
        self._rttvar_ns = 0
        #: Owners whose replies were slow, with the instant they stop counting as such
        #: (``owner_slow``); at most ``max_members`` entries.
        self._slow_until: dict[str, int] = {}
        #: When each owner's latest reply came (``owner_stalled``); at most ``max_members``.
        self._replied_at: dict[str, int] = {}
        #: When a datagram last came from each member (``heard``); at most ``max_members``.
        self._heard_at: dict[str, int] = {}
        #: When each member was last seen alive anew (``revived``): no retry across it.
        self._revived_at: dict[str, int] = {}
        #: The owner's answers by (peer, life), least recently used first.
        self._dedup: OrderedDict[tuple[str, int], OrderedDict[int, CheckResult]] = OrderedDict()

    @property
    def full(self) -> bool:
        """Whether ``max_pending`` checks already await an answer."""
        return len(self.pending) >= self._config.max_pending

    def owner_backlogged(self, owner: str) -> bool:
        """Whether ``max_pending_per_owner`` checks already await ``owner``."""
        return self._per_owner[owner] >= self._config.max_pending_per_owner

    def timeout_ns(self) -> int:
        """The forward timeout now: TCP's retransmission timeout (RFC 6298) over the round
        trips of forwarded checks, ``srtt + 4 * rttvar``, at least ``forward_timeout_ns``
        and at most ``MAX_TIMEOUT_MULT`` times it. A healthy cluster answers far inside the
        configured timeout; a busy one (a loaded host, long GC pauses) waits for answers
        that are slow but coming, rather than time them out and decide them again."""
        floor = self._config.forward_timeout_ns
        return min(MAX_TIMEOUT_MULT * floor, max(floor, self._srtt_ns + 4 * self._rttvar_ns))

    def _sample_rtt(self, rtt_ns: int) -> None:
        if self._srtt_ns == 0:
            self._srtt_ns, self._rttvar_ns = rtt_ns, rtt_ns // 2
        else:
            self._rttvar_ns += (abs(self._srtt_ns - rtt_ns) - self._rttvar_ns) // 4
            self._srtt_ns += (rtt_ns - self._srtt_ns) // 8

    def owner_slow(self, owner: str, now_ns: int) -> bool:
        """Whether ``owner`` answered slowly lately: a reply of its took at least half the
        forward timeout, or came after it, within the last ``SLOW_MEMORY_MULT`` timeouts. A
        check to a slow
        owner that times out is ``overloaded``, not degraded: the owner is reachable."""
        until = self._slow_until.get(owner)
        if until is None:
            return False
        if until > now_ns:
            return True
        del self._slow_until[owner]
        return False

    def owner_stalled(self, owner: str, sent_ns: int, deadline_ns: int) -> bool:
        """Whether ``owner`` is busy rather than gone when a check sent at ``sent_ns`` timed
        out: it has answered no forward since (had it, the check was lost on the way:
        ``lost_in_transit``), yet something of it -- a reply, an ack, gossip -- was heard
        less than a probe interval before the check's deadline. A descheduled or swamped
        process on a loaded host looks so: its acks go out ahead of its data, so it is
        heard while its replies queue (3 x 300 connections x P64: owners more than a probe
        interval behind on their replies, yet acking, had 138-359 checks a run decided
        degraded on a healthy cluster, as did a cold start's first checks before any
        reply). Beyond a probe interval of silence it is taken for a crash, which SWIM
        then detects, and its checks are decided degraded. Judged at the deadline, not
        when this node got round to it: a node that itself stalled past the deadline has
        the datagrams of that time unread, and must not take its own stall for the
        owner's silence."""
        if self._replied_at.get(owner, -1) >= sent_ns:
            return False
        heard = self._heard_at.get(owner, -1)
        return heard >= 0 and deadline_ns - heard < self._config.membership.probe_interval_ns

    def heard(self, peer: str, now_ns: int) -> None:
        """A datagram came from ``peer``: a sign of life (``owner_stalled``)."""
        heard_at = self._heard_at
        if peer not in heard_at and len(heard_at) >= self._config.membership.max_members:
            heard_at.clear()  # bounded; forgetting errs towards degraded answers
        heard_at[peer] = now_ns

    def _replied(self, owner: str, now_ns: int) -> None:
        replied_at = self._replied_at
        if owner not in replied_at and len(replied_at) >= self._config.membership.max_members:
            replied_at.clear()  # bounded; forgetting errs towards degraded answers
        replied_at[owner] = now_ns

    def _replied_slowly(self, owner: str, now_ns: int) -> None:
        if owner not in self._slow_until and len(self._slow_until) >= (
            self._config.membership.max_members
        ):
            self._slow_until.clear()  # bounded; forgetting errs towards degraded answers
        self._slow_until[owner] = now_ns + SLOW_MEMORY_MULT * self._config.forward_timeout_ns

    def released(self, owner: str) -> None:
        """A pending check for ``owner`` left ``pending`` other than by ``expire`` or
        ``resolve`` (stranded: its owner stopped being known alive)."""
        self._release(owner)

    def _release(self, owner: str) -> None:
        left = self._per_owner[owner] - 1
        if left > 0:
            self._per_owner[owner] = left
        else:  # as ``del`` on a Counter (no KeyError), without its Python-level __delitem__
            self._per_owner.pop(owner, None)

    def next_deadline(self) -> int:
        """When the open batch window closes or the oldest forward times out."""
        deadline = self._batch_due_ns
        for oldest in self.pending.values():  # the first is the oldest: asked after every input
            return oldest.deadline_ns if oldest.deadline_ns < deadline else deadline
        return deadline

    # --- the asking side --------------------------------------------------------------

    def forward(self, client: str, cost: int, owner: str, now_ns: int) -> int:
        """Queue a check for ``owner``; returns its ticket."""
        ticket = self._life << SEQ_BITS | self._seq
        self._seq = (self._seq + 1) & _SEQ_MASK
        self.pending[ticket] = PendingCheck(client, cost, owner, now_ns, now_ns + self.timeout_ns())
        self._queue(ticket, client, cost, owner, now_ns)
        return ticket

    def lost_in_transit(self, request: PendingCheck) -> bool:
        """Whether a check that timed out was lost rather than its owner gone: the owner
        answered after the check left (so it is reachable and was not silent), promptly (not
        ``owner_slow``), and the check was not sent twice yet. Such a check is sent again
        (``retry``) before anything is decided: the owner de-duplicates request ids, so a
        check it did count is answered from its cache, never counted twice -- unless the
        owner is alive anew since (``revived``)."""
        owner = request.owner
        return (
            not request.retried
            and self._replied_at.get(owner, -1) >= request.sent_ns
            and self._revived_at.get(owner, -1) < request.sent_ns
        )

    def revived(self, owner: str, now_ns: int) -> None:
        """``owner`` is alive anew (new, back, restarted, or refuting at a new incarnation):
        a check sent it before is not sent again, since a new life's cache cannot tell
        that it was counted (fuzz seed 9292028142: a check decided by the life killed
        after, and again by the one restarted at once). Kept per member (bounded by them)."""
        self._revived_at[owner] = now_ns

    def retry(self, ticket: int, request: PendingCheck, now_ns: int) -> None:
        """Send a timed-out check (``expire``) once more under the same ticket, from now
        (round trips, silence and lateness are measured from this sending): an answer to
        either sending resolves it, the other is not pending."""
        request.retried = True
        request.sent_ns, request.deadline_ns = now_ns, now_ns + self.timeout_ns()
        self.pending[ticket] = request  # at the end: the latest deadline
        self._stats["forward_retries"] += 1
        self._queue(ticket, request.client, request.cost, request.owner, now_ns)

    def _queue(self, ticket: int, client: str, cost: int, owner: str, now_ns: int) -> None:
        """Put a pending check in its owner's batch."""
        self._per_owner[owner] += 1
        batch = self._batches.setdefault(owner, [])
        batch.append((ticket, client, cost))
        if len(batch) == 1 and self._batch_due_ns == _NEVER:
            self._batch_due_ns = now_ns + self._config.batch_window_ns
        # A check costs its id plus at most ~20 bytes of framing (ticket, cost, array
        # header): send as soon as the next one might not fit one datagram.
        size = self._batch_bytes.get(owner, 0) + len(client.encode()) + CHECK_OVERHEAD_BYTES
        if size + MAX_CHECK_BYTES > self._link.message_budget:
            self._flush_batch(owner)
        else:
            self._batch_bytes[owner] = size

    def flush_due(self, now_ns: int) -> None:
        """Send the batches if their window has closed."""
        if now_ns >= self._batch_due_ns:
            self.flush()

    def flush(self) -> None:
        """Send every batch now."""
        for owner in list(self._batches):
            self._flush_batch(owner)
        self._batch_due_ns = _NEVER

    def _flush_batch(self, owner: str) -> None:
        self._batch_bytes.pop(owner, None)
        batch = self._batches.pop(owner, None)
        if batch:
            self._stats["batches_sent"] += 1
            self._stats["batched_checks"] += len(batch)
            self._link.send(owner, CheckBatch(tuple(batch)))
        if not self._batches:
            self._batch_due_ns = _NEVER

    def expire(self, now_ns: int) -> list[tuple[int, PendingCheck]]:
        """Remove and return, oldest first, the checks whose owner did not answer in time."""
        expired = []
        while self.pending:
            ticket, pending = next(iter(self.pending.items()))
            if pending.deadline_ns > now_ns:
                break
            del self.pending[ticket]
            self._release(pending.owner)
            self._stats["forward_timeouts"] += 1
            expired.append((ticket, pending))
        return expired

    def gave_up(self, ticket: int, request: PendingCheck, *, admitted: bool) -> None:
        """The node answered ``ticket`` itself after it timed out (``admitted``: counted in
        its own slot): a reply the owner sends later is late, and is counted as such."""
        self._timed_out[ticket] = (request.owner, admitted, request.sent_ns)
        if len(self._timed_out) > self._config.max_pending:
            self._timed_out.popitem(last=False)

    def resolve(
        self, sender: str, message: ReplyBatch, now_ns: int, window_of: WindowOf | None = None
    ) -> list[Decided]:
        """The owner's answers: the checks they decide (replies from others are ignored).
        ``window_of`` names each decision's window (a reply carries none, see ``WindowOf``)."""
        decided = []
        slow_ns = self._config.forward_timeout_ns // 2
        if message.results:
            self._replied(sender, now_ns)
        for result in message.results:
            pending = self.pending.get(result.request_id)
            if pending is None or pending.owner != sender:
                self._not_pending(sender, result, now_ns)
                continue
            rtt_ns = now_ns - pending.sent_ns
            self._sample_rtt(rtt_ns)
            if rtt_ns >= slow_ns:
                self._replied_slowly(sender, now_ns)
            del self.pending[result.request_id]
            self._release(sender)
            retry_ns = -1 if result.retry_after_ms < 0 else result.retry_after_ms * 1_000_000
            reset_ns = result.reset_after_ms * 1_000_000
            window_ns = (
                0 if window_of is None else window_of(pending.client, result.limit, reset_ns)
            )
            decision = make_decision(
                result.allowed,
                result.limit,
                result.remaining,
                reset_ns,
                retry_ns,
                "forwarded",
                window_ns=window_ns,
            )
            self._stats[_ALLOWED if result.allowed else _REFUSED] += 1
            decided.append(decided_event(result.request_id, pending.client, decision))
        return decided

    def _not_pending(self, sender: str, result: CheckResult, now_ns: int) -> None:
        """A reply to no pending check: never a second answer, never a count here. A late
        one (the check timed out here) is counted, and so is a check thereby counted twice
        (the owner admitted it, and so did this node's degraded quota); anything else is a
        duplicate or a foreign reply."""
        gave_up = self._timed_out.get(result.request_id)
        if gave_up is None or gave_up[0] != sender:
            self._stats["unexpected_replies"] += 1
            return
        del self._timed_out[result.request_id]
        self._sample_rtt(now_ns - gave_up[2])  # late, but a round trip all the same
        self._replied_slowly(sender, now_ns)
        self._stats["late_replies"] += 1
        if result.allowed and gave_up[1]:
            self._stats["late_replies_counted_twice"] += 1

    # --- the owner's side -------------------------------------------------------------

    def answer(
        self, sender: str, reply_to: Address, message: CheckBatch, wall: int, decide: Decide
    ) -> None:
        """Decide a batch forwarded by ``sender`` (each request id once) and reply to the
        address it came from (a node that has just restarted may not know it yet)."""
        results = []
        life, seen = -1, _NO_ANSWERS  # replaced at the first check: no id has life -1
        for request_id, client, cost in message.checks:
            if request_id >> SEQ_BITS != life:  # a batch holds one life: looked up once
                life = request_id >> SEQ_BITS
                seen = self._answers_of(sender, life)
            cached = seen.get(request_id)
            if cached is not None:
                self._stats["duplicate_checks"] += 1
                results.append(cached)
                continue
            decision = decide(client, cost, wall, "forwarded")
            result = check_result(
                request_id,
                decision.allowed,
                decision.limit,
                decision.remaining,
                int(decision.reset_after * 1000),
                # Rounded up to whole milliseconds: a wait under 1 ms told as 0 sends the
                # client back before it can be admitted (a float's last bit is no wait).
                -1 if decision.retry_after == _INF else ceil(decision.retry_after * 1000 - 1e-6),
            )
            seen[request_id] = result
            if len(seen) > self._config.dedup_per_peer:
                seen.popitem(last=False)
            results.append(result)
        self._link.send_to(reply_to, ReplyBatch(tuple(results)))

    def _answers_of(self, sender: str, life: int) -> OrderedDict[int, CheckResult]:
        """The answers given to one life of ``sender`` (a new life starts empty)."""
        key = (sender, life)
        seen = self._dedup.get(key)
        if seen is None:
            seen = self._dedup[key] = OrderedDict()
            if len(self._dedup) > self._config.membership.max_members:
                self._dedup.popitem(last=False)
        else:
            self._dedup.move_to_end(key)
        return seen
