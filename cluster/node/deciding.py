"""How a node decides a check it decides itself: on its merged counts, or degraded.

Theory of operation. The node (``node.py``) routes; this part decides. On the merged
counts (paths ``owner``, ``forwarded``, ``local``) the common case goes through the fused
fast path (``core/counter_fastpath.py``: one counter, admitted), the rest through
``CounterStore.check``; an admission marks the counter for replication. Degraded (path
``degraded``), the node's local quota of the client's degraded units decides, and an
admission is queued for reporting to the owner. A rule of several limits is checked limit
by limit, each counted only if all allow. ``overloaded`` is explicit backpressure: a
refusal counted nowhere. Every decision is counted in ``stats``, logged for the simulator
when ``decision_log`` is on, and shadowed if the rule is.

:class:`Deciding` is a part of :class:`~meshlimit.cluster.node.node.Node` (a mixin): it
uses the node's registry, counters, replication, degraded mode, stats and config.
"""

from __future__ import annotations

from collections import Counter

from meshlimit.cluster.node.config import NodeConfig
from meshlimit.cluster.node.degraded import DegradedMode
from meshlimit.cluster.node.replication import Replication
from meshlimit.core.counter_fastpath import admit_counter
from meshlimit.core.counters import CounterStore, Outcome
from meshlimit.core.decision import Decision, make_decision, most_restrictive
from meshlimit.core.registry import RuleRegistry
from meshlimit.core.rules import Rule

#: The stats key of an admitted decision, by path (``_report`` builds the same).
_ALLOWED = {path: f"{path}_allowed" for path in ("owner", "forwarded", "local")}
#: ``(wall, client, rule, cost, allowed, path)`` of every decision, for the simulator.
DecisionLog = list[tuple[int, str, Rule, int, bool, str]]


