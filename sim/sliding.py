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
under one rule, no reset, admissions before the decider's wall clock was first skewed,
stepped or set drifting (so the elapsed part is the instant's, plus the epoch).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping

from .events import NS_PER_S, SIM_EPOCH_NS
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
        found = _first_overweight(window, prev, client, window_ns_of[series], clock_touched, known)
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
) -> str | None:
    full = {life: _full(t) for life, t in window.lives.items() if t.full}
    before = {} if prev is None else {life: _full(t) for life, t in prev.lives.items() if t.full}
    capacity = window.capacity * window_ns
    for b, mine in full.items():
        cur, own_before = 0, before.get(b, ())
        prev_first = prev.first_at if prev is not None else 0
        for at, cost in mine:
            cur += cost
            if clock_touched(b[0], at):
                break  # its wall clock was set: elapsed is no longer the instant's
            seen = cur + _heard(full, b, client, at, window.first_at, known)
            own_prev = sum(c for t, c in own_before if t <= at)  # a clock set back adds later
            held = own_prev + _heard(before, b, client, at, prev_first, known)
            rest = window_ns - (at + SIM_EPOCH_NS) % window_ns
            if seen * window_ns + held * rest > capacity:
                return (
                    f"{b[0]} (life {b[1]}) admitted at {at / NS_PER_S:.6f} s with {seen} in"
                    f" the window and {held} in the previous one at weight"
                    f" {rest / window_ns:.3f} in its counts: over the capacity"
                    f" {window.capacity}"
                )
    return None


def _heard(
    admissions: Mapping[LifeKey, list[tuple[int, int]]],
    b: LifeKey,
    client: str,
    until: int,
    first: int,
    known: Known,
) -> int:
    """What ``b`` must have counted by ``until`` of the other lives' ``admissions``."""
    total = 0
    for a, theirs in admissions.items():
        if a == b:
            continue
        instant = known(a, b, client, until, first)
        if instant != NOTHING_KNOWN:
            total += sum(c for t, c in theirs if t < instant)
    return total


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
