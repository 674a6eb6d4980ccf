#!/usr/bin/env python3
"""Benchmark: forwarded cluster checks between two meshlimit processes, against limits+Redis.

    .venv/bin/python scripts/bench_pair.py [--quick] [--profile DIR]

Method (the output header says it again):

- Subjects. Two ``meshlimit.Node`` processes on 127.0.0.1, started with ``multiprocessing``
  (spawn), each on uvloop, ``preset="local"``, default rule 1,000,000/minute so that nothing
  is refused. The *owner* node only answers; the *load* node runs every measurement:
  ``forwarded`` (strict mode, clients whose owner, ``node.sans_io.owner``, is the other node,
  so every check crosses the network), ``owner-local`` (strict mode, clients the load node
  owns) and, on a second pair started with ``mode="local"``, ``local``. In the load node's
  process, ``meshlimit.Limiter.check`` runs through the same harness (awaited through an
  ``async def`` wrapper) and in a plain ``for`` loop, for reference. Forwarded checks run
  on three pairs: the default ``batch_window_ns`` (300 us), ``batch_window_ns=0`` and 1 ms
  (``--quick``: the first two), and once with 36-byte (UUID-length) client ids.
- The peer, in the same run on the same machine: ``limits``' SlidingWindowCounterRateLimiter
  on ``RedisStorage``, against a ``redis-server`` this script starts on a free port
  (``--save '' --appendonly no``) and stops; one connection, then 4 threads. It runs in its
  own process after the meshlimit pairs. Without ``redis-server`` the peer is skipped.
- Clients: 1,000 distinct ids per subject (``client-000123``: 13 bytes), cycled.
- Throughput (closed loop): K asyncio tasks (256, and 16 and 64 for the forwarded sweep)
  each check back to back for T seconds (2 s; 0.4 s quick); a task looks at the clock after
  every check and yields every 64 checks, so that checks that never suspend cannot starve
  the node's socket and timers. Each measurement is repeated R times (5; 3 quick),
  interleaved with the other subjects of the same process pair: median (min-max). The
  1-task runs also time each check (``perf_counter_ns`` around the ``await``), as the
  peer's one-connection run times each ``hit``.
- Latency (open loop): a thread keeps the schedule (fixed intervals; it sleeps, at least
  100 us at a time) and hands due checks to the event loop with ``call_soon_threadsafe``;
  each check is a task. Latency runs from the check's *scheduled* instant to its answer,
  so a late generator or a queue counts against it (no coordinated omission). Offered loads:
  10/25/50/75% of the measured forwarded maximum, and 25,000/s (half the issue's 50,000/s
  target), lightest first (an overloaded point ends in forward timeouts, whose degraded
  counts are then gossiped for the rest of their window); owner-local, local and Limiter
  at 10% and 25% of their own maxima. One run of T seconds per point.
- Idle: T seconds without checks after a pair's runs, to show background gossip.
- ``--profile DIR``: one more forwarded run under cProfile (CPU-time timer) in both node
  processes, on a pair with the ``lan`` timings and a 2 s forward timeout (the profiler's
  slowdown would otherwise get the peer suspected); top functions and calls per check.
- CPU: each process's CPU time and run-queue wait (runnable, waiting for a CPU: other work
  on the machine) over every run, from ``/proc/PID/task/*/schedstat`` (client CPU from the
  worker's own ``process_time``). "ceiling" = checks per CPU-second of the busier process:
  the rate if it had a core to itself; it is an estimate, not a measurement.
- Warm-up: W seconds (1 s; 0.3 s quick) of every subject on each process pair before
  anything is timed. The garbage collector stays enabled, as in a service.

This is a benchmark, not a test: it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import socket
import sys
from collections.abc import Callable
from functools import partial
from multiprocessing.context import SpawnContext
from typing import Any

from cluster_bench.constants import K_MAX, K_SWEEP, REDIS_THREADS, TARGET_FWD
from cluster_bench.header import machine, print_header
from cluster_bench.pair import Pair, measured
from cluster_bench.report import Report, print_profile, summarize
from cluster_bench.workers import peer_worker
from harness.machine import loadavg_text
from harness.processes import (
    Cleanup,
    Worker,
    free_port,
    interrupt_on_signals,
    start_redis,
)

QUICK = {
    "T": 0.4,
    "TL": 0.4,
    "R": 3,
    "W": 0.3,
    "fractions": (0.25, 0.5),
    "local_fractions": (0.25,),
    "sweep": (),
    "windows": (0,),
}
FULL = {
    "T": 2.0,
    "TL": 2.0,
    "R": 5,
    "W": 1.0,
    "fractions": (0.1, 0.25, 0.5, 0.75),
    "local_fractions": (0.1, 0.25),
    "sweep": K_SWEEP,
    "windows": (0, 1_000_000),
}

Result = dict[str, Any]
Subject = tuple[str, str, Callable[[], Result]]


def progress(text: str) -> None:
    print(f"  .. {text}", file=sys.stderr, flush=True)


class Bench:
    """The run's settings and everything it has measured so far."""

    def __init__(self, cfg: dict[str, Any], ctx: SpawnContext, cleanup: Cleanup) -> None:
        self.cfg = cfg
        self.T, self.TL, self.R, self.W = cfg["T"], cfg["TL"], cfg["R"], cfg["W"]
        self.ctx = ctx
        self.cleanup = cleanup
        self.rep = Report()
        self.idle: list[tuple[str, Result]] = []
        self.rates: list[float] = []
        self.wlabel = ""
        self.peer_ok = False
        self.profiles: list[tuple[str, str, int]] = []

    def pair(self, options: dict[str, Any]) -> Pair:
        return Pair(self.ctx, options, self.cleanup)

    def closed(self, pair: Pair, kind: str, tasks: int, seconds: float | None = None) -> Result:
        seconds = self.T if seconds is None else seconds
        return pair.run("closed", {"kind": kind, "tasks": tasks, "seconds": seconds})

    def seq(self, pair: Pair, kind: str) -> Result:
        return pair.run("sequential", {"kind": kind, "seconds": self.T})

    def open_(self, pair: Pair, kind: str, rate: float) -> Result:
        return pair.run("open", {"kind": kind, "rate": rate, "seconds": self.TL})

    def repeat(self, subjects: list[Subject]) -> None:
        """R repetitions, the subjects interleaved within each."""
        results: dict[str, list[Result]] = {key: [] for key, _, _ in subjects}
        for _ in range(self.R):
            for key, _, fn in subjects:
                results[key].append(fn())
        for key, label, _ in subjects:
            self.rep.add(key, label, results[key])

    # --- the pairs, in the order they run ---------------------------------------------

    def strict_default(self) -> None:
        """Forwarded, owner-local and Limiter on the default batch window; open loop."""
        progress("strict pair, default batch window")
        pair = self.pair({})
        window = pair.info["batch_window_ns"]
        wlabel = self.wlabel = f"batch {window / 1000:g} us"
        print(
            f"\nnode event loop: {'uvloop' if pair.info['uvloop'] else 'asyncio'}; default "
            f"batch_window_ns = {window:,}"
        )
        for kind in ("forwarded", "owner", "limiter"):
            self.closed(pair, kind, K_MAX, self.W)
        pair.run("sync", {"seconds": self.W})
        closed, seq = self.closed, self.seq
        self.repeat(
            [
                (
                    "fwd",
                    f"forwarded, {wlabel}, {K_MAX} tasks",
                    lambda: closed(pair, "forwarded", K_MAX),
                ),
                *[
                    (
                        f"fwd-k{k}",
                        f"forwarded, {wlabel}, {k} tasks",
                        (lambda k=k: closed(pair, "forwarded", k)),
                    )
                    for k in self.cfg["sweep"]
                ],
                ("fwd-1", f"forwarded, {wlabel}, 1 task", lambda: seq(pair, "forwarded")),
                ("own", f"owner-local, {K_MAX} tasks", lambda: closed(pair, "owner", K_MAX)),
                ("own-1", "owner-local, 1 task", lambda: seq(pair, "owner")),
                (
                    "lim",
                    f"Limiter.check awaited, {K_MAX} tasks",
                    lambda: closed(pair, "limiter", K_MAX),
                ),
                ("lim-1", "Limiter.check awaited, 1 task", lambda: seq(pair, "limiter")),
                (
                    "lim-sync",
                    "Limiter.check, plain for loop",
                    lambda: pair.run("sync", {"seconds": self.T}),
                ),
            ]
        )
        self.idle.append(
            ("strict pair, after its closed-loop runs", pair.run("idle", {"seconds": self.T}))
        )
        # Open loop, lightest first: an overloaded point ends in forward timeouts, and the
        # degraded counts they leave are gossiped for the rest of their window.
        rep = self.rep
        for f in self.cfg["local_fractions"]:
            rate = round(rep.rate("own") * f, -2)
            rep.latency.append(("own", "owner-local", self.open_(pair, "owner", rate)))
            rep.latency.append(("lim", "Limiter.check awaited", self.open_(pair, "limiter", rate)))
        fwd_max = rep.rate("fwd")
        fractions = self.cfg["fractions"]
        self.rates = sorted({round(fwd_max * f, -2) for f in fractions} | {TARGET_FWD / 2})
        progress(f"strict pair: open loop at {self.rates}/s")
        for rate in self.rates:
            rep.latency.append(("fwd", f"forwarded, {wlabel}", self.open_(pair, "forwarded", rate)))
        pair.stop()

    def strict_windows(self) -> None:
        """Forwarded checks only, on pairs with the other batch windows."""
        for w in self.cfg["windows"]:
            label = f"batch {w / 1000:g} us"
            progress(f"strict pair, {label}")
            pair = self.pair({"batch_window_ns": w})
            self.closed(pair, "forwarded", K_MAX, self.W)
            self.repeat(
                [
                    (
                        f"fwd-w{w}",
                        f"forwarded, {label}, {K_MAX} tasks",
                        partial(self.closed, pair, "forwarded", K_MAX),
                    ),
                    (
                        f"fwd-w{w}-1",
                        f"forwarded, {label}, 1 task",
                        partial(self.seq, pair, "forwarded"),
                    ),
                ]
            )
            for rate in self.rates:
                self.rep.latency.append(
                    (f"fwd-w{w}", f"forwarded, {label}", self.open_(pair, "forwarded", rate))
                )
            pair.stop()

    def profiled(self, out_dir: str) -> None:
        """One forwarded run under cProfile in both node processes."""
        # cProfile slows a node several times over: with the local preset's 100 ms probe
        # timeout its peer would be suspected and checks decided degraded, so this pair
        # uses the lan timings and a 2 s forward timeout. Nothing else differs.
        progress("profiled strict pair (lan timings)")
        pair = self.pair({"preset": "lan", "forward_timeout_ns": 2_000_000_000})
        self.closed(pair, "forwarded", K_MAX, self.W)
        os.makedirs(out_dir, exist_ok=True)
        paths = {
            n: os.path.abspath(os.path.join(out_dir, f"{n}.pstats")) for n in ("load", "owner")
        }
        pair.owner.call("profile_on")
        pair.load.call("profile_on")
        prof = self.closed(pair, "forwarded", K_MAX)
        pair.load.call("profile_off", paths["load"])
        pair.owner.call("profile_off", paths["owner"])
        pair.stop()
        self.rep.add("fwd-prof", f"forwarded, {self.wlabel}, {K_MAX} tasks, under cProfile", [prof])
        self.profiles = [
            (paths["load"], "load node", prof["checks"]),
            (paths["owner"], "owner node", prof["checks"]),
        ]

    def strict_uuid(self) -> None:
        """Forwarded checks with 36-byte (UUID-length) client ids."""
        progress("strict pair, 36-byte client ids")
        pair = self.pair({})
        self.closed(pair, "forwarded-uuid", K_MAX, self.W)
        self.repeat(
            [
                (
                    "fwd-uuid",
                    f"forwarded, {self.wlabel}, {K_MAX} tasks, 36-byte ids",
                    lambda: self.closed(pair, "forwarded-uuid", K_MAX),
                ),
                (
                    "fwd-uuid-1",
                    f"forwarded, {self.wlabel}, 1 task, 36-byte ids",
                    lambda: self.seq(pair, "forwarded-uuid"),
                ),
            ]
        )
        self.idle.append(("36-byte-id pair, after its runs", pair.run("idle", {"seconds": self.T})))
        pair.stop()

    def local_mode(self) -> None:
        """A pair in local mode, against Limiter.check in the same process."""
        progress("local-mode pair")
        pair = self.pair({"mode": "local"})
        closed, seq = self.closed, self.seq
        closed(pair, "local", K_MAX, self.W)
        closed(pair, "limiter", K_MAX, self.W)
        self.repeat(
            [
                ("loc", f"local mode, {K_MAX} tasks", lambda: closed(pair, "local", K_MAX)),
                ("loc-1", "local mode, 1 task", lambda: seq(pair, "local")),
                (
                    "lim-L",
                    f"Limiter.check awaited, {K_MAX} tasks (local pair)",
                    lambda: closed(pair, "limiter", K_MAX),
                ),
                (
                    "lim-L-1",
                    "Limiter.check awaited, 1 task (local pair)",
                    lambda: seq(pair, "limiter"),
                ),
            ]
        )
        for f in self.cfg["local_fractions"]:
            rate = round(self.rep.rate("loc") * f, -2)
            self.rep.latency.append(("loc", "local mode", self.open_(pair, "local", rate)))
        pair.stop()

    def peer(self) -> None:
        """limits + Redis, in its own process, on a redis-server started here."""
        if shutil.which("redis-server") is None:
            print(
                "\n! redis-server is not installed: the limits+Redis peer is skipped "
                "(apt-get install -y redis-server)"
            )
            return
        progress("limits + Redis")
        redis_port = free_port(socket.SOCK_STREAM)
        redis_proc = self.cleanup.add(start_redis(redis_port))
        peer = self.cleanup.add(Worker(self.ctx, peer_worker, redis_port))
        pids = {"client": peer.pid, "server": redis_proc.pid}

        def peer_run(cmd: str, arg: dict[str, Any]) -> Result:
            return measured(lambda: peer.call(cmd, arg, timeout_s=arg["seconds"] * 4 + 60), pids)

        peer_run("sequential", {"seconds": self.W})
        peer_run("threads", {"threads": REDIS_THREADS, "seconds": self.W})
        self.repeat(
            [
                (
                    "redis-1",
                    "limits+Redis, 1 connection",
                    lambda: peer_run("sequential", {"seconds": self.T}),
                ),
                (
                    "redis-t",
                    f"limits+Redis, {REDIS_THREADS} threads",
                    lambda: peer_run("threads", {"threads": REDIS_THREADS, "seconds": self.T}),
                ),
            ]
        )
        self.cleanup.stop(peer)
        self.cleanup.stop(redis_proc)
        self.peer_ok = True

    def print_report(self) -> None:
        rep = self.rep
        rep.print_throughput()
        rep.print_latency()
        print(f"\nIdle: no checks for {self.T:g} s after a pair's runs (background gossip):")
        for label, r in self.idle:
            print(
                f"  {label:<44} CPU load {r['cpu_client'] / r['wall']:.0%}, owner "
                f"{r['cpu_server'] / r['wall']:.0%}; datagrams/s sent: load "
                f"{r['datagrams'] / r['wall']:,.0f}, owner {r['owner_datagrams'] / r['wall']:,.0f}"
            )
        summarize(rep, self.peer_ok, f"default {self.wlabel}")
        for path, title, checks in self.profiles:
            print_profile(path, title, checks)
        print(f"\nload average at end: {loadavg_text()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a run under a minute")
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="also run one forwarded closed-loop measurement under cProfile in both node processes",
    )
    args = parser.parse_args()
    cfg = QUICK if args.quick else FULL
    print_header(machine(), cfg)
    interrupt_on_signals()
    with Cleanup() as cleanup:
        bench = Bench(cfg, mp.get_context("spawn"), cleanup)
        bench.strict_default()
        bench.strict_windows()
        if args.profile:
            bench.profiled(args.profile)
        bench.strict_uuid()
        bench.local_mode()
        bench.peer()
    bench.print_report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
