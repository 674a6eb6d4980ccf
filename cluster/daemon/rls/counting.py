"""An Envoy limit as a meshlimit rule, and meshlimit's decision back as envoy ratelimit's answer.

Theory of operation. envoy ratelimit counts a descriptor with ``INCRBY key
hits`` on a key of the current window (``now // unit * unit``) and compares
the count after it with the limit ``N``: over when ``after > N``, else OK with
``N - after`` remaining. A refused request is still counted, so once a window
went over, every later hit in it is over too (and a check with 0 hits sees it).

meshlimit's fixed window is that window (``core/algorithms.py``: ``now_ns //
window_ns``, aligned to the clock), but it refuses without counting. So the
rule of a limit ``N`` per unit is :func:`counting_rule`: ``N+1`` per unit, fixed
window. The extra unit records that the window went over: meshlimit's count
is Envoy's count capped at ``N+1``, which is all any answer depends on (over
iff ``count + hits > N``; the statistics compare the count with ``N``).
:func:`outcome` reads Envoy's answer from a check of cost ``hits``:

- admitted and ``after <= N``: OK, ``N - after`` remaining;
- admitted and ``after = N+1``: over (the window is now marked over);
- refused: over; the count did not move, so :attr:`Outcome.saturate` is the
  cost of a second check that fills the window to ``N+1``, as Envoy's counter
  would have passed ``N``. Only the first refusal of a window needs it.

``N = 0`` (a rule that blocks, ``requests_per_unit: 0``) is the rule ``1`` per
unit: every hit is over. Envoy's ``N = 2**32 - 1`` cannot have its extra unit
(counts are 32-bit), so its over-marking is lost; at four billion, harmless.

:func:`stats_delta` is base_limiter.go's arithmetic of the per-descriptor
statistics, near limit at ``floor(float32(N) * 0.8)`` as Go computes it.
:func:`seconds_until_reset` is ``utils.CalculateReset``: ``unit - now % unit``.

Pure: numbers in, numbers out.
"""

from __future__ import annotations

import functools
import math
import struct
from typing import NamedTuple

from meshlimit.cluster.daemon.rls.yaml_config import UNIT_SECONDS
from meshlimit.core.decision import NS_PER_S
from meshlimit.core.rules import MAX_COUNT, Rule

#: envoy ratelimit's default ``NEAR_LIMIT_RATIO``.
NEAR_LIMIT_RATIO = 0.8
#: How a descriptor's window is kept: ``fixed_window`` is envoy ratelimit's; the sliding
#: window is meshlimit's opt-in (``--envoy-algorithm``), smoother at window edges.
ALGORITHMS = ("fixed_window", "sliding_window")


class Outcome(NamedTuple):
    """Envoy's answer for one descriptor, and what the statistics need."""

    over: bool
    """``OVER_LIMIT`` (before shadow mode is applied)."""
    remaining: int
    """``limit_remaining``: ``N - after`` when OK, 0 when over."""
    before: int
    """The count before this request (capped at ``N+1``)."""
    after: int
    """``before + hits``."""
    saturate: int
    """The cost of a second check that marks the window over; 0: none is needed."""


class StatsDelta(NamedTuple):
    """What one descriptor adds to its statistics (envoy ratelimit's names)."""

    total_hits: int
    over_limit: int
    near_limit: int
    within_limit: int
    shadow_mode: int


@functools.lru_cache(maxsize=4096)
def counting_rule(requests_per_unit: int, unit: str, algo: str = "fixed_window") -> Rule:
    """The meshlimit rule that counts a limit of ``requests_per_unit`` per ``unit``."""
    limit = min(requests_per_unit + 1, MAX_COUNT)
    return Rule(limit, UNIT_SECONDS[unit] * NS_PER_S, 0, algo)


def check_cost(hits: int, rule: Rule) -> int:
    """The cost to check for ``hits``: any cost above the rule's limit is refused alike,
    so larger ones (Envoy's are 64-bit) are checked as ``limit + 1``."""
    return hits if hits <= rule.limit else rule.limit + 1


def outcome(
    requests_per_unit: int, hits: int, cost: int, allowed: bool, remaining: int, rule_limit: int
) -> Outcome:
    """Envoy's answer from a check of ``cost`` under the rule of limit ``rule_limit``
    (:func:`counting_rule`) that was ``allowed`` with ``remaining`` left."""
    before = rule_limit - remaining - (cost if allowed else 0)
    after = before + hits
    if after > requests_per_unit:
        return Outcome(True, 0, before, after, 0 if allowed else remaining)
    return Outcome(False, requests_per_unit - after, before, after, 0)


@functools.lru_cache(maxsize=4096)
def near_limit_threshold(requests_per_unit: int) -> int:
    """``uint32(math.Floor(float64(float32(N) * nearLimitRatio)))``, in float32 as Go has it."""
    product = _float32(_float32(float(requests_per_unit)) * _float32(NEAR_LIMIT_RATIO))
    return int(math.floor(product))


def _float32(value: float) -> float:
    packed: float = struct.unpack("f", struct.pack("f", value))[0]
    return packed


def stats_delta(requests_per_unit: int, hits: int, result: Outcome, shadow: bool) -> StatsDelta:
    """base_limiter.go's ``GetResponseDescriptorStatus`` statistics for one descriptor."""
    limit = requests_per_unit
    near = near_limit_threshold(limit)
    over_limit = near_limit = within = shadowed = 0
    if result.over:
        if result.before >= limit:
            over_limit = hits
        else:
            over_limit = result.after - limit
            near_limit = limit - max(near, result.before)
        if shadow:
            shadowed = hits if result.before >= limit else result.after - limit
    else:
        if result.after > near:
            near_limit = hits if result.before >= near else result.after - near
        within = hits
    return StatsDelta(hits, over_limit, near_limit, within, shadowed)


def seconds_until_reset(unit: str, now_s: int) -> int:
    """``duration_until_reset`` of a fixed window: ``unit - now % unit`` whole seconds."""
    seconds = UNIT_SECONDS[unit]
    return seconds - now_s % seconds
