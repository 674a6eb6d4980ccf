"""The sliding window's own promise, judged admission by admission: ``sliding_overweight``.

A window's bound (:func:`~meshlimit.sim.windows.judge`) caps what one client window
admitted in all. The sliding window promises more: a node admits only while its current
window's count plus its previous window's, weighted by the part of it the sliding window
still overlaps, stays within the capacity (``algorithms.sliding_window``)::

    cur * W + prev * (W - elapsed) <= capacity * W

(the burst's carry holds back the larger of the two, so it only tightens this). A node
that lost the previous window's count -- a hand-over or a replication that carries the
current window only, a roll that forgets it -- keeps within each window's total, yet
admits up to a whole limit more across the boundary, where the per-window bound sees
nothing.

So each admission at full capacity is judged against what its decider must have counted:
its own full admissions in both windows, and every other life's made before the instant
:class:`~meshlimit.sim.knowledge.Knowledge` proves they reached it (hand-over, gossip,
resync; nothing otherwise). Degraded admissions are left out (they spend a share, not the
counts). Judged where the arithmetic is exact: sliding-window series, both windows decided
under one rule, admissions from the last reset on (once every node had it), before the decider's wall clock was first skewed,
stepped or set drifting (so the elapsed part is the instant's, plus the epoch).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Callable, Mapping
from functools import partial
from itertools import accumulate

from .events import NS_PER_S, SIM_EPOCH_NS
from .refusals import Refusals
from .verdicts import Violation
from .windows import NOTHING_KNOWN, RESET, LifeKey, LifeTally, Verdict, WindowKey, WindowTally

SLIDING = "sliding_window"
#: ``known(a, b, client, until, first)``: ``Knowledge.known_before``.
Known = Callable[[LifeKey, LifeKey, str, int, int], int]


def judge_sliding(
    windows: Mapping[WindowKey, WindowTally],
    verdicts: Mapping[WindowKey, Verdict],
    window_ns_of: Mapping[str, int],
    clock_touched: Callable[[str, int], bool],
    known: Known,
    resets: Refusals,
) -> list[Violation]:
    """One ``sliding_overweight`` violation per client window in which some admission
    broke the weighted bound over what its decider must have counted (the first one)."""
    out = []
    for key, window in windows.items():
        client, series, index = key
        if not series.startswith(SLIDING) or window.changed:
            continue
        verdict = verdicts.get(key)
        if verdict is None or verdict.label == RESET:
            continue
        prev_key = (client, series, index - 1)
        prev = windows.get(prev_key)
        if prev is not None and (
            prev.changed
            or prev.capacity != window.capacity
            or getattr(verdicts.get(prev_key), "label", RESET) == RESET
        ):
            continue
        found = _first_overweight(
            window, prev, client, window_ns_of[series], clock_touched, known,
            partial(_floor, resets, client, window.last_at),
        )  # fmt: skip
        if found is not None:
            out.append(Violation(
                "sliding_overweight", found, client, index,
                tuple(sorted({life[0] for life in window.lives})),
            ))  # fmt: skip
    return out


def _first_overweight(
    window: WindowTally,
    prev: WindowTally | None,
    client: str,
    window_ns: int,
    clock_touched: Callable[[str, int], bool],
    known: Known,
    reset_floor: Callable[[int], int],
) -> str | None:
    full = {life: _Sums(_full(t)) for life, t in window.lives.items() if t.full}
    before = {} if prev is None else {k: _Sums(_full(t)) for k, t in prev.lives.items() if t.full}
    capacity = window.capacity * window_ns
    prev_first = prev.first_at if prev is not None else 0
    for b, mine in full.items():
        own_before = before.get(b)
        for at in mine.times:
            if clock_touched(b[0], at):
                break  # its wall clock was set: elapsed is no longer the instant's
            floor = reset_floor(at)  # a reset drops what was counted before
            seen = mine.within(floor, at) + _heard(
                full, b, client, at, window.first_at, known, floor
            )
            held = _heard(before, b, client, at, prev_first, known, floor)
            if own_before is not None:
                held += own_before.within(floor, at)  # a clock set back adds later ones
            rest = window_ns - (at + SIM_EPOCH_NS) % window_ns
            if seen * window_ns + held * rest > capacity:
                return (
                    f"{b[0]} (life {b[1]}) admitted at {at / NS_PER_S:.6f} s with {seen} in"
                    f" the window and {held} in the previous one at weight"
                    f" {rest / window_ns:.3f} in its counts: over the capacity"
                    f" {window.capacity}"
                )
    return None


def _floor(resets: Refusals, client: str, end: int, at: int) -> int:
    return resets.reset_floor(client, at, end)


def _heard(
    admissions: Mapping[LifeKey, _Sums],
    b: LifeKey,
    client: str,
    until: int,
    first: int,
    known: Known,
    floor: int,
) -> int:
    """What ``b`` must have counted by ``until`` of the other lives' ``admissions`` made
    from ``floor`` on."""
    total = 0
    for a, theirs in admissions.items():
        if a == b:
            continue
        instant = known(a, b, client, until, first)
        if instant != NOTHING_KNOWN:
            total += theirs.within(floor, instant - 1)
    return total


class _Sums:
    """One life's admissions in one window, summed over time ranges in O(log n)."""

    def __init__(self, pairs: list[tuple[int, int]]) -> None:
        self.times = [t for t, _ in pairs]
        self._prefix = [0, *accumulate(c for _, c in pairs)]

    def within(self, start: int, end: int) -> int:
        """Admitted at instants ``start <= t <= end``."""
        lo, hi = bisect_left(self.times, start), bisect_right(self.times, end)
        return self._prefix[hi] - self._prefix[lo] if hi > lo else 0


def _full(tally: LifeTally) -> list[tuple[int, int]]:
    """A life's full-capacity admissions, ``(instant, cost)`` in time order."""
    pairs = list(zip(tally.times, tally.costs, strict=True))
    if tally.degraded:
        degraded = Counter(tally.degraded_at)
        kept = []
        for pair in pairs:
            if degraded[pair] > 0:
                degraded[pair] -= 1
            else:
                kept.append(pair)
        pairs = kept
    return pairs
