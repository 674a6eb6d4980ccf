"""The fused check: the common cases of :meth:`Engine.check` in one function each.

The full path (``WindowSeries.check`` / ``TokenSeries.check`` over
``ClientTable.find`` and the pure functions of ``algorithms``) is the
reference. It is written for clarity, and a check through it pays for a call
per layer and a tuple per answer. Here the same decision is taken with the
table lookup, the algorithm and the record update in one frame, for the cases
that make up nearly all traffic:

- window algorithms: a client with a record in the current window, whose
  carry is within the rule's burst, and that is admitted; or a new client
  (no record) that is admitted;
- token bucket: any admitted request.

Everything else (a window roll, a clock stepped back, a shrunk burst, a
refusal, a misaligned key match) returns ``None`` *before changing anything*,
and the engine takes the full path. The results are equal, the table bytes
and the series' counters are identical; ``tests/test_fastpath.py`` drives
random sequences through both and compares.

Why the arithmetic is the same. A window check admits when
``need <= room`` with ``room = (capacity - cur) * W - held``,
``held = max(prev * rest, carry * W)``, ``need = cost * W``; that is
``free * W >= held`` with ``free = capacity - cur - cost``, which for an
integer ``free`` is ``free >= ceil(held / W) = max(ceil(prev * rest / W),
carry)``, and ``remaining = floor((free * W - held) / W) = free - ceil(held / W)``.
The fixed window is the same without the weight: ``held = carry``.
A new client's record rolls from long ago to a fresh window (every count and
the carry 0): it is admitted when ``cost <= capacity`` with
``capacity - cost`` remaining.

This module reads ``ClientTable``'s layout directly (``_buckets``, the
linear-hashing masks): it is the table's hot path, kept apart from the
table's own code so the latter stays the readable reference.

The cluster's counters (``counters.py``) have their fused check here too,
:func:`admit_counter`: :meth:`CounterStore.check` for a client with a counter in
the current window (or any token bucket) that is admitted, with the same
arithmetic and the same effect (this node's G-counter slot grows; a token
bucket's arrival time moves); everything else returns ``None`` before changing
anything, and the store's own check decides.
"""

from __future__ import annotations

import struct

from .algorithms import WINDOW_MASK
from .counters import CounterStore
from .decision import NS_PER_S, Decision
from .rules import Rule
from .series import SWEEP_EVERY, TOKEN_RECORD, WINDOW_RECORD, TokenSeries, WindowSeries

_pack_key = struct.Struct("<q").pack
#: ``idx, cur, prev, carry`` of a window record, read from its offset + 8.
_unpack_state = struct.Struct("<IIII").unpack_from
#: ``cur`` of a window record, written at its offset + 12.
_pack_count = struct.Struct("<I").pack_into
#: A token record's arrival time at its offset + 8, read and written.
_unpack_tat = struct.Struct("<q").unpack_from
_pack_tat = struct.Struct("<q").pack_into
_pack_window = WINDOW_RECORD.pack
_pack_token = TOKEN_RECORD.pack
_WINDOW_SIZE = WINDOW_RECORD.size
_TOKEN_SIZE = TOKEN_RECORD.size
#: Builds a Decision from a full tuple (NamedTuple's own ``__new__`` is Python code).
_new = tuple.__new__


