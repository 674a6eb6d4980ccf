"""Timing a span, and the few statistics the benchmarks report: medians and percentiles.

Every benchmark states its method as warm-up, repetitions and the median of them; latency
is reported as nearest-rank percentiles of every recorded sample (no interpolation, no
histogram buckets), so a reported p99 is a latency some check really had.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

#: Percentile names -> quantiles, for :func:`latency_summary`; ``max`` is the largest sample.
QUANTILES = {"p50": 0.50, "p90": 0.90, "p99": 0.99, "p999": 0.999}


@dataclass(frozen=True, slots=True)
class Span:
    """Wall-clock and process CPU nanoseconds of one timed span."""

    wall_ns: int
    cpu_ns: int

    @property
    def wall_s(self) -> float:
        return self.wall_ns / 1e9

    @property
    def cpu_s(self) -> float:
        return self.cpu_ns / 1e9


class Stopwatch:
    """Wall (``perf_counter_ns``) and process CPU (``process_time_ns``, every thread) time
    from its making to :meth:`stop`. The wall span nests inside the CPU span, so the
    clock reads themselves count as CPU, not as wall time."""

    __slots__ = ("cpu0", "wall0")

    def __init__(self) -> None:
        self.cpu0 = time.process_time_ns()
        self.wall0 = time.perf_counter_ns()

    def stop(self) -> Span:
        wall = time.perf_counter_ns()
        cpu = time.process_time_ns()
        return Span(wall - self.wall0, cpu - self.cpu0)


def median(values: Iterable[float], *, skip_nan: bool = False) -> float:
    """The median, NaN when there is nothing to take it of; ``skip_nan`` drops NaNs first
    (a figure a run could not measure)."""
    xs = [x for x in values if x == x] if skip_nan else list(values)
    return statistics.median(xs) if xs else math.nan


def nearest_rank(ordered: Sequence[float], q: float) -> float:
    """The ``q``-quantile of sorted values by nearest rank (NaN when empty)."""
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency_summary(
    values: Iterable[int],
    *,
    unit: float,
    names: Sequence[str] = ("p50", "p90", "p99", "p999", "max"),
    suffix: str = "",
) -> dict[str, float]:
    """``n`` and the named percentiles (:data:`QUANTILES`; ``max`` is q = 1) of latencies in one
    unit (say nanoseconds), divided by ``unit`` (1,000 for microseconds), each named with
    ``suffix`` appended (``p99_us``). NaN for every percentile when there are none."""
    ordered = sorted(values)
    out: dict[str, float] = {"n": len(ordered)}
    for name in names:
        out[name + suffix] = nearest_rank(ordered, QUANTILES.get(name, 1.0)) / unit
    return out
