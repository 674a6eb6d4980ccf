"""The piggyback queue: membership news waiting to ride on outgoing datagrams.

Theory of operation. This is memberlist's TransmitLimitedQueue. The queue holds at most one
pending update per node, since newer news about a node replaces older news. Each
:meth:`BroadcastQueue.take` hands out the least-sent updates first, newest first among
equals, and counts one transmission for each. An update leaves the queue once it has been
sent ``limit`` times (the caller passes
:func:`~meshlimit.cluster.membership.timing.retransmit_limit`, which grows with log n, so
news reaches every member with high probability). The queue is bounded: past ``cap``
updates the most-sent, oldest one is dropped and counted.
"""

from __future__ import annotations

from collections import Counter

from sortedcontainers import SortedList

from meshlimit.cluster.wire.messages import MemberUpdate


class BroadcastQueue:
    """Pending updates, one per node, least-sent then newest first. O(log q) per operation."""

    def __init__(self, cap: int, dropped: Counter[str]) -> None:
        self._cap = cap
        self._dropped = dropped
        self._order: SortedList = SortedList()  # (transmits, -generation, node)
        self._items: dict[str, tuple[MemberUpdate, int, int]] = {}  # node -> (update, tx, gen)
        #: The pending updates by node, read-only: truthy while any waits (``if queue.pending``
        #: costs a fraction of ``if queue``, which calls ``__len__``; membership asks often).
        self.pending = self._items
        self._generation = 0

    def __len__(self) -> int:
        return len(self._items)

    def push(self, update: MemberUpdate) -> None:
        """Queue ``update``, replacing any pending news about the same node."""
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
        """Up to ``count`` updates to send now; each leaves after its ``limit``-th sending."""
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
