"""The node's end of the network: datagrams opened on the way in, messages queued,
packed and sealed on the way out.

Theory of operation. Incoming, a datagram is authenticated (when the cluster has keys:
forged, replayed and stale datagrams are dropped before decoding), decoded into one
envelope, and refused if it claims to come from this node; every refusal is counted.
Outgoing, every part of the node queues what it wants sent here, addressed by member id
(resolved through membership; a member with no known address is dropped and counted) or
by address (a joiner not yet a member). Nothing leaves until the driver polls
``Node.datagrams_to_send``: the queue is then grouped by address, membership news is
piggybacked on each group, and each group is packed under the datagram budget and
sealed. Membership messages (probes, acks, indirect probes, joins) lead their group, and
the datagrams carrying them come first in the list, ahead of every data datagram
(checks, replies, counter deltas, rules): the driver sends in that order. Sealing marks each datagram with this life's boot id (drawn by the driver, never
from the seeded RNG), so peers keep a fresh replay window for every life of a node. The
link also knows what fits: the payload budget (the datagram budget less the
authentication trailer) and the room for one message alone in a datagram, which
batches are split to.
"""

from __future__ import annotations

from collections import Counter
from functools import cache

from meshlimit.cluster.membership import Membership
from meshlimit.cluster.node.config import NodeConfig
from meshlimit.cluster.wire import codec
from meshlimit.cluster.wire.auth import TRAILER_BYTES, Guard, new_guard
from meshlimit.cluster.wire.messages import (
    Address,
    CheckBatch,
    CounterDeltas,
    Envelope,
    HandoverDone,
    Message,
    ReplyBatch,
    RuleDigest,
    RuleEntries,
)


@cache
def _limits(max_datagram_bytes: int) -> codec.Limits:
    """The bounds of a node's link: one object per budget, so that nodes sharing a process
    share it (an envelope handed over checks the receiver's bounds by identity first)."""
    return codec.Limits(max_datagram_bytes=max_datagram_bytes)


#: What the data lane carries; everything else (probes, acks, joins, membership news)
#: leaves first, so a burst of checks or a hand-over never delays failure detection.
#: A ``HandoverDone`` rides with the counters it follows.
DATA_MESSAGES = (CheckBatch, ReplyBatch, CounterDeltas, RuleDigest, RuleEntries, HandoverDone)


