"""The cluster's wire vocabulary: every message one node may send another.

Messages are frozen, slotted dataclasses with a one-byte type ``TAG``. A
datagram is an :class:`Envelope` holding the sender's identity and several
messages (a compound packet, as memberlist does), so membership updates ride
along with whatever else is being sent. The codec (``cluster/wire/codec.py``)
turns envelopes into bytes and back; nothing here knows about bytes.

Times on the wire are integers: wall-clock instants in nanoseconds since the
Unix epoch (``*_ns``) and durations in milliseconds (``*_ms``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from meshlimit.cluster.wire.addresses import Address
from meshlimit.cluster.wire.frozen import builder

__all__ = ["Address"]  # re-exported for the codec and the node


class MemberState:
    """Membership states, ordered so that a later state wins at equal incarnation."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3

    NAMES: ClassVar[dict[int, str]] = {0: "alive", 1: "suspect", 2: "dead", 3: "left"}


# --- membership (SWIM) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ping:
    """A direct probe; ``sent_ns`` is the sender's wall clock, echoed in the ack for skew."""

    TAG: ClassVar[int] = 1
    seq: int
    target: str
    sent_ns: int


@dataclass(frozen=True, slots=True)
class Ack:
    """Answer to a ping: echoes the prober's ``sent_ns`` and adds the responder's clock."""

    TAG: ClassVar[int] = 2
    seq: int
    echo_ns: int
    responder_ns: int


@dataclass(frozen=True, slots=True)
class PingReq:
    """Ask a peer to probe ``target`` on our behalf (SWIM indirect probe)."""

    TAG: ClassVar[int] = 3
    seq: int
    target: str
    target_addr: Address


@dataclass(frozen=True, slots=True)
class IndirectAck:
    """A relayed ack: ``target`` answered the probe the relay sent for us."""

    TAG: ClassVar[int] = 4
    seq: int
    target: str


@dataclass(frozen=True, slots=True)
class MemberUpdate:
    """Gossiped news about one member (piggybacked on every datagram)."""

    TAG: ClassVar[int] = 5
    node: str
    addr: Address
    state: int
    incarnation: int


@dataclass(frozen=True, slots=True)
class Join:
    """A new node asks a seed for the full membership and rule state."""

    TAG: ClassVar[int] = 6
    node: str
    addr: Address
    incarnation: int


@dataclass(frozen=True, slots=True)
class JoinReply:
    """Full membership state, sent to a joining node (the rules follow as RuleEntries)."""

    TAG: ClassVar[int] = 7
    members: tuple[MemberUpdate, ...]


# --- rate limiting ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckBatch:
    """Forwarded checks for clients the receiver owns: ``(request_id, client, cost)`` each."""

    TAG: ClassVar[int] = 10
    checks: tuple[tuple[int, str, int], ...]


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The owner's decision on one forwarded check."""

    request_id: int
    allowed: bool
    limit: int
    remaining: int
    reset_after_ms: int
    retry_after_ms: int


#: ``CheckResult(...)`` at a fifth of the cost (``frozen.py``): an owner makes one per
#: forwarded check.
check_result = builder(CheckResult)


@dataclass(frozen=True, slots=True)
class ReplyBatch:
    """Decisions for forwarded checks, in any order."""

    TAG: ClassVar[int] = 11
    results: tuple[CheckResult, ...]


@dataclass(frozen=True, slots=True)
class CounterSlot:
    """One client's G-counter slots for one window of one series.

    ``series`` names the counting series (algorithm and window length), so
    counts of a client whose window changed are never mixed up. ``slots`` is
    ``(node_id, count)`` pairs; the receiver merges each by max.
    """

    client: str
    series: str
    window: int
    slots: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class CounterDeltas:
    """Counter state gossiped (local mode) or replicated (owner to successors)."""

    TAG: ClassVar[int] = 12
    deltas: tuple[CounterSlot, ...]


@dataclass(frozen=True, slots=True)
class RuleEntry:
    """One rule-registry entry with its hybrid-logical-clock stamp.

    ``key`` is ``"default"``, ``"tier:NAME"`` or ``"client:ID"``; ``value`` is
    a rule string, ``"@TIER"`` for a client mapped to a tier, or ``None`` for a
    removal (a tombstone, so removals also win by stamp).
    """

    key: str
    value: str | None
    stamp: tuple[int, int, str]


@dataclass(frozen=True, slots=True)
class RuleEntries:
    """Rule entries spread by gossip, or sent whole in answer to a digest mismatch."""

    TAG: ClassVar[int] = 13
    entries: tuple[RuleEntry, ...]


@dataclass(frozen=True, slots=True)
class RuleDigest:
    """Anti-entropy: a digest of the sender's registry; a mismatch asks for entries."""

    TAG: ClassVar[int] = 14
    digest: int
    count: int
    reply: bool


@dataclass(frozen=True, slots=True)
class HandoverDone:
    """Every counter the sender held for the receiver's new life has been sent: ``slots``
    counter slots naming some other node's count (only a hand-over sends those) since it
    learned of the life at ``incarnation`` of ``member`` (a restart announced over an
    earlier life, or a new member). The new life decides its clients at full
    capacity once each peer it waits for said so and that many slots came in. ``member``
    names the receiver, so a datagram that reaches another node ends no wait of its."""

    TAG: ClassVar[int] = 15
    member: str
    incarnation: int
    slots: int


Message = (
    Ping
    | Ack
    | PingReq
    | IndirectAck
    | MemberUpdate
    | Join
    | JoinReply
    | CheckBatch
    | ReplyBatch
    | CounterDeltas
    | RuleEntries
    | RuleDigest
    | HandoverDone
)


@dataclass(frozen=True, slots=True)
class Envelope:
    """One datagram: who sent it, from which cluster incarnation, and what it carries."""

    sender: str
    sender_addr: Address
    messages: tuple[Message, ...]
