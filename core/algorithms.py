"""Limiting algorithms: pure functions of state, rule, cost and ``now``.

All three share one contract. They take a client's stored state, the rule's
numbers (``limit``, ``burst``, ``window_ns``), the request's ``cost`` and the
wall-clock instant ``now_ns``, and return ``(allowed, *new_state, remaining,
reset_after_ns, retry_after_ns)``. They never read a clock and never mutate:
the caller stores the new state only when the request was admitted with a
positive cost, so a refused request consumes nothing and ``cost=0`` peeks.
``retry_after_ns`` is 0 when allowed and -1 when the cost can never fit.

Integer arithmetic throughout (times in ns): no float rounding can admit a
request the rule forbids.

**Burst** (``docs/design.md`` has the argument in full). A window algorithm
carries the part of a window's count that went over ``limit`` into the next
window as ``carry``, capped at ``burst``. A window admits while
``carry + count <= limit + burst``, so after idling a client may spend
``limit + burst`` at once, and since each window's admissions are at most
``limit`` plus the growth of the carry, any ``k`` consecutive windows admit
at most ``k * limit + burst``: the long-run rate never exceeds the limit.
The token bucket is GCRA with depth ``limit + burst``.

Complexity: O(1) time and O(1) space per call for every algorithm.
"""

from __future__ import annotations

from typing import Final

#: Window indexes are stored in 32 bits; gaps are computed modulo 2**32.
WINDOW_MASK: Final = 0xFFFFFFFF
#: A gap this close to 2**32 is the clock stepping back into an earlier window
#: (up to 1,024 windows back): the request is then charged to the newer window.
BACKWARDS_GAP = WINDOW_MASK - 1024


def stepped_back(idx: int, now_idx: int) -> bool:
    """True if ``now_idx`` lies before the stored window ``idx`` (a clock stepped back)."""
    return (now_idx - idx) & WINDOW_MASK > BACKWARDS_GAP


def roll_window(
    idx: int, cur: int, prev: int, carry: int, limit: int, burst: int, now_idx: int
) -> tuple[int, int, int]:
    """Bring window state stored at ``idx`` forward to window ``now_idx``.

    Returns ``(cur, prev, carry)`` as of ``now_idx``. Each elapsed window pays
    ``limit`` off the carry: over-use is forgiven at exactly the sustained rate.
    """
    gap = (now_idx - idx) & WINDOW_MASK
    if gap == 0:
        return cur, prev, carry
    if burst:
        carry = min(burst, max(0, carry + cur - gap * limit))
    if gap == 1:
        return 0, cur, carry
    return 0, 0, carry


