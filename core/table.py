"""The client table: fixed-size state records for millions of clients in few bytes.

Theory of operation. A client is identified by a 64-bit hash of its id (the
id itself is never stored: at a million clients the strings alone would cost
more than the whole budget). Each record is a fixed-size packed struct whose
first 8 bytes are that hash. Records live in buckets, each bucket one
``bytearray`` of back-to-back records; a lookup finds the bucket by the
hash's low bits and scans it with ``bytearray.find`` (a C loop) for the
8-byte key. Buckets hold about ``load`` records on average, so a record
costs its own size plus a share of one bucket's header.

The bucket array grows by linear hashing (Litwin, 1980): when the table
passes its load, exactly one bucket is split in two. Growth is therefore
incremental: no operation ever rehashes the whole table, so there is no
latency spike at a million clients.

Expiry is amortized: every ``sweep_every`` inserts-or-lookups, the owner calls
``sweep_bucket`` with a predicate and one bucket's dead records are dropped.
A cap (``max_clients``) bounds memory under a flood of new ids: inserting past
it evicts by sampling a few buckets, dead records first, then the record the
caller's score rates least valuable (sampled LRU, as Redis does).

Collisions: two ids with the same 64-bit hash share a record, which can only
make the limiter stricter for them; with a million clients the chance that
any pair collides is about 3e-8.

Complexity: lookup, insert, delete O(load) byte comparisons in C; a split
O(load); sweep O(load) per call.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

_pack_key = struct.Struct("<q").pack

#: Decides whether a record (a buffer and its offset) may be dropped; gets ``now_ns``.
DeadPredicate = Callable[[bytearray, int], bool]
#: Rates a live record for eviction: higher means evict sooner.
EvictionScore = Callable[[bytearray, int], int]


class ClientTable:
    """Fixed-size records keyed by a signed 64-bit hash, in linearly hashed buckets."""

    __slots__ = (
        "record_size",
        "load",
        "max_clients",
        "_buckets",
        "_low_mask",
        "_high_mask",
        "_split",
        "_count",
        "_sweep_at",
        "_evict_at",
        "evicted_dead",
        "evicted_live",
        "expired",
    )

    def __init__(
        self,
        record_size: int,
        *,
        max_clients: int = 10_000_000,
        initial_buckets: int = 64,
        load: int = 12,
    ) -> None:
        assert record_size >= 8 and initial_buckets & (initial_buckets - 1) == 0
        self.record_size = record_size
        #: Mean records per bucket before a split; 12 keeps scans short and headers cheap.
        self.load = load
        self.max_clients = max_clients
        self._buckets: list[bytearray | None] = [None] * initial_buckets
        self._low_mask = initial_buckets - 1
        self._high_mask = 2 * initial_buckets - 1
        self._split = 0
        self._count = 0
        self._sweep_at = 0
        self._evict_at = 0
        self.evicted_dead = 0
        self.evicted_live = 0
        self.expired = 0

    def __len__(self) -> int:
        return self._count

    @property
    def bucket_count(self) -> int:
        """Buckets in use by the addressing scheme."""
        return len(self._buckets)

    def _address(self, key: int) -> int:
        address = key & self._low_mask
        if address < self._split:
            address = key & self._high_mask
        return address

    def find(self, key: int) -> tuple[bytearray | None, int]:
        """The bucket and offset of ``key``'s record, or ``(bucket_or_None, -1)``."""
        address = key & self._low_mask
        if address < self._split:
            address = key & self._high_mask
        bucket = self._buckets[address]
        if bucket is None:
            return None, -1
        needle = _pack_key(key)
        pos = bucket.find(needle)
        if pos > 0 and pos % self.record_size:
            pos = self._find_aligned(bucket, needle, pos)
        return bucket, pos

    def _find_aligned(self, bucket: bytearray, needle: bytes, pos: int) -> int:
        """Continue a search whose first match straddled two records (rare)."""
        size = self.record_size
        while pos > 0 and pos % size:
            pos = bucket.find(needle, pos + 1)
        return pos

    def insert(self, key: int, record: bytes) -> None:
        """Append a record for a key that is not present (the caller just looked)."""
        assert len(record) == self.record_size
        address = self._address(key)
        bucket = self._buckets[address]
        if bucket is None:
            self._buckets[address] = bytearray(record)
        else:
            bucket += record
        self._count += 1
        if self._count > self.load * len(self._buckets):
            self._split_next()

    def delete(self, key: int) -> bool:
        """Drop ``key``'s record; True if there was one."""
        bucket, pos = self.find(key)
        if pos < 0 or bucket is None:
            return False
        self._remove_at(self._address(key), bucket, pos)
        return True

    def over_capacity(self) -> bool:
        """True when an insert must first make room."""
        return self._count >= self.max_clients

    def keys(self) -> list[int]:
        """Every key held (for tests and diagnostics; O(n))."""
        size = self.record_size
        return [
            int.from_bytes(bucket[pos : pos + 8], "little", signed=True)
            for bucket in self._buckets
            if bucket
            for pos in range(0, len(bucket), size)
        ]

    # --- maintenance ------------------------------------------------------------------

    def sweep_bucket(self, is_dead: DeadPredicate) -> int:
        """Drop dead records from the next bucket in turn; returns how many."""
        address = self._sweep_at
        self._sweep_at = (address + 1) % len(self._buckets)
        dropped = self._drop_dead(address, is_dead)
        self.expired += dropped
        return dropped

    def evict(self, is_dead: DeadPredicate, score: EvictionScore, *, samples: int = 4) -> None:
        """Make room for one record: drop dead records from a few sampled buckets,
        or failing that the live record with the highest ``score`` among them.

        Empty buckets are skipped and do not count as samples: counting them let
        an insert past the cap evict nothing (the cap was overrun) and let a lone
        record in an otherwise empty sample be evicted whatever its score."""
        best: tuple[int, int, int] | None = None  # (score, address, offset)
        seen = 0
        count = len(self._buckets)
        # A prime stride visits every bucket unless the bucket count is its multiple.
        stride = 7919 if count % 7919 else 1
        for _ in range(count):
            address = self._evict_at
            self._evict_at = (address + stride) % count
            dropped = self._drop_dead(address, is_dead)
            if dropped:
                self.evicted_dead += dropped
                return
            bucket = self._buckets[address]
            if not bucket:
                continue
            for pos in range(0, len(bucket), self.record_size):
                rating = score(bucket, pos)
                if best is None or rating > best[0]:
                    best = (rating, address, pos)
            seen += 1
            if seen >= samples:
                break
        if best is not None:
            _, address, pos = best
            bucket = self._buckets[address]
            assert bucket is not None
            self._remove_at(address, bucket, pos)
            self.evicted_live += 1

    def _drop_dead(self, address: int, is_dead: DeadPredicate) -> int:
        bucket = self._buckets[address]
        if not bucket:
            return 0
        size = self.record_size
        dead = [pos for pos in range(0, len(bucket), size) if is_dead(bucket, pos)]
        for pos in reversed(dead):
            del bucket[pos : pos + size]
        if dead:
            self._count -= len(dead)
            if not bucket:
                self._buckets[address] = None
        return len(dead)

    def _remove_at(self, address: int, bucket: bytearray, pos: int) -> None:
        del bucket[pos : pos + self.record_size]
        if not bucket:
            self._buckets[address] = None
        self._count -= 1

    def _split_next(self) -> None:
        """Linear hashing: split bucket ``_split`` into itself and its image."""
        address = self._split
        bucket = self._buckets[address]
        stay: bytearray | None = None
        move: bytearray | None = None
        if bucket:
            high, size = self._high_mask, self.record_size
            stay, move = bytearray(), bytearray()
            for pos in range(0, len(bucket), size):
                key = int.from_bytes(bucket[pos : pos + 8], "little", signed=True)
                (stay if key & high == address else move).extend(bucket[pos : pos + size])
        self._buckets[address] = stay or None
        self._buckets.append(move or None)
        self._split += 1
        if self._split > self._low_mask:
            self._split = 0
            self._low_mask = self._high_mask
            self._high_mask = 2 * self._high_mask + 1

    def _check(self) -> None:
        """Verify the invariants (tests call this): every record sits in its bucket."""
        assert len(self._buckets) == self._low_mask + 1 + self._split
        count = 0
        for address, bucket in enumerate(self._buckets):
            if bucket is None:
                continue
            assert bucket, "empty buckets are stored as None"
            assert len(bucket) % self.record_size == 0
            for pos in range(0, len(bucket), self.record_size):
                key = int.from_bytes(bucket[pos : pos + 8], "little", signed=True)
                assert self._address(key) == address, (key, address)
                count += 1
        assert count == self._count, (count, self._count)
