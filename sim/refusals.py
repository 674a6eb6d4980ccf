"""Refusals judged against every admission seen: under-admission, and resets that stay reset.

A node refuses a check when its view of the client's counts is full. Its view can only
hold admissions some node made (counts come from admissions, and merge by max), so a
refusal that one node seeing *every* admission would have granted means the node counted
something that never happened: over-counting, or old counts brought back after an
operator reset. :class:`Refusals` judges each refusal at full capacity as it is reported,
against the tally of every admission reported before it:

- **under-admission** (measured; a verdict in windows judged exact): the cluster-wide count
  of the window (and, for a sliding window, the previous one weighted by its overlap)
  plus the cost fits the capacity; with a burst, less the carry replayed over every
  admission of the series (an upper bound of any node's, :mod:`~meshlimit.sim.carry`;
  such refusals are not counted in ``judged``, the allowance's base). Judged for window
  rules, not in windows a stepped-back clock made uncertain (for a
  sliding window, nor in the window after one: it weighs that one's count in);
- **reset kept** (``reset_not_kept``): once an operator reset of the client surely
  reached the refusing node (the node it was written at; or one its writer held alive, so
  sent it at once, up since before the write and running, over a link that stayed clean
  for the longest delay), with every wall clock true, the admissions *since the reset*
  must explain the refusal: the node cleared its counts when the reset arrived and merges
  no slot of a window that began before it, so its counts hold nothing older. Stale counts
  that come back (a slot re-sent from before the reset) fail it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from meshlimit.core.rules import Rule

from .bounds import TICK_SLACK_NS, UNBOUNDED
from .carry import CarryBounds
from .events import NS_PER_S
from .history import History, Life
from .windows import WindowKey, WindowTally

#: ``finding(kind, life, client, now, detail)``: a per-decision verdict.
Finding = Callable[[str, Life, str, int, str], None]


@dataclass(slots=True)
class Reset:
    """An operator reset of one client."""

    at: int
    nodes: tuple[str, ...]
    """The nodes up when it was written (paused or not)."""
    views_agreed: bool
    """Whether every running node held every other one live when it was written."""
    done_at: int | None = None
    """When every node surely had it (None: not known, or never sure)."""
    writer: tuple[str, int] | None = None
    """The life it was written at, once known (``on_written``)."""
    sent_to: frozenset[str] = frozenset()
    """The peers its writer held alive when it wrote it: it sent it to each at once."""
    wall_ns: int = -1
    """Its stamp's wall time (-1: not known): the instant nodes clear the window of."""


