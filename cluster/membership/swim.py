"""SWIM membership as a sans-IO state machine, after hashicorp/memberlist.

Theory of operation. Every member is ALIVE, SUSPECT, DEAD or LEFT at some
incarnation. News about a member is a :class:`MemberUpdate`; a higher incarnation
wins and, at equal incarnation, the more severe state wins, so updates merge in any
order and duplicates are harmless. Only a member raises its own incarnation: to
refute a suspicion or death about itself, and to leave.

Failure detection runs in probe rounds. Every ``probe_interval_ns`` the next member
of a shuffled round-robin order gets a Ping. With no Ack after ``probe_timeout_ns``,
``indirect_checks`` alive members are asked to probe it for us (PingReq, answered by
IndirectAck). With no answer by the end of the interval the target becomes SUSPECT.
A suspicion turns into DEAD when its Lifeguard timer runs out: the timer starts at
``suspicion_max_mult`` times the base timeout and shrinks towards the base as other
members confirm the suspicion (see :func:`lifeguard_timeout_ns`).

News spreads by piggybacking: the driver calls :meth:`Membership.piggyback` for every
outgoing datagram and attaches what it returns; each update goes out
``retransmit_limit(n)`` times, least-sent first. A gossip timer pushes pending news to
a few members when there is no other traffic. Gossip is probabilistic and may miss
a member; three repairs follow. Join is a state transfer (a seed adds the joiner and
answers with every member it knows), and a member sends one to a stranger that pings
it by name, so whoever a gossip round missed learns the news within a probe round.
Push-pull repeats the Join now and then, so two sides that declared each other dead
during a partition merge again. A member we hold DEAD that still pings is told so,
and refutes.

Nothing here reads a clock or a global random source. ``now_ns`` (wall clock,
nanoseconds) is passed to every entry point and serves both for durations and, in
Ping/Ack, for clock-skew estimates; a wall-clock step may spoil one RTT sample,
which the EWMA absorbs. Randomness comes from the injected ``random.Random``.
Outputs are ``(address, message)`` pairs; the driver may pack the pairs for one
address into one datagram. Garbage from peers is dropped and counted in ``dropped``.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from meshlimit.cluster.wire.messages import (
    Ack,
    Address,
    IndirectAck,
    Join,
    JoinReply,
    MemberState,
    MemberUpdate,
    Message,
    Ping,
    PingReq,
)
from sortedcontainers import SortedList

if TYPE_CHECKING:
    import random

_MS = 1_000_000
_S = 1_000_000_000
_ALIVE, _SUSPECT, _DEAD, _LEFT = (
    MemberState.ALIVE,
    MemberState.SUSPECT,
    MemberState.DEAD,
    MemberState.LEFT,
)
_LIVE = (_ALIVE, _SUSPECT)
_NEVER = 2**63 - 1  # next_deadline when nothing is scheduled
_MAX_INCARNATION = 2**63 - 2  # so that a refutation's +1 still fits the wire's u64
_MAX_NODE_CHARS = 256  # the codec is stricter (64 bytes); this only keeps memory bounded
_EWMA_SHIFT = 3  # RTT and clock-offset smoothing: alpha = 1/8, as TCP's SRTT

Outputs = list[tuple[Address, Message]]


@dataclass(frozen=True, slots=True)
class MembershipConfig:
    """Timing and bounds of the SWIM protocol. The defaults are the LAN preset."""

    probe_interval_ns: int = 1 * _S
    """Time between two probes. Why 1 s: memberlist's LAN value; cheap and detects in seconds."""
    probe_timeout_ns: int = 500 * _MS
    """Wait for a direct Ack before asking others to probe. Why 500 ms: far above a LAN RTT,
    and it leaves half the interval for the indirect probes."""
    indirect_checks: int = 3
    """Members asked to probe a silent target for us (SWIM's k). Why 3: memberlist's value;
    enough that one bad link does not cause a suspicion."""
    suspicion_mult: int = 2
    """Base suspicion timeout is ``suspicion_mult * max(1, log10(n)) * probe_interval``. Why 2
    (memberlist uses 4): a crash in a small LAN cluster is then declared dead within ~5 s
    (first probe + one interval + 2 s); Lifeguard's max guards against early verdicts."""
    suspicion_max_mult: int = 6
    """Lifeguard: an unconfirmed suspicion waits this many base timeouts. Why 6: memberlist's
    value; a lone, perhaps slow, accuser gives the suspect long enough to refute."""
    suspicion_confirmations: int = 2
    """Lifeguard's K: confirmations from other members that shrink the timeout to the base.
    Why 2: memberlist's ``suspicion_mult - 2`` for its default; capped at ``n - 3``."""
    retransmit_mult: int = 4
    """Each update is sent ``retransmit_mult * ceil(log10(n + 1))`` times. Why 4: memberlist's
    value; reaches every member with high probability."""
    gossip_interval_ns: int = 200 * _MS
    """Pending news is pushed to ``gossip_fanout`` members this often (only when there is
    news). Why 200 ms: memberlist's value; spreads news faster than probe traffic alone."""
    gossip_fanout: int = 3
    """Members each gossip round (and a graceful leave) sends to. Why 3: memberlist's value."""
    max_piggyback: int = 8
    """Most updates attached to one datagram. Why 8: about 400 bytes, under a third of the
    1,400-byte datagram budget, leaving room for the checks it carries."""
    push_pull_interval_ns: int = 30 * _S
    """Full-state exchange (a Join) with a seed we lost or a random member. Why 30 s:
    memberlist's value; heals partitions that outlived the gossip of their news."""
    dead_reap_ns: int = 30 * _S
    """How long dead and left members are remembered, so stale ALIVE gossip cannot resurrect
    them, before they are forgotten and the table stays bounded. Why 30 s: memberlist's
    GossipToTheDeadTime; far longer than news takes to die out (retransmit limit x gossip)."""
    max_members: int = 1024
    """Most members in the table; news of more is dropped and counted. Why 1024: far beyond a
    rate-limiting cluster, small enough that a flood of fake members costs little."""
    max_relays: int = 64
    """Most probes in flight on behalf of other members (PingReq). Why 64: a member gets
    about ``indirect_checks`` requests per interval; 64 survives a burst of them."""
    max_broadcasts: int = 1024
    """Most pending updates; beyond it the most-sent is dropped and counted. Why 1024: one per
    member already fits, since a newer update about a member replaces the older one."""

    def __post_init__(self) -> None:
        assert 0 < self.probe_timeout_ns < self.probe_interval_ns, "timeout must fit the interval"
        assert self.suspicion_mult >= 1 and self.suspicion_max_mult >= 1
        assert self.retransmit_mult >= 1 and self.max_piggyback >= 1
        assert self.max_members >= 1 and self.max_relays >= 0 and self.max_broadcasts >= 1

    @classmethod
    def lan(cls) -> MembershipConfig:
        """A data-centre LAN: 1 s probes, a crash declared dead within ~5 s in small clusters."""
        return cls()

    @classmethod
    def local(cls) -> MembershipConfig:
        """Loopback (demo, tests on one machine): five times faster than ``lan``."""
        return cls(
            probe_interval_ns=200 * _MS,
            probe_timeout_ns=100 * _MS,
            gossip_interval_ns=50 * _MS,
            push_pull_interval_ns=5 * _S,
            dead_reap_ns=10 * _S,
        )

    @classmethod
    def wan(cls) -> MembershipConfig:
        """Across data centres: memberlist's WAN timings, slower and more patient."""
        return cls(
            probe_interval_ns=5 * _S,
            probe_timeout_ns=3 * _S,
            suspicion_mult=6,
            suspicion_confirmations=4,
            gossip_interval_ns=500 * _MS,
            gossip_fanout=4,
            push_pull_interval_ns=60 * _S,
            dead_reap_ns=120 * _S,
        )

    @classmethod
    def sim(cls) -> MembershipConfig:
        """The simulator's preset: the LAN timings, so its findings hold for production."""
        return cls.lan()


