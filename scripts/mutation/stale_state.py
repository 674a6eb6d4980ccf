"""Planted bugs that keep state stale while every total looks right.

A rule cached on first use (the registry holds the newest rule, decisions keep the old
one), and a hand-over that carries the current window only (the new owner's sliding
window weighs an empty previous one). Each kept within the per-window bound; they are
caught by the verdicts added for them: ``stale_rule`` (``sim/rules_in_force.py``) and
``sliding_overweight`` (``sim/sliding.py``, with the scenario ``handover_sliding_hot``).

Tried and left out: replication (own slots) that sends the current window only. Strict
mode sends an owner's admissions to its replicas as it answers, local mode gossips a slot
as it admits, so the previous window has left before the roll; only a resend after a
loss would drop it, where no bound claims the counts arrived.
"""

from __future__ import annotations

from typing import Any

from meshlimit.cluster.node import Node
from mutation.catalogue import Mutant, _wrap


def _plant_rule_cached(node: Node) -> None:
    """The registry's answer for a client is cached on first use and never dropped: a rule
    change reaches the registry but not the decisions."""
    registry = node.registry
    cache: dict[str, Any] = {}
    original = registry.resolve

    def resolve(client: str) -> Any:
        rule = cache.get(client)
        if rule is None:
            rule = cache[client] = original(client)
        return rule

    registry.resolve = resolve  # type: ignore[method-assign]


def _plant_handover_current_only(node: Node) -> None:
    """A hand-over (every slot) sends the current window only, not the previous one."""

    def make(slots_of: Any) -> Any:
        def wrapped(key: Any, wall: int, *, own_only: bool) -> Any:
            slots = slots_of(key, wall, own_only=own_only)
            return slots if own_only else slots[:1]

        return wrapped

    _wrap(node.replication, "slots_of", make)


STALE_STATE_MUTANTS: tuple[Mutant, ...] = (
    Mutant("rule_cached", "rule ordering",
           "a client's rule is cached on first use and never dropped: changes reach no decision",
           ("rule_change_storm", "rule_races"), plant=_plant_rule_cached),
    Mutant("handover_current_only", "hand-over",
           "a hand-over sends the current window of each counter, not the previous one",
           ("handover_sliding_hot", "join_leave"), plant=_plant_handover_current_only),
)  # fmt: skip
