"""The limiting engine: rules plus counting series, deciding checks at a given ``now``.

This is everything a single node needs to enforce limits, with no clock,
lock or IO of its own: the in-process :class:`meshlimit.Limiter` wraps it
with a clock and a lock, and the cluster node drives it as the owner of its
slice of clients.

A check costs: one hash of the client id (cached by Python on the string),
one or two dict lookups to resolve the rule, one dict lookup for the series
and one bucket scan in the series' table. The common admitted checks of a
single-limit rule (``fastpath`` says which) take the fused path: lookup,
algorithm and record update in one frame; the rest take the full path through
the series (``fast_path=False``: always). A rule of several limits
(``10/second;1000/hour``) asks each limit's series first and counts in all of
them only if all allow: twice that per limit.
"""

from __future__ import annotations

from .decision import Decision, Outcome, allowed_decision, make_decision, most_restrictive
from .fastpath import check_token, check_window
from .hlc import ZERO, Stamp
from .registry import RuleRegistry, check_client_id
from .rules import MAX_COUNT, Rule, as_rule
from .series import Series, WindowSeries, new_series

DEFAULT_MAX_CLIENTS = 10_000_000


class Engine:
    """Rules and per-series client state; decides checks at the ``now_ns`` given."""

    __slots__ = ("registry", "series", "max_clients", "fast_path", "_last_rule", "_last_series")

    def __init__(
        self,
        default: Rule | str = "100/minute",
        *,
        max_clients: object = DEFAULT_MAX_CLIENTS,
        max_rules: int = 1_000_000,
        fast_path: bool = True,
    ) -> None:
        # ``object``, checked here: compiled, an ``int`` parameter would let ``True`` in
        # and refuse ``1.5`` with mypyc's message instead of this one (``check``'s note).
        max_clients = check_max_clients(max_clients)
        self.registry = RuleRegistry(default, max_entries=max_rules)
        #: One series per (algo, window): ``Rule.series`` -> state.
        self.series: dict[str, Series] = {}
        self.max_clients: int = max_clients
        #: Take the fused path (``fastpath``) where it applies; False: always the full
        #: path, its reference (tests compare the two).
        self.fast_path = fast_path
        #: The single-limit rule of the last check and its series: the next check under
        #: the same rule object (rules are immutable and series never replaced) skips
        #: the ``also`` test and the series lookup.
        self._last_rule: Rule | None = None
        self._last_series: Series | None = None
        # Note the default's burst now: a series another rule creates first would
        # otherwise keep its records too briefly for the default's carry to drain.
        for limit in self.registry.default.limits:
            self.series_for(limit)

    def check(self, client: object, cost: object, *, now_ns: int, path: str = "local") -> Decision:
        """Decide one request of ``cost`` (an ``int``) for ``client`` (a ``str``) at ``now_ns``.

        ``remaining`` is capped at the limit (a burst is spendable, not shown). The
        arguments are typed ``object`` because this method checks them itself, with
        errors that name them; compiled (``docs/design.md``, "The native build"),
        ``str`` and ``int`` here would be checked first, with mypyc's own message, and
        ``True`` would pass as a cost."""
        if type(client) is not str or not client or len(client) > 64:
            client = check_client_id(client)
        if type(cost) is not int or not 0 <= cost <= MAX_COUNT:
            cost = check_cost(cost)
        registry = self.registry
        if registry._clients or registry._calls:
            rule = registry.resolve(client)
        else:  # no client overrides (the common case): ``resolve``'s answer, without a call
            rule = registry._default_rule
        if rule is self._last_rule:
            series = self._last_series
            assert series is not None
        else:
            if rule.also:
                return self._check_all(client, rule, cost, now_ns, path)
            series = self.series.get(rule.series)
            if series is None:
                series = self.series_for(rule)
            self._last_rule, self._last_series = rule, series
        if self.fast_path:
            if isinstance(series, WindowSeries):
                decision = check_window(series, hash(client), rule, cost, now_ns, path)
            else:
                decision = check_token(series, hash(client), rule, cost, now_ns, path)
            if decision is not None:
                return decision
        allowed, remaining, reset_ns, retry_ns = series.check(
            hash(client), rule.limit, rule.burst, cost, now_ns
        )
        if remaining > rule.limit:
            remaining = rule.limit
        if allowed:
            return allowed_decision(rule.limit, remaining, reset_ns, path, rule.window_ns)
        return make_decision(
            False, rule.limit, remaining, reset_ns, retry_ns, path, rule.shadow, rule.window_ns
        )

    def _check_all(self, client: str, rule: Rule, cost: int, now_ns: int, path: str) -> Decision:
        """A rule of several limits: each answers first; only if all allow, each counts."""
        key = hash(client)
        parts = [
            (limit, self.series.get(limit.series) or self.series_for(limit))
            for limit in rule.limits
        ]
        outcomes: list[Outcome] = [
            series.check(key, limit.limit, limit.burst, cost, now_ns, False)
            for limit, series in parts
        ]
        if cost and all(outcome[0] for outcome in outcomes):
            outcomes = [
                series.check(key, limit.limit, limit.burst, cost, now_ns) for limit, series in parts
            ]
        index, (allowed, remaining, reset_ns, retry_ns) = most_restrictive(outcomes)
        shown = rule.limits[index]
        remaining = min(remaining, shown.limit)
        return make_decision(
            allowed, shown.limit, remaining, reset_ns, retry_ns, path, rule.shadow, shown.window_ns
        )

    def series_for(self, rule: Rule) -> Series:
        """The series counting under ``rule`` (a single limit), created on first use."""
        series = self.series.get(rule.series)
        if series is None:
            series = self.series[rule.series] = new_series(
                rule.algo, rule.window_ns, max_clients=self.max_clients
            )
        series.note_rule(rule.limit, rule.burst)
        return series

    def apply_rule(self, key: str, value: Rule | str | None, stamp: Stamp) -> bool:
        """Merge one registry entry (from the API or from gossip); True if it changed."""
        if isinstance(value, str) and not value.startswith("@"):
            value = as_rule(value)
        changed = self.registry.apply(key, value, stamp)
        if changed and isinstance(value, Rule):
            for limit in value.limits:
                self.series_for(limit)
        return changed

    def reset(self, client: str) -> int:
        """Forget ``client``'s counts in every series; returns how many records went."""
        key = hash(client)
        return sum(series.table.delete(key) for series in self.series.values())

    def client_count(self) -> int:
        """Client records held across all series."""
        return sum(len(s.table) for s in self.series.values())

    def evictions(self) -> tuple[int, int]:
        """``(dead, live)`` records evicted to stay under ``max_clients``."""
        dead = sum(s.table.evicted_dead for s in self.series.values())
        return dead, sum(s.table.evicted_live for s in self.series.values())


def check_cost(cost: object) -> int:
    """Refuse a cost that is no ``int`` (``TypeError``) or out of range (``ValueError``);
    return it."""
    if type(cost) is not int:
        raise TypeError(f"cost must be an int, got {type(cost).__name__} {cost!r}")
    if not 0 <= cost <= MAX_COUNT:
        raise ValueError(f"cost must be an integer from 0 to {MAX_COUNT}, got {cost!r}")
    return cost


def check_max_clients(max_clients: object) -> int:
    """Refuse a client bound that is no ``int`` or below 1 (0 would track nobody); return it."""
    if type(max_clients) is not int:
        raise TypeError(f"max_clients must be an int, got {max_clients!r}")
    if max_clients < 1:
        raise ValueError(f"max_clients must be at least 1, got {max_clients}")
    return max_clients


__all__ = ["DEFAULT_MAX_CLIENTS", "Engine", "ZERO", "check_cost", "check_max_clients"]
