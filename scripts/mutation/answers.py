"""Planted bugs in what the client is told, caught by the verdicts of ``sim/answers.py``.

Every admission stays within its bound; only the answer is wrong: ``remaining`` one more
than is left (a client pacing itself on it overshoots), and a refusal saying
``retry_after = 0`` (clients retry at once, in a loop). ``remaining_overstated`` and
``retry_now`` hold each full-capacity answer to the decider's own admissions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from meshlimit.cluster.node import Node
from mutation.catalogue import Mutant, _wrap


def _plant_remaining_overstated(node: Node) -> None:
    """Every decision made here reports one unit more ``remaining`` than is left (an
    off-by-one in the header arithmetic): a client pacing itself on it overshoots."""

    def make(decide: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any) -> Any:
            decision = decide(*args)
            return decision._replace(remaining=decision.remaining + 1)

        return wrapped

    _wrap(node, "_decide_here", make)
    _wrap(node, "_decide_degraded", make)


def _plant_refusal_retry_now(node: Node) -> None:
    """A refusal decided here says ``retry_after = 0``: clients retry at once, in a loop."""

    def make(decide: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any) -> Any:
            decision = decide(*args)
            if decision.allowed:
                return decision
            return decision._replace(retry_after=0.0)

        return wrapped

    _wrap(node, "_decide_here", make)


ANSWERS_MUTANTS: tuple[Mutant, ...] = (
    Mutant("remaining_overstated", "decision reporting",
           "every decision reports one unit more remaining than is left",
           ("healthy", "hot_client"), plant=_plant_remaining_overstated),
    Mutant("refusal_retry_now", "decision reporting",
           "a refusal decided on the merged counts says retry_after = 0",
           ("hot_client", "healthy"), plant=_plant_refusal_retry_now),
)  # fmt: skip