# --- formulas ---------------------------------------------------------------------------


def suspicion_timeout_ns(config: MembershipConfig, n_members: int) -> int:
    """The base (minimum) suspicion timeout: ``mult * max(1, log10(n)) * probe_interval``."""
    scale = max(1.0, math.log10(max(1, n_members)))
    return int(config.suspicion_mult * scale * config.probe_interval_ns)


def retransmit_limit(config: MembershipConfig, n_members: int) -> int:
    """How often one update is sent: ``retransmit_mult * ceil(log10(n + 1))``.

    ``ceil(log10(n + 1))`` is the number of decimal digits of ``n`` (n >= 1), computed
    exactly without floats.
    """
    return config.retransmit_mult * len(str(max(1, n_members)))


def expected_confirmations(config: MembershipConfig, n_members: int) -> int:
    """Lifeguard's K for a cluster of ``n``: at most the members other than self, the
    suspect and the first accuser, who could confirm."""
    return max(0, min(config.suspicion_confirmations, n_members - 3))


def lifeguard_timeout_ns(min_ns: int, max_ns: int, expected: int, confirmed: int) -> int:
    """Suspicion timeout after ``confirmed`` of ``expected`` confirmations (Lifeguard):
    ``max - (max - min) * log(c + 1) / log(k + 1)``, never below ``min``."""
    if expected < 1 or confirmed >= expected:
        return min_ns
    frac = math.log(confirmed + 1) / math.log(expected + 1)
    return max(min_ns, int(max_ns - frac * (max_ns - min_ns)))


