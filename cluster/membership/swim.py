"""SWIM membership as a sans-IO state machine, after hashicorp/memberlist.

Theory of operation. Every member is ALIVE, SUSPECT, DEAD or LEFT at some incarnation;
:mod:`~meshlimit.cluster.membership.members` holds the table and the rules by which news
about a member merges into it (a higher incarnation wins, then the more severe state). Only
a member raises its own incarnation: to refute a suspicion or death about itself, and to
leave.

Failure detection runs in probe rounds. Every ``probe_interval_ns`` the next member of a
shuffled round-robin order gets a Ping; with no Ack after ``probe_timeout_ns``,
``indirect_checks`` alive members are asked to probe it (PingReq, IndirectAck); with no
answer by the end of the interval it becomes SUSPECT, unless this node was itself stalled
meanwhile (a tick more than half a probe timeout late: an ack may have sat unread), which
makes the probe inconclusive (``probes_inconclusive``, at most ``awareness_max`` in a row)
and raises the node's Lifeguard awareness score, widening its next waits: a slow node
refutes, it does not accuse. A suspicion turns DEAD when its Lifeguard timer runs out,
``suspicion_max_mult`` base timeouts shrinking towards one as members confirm it
(:mod:`~meshlimit.cluster.membership.suspicion`).

News spreads by piggybacking on outgoing datagrams (:meth:`Membership.piggyback`), each
update ``retransmit_limit(n)`` times, least-sent first (``broadcasts``); a gossip timer
pushes pending news when there is no other traffic. Gossip may miss a member; three repairs
follow. Join is a state transfer (a seed adds the joiner and answers with every member it
knows; only such a reply makes a node joined), and a member sends one to a stranger that
pings it by name, so whoever a gossip round missed learns the news within a probe round.
Push-pull repeats the Join now and then (a lost seed, a reaped member we still count, or a
random member), so two sides that declared each other dead during a partition merge again.
A member we hold DEAD that still pings is told so, and refutes.

Reaped dead members stay in the :mod:`~meshlimit.cluster.membership.roster` and count in
:meth:`Membership.quorum` until they come back, are forgotten or ``forget_after_ns`` passes;
a join reply carries the roster (and the joiner's earlier life, if any, see ``members``).
One back from the dead in news alone counts as live in the quorum only once it acks a ping
of ours (``MemberTable.unconfirmed``: the news may have crossed a one-way cut).

Sans-IO: ``now_ns`` comes with every entry point, randomness is the injected
``random.Random``; outputs are ``(address, message)`` pairs; garbage is dropped, counted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from meshlimit.cluster.membership.awareness import Awareness
from meshlimit.cluster.membership.broadcasts import BroadcastQueue
from meshlimit.cluster.membership.members import (
    ALIVE,
    DEAD,
    LEFT,
    LIVE,
    MAX_INCARNATION,
    SUSPECT,
    Member,
    MemberEvent,
    MemberTable,
    is_addr,
    is_int,
    is_node,
    is_valid_update,
    update_of,
)
from meshlimit.cluster.membership.probes import (
    Confirmations,
    PeerClocks,
    Probe,
    ProbeOrder,
    Relay,
    Relays,
)
from meshlimit.cluster.membership.roster import Roster
from meshlimit.cluster.membership.timing import (
    NEVER,
    MembershipConfig,
    join_retry_delay_ns,
    retransmit_limit,
)
from meshlimit.cluster.wire.messages import (
    Ack,
    Address,
    IndirectAck,
    Join,
    JoinReply,
    MemberUpdate,
    Message,
    Ping,
    PingReq,
)

if TYPE_CHECKING:
    import random


Outputs = list[tuple[Address, Message]]

_VALID: dict[type, Callable[[Any], bool]] = {
    Ping: lambda m: is_int(m.seq) and is_node(m.target) and is_int(m.sent_ns),
    Ack: lambda m: is_int(m.seq) and is_int(m.echo_ns) and is_int(m.responder_ns),
    PingReq: lambda m: is_int(m.seq) and is_node(m.target) and is_addr(m.target_addr),
    IndirectAck: lambda m: is_int(m.seq) and is_node(m.target),
    MemberUpdate: is_valid_update,
    Join: lambda m: (
        is_node(m.node) and is_addr(m.addr) and is_int(m.incarnation, 0, MAX_INCARNATION + 1)
    ),
    JoinReply: lambda m: type(m.members) is tuple,
}
"""Validation of each membership message from a peer (the codec checks too)."""


class Membership:
    """One node's view of the cluster: feed it messages and ticks, send what it returns."""

    def __init__(
        self,
        node_id: str,
        addr: Address,
        config: MembershipConfig,
        rng: random.Random,
        *,
        now_ns: int,
        incarnation: int = 0,
    ) -> None:
        assert is_node(node_id) and is_addr(addr), "bad node id or address"
        self.node_id = node_id
        self.addr = addr
        self.config = config
        self.dropped: Counter[str] = Counter()
        """Peer garbage and overflows, by reason: for metrics."""
        self.stats: Counter[str] = Counter()
        """Protocol activity (probes, indirect acks, suspicions, refutations...): for metrics."""
        self._rng = rng
        self._queue = BroadcastQueue(config.max_broadcasts, self.dropped)
        self._probe_order = ProbeOrder(rng)
        self._roster = Roster(config, queue=self._queue, stats=self.stats, dropped=self.dropped)
        self._awareness = Awareness(config.awareness_max, self.stats)
        self._table = MemberTable(
            node_id,
            addr,
            config,
            now_ns=now_ns,
            incarnation=incarnation,
            queue=self._queue,
            roster=self._roster,
            stats=self.stats,
            dropped=self.dropped,
            on_live=self._probe_order.schedule,
            awareness=self._awareness,
        )
        self._self = self._table.me
        self._members = self._table.members  # the table's dict, never rebound
        self._relays = Relays(config.max_relays)
        self._probe: Probe | None = None
        self._seq = 0
        self._clocks, self._confirming = PeerClocks(), Confirmations(self._table)
        self.wall_offset_ns = 0
        """Wall clock minus the ``now_ns`` clock, set by the driver: probes carry wall time
        (to measure clock offsets); timeouts run on ``now_ns`` and survive wall jumps."""
        self._seeds: tuple[Address, ...] = ()
        self._quorum: tuple[int, tuple[str, ...]] = (-1, ())  # (generation, members)
        self._joined = True
        self._join_at = NEVER
        self._join_attempts = 0
        self._stranger_join_at = now_ns
        self._next_probe_at = now_ns + rng.randrange(config.probe_interval_ns)  # no lockstep
        self._gossip_at = now_ns
        self._push_pull_at = now_ns + config.push_pull_interval_ns
        #: next_deadline's answer until an entry point that may move a timer runs; ``changes``
        #: counts those (but piggyback): while it stands, so do states, table and events.
        self._deadline: int | None = None
        self.changes = 0
        self._handlers: dict[type, Callable[[str, Address, Any, int], Outputs]] = {
            Ping: self._on_ping, Ack: self._on_ack, PingReq: self._on_ping_req,
            IndirectAck: self._on_indirect_ack, MemberUpdate: self._on_update,
            Join: self._on_join, JoinReply: self._on_join_reply,
        }  # fmt: skip

    # -- queries ---------------------------------------------------------------------------

    @property
    def incarnation(self) -> int:
        return self._self.incarnation

    @property
    def joined(self) -> bool:
        """True once a seed answered (or any member spoke to us), or if there were no seeds."""
        return self._joined

    @property
    def earlier_life(self) -> bool:
        """A join reply named an earlier life of ours: we announced a new one above it."""
        return self._table.earlier_life

    def announce(self, nodes: Sequence[str]) -> Outputs:
        """Our own record, straight to ``nodes``: a new life is known within one delay."""
        me = update_of(self._self)
        return [(m.addr, me) for n in nodes if (m := self._members.get(n)) is not None]

    def members(self) -> list[Member]:
        return [replace(m) for m in self._members.values()]

    def alive_nodes(self) -> list[str]:
        """ALIVE and SUSPECT members, self included, sorted: the ring is built from these."""
        return sorted(n for n, m in self._members.items() if m.state in LIVE)

    @property
    def size(self) -> int:
        """Members in the table, self and the dead not yet reaped included."""
        return len(self._members)

    @property
    def seeds(self) -> tuple[Address, ...]:
        """The distinct seed addresses given to :meth:`join`, our own left out."""
        return self._seeds

    @property
    def generation(self) -> int:
        """Changes whenever a member's state, the table or the roster changes: whatever the
        node derives from membership (ring, reachability, quorum) may then have changed."""
        return self._table.generation + self._roster.generation

    def quorum(self) -> tuple[str, ...]:
        """The members a majority is taken of, sorted: every member not gone (left or
        forgotten), self and the dead included, and the reaped dead the roster remembers."""
        generation = self.generation
        if self._quorum[0] != generation:
            kept = [n for n, m in self._members.items() if m.state != LEFT]
            self._quorum = (generation, tuple(sorted(kept + self._roster.counted())))
        return self._quorum[1]

    @property
    def unconfirmed(self) -> tuple[set[str], set[str]]:
        """Members not live for a majority until they ack us, and the newcomers (``MemberTable``)."""
        return self._table.unconfirmed, self._table.newcomers

    def remembered(self) -> list[MemberUpdate]:
        return self._roster.updates()  # reaped members still counted (DEAD), tombstones (LEFT)

    @property
    def local_health(self) -> int:
        """Lifeguard's score: 0 when healthy, higher while this node seems slow itself."""
        return self._awareness.score

    def is_suspect(self, node: str) -> bool:
        return (m := self._members.get(node)) is not None and m.state == SUSPECT

    def addr_of(self, node: str) -> Address | None:
        m = self._members.get(node)
        return None if m is None else m.addr

    def clock_offsets(self) -> dict[str, int]:
        """Smoothed estimate, per member, of its wall clock minus ours, in ns."""
        return dict(self._clocks.offsets)

    def rtts(self) -> dict[str, int]:
        """Smoothed round-trip time of direct probes, per member, in ns."""
        return dict(self._clocks.rtts)

    def drain_events(self) -> list[MemberEvent]:
        events = list(self._table.events)
        self._table.events.clear()
        return events

    # -- verbs -----------------------------------------------------------------------------

    def join(self, seeds: Sequence[Address], *, now_ns: int) -> Outputs:
        """Ask each seed for the membership, again with backoff until one answers."""
        self._deadline, self.changes = None, self.changes + 1
        unique = dict.fromkeys((host, port) for host, port in seeds if (host, port) != self.addr)
        self._seeds = tuple(unique)
        self._joined = not self._seeds
        self._join_attempts = 1
        self._join_at = now_ns + join_retry_delay_ns(1, self.config.probe_interval_ns)
        if self._seeds:
            self._queue.push(update_of(self._self))  # announce ourselves, as memberlist does
        return self._joins_to(self._seeds)

    def leave(self, *, now_ns: int) -> Outputs:
        """Leave gracefully: LEFT at a higher incarnation, told to a few members directly."""
        self._deadline, self.changes = None, self.changes + 1
        if self._self.state == LEFT:
            return []
        update = self._table.leave(now_ns)
        self._probe = None
        return [(self._members[n].addr, update) for n in self._pick(self.config.gossip_fanout)]

    def forget(self, node: str, *, now_ns: int) -> str:
        """An operator says ``node`` is gone for good: it stops counting toward the cluster's
        size at once, here, and wherever the news (LEFT at a higher incarnation) spreads; a
        member in fact alive refutes. Returns ``forgotten``; or, changing nothing,
        ``unknown``, ``gone`` (left or forgotten already), ``alive`` (stop it first), ``self``."""
        self._deadline, self.changes = None, self.changes + 1
        if node == self.node_id:
            return "self"
        m = self._members.get(node)
        if m is None:
            if self._roster.forget(node, now_ns) is not None:
                return "forgotten"
            return "gone" if self._roster.get(node) is not None else "unknown"
        if m.state == LEFT:
            return "gone"
        if m.state == ALIVE:
            return "alive"
        left = MemberUpdate(m.node, m.addr, LEFT, min(m.incarnation + 1, MAX_INCARNATION))
        self._table.change(m, left, self.node_id, now_ns)
        self.stats["forgotten"] += 1
        return "forgotten"

    def piggyback(self, max_count: int | None = None) -> list[MemberUpdate]:
        """Updates to attach to one outgoing datagram; each call counts as one transmission."""
        if not self._queue.pending:
            return []
        self._deadline = None  # the queue may empty: no gossip timer then
        count = self.config.max_piggyback if max_count is None else max_count
        return self._queue.take(count, retransmit_limit(self.config, self._table.live_count))

    def handle(self, sender: str, sender_addr: Address, msg: object, *, now_ns: int) -> Outputs:
        """Take one message from ``sender``; return the messages to send in answer."""
        handler = self._handlers.get(type(msg))
        if handler is None:
            return []  # not a membership message
        self._deadline, self.changes = None, self.changes + 1
        if not (is_node(sender) and is_addr(sender_addr)):
            self.dropped["bad_sender"] += 1
            return []
        if sender == self.node_id:
            self.dropped["from_self"] += 1
            return []
        if not _VALID[type(msg)](msg):
            self.dropped[f"bad_{type(msg).__name__}"] += 1
            return []
        out = [] if self._joined else self._joining(sender, sender_addr, msg, now_ns)
        out += handler(sender, sender_addr, msg, now_ns)
        out += self._tell_the_dead(sender, sender_addr, msg)
        return out + self._meet_stranger(sender, sender_addr, msg, now_ns)

    def tick(self, *, now_ns: int) -> Outputs:
        """Do whatever is due: probes, indirect probes, suspicion timeouts, gossip, reaping."""
        # Stalls are judged on the probe deadline (the gossip one lags while there is no news).
        late = self.config.probe_timeout_ns // 2
        if now_ns < self.next_deadline() and now_ns - self._next_probe_at < late:
            if self._relays:  # nothing due, no stall (the node ticks for its own timers)
                self._relays.expire(now_ns)
            return []
        self._deadline, self.changes = None, self.changes + 1  # timers, states may move
        out: Outputs = []
        self._awareness.note_tick(now_ns, min(self._next_probe_at, now_ns), late)
        if self._self.state != LEFT:
            out += self._retry_join(now_ns)
            out += self._indirect_probe(now_ns)
            if now_ns >= self._next_probe_at:
                out += self._probe_step(now_ns)
                out += self._confirming.pings(now_ns + self.wall_offset_ns, self._next_seq)
            self._table.expire_suspicions(now_ns)
            out += self._push_pull(now_ns)
        self._roster.expire(now_ns)  # before gossip: forgetting is news to send
        out += self._gossip(now_ns)
        for node in self._table.reap(now_ns):
            self._clocks.forget(node)
        self._relays.expire(now_ns)
        return out

    def next_deadline(self) -> int:
        """The earliest ``now_ns`` at which :meth:`tick` has work."""
        if self._deadline is None:
            self._deadline = self._next_deadline()
        return self._deadline

    def _next_deadline(self) -> int:
        times = [self._gossip_at if self._queue.pending else NEVER]
        times += [self._table.reap_at, self._roster.expires_at]
        if self._self.state != LEFT:
            times += [self._next_probe_at, self._push_pull_at]
            times += [s.deadline for s in self._table.suspicions.values()]
            p = self._probe
            if p is not None and not p.acked and not p.indirect_sent:
                times.append(p.indirect_at)
            if not self._joined:
                times.append(self._join_at)
        return min(times)

    # -- handlers (dispatch) ---------------------------------------------------------------

    def _on_ping(self, sender: str, addr: Address, msg: Ping, now: int) -> Outputs:
        if msg.target != self.node_id:
            self.dropped["ping_wrong_target"] += 1  # a previous owner of our address
            return []
        return [(addr, Ack(msg.seq, msg.sent_ns, now + self.wall_offset_ns))]

    def _on_ack(self, sender: str, addr: Address, msg: Ack, now: int) -> Outputs:
        p = self._probe
        if p is not None and msg.seq == p.seq and sender == p.target:
            if not p.acked:
                p.acked = True
                self._measure(sender, p.sent_ns, msg, now)
                self._table.acked(sender)
            return []
        if self._confirming.acked(msg.seq, sender):
            return []
        relay = self._relays.take(msg.seq, sender)
        if relay is None:
            self.stats["late_acks"] += 1
            return []
        self._measure(sender, relay.sent_ns, msg, now)
        return [(relay.requester, IndirectAck(relay.requester_seq, relay.target))]

    def _on_ping_req(self, sender: str, addr: Address, msg: PingReq, now: int) -> Outputs:
        if msg.target == self.node_id:
            return [(addr, IndirectAck(msg.seq, msg.target))]
        if sender not in self._members:
            self.dropped["ping_req_from_stranger"] += 1  # no probing on a stranger's behalf
            return []
        if not self._relays.room(now):
            self.dropped["relay_overflow"] += 1
            return []
        seq = self._next_seq()
        expires = now + self.config.probe_timeout_ns
        self._relays.by_seq[seq] = Relay(addr, msg.seq, msg.target, now, expires)
        self.stats["relayed_probes"] += 1
        return [(msg.target_addr, Ping(seq, msg.target, now + self.wall_offset_ns))]

    def _on_indirect_ack(self, sender: str, addr: Address, msg: IndirectAck, now: int) -> Outputs:
        p = self._probe
        if p is not None and msg.seq == p.seq and msg.target == p.target and not p.acked:
            p.acked = True
            self.stats["indirect_acks"] += 1
        return []

    def _on_update(self, sender: str, addr: Address, msg: MemberUpdate, now: int) -> Outputs:
        self._table.apply(msg, sender, now)
        return []

    def _on_join(self, sender: str, addr: Address, msg: Join, now: int) -> Outputs:
        if msg.node != sender:
            self.dropped["join_sender_mismatch"] += 1
            return []
        known = self._members.get(msg.node)
        before = update_of(known) if known is not None else self._roster.get(msg.node)
        self._table.apply(MemberUpdate(msg.node, msg.addr, ALIVE, msg.incarnation), sender, now)
        return [(addr, self._table.join_reply(msg.node, before, self._roster.updates()))]

    def _on_join_reply(self, sender: str, addr: Address, msg: JoinReply, now: int) -> Outputs:
        fresh = self._table.fresh  # a fresh life confirms at once what it learns
        for update in msg.members[: self.config.max_members]:
            if is_valid_update(update):
                self._table.apply(update, sender, now, transfer=True)
            else:
                self.dropped["bad_MemberUpdate"] += 1
        self._table.fresh = False  # later replies name this life, not an earlier one
        self.dropped["join_reply_overflow"] += max(0, len(msg.members) - self.config.max_members)
        out: Outputs = list(self._table.take_rumoured_dead())
        if fresh:
            out += self._confirming.pings(now + self.wall_offset_ns, self._next_seq)
        return out

    def _tell_the_dead(self, sender: str, addr: Address, msg: object) -> Outputs:
        """A member we hold DEAD (or still count, or forgot) probes: tell it, so it can
        refute (memberlist's gossip to the dead, driven by its own traffic)."""
        if type(msg) not in (Ping, PingReq):
            return []
        m = self._members.get(sender)
        if m is not None:
            return [(addr, update_of(m))] if m.state == DEAD else []
        news = self._roster.get(sender)  # reaped while dead, or forgotten: tell it too
        return [] if news is None else [(addr, news)]

    def _meet_stranger(self, sender: str, addr: Address, msg: object, now: int) -> Outputs:
        is_ping = type(msg) is Ping and msg.target == self.node_id
        return self.meet_stranger(sender, addr, now) if is_ping else []

    def _joining(self, sender: str, addr: Address, msg: object, now: int) -> Outputs:
        """Joined only by a join reply (a peer's whole view, roster included). A member that
        speaks to us first (our seeds down, or their answer lost) is asked for one, at most
        once a probe interval: what we heard of is not the cluster (long seed 6000047)."""
        if type(msg) is JoinReply:
            self._joined = True
        elif sender in self._members and now >= self._stranger_join_at:
            self._stranger_join_at = now + self.config.probe_interval_ns
            return self._joins_to([addr])
        return []

    def meet_stranger(self, sender: str, addr: Address, now: int) -> Outputs:
        """A stranger that pings us by name, or asks us as an owner, is a member whose news
        we missed (or we are a new life): a Join to it, at most once a probe interval."""
        if sender in self._members or now < self._stranger_join_at:
            return []
        self._stranger_join_at = now + self.config.probe_interval_ns
        self.stats["stranger_joins"] += 1
        return self._joins_to([addr])

    # -- timers ----------------------------------------------------------------------------

    def _retry_join(self, now: int) -> Outputs:
        if self._joined or now < self._join_at:
            return []
        self._join_attempts += 1
        self._join_at = now + join_retry_delay_ns(
            self._join_attempts, self.config.probe_interval_ns
        )
        return self._joins_to(self._seeds)

    def _joins_to(self, addrs: Sequence[Address]) -> Outputs:
        join = Join(self.node_id, self.addr, self._self.incarnation)
        return [(a, join) for a in addrs]

    def _probe_step(self, now: int) -> Outputs:
        self._finish_probe(now)
        self._next_probe_at = now + self.config.probe_interval_ns
        target = self._probe_order.next_target(self._members, self.node_id)
        if target is None:
            return []
        m = self._members[target]
        seq = self._next_seq()
        config = self.config
        wait = self._awareness.probe_timeout_ns(config.probe_timeout_ns, config.probe_interval_ns)
        self._probe = Probe(seq, target, m.addr, now, now + wait)
        self.stats["probes"] += 1
        out: Outputs = [(m.addr, Ping(seq, target, now + self.wall_offset_ns))]
        if m.state == SUSPECT:
            out.append((m.addr, update_of(m)))  # Lifeguard's buddy system: tell the suspect
        return out

    def _finish_probe(self, now: int) -> None:
        p, self._probe = self._probe, None
        if p is None:
            return
        if p.acked:
            self._awareness.probe_answered()
            return
        m = self._members.get(p.target)
        if m is None or m.state not in LIVE:
            return
        if self._awareness.excuses(p.sent_ns):
            return  # this node stalled while it waited: no accusation
        self.stats["failed_probes"] += 1
        if m.state == ALIVE:
            suspect = MemberUpdate(m.node, m.addr, SUSPECT, m.incarnation)
            self._table.change(m, suspect, self.node_id, now)
        else:
            self._table.confirm(m.node, self.node_id)

    def _indirect_probe(self, now: int) -> Outputs:
        p = self._probe
        if p is None or p.acked or p.indirect_sent or now < p.indirect_at:
            return []
        p.indirect_sent = True
        helpers = self._pick(self.config.indirect_checks, exclude=p.target, only_alive=True)
        self.stats["indirect_probes"] += 1
        req = PingReq(p.seq, p.target, p.addr)
        return [(self._members[n].addr, req) for n in helpers]

    def _push_pull(self, now: int) -> Outputs:
        if now < self._push_pull_at:
            return []
        self._push_pull_at = now + self.config.push_pull_interval_ns
        live = {m.addr for m in self._members.values() if m.state in LIVE}
        asked = dict.fromkeys([*self._seeds, *self._roster.addresses()])
        lost = [a for a in asked if a not in live and a != self.addr]
        if lost:
            return self._joins_to([self._rng.choice(lost)])
        return self._joins_to([self._members[n].addr for n in self._pick(1)])

    def _gossip(self, now: int) -> Outputs:
        if now < self._gossip_at or not self._queue:
            return []
        self._gossip_at = now + self.config.gossip_interval_ns
        out: Outputs = []
        for node in self._pick(self.config.gossip_fanout):
            addr = self._members[node].addr
            out += [(addr, u) for u in self.piggyback()]
        return out

    # -- helpers ---------------------------------------------------------------------------

    def _pick(self, k: int, exclude: str = "", only_alive: bool = False) -> list[str]:
        """Up to ``k`` random live members other than self and ``exclude``."""
        states = (ALIVE,) if only_alive else LIVE
        members = self._members.items()
        pool = [n for n, m in members if m.state in states and n not in (self.node_id, exclude)]
        return self._rng.sample(pool, min(k, len(pool)))

    def _measure(self, node: str, sent_ns: int, ack: Ack, now: int) -> None:
        known = node in self._members
        if not self._clocks.measure(node, ack, sent_ns, now, self.wall_offset_ns, known=known):
            self.dropped["ack_echo_mismatch"] += 1  # not the probe we sent

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _check(self) -> None:
        """Assert the invariants (tests call this after every step)."""
        self._table._check()
        self._roster._check()
        assert len(self._relays.by_seq) <= self.config.max_relays
        assert self._deadline in (None, self._next_deadline()), "stale next_deadline"
        clocks = self._clocks
        assert set(clocks.rtts) <= set(self._members) and set(clocks.offsets) <= set(self._members)
        self._queue._check()
