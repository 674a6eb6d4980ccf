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
table's own code so the latter stays the readable reference. The cluster's
counters have their own fused check, ``counter_fastpath``.

This module, ``engine``, ``series`` and ``table`` may be compiled with mypyc
(``docs/design.md``, "The native build"): names declared ``Final`` become C
constants there; ``SWEEP_EVERY`` stays a module global (tests patch it). With
them the build may compile ``_hotpath.c``: the window check's known-client
admission in one C call (the same arithmetic on the same bytes), which
``check_window`` tries first when the guard (``meshlimit/_native.py``) lets it
load; everything it declines comes here as before.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final

from .algorithms import WINDOW_MASK
from .decision import NS_PER_S, Decision
from .rules import Rule
from .series import SWEEP_EVERY, TOKEN_RECORD, WINDOW_RECORD, TokenSeries, WindowSeries

#: ``idx, cur, prev, carry`` of a window record, read from its offset + 8.
_unpack_state: Final = struct.Struct("<IIII").unpack_from
#: ``cur`` of a window record, written at its offset + 12.
_pack_count: Final = struct.Struct("<I").pack_into
#: A token record's arrival time at its offset + 8, read and written.
_unpack_tat: Final = struct.Struct("<q").unpack_from
_pack_tat: Final = struct.Struct("<q").pack_into
_pack_window: Final = WINDOW_RECORD.pack
_pack_token: Final = TOKEN_RECORD.pack
_WINDOW_SIZE: Final = WINDOW_RECORD.size
_TOKEN_SIZE: Final = TOKEN_RECORD.size
#: Builds a Decision from a full tuple (NamedTuple's own ``__new__`` is Python code).
_new: Final = tuple.__new__
#: The class, as a constant (compiled: no lookup by name per check).
_DECISION: Final = Decision
#: Times (ns) up to this convert to a double exactly, so ``ns / NS_PER_S`` is correctly
#: rounded compiled too (mypyc divides two doubles; Python rounds the exact quotient):
#: the fused checks leave longer times (windows over 104 days) to the full path.
_EXACT_NS: Final = 1 << 53

#: ``_hotpath.check_window``: ``(buckets, key, rule, sliding, cost, now_ns, path)``.
HotWindow = Callable[[list[bytearray | None], int, Rule, bool, int, int, str], Decision | None]


def load_hotpath() -> HotWindow | None:
    """The C hot path's window check, or None: not built, or refused by the guard
    (``meshlimit/_native.py``: only with the compiled modules, for unedited sources)."""
    try:
        from ._hotpath import check_window as hot_window
    except ImportError:
        return None
    return hot_window


#: Tried first by ``check_window`` (a C constant when compiled).
_HOT_WINDOW: Final = load_hotpath()


def check_window(
    series: WindowSeries, key: int, rule: Rule, cost: int, now_ns: int, path: str
) -> Decision | None:
    """Sliding or fixed window; see the module for the cases and the arithmetic."""
    table = series.table
    if _HOT_WINDOW is not None:
        decision = _HOT_WINDOW(table._buckets, key, rule, series.sliding, cost, now_ns, path)
        if decision is not None:  # admitted and counted; None: nothing changed
            series._ops += 1
            if series._ops >= SWEEP_EVERY:
                series._maintain(now_ns)
            return decision
    address = key & table._low_mask
    if address < table._split:
        address = key & table._high_mask
    bucket = table._buckets[address]
    window_ns = series.window_ns
    if window_ns > _EXACT_NS:
        return None
    # Not ``divmod`` (a call and a tuple) nor ``now_idx * window_ns`` (over 2**31: a slow
    # multiplication compiled): two C divisions when compiled, 25 ns more in Python.
    now_idx = now_ns // window_ns
    rest_ns = window_ns - now_ns % window_ns
    limit = rule.limit
    burst = rule.burst
    free = limit + burst - cost
    pos = -1 if bucket is None else bucket.find(key.to_bytes(8, "little", signed=True))
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
        idx: int  # typed, so compiled code does C arithmetic on them (no effect in Python)
        cur: int
        prev: int
        carry: int
        idx, cur, prev, carry = _unpack_state(bucket, pos + 8)
        if idx != now_idx & WINDOW_MASK or carry > burst:
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
    return _new(_DECISION, (True, limit, free, rest_ns / NS_PER_S, 0.0, path, False, window_ns))


def check_token(
    series: TokenSeries, key: int, rule: Rule, cost: int, now_ns: int, path: str
) -> Decision | None:
    """Token bucket (GCRA), admitted requests: ``token_bucket`` in one frame."""
    table = series.table
    address = key & table._low_mask
    if address < table._split:
        address = key & table._high_mask
    bucket = table._buckets[address]
    pos = -1 if bucket is None else bucket.find(key.to_bytes(8, "little", signed=True))
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
    if wait > _EXACT_NS:
        return None
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
    return _new(_DECISION, (True, limit, remaining, wait / NS_PER_S, 0.0, path, False, window_ns))
