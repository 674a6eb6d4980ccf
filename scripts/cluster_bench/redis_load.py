"""redis-benchmark as the load generator of the three-daemon benchmark: one process per port,
all started together, and what their output says.

Theory of operation. redis-benchmark (C, one thread per process) sends a fixed number of
requests (``-n``); it has no duration and no rate option. So there are two kinds of run:

- a *timed* run starts every process with a huge ``-n`` and stops them (SIGTERM) after T
  seconds. redis-benchmark flushes a progress line every 250 ms, ``rps=R (overall: O)``; the
  last ``overall`` of each process is its requests per second over the run. No latency
  percentiles (redis-benchmark prints them only when it finishes).
- a *counted* run gives each process ``-n`` requests, sized by the caller from a rate
  measured just before so that it lasts about T seconds, and reads the summary printed at the
  end: requests and seconds, throughput, the latency summary (avg min p50 p95 p99 max), and
  the latency distribution, whose points (``P% <= V milliseconds (cumulative count C)``) are
  merged over the processes into percentiles of all their requests (:func:`merged_quantile`).
  A counted run still going at its deadline is stopped and read like a timed one.

The aggregate rate of a run is the sum of its processes' rates (they start together and run
for about the same time). Every process is registered with the script's
:class:`~harness.processes.Cleanup` while it runs, so none outlives an error or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import math
import re
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.processes import HOST, Cleanup

#: ``-r``: keys drawn at random from this many (``key:000000012345``).
KEYSPACE = 100_000
#: ``-n`` of a timed run: more than any run here will send.
ENDLESS = 2_000_000_000
#: The commands, with redis-benchmark's random-key placeholder.
ML_CHECK = ("ML.CHECK", "key:__rand_int__")
INCR = ("INCR", "key:__rand_int__")

_PROGRESS = re.compile(r"rps=[\d.]+ \(overall: ([\d.]+)\)")
_COMPLETED = re.compile(r"(\d+) requests completed in ([\d.]+) seconds")
_THROUGHPUT = re.compile(r"throughput summary: ([\d.]+) requests per second")
_SUMMARY = re.compile(r"latency summary \(msec\):\s*\n\s*([a-z0-9 ]+)\n\s*([\d. ]+)")
_POINT = re.compile(r"<= ([\d.]+) milliseconds \(cumulative count (\d+)\)")


@dataclass(frozen=True, slots=True)
class Load:
    """What each redis-benchmark process of a run does: ``-c clients -P pipeline``."""

    clients: int
    pipeline: int

    @property
    def in_flight(self) -> int:
        """Requests a process keeps outstanding."""
        return self.clients * self.pipeline

    def label(self, processes: int) -> str:
        return f"{processes}x(-c {self.clients} -P {self.pipeline})"


@dataclass(slots=True)
class Output:
    """What one redis-benchmark process reported."""

    rps: float = math.nan
    requests: int = 0
    seconds: float = math.nan
    complete: bool = False
    summary: dict[str, float] = field(default_factory=dict)
    """avg, min, p50, p95, p99, max in milliseconds (a completed run only)."""
    points: list[tuple[float, int]] = field(default_factory=list)
    """(milliseconds, cumulative count) of the latency distribution (a completed run only)."""


@dataclass(slots=True)
class Run:
    """One run of N processes, one per port."""

    label: str
    outputs: list[Output]
    wall_s: float

    @property
    def rate(self) -> float:
        """Requests per second of all processes together."""
        return sum(o.rps for o in self.outputs)

    @property
    def complete(self) -> bool:
        return all(o.complete for o in self.outputs)

    def quantile_ms(self, q: float) -> float:
        """The q-quantile of every request's latency (NaN for a timed run)."""
        if not self.complete:
            return math.nan
        return merged_quantile([o.points for o in self.outputs], q)

    @property
    def p50_ms(self) -> float:
        return self.quantile_ms(0.50)

    @property
    def p99_ms(self) -> float:
        return self.quantile_ms(0.99)

    def to_json(self) -> dict[str, Any]:
        return {
            "load": self.label,
            "rate": self.rate,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "wall_s": self.wall_s,
            "complete": self.complete,
            "processes": [
                {"rps": o.rps, "requests": o.requests, "seconds": o.seconds, **o.summary}
                for o in self.outputs
            ],
        }


