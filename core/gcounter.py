"""G-counter: a grow-only counter CRDT with one slot per node.

Each node only ever increments its own slot; merging takes the per-slot
maximum and the value is the sum of the slots. Per-slot max is commutative,
associative and idempotent, so counter state can be gossiped over a lossy
network that duplicates and reorders datagrams and every node still
converges on the same total — the property the cluster's degraded and local
modes rest on (tests pin the laws with hypothesis).

A counter's own slots are its version vector, so ``delta(since)`` — the
slots that grew since a peer last heard from us — is all gossip needs.

Memory: almost every counter has exactly one slot (the owner's), so a
counter keeps that slot in two attributes and allocates a dict only when a
second node's slot appears.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping


class GCounter:
    """A grow-only counter: ``{node: count}`` merged by per-slot max."""

    __slots__ = ("_node", "_count", "_more")

    def __init__(self, slots: Mapping[str, int] | None = None) -> None:
        self._node: str | None = None
        self._count = 0
        self._more: dict[str, int] | None = None
        if slots:
            for node, count in slots.items():
                self.merge_slot(node, count)

    def increment(self, node: str, amount: int = 1) -> None:
        """Add ``amount`` (>= 0) to ``node``'s slot."""
        assert amount >= 0, "a G-counter only grows"
        self.merge_slot(node, self.get(node) + amount)

    def merge_slot(self, node: str, count: int) -> bool:
        """Raise ``node``'s slot to ``count`` if that is higher; True if it grew."""
        if count < 0:
            raise ValueError(f"G-counter slot for {node!r} cannot be negative ({count})")
        if self._node is None or self._node == node:
            if count <= self._count and self._node is not None:
                return False
            if self._node is None and count == 0:
                return False
            self._node, self._count = node, count
            return True
        more = self._more
        if more is None:
            more = self._more = {}
        if count <= more.get(node, 0):
            return False
        more[node] = count
        return True

    def merge(self, other: GCounter) -> bool:
        """Merge ``other`` into this counter in place; True if anything grew."""
        grew = False
        for node, count in other.items():
            grew |= self.merge_slot(node, count)
        return grew

    def merged(self, other: GCounter) -> GCounter:
        """A new counter holding the merge of both."""
        result = self.copy()
        result.merge(other)
        return result

    def get(self, node: str) -> int:
        """One node's slot (0 if absent)."""
        if node == self._node:
            return self._count
        return self._more.get(node, 0) if self._more else 0

    @property
    def total(self) -> int:
        """The counter's value: the sum of all slots."""
        return self._count + (sum(self._more.values()) if self._more else 0)

    def items(self) -> Iterator[tuple[str, int]]:
        """``(node, count)`` for every non-empty slot."""
        if self._node is not None:
            yield self._node, self._count
        if self._more:
            yield from self._more.items()

    def slots(self) -> dict[str, int]:
        """A copy of the slots as a dict."""
        return dict(self.items())

    def delta(self, since: Mapping[str, int]) -> GCounter:
        """The slots that are higher than in ``since`` (what a peer at ``since`` lacks)."""
        return GCounter({n: c for n, c in self.items() if c > since.get(n, 0)})

    def copy(self) -> GCounter:
        """An independent copy."""
        clone = GCounter()
        clone._node, clone._count = self._node, self._count
        clone._more = dict(self._more) if self._more else None
        return clone

    def __len__(self) -> int:
        return (self._node is not None) + (len(self._more) if self._more else 0)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GCounter) and self.slots() == other.slots()

    def __hash__(self) -> int:  # pragma: no cover - counters are mutable; never hashed
        raise TypeError("GCounter is mutable and unhashable")

    def __repr__(self) -> str:
        return f"GCounter({self.slots()!r})"
