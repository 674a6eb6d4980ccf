"""Each deciding life against the algorithm it runs: its own admissions alone must obey it.

Theory of operation. A node decides on its merged counts, and those always hold at least
the admissions it made itself: it increments its own G-counter slot, slots merge by max,
and a counter is only forgotten when an operator resets the client or when its windows
have all ended. So the rule a life enforced, replayed over nothing but its own admissions,
must have allowed every one of them -- whatever the faults, whatever the other deciders
did. That replay judges what a per-window tally cannot see (``docs/simulator.md``):

- **Sliding window** (``sliding_window_broken``), per admission: an admission of ``cost`` at
  ``e`` into window ``w`` (length ``W``, capacity ``C = limit + burst``) by a life that had
  admitted ``cur`` in ``w`` and ``prev`` in ``w - 1`` (by its own wall clock, every path
  counted) needs ``prev x (W - e) + (cur + cost) x W <= C x W``: Cloudflare's weighted
  estimate of ``core/algorithms.py`` in the node's own integers. A window that forgets the
  previous one, or rolls it away, admits up to ``2 C`` over a window spanning two fixed
  ones while every fixed window stays within ``C``. Judged at full capacity, for lives whose
  wall clock never stepped back, and for clients never reset.
- **Token bucket** (``token_bucket_broken``), per admission: GCRA over the life's own
  full-capacity admissions, the arrival time ``tat`` moved ``cost x ceil(W / limit)`` on from
  ``max(tat, now)`` by each, must stay within ``(limit + burst)`` intervals of ``now``. A
  bucket one token deeper, or refilling faster, passes the window tally (a token bucket's
  window may hold ``2 x limit + burst``) but not this. Judged as the sliding window is.
- **Burst carry** (``sustained_rate_exceeded``), over consecutive windows: with the carry of
  ``docs/design.md`` any ``k`` consecutive windows admit at most ``k x limit + burst``
  (telescoping ``a_i <= limit + c_(i+1) - c_i``). The carry a life derives from its own
  admissions is at most the one it derives from its merged counts, *provided* the merged
  counts were complete at each roll: a counter rolled by a merge (a replicated, handed-over
  or re-sent slot) settles its carry on the counts it holds then, which may lag, and a
  hand-over moves slots, not the carry. So this is judged only where no slot of the client
  can reach the decider:
  strict mode, a run of consecutive windows each decided by that one life alone at full
  capacity (judged ``exact``), with the same rule throughout, no reset, a clock never
  stepped back, every running node holding the decider alive, and no membership event and
  no fault starting or ending from :data:`QUIET_MARGIN_NS` before the run to its end.

Nothing here reads a node: the world's decision logs are the input.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meshlimit.cluster.wire.messages import MemberState
from meshlimit.core.rules import Rule

from .events import NS_PER_S, SIM_EPOCH_NS
from .history import History
from .verdicts import Violation
from .views import View
from .windows import EXACT, LifeKey, WindowKey, WindowTally

#: Before a judged run of windows, this long without a membership event or a fault
#: starting or ending: hand-over rounds (a batch a gossip round), degraded re-sends
#: (``DEGRADED_RESENDS`` rounds once the owner is alive) and deltas in flight are over.
QUIET_MARGIN_NS = 3 * NS_PER_S
#: Findings kept per verdict kind (each names its client, window and life).
MAX_FINDINGS = 20


@dataclass(slots=True)
class _Own:
    """One life's admissions of one client series in its latest window and the one before."""

    index: int
    cur: int = 0
    prev: int = 0