class Deciding:
    """The node's deciding part (see the module docstring)."""

    config: NodeConfig
    registry: RuleRegistry
    counters: CounterStore
    replication: Replication
    degraded: DegradedMode
    stats: Counter[str]
    decision_log: DecisionLog | None
    _alone: bool

    def _decide_here(self, client: str, cost: int, wall: int, path: str) -> Decision:
        """Decide on the merged counts: as the owner, for a forwarder, or in local mode."""
        rule = self.registry.resolve(client)
        if rule.also:
            return self._decide_all(client, rule, cost, wall, path)
        decision = admit_counter(self.counters, client, rule, cost, wall, path)
        if decision is not None:  # the common case, fused (``core/counter_fastpath.py``)
            if cost and not self._alone:  # alone: nobody to replicate to (``gossip``)
                self.replication.mark_changed(rule.series, client)
            self.stats[_ALLOWED[path]] += 1
            if self.decision_log is not None:
                self.decision_log.append((wall, client, rule, cost, True, path))
            return decision
        return self._decide_full(client, rule, cost, wall, path)

    def _decide_full(self, client: str, rule: Rule, cost: int, wall: int, path: str) -> Decision:
        """:meth:`_decide_here` of one limit past the fused attempt: the store's own check."""
        outcome = self.counters.check(client, rule, cost, now_ns=wall)
        if outcome[0] and cost:
            self.replication.mark_changed(rule.series, client)
        return self._report(wall, client, rule, cost, path, outcome)

    def _decide_batch(
        self, clients: list[str], cost: int, wall: int, path: str
    ) -> list[Decision | None]:
        """:meth:`_decide_here` of each client in turn (never None: the type is
        ``Node.check_many``'s), the same decisions and effects, with the per-check calls of
        the common case (one limit, admitted by the fused path) in one loop and its stats
        counted once."""
        if self.decision_log is not None:
            return [self._decide_here(client, cost, wall, path) for client in clients]
        resolve = self.registry.resolve
        counters = self.counters
        mark = None if not cost or self._alone else self.replication.mark_changed
        decisions: list[Decision | None] = []
        append = decisions.append
        admitted = 0
        for client in clients:
            rule = resolve(client)
            if rule.also:
                append(self._decide_all(client, rule, cost, wall, path))
                continue
            decision = admit_counter(counters, client, rule, cost, wall, path)
            if decision is None:
                append(self._decide_full(client, rule, cost, wall, path))
                continue
            if mark is not None:
                mark(rule.series, client)
            admitted += 1
            append(decision)
        if admitted:
            self.stats[_ALLOWED[path]] += admitted
        return decisions

    def _decide_all(self, client: str, rule: Rule, cost: int, wall: int, path: str) -> Decision:
        """A rule of several limits: each answers first (against its local quota when
        degraded); only if all allow does each count, and the decision reports the most
        restrictive (``most_restrictive``). Every limit is one counter like any other:
        forwarded to, replicated, handed over and reported by the same machinery."""
        degraded = path == "degraded"
        limits = rule.limits
        quotas = [
            self.degraded.quota(limit, client, wall) if degraded else None for limit in limits
        ]
        outcomes = [
            self.counters.check(client, limit, cost, now_ns=wall, capacity=quota, commit=False)
            for limit, quota in zip(limits, quotas, strict=True)
        ]
        allowed = all(outcome[0] for outcome in outcomes)
        if allowed and cost:
            for limit, quota in zip(limits, quotas, strict=True):
                self.counters.check(client, limit, cost, now_ns=wall, capacity=quota)
                if degraded:
                    self.degraded.note_admitted(limit.series, client)
                else:
                    self.replication.mark_changed(limit.series, client)
        elif degraded:
            outcomes = [
                self._retry_soon(outcome, limit, wall)
                if outcome[3] < 0 and cost <= limit.capacity
                else outcome
                for limit, outcome in zip(limits, outcomes, strict=True)
            ]
        index, outcome = most_restrictive(outcomes)
        return self._report(wall, client, rule, cost, path, outcome, limits[index])

    def _decide_degraded(self, client: str, cost: int, wall: int, path: str = "") -> Decision:
        """Decide without the owner, against this node's local quota (``path`` unused: the
        signature of ``_decide_forwarded``, for a stranger's checks)."""
        rule = self.registry.resolve(client)
        if rule.also:
            return self._decide_all(client, rule, cost, wall, "degraded")
        quota = self.degraded.quota(rule, client, wall)
        outcome = self.counters.check(client, rule, cost, now_ns=wall, capacity=quota)
        if outcome[0] and cost:
            self.degraded.note_admitted(rule.series, client)
        elif outcome[3] < 0 and cost <= rule.capacity:
            outcome = self._retry_soon(outcome, rule, wall)
        return self._report(wall, client, rule, cost, "degraded", outcome)

    def overloaded(self, client: str, reason: str) -> Decision:
        """Refuse a check because the cluster is too busy to decide it in time: its (alive)
        owner already has ``max_pending_per_owner`` checks awaiting it, or the check timed
        out while the owner answered slowly or stalled (``reason``: ``owner_backlog``,
        ``slow_owner``, ``stalled_owner``, or a
        driver's own, such as ``waiting_full``). Explicit backpressure, counted in stats
        only (``overloaded`` and ``overloaded_REASON``; no counter, no decision log), to
        retry after a forward timeout. Not degraded: a busy owner is reachable."""
        self.stats["overloaded"] += 1
        self.stats[f"overloaded_{reason}"] += 1
        rule = self.registry.resolve(client)
        retry_ns = self.config.forward_timeout_ns
        shadow = rule.shadow or self.config.shadow
        return make_decision(
            False, rule.limit, 0, retry_ns, retry_ns, "overloaded", shadow, rule.window_ns
        )

    def _retry_soon(self, outcome: Outcome, rule: Rule, wall: int) -> Outcome:
        """A degraded refusal of a cost the rule admits but the local quota never does
        (a quota of zero, say, while joining): worth retrying when the quota renews with
        the next window, or after a probe interval, whichever is sooner, since the owner
        may be reachable by then. Never "retry never" (-1) for a passing condition."""
        allowed, remaining, reset_ns, _ = outcome
        to_next_window = rule.window_ns - wall % rule.window_ns
        retry_ns = min(to_next_window, self.config.membership.probe_interval_ns)
        return allowed, remaining, reset_ns, max(retry_ns, 1_000_000)

    def _report(
        self,
        wall: int,
        client: str,
        rule: Rule,
        cost: int,
        path: str,
        outcome: Outcome,
        shown: Rule | None = None,
    ) -> Decision:
        """Count a decision, log it for the simulator, and apply shadow mode. ``shown``:
        the limit the decision reports (a rule of several limits), else ``rule``."""
        allowed, remaining, reset_ns, retry_ns = outcome
        self.stats[f"{path}_{'allowed' if allowed else 'refused'}"] += 1
        if self.decision_log is not None:
            self.decision_log.append((wall, client, rule, cost, allowed, path))
        shadow = rule.shadow or self.config.shadow
        if shadow and not allowed:
            self.stats["shadow_refused"] += 1
        limit = rule if shown is None else shown
        return make_decision(
            allowed, limit.limit, remaining, reset_ns, retry_ns, path, shadow, limit.window_ns
        )

    def _window_of(self, client: str, limit: int, reset_ns: int) -> int:
        """The window of an owner's decision that reported ``limit``: that of our copy of
        the client's rule whose limit it is (0 if none: the rule is changing). Of several
        limits with that number, the shortest window that can hold ``reset_ns``."""
        windows = [
            part.window_ns for part in self.registry.resolve(client).limits if part.limit == limit
        ]
        if len(windows) > 1:
            windows = sorted(w for w in windows if w >= reset_ns) or windows
        return windows[0] if windows else 0
