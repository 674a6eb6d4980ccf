"""Probe bookkeeping: whom to probe next, the probes in flight, and what acks measure.

The failure detector probes one member per interval, in a shuffled round-robin order
(:class:`ProbeOrder`, memberlist's probeNode), so every live member is probed once a round
rather than by chance. :class:`Probe` is our own probe in flight; :class:`Relay` a probe we
sent for another member (PingReq), whose ack we pass back to it. An ack to a direct probe
yields a round-trip time and an estimate of the peer's wall-clock offset, both smoothed in
:class:`PeerClocks`. Randomness comes from the injected ``random.Random``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from meshlimit.cluster.membership.members import LIVE, Member
from meshlimit.cluster.wire.messages import Address

if TYPE_CHECKING:
    import random

_EWMA_SHIFT = 3  # RTT and clock-offset smoothing: alpha = 1/8, as TCP's SRTT


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

    def sample(self, node: str, rtt_ns: int, offset_ns: int) -> None:
        """Fold one ack's measurements into ``node``'s averages."""
        self.rtts[node] = _ewma(self.rtts.get(node), rtt_ns)
        self.offsets[node] = _ewma(self.offsets.get(node), offset_ns)

    def forget(self, node: str) -> None:
        self.rtts.pop(node, None)
        self.offsets.pop(node, None)
