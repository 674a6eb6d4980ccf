"""The phases of load the three-daemon benchmark puts on a cluster, and on redis-server.

On each fresh cluster, lightest first, one redis-benchmark process per node, random keys:

1. ``moderate``: ``-c 2 -P 1`` per node, a counted run of about T s: p50/p99.
2. ``saturation``: ``-c 50 -P 16`` per node, a timed run of T s: the aggregate rate.
3. ``half``: redis-benchmark cannot cap a rate, so half load is the ``-c``/``-P`` setting
   (:data:`HALF_CANDIDATES`, tried by rising concurrency in short timed runs until one
   reaches half the saturation rate) whose rate is nearest half of it (by ratio); then a
   counted run of about T s there: p50/p99.
4. ``overload``: ``-c 100 -P 16`` per node (twice saturation's requests in flight), timed.
5. ``recovery``: from the instant the overload's processes were stopped, every 0.5 s a
   ``-c 1 -n 200`` run against the first node; recovered when its p50 is within 2x of the
   moderate p50 *and* every node sees every member alive. The seconds until then, or
   none within the limit; then probing goes on for a few seconds (``hold_s``) and the
   result says whether every later probe was still good ("held").

Before phases 1-4 (and before the half-load search) the cluster is given up to 30 s to be
*normal* again, judged by a probe every 0.5 s as recovery is: every member alive on every
node and, from phase 2 on, the probe's p50 within 2x the moderate p50 (the seconds it
took are reported; NaN: it never was, and the phase ran anyway). Then a short untimed run
of the phase's setting warms the cluster and, for a counted run, measures the rate that
sizes ``-n``. Each phase's
counts (:func:`~cluster_bench.daemons.phase_counts`) span its measured run only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from harness.processes import Cleanup

from cluster_bench import redis_load
from cluster_bench.daemons import Cluster, phase_counts
from cluster_bench.redis_load import INCR, ML_CHECK, Load, Run

MODERATE = Load(2, 1)
SATURATION = Load(50, 16)
OVERLOAD = Load(100, 16)
PROBE = Load(1, 1)
#: Settings tried for half load, by rising requests in flight per process.
HALF_CANDIDATES = (
    Load(1, 1), Load(2, 1), Load(4, 1), Load(8, 1), Load(16, 1), Load(32, 1),
    Load(50, 1), Load(16, 4), Load(50, 4), Load(50, 8), Load(50, 16),
)  # fmt: skip
PHASES = ("moderate", "saturation", "half", "overload", "recovery")

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Plan:
    """Durations of a run (``--quick`` shortens them)."""

    seconds: float
    """T: moderate, saturation and half load."""
    overload_s: float
    warm_s: float
    """Each untimed warm-up and sizing run, and each try of the half-load search."""
    recovery_limit_s: float
    hold_s: float
    """How long probing goes on after recovery, to see that it lasts."""
    settle_s: float = 30.0
    probe_every_s: float = 0.5
    probe_requests: int = 200
    recovered_p50_factor: float = 2.0
    overload_clients: int = OVERLOAD.clients
    """The overload phase's ``-c`` and ``-P`` per process (``--overload``)."""
    overload_pipeline: int = OVERLOAD.pipeline


