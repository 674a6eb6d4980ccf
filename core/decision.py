"""The answer to a check, shared by the in-process limiter, the cluster and the daemon client."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final, NamedTuple

NS_PER_S: Final = 1_000_000_000

#: A decision made by no limiter: the daemon client could not reach any daemon and
#: answered from its ``on_error`` policy (``allow`` or ``deny``).
FALLBACK = "fallback"
#: Which part of the system made a decision.
PATHS = ("owner", "forwarded", "local", "degraded", "overloaded", FALLBACK)

#: ``(allowed, remaining, reset_after_ns, retry_after_ns)``: one limit's verdict, as the
#: algorithms and counting series return it (``retry_after_ns`` -1: the cost never fits).
Outcome = tuple[bool, int, int, int]


class Decision(NamedTuple):
    """Whether a request may proceed, and what the client should know.

    ``remaining`` is what the client may still spend now, never more than ``limit``
    (a burst lets a client spend more after idling; ``remaining`` counts it only up
    to the limit); ``reset_after`` the seconds until the current window ends (token
    bucket: until the bucket is full); ``retry_after`` the seconds until a refused
    request of the same cost would fit (0 when allowed, ``inf`` when the cost
    exceeds the rule's capacity). ``path`` says who decided: ``owner``,
    ``forwarded``, ``local``, ``degraded``, ``overloaded`` (cluster), or
    ``fallback``: nobody, the daemon client's ``on_error`` policy answered
    (:attr:`fallback`). ``window_ns`` is the window of the limit reported, so a
    caller can state the policy (``RateLimit-Policy``'s ``w``); 0 when unknown.

    Under a rule of several limits (``10/second;1000/hour``) the decision reports
    the most restrictive one (:func:`most_restrictive`): its ``limit``,
    ``window_ns``, ``remaining`` and ``reset_after``.
    """

    allowed: bool
    limit: int
    remaining: int
    reset_after: float
    retry_after: float
    path: str = "local"
    #: True when the rule (or the node) is in shadow mode and this request would
    #: have been refused: it is allowed, and reported.
    shadowed: bool = False
    window_ns: int = 0

    @property
    def fallback(self) -> bool:
        """True when no limiter decided: the daemon was unreachable (path ``fallback``)."""
        return self.path == FALLBACK


def make_decision(
    allowed: bool,
    limit: int,
    remaining: int,
    reset_ns: int,
    retry_ns: int,
    path: str = "local",
    shadow: bool = False,
    window_ns: int = 0,
) -> Decision:
    """Build a decision from an algorithm's nanosecond outcome; in ``shadow`` mode a
    refusal is reported (``shadowed``) but the request is allowed."""
    if shadow and not allowed:
        fields = (True, limit, remaining, reset_ns / NS_PER_S, 0.0, path, True, window_ns)
        return _new(Decision, fields)
    retry = math.inf if retry_ns < 0 else retry_ns / NS_PER_S
    fields = (allowed, limit, remaining, reset_ns / NS_PER_S, retry, path, False, window_ns)
    return _new(Decision, fields)


#: Builds a Decision from a full tuple, skipping NamedTuple's Python-level ``__new__``
#: (a check's hot path: 0.1 us instead of 0.24 us, measured by scripts/bench_core.py).
_new = tuple.__new__


def allowed_decision(
    limit: int, remaining: int, reset_ns: int, path: str, window_ns: int = 0
) -> Decision:
    """The common case, built as cheaply as Python allows."""
    return _new(
        Decision, (True, limit, remaining, reset_ns / NS_PER_S, 0.0, path, False, window_ns)
    )


def capped(decision: Decision) -> Decision:
    """``decision`` with ``remaining`` no more than ``limit`` (the public doors' promise).

    The cluster's own decisions keep the burst in ``remaining`` (``CL.THROTTLE``
    answers redis-cell's ``remaining``, which counts it); every public door caps it.
    """
    if decision.remaining <= decision.limit:
        return decision
    return decision._replace(remaining=decision.limit)


def most_restrictive(outcomes: Sequence[Outcome]) -> tuple[int, Outcome]:
    """Which of several limits' outcomes a decision reports, and the combined outcome.

    A request is allowed only if every limit allows it. Allowed: the limit with the
    least ``remaining`` (ties: the longest reset) is reported. Refused: of the limits
    that refuse, the one with the longest wait (``-1``, never, the longest of all),
    since the request fits only once every limit does. Returns ``(index, outcome)``
    with the outcome's ``allowed`` the combined verdict.
    """
    assert outcomes, "a rule has at least one limit"
    allowed = all(outcome[0] for outcome in outcomes)
    if allowed:
        index = min(range(len(outcomes)), key=lambda i: (outcomes[i][1], -outcomes[i][2]))
    else:
        refusing = [i for i, outcome in enumerate(outcomes) if not outcome[0]]
        index = max(refusing, key=lambda i: _wait_key(outcomes[i][3]))
    _, remaining, reset_ns, retry_ns = outcomes[index]
    return index, (allowed, remaining, reset_ns, retry_ns)


def _wait_key(retry_ns: int) -> float:
    return math.inf if retry_ns < 0 else retry_ns