# --- values -----------------------------------------------------------------------------


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
    """A change in another member: new (``old_state`` None), state change or address change."""

    node: str
    addr: Address
    old_state: int | None
    new_state: int


@dataclass(slots=True)
class _Probe:
    seq: int
    target: str
    addr: Address
    sent_ns: int
    indirect_at: int
    acked: bool = False
    indirect_sent: bool = False


@dataclass(slots=True)
class _Relay:
    requester: Address
    requester_seq: int
    target: str
    sent_ns: int
    expires_at: int


@dataclass(slots=True)
class _Suspicion:
    started_ns: int
    min_ns: int
    max_ns: int
    expected: int
    confirmers: set[str] = field(default_factory=set)  # membership tests only, never iterated
    deadline: int = 0

    def confirm(self, node: str) -> None:
        if node in self.confirmers or len(self.confirmers) > self.expected:
            return
        self.confirmers.add(node)
        confirmed = len(self.confirmers) - 1  # the first accuser does not count (memberlist)
        timeout = lifeguard_timeout_ns(self.min_ns, self.max_ns, self.expected, confirmed)
        self.deadline = self.started_ns + timeout


class _Broadcasts:
    """Pending updates, one per node, least-sent then newest first. O(log q) per operation."""

    def __init__(self, cap: int, dropped: Counter[str]) -> None:
        self._cap = cap
        self._dropped = dropped
        self._order: SortedList = SortedList()  # (transmits, -generation, node)
        self._items: dict[str, tuple[MemberUpdate, int, int]] = {}  # node -> (update, tx, gen)
        self._generation = 0

    def __len__(self) -> int:
        return len(self._items)

    def push(self, update: MemberUpdate) -> None:
        old = self._items.pop(update.node, None)
        if old is not None:
            self._order.remove((old[1], -old[2], update.node))
        self._generation += 1
        self._items[update.node] = (update, 0, self._generation)
        self._order.add((0, -self._generation, update.node))
        if len(self._items) > self._cap:
            _, _, node = self._order.pop()  # the most-sent, oldest
            del self._items[node]
            self._dropped["broadcast_overflow"] += 1

    def take(self, count: int, limit: int) -> list[MemberUpdate]:
        chosen = list(self._order[:count])
        del self._order[:count]
        out = []
        for transmits, neg_gen, node in chosen:
            update, _, gen = self._items.pop(node)
            out.append(update)
            if transmits + 1 < limit:
                self._items[node] = (update, transmits + 1, gen)
                self._order.add((transmits + 1, neg_gen, node))
        return out

    def _check(self) -> None:
        assert len(self._order) == len(self._items) <= self._cap
        for transmits, neg_gen, node in self._order:
            assert self._items[node][1:] == (transmits, -neg_gen)


# --- validation of peer input (the codec checks too; this layer must not trust it) ---------


def _is_int(v: Any, lo: int = 0, hi: int = 2**64) -> bool:
    return type(v) is int and lo <= v < hi


def _is_node(v: Any) -> bool:
    return type(v) is str and 0 < len(v) <= _MAX_NODE_CHARS


def _is_addr(v: Any) -> bool:
    return (
        type(v) is tuple
        and len(v) == 2
        and type(v[0]) is str
        and 0 < len(v[0]) <= 255
        and _is_int(v[1], 0, 65536)
    )


