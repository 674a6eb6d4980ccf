"""The simulator's progress guard: a run that would not end fails at once instead.

A bug that re-arms a timer at ``now`` forever, or two nodes that answer each other at
once forever, would make a run spin without end; the world stops it at once with a
:class:`RunStalled` naming the scenario, seed and last events (:data:`LAST_EVENTS`), when
virtual time stops advancing (:data:`STALL_EVENTS` within :data:`STALL_SPAN_NS`) or the
run outgrows its :func:`event_budget`.
"""

from __future__ import annotations

from .events import NS_PER_MS, NS_PER_S
from .scenario import Scenario

#: Stalled: this many events in a row inside :data:`STALL_SPAN_NS` of virtual time. Why
#: 10,000 in 1 ms: ten million events per simulated second, over 1,000 times the busiest
#: shipped scenario (about 8 events per ms at 2,000 requests/s); a timer re-armed at
#: ``now`` (run 1 ns later) trips it after 10,000 events, well under a wall second.
STALL_EVENTS = 10_000
STALL_SPAN_NS = NS_PER_MS
#: The event budget of a run: ``EVENT_BUDGET_FACTOR x duration_s x nodes x (peak offered
#: rate + BACKGROUND_EVENTS_PER_S) + BOOT_EVENTS``. Measured (shipped scenarios, default
#: fuzz), a run takes 0.2-0.9 events per simulated second per node per request/s offered
#: (plus timers, gossip and probes: about 20 per node per second with no load at all); why
#: a factor of 20: far beyond any correct run, far below a spinning one.
EVENT_BUDGET_FACTOR = 20
BACKGROUND_EVENTS_PER_S = 50
BOOT_EVENTS = 10_000
#: Events remembered for the guard's message.
LAST_EVENTS = 8


class RunStalled(Exception):
    """The progress guard stopped a run that would not end: virtual time stopped
    advancing, or the run ran far more events than its schedule can explain."""


def event_budget(scenario: Scenario) -> int:
    """The most events a correct run of ``scenario`` may take (see :data:`EVENT_BUDGET_FACTOR`).

    The offered rate is the peak over the timeline (``rate`` and ``hot`` actions change it).
    """
    background, hot = scenario.workload.rate, scenario.workload.hot_rate
    peak = background + hot
    for action in scenario.timeline:
        if action.verb == "rate":
            background = action.args[0]
        elif action.verb == "hot":
            hot = action.args[1]
        peak = max(peak, background + hot)
    seconds = scenario.duration_ns / NS_PER_S
    rate = peak + BACKGROUND_EVENTS_PER_S
    return int(EVENT_BUDGET_FACTOR * seconds * scenario.nodes * rate) + BOOT_EVENTS