class Link:
    """Datagram authentication and decoding, and the queue of messages to send."""

    def __init__(
        self,
        config: NodeConfig,
        membership: Membership,
        *,
        boot_id: int,
        stats: Counter[str],
        dropped: Counter[str],
    ) -> None:
        self._node_id = config.node_id
        self._addr = config.addr
        self._membership = membership
        self._stats = stats
        self._dropped = dropped
        #: Messages waiting for :meth:`datagrams`, with their addresses (read-only outside).
        self.queue: list[tuple[Address, Message]] = []
        #: What a decoded datagram may hold (sizes, counts): refused beyond.
        self.limits = _limits(max(config.datagram_budget, 1400))
        self._share = config.share_decoded
        self._drops_counted = False  # the drop counters exist once datagrams were packed
        self._decode = codec.DatagramDecoder(self.limits, share=self._share).decode
        self._guard: Guard | None = None
        if config.cluster_keys:
            self._guard = new_guard(
                config.cluster_keys,
                boot_id,
                max_age_ns=config.max_datagram_age_ns,
                dropped=dropped,
            )
        #: Bytes a datagram may carry before sealing (the trailer needs the rest).
        self.payload_budget = config.datagram_budget - (TRAILER_BYTES if self._guard else 0)
        #: Room for one message alone in a datagram, so split batches always fit.
        self.message_budget = codec.message_budget(config.node_id, config.addr, self.payload_budget)
        self._pack = codec.DatagramPacker(
            config.node_id, config.addr, self.payload_budget, limits=self.limits, share=self._share
        ).pack

    # --- incoming ---------------------------------------------------------------------

    def open(self, datagram: bytes, *, wall_ns: int) -> Envelope | None:
        """The envelope a peer sent, or None if the datagram is refused (and counted)."""
        if self._guard is not None:
            opened = self._guard.open(datagram, now_ns=wall_ns)
            if opened is None:  # forged, replayed or stale: dropped before decoding
                return None
            datagram = opened
        try:
            envelope = self._decode(datagram)
        except codec.DecodeError as error:
            self._dropped[f"decode_{error.reason}"] += 1
            return None
        if envelope.sender == self._node_id:
            self._dropped["from_self"] += 1
            return None
        return envelope

    # --- outgoing ---------------------------------------------------------------------

    def peers(self) -> list[str]:
        """The live members other than this node: where broadcasts go."""
        return [n for n in self._membership.alive_nodes() if n != self._node_id]

    def send(self, node: str, message: Message) -> None:
        """Queue ``message`` for member ``node``."""
        addr = self._membership.addr_of(node)
        if addr is None:
            self._dropped["no_address"] += 1
            return
        self.queue.append((addr, message))

    def send_to(self, addr: Address, message: Message) -> None:
        """Queue ``message`` for an address (a joiner that is not a member yet)."""
        self.queue.append((addr, message))

    def send_all(self, out: list[tuple[Address, Message]]) -> None:
        """Queue what membership returned for sending."""
        self.queue.extend(out)

    def datagrams(self, *, wall_ns: int) -> list[tuple[bytes, Address]]:
        """Everything queued, packed into datagrams with membership news piggybacked
        (sealed at ``wall_ns`` when the cluster is authenticated)."""
        queue = self.queue
        if not queue:
            return []
        self.queue = []
        if len(queue) == 1:  # the common case (a batch of checks, a reply): one datagram
            return self._one(*queue[0], wall_ns=wall_ns)
        control: dict[Address, list[Message]] = {}
        data: dict[Address, list[Message]] = {}
        for addr, message in queue:
            lane = data if isinstance(message, DATA_MESSAGES) else control
            waiting = lane.get(addr)
            if waiting is None:
                lane[addr] = [message]
            else:
                waiting.append(message)
        first: list[tuple[bytes, Address]] = []  # the datagrams carrying membership messages
        rest: list[tuple[bytes, Address]] = []
        piggyback, guard, pack = self._membership.piggyback, self._guard, self._pack
        oversized = invalid = 0
        for addr in [*control, *(a for a in data if a not in control)] if control else data:
            urgent = control.get(addr)
            news = piggyback()
            later = data.get(addr)
            messages: list[Message]
            if urgent is None:
                assert later is not None  # the address came from the data lane
                messages = [*news, *later] if news else later
            else:
                messages = [*urgent, *news, *later] if later else [*urgent, *news]
            packed = pack(messages)
            oversized += packed.oversized
            invalid += packed.invalid
            sealed = packed.datagrams
            if guard is not None:
                sealed = [guard.seal(d, now_ns=wall_ns) for d in sealed]
            # Packing keeps order: probes and acks lead, so the first datagram holds them.
            if urgent and sealed:
                first.append((sealed[0], addr))
                rest.extend([(d, addr) for d in sealed[1:]])
            else:
                rest.extend([(d, addr) for d in sealed])
        self._count_drops(oversized, invalid)
        self._stats["datagrams_sent"] += len(first) + len(rest)
        return first + rest if first else rest

    def _count_drops(self, oversized: int, invalid: int) -> None:
        """Count what packing dropped (the counters exist, at 0, from the first datagram on)."""
        dropped = self._dropped
        dropped["oversized"] += oversized
        dropped["invalid_outgoing"] += invalid
        self._drops_counted = True

    def _one(self, addr: Address, message: Message, *, wall_ns: int) -> list[tuple[bytes, Address]]:
        """:meth:`datagrams` for a queue of one message (the same datagrams, and counts)."""
        news = self._membership.piggyback()
        messages: list[Message]
        if isinstance(message, DATA_MESSAGES):
            messages = [*news, message] if news else [message]
        else:
            messages = [message, *news] if news else [message]
        packed = self._pack(messages)
        if packed.oversized or packed.invalid or not self._drops_counted:
            self._count_drops(packed.oversized, packed.invalid)
        guard = self._guard
        out = [
            (d if guard is None else guard.seal(d, now_ns=wall_ns), addr) for d in packed.datagrams
        ]
        self._stats["datagrams_sent"] += len(out)
        return out
