"""Cluster counters: per-client G-counters per window, merged from every node's slot.

The in-process table (``series.py``) keeps one node's counts in 24 bytes a
client and forgets the client's id. A cluster node cannot: it must name the
client when it replicates counts to its successors, hands a client over to a
new owner, or reports degraded admissions to the owner after a partition.
So the cluster keeps, per ``(series, client)``, a :class:`ClientCounter`:
the G-counters of the current and previous windows (one slot per node that
admitted requests), the burst carry, and for the token bucket the
theoretical arrival time as a max-register. Every field merges by max, so
replicated and gossiped state may arrive late, twice or out of order.

Decisions use the same pure algorithms as the in-process limiter, on the
merged totals; an admission increments only this node's slot.

Complexity: a check is O(1) dict work plus O(s) for a counter with ``s``
slots (almost always 1). Memory is dominated by the dict entry, the id and
the counter object; ``docs/design.md`` has the measured figure.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Iterator

from .algorithms import WINDOW_MASK, fixed_window, sliding_window, token_bucket
from .gcounter import GCounter
from .rules import Rule

Outcome = tuple[bool, int, int, int]
#: A series' ``(limit, burst)`` for one client under the rule in force, ``(0, 0)`` if none.
Numbers = tuple[int, int]
#: Counters looked at to choose one to evict when the store is full.
EVICTION_SAMPLES = 8
_UNSEEN = -(2**63)  # see CounterStore.sweep


class ClientCounter:
    """One client's counting state in one series, as seen by one node."""

    __slots__ = ("window", "cur", "prev", "carry", "tat")

    def __init__(self, window: int = 0) -> None:
        self.window = window  # absolute index of the window ``cur`` counts
        self.cur = GCounter()
        self.prev = GCounter()
        self.carry = 0
        self.tat = 0

    def roll(self, now_idx: int, limit: int = 0, burst: int = 0) -> None:
        """Move to window ``now_idx``: the current counts become the previous ones.

        ``carry`` is as of the start of ``window``, so a roll settles it on the rule's
        ``limit`` and ``burst`` as the algorithms do (``roll_window``); a caller that has
        already derived the new carry passes neither and stores it itself.
        """
        gap = now_idx - self.window
        if gap <= 0:
            return
        if burst:
            self.carry = min(burst, max(0, self.carry + self.cur.total - gap * limit))
        elif limit:
            self.carry = 0
        self.prev = self.cur if gap == 1 else GCounter()
        self.cur = GCounter()
        self.window = now_idx

    def merge_window(
        self, window: int, node: str, count: int, now_idx: int, numbers: Numbers = (0, 0)
    ) -> bool:
        """Merge one node's slot for ``window``; older windows are ignored. True if it grew.
        ``numbers`` is the rule's ``(limit, burst)`` for this series, to settle the carry
        if the merge rolls the counter into a newer window."""
        self.roll(now_idx, *numbers)
        if window == self.window:
            return self.cur.merge_slot(node, count)
        if window == self.window - 1:
            return self.prev.merge_slot(node, count)
        return False

    def is_dead(self, now_idx: int, horizon: int, now_ns: int) -> bool:
        """Nothing here can affect a decision any more."""
        return now_idx - self.window >= horizon and self.tat <= now_ns


