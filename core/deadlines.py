"""Deadlines: keys each due at an instant, taken out in time order, bucketed by second.

Theory of operation. The rule registry must find, among up to a million entries, the
ones whose time has come (an expired per-call rule, a grave past its horizon) without
scanning them all. A heap of ``(due, key)`` items does that at some 110 bytes an item;
here keys are grouped in one list per second (``ceil(due_ms / 1000)``) and only the
seconds are in a heap, so an item costs a list slot, 8 bytes. The price: an item comes
out up to a second after it is due, never before, and items of one second come out in
no particular order (the last added first).

Deletion is lazy: re-scheduling a key adds a second item and leaves the first; the
owner, when an item comes out, checks that it still describes the key (its second is
the key's current one) and skips it otherwise. :meth:`Deadlines.rebuild` replaces the
items when stale ones outnumber live ones (the owner calls it, it knows what is live).

Complexity: ``add`` O(1), or O(log seconds) for a new second; ``pop`` O(1), or
O(log seconds) when a second is used up.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

MS_PER_S = 1000


def second_of(due_ms: int) -> int:
    """The bucket of an instant: the first whole second at or after it."""
    return -(-due_ms // MS_PER_S)


class Deadlines:
    """Keys by the second they are due; the earliest second comes out first."""

    __slots__ = ("_buckets", "_seconds", "items")

    def __init__(self) -> None:
        self._buckets: dict[int, list[str]] = {}
        self._seconds: list[int] = []  # heap of the keys of _buckets
        #: Items held, stale ones included.
        self.items = 0

    def add(self, due_ms: int, key: str) -> None:
        """Schedule ``key`` at ``due_ms`` (earlier items of the key stay, see above)."""
        second = second_of(due_ms)
        bucket = self._buckets.get(second)
        if bucket is None:
            bucket = self._buckets[second] = []
            heapq.heappush(self._seconds, second)
        bucket.append(key)
        self.items += 1

    def first_ms(self) -> int | None:
        """When the earliest item's second ends (every item in it is due by then), or None."""
        return self._seconds[0] * MS_PER_S if self._seconds else None

    def pop(self) -> tuple[int, str]:
        """Take one item of the earliest second: ``(second, key)``. There must be one."""
        second = self._seconds[0]
        bucket = self._buckets[second]
        key = bucket.pop()
        if not bucket:
            del self._buckets[second]
            heapq.heappop(self._seconds)
        self.items -= 1
        return second, key

    def rebuild(self, live: Iterable[tuple[int, str]]) -> None:
        """Replace every item by ``live`` ``(due_ms, key)`` pairs (drops the stale ones)."""
        self._buckets.clear()
        self._seconds.clear()
        self.items = 0
        for due_ms, key in live:
            self.add(due_ms, key)

    def keys(self) -> set[str]:
        """Every key with an item (for invariant checks)."""
        return {key for bucket in self._buckets.values() for key in bucket}

    def __len__(self) -> int:
        return self.items
