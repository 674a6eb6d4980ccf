"""Fault kinds added to the fuzz after its first schedules: misdelivery, operator resets.

Each is switched on with probability 1/2 per seed (swarm testing, as every other kind) and
scheduled from its own random stream, ``derive_rng(seed, "fuzz-extras")`` (short runs) or
``derive_rng(seed, "long-fuzz-extras")`` (long ones), after the schedule of the older kinds
is drawn. So a seed's older faults stay exactly what they were -- the extras only add
actions -- and a finding keeps its reproduction.

- **misdelivery** (``misdeliver P``): each datagram reaches another node than its
  destination with probability ``P``, as when an address is reused by another node (a
  restarted container given a departed one's IP). The wrong node gets checks it was not
  asked, replies to requests it never saw, news and counts meant for another; a forwarding
  node gets replies from nodes it did not ask. Short runs set it at a random instant of the
  safety phase and clear it when the liveness phase begins; long runs hold it for one
  episode.
- **resets** (short runs; long runs draw them already): operator resets of popular clients
  at random instants of the safety phase.
"""

from __future__ import annotations

from random import Random

from .events import NS_PER_MS, NS_PER_S, derive_rng
from .scenario import Action, WorkloadSpec

#: The extra kinds, each on with probability 1/2 per seed.
EXTRA_FAULTS = ("misdeliver", "resets")
#: Misdelivery probabilities drawn.
MISDELIVER_CHANCES = (0.01, 0.05, 0.2)
#: A long run's misdelivery episode lasts this long at most (it ends in the safety phase).
LONG_MISDELIVER_MAX_NS = 30 * NS_PER_S


def _client(rng: Random, workload: WorkloadSpec) -> str:
    if workload.hot_client and rng.random() < 0.5:
        return workload.hot_client
    return f"c{rng.randrange(min(workload.clients, 5))}"


def short_extras(
    seed: int, workload: WorkloadSpec, start_ns: int, safety_end_ns: int
) -> list[Action]:
    """The extra actions of a short fuzz run (its safety phase is ``[start, safety_end)``)."""
    rng = derive_rng(seed, "fuzz-extras")
    enabled = [kind for kind in EXTRA_FAULTS if rng.random() < 0.5]
    actions: list[Action] = []
    if safety_end_ns <= start_ns:
        return actions
    if "misdeliver" in enabled:
        at = rng.randrange(start_ns, safety_end_ns, NS_PER_MS)
        actions.append(Action(at, "misdeliver", (rng.choice(MISDELIVER_CHANCES),)))
        actions.append(Action(safety_end_ns, "misdeliver", (0.0,)))
    if "resets" in enabled:
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(start_ns, safety_end_ns, NS_PER_MS)
            actions.append(Action(at, "reset", (_client(rng, workload),)))
    return actions


def long_extras(seed: int, start_ns: int, safety_end_ns: int) -> list[Action]:
    """The extra actions of a long fuzz run: a misdelivery episode, on for half the seeds."""
    rng = derive_rng(seed, "long-fuzz-extras")
    if rng.random() >= 0.5 or safety_end_ns - start_ns <= NS_PER_S:
        return []
    at = rng.randrange(start_ns, safety_end_ns - NS_PER_S, NS_PER_MS)
    until = min(  # ends before the liveness phase begins (its heal is the last action)
        safety_end_ns - NS_PER_MS, at + rng.randrange(NS_PER_S, LONG_MISDELIVER_MAX_NS, NS_PER_MS)
    )
    chance = rng.choice(MISDELIVER_CHANCES)
    return [Action(at, "misdeliver", (chance,)), Action(until, "misdeliver", (0.0,))]


def merged(timeline: tuple[Action, ...], extras: list[Action]) -> tuple[Action, ...]:
    """``timeline`` with ``extras`` added, in time order (at one instant, older first)."""
    if not extras:
        return timeline
    return tuple(sorted([*timeline, *extras], key=lambda action: action.at_ns))