class OwnCounts:
    """The sliding-window and token-bucket replays (see the module docstring), fed every
    admission."""

    def __init__(self) -> None:
        self._own: dict[tuple[LifeKey, str, str], _Own] = {}
        #: The token-bucket replay's arrival time per (life, client, series).
        self._tat: dict[tuple[LifeKey, str, str], int] = {}
        self.stepped_back: set[LifeKey] = set()
        """Lives whose wall clock read an earlier window after a later one."""
        self.findings: list[Violation] = []
        self.judged = 0

    def admit(
        self,
        life: LifeKey,
        wall: int,
        client: str,
        rule: Rule,
        cost: int,
        *,
        full: bool,
        relived: bool,
        reset: bool,
    ) -> None:
        """An admission by ``life`` at its wall clock ``wall``; ``reset``: the client was reset
        at or before it (its counts may have been cleared since)."""
        if relived:
            self.stepped_back.add(life)
        if life in self.stepped_back:
            return
        if rule.algo == "token_bucket":
            if full and not reset:
                self._token(life, wall, client, rule, cost)
            return
        window_ns = rule.window_ns
        index, elapsed = divmod(wall, window_ns)
        key = (life, client, rule.series)
        own = self._own.get(key)
        if own is None:
            own = self._own[key] = _Own(index)
        elif index == own.index + 1:
            own.index, own.prev, own.cur = index, own.cur, 0
        elif index > own.index:
            own.index, own.prev, own.cur = index, 0, 0
        if full and not reset and rule.algo == "sliding_window":
            self.judged += 1
            held = own.prev * (window_ns - elapsed) + (own.cur + cost) * window_ns
            if held > rule.capacity * window_ns and len(self.findings) < MAX_FINDINGS:
                self.findings.append(Violation(
                    "sliding_window_broken",
                    f"{life[0]} (life {life[1]}) admitted {cost} at {elapsed / 1e6:.3f} ms into"
                    f" the window with {own.cur} of its own admissions in it and {own.prev} in"
                    f" the window before: weighted {held / window_ns:.2f} > capacity"
                    f" {rule.capacity} ({rule})", client, index, (life[0],),
                ))  # fmt: skip
        own.cur += cost

    def _token(self, life: LifeKey, wall: int, client: str, rule: Rule, cost: int) -> None:
        """The GCRA replay of a full-capacity token-bucket admission (``token_bucket_broken``):
        the arrival time ``tat`` of the life's own admissions, each moving it ``cost``
        emission intervals on from ``max(tat, now)``, stays within ``limit + burst`` intervals
        of now. The node's own ``tat`` is never earlier (merges only move it later)."""
        interval = -(-rule.window_ns // rule.limit)
        key = (life, client, rule.series)
        tat = max(self._tat.get(key, wall), wall) + cost * interval
        self._tat[key] = tat
        self.judged += 1
        depth = (rule.limit + rule.burst) * interval
        if tat - wall > depth and len(self.findings) < MAX_FINDINGS:
            self.findings.append(Violation(
                "token_bucket_broken",
                f"{life[0]} (life {life[1]}) admitted {cost} when its own admissions alone"
                f" put the bucket {tat - wall - depth} ns past its depth of {rule.limit}"
                f" + {rule.burst} tokens ({rule})", client, wall // rule.window_ns, (life[0],),
            ))  # fmt: skip


class Quiet:
    """When a run was quiet: the instants of every membership event and every disturbance
    (sorted), and each life's view, to ask who held the decider alive."""

    def __init__(
        self,
        events: list[int],
        disturbances: list[int],
        views: dict[LifeKey, View],
        history: History,
    ) -> None:
        self.events = events
        self.disturbances = disturbances
        self.views = views
        self.history = history
        self._states: dict[tuple[LifeKey, str], tuple[list[int], list[int]]] = {}

    def quiet(self, start: int, end: int) -> bool:
        """No membership event and no disturbance in ``[start, end]``."""
        for times in (self.events, self.disturbances):
            at = bisect_left(times, start)
            if at < len(times) and times[at] <= end:
                return False
        return True

    def held_alive(self, node: str, at: int) -> bool:
        """Whether every life running at ``at`` held ``node`` alive in its view then."""
        for name, lives in self.history.lives.items():
            for life in lives:
                if name == node or not life.running_through(at, at):
                    continue
                if self._state_at(life.key, node, at) != MemberState.ALIVE:
                    return False
        return True

    def _state_at(self, life: LifeKey, member: str, at: int) -> int | None:
        """``member``'s state in ``life``'s view at ``at`` (None: not in it yet)."""
        key = (life, member)
        timeline = self._states.get(key)
        if timeline is None:
            view = self.views.get(life)
            log = [] if view is None else [(t, s) for t, who, s in view.log if who == member]
            timeline = self._states[key] = ([t for t, _ in log], [s for _, s in log])
        times, states = timeline
        index = bisect_right(times, at)
        return states[index - 1] if index else None


def sustained(
    windows: dict[WindowKey, WindowTally],
    labels: dict[WindowKey, str],
    quiet: Quiet,
    stepped_back: set[LifeKey],
    window_ns: Callable[[str], int],
    resets: Mapping[str, Sequence[Any]] | None = None,
) -> list[Violation]:
    """The burst-carry verdict over runs of consecutive windows (see the module docstring).
    A run ends at an operator reset of the client (``resets``: each with its instant
    ``at``): it forgives the carry, so the run after it starts afresh (long fuzz seed
    1357004083); a window within one of a reset's instant (clocks drift) is left out."""
    by_series: dict[tuple[str, str], list[int]] = {}
    for (client, series, index), window in windows.items():
        if labels.get((client, series, index)) != EXACT or series.startswith("token_bucket"):
            continue
        if resets and client in resets:
            width = window_ns(series)
            start = index * width - SIM_EPOCH_NS
            if any(start - width <= r.at < start + 2 * width for r in resets[client]):
                continue
        if len(window.lives) != 1 or window.changed or window.capacity <= window.limit:
            continue
        (life, tally), = window.lives.items()  # fmt: skip
        if tally.degraded or tally.relived or life in stepped_back:
            continue
        by_series.setdefault((client, series), []).append(index)
    out: list[Violation] = []
    for (client, series), indexes in sorted(by_series.items()):
        indexes.sort()
        for run in _runs(windows, client, series, indexes):
            finding = _judge_run(windows, client, series, run, quiet, window_ns(series))
            if finding is not None and len(out) < MAX_FINDINGS:
                out.append(finding)
    return out


def _runs(
    windows: dict[WindowKey, WindowTally], client: str, series: str, indexes: list[int]
) -> Iterable[list[int]]:
    """Maximal runs of consecutive indexes decided by one life under one rule."""
    run: list[int] = []
    for index in indexes:
        if run:
            last = windows[(client, series, run[-1])]
            window = windows[(client, series, index)]
            if (
                index != run[-1] + 1
                or window.lives.keys() != last.lives.keys()
                or (window.limit, window.capacity) != (last.limit, last.capacity)
            ):
                yield run
                run = []
        run.append(index)
    if run:
        yield run


def _judge_run(
    windows: dict[WindowKey, WindowTally],
    client: str,
    series: str,
    run: list[int],
    quiet: Quiet,
    window_ns: int,
) -> Violation | None:
    """The most any consecutive windows of ``run`` admitted over ``k x limit``, against the
    burst (Kadane's maximum sub-array sum of ``admitted - limit``), over its quiet parts."""
    first = windows[(client, series, run[0])]
    (life,) = first.lives
    limit, burst = first.limit, first.capacity - first.limit
    worst: tuple[int, int, int] | None = None  # (excess, first index, last index)
    for part in _quiet_parts(windows, client, series, run, quiet, life[0]):
        current, since = 0, part[0]
        for index in part:
            excess = windows[(client, series, index)].admitted - limit
            if current <= 0:
                current, since = excess, index
            else:
                current += excess
            if current > burst and (worst is None or current > worst[0]):
                worst = (current, since, index)
    if worst is None:
        return None
    best, low, high = worst
    k = high - low + 1
    return Violation(
        "sustained_rate_exceeded",
        f"{life[0]} (life {life[1]}), the only decider, admitted {best + k * limit} in the {k}"
        f" consecutive windows {low}..{high} > {k} x limit {limit} + burst {burst} ="
        f" {k * limit + burst} (window {window_ns / 1e9:g} s)",
        client, high, (life[0],),
    )  # fmt: skip


def _quiet_parts(
    windows: dict[WindowKey, WindowTally],
    client: str,
    series: str,
    run: list[int],
    quiet: Quiet,
    node: str,
) -> Iterable[list[int]]:
    """The longest stretches of ``run`` quiet from ``QUIET_MARGIN_NS`` before their first
    admission to their last, with every running node holding ``node`` alive at the start."""
    part: list[int] = []
    start = 0
    for index in run:
        window = windows[(client, series, index)]
        if part and quiet.quiet(start, window.last_at):
            part.append(index)
            continue
        if part:
            yield part
        start = window.first_at - QUIET_MARGIN_NS
        ok = quiet.quiet(start, window.last_at) and quiet.held_alive(node, window.first_at)
        part = [index] if ok else []
    if part:
        yield part
