"""The cluster benchmark's header: the machine, the versions on both sides, the method."""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

from harness.machine import cpu_model, loadavg_text, package_version, tool_version
from harness.report import command_line

from cluster_bench.constants import N_CLIENTS, REDIS_THREADS, RULE


def machine() -> dict[str, str]:
    return {
        "cpu": cpu_model() or platform.processor() or "unknown",
        "nproc": str(os.cpu_count()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "uvloop": package_version("uvloop"),
        "msgpack": package_version("msgpack"),
        "limits": package_version("limits"),
        "redis-py": package_version("redis"),
        "redis-server": tool_version(["redis-server", "--version"], r"v=(\S+)"),
        "loadavg": loadavg_text(),
    }


def print_header(info: dict[str, str], cfg: dict[str, Any]) -> None:
    print("meshlimit cluster benchmark: forwarded checks between two processes, and limits+Redis")
    print(command_line("bench_pair.py"))
    print(
        f"machine: {info['cpu']}, nproc={info['nproc']}, load average at start {info['loadavg']}\n"
        f"         {info['platform']}\n"
        f"         Python {info['python']}, uvloop {info['uvloop']}, msgpack {info['msgpack']}, "
        f"limits {info['limits']}, redis-py {info['redis-py']}, redis-server {info['redis-server']}"
    )
    print(
        "method:  two meshlimit.Node processes on 127.0.0.1 (spawned; uvloop; preset local; rule\n"
        f"         {RULE}, so nothing is refused): the load node checks {N_CLIENTS:,} clients owned\n"
        "         by the other node (strict mode: every check forwarded), clients it owns\n"
        "         (owner-local), and, in a local-mode pair, any client (local); in the same\n"
        "         process it runs meshlimit.Limiter.check through the same harness for reference.\n"
        f"         Closed loop: K asyncio tasks, checks back to back for {cfg['T']} s; "
        f"{cfg['R']} repetitions,\n"
        "         interleaved within each process pair; median (min-max). 1-task runs time each\n"
        "         check. Open loop: a sleeping thread schedules checks at fixed intervals for "
        f"{cfg['TL']} s per point,\n"
        "         latency from the scheduled instant (no coordinated omission). Warm-up: "
        f"{cfg['W']} s of\n"
        "         every subject on each process pair first. gc on. CPU time and run-queue wait\n"
        "         of both processes from /proc/PID/schedstat. Peer, same run and machine, after\n"
        "         the pairs: limits SlidingWindowCounterRateLimiter + RedisStorage on a\n"
        f"         redis-server started here (--save '' --appendonly no), one connection and\n"
        f"         {REDIS_THREADS} threads, same durations and repetitions. Nothing asserted about speed."
    )
    sys.stdout.flush()