class CounterStore:
    """All clients' cluster counters on one node, keyed by ``(series, client)``."""

    __slots__ = (
        "node_id",
        "max_clients",
        "_counters",
        "_sweep",
        "dropped",
        "expired",
        "evicted_live",
    )

    def __init__(self, node_id: str, *, max_clients: int = 1_000_000) -> None:
        self.node_id = node_id
        self.max_clients = max_clients
        # Ordered so eviction can sample the front and send survivors to the back in
        # O(1): a plain dict leaves deleted slots at its front that every later
        # eviction walks over (25x slower past the cap, found by scripts/bench_flood.py).
        self._counters: OrderedDict[tuple[str, str], ClientCounter] = OrderedDict()
        self._sweep: Iterator[tuple[str, str]] | None = None
        self.dropped = 0
        self.expired = 0
        self.evicted_live = 0

    def __len__(self) -> int:
        return len(self._counters)

    def get(self, series: str, client: str) -> ClientCounter | None:
        """The counter of a client in a series, if any."""
        return self._counters.get((series, client))

    def _counter(self, series: str, client: str, window: int) -> ClientCounter | None:
        key = (series, client)
        counter = self._counters.get(key)
        if counter is None:
            if len(self._counters) >= self.max_clients and not self._evict(window):
                self.dropped += 1
                return None
            counter = self._counters[key] = ClientCounter(window)
        return counter

    def _evict(self, now_idx: int) -> bool:
        """Make room for one counter under ``max_clients``: among the oldest-inserted
        few, a dead one if any, else the one holding back the least (sampled LRU: a
        flood of one-shot ids evicts its own kind before clients with real traffic)."""
        best: tuple[int, tuple[str, str]] | None = None
        sampled = list(itertools.islice(self._counters.items(), EVICTION_SAMPLES))
        for key, counter in sampled:
            if now_idx - counter.window >= 2 and counter.tat == 0:
                best = (-1, key)
                break
            held = counter.cur.total + counter.prev.total + (counter.tat > 0)
            if best is None or held < best[0]:
                best = (held, key)
        if best is None:
            return False
        del self._counters[best[1]]
        # Survivors go to the back (a second chance, as in CLOCK), so the next
        # eviction samples fresh candidates instead of the same valuable few.
        for key, _ in sampled:
            if key != best[1]:
                self._counters.move_to_end(key)
        if best[0] >= 0:
            self.evicted_live += 1
        else:
            self.expired += 1
        return True

    def check(
        self,
        client: str,
        rule: Rule,
        cost: int,
        *,
        now_ns: int,
        capacity: int | None = None,
        commit: bool = True,
    ) -> Outcome:
        """Decide a request on the merged counts and count it in this node's slot.

        ``rule`` is one limit (a rule of several is checked limit by limit).
        ``capacity`` replaces the rule's limit (a degraded node's local quota);
        the burst then does not apply. With ``commit=False`` nothing is counted
        (nor a counter created): the answer only. Returns ``(allowed, remaining,
        reset_after_ns, retry_after_ns)``.
        """
        limit, burst = (rule.limit, rule.burst) if capacity is None else (capacity, 0)
        counter = self._counters.get((rule.series, client))
        if counter is None:
            if cost == 0 or not commit:
                counter = ClientCounter(now_ns // rule.window_ns - 2)
            else:
                counter = self._counter(rule.series, client, now_ns // rule.window_ns - 2)
                if counter is None:  # table full: refuse rather than forget counts
                    return False, 0, rule.window_ns, rule.window_ns
        if limit == 0:
            return False, 0, rule.window_ns, -1
        if rule.algo == "token_bucket" and capacity is None:
            allowed, tat, remaining, reset_ns, retry_ns = token_bucket(
                counter.tat, limit, burst, rule.window_ns, cost, now_ns
            )
            if allowed and commit:
                counter.tat = tat
            return allowed, remaining, reset_ns, retry_ns
        now_idx = now_ns // rule.window_ns
        quota = capacity is not None
        decide = sliding_window if rule.algo == "sliding_window" and not quota else fixed_window
        if quota:
            # A local quota counts only this node's own admissions in this window.
            # (A clock stepped back stays charged to the newer window it reached.)
            cur = counter.cur.get(self.node_id) if counter.window >= now_idx else 0
            prev, carry = 0, 0
        else:
            cur, prev, carry = counter.cur.total, counter.prev.total, counter.carry
        # The algorithm rolls the totals forward itself (and derives the carry).
        allowed, _, _, _, carry, remaining, reset_ns, retry_ns = decide(
            counter.window & WINDOW_MASK,
            cur,
            prev,
            carry,
            limit,
            burst,
            rule.window_ns,
            cost,
            now_ns,
        )
        if now_idx > counter.window:
            if quota:  # the quota's own carry is 0: settle the rule's on its numbers
                counter.roll(now_idx, rule.limit, rule.burst)
            else:
                counter.roll(now_idx)
                counter.carry = carry
        if allowed and cost and commit:
            counter.cur.increment(self.node_id, cost)
        return allowed, remaining, reset_ns, retry_ns

    def merge(
        self,
        client: str,
        series: str,
        window: int,
        slots: tuple[tuple[str, int], ...],
        now_idx: int,
        numbers_of: Callable[[str, str], Numbers] | None = None,
    ) -> bool:
        """Merge gossiped or replicated window slots; True if anything grew.

        A merge that rolls a counter into a newer window must settle the burst carry, and
        only the rule knows the numbers: ``numbers_of(series, client)`` gives them, asked only
        then (at most once a window per counter).
        """
        counter = self._counter(series, client, now_idx - 2)
        if counter is None:
            return False
        numbers = (0, 0)
        if now_idx > counter.window and numbers_of is not None:
            numbers = numbers_of(series, client)
        grew = False
        for node, count in slots:
            grew |= counter.merge_window(window, node, count, now_idx, numbers)
        return grew

    def merge_tat(self, client: str, series: str, tat: int) -> bool:
        """Merge a token-bucket arrival time (a max-register); True if it moved."""
        counter = self._counter(series, client, 0)
        if counter is None or tat <= counter.tat:
            return False
        counter.tat = tat
        return True

    def items(self) -> Iterator[tuple[tuple[str, str], ClientCounter]]:
        """Every ``((series, client), counter)`` (a snapshot, safe to mutate the store)."""
        return iter(list(self._counters.items()))

    def keys(self) -> list[tuple[str, str]]:
        """Every ``(series, client)`` held (a snapshot, safe to mutate the store)."""
        return list(self._counters)

    def reset(self, client: str, windows: dict[str, int], reset_ns: int | None = None) -> int:
        """Forget ``client``'s counts from before ``reset_ns`` (all of them if None) in the
        given series (``series -> window_ns``); returns how many counters went.

        A reset reaches a node late -- after a pause, a partition, a gossip round -- and
        admissions made here since the instant it was issued are not the counts it cleared:
        windows that began at or after ``reset_ns`` stay (the rule ``merge`` callers apply to
        gossiped slots), their carry forgiven; the window the reset falls in goes, as a
        grow-only counter cannot tell its counts from before the reset from those since. A
        token bucket's arrival time does not say when it was earned: it stays only if a
        whole window past the reset, as in a merge.
        """
        gone = 0
        for series, window_ns in windows.items():
            key = (series, client)
            counter = self._counters.get(key)
            if counter is None:
                continue
            if reset_ns is not None:
                if series.startswith("token_bucket"):
                    if counter.tat >= reset_ns + window_ns:
                        continue
                elif counter.window * window_ns >= reset_ns:
                    counter.carry = 0
                    if (counter.window - 1) * window_ns < reset_ns:
                        counter.prev = GCounter()
                    continue
            del self._counters[key]
            gone += 1
        return gone

    def discard(self, series: str, client: str) -> None:
        """Forget a client's counter (an operator reset, or hand-over of a dead entry)."""
        self._counters.pop((series, client), None)

    def sweep(self, window_ns_of: dict[str, int], *, now_ns: int, budget: int = 256) -> int:
        """Drop up to ``budget`` counters' worth of dead state, resuming where the last
        call stopped (amortized; never a full pass in one call). Returns how many went."""
        sweep = self._sweep
        if sweep is None:
            sweep = self._sweep = iter(list(self._counters))
        keys = list(itertools.islice(sweep, budget))
        if len(keys) < budget:  # the pass is over: the next call starts a new one
            self._sweep = None
        counters = self._counters
        dropped = 0
        # Per series, the window index now (None: a series not known; _UNSEEN, below any
        # index of a time >= 0: not looked up yet): a sweep looks at 256 counters. Keep
        # calling is_dead (not inlined): the mutation check plants a bug there.
        now_of: dict[str, int | None] = {}
        for key in keys:
            counter = counters.get(key)
            if counter is None:
                continue
            series = key[0]
            now_idx = now_of.get(series, _UNSEEN)
            if now_idx is _UNSEEN:
                window_ns = window_ns_of.get(series)
                now_idx = now_of[series] = None if window_ns is None else now_ns // window_ns
            if now_idx is not None and counter.is_dead(now_idx, 2, now_ns):
                del counters[key]
                dropped += 1
        self.expired += dropped
        return dropped