def _windows_to_drain(carry: int, cost: int, capacity: int, limit: int) -> int:
    """Whole windows until ``carry`` has drained enough for ``cost`` to fit (0 if it fits)."""
    excess = carry + cost - capacity
    return 0 if excess <= 0 else -(-excess // limit)


def fixed_window(
    idx: int,
    cur: int,
    prev: int,
    carry: int,
    limit: int,
    burst: int,
    window_ns: int,
    cost: int,
    now_ns: int,
) -> tuple[bool, int, int, int, int, int, int, int]:
    """Fixed window: up to ``limit`` (+ burst, see module) per aligned window.

    Returns ``(allowed, idx, cur, prev, carry, remaining, reset_after_ns, retry_after_ns)``.
    """
    now_idx, elapsed = divmod(now_ns, window_ns)
    if carry > burst:  # the rule's burst shrank since the carry was earned
        carry = burst
    if (now_idx - idx) & WINDOW_MASK:
        if stepped_back(idx, now_idx):
            now_idx, elapsed = idx, 0  # stay in the newer window, at its strictest point
        else:
            cur, prev, carry = roll_window(idx, cur, prev, carry, limit, burst, now_idx)
    room = limit + burst - carry - cur
    rest_ns = window_ns - elapsed
    if cost <= room:
        return True, now_idx & WINDOW_MASK, cur + cost, prev, carry, room - cost, rest_ns, 0
    if cost > limit + burst:
        retry_ns = -1
    else:
        next_carry = min(burst, max(0, carry + cur - limit))
        retry_ns = rest_ns + window_ns * _windows_to_drain(next_carry, cost, limit + burst, limit)
    return False, now_idx & WINDOW_MASK, cur, prev, carry, max(0, room), rest_ns, retry_ns


def sliding_window(
    idx: int,
    cur: int,
    prev: int,
    carry: int,
    limit: int,
    burst: int,
    window_ns: int,
    cost: int,
    now_ns: int,
) -> tuple[bool, int, int, int, int, int, int, int]:
    """Sliding window (Cloudflare's): the current count plus the previous window's
    count weighted by how much of it still overlaps the sliding window.

    With a burst the previous window's weight and the carry both hold back the
    current window; the larger of the two applies.
    Returns ``(allowed, idx, cur, prev, carry, remaining, reset_after_ns, retry_after_ns)``.
    """
    now_idx, elapsed = divmod(now_ns, window_ns)
    if carry > burst:  # the rule's burst shrank since the carry was earned
        carry = burst
    if (now_idx - idx) & WINDOW_MASK:
        if stepped_back(idx, now_idx):
            now_idx, elapsed = idx, 0  # stay in the newer window, at its strictest point
        else:
            cur, prev, carry = roll_window(idx, cur, prev, carry, limit, burst, now_idx)
    rest_ns = window_ns - elapsed
    # Quantities are scaled by window_ns so the weighting stays exact in integers.
    held = prev * rest_ns
    if carry and carry * window_ns > held:
        held = carry * window_ns
    room = (limit + burst - cur) * window_ns - held
    need = cost * window_ns
    if need <= room:
        remaining = (room - need) // window_ns
        return True, now_idx & WINDOW_MASK, cur + cost, prev, carry, remaining, rest_ns, 0
    if cost > limit + burst:
        retry_ns = -1
    else:
        retry_ns = _sliding_retry(cur, prev, carry, limit, burst, window_ns, cost, elapsed)
    return (
        False,
        now_idx & WINDOW_MASK,
        cur,
        prev,
        carry,
        max(0, room // window_ns),
        rest_ns,
        retry_ns,
    )


def _sliding_retry(
    cur: int, prev: int, carry: int, limit: int, burst: int, window_ns: int, cost: int, elapsed: int
) -> int:
    """Nanoseconds until ``cost`` fits, assuming no other traffic meanwhile."""
    capacity = limit + burst
    free = capacity - cur - cost
    if carry + cur + cost <= capacity and prev:
        # Only the previous window's weight holds us back: wait for it to slide out.
        fits_at = window_ns - (free * window_ns) // prev
        if fits_at < window_ns:
            return max(1, fits_at - elapsed)
    rest_ns = window_ns - elapsed
    next_carry = min(burst, max(0, carry + cur - limit))
    drain = _windows_to_drain(next_carry, cost, capacity, limit)
    if drain:
        return rest_ns + drain * window_ns
    # Next window: the current count becomes the weighted previous one.
    wait = 0 if not cur else max(0, window_ns - ((capacity - cost) * window_ns) // cur)
    return rest_ns + wait


def token_bucket(
    tat: int, limit: int, burst: int, window_ns: int, cost: int, now_ns: int
) -> tuple[bool, int, int, int, int]:
    """Token bucket as GCRA: state is the theoretical arrival time ``tat`` (ns).

    Each unit of cost advances ``tat`` by the emission interval
    ``ceil(window_ns / limit)``; a request fits while ``tat`` stays within
    ``(limit + burst)`` intervals of ``now``. Rounding the interval up keeps
    the sustained rate at or below the limit.
    Returns ``(allowed, tat, remaining, reset_after_ns, retry_after_ns)``.
    """
    interval = -(-window_ns // limit)
    tolerance = (limit + burst) * interval
    if tat < now_ns:
        tat = now_ns
    new_tat = tat + cost * interval
    if new_tat - now_ns <= tolerance:
        return True, new_tat, (tolerance - (new_tat - now_ns)) // interval, new_tat - now_ns, 0
    retry_ns = -1 if cost > limit + burst else new_tat - tolerance - now_ns
    return False, tat, (tolerance - (tat - now_ns)) // interval, tat - now_ns, retry_ns