class Phases:
    """The phases on one cluster; each returns its JSON-ready figures."""

    def __init__(self, cluster: Cluster, plan: Plan, cleanup: Cleanup, say: Progress) -> None:
        self.cluster = cluster
        self.plan = plan
        self.cleanup = cleanup
        self.say = say
        self.ports = cluster.resp_ports
        self.bound_ms = math.nan
        """A probe's p50 counted as normal: 2x the moderate p50, once that is measured."""

    def timed(self, load: Load, seconds: float) -> Run:
        return redis_load.run(self.cleanup, self.ports, load, ML_CHECK, seconds=seconds)

    def counted(self, load: Load, rate: float) -> Run:
        return redis_load.counted(
            self.cleanup, self.ports, load, ML_CHECK, rate=rate, seconds=self.plan.seconds
        )

    def probe(self) -> dict[str, Any]:
        """One ``-c 1 -n 200`` run against the first node, and whether every node sees every
        member alive just after it."""
        run = redis_load.run(
            self.cleanup, self.ports[:1], PROBE, ML_CHECK, n=self.plan.probe_requests, seconds=5
        )
        alive = self.cluster.all_alive()
        normal = alive and (self.bound_ms != self.bound_ms or run.p50_ms <= self.bound_ms)
        return {"p50_ms": run.p50_ms, "all_alive": alive, "normal": normal}

    def settle(self) -> float:
        """Probe every 0.5 s (at most ``settle_s``) until the cluster is normal: every member
        alive everywhere and, once the moderate p50 is known, a probe's p50 within 2x of
        it. The seconds it took, NaN if it never was."""
        started = time.monotonic()
        while time.monotonic() - started < self.plan.settle_s:
            tried_at = time.monotonic()
            if self.probe()["normal"]:
                return time.monotonic() - started
            time.sleep(max(0.0, tried_at + self.plan.probe_every_s - time.monotonic()))
        return math.nan

    def measured(self, name: str, work: Callable[[], Run]) -> dict[str, Any]:
        """Settle, snapshot, run, snapshot: the run's figures and the cluster's counts."""
        settled_s = self.settle()
        self.say(f"{self.cluster.preset}: {name}")
        before = self.cluster.snapshot()
        run = work()
        ended_at = time.monotonic()
        after = self.cluster.snapshot()
        return {
            **run.to_json(),
            "settled_s": settled_s,
            "counts": phase_counts(self.cluster, before, after),
            "_ended_at": ended_at,
            "_after": after,
        }

    def all(self, selected: Collection[str] = PHASES) -> dict[str, dict[str, Any]]:
        """The ``selected`` phases, in order: moderate always (it sets what is normal),
        half only after saturation (it aims at half its rate), recovery after overload."""
        out: dict[str, dict[str, Any]] = {}
        out["moderate"] = self.moderate()
        self.bound_ms = self.plan.recovered_p50_factor * out["moderate"]["p50_ms"]
        if "saturation" in selected:
            out["saturation"] = self.saturation()
            if "half" in selected:
                out["half"] = self.half(out["saturation"]["rate"])
        if "overload" in selected:
            out["overload"] = self.overload()
            out["recovery"] = self.recovery(out["overload"])
        for phase in out.values():
            phase.pop("_ended_at", None)
            phase.pop("_after", None)
        return out

    def moderate(self) -> dict[str, Any]:
        rate = self.timed(MODERATE, self.plan.warm_s).rate
        return self.measured("moderate", lambda: self.counted(MODERATE, rate))

    def saturation(self) -> dict[str, Any]:
        self.timed(SATURATION, self.plan.warm_s)
        return self.measured("saturation", lambda: self.timed(SATURATION, self.plan.seconds))

    def half(self, saturation_rate: float) -> dict[str, Any]:
        target = saturation_rate / 2
        search_settled_s = self.settle()
        tried: list[tuple[Load, float]] = []
        for load in HALF_CANDIDATES:
            self.say(f"{self.cluster.preset}: half-load search, {load.label(len(self.ports))}")
            rate = self.timed(load, self.plan.warm_s).rate
            tried.append((load, rate))
            if not rate < target:  # reached half, or a NaN: stop climbing
                break
        load, rate = min(tried, key=lambda lr: abs(math.log(max(lr[1], 1e-9) / max(target, 1e-9))))
        phase = self.measured("half", lambda: self.counted(load, rate))
        phase["target_rate"] = target
        phase["of_saturation"] = phase["rate"] / saturation_rate if saturation_rate else math.nan
        phase["search"] = [{"load": ld.label(len(self.ports)), "rate": r} for ld, r in tried]
        phase["search_settled_s"] = search_settled_s
        return phase

    def overload(self) -> dict[str, Any]:
        load = Load(self.plan.overload_clients, self.plan.overload_pipeline)
        return self.measured("overload", lambda: self.timed(load, self.plan.overload_s))

    def recovery(self, overload: dict[str, Any]) -> dict[str, Any]:
        """Probe until the cluster is normal again (as :meth:`settle` judges), or the limit
        passes; once it is, go on probing for ``hold_s`` to see that it lasts."""
        plan = self.plan
        ended_at = overload["_ended_at"]
        self.say(f"{self.cluster.preset}: recovery (p50 <= {self.bound_ms:.3f} ms, all alive)")
        probes: list[dict[str, Any]] = []
        recovered_s = math.nan
        stop_s = plan.recovery_limit_s
        while time.monotonic() - ended_at < stop_s:
            tried_at = time.monotonic()
            probe = self.probe()
            probe["at_s"] = time.monotonic() - ended_at
            probes.append(probe)
            if probe["normal"] and recovered_s != recovered_s:
                recovered_s = probe["at_s"]
                stop_s = recovered_s + plan.hold_s
            time.sleep(max(0.0, tried_at + plan.probe_every_s - time.monotonic()))
        after = self.cluster.snapshot()
        later = [p for p in probes if p["at_s"] > recovered_s]  # none while NaN
        return {
            "recovered_s": recovered_s,
            "held": bool(later) and all(p["normal"] for p in later),
            "hold_s": plan.hold_s,
            "limit_s": plan.recovery_limit_s,
            "p50_bound_ms": self.bound_ms,
            "load": f"-c 1 -n {plan.probe_requests} /{plan.probe_every_s:g}s",
            "p50_ms": probes[-1]["p50_ms"] if probes else math.nan,
            "probes": probes,
            "counts": phase_counts(self.cluster, overload["_after"], after),
        }


def redis_server_phases(
    cleanup: Cleanup, port: int, processes: int, plan: Plan, say: Progress
) -> dict[str, dict[str, Any]]:
    """The peer: ``INCR key:__rand_int__`` on one redis-server from as many redis-benchmark
    processes as the cluster has nodes, moderate (counted) and saturation (timed) settings."""
    ports = [port] * processes
    say("redis-server: moderate")
    rate = redis_load.run(cleanup, ports, MODERATE, INCR, seconds=plan.warm_s).rate
    moderate = redis_load.counted(cleanup, ports, MODERATE, INCR, rate=rate, seconds=plan.seconds)
    say("redis-server: saturation")
    redis_load.run(cleanup, ports, SATURATION, INCR, seconds=plan.warm_s)
    saturation = redis_load.run(cleanup, ports, SATURATION, INCR, seconds=plan.seconds)
    return {"moderate": moderate.to_json(), "saturation": saturation.to_json()}