def merged_quantile(distributions: Sequence[Sequence[tuple[float, int]]], q: float) -> float:
    """The q-quantile of the requests of several processes, from their distributions' points.

    A point (V, C) says C of a process's requests took at most V ms. For each V named by any
    process, the requests known to be at most V are, per process, the count of its largest
    point not above V; the answer is the smallest V where their sum reaches q of all
    requests. It is never below the true quantile (the counts are lower bounds) and at most
    one point of the histogram above it."""
    totals = sum(points[-1][1] for points in distributions if points)
    if totals == 0:
        return math.nan
    need = q * totals
    values = sorted({v for points in distributions for v, _ in points})
    for v in values:
        known = 0
        for points in distributions:
            known += max((c for pv, c in points if pv <= v), default=0)
        if known >= need:
            return v
    return values[-1]


def parse(text: str) -> Output:
    """One process's stdout: the summary when it finished, else its last progress line."""
    out = Output()
    progress = [float(m) for m in _PROGRESS.findall(text)]
    if progress:
        out.rps = progress[-1]
    done = _COMPLETED.search(text)
    summary = _SUMMARY.search(text)
    throughput = _THROUGHPUT.search(text)
    if done and summary and throughput:
        out.complete = True
        out.requests, out.seconds = int(done[1]), float(done[2])
        out.rps = float(throughput[1])
        names, values = summary[1].split(), summary[2].split()
        out.summary = {name: float(v) for name, v in zip(names, values, strict=False)}
        out.points = sorted({(float(v), int(c)) for v, c in _POINT.findall(text)})
    return out


def argv(port: int, load: Load, command: Sequence[str], n: int) -> list[str]:
    """The redis-benchmark command line of one process."""
    return [
        "redis-benchmark", "-h", HOST, "-p", str(port),
        "-c", str(load.clients), "-P", str(load.pipeline),
        "-n", str(n), "-r", str(KEYSPACE), *command,
    ]  # fmt: skip


def run(
    cleanup: Cleanup,
    ports: Sequence[int],
    load: Load,
    command: Sequence[str],
    *,
    n: int | None = None,
    seconds: float,
) -> Run:
    """Start one process per port together; with ``n`` a counted run (stopped after
    ``seconds`` if still going), without it a timed run of ``seconds``."""
    procs: list[subprocess.Popen[bytes]] = []
    with contextlib.ExitStack() as files_open:
        files = [files_open.enter_context(tempfile.TemporaryFile()) for _ in ports]
        started = time.monotonic()
        try:
            for port, out in zip(ports, files, strict=True):
                proc = subprocess.Popen(
                    argv(port, load, command, ENDLESS if n is None else n),
                    stdout=out,
                    stderr=subprocess.DEVNULL,
                    stdin=subprocess.DEVNULL,
                )
                procs.append(cleanup.add(proc))
            deadline = started + seconds
            while time.monotonic() < deadline and any(p.poll() is None for p in procs):
                time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
            wall_s = time.monotonic() - started
        finally:
            for proc in procs:
                cleanup.stop(proc)  # SIGTERM if still going, then forgotten
        outputs = []
        for out in files:
            out.seek(0)
            outputs.append(parse(out.read().decode(errors="replace")))
    return Run(load.label(len(ports)), outputs, wall_s)


def counted(
    cleanup: Cleanup,
    ports: Sequence[int],
    load: Load,
    command: Sequence[str],
    *,
    rate: float,
    seconds: float,
) -> Run:
    """A counted run sized to last about ``seconds`` at ``rate`` (all processes together),
    stopped at three times that plus 10 s if the rate collapses."""
    n = max(200, int(rate / len(ports) * seconds))
    return run(cleanup, ports, load, command, n=n, seconds=3 * seconds + 10)