class Refusals:
    """See the module docstring; ``windows`` is the checkers' tally, read only."""

    def __init__(
        self, history: History, windows: dict[WindowKey, WindowTally], finding: Finding
    ) -> None:
        self._history = history
        self._windows = windows
        self._finding = finding
        self.resets: dict[str, list[Reset]] = {}
        self.uncertain: set[WindowKey] = set()
        """Windows a stepped-back clock may have charged admissions to unseen."""
        self.judged = 0
        self.under: list[WindowKey] = []
        """The window of each refusal the cluster-wide count would have admitted."""
        self.carry = CarryBounds(windows, self.uncertain)
        """The burst carry replayed over every admission (burst rules, ``sim/carry.py``)."""

    def on_reset(self, client: str, now: int, *, views_agreed: bool) -> None:
        history = self._history  # paused ones included: they take it once they resume
        nodes = tuple(name for name in history.lives if history.life(name) is not None)
        self.resets.setdefault(client, []).append(Reset(now, nodes, views_agreed))

    def on_written(
        self, client: str, writer: tuple[str, int], sent_to: frozenset[str], now: int,
        wall_ms: int = -1,
    ) -> None:  # fmt: skip
        """The reset of ``client`` written at ``now`` at ``writer`` (its stamp's wall time
        ``wall_ms``), sent to ``sent_to``."""
        for reset in reversed(self.resets.get(client, ())):
            if reset.at == now and reset.writer is None:
                reset.writer, reset.sent_to = writer, sent_to
                reset.wall_ns = wall_ms * 1_000_000 if wall_ms >= 0 else -1
                return

    def reached(self, client: str, life: Life, now: int) -> Reset | None:
        """The latest reset of ``client`` that surely reached ``life`` by ``now``, while every
        wall clock is true (nodes filter stale counts by the writer's clock)."""
        history = self._history
        resets = self.resets.get(client)
        if not resets or any(history.clock_touched(name, now) for name in history.lives):
            return None
        for reset in reversed(resets):
            if reset.writer is None or reset.at > now:
                continue
            if reset.writer == life.key:
                return reset
            if life.node not in reset.sent_to or life.started_at > reset.at:
                continue
            arrived = reset.at + history.delay_bound(reset.at, now) + TICK_SLACK_NS
            if (
                arrived <= now
                and history.delay_bound(reset.at, arrived) < UNBOUNDED
                and life.running_through(reset.at, arrived)
                and history.link_clean(reset.writer[0], life.node, reset.at, arrived)
            ):
                return reset
        return None

    def judge(self, life: Life, wall: int, client: str, rule: Rule, cost: int, now: int) -> None:
        """One refusal at full capacity by ``life`` (see the module docstring)."""
        if rule.algo == "token_bucket":
            return
        window_ns = rule.window_ns
        index, elapsed = divmod(wall, window_ns)
        key = (client, rule.series, index)
        uncertain = self.uncertain
        if key in uncertain or (
            rule.algo == "sliding_window" and (client, rule.series, index - 1) in uncertain
        ):
            return  # a sliding window weighs the previous window's count in too
        if rule.burst:  # not counted in ``judged``: the allowance stays the burst-free one's
            if self.carry.fits(key, rule, cost, elapsed):
                self.under.append(key)
            return  # the reset verdict would need the carry since the reset: not judged
        self.judged += 1
        if self._fits(rule, key, cost, elapsed, since=None):
            self.under.append(key)
        reset = self.reached(client, life, now)
        if reset is not None and self._fits(rule, key, cost, elapsed, since=reset.at):
            self._finding(
                "reset_not_kept", life, client, now,
                f"refused with {self._since(key, reset.at)} admitted since the reset at"
                f" {reset.at / NS_PER_S:.3f} s (capacity {rule.capacity})",
            )  # fmt: skip

    def _fits(self, rule: Rule, key: WindowKey, cost: int, elapsed: int, since: int | None) -> bool:
        window_ns = rule.window_ns
        held = 0
        if rule.algo == "sliding_window":
            held = self._since((key[0], key[1], key[2] - 1), since) * (window_ns - elapsed)
        return held + (self._since(key, since) + cost) * window_ns <= rule.capacity * window_ns

    def _since(self, key: WindowKey, since: int | None) -> int:
        window = self._windows.get(key)
        if window is None:
            return 0
        if since is None:
            return window.admitted
        return sum(t.since(since) for t in window.lives.values())

    def _settle(self, reset: Reset, now: int) -> None:
        if reset.done_at is not None or not reset.views_agreed:
            return
        history = self._history
        arrived = reset.at + history.delay_bound(reset.at, now) + TICK_SLACK_NS
        if arrived > now or history.delay_bound(reset.at, arrived) >= UNBOUNDED:
            return
        nodes = reset.nodes
        # A paused node takes what reached its socket only once it resumes (fuzz seed
        # 8181024549: a reset that waited out a pause let the window it landed in count twice).
        later = True
        while later:
            later = False
            for name in nodes:
                for life in history.lives.get(name, ()):
                    for paused, resumed in life.pauses:
                        if (
                            paused <= arrived
                            and resumed > reset.at
                            and resumed + TICK_SLACK_NS > arrived
                        ):
                            arrived, later = resumed + TICK_SLACK_NS, True
        if arrived > now:
            return
        if all(history.link_clean(a, b, reset.at, arrived) for a in nodes for b in nodes if a != b):
            reset.done_at = arrived

    def reset_floor(self, client: str, at: int, end: int) -> int:
        """The instant before which admissions may have left every node's counts of
        ``client`` by ``at``: the latest reset made by then, once every node had it (a node
        drops, applying one, what was counted before; unknown: ``UNBOUNDED``)."""
        floor = -UNBOUNDED
        for reset in self.resets.get(client, ()):
            if reset.at <= at:
                self._settle(reset, end)
                floor = max(floor, UNBOUNDED if reset.done_at is None else reset.done_at)
        return floor

    def touches(
        self, client: str, window: WindowTally, end: int, index: int = -1, window_ns: int = 0
    ) -> int:
        """How many resets of ``client`` reached nodes while the window was counting. A
        life started after a reset learns it later, whenever it syncs its rules, and clears
        the window the reset fell in (``index`` of ``window_ns``) then, though it counted
        there only since (fuzz seed 5000199): such a reset touches that window too."""
        count = 0
        for reset in self.resets.get(client, ()):
            self._settle(reset, end)
            done = reset.done_at if reset.done_at is not None else UNBOUNDED
            touched = reset.at <= window.last_at and window.first_at <= done
            if not touched and window_ns and reset.wall_ns // window_ns == index >= 0:
                lives = self._history.lives
                touched = any(
                    lives[node][number - 1].started_at > reset.at for node, number in window.lives
                )
            count += touched
        return count
