#!/usr/bin/env python3
"""Benchmark: latency of Envoy's ``ShouldRateLimit`` through a 2-node cluster, beside ML.CHECK.

    .venv/bin/python scripts/bench_envoy.py [--rate R]... [--users U] [--seconds S] [--reps N]
        [--json FILE]

Method (the output header says it again):

- Subject: two ``meshlimit node`` processes on loopback (``--preset local``, uvloop), ``b``
  seeded with ``a``, both serving ``--grpc`` and ``--resp`` and loading one envoy ratelimit
  YAML file (domain ``bench``, ``key: user`` at 1,000,000,000 a day: nothing is refused).
  Every call goes to node ``a``; the ``U`` (100) ``user`` values are spread over the ring, so
  about half of the descriptors are owned by ``b`` and forwarded there (the measured share
  is printed): the limit is cluster-wide, strict mode. Why 100 values: an owner replicates
  every changed counter once per gossip interval in one burst (``docs/performance.md``,
  Latency: 7.5 ms with 1,000 changed clients, under 2 ms up to ~250), which would hold
  the loop of both subjects alike; ``--users 1000`` shows it.
- Load: this script, one asyncio loop (uvloop), open loop at ``R`` calls/s (by default 250,
  500 and 1,000: light to moderate on this 2-core machine, where both nodes and the
  generator share the cores).
  Call ``i`` is scheduled at ``start + i / R`` and its latency is measured from that
  instant to its answer, so a stall counts against every call it delays (no coordinated
  omission). gRPC: a ``grpc.aio`` channel, one ``RateLimitRequest`` with one descriptor
  ``user=u<i mod U>``. Peer, in the same run, on the same nodes: ``ML.CHECK
  envoy:u<i mod U>`` over RESP (``redis.asyncio``, one connection pool), the same
  cluster check without gRPC, protobuf, descriptor matching and the per-call rule.
- Repetitions: a warm-up of 2 s per subject, then per rate ``N`` (3) runs of ``S`` (10)
  seconds each, subjects interleaved; per run nearest-rank p50/p90/p99/max of every call;
  the table shows the median (min-max) over runs, and the ratio of the p99 medians.
- Shared machine: before each run the script waits (at most 30 s) for a second in which the
  machine is at most 0.15 cores busy; columns ``nodes us/call`` (CPU of both nodes per call)
  and ``other`` (cores busy with work of neither the nodes nor this script, during the run)
  say what the run had.

This is a benchmark, not a test: it asserts nothing about speed. The target it informs:
p99 of ``ShouldRateLimit`` at most 2 ms at moderate load (Envoy's filter times out at 20 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

from harness.machine import cpu_model, package_version
from harness.proc import SchedWatch, machine_busy_s, wait_quiet
from harness.processes import HOST, Cleanup, NodeProcess, interrupt_on_signals, wait_for
from harness.report import Column, Table, command_line, doc_section, ratio, spread, write_json
from harness.stats import latency_summary, median

CONFIG = """
domain: bench
descriptors:
  - key: user
    rate_limit: {unit: day, requests_per_unit: 1000000000}