def _valid_update(m: Any) -> bool:
    return (
        type(m) is MemberUpdate
        and _is_node(m.node)
        and _is_addr(m.addr)
        and m.state in MemberState.NAMES
        and type(m.state) is int
        and _is_int(m.incarnation, 0, _MAX_INCARNATION + 1)
    )


_VALID: dict[type, Callable[[Any], bool]] = {
    Ping: lambda m: _is_int(m.seq) and _is_node(m.target) and _is_int(m.sent_ns),
    Ack: lambda m: _is_int(m.seq) and _is_int(m.echo_ns) and _is_int(m.responder_ns),
    PingReq: lambda m: _is_int(m.seq) and _is_node(m.target) and _is_addr(m.target_addr),
    IndirectAck: lambda m: _is_int(m.seq) and _is_node(m.target),
    MemberUpdate: _valid_update,
    Join: lambda m: (
        _is_node(m.node) and _is_addr(m.addr) and _is_int(m.incarnation, 0, _MAX_INCARNATION + 1)
    ),
    JoinReply: lambda m: type(m.members) is tuple,
}


def _ewma(old: int | None, sample: int) -> int:
    return sample if old is None else old + ((sample - old) >> _EWMA_SHIFT)


def _update_of(m: Member) -> MemberUpdate:
    return MemberUpdate(m.node, m.addr, m.state, m.incarnation)


