"""The burst carry replayed for refusals: an upper bound of the carry a node can hold.

``docs/design.md`` (*Burst*): each roll of a window counter derives the carry from the count
of the window it leaves, ``carry' = min(burst, max(0, carry + cur - gap x limit))``
(``core/algorithms.roll_window``), and a window admits while ``cost <= limit + burst -
carry - cur`` (fixed) or ``(limit + burst - cur) x W - max(prev x (W - e), carry x W) >=
cost x W`` (sliding). The burst once used is paid back at ``limit`` a window.

A node's counts of a window are a subset of the admissions tallied in it (they come from
admissions, merge by max, and are only ever dropped), so, replaying over the tally of every
admission seen, ``U_(i+1) = min(burst, max(0, U_i + admitted_i - limit))`` over the windows
that counted anything (an empty window is skipped, not paid off: the node may not have
rolled through it, and a roll of ``gap`` windows pays at least one ``limit``), from
``U = 0`` before the series' first admission, bounds the carry the node derived from
above: the step is monotone in both the carry and the count. A window decided under
another ``(limit, capacity)`` than the refusal's (a rule change kept the series) makes the
bound ``burst``, the most a node keeps (it clips a larger carry to the burst), and so does
one a stepped-back clock made uncertain (its node may have charged a newer window what the
tally holds in an older one). Resets only
lower the node's carry (cleared counters start from 0). So ``room = limit + burst - U -
cur`` never exceeds the node's; a refusal of a cost that fits it is an under-admission --
counted as the burst-free ones are (``sim/refusals.py``), a verdict in windows judged
``exact``.

Added for the planted bug ``carry_never_decays`` (a roll keeps ``max(carry, new carry)``: a
client once over its limit is held to ``limit`` for good, though it was idle since).
"""

from __future__ import annotations

from meshlimit.core.rules import Rule

from .windows import WindowKey, WindowTally


class CarryBounds:
    """The replayed carry per client window (computed once per window at its first refusal
    judged: the node rolled into the window before, on counts it had by then)."""

    def __init__(self, windows: dict[WindowKey, WindowTally], uncertain: set[WindowKey]) -> None:
        self._windows = windows
        self._uncertain = uncertain
        self._first: dict[tuple[str, str], int] = {}
        self._bound: dict[WindowKey, int] = {}
        #: Per series, the window the last replay reached and the carry bound there.
        self._progress: dict[tuple[str, str], tuple[int | None, int]] = {}

    def counted(self, client: str, series: str, index: int) -> None:
        """A window of ``client``'s series counted its first admission."""
        first = self._first.get((client, series))
        if first is None or index < first:
            self._first[(client, series)] = index

    def bound(self, key: WindowKey, rule: Rule) -> int:
        """The most carry a node can hold in window ``key`` under ``rule``."""
        bound = self._bound.get(key)
        if bound is None:
            bound = self._bound[key] = self._replay(key, rule)
        return bound

    def _replay(self, key: WindowKey, rule: Rule) -> int:
        """The replay up to window ``key``, continued from where the series' last one
        stopped (its tally was a subset of today's: still an upper bound, by monotony)."""
        client, series, index = key
        limit, burst, capacity = rule.limit, rule.burst, rule.capacity
        start, carry = self._progress.get((client, series), (None, 0))
        if start is None or start > index:
            start, carry = self._first.get((client, series), index), 0
        windows = self._windows
        for past in range(start, index):
            window = windows.get((client, series, past))
            if window is None or not window.admitted:
                continue
            if (
                window.changed
                or (window.limit, window.capacity) != (limit, capacity)
                or (client, series, past) in self._uncertain
            ):
                carry = burst  # another rule counted here: the most a node keeps
                continue
            carry = min(burst, max(0, carry + window.admitted - limit))
        self._progress[(client, series)] = (index, carry)
        return carry

    def fits(self, key: WindowKey, rule: Rule, cost: int, elapsed: int) -> bool:
        """Whether the exact algorithm, on every admission seen, would admit ``cost`` at
        ``elapsed`` into window ``key`` (at least as much room as any node had)."""
        window_ns = rule.window_ns
        current = self._windows.get(key)
        cur = 0 if current is None else current.admitted
        if current is not None and (current.changed or current.capacity != rule.capacity):
            return False
        carry = self.bound(key, rule)
        held = carry * window_ns
        if rule.algo == "sliding_window":
            before = self._windows.get((key[0], key[1], key[2] - 1))
            if before is not None:
                held = max(held, before.admitted * (window_ns - elapsed))
        return held + (cur + cost) * window_ns <= rule.capacity * window_ns
