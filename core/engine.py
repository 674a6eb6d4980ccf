"""The limiting engine: rules plus counting series, deciding checks at a given ``now``.

This is everything a single node needs to enforce limits, with no clock,
lock or IO of its own: the in-process :class:`meshlimit.Limiter` wraps it
with a clock and a lock, and the cluster node drives it as the owner of its
slice of clients.

A check costs: one hash of the client id (cached by Python on the string),
one or two dict lookups to resolve the rule, one dict lookup for the series
and one bucket scan in the series' table.
"""

from __future__ import annotations

from .decision import Decision, allowed_decision, make_decision
from .hlc import ZERO, Stamp
from .registry import RuleRegistry, check_client_id
from .rules import MAX_COUNT, Rule, as_rule
from .series import Series, new_series

DEFAULT_MAX_CLIENTS = 10_000_000


class Engine:
    """Rules and per-series client state; decides checks at the ``now_ns`` given."""

    __slots__ = ("registry", "series", "max_clients")

    def __init__(
        self,
        default: Rule | str = "100/minute",
        *,
        max_clients: int = DEFAULT_MAX_CLIENTS,
        max_rules: int = 1_000_000,
    ) -> None:
        self.registry = RuleRegistry(default, max_entries=max_rules)
        #: One series per (algo, window): ``Rule.series`` -> state.
        self.series: dict[str, Series] = {}
        self.max_clients = max_clients
        # Note the default's burst now: a series another rule creates first would
        # otherwise keep its records too briefly for the default's carry to drain.
        self.series_for(self.registry.default)

    def check(self, client: str, cost: int, *, now_ns: int, path: str = "local") -> Decision:
        """Decide one request of ``cost`` for ``client`` at ``now_ns``."""
        if type(client) is not str or not client or len(client) > 64:
            check_client_id(client)
        if type(cost) is not int or not 0 <= cost <= MAX_COUNT:
            raise ValueError(f"cost must be an integer from 0 to {MAX_COUNT}, got {cost!r}")
        rule = self.registry.resolve(client)
        series = self.series.get(rule.series)
        if series is None:
            series = self.series_for(rule)
        allowed, remaining, reset_ns, retry_ns = series.check(
            hash(client), rule.limit, rule.burst, cost, now_ns
        )
        if allowed:
            return allowed_decision(rule.limit, remaining, reset_ns, path)
        return make_decision(False, rule.limit, remaining, reset_ns, retry_ns, path, rule.shadow)

    def series_for(self, rule: Rule) -> Series:
        """The series counting under ``rule``, created on first use."""
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
            self.series_for(value)
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


__all__ = ["DEFAULT_MAX_CLIENTS", "Engine", "ZERO"]
