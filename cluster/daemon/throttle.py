"""``CL.THROTTLE``: redis-cell's GCRA arithmetic, and its mapping onto a meshlimit rule.

Theory of operation. redis-cell (brandur/redis-cell) answers ``CL.THROTTLE key
max_burst count period [quantity]`` with GCRA over a theoretical arrival time
(TAT) kept per key: the emission interval is ``period / count``, the bucket
holds ``max_burst + 1`` emissions (``dvt``, the delay variation tolerance),
each request advances the TAT by ``quantity`` intervals, and a request is
limited when the advanced TAT lies more than ``dvt`` ahead of now. Its reply
is five integers: ``limited`` (0/1), ``limit`` (``max_burst + 1``),
``remaining``, ``retry_after`` and ``reset_after`` in whole seconds, ``-1``
for a retry that does not apply.

meshlimit's ``token_bucket`` algorithm is the same GCRA: a request fits while
``new_tat - now <= (limit + burst) * interval`` with ``interval = ceil(window /
limit)``. :func:`throttle_rule` picks the rule whose capacity ``limit + burst``
is ``max_burst + 1`` and whose interval is redis-cell's emission interval, so
a ``CL.THROTTLE`` is an ordinary cluster check of that rule: its TAT lives on
the key's owner like any other counter, forwarded, replicated and handed over.
When the interval is not a whole number of milliseconds times some
``limit <= max_burst + 1`` (rules have whole-millisecond windows), the rule's
interval is the nearest larger one, so the mapped limiter is never faster than
redis-cell's; more than :data:`MAX_RATE_ERROR` away is refused.

:func:`rate_limit` is redis-cell's ``RateLimiter::rate_limit`` itself, a pure
function over a TAT, kept as the reference the mapping is tested against
(``tests/test_resp.py`` runs redis-cell's own ``it_rate_limits`` table through
both). Like everything in the decision path it reads no clock: time is
``now_ns``. Integer nanoseconds throughout, except where redis-cell itself
goes through ``f64`` (the emission interval, ``remaining``), which is
reproduced operation for operation.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

from meshlimit.core.decision import NS_PER_S, Decision
from meshlimit.core.rules import MAX_COUNT, MAX_WINDOW_NS, NS_PER_MS, Rule

NS_PER_US = 1_000
#: ``max_burst + 1`` is a rule's ``limit + burst``, stored in 32 bits.
MAX_BURST = MAX_COUNT - 1
#: The longest period: a rule's longest window, 366 days (redis-cell has no bound).
MAX_PERIOD_S = MAX_WINDOW_NS // NS_PER_S
#: The most a mapped rule's emission interval may exceed redis-cell's: 1 %. The error
#: is always towards fewer admissions; it only arises for intervals that are not whole
#: milliseconds with a small ``max_burst`` (``3 per 1 s``, ``max_burst 0``: 0.2 %).
MAX_RATE_ERROR = 0.01
#: Candidate rule limits tried when no exact one exists (bounded work, cached).
_SEARCH_LIMITS = 4096


class ThrottleResult(NamedTuple):
    """redis-cell's ``RateLimitResult``, in nanoseconds; ``-1`` s is ``-NS_PER_S``."""

    limited: bool
    limit: int
    remaining: int
    reset_after_ns: int
    retry_after_ns: int


def emission_interval_ns(count: int, period_s: int) -> int:
    """redis-cell's ``Rate::per_period``: ``period / count`` through ``f64``, truncated.

    0 (which redis-cell refuses as a zero rate) when ``count`` or ``period_s`` is 0.
    """
    if count == 0 or period_s == 0:
        return 0
    return int(float(period_s * NS_PER_S) / float(count))


def rate_limit(
    tat_ns: int | None, now_ns: int, max_burst: int, interval_ns: int, quantity: int
) -> tuple[ThrottleResult, int | None]:
    """One ``RateLimiter::rate_limit`` call: the result and the TAT to store (None: keep).

    ``tat_ns`` is the stored TAT, None for a missing key. A stored TAT in the
    past counts as missing: in redis-cell the key expires at its TAT.
    ``quantity`` 0 peeks (the TAT to store is the one read, or now).
    """
    assert interval_ns > 0, "zero rates are refused before this point"
    limit = max_burst + 1
    dvt = interval_ns * limit
    increment = interval_ns * quantity
    tat = now_ns if tat_ns is None or tat_ns < now_ns else tat_ns
    new_tat = tat + increment
    diff = now_ns - (new_tat - dvt)
    retry_after = -NS_PER_S
    if diff < 0:
        if increment <= dvt:
            retry_after = -diff
        limited, ttl, stored = True, tat - now_ns, None
    else:
        limited, ttl, stored = False, new_tat - now_ns, new_tat
    remaining = 0
    following = dvt - ttl
    if following > -interval_ns:
        remaining = _f64_quotient(_whole_us(following), _whole_us(interval_ns))
    return ThrottleResult(limited, limit, remaining, ttl, retry_after), stored


def _whole_us(ns: int) -> int:
    """``Duration::whole_microseconds``: truncated toward zero."""
    return ns // NS_PER_US if ns >= 0 else -(-ns // NS_PER_US)


def _f64_quotient(numerator: int, denominator: int) -> int:
    """``(a as f64 / b as f64) as i64``, as redis-cell computes ``remaining``.

    An interval under a microsecond is 0 here and redis-cell divides by zero:
    ``as i64`` saturates the infinity and maps NaN to 0. (The cluster path divides
    nanoseconds instead, so it reports a sane ``remaining`` for such rates.)
    """
    if denominator == 0:
        return 0 if numerator == 0 else (2**63 - 1 if numerator > 0 else -(2**63))
    return int(float(numerator) / float(denominator))


