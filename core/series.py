"""Counting series: the state of every client under one algorithm and window length.

A series is keyed by ``(algo, window_ns)``. Rules that share a series share
counts, which is what makes limit changes seamless: a client moved from
``100/minute`` to ``500/minute`` keeps its count, while a move to
``100/hour`` starts a fresh series (counts per minute say nothing about an
hour). Limit and burst are read from the rule at each check.

Records (24 bytes for windows, 16 for the token bucket):

- window algorithms: ``key, window index (low 32 bits), count, previous count, carry``
- token bucket: ``key, theoretical arrival time (ns)``

``check`` returns ``(allowed, remaining, reset_after_ns, retry_after_ns)``; with
``commit=False`` it only answers (a rule of several limits asks each before it
counts in any).
Every ``SWEEP_EVERY`` checks one bucket of expired records is dropped, so
idle clients cost nothing once their windows can no longer matter.
"""

from __future__ import annotations

import struct

from .algorithms import BACKWARDS_GAP, WINDOW_MASK, fixed_window, sliding_window, token_bucket
from .table import ClientTable

WINDOW_RECORD = struct.Struct("<qIIII")
TOKEN_RECORD = struct.Struct("<qq")
_unpack_window = WINDOW_RECORD.unpack_from
_pack_window = WINDOW_RECORD.pack_into
_unpack_index = struct.Struct("<I").unpack_from
#: Checks per swept bucket: a lap over N records takes about 5N checks.
SWEEP_EVERY = 64
#: Larger than any real count: an evicted record's score must beat a live one's.
_BIG = 1 << 40

Outcome = tuple[bool, int, int, int]


