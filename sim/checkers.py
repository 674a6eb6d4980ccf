"""Checkers: they observe a simulated run and state its invariants in the mission's terms.

They never change what they observe. The world reports every decision a
node made (with the deciding node's wall clock, so windows are the ones the
decider enforced), every membership change and every timeline action; at
the end the checkers compare what was admitted with what the design
promises (``docs/design.md``, "Failure scenarios"):

- **healthy strict mode**: per client and window, admitted <= capacity
  (limit + burst);
- **faults** (strict): admitted <= capacity * (1 + degraded_fraction), plus
  one more capacity in a window where ownership changed (a join, leave,
  crash or partition moves owners, and the counts replicated last gossip
  round can lag by what the old owner admitted since);
- **local mode**: admitted <= capacity * members (each node's own view
  always includes its own admissions); the overshoot is measured;
- **under-admission**: refusals of requests the cluster-wide count would
  have admitted, measured as a rate (bounded in healthy phases);
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
from typing import TYPE_CHECKING, Any

from meshlimit.cluster.config import NodeConfig
from meshlimit.cluster.messages import MemberState
from meshlimit.core.decision import Decision
from meshlimit.core.rules import Rule

from .events import NS_PER_S
from .scenario import Action, Scenario

if TYPE_CHECKING:  # pragma: no cover
    from meshlimit.cluster.membership import MemberEvent

    from .world import World

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

    def __init__(self, scenario: Scenario, world: World) -> None:
        self.scenario = scenario
        self.world = world
        defaults = NodeConfig("x", ("x", 0))
        self.fraction = defaults.degraded_fraction
        self.violations: list[Violation] = []
        self.decisions: Counter[str] = Counter()  # path -> count
        self.allowed: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.unavailable = 0
        self.forward_latencies_ns: list[int] = []
        self._tally: dict[tuple[str, str, int], _WindowTally] = defaultdict(_WindowTally)
        #: What clients were told, by the window each answer names: catches an owner
        #: that answers without counting (say, from a stale cache).
        self._answered: dict[tuple[str, str, int], _WindowTally] = defaultdict(_WindowTally)
        #: Every "allowed" a client hears must have been counted by some node.
        self._decided_allowed: Counter[str] = Counter()
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

    # --- observations -----------------------------------------------------------------

    def on_admissions(
        self, node: str, log: list[tuple[int, str, Rule, int, bool, str]], now: int
    ) -> None:
        """Decisions made at ``node``, each with the wall time it decided at."""
        for wall, client, rule, cost, allowed, path in log:
            self.decisions[path] += 1
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

    def on_decision(
        self, node: str, client: str, decision: Decision, started: int, now: int
    ) -> None:
        """The answer a client got (the check's own path; forwarded ones arrive late)."""
        (self.allowed if decision.allowed else self.refused)[decision.path] += 1
        if decision.allowed:
            self._answered_allowed[client] += 1
            self._tally_answer(node, client, decision)
        second = now // NS_PER_S
        if decision.allowed:
            self.admitted_series[second] += 1
        else:
            self.refused_series[second] += 1
        if decision.path == "forwarded":
            self.forward_latencies_ns.append(now - started)

    def _tally_answer(self, node: str, client: str, decision: Decision) -> None:
        """Count what the client was told, in the window the answer says it belongs to:
        the decider's window ends ``reset_after`` from the decision, which a forwarded
        answer reaches a little later; rounding to the nearest window end absorbs that."""
        sim = self.world.nodes[node]
        if sim.node is None:
            return
        rule = sim.node.rule_for(client)
        if rule.algo == "token_bucket":
            return  # no windows to place it in; its bound is the decided tally's
        wall = sim.clock.wall_ns(self.world.now)
        end = wall + int(decision.reset_after * NS_PER_S)
        window = (end + rule.window_ns // 2) // rule.window_ns - 1
        tally = self._answered[(client, rule.series, window)]
        tally.admitted += 1  # the world's workload asks for cost 1 per request
        tally.capacity = max(tally.capacity, rule.capacity)
        tally.limit = max(tally.limit, rule.limit)
        tally.deciders.add(node)
        tally.paths[decision.path] += 1
        self._window_ns[rule.series] = rule.window_ns

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

    def on_membership(self, observer: str, event: MemberEvent, now: int) -> None:
        """Detection times and false suspicions; any change moves ownership."""
        subject = event.node
        if not self._ownership_changes or self._ownership_changes[-1] != now:
            self._ownership_changes.append(now)
            self._fault_spans.append((now, now + MEMBERSHIP_SETTLE_NS))
        if event.new_state == MemberState.DEAD and subject in self._crashed_at:
            key = (observer, subject)
            if key not in self._dead_seen and self.world.nodes[subject].node is None:
                self._dead_seen.add(key)
                self.detection_ns.append(now - self._crashed_at[subject])
        if event.new_state == MemberState.SUSPECT and self._was_healthy(subject, now):
            self.false_suspicions += 1

    def _was_healthy(self, node: str, now: int) -> bool:
        sim = self.world.nodes.get(node)
        if sim is None or sim.node is None or sim.paused_until is not None:
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
            self._fault_spans.append((self._clock_fault_at, end_ns + 1))
        for message in self.world.errors:
            self.violations.append(Violation("exception", message))
        for kind, tallies in (("over_admission", self._tally), ("over_answered", self._answered)):
            self._check_tallies(kind, tallies)
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
        # A clock stepped back charges admissions to the newer window the node had
        # reached, which the checker (by the decider's clock) sees as the older one.
        clock_factor = 2 if self._clock_fault_at is not None else 1
        if self.scenario.mode == "local":
            return capacity * self.scenario.nodes * clock_factor
        window_ns = self._window_ns[series]
        start = window * window_ns - _epoch_offset()
        end = start + window_ns
        if series.startswith("token_bucket"):
            # GCRA: a full bucket, then a window's worth of refill, fit in one window.
            capacity += tally.limit
        if not self._faulty(start, end):
            return capacity
        bound = math.floor(capacity * (1 + self.fraction))
        if any(start - SETTLE_NS <= t < end for t in self._ownership_changes):
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
    from .events import SIM_EPOCH_NS

    return SIM_EPOCH_NS
