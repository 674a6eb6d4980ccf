"""Probe bookkeeping: whom to probe next, the probes in flight, and what acks measure.

The failure detector probes one member per interval, in a shuffled round-robin order
(:class:`ProbeOrder`, memberlist's probeNode), so every live member is probed once a round
rather than by chance. :class:`Probe` is our own probe in flight; :class:`Relay` a probe we
sent for another member (PingReq), whose ack we pass back to it. An ack to a direct probe
yields a round-trip time and an estimate of the peer's wall-clock offset, both smoothed in
:class:`PeerClocks`. Randomness comes from the injected ``random.Random``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from meshlimit.cluster.membership.members import LIVE, Member, MemberTable
from meshlimit.cluster.wire.messages import Ack, Address, Ping

if TYPE_CHECKING:
    import random

_EWMA_SHIFT = 3  # RTT and clock-offset smoothing: alpha = 1/8, as TCP's SRTT
#: Most members sent a confirmation ping in one probe interval (``Confirmations``). Why 16:
#: a partition healing brings back many members at once; the rest wait a probe interval.
MAX_CONFIRMING = 16
ECHO_WINDOW = range(-1_000_000_000, 1_000_000_000)
"""An Ack echoes the wall-clock send time of our Ping: within 1 s of it, or it is not ours."""


@dataclass(slots=True)
class Probe:
    """Our probe of ``target`` in flight: direct first, indirect from ``indirect_at``."""

    seq: int
    target: str
    addr: Address
    sent_ns: int
    indirect_at: int
    acked: bool = False
    indirect_sent: bool = False


@dataclass(slots=True)
class Relay:
    """A probe of ``target`` we sent for ``requester``, until ``expires_at``."""

    requester: Address
    requester_seq: int
    target: str
    sent_ns: int
    expires_at: int


class ProbeOrder:
    """Live members other than self, in a shuffled round-robin order."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._order: list[str] = []
        self._index = 0

    def next_target(self, members: Mapping[str, Member], self_id: str) -> str | None:
        """The next live member of the shuffled round-robin order (memberlist's probeNode)."""
        for _ in range(2):
            while self._index < len(self._order):
                node = self._order[self._index]
                self._index += 1
                m = members.get(node)
                if m is not None and m.state in LIVE and node != self_id:
                    return node
            live = members.items()
            self._order = [n for n, m in live if m.state in LIVE and n != self_id]
            self._rng.shuffle(self._order)
            self._index = 0
        return None

    def schedule(self, node: str) -> None:
        """Put a new (or revived) member at a random place in the rest of this round."""
        if node in self._order[self._index :]:
            return
        self._order.insert(self._rng.randint(self._index, len(self._order)), node)


def _ewma(old: int | None, sample: int) -> int:
    return sample if old is None else old + ((sample - old) >> _EWMA_SHIFT)


class PeerClocks:
    """Smoothed round-trip times and wall-clock offsets of members, in ns."""

    def __init__(self) -> None:
        self.rtts: dict[str, int] = {}
        """Round-trip time of direct probes, per member."""
        self.offsets: dict[str, int] = {}
        """The member's wall clock minus ours, per member."""

    def measure(
        self, node: str, ack: Ack, sent_ns: int, now: int, wall_offset_ns: int, *, known: bool
    ) -> bool:
        """Sample the ack to a direct probe of ``node`` (``known``: still a member) sent at
        ``sent_ns``. ``sent_ns`` and ``now`` are monotonic; the ack's echo and responder
        fields are wall clocks (ours when sent, the peer's when it answered). False if the
        echo is not our probe's (off by more than ``ECHO_WINDOW``)."""
        if ack.echo_ns - wall_offset_ns - sent_ns not in ECHO_WINDOW:
            return False
        if known and now >= sent_ns:
            offset = ack.responder_ns - (ack.echo_ns + now + wall_offset_ns) // 2
            self.sample(node, now - sent_ns, offset)
        return True

    def sample(self, node: str, rtt_ns: int, offset_ns: int) -> None:
        """Fold one ack's measurements into ``node``'s averages."""
        self.rtts[node] = _ewma(self.rtts.get(node), rtt_ns)
        self.offsets[node] = _ewma(self.offsets.get(node), offset_ns)

    def forget(self, node: str) -> None:
        self.rtts.pop(node, None)
        self.offsets.pop(node, None)


class Confirmations:
    """Direct pings to the members of ``table`` back from the dead in news alone
    (``MemberTable.unconfirmed``): sent each probe interval, up to ``MAX_CONFIRMING``, until
    one is acked, for the ack is what proves the member hears us (``MemberTable.acked``).
    Without them a member would wait for its turn in the probe order (a round of the
    cluster), and a cluster whose partition healed would stay without a majority that
    long. The pings of one interval are matched until the next; a later ack is late."""

    def __init__(self, table: MemberTable) -> None:
        self._table = table
        self._pending: dict[int, str] = {}

    def pings(self, wall_ns: int, next_seq: Callable[[], int]) -> list[tuple[Address, Ping]]:
        self._pending.clear()
        members, out = self._table.members, []
        for node in sorted(self._table.unconfirmed)[:MAX_CONFIRMING]:  # sorted: set order varies
            m = members.get(node)
            if m is not None:
                seq = next_seq()
                self._pending[seq] = node
                out.append((m.addr, Ping(seq, node, wall_ns)))
        return out

    def acked(self, seq: int, sender: str) -> bool:
        """Whether an ack of ``seq`` from ``sender`` answers a confirmation ping (then the
        member is confirmed)."""
        if self._pending.get(seq) != sender:
            return False
        del self._pending[seq]
        self._table.acked(sender)
        return True


class Relays:
    """Probes we sent for other members (PingReq), by our seq, until each expires; at
    most ``limit`` at once (a PingReq beyond it is dropped, counted by the caller)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.by_seq: dict[int, Relay] = {}

    def __bool__(self) -> bool:
        return bool(self.by_seq)

    def expire(self, now: int) -> None:
        for seq in [s for s, r in self.by_seq.items() if now >= r.expires_at]:
            del self.by_seq[seq]

    def room(self, now: int) -> bool:
        """Whether one more relay fits (after dropping the expired)."""
        self.expire(now)
        return len(self.by_seq) < self.limit

    def take(self, seq: int, sender: str) -> Relay | None:
        """The relay an ack of ``seq`` from ``sender`` answers, no longer pending."""
        relay = self.by_seq.get(seq)
        if relay is None or relay.target != sender:
            return None
        del self.by_seq[seq]
        return relay