# --- the state machine ------------------------------------------------------------------


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
        assert _is_node(node_id) and _is_addr(addr), "bad node id or address"
        self.node_id = node_id
        self.addr = addr
        self.config = config
        self.dropped: Counter[str] = Counter()
        """Peer garbage and overflows, by reason: for metrics."""
        self.stats: Counter[str] = Counter()
        """Protocol activity (probes, indirect acks, suspicions, refutations...): for metrics."""
        self._rng = rng
        self._self = Member(node_id, addr, _ALIVE, incarnation, now_ns)
        self._members: dict[str, Member] = {node_id: self._self}
        self._queue = _Broadcasts(config.max_broadcasts, self.dropped)
        self._events: deque[MemberEvent] = deque()
        self._suspicions: dict[str, _Suspicion] = {}
        self._relays: dict[int, _Relay] = {}
        self._probe: _Probe | None = None
        self._order: list[str] = []
        self._order_index = 0
        self._seq = 0
        self._rtts: dict[str, int] = {}
        self._offsets: dict[str, int] = {}
        self.wall_offset_ns = 0
        """Wall clock minus the ``now_ns`` clock, set by the driver: probes carry wall
        time so offsets between nodes' wall clocks can be measured, while every
        timeout runs on ``now_ns`` (monotonic) and survives wall-clock jumps."""
        self._seeds: tuple[Address, ...] = ()
        self._joined = True
        self._join_at = _NEVER
        self._live_count = 1  # ALIVE and SUSPECT members, self included (n in the formulas)
        self._reap_at = _NEVER  # no earlier than the first dead or left member may be forgotten
        self._stranger_join_at = now_ns
        # Stagger the first probe so that nodes started together do not probe in lockstep.
        self._next_probe_at = now_ns + rng.randrange(config.probe_interval_ns)
        self._gossip_at = now_ns
        self._push_pull_at = now_ns + config.push_pull_interval_ns
        self._handlers: dict[type, Callable[[str, Address, Any, int], Outputs]] = {
            Ping: self._on_ping,
            Ack: self._on_ack,
            PingReq: self._on_ping_req,
            IndirectAck: self._on_indirect_ack,
            MemberUpdate: self._on_update,
            Join: self._on_join,
            JoinReply: self._on_join_reply,
        }

    # -- queries ---------------------------------------------------------------------------

    @property
    def incarnation(self) -> int:
        return self._self.incarnation

    @property
    def joined(self) -> bool:
        """True once a seed answered (or any member spoke to us), or if there were no seeds."""
        return self._joined

    @property
    def false_suspicions(self) -> int:
        """Suspicions later refuted: each is a member wrongly suspected (seen from here)."""
        return self.stats["false_suspicions"]

    def members(self) -> list[Member]:
        return [replace(m) for m in self._members.values()]

    def alive_nodes(self) -> list[str]:
        """ALIVE and SUSPECT members, self included, sorted: the ring is built from these."""
        return sorted(n for n, m in self._members.items() if m.state in _LIVE)

    @property
    def size(self) -> int:
        """Members in the table, self and the dead not yet forgotten included."""
        return len(self._members)

    def is_suspect(self, node: str) -> bool:
        m = self._members.get(node)
        return m is not None and m.state == _SUSPECT

    def addr_of(self, node: str) -> Address | None:
        m = self._members.get(node)
        return None if m is None else m.addr

    def clock_offsets(self) -> dict[str, int]:
        """Smoothed estimate, per member, of its wall clock minus ours, in ns."""
        return dict(self._offsets)

    def rtts(self) -> dict[str, int]:
        """Smoothed round-trip time of direct probes, per member, in ns."""
        return dict(self._rtts)

    def drain_events(self) -> list[MemberEvent]:
        events = list(self._events)
        self._events.clear()
        return events

    # -- verbs -----------------------------------------------------------------------------

    def join(self, seeds: Sequence[Address], *, now_ns: int) -> Outputs:
        """Ask each seed for the membership; retried every probe interval until answered."""
        self._seeds = tuple(dict.fromkeys(tuple(s) for s in seeds if tuple(s) != self.addr))
        self._joined = not self._seeds
        self._join_at = now_ns + self.config.probe_interval_ns
        if self._seeds:
            self._queue.push(_update_of(self._self))  # announce ourselves, as memberlist does
        return self._joins_to(self._seeds)

    def leave(self, *, now_ns: int) -> Outputs:
        """Leave gracefully: LEFT at a higher incarnation, told to a few members directly."""
        me = self._self
        if me.state == _LEFT:
            return []
        me.state, me.incarnation, me.state_changed_ns = _LEFT, me.incarnation + 1, now_ns
        self._live_count -= 1
        self._probe = None
        self._suspicions.clear()
        update = _update_of(me)
        self._queue.push(update)
        return [(self._members[n].addr, update) for n in self._pick(self.config.gossip_fanout)]

    def piggyback(self, max_count: int | None = None) -> list[MemberUpdate]:
        """Updates to attach to one outgoing datagram; each call counts as one transmission."""
        if not self._queue:
            return []
        count = self.config.max_piggyback if max_count is None else max_count
        return self._queue.take(count, retransmit_limit(self.config, self._n_live()))

    def handle(self, sender: str, sender_addr: Address, msg: object, *, now_ns: int) -> Outputs:
        """Take one message from ``sender``; return the messages to send in answer."""
        handler = self._handlers.get(type(msg))
        if handler is None:
            return []  # not a membership message
        if not (_is_node(sender) and _is_addr(sender_addr)):
            self.dropped["bad_sender"] += 1
            return []
        if sender == self.node_id:
            self.dropped["from_self"] += 1
            return []
        if not _VALID[type(msg)](msg):
            self.dropped[f"bad_{type(msg).__name__}"] += 1
            return []
        if not self._joined and (type(msg) is JoinReply or sender in self._members):
            self._joined = True
        out = handler(sender, sender_addr, msg, now_ns)
        out += self._tell_the_dead(sender, sender_addr, msg)
        return out + self._meet_stranger(sender, sender_addr, msg, now_ns)

    def tick(self, *, now_ns: int) -> Outputs:
        """Do whatever is due: probes, indirect probes, suspicion timeouts, gossip, reaping."""
        out: Outputs = []
        if self._self.state != _LEFT:
            out += self._retry_join(now_ns)
            out += self._indirect_probe(now_ns)
            if now_ns >= self._next_probe_at:
                out += self._probe_step(now_ns)
            self._expire_suspicions(now_ns)
            out += self._push_pull(now_ns)
        out += self._gossip(now_ns)
        self._reap(now_ns)
        self._expire_relays(now_ns)
        return out

    def next_deadline(self) -> int:
        """The earliest ``now_ns`` at which :meth:`tick` has work."""
        times = [self._gossip_at if self._queue else _NEVER]
        times.append(self._reap_at)
        if self._self.state != _LEFT:
            times += [self._next_probe_at, self._push_pull_at]
            times += [s.deadline for s in self._suspicions.values()]
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
            return []
        relay = self._relays.get(msg.seq)
        if relay is None or sender != relay.target:
            self.stats["late_acks"] += 1
            return []
        del self._relays[msg.seq]
        self._measure(sender, relay.sent_ns, msg, now)
        return [(relay.requester, IndirectAck(relay.requester_seq, relay.target))]

    def _on_ping_req(self, sender: str, addr: Address, msg: PingReq, now: int) -> Outputs:
        if msg.target == self.node_id:
            return [(addr, IndirectAck(msg.seq, msg.target))]
        if sender not in self._members:
            self.dropped["ping_req_from_stranger"] += 1  # no probing on a stranger's behalf
            return []
        self._expire_relays(now)
        if len(self._relays) >= self.config.max_relays:
            self.dropped["relay_overflow"] += 1
            return []
        seq = self._next_seq()
        self._relays[seq] = _Relay(
            addr, msg.seq, msg.target, now, now + self.config.probe_timeout_ns
        )
        self.stats["relayed_probes"] += 1
        return [(msg.target_addr, Ping(seq, msg.target, now + self.wall_offset_ns))]

    def _on_indirect_ack(self, sender: str, addr: Address, msg: IndirectAck, now: int) -> Outputs:
        p = self._probe
        if p is not None and msg.seq == p.seq and msg.target == p.target and not p.acked:
            p.acked = True
            self.stats["indirect_acks"] += 1
        return []

    def _on_update(self, sender: str, addr: Address, msg: MemberUpdate, now: int) -> Outputs:
        self._apply(msg, sender, now)
        return []

    def _on_join(self, sender: str, addr: Address, msg: Join, now: int) -> Outputs:
        if msg.node != sender:
            self.dropped["join_sender_mismatch"] += 1
            return []
        self._apply(MemberUpdate(msg.node, msg.addr, _ALIVE, msg.incarnation), sender, now)
        return [(addr, JoinReply(tuple(_update_of(m) for m in self._members.values())))]

    def _on_join_reply(self, sender: str, addr: Address, msg: JoinReply, now: int) -> Outputs:
        for update in msg.members[: self.config.max_members]:
            if _valid_update(update):
                self._apply(update, sender, now)
            else:
                self.dropped["bad_MemberUpdate"] += 1
        self.dropped["join_reply_overflow"] += max(0, len(msg.members) - self.config.max_members)
        return []

    def _tell_the_dead(self, sender: str, addr: Address, msg: object) -> Outputs:
        """A member we hold DEAD still probes: tell it, so it can refute (memberlist's
        gossip to the dead, driven by its own traffic)."""
        m = self._members.get(sender)
        if m is None or m.state != _DEAD or type(msg) not in (Ping, PingReq):
            return []
        return [(addr, _update_of(m))]

    def _meet_stranger(self, sender: str, addr: Address, msg: object, now: int) -> Outputs:
        """A stranger that probes us by name is a member whose news we missed: ask it for
        its state with a Join (a push-pull), at most once per probe interval. The Ping
        alone does not add it; its JoinReply does."""
        if type(msg) is not Ping or msg.target != self.node_id or sender in self._members:
            return []
        if now < self._stranger_join_at:
            return []
        self._stranger_join_at = now + self.config.probe_interval_ns
        self.stats["stranger_joins"] += 1
        return self._joins_to([addr])

    # -- applying news ---------------------------------------------------------------------

    def _apply(self, u: MemberUpdate, sender: str, now: int) -> None:
        if u.node == self.node_id:
            self._about_self(u)
            return
        m = self._members.get(u.node)
        if m is None:
            self._add(u, sender, now)
        elif u.incarnation > m.incarnation or (
            u.incarnation == m.incarnation and u.state > m.state
        ):
            self._set(m, u, sender, now)
        elif u.state == _SUSPECT and m.state == _SUSPECT and u.incarnation == m.incarnation:
            self._confirm(u.node, sender)

    def _about_self(self, u: MemberUpdate) -> None:
        me = self._self
        if me.state == _LEFT:
            return  # we are leaving: let the news of our departure win
        if u.incarnation < me.incarnation or (
            u.incarnation == me.incarnation and u.state == _ALIVE
        ):
            return
        me.incarnation = max(me.incarnation, u.incarnation) + 1
        self._queue.push(_update_of(me))
        self.stats["refutations"] += 1

    def _add(self, u: MemberUpdate, sender: str, now: int) -> None:
        if u.state not in _LIVE:
            return  # the death of a stranger: nothing to remember
        if len(self._members) >= self.config.max_members:
            self.dropped["members_full"] += 1
            return
        m = Member(u.node, u.addr, u.state, u.incarnation, now)
        self._members[u.node] = m
        self._live_count += 1
        self._schedule_probe(u.node)
        if u.state == _SUSPECT:
            self._start_suspicion(u.node, sender, now)
        self._queue.push(u)
        self._emit(m, None)

    def _set(self, m: Member, u: MemberUpdate, sender: str, now: int) -> None:
        old_state, old_addr = m.state, m.addr
        m.state, m.incarnation, m.addr = u.state, u.incarnation, u.addr
        self._queue.push(u)
        if u.state == _SUSPECT:
            if m.node in self._suspicions:
                self._confirm(m.node, sender)
            else:
                self._start_suspicion(m.node, sender, now)
        else:
            self._suspicions.pop(m.node, None)
        if old_state == _SUSPECT and u.state == _ALIVE:
            self.stats["false_suspicions"] += 1
        if old_state not in _LIVE and u.state in _LIVE:
            self._schedule_probe(m.node)
        if old_state != u.state:
            m.state_changed_ns = now
            self._live_count += (u.state in _LIVE) - (old_state in _LIVE)
        if u.state not in _LIVE:
            self._reap_at = min(self._reap_at, now + self.config.dead_reap_ns)
        if old_state != u.state or old_addr != u.addr:
            self._emit(m, old_state)

    def _start_suspicion(self, node: str, accuser: str, now: int) -> None:
        n = self._n_live()
        base = suspicion_timeout_ns(self.config, n)
        s = _Suspicion(
            now,
            base,
            base * self.config.suspicion_max_mult,
            expected_confirmations(self.config, n),
            {accuser},
        )
        s.deadline = now + lifeguard_timeout_ns(s.min_ns, s.max_ns, s.expected, 0)
        self._suspicions[node] = s
        self.stats["suspicions"] += 1

    def _confirm(self, node: str, sender: str) -> None:
        # Lifeguard counts independent accusers. MemberUpdate carries no accuser, so the
        # member that relayed the suspicion to us stands in for one (see the report).
        s = self._suspicions.get(node)
        if s is not None:
            s.confirm(sender)

    def _emit(self, m: Member, old_state: int | None) -> None:
        if len(self._events) >= 4 * self.config.max_members:
            self._events.popleft()
            self.dropped["events_overflow"] += 1
        self._events.append(MemberEvent(m.node, m.addr, old_state, m.state))

    # -- timers ----------------------------------------------------------------------------

    def _retry_join(self, now: int) -> Outputs:
        if self._joined or now < self._join_at:
            return []
        self._join_at = now + self.config.probe_interval_ns
        return self._joins_to(self._seeds)

    def _joins_to(self, addrs: Sequence[Address]) -> Outputs:
        join = Join(self.node_id, self.addr, self._self.incarnation)
        return [(a, join) for a in addrs]

    def _probe_step(self, now: int) -> Outputs:
        self._finish_probe(now)
        self._next_probe_at = now + self.config.probe_interval_ns
        target = self._next_target()
        if target is None:
            return []
        m = self._members[target]
        seq = self._next_seq()
        self._probe = _Probe(seq, target, m.addr, now, now + self.config.probe_timeout_ns)
        self.stats["probes"] += 1
        out: Outputs = [(m.addr, Ping(seq, target, now + self.wall_offset_ns))]
        if m.state == _SUSPECT:
            out.append((m.addr, _update_of(m)))  # Lifeguard's buddy system: tell the suspect
        return out

    def _finish_probe(self, now: int) -> None:
        p, self._probe = self._probe, None
        if p is None or p.acked:
            return
        m = self._members.get(p.target)
        if m is None or m.state not in _LIVE:
            return
        self.stats["failed_probes"] += 1
        if m.state == _ALIVE:
            self._set(m, MemberUpdate(m.node, m.addr, _SUSPECT, m.incarnation), self.node_id, now)
        else:
            self._confirm(m.node, self.node_id)

    def _indirect_probe(self, now: int) -> Outputs:
        p = self._probe
        if p is None or p.acked or p.indirect_sent or now < p.indirect_at:
            return []
        p.indirect_sent = True
        helpers = self._pick(self.config.indirect_checks, exclude=p.target, only_alive=True)
        self.stats["indirect_probes"] += 1
        req = PingReq(p.seq, p.target, p.addr)
        return [(self._members[n].addr, req) for n in helpers]

    def _expire_suspicions(self, now: int) -> None:
        for node, s in list(self._suspicions.items()):
            if now >= s.deadline:
                m = self._members[node]
                self._set(m, MemberUpdate(node, m.addr, _DEAD, m.incarnation), self.node_id, now)
                self.stats["declared_dead"] += 1

    def _push_pull(self, now: int) -> Outputs:
        if now < self._push_pull_at:
            return []
        self._push_pull_at = now + self.config.push_pull_interval_ns
        live = {m.addr for m in self._members.values() if m.state in _LIVE}
        lost = [a for a in self._seeds if a not in live]
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

    def _reap(self, now: int) -> None:
        if now < self._reap_at:
            return
        self._reap_at = _NEVER
        for m in self._gone():
            forget_at = m.state_changed_ns + self.config.dead_reap_ns
            if now >= forget_at:
                del self._members[m.node]
                self._rtts.pop(m.node, None)
                self._offsets.pop(m.node, None)
                self.stats["reaped"] += 1
            else:
                self._reap_at = min(self._reap_at, forget_at)

    def _expire_relays(self, now: int) -> None:
        for seq in [s for s, r in self._relays.items() if now >= r.expires_at]:
            del self._relays[seq]

    # -- helpers ---------------------------------------------------------------------------

    def _next_target(self) -> str | None:
        """The next live member of the shuffled round-robin order (memberlist's probeNode)."""
        for _ in range(2):
            while self._order_index < len(self._order):
                node = self._order[self._order_index]
                self._order_index += 1
                m = self._members.get(node)
                if m is not None and m.state in _LIVE and node != self.node_id:
                    return node
            live = self._members.items()
            self._order = [n for n, m in live if m.state in _LIVE and n != self.node_id]
            self._rng.shuffle(self._order)
            self._order_index = 0
        return None

    def _schedule_probe(self, node: str) -> None:
        """Put a new (or revived) member at a random place in the rest of this round."""
        if node in self._order[self._order_index :]:
            return
        self._order.insert(self._rng.randint(self._order_index, len(self._order)), node)

    def _pick(self, k: int, exclude: str = "", only_alive: bool = False) -> list[str]:
        """Up to ``k`` random live members other than self and ``exclude``."""
        states = (_ALIVE,) if only_alive else _LIVE
        pool = [
            n
            for n, m in self._members.items()
            if m.state in states and n != self.node_id and n != exclude
        ]
        return self._rng.sample(pool, min(k, len(pool)))

    def _measure(self, node: str, sent_ns: int, ack: Ack, now: int) -> None:
        # ``sent_ns`` and ``now`` are monotonic; the ack's echo and responder fields
        # are wall clocks (ours when sent, the peer's when it answered).
        if ack.echo_ns - self.wall_offset_ns - sent_ns not in range(-_S, _S):
            self.dropped["ack_echo_mismatch"] += 1  # not the probe we sent
            return
        if node not in self._members or now < sent_ns:
            return
        self._rtts[node] = _ewma(self._rtts.get(node), now - sent_ns)
        offset = ack.responder_ns - (ack.echo_ns + now + self.wall_offset_ns) // 2
        self._offsets[node] = _ewma(self._offsets.get(node), offset)

    def _gone(self) -> list[Member]:
        return [m for m in self._members.values() if m.state not in _LIVE and m is not self._self]

    def _n_live(self) -> int:
        return self._live_count

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _check(self) -> None:
        """Assert the invariants (tests call this after every step)."""
        assert self._members.get(self.node_id) is self._self
        assert len(self._members) <= self.config.max_members
        assert len(self._relays) <= self.config.max_relays
        for node, s in self._suspicions.items():
            assert self._members[node].state == _SUSPECT and s.deadline >= s.started_ns
        if self._self.state != _LEFT:
            for n, m in self._members.items():
                assert m.state != _SUSPECT or n in self._suspicions, n
        assert set(self._rtts) <= set(self._members) and set(self._offsets) <= set(self._members)
        assert self._live_count == sum(1 for m in self._members.values() if m.state in _LIVE)
        for m in self._gone():
            assert self._reap_at <= m.state_changed_ns + self.config.dead_reap_ns
        self._queue._check()
