"""Checkers: they observe a simulated run and state its invariants in the mission's terms.

They never change what they observe, and they never reach into the world: the
world hands them every fact they judge by. It reports every decision a node
made (with the deciding node's wall clock, so windows are the ones the
decider enforced), every membership change (with the :class:`Liveness` of the
node it is about), every timeline action and every exception that escaped a
node; at the end the checkers compare what was admitted with what the design
promises (``docs/design.md``, "Failure scenarios"):

- **healthy strict mode**: per client and window, admitted <= capacity
  (limit + burst);
- **faults** (strict): admitted <= capacity * (1 + degraded_fraction), plus
  one more capacity in a window where ownership changed (a join, leave,
  crash or partition moves owners, and the counts replicated last gossip
  round can lag by what the old owner admitted since);
- **local mode**: admitted <= capacity * members (each node's own view
  always includes its own admissions), plus one capacity in a window where a
  member (re)joined; the overshoot is measured;
- **under-admission**: refusals of requests one perfect node seeing every
  admission would have admitted (window rules without burst), measured; in
  healthy strict windows at most 1% of judged refusals (floor 3);
- **liveness**: after the last heal, rules and membership converge;
- **detection**: time from a crash to every live node declaring it dead, and
  false suspicions of nodes that were up and reachable;
- **accounting**: every "allowed" a client hears was counted by some node;
- **safety of the code**: no exception ever escapes a node.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from meshlimit.cluster.node.config import NodeConfig
from meshlimit.cluster.wire.messages import MemberState
from meshlimit.core.decision import Decision
from meshlimit.core.rules import Rule

from .events import NS_PER_S, SIM_EPOCH_NS
from .scenario import Action, Scenario

if TYPE_CHECKING:  # pragma: no cover
    from meshlimit.cluster.membership import MemberEvent

#: Verbs that start a fault; ``heal`` ends the network ones, restarts end crashes.
NETWORK_FAULTS = {"partition", "partition_oneway", "isolate", "flap", "loss", "duplicate",
                  "reorder", "latency"}  # fmt: skip
NODE_FAULTS = {"crash", "pause", "leave", "join", "restart", "resume"}
CLOCK_FAULTS = {"skew", "drift", "jump"}
#: After a fault ends, windows this long afterwards still count as faulty (detection,
#: reaping of dead members, re-ownership): the lan preset's reap time plus slack.
SETTLE_NS = 5 * NS_PER_S
#: A membership change (a join at boot included) moves ownership; counts follow within
#: a gossip round or two, so windows this close to one are checked against the fault bound.
MEMBERSHIP_SETTLE_NS = 5 * NS_PER_S
#: How far a skewed or stepped clock may name windows from true time (the fuzzer and the
#: shipped scenarios stay within a few seconds).
CLOCK_SLACK_NS = 10 * NS_PER_S
#: Healthy strict windows may refuse what one perfect node would admit only this rarely
#: (a forwarded check decided a moment before one counted earlier reaches the tally).
UNDER_ADMISSION_RATE = 0.01
UNDER_ADMISSION_FLOOR = 3


class Liveness(Enum):
    """What the world knows of a node at the instant it reports news about that node."""

    RUNNING = "running"
    """Up and taking input."""
    PAUSED = "paused"
    """Up, but its process is stopped: datagrams wait in its socket buffer."""
    DOWN = "down"
    """Crashed or left (no node runs under that name), or not a node of this world."""


@dataclass(frozen=True, slots=True)
class Violation:
    """A broken invariant, with what is needed to find it again."""

    kind: str
    detail: str
    client: str = ""
    window: int = -1
    nodes: tuple[str, ...] = ()

    def __str__(self) -> str:
        where = f" client={self.client} window={self.window}" if self.client else ""
        nodes = f" nodes={','.join(self.nodes)}" if self.nodes else ""
        return f"{self.kind}:{where}{nodes} {self.detail}"


@dataclass(slots=True)
class _WindowTally:
    admitted: int = 0
    capacity: int = 0
    limit: int = 0
    deciders: set[str] = field(default_factory=set)
    paths: Counter[str] = field(default_factory=Counter)


class Checkers:
    """Every invariant of a run; ``violations`` is empty when the run is correct."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        defaults = NodeConfig("x", ("x", 0))
        self.fraction = defaults.degraded_fraction
        self.violations: list[Violation] = []
        self.decisions: Counter[str] = Counter()  # path -> count
        self.allowed: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.unavailable = 0
        self.forward_latencies_ns: list[int] = []
        self._tally: dict[tuple[str, str, int], _WindowTally] = defaultdict(_WindowTally)
        #: Every "allowed" a client hears must have been counted by some node: catches
        #: an owner that answers without counting (say, from a stale cache).
        self._decided_allowed: Counter[str] = Counter()
        #: Refusals one perfect node would have admitted: (client, series, window).
        self._under: list[tuple[str, str, int]] = []
        self.refusals_judged = 0
        self.under_admissions = 0
        self.under_admissions_healthy = 0
        self._answered_allowed: Counter[str] = Counter()
        self._window_ns: dict[str, int] = {}
        self._fault_spans: list[tuple[int, int]] = []  # [start, end) of faulty periods
        self._ownership_changes: list[int] = []
        self._open_network_fault: int | None = None
        self._down: dict[str, int] = {}  # node -> since (crashed, paused, left)
        self._clock_fault_at: int | None = None
        self._crashed_at: dict[str, int] = {}
        self.detection_ns: list[int] = []
        self.false_suspicions = 0
        self._dead_seen: set[tuple[str, str]] = set()
        self.last_heal_at = 0
        self.timeline_rows: list[tuple[int, str]] = []
        self.admitted_series: dict[int, int] = Counter()  # second -> admitted (for reports)
        self.refused_series: dict[int, int] = Counter()
        self.rule_changes = 0
        self._exceptions: list[str] = []  # escaped a node; each one is a violation

    # --- observations -----------------------------------------------------------------

    def on_admissions(
        self, node: str, log: list[tuple[int, str, Rule, int, bool, str]], now: int
    ) -> None:
        """Decisions made at ``node``, each with the wall time it decided at."""
        for wall, client, rule, cost, allowed, path in log:
            self.decisions[path] += 1
            if not allowed and cost and path != "degraded":
                self._judge_refusal(wall, client, rule, cost)
            if not allowed or not cost:
                continue
            self._decided_allowed[client] += cost
            window = wall // rule.window_ns
            tally = self._tally[(client, rule.series, window)]
            tally.admitted += cost
            tally.capacity = max(tally.capacity, rule.capacity)
            tally.limit = max(tally.limit, rule.limit)
            tally.deciders.add(node)
            tally.paths[path] += cost
            self._window_ns[rule.series] = rule.window_ns

    def _judge_refusal(self, wall: int, client: str, rule: Rule, cost: int) -> None:
        """Would one perfect node, seeing every admission in the cluster, have refused too?

        Judged for window rules without a burst (the carry needs the whole history);
        a refusal the cluster-wide count would have admitted is under-admission.
        """
        if rule.burst or rule.algo == "token_bucket":
            return
        window_ns = rule.window_ns
        window, elapsed = divmod(wall, window_ns)
        cur = self._tally[(client, rule.series, window)].admitted
        held = 0
        if rule.algo == "sliding_window":
            held = self._tally[(client, rule.series, window - 1)].admitted * (window_ns - elapsed)
        self.refusals_judged += 1
        if held + (cur + cost) * window_ns <= rule.capacity * window_ns:
            self._under.append((client, rule.series, window))

    def on_decision(
        self, node: str, client: str, decision: Decision, started: int, now: int
    ) -> None:
        """The answer a client got (the check's own path; forwarded ones arrive late)."""
        (self.allowed if decision.allowed else self.refused)[decision.path] += 1
        if decision.allowed:
            self._answered_allowed[client] += 1
        second = now // NS_PER_S
        if decision.allowed:
            self.admitted_series[second] += 1
        else:
            self.refused_series[second] += 1
        if decision.path == "forwarded":
            self.forward_latencies_ns.append(now - started)

    def on_unavailable(self, node: str, client: str, now: int) -> None:
        """A request reached a node that is down (the client would retry elsewhere)."""
        self.unavailable += 1

    def on_rule_change(self, key: str, value: Any, now: int) -> None:
        self.rule_changes += 1

    def on_action(self, action: Action, now: int) -> None:
        """Track which periods are faulty, for the bounds."""
        verb = action.verb
        self.timeline_rows.append((now, str(action)))
        if verb in NETWORK_FAULTS:
            if self._open_network_fault is None:
                self._open_network_fault = now
            self._ownership_changes.append(now)
        elif verb == "heal":
            if self._open_network_fault is not None:
                self._fault_spans.append((self._open_network_fault, now + SETTLE_NS))
                self._open_network_fault = None
            self.last_heal_at = now
        elif verb in ("crash", "pause", "leave"):
            self._down.setdefault(action.args[0], now)
            self._ownership_changes.append(now)
            if verb == "crash":
                self._crashed_at[action.args[0]] = now
        elif verb in ("restart", "join", "resume"):
            since = self._down.pop(action.args[0], now)
            self._fault_spans.append((since, now + SETTLE_NS))
            self._ownership_changes.append(now)
            self.last_heal_at = max(self.last_heal_at, now)
        elif verb in CLOCK_FAULTS and self._clock_fault_at is None:
            self._clock_fault_at = now

    def on_membership(
        self, observer: str, event: MemberEvent, now: int, *, subject_liveness: Liveness
    ) -> None:
        """Detection times and false suspicions; any change moves ownership.

        ``subject_liveness`` is the state of the node the event is about, as the
        world knows it now (``observer`` can only guess it).
        """
        subject = event.node
        if not self._ownership_changes or self._ownership_changes[-1] != now:
            self._ownership_changes.append(now)
            self._fault_spans.append((now, now + MEMBERSHIP_SETTLE_NS))
        if event.new_state == MemberState.DEAD and subject in self._crashed_at:
            key = (observer, subject)
            if key not in self._dead_seen and subject_liveness is Liveness.DOWN:
                self._dead_seen.add(key)
                self.detection_ns.append(now - self._crashed_at[subject])
        if event.new_state == MemberState.SUSPECT and self._was_healthy(subject_liveness):
            self.false_suspicions += 1

    def on_exception(self, message: str) -> None:
        """An exception escaped a node (``message`` names the node, instant and error)."""
        self._exceptions.append(message)

    def _was_healthy(self, liveness: Liveness) -> bool:
        """A running node while no fault is open: suspecting it is a false suspicion."""
        if liveness is not Liveness.RUNNING:
            return False
        return self._open_network_fault is None and self._clock_fault_at is None and not self._down

    # --- verdicts ---------------------------------------------------------------------

    def finish(self, end_ns: int) -> None:
        """Check every window and the end state; fills ``violations``."""
        if self._open_network_fault is not None:
            self._fault_spans.append((self._open_network_fault, end_ns + 1))
        for since in self._down.values():
            self._fault_spans.append((since, end_ns + 1))
        if self._clock_fault_at is not None:
            # A skewed clock names windows up to its skew away from true time.
            self._fault_spans.append((self._clock_fault_at - CLOCK_SLACK_NS, end_ns + 1))
        for message in self._exceptions:
            self.violations.append(Violation("exception", message))
        self._check_tallies("over_admission", self._tally)
        self._check_under_admission()
        for client, answered in self._answered_allowed.items():
            counted = self._decided_allowed[client]
            if answered > counted:
                self.violations.append(
                    Violation(
                        "uncounted_admission",
                        f"clients were told 'allowed' {answered} times but nodes counted {counted}",
                        client,
                    )
                )

    def _check_under_admission(self) -> None:
        """Measure under-admission; in healthy strict windows it must stay rare."""
        self.under_admissions = len(self._under)
        healthy = [
            key for key in self._under if not self._faulty(*self._window_span(key[1], key[2]))
        ]
        self.under_admissions_healthy = len(healthy)
        allowance = max(UNDER_ADMISSION_FLOOR, UNDER_ADMISSION_RATE * self.refusals_judged)
        if self.scenario.mode == "strict" and len(healthy) > allowance:
            client, _, window = healthy[0]
            self.violations.append(
                Violation(
                    "under_admission",
                    f"{len(healthy)} refusals in healthy windows that the cluster-wide count"
                    f" would have admitted (allowance {allowance:.0f} of"
                    f" {self.refusals_judged} judged)",
                    client,
                    window,
                )
            )

    def _window_span(self, series: str, window: int) -> tuple[int, int]:
        window_ns = self._window_ns.get(series) or int(series.split(":")[1])
        start = window * window_ns - _epoch_offset()
        return start, start + window_ns

    def _check_tallies(self, kind: str, tallies: dict[tuple[str, str, int], _WindowTally]) -> None:
        for (client, series, window), tally in tallies.items():
            bound = self.bound(series, window, tally)
            if tally.admitted > bound:
                self.violations.append(
                    Violation(
                        kind,
                        f"admitted {tally.admitted} > bound {bound} (capacity {tally.capacity},"
                        f" paths {dict(tally.paths)})",
                        client,
                        window,
                        tuple(sorted(tally.deciders)),
                    )
                )

    def bound(self, series: str, window: int, tally: _WindowTally) -> int:
        """The most the design lets through in this window (see the module docstring)."""
        capacity = tally.capacity
        if series.startswith("token_bucket"):
            # GCRA: a full bucket, then a window's worth of refill, fit in one window.
            capacity += tally.limit
        # A clock stepped back charges admissions to the newer window the node had
        # reached, which the checker (by the decider's clock) sees as the older one.
        clock_factor = 2 if self._clock_fault_at is not None else 1
        window_ns = self._window_ns[series]
        start = window * window_ns - _epoch_offset()
        end = start + window_ns
        moved = any(start - SETTLE_NS <= t < end for t in self._ownership_changes)
        if self.scenario.mode == "local":
            # A member that (re)joins starts from the counts its peers push to it, which
            # lag their admissions by up to a gossip round: one more capacity at most.
            return (capacity * self.scenario.nodes + capacity * moved) * clock_factor
        if not self._faulty(start, end):
            return capacity
        bound = math.floor(capacity * (1 + self.fraction))
        if moved:
            bound += capacity
        return bound * clock_factor

    def _faulty(self, start: int, end: int) -> bool:
        return any(s < end and start < e for s, e in self._fault_spans)

    def peak_ratio(self) -> float:
        """The highest admitted/capacity over all client windows."""
        return max(
            (t.admitted / t.capacity for t in self._tally.values() if t.capacity), default=0.0
        )

    def windows_checked(self) -> int:
        return len(self._tally)


def _epoch_offset() -> int:
    """Wall clocks start at the simulator's epoch; windows are counted from wall zero."""
    return SIM_EPOCH_NS