class WindowSeries:
    """Clients counted in aligned windows (``fixed_window`` or ``sliding_window``)."""

    __slots__ = ("algo", "window_ns", "sliding", "table", "horizon", "_decide", "_ops", "_now_idx")

    def __init__(self, algo: str, window_ns: int, *, max_clients: int) -> None:
        self.algo = algo
        self.window_ns = window_ns
        #: Sliding (True) or fixed window: read by the fused path (``fastpath``) too.
        self.sliding = algo == "sliding_window"
        self.table = ClientTable(WINDOW_RECORD.size, max_clients=max_clients)
        #: Windows after which a record is dead; raised for rules whose burst
        #: outlasts one window (the carry drains ``limit`` per window).
        self.horizon = 2
        self._decide = sliding_window if self.sliding else fixed_window
        self._ops = 0
        self._now_idx = 0

    def note_rule(self, limit: int, burst: int) -> None:
        """Keep records long enough for this rule's carry to drain."""
        self.horizon = max(self.horizon, 2 + -(-burst // limit))

    def check(
        self, key: int, limit: int, burst: int, cost: int, now_ns: int, commit: bool = True
    ) -> Outcome:
        """Decide one request and record it if admitted with a positive cost (and ``commit``)."""
        table = self.table
        bucket, pos = table.find(key)
        if bucket is not None and pos >= 0:  # found (the bucket test narrows the type)
            _, idx, cur, prev, carry = _unpack_window(bucket, pos)
        else:
            # A new client: state as of long ago, so it rolls to a fresh window.
            idx, cur, prev, carry = (now_ns // self.window_ns - 2) & WINDOW_MASK, 0, 0, 0
        allowed, idx, cur, prev, carry, remaining, reset_ns, retry_ns = self._decide(
            idx, cur, prev, carry, limit, burst, self.window_ns, cost, now_ns
        )
        if allowed and cost and commit:
            if bucket is not None and pos >= 0:
                _pack_window(bucket, pos, key, idx, cur, prev, carry)
            else:
                self._insert(key, WINDOW_RECORD.pack(key, idx, cur, prev, carry), now_ns)
        self._ops += 1
        if self._ops >= SWEEP_EVERY:
            self._maintain(now_ns)
        return allowed, remaining, reset_ns, retry_ns

    def _insert(self, key: int, record: bytes, now_ns: int) -> None:
        table = self.table
        if table.over_capacity():
            self._now_idx = (now_ns // self.window_ns) & WINDOW_MASK
            table.evict(self._is_dead, self._eviction_score)
        table.insert(key, record)

    def _maintain(self, now_ns: int) -> None:
        self._ops = 0
        self._now_idx = (now_ns // self.window_ns) & WINDOW_MASK
        self.table.sweep_bucket(self._is_dead)

    def _is_dead(self, bucket: bytearray, pos: int) -> bool:
        idx: int = _unpack_index(bucket, pos + 8)[0]
        return self.horizon <= (self._now_idx - idx) & WINDOW_MASK <= BACKWARDS_GAP

    def _eviction_score(self, bucket: bytearray, pos: int) -> int:
        """Records that still hold back the least go first (older windows first among
        equals): a flood of one-shot ids goes before a client with real traffic, also
        in the moments after a window boundary, before that client's next admission
        has rolled its record (ranking by age alone evicted it then)."""
        _, idx, cur, prev, carry = WINDOW_RECORD.unpack_from(bucket, pos)
        age: int = (self._now_idx - idx) & WINDOW_MASK
        if age > BACKWARDS_GAP:  # written after a clock step back: as current as it gets
            age = 0
        held: int = carry + (cur + prev if age == 0 else cur if age == 1 else 0)
        return age - held * _BIG


class TokenSeries:
    """Clients under the token-bucket (GCRA) algorithm."""

    __slots__ = ("algo", "window_ns", "table", "_ops", "_now_ns")

    def __init__(self, window_ns: int, *, max_clients: int) -> None:
        self.algo = "token_bucket"
        self.window_ns = window_ns
        self.table = ClientTable(TOKEN_RECORD.size, max_clients=max_clients)
        self._ops = 0
        self._now_ns = 0

    def note_rule(self, limit: int, burst: int) -> None:
        """Token buckets expire by their own clock; nothing to note."""

    def check(
        self, key: int, limit: int, burst: int, cost: int, now_ns: int, commit: bool = True
    ) -> Outcome:
        """Decide one request and record it if admitted with a positive cost (and ``commit``)."""
        table = self.table
        bucket, pos = table.find(key)
        tat = TOKEN_RECORD.unpack_from(bucket, pos)[1] if bucket is not None and pos >= 0 else 0
        allowed, tat, remaining, reset_ns, retry_ns = token_bucket(
            tat, limit, burst, self.window_ns, cost, now_ns
        )
        if allowed and cost and commit:
            if bucket is not None and pos >= 0:
                TOKEN_RECORD.pack_into(bucket, pos, key, tat)
            else:
                self._insert(key, TOKEN_RECORD.pack(key, tat), now_ns)
        self._ops += 1
        if self._ops >= SWEEP_EVERY:
            self._maintain(now_ns)
        return allowed, remaining, reset_ns, retry_ns

    def _insert(self, key: int, record: bytes, now_ns: int) -> None:
        table = self.table
        if table.over_capacity():
            self._now_ns = now_ns
            table.evict(self._is_dead, self._eviction_score)
        table.insert(key, record)

    def _maintain(self, now_ns: int) -> None:
        self._ops = 0
        self._now_ns = now_ns
        self.table.sweep_bucket(self._is_dead)

    def _is_dead(self, bucket: bytearray, pos: int) -> bool:
        """A bucket whose arrival time has passed is full again: nothing to remember."""
        return int.from_bytes(bucket[pos + 8 : pos + 16], "little", signed=True) <= self._now_ns

    def _eviction_score(self, bucket: bytearray, pos: int) -> int:
        """The fullest bucket (earliest arrival time) loses least when forgotten."""
        return -int.from_bytes(bucket[pos + 8 : pos + 16], "little", signed=True)


Series = WindowSeries | TokenSeries


def new_series(algo: str, window_ns: int, *, max_clients: int) -> Series:
    """The series for an algorithm and window length."""
    if algo == "token_bucket":
        return TokenSeries(window_ns, max_clients=max_clients)
    return WindowSeries(algo, window_ns, max_clients=max_clients)
