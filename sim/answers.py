"""What a client is told: a full-capacity decision's ``remaining`` and ``retry_after``.

The window verdicts judge what was admitted; nothing there reads what the answer *said*.
A client pacing itself on ``remaining`` overshoots if it is overstated, and one told
``retry_after = 0`` on a refusal retries in a loop. Two verdicts, on every decision made
on the merged counts (paths ``owner``, ``local``, and ``forwarded`` as the owner's reply
reports it), never a degraded or shadowed one, nor a client an operator reset:

- ``remaining_overstated``: ``remaining`` above what the decider's own admissions leave.
  A node's counter holds at least its own admissions of the window (its G-counter slot;
  merges only raise it), so for a window algorithm ``remaining <= max(0, capacity - own)``
  with ``own`` the decider's life's admissions in the window, this one included when
  allowed (``core/algorithms.py``: allowed ``room - cost``, refused ``max(0, room)``, the
  sliding weight and the carry only lower it; the burst stays in, as the cluster's own
  answers keep it, ``core/decision.py``). For the token bucket the same life's admissions
  alone, run through GCRA (``own = max(own, wall) + cost * interval``), give an arrival time
  the node's never falls below (``max`` merges), so ``remaining <= (tolerance - (own' -
  wall)) // interval``. A rule of several limits reports the smallest remaining when it
  allows (so the smallest bound holds) and a refusing limit's when it refuses (the largest).
  Not judged: a window decision whose clock had read a later window (charged to that one),
  a token-bucket one while its clock is behind its latest reading (a sweep may have dropped
  an arrival time then in the past: the own replay starts again from each such decision). A forwarded answer is held to the largest bound among
  the owner's decisions for the client between the check's sending and its answer (one of
  them is it; a duplicate is answered from the first).
- ``retry_now``: a refusal decided here that says ``retry_after`` 0 (each algorithm
  reports at least 1 ns, or -1, "never", which is ``inf``), or "never" for a cost that fits
  every limit's capacity. A forwarded reply carries whole milliseconds, so it is not judged.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from meshlimit.core.decision import Decision
from meshlimit.core.rules import Rule

if TYPE_CHECKING:  # pragma: no cover
    from .history import Life

#: The paths whose decision the checked node itself made on its merged counts.
_HERE = ("owner", "local")
#: A node's decisions kept per client for forwarded answers (bounds the memory; an answer
#: whose sending is older than the oldest kept is not judged).
_KEPT = 256
Finding = Callable[[str, "Life", str, int, str], None]


class Answers:
    """Holds each full-capacity answer to its decider's own counts (see the module)."""

    def __init__(self, finding: Finding, life_of: Callable[[str], Life | None]) -> None:
        self._finding = finding
        self._life_of = life_of
        self._reset: set[str] = set()
        #: A decision a node just returned, awaiting its log entry (logged at the same
        #: instant, right after): node -> (client, decision, instant).
        self._waiting: dict[str, tuple[str, Decision, int]] = {}
        #: (life, client, series) -> [window index, own admitted] (window algorithms).
        self._own: dict[tuple[tuple[str, int], str, str], list[int]] = {}
        #: (life, client, series) -> own arrival time (token bucket).
        self._tat: dict[tuple[tuple[str, int], str, str], int] = {}
        #: (node, client) -> (now, bound) of its latest decisions, for forwarded answers.
        self._decided: dict[tuple[str, str], deque[tuple[int, float]]] = {}

    def reset(self, client: str) -> None:
        """An operator reset ``client``: its counters may be gone, so no bound holds."""
        self._reset.add(client)

    def answered(
        self, node: str, client: str, decision: Decision, started: int, now: int, owner: str | None
    ) -> None:
        """The answer a client got: one decided here waits for its log entry (it comes
        next); a forwarded one is held to the owner's (``owner``: the replying node)."""
        if decision.path in _HERE:
            self._waiting[node] = (client, decision, now)
        elif decision.path == "forwarded" and owner is not None and client not in self._reset:
            self._judge_forwarded(node, client, decision, started, now, owner)

    def logged(
        self, life: Life, wall: int, client: str, rule: Rule, cost: int, allowed: bool,
        path: str, high: int, now: int,
    ) -> None:  # fmt: skip
        """One decision ``life`` logged at its wall clock ``wall`` (``high``: the latest
        reading of that clock): counted, and judged if it is the answer awaited."""
        full = path != "degraded"
        bounds = [self._count(life, wall, client, limit, cost, allowed, full, high)
                  for limit in rule.limits]  # fmt: skip
        bound = (min if allowed else max)(bounds)
        if client not in self._reset:  # a degraded one (a forwarded check too): not judged
            kept = self._decided.setdefault((life.node, client), deque(maxlen=_KEPT))
            kept.append((now, bound if full else math.inf))
        waiting = self._waiting.get(life.node)
        if waiting is None or waiting[0] != client or waiting[1].path != path or waiting[2] != now:
            return
        del self._waiting[life.node]
        decision = waiting[1]
        if client in self._reset:
            return
        if decision.remaining > bound:
            self._finding(
                "remaining_overstated", life, client, now,
                f"told remaining {decision.remaining} > {bound:g} its own admissions leave"
                f" (rule {rule}, cost {cost})",
            )  # fmt: skip
        if allowed or decision.shadowed:
            return
        fits = all(limit.limit and cost <= limit.capacity for limit in rule.limits)
        if decision.retry_after <= 0 or (fits and math.isinf(decision.retry_after)):
            self._finding(
                "retry_now", life, client, now,
                f"refused cost {cost} with retry_after {decision.retry_after}",
            )  # fmt: skip

    def _count(
        self, life: Life, wall: int, client: str, limit: Rule, cost: int, allowed: bool,
        full: bool, high: int,
    ) -> float:  # fmt: skip
        """Count one limit's part of a decision in the life's own tally; the most
        ``remaining`` that limit could have reported (``inf``: not judged)."""
        if not limit.limit:
            return math.inf
        key, window_ns = (life.key, client, limit.series), limit.window_ns
        capacity = limit.capacity
        if limit.algo == "token_bucket":
            if not full:  # a local quota counts the window slot, not the arrival time
                return math.inf
            interval = -(-window_ns // limit.limit)
            # Behind its latest reading, the clock may be behind a sweep that dropped the
            # node's arrival time (then in the past): the own one starts again, from 0.
            tat = self._tat.get(key, 0) if wall >= high else 0
            tat = (tat if tat > wall else wall) + (cost * interval if allowed else 0)
            if allowed and cost:
                self._tat[key] = tat
            if wall < high:
                return math.inf
            return (capacity * interval - (tat - wall)) // interval
        index = wall // window_ns
        if index < high // window_ns:  # the clock had read a later window: charged there
            return math.inf
        own = self._own.get(key)
        if own is None or own[0] != index:
            own = self._own[key] = [index, 0]
        if allowed:
            own[1] += cost
        return max(0, capacity - own[1])

    def _judge_forwarded(
        self, node: str, client: str, decision: Decision, started: int, now: int, owner: str
    ) -> None:
        kept = self._decided.get((owner, client))
        if not kept or (len(kept) == kept.maxlen and kept[0][0] >= started):
            return
        # Kept in time order: walk back from the newest to the first decided before the send.
        most = -math.inf
        for at, bound in reversed(kept):
            if at < started:
                break
            if at <= now and bound > most:
                most = bound
        if most == -math.inf or decision.remaining <= most:
            return
        life = self._life_of(node)
        if life is not None:
            self._finding(
                "remaining_overstated", life, client, now,
                f"told remaining {decision.remaining} by {owner}, whose decisions since the"
                f" check was sent leave at most {most:g}",
            )  # fmt: skip