def check_window(
    series: WindowSeries, key: int, rule: Rule, cost: int, now_ns: int, path: str
) -> Decision | None:
    """Sliding or fixed window; see the module for the cases and the arithmetic."""
    table = series.table
    address = key & table._low_mask
    if address < table._split:
        address = key & table._high_mask
    bucket = table._buckets[address]
    window_ns = series.window_ns
    now_idx, elapsed = divmod(now_ns, window_ns)
    rest_ns = window_ns - elapsed
    limit = rule.limit
    free = limit + rule.burst - cost
    pos = -1 if bucket is None else bucket.find(_pack_key(key))
    if pos < 0:  # a new client
        if free < 0:
            return None
        if cost:
            record = _pack_window(key, now_idx & WINDOW_MASK, cost, 0, 0)
            series._insert(key, record, now_ns)
    else:
        if pos % _WINDOW_SIZE:
            return None  # the match straddles two records: the table's own search
        assert bucket is not None
        idx, cur, prev, carry = _unpack_state(bucket, pos + 8)
        if idx != now_idx & WINDOW_MASK or carry > rule.burst:
            return None  # a window roll, a clock step back, or a shrunk burst
        free -= cur
        if series.sliding and prev:
            held = -(-prev * rest_ns // window_ns)
            if carry > held:
                held = carry
            free -= held
        else:
            free -= carry
        if free < 0:
            return None  # refused: the full path works out the retry time
        if cost:
            _pack_count(bucket, pos + 12, cur + cost)
    series._ops += 1
    if series._ops >= SWEEP_EVERY:
        series._maintain(now_ns)
    if free > limit:
        free = limit
    return _new(Decision, (True, limit, free, rest_ns / NS_PER_S, 0.0, path, False, window_ns))


def check_token(
    series: TokenSeries, key: int, rule: Rule, cost: int, now_ns: int, path: str
) -> Decision | None:
    """Token bucket (GCRA), admitted requests: ``token_bucket`` in one frame."""
    table = series.table
    address = key & table._low_mask
    if address < table._split:
        address = key & table._high_mask
    bucket = table._buckets[address]
    pos = -1 if bucket is None else bucket.find(_pack_key(key))
    if pos > 0 and pos % _TOKEN_SIZE:
        return None  # the match straddles two records: the table's own search
    window_ns = series.window_ns
    limit = rule.limit
    interval = -(-window_ns // limit)
    tolerance = (limit + rule.burst) * interval
    tat = now_ns
    if pos >= 0:
        assert bucket is not None
        stored: int = _unpack_tat(bucket, pos + 8)[0]
        if stored > now_ns:
            tat = stored
    wait = tat + cost * interval - now_ns
    if wait > tolerance:
        return None  # refused: the full path works out the retry time
    if cost:
        if pos >= 0:
            assert bucket is not None
            _pack_tat(bucket, pos + 8, wait + now_ns)
        else:
            series._insert(key, _pack_token(key, wait + now_ns), now_ns)
    series._ops += 1
    if series._ops >= SWEEP_EVERY:
        series._maintain(now_ns)
    remaining = (tolerance - wait) // interval
    if remaining > limit:
        remaining = limit
    return _new(Decision, (True, limit, remaining, wait / NS_PER_S, 0.0, path, False, window_ns))


def admit_counter(
    store: CounterStore, client: str, rule: Rule, cost: int, now_ns: int, path: str
) -> Decision | None:
    """:meth:`CounterStore.check` of one limit on the merged counts (no local quota), in
    one frame, when it admits ``client`` and the client has a counter: the admitted
    :class:`Decision` (``remaining`` not capped, as the store's), counted in this node's
    slot; None, with nothing changed, for everything else (a new client, a window roll,
    a clock stepped back, a refusal, a limit of 0)."""
    counter = store._counters.get((rule.series, client))
    limit = rule.limit
    if counter is None or not limit:
        return None
    window_ns = rule.window_ns
    if rule.algo == "token_bucket":
        interval = -(-window_ns // limit)
        tolerance = (limit + rule.burst) * interval
        tat = counter.tat
        if tat < now_ns:
            tat = now_ns
        wait = tat + cost * interval - now_ns
        if wait > tolerance:
            return None
        counter.tat = wait + now_ns  # as the store: stored when admitted, even at cost 0
        remaining = (tolerance - wait) // interval
        return _new(
            Decision, (True, limit, remaining, wait / NS_PER_S, 0.0, path, False, window_ns)
        )
    now_idx, elapsed = divmod(now_ns, window_ns)
    if counter.window != now_idx:
        return None  # a window roll or a clock stepped back: the store's own check
    current = counter.cur
    burst = rule.burst
    carry = counter.carry
    if carry > burst:  # the rule's burst shrank since the carry was earned
        carry = burst
    rest_ns = window_ns - elapsed
    # ``free - ceil(held / W)``, as ``check_window`` (the module docstring has why).
    remaining = limit + burst - cost - (current._count if current._more is None else current.total)
    previous = counter.prev
    if rule.algo == "sliding_window" and (previous._count or previous._more):
        prev = previous._count if previous._more is None else previous.total
        held = -(-prev * rest_ns // window_ns)
        remaining -= held if held > carry else carry
    else:
        remaining -= carry
    if remaining < 0:
        return None
    if cost:
        node = store.node_id
        if current._node == node:
            current._count += cost
        elif current._node is None:
            current._node, current._count = node, cost
        else:
            current.increment(node, cost)
    return _new(Decision, (True, limit, remaining, rest_ns / NS_PER_S, 0.0, path, False, window_ns))
