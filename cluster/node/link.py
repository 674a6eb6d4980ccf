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
        self._queue: list[tuple[Address, Message]] = []
        #: What a decoded datagram may hold (sizes, counts): refused beyond.
        self.limits = codec.Limits(max_datagram_bytes=max(config.datagram_budget, 1400))
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

    # --- incoming ---------------------------------------------------------------------

    def open(self, datagram: bytes, *, wall_ns: int) -> Envelope | None:
        """The envelope a peer sent, or None if the datagram is refused (and counted)."""
        if self._guard is not None:
            opened = self._guard.open(datagram, now_ns=wall_ns)
            if opened is None:  # forged, replayed or stale: dropped before decoding
                return None
            datagram = opened
        try:
            envelope = codec.decode(datagram, self.limits)
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
        self._queue.append((addr, message))

    def send_to(self, addr: Address, message: Message) -> None:
        """Queue ``message`` for an address (a joiner that is not a member yet)."""
        self._queue.append((addr, message))

    def send_all(self, out: list[tuple[Address, Message]]) -> None:
        """Queue what membership returned for sending."""
        self._queue.extend(out)

    def datagrams(self, *, wall_ns: int) -> list[tuple[bytes, Address]]:
        """Everything queued, packed into datagrams with membership news piggybacked
        (sealed at ``wall_ns`` when the cluster is authenticated)."""
        if not self._queue:
            return []
        control: dict[Address, list[Message]] = {}
        data: dict[Address, list[Message]] = {}
        for addr, message in self._queue:
            lane = data if isinstance(message, DATA_MESSAGES) else control
            lane.setdefault(addr, []).append(message)
        self._queue = []
        first: list[tuple[bytes, Address]] = []  # the datagrams carrying membership messages
        rest: list[tuple[bytes, Address]] = []
        addrs = [*control, *(a for a in data if a not in control)]
        for addr in addrs:
            urgent = control.get(addr, [])
            messages = [*urgent, *self._membership.piggyback(), *data.get(addr, [])]
            packed = codec.pack_datagrams(
                self._node_id, self._addr, messages, self.payload_budget, limits=self.limits
            )
            self._dropped["oversized"] += packed.oversized
            self._dropped["invalid_outgoing"] += packed.invalid
            guard = self._guard
            sealed = [
                (d if guard is None else guard.seal(d, now_ns=wall_ns), addr)
                for d in packed.datagrams
            ]
            # Packing keeps order: probes and acks lead, so the first datagram holds them.
            split = 1 if urgent else 0
            first.extend(sealed[:split])
            rest.extend(sealed[split:])
        self._stats["datagrams_sent"] += len(first) + len(rest)
        return first + rest