def reply_seconds(ns: int) -> int:
    """redis-cell's rounding of a duration to the reply's whole seconds.

    Whole seconds truncated toward zero, plus one if the remainder holds at
    least a whole millisecond (``subsec_milliseconds() > 0``): a caller never
    retries early, and a sub-millisecond remainder is dropped.
    """
    whole = ns // NS_PER_S if ns >= 0 else -(-ns // NS_PER_S)
    subsec_ms = (ns - whole * NS_PER_S) // NS_PER_MS if ns >= 0 else 0
    return whole + 1 if subsec_ms > 0 else whole


def reply(result: ThrottleResult) -> list[int]:
    """The five integers of ``CL.THROTTLE``'s reply."""
    return [
        int(result.limited),
        result.limit,
        result.remaining,
        reply_seconds(result.retry_after_ns),
        reply_seconds(result.reset_after_ns),
    ]


def reply_from_decision(decision: Decision, max_burst: int) -> list[int]:
    """``CL.THROTTLE``'s reply from a cluster decision on the :func:`throttle_rule` rule.

    ``remaining``, ``reset_after`` and ``retry_after`` of a token-bucket decision
    are redis-cell's ``remaining``, ``ttl`` and ``-diff``; an allowed request and
    one that can never fit both report ``retry_after`` -1, as redis-cell does.
    """
    if decision.allowed or math.isinf(decision.retry_after):
        retry = -1
    else:
        retry = reply_seconds(seconds_to_ns(decision.retry_after))
    return [
        int(not decision.allowed),
        max_burst + 1,
        decision.remaining,
        retry,
        reply_seconds(seconds_to_ns(decision.reset_after)),
    ]


def seconds_to_ns(seconds: float) -> int:
    """A decision's float seconds back to the integer nanoseconds they came from."""
    return round(seconds * NS_PER_S)


def check_params(max_burst: int, count: int, period_s: int, quantity: int) -> None:
    """Refuse what redis-cell refuses (zero rates) and what a rule cannot hold.

    redis-cell also takes negative numbers and periods longer than a year,
    with meaningless results; here they are refused with a ``ValueError``.
    """
    if not 0 <= max_burst <= MAX_BURST:
        raise ValueError(f"max_burst must be an integer from 0 to {MAX_BURST}, got {max_burst}")
    if count < 1:
        raise ValueError(f"count per period must be at least 1, got {count} (a zero rate)")
    if not 1 <= period_s <= MAX_PERIOD_S:
        raise ValueError(f"period must be from 1 to {MAX_PERIOD_S} seconds, got {period_s}")
    if not 0 <= quantity <= MAX_COUNT:
        raise ValueError(f"quantity must be an integer from 0 to {MAX_COUNT}, got {quantity}")


def throttle_rule(max_burst: int, count: int, period_s: int) -> Rule:
    """The token-bucket rule that decides like redis-cell's limiter for these arguments.

    Capacity ``limit + burst = max_burst + 1``; interval ``ceil(window / limit)``
    equal to redis-cell's emission interval when some ``limit <= max_burst + 1``
    makes ``limit * interval`` a whole number of milliseconds (always so when
    the interval is whole milliseconds, e.g. ``15 30 60``: ``1/2s burst 15``),
    otherwise the nearest larger interval. Raises ``ValueError`` when even that
    is more than :data:`MAX_RATE_ERROR` slower, or for arguments
    :func:`check_params` refuses. Cached, refusals too: it runs on every ``CL.THROTTLE``.
    """
    check_params(max_burst, count, period_s, 0)
    found = _throttle_rule(max_burst, count, period_s)
    if isinstance(found, str):
        raise ValueError(found)
    return found


@functools.lru_cache(maxsize=1024)
def _throttle_rule(max_burst: int, count: int, period_s: int) -> Rule | str:
    """:func:`throttle_rule`'s rule, or the reason there is none."""
    interval = emission_interval_ns(count, period_s)
    capacity = max_burst + 1
    if interval == 0:
        return f"{count} per {period_s} s is a zero emission interval"
    exact = NS_PER_MS // math.gcd(interval, NS_PER_MS)
    if exact <= capacity and exact * interval <= MAX_WINDOW_NS:
        return Rule(exact, exact * interval, capacity - exact, "token_bucket")
    best: tuple[int, int, int] | None = None  # (error_ns, limit, window_ns)
    for limit in range(1, min(capacity, _SEARCH_LIMITS) + 1):
        window_ns = -(-limit * interval // NS_PER_MS) * NS_PER_MS
        if window_ns > MAX_WINDOW_NS:
            break
        error_ns = -(-window_ns // limit) - interval
        if best is None or error_ns < best[0]:
            best = (error_ns, limit, window_ns)
    if best is None or best[0] > interval * MAX_RATE_ERROR:
        shown = "none fits" if best is None else f"the nearest is {best[0] / interval:.1%} slower"
        return (
            f"{count} per {period_s} s with max_burst {max_burst} cannot be held by a rule "
            f"(emission interval {interval} ns; {shown}); raise max_burst or use a rate "
            f"whose interval is a whole number of milliseconds"
        )
    _, limit, window_ns = best
    return Rule(limit, window_ns, capacity - limit, "token_bucket")