"""
WARMUP_S = 2.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--rate", type=float, action="append", help="calls per second (repeat; 250 500 1000)"
    )
    parser.add_argument("--users", type=int, default=100, help="distinct descriptor values")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of a run")
    parser.add_argument("--reps", type=int, default=3, help="runs per subject")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args()
    args.rate = args.rate or [250.0, 500.0, 1000.0]
    interrupt_on_signals()
    print(command_line("bench_envoy.py"))
    print(f"machine: {cpu_model() or '?'}, {os.cpu_count()} CPUs; python {sys.version.split()[0]}")
    versions = ", ".join(f"{p} {package_version(p)}" for p in ("grpcio", "redis", "uvloop"))
    print(f"versions: {versions}")
    print("method:" + doc_section(__doc__, "Method (the output header says it again):\n", "\nThis"))
    with Cleanup() as cleanup, tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "bench.yaml"
        config.write_text(CONFIG)
        extra = ["--grpc", f"{HOST}:0", "--resp", f"{HOST}:0", "--ratelimit-config", str(config)]
        extra += ["--default", "1000000000/day"]
        a = cleanup.add(NodeProcess("a", log_dir=Path(folder), extra=extra))
        a.start()
        b = cleanup.add(NodeProcess("b", seeds=[a.udp_port], log_dir=Path(folder), extra=extra))
        b.start()
        wait_for("two alive members", lambda: len(a.members()) == 2 == len(b.members()), 15)
        try:
            import uvloop

            uvloop.install()  # the generator's loop, as the nodes': uvloop when installed
        except ImportError:
            pass
        results = asyncio.run(_measure(a, b, args, args.rate))
    _report(results, args)
    return 0


async def _measure(
    node: NodeProcess, other: NodeProcess, args: argparse.Namespace, rates: list[float]
) -> dict:
    import grpc
    import redis.asyncio as redis
    from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
    from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

    channel = grpc.aio.insecure_channel(f"{HOST}:{node.ready_port('grpc')}")
    stub = rls_pb2_grpc.RateLimitServiceStub(channel)
    requests = [
        rls_pb2.RateLimitRequest(
            domain="bench",
            descriptors=[
                ratelimit_pb2.RateLimitDescriptor(
                    entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key="user", value=f"u{i}")]
                )
            ],
        )
        for i in range(args.users)
    ]
    # As many connections as calls may be outstanding: an open loop never waits for one.
    resp = redis.Redis(host=HOST, port=node.ready_port("resp"), max_connections=2048)

    async def grpc_call(i: int) -> None:
        answer = await stub.ShouldRateLimit(requests[i % args.users])
        assert answer.overall_code == rls_pb2.RateLimitResponse.OK

    async def resp_call(i: int) -> None:
        answer = await resp.execute_command("ML.CHECK", f"envoy:u{i % args.users}")
        assert answer[0] == 1

    subjects: dict[str, Callable[[int], Awaitable[None]]] = {
        "ShouldRateLimit (gRPC)": grpc_call,
        "ML.CHECK (RESP)": resp_call,
    }
    runs: dict[str, dict[str, list[dict[str, float]]]] = {}
    before = _paths(node)
    for call in subjects.values():
        await _open_loop(call, rates[0], WARMUP_S)
    assert node.proc is not None and other.proc is not None
    pids = {"a": node.proc.pid, "b": other.proc.pid, "script": os.getpid()}
    for rate in rates:
        runs[f"{rate:g}"] = by_name = {name: [] for name in subjects}
        for _ in range(args.reps):
            for name, call in subjects.items():
                wait_quiet(30.0)
                watch, busy0, t0 = SchedWatch(pids), machine_busy_s()[0], time.monotonic()
                latencies, errors = await _open_loop(call, rate, args.seconds)
                used = watch.stop()
                wall = time.monotonic() - t0
                summary = latency_summary(latencies, unit=1e3, suffix="_us")
                ours = sum(cpu for cpu, _ in used.values())
                summary["other_cores"] = max(0.0, (machine_busy_s()[0] - busy0 - ours) / wall)
                calls = len(latencies) + errors
                summary["nodes_us_per_call"] = (used["a"][0] + used["b"][0]) / calls * 1e6
                summary["errors"] = errors
                by_name[name].append(summary)
    after = _paths(node)
    await channel.close()
    await resp.aclose()
    checks = {path: after[path] - before[path] for path in after}
    return {"runs": runs, "checks_by_path": checks, "seconds": args.seconds, "users": args.users}


async def _open_loop(
    call: Callable[[int], Awaitable[None]], rate: float, seconds: float
) -> tuple[list[int], int]:
    """Calls scheduled at ``rate``: each one's latency (ns) from its scheduled instant, and
    the number of calls that failed (printed by kind)."""
    latencies: list[int] = []
    errors: Counter[str] = Counter()

    async def one(i: int, due_ns: int) -> None:
        try:
            await call(i)
        except Exception as error:  # counted: a benchmark reports, it does not stop
            code = getattr(error, "code", None)
            errors[f"{type(error).__name__} {code().name if callable(code) else ''}"] += 1
            return
        latencies.append(time.perf_counter_ns() - due_ns)

    count = int(rate * seconds)
    interval_ns = int(1e9 / rate)
    start = time.perf_counter_ns()
    tasks = []
    for i in range(count):
        due = start + i * interval_ns
        wait_ns = due - time.perf_counter_ns()
        if wait_ns > 0:
            await asyncio.sleep(wait_ns / 1e9)
        tasks.append(asyncio.ensure_future(one(i, due)))
    await asyncio.gather(*tasks)
    if errors:
        print(f"  errors at {rate:g}/s: {dict(errors)}")
    return latencies, sum(errors.values())


def _paths(node: NodeProcess) -> Counter[str]:
    """Node ``a``'s checks so far by decision path (``meshlimit_checks_total``)."""
    conn = http.client.HTTPConnection(HOST, node.http_port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    counts: Counter[str] = Counter()
    for match in re.finditer(
        r'^meshlimit_checks_total\{path="(\w+)",result="\w+"\} (\S+)$', text, re.M
    ):
        counts[match[1]] += int(float(match[2]))
    return counts


def _report(results: dict, args: argparse.Namespace) -> None:
    checks = results["checks_by_path"]
    total = sum(checks.values()) or 1
    shares = ", ".join(
        f"{path} {count / total:.0%}" for path, count in sorted(checks.items()) if count
    )
    print(f"\nnode a's checks by path over the timed and warm-up runs: {shares}")
    print(f"{args.reps} runs of {args.seconds:g} s per subject and rate; latency in microseconds:")
    quantiles = ("p50", "p90", "p99", "max")
    table = Table(
        [Column("calls/s", ">7"), Column("subject", "<24")]
        + [Column(name, ">20") for name in quantiles]
        + [Column("nodes us/call", ">16"), Column("other", ">16"), Column("errors", ">6")]
    )
    table.print_heading()
    for rate, by_name in results["runs"].items():
        p99: list[float] = []
        for name, runs in by_name.items():
            cells = []
            for q in quantiles:
                values = [run[f"{q}_us"] for run in runs]
                cells.append(spread(values, lambda x: f"{x:,.0f}"))
            p99.append(median(run["p99_us"] for run in runs))
            cells.append(spread([run["nodes_us_per_call"] for run in runs], lambda x: f"{x:,.0f}"))
            cells.append(spread([run["other_cores"] for run in runs], lambda x: f"{x:.2f}"))
            cells.append(sum(int(run["errors"]) for run in runs))
            table.print(rate, name, *cells)
        print(f"{'':>7} p99 ratio, gRPC / RESP: {ratio(p99[0], p99[1]):.2f}")
    if args.json:
        write_json(args.json, results)


if __name__ == "__main__":
    sys.exit(main())
