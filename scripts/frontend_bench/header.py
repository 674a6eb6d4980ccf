"""The front-end benchmark's header: the machine, the versions of both sides and of the
load generators, the pinning, and the method with this run's settings."""

from __future__ import annotations

import os
import platform

from harness.machine import cpu_model, loadavg_text, package_version, tool_version
from harness.report import command_line

from frontend_bench.bench import Bench
from frontend_bench.constants import N_CLIENTS, OTHER_LIMIT, RESP_CONNS, RULE_OPEN


def machine() -> dict[str, str]:
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu_model() or platform.processor() or "unknown",
        "platform": platform.platform(),
        "python": platform.python_version(),
        "meshlimit": package_version("meshlimit"),
        "aiohttp": package_version("aiohttp"),
        "uvloop": package_version("uvloop"),
        "hiredis": package_version("hiredis"),
        "wrk": tool_version(["wrk", "-v"], r"wrk (\S+)"),
        "redis-benchmark": tool_version(["redis-benchmark", "--version"], r"redis-benchmark (\S+)"),
        "redis-server": tool_version(["redis-server", "--version"], r"v=(\S+)"),
        "loadavg": loadavg_text(),
    }


def print_header(info: dict[str, str], b: Bench) -> None:
    print("meshlimit front-end benchmark: one node's HTTP and RESP servers, and redis-server")
    print(command_line("bench_frontends.py"))
    print(
        f"machine: {info['nproc']} CPUs, {info['cpu']}; {info['platform']}; "
        f"load average at start {info['loadavg']}"
    )
    print(
        f"versions: Python {info['python']}, meshlimit {info['meshlimit']}, aiohttp "
        f"{info['aiohttp']}, uvloop {info['uvloop']}, hiredis {info['hiredis']}; wrk "
        f"{info['wrk']}, redis-benchmark {info['redis-benchmark']}, redis-server "
        f"{info['redis-server']}"
    )
    server_cpu, load_cpu = b.pinning.server_cpu, b.pinning.load_cpu
    if server_cpu is not None:
        print(
            f"pinning: servers on CPU {server_cpu} (taskset -c {server_cpu}), load generators "
            f"and this script on CPU {load_cpu}"
        )
    else:
        print("pinning: none (needs taskset and 2+ CPUs): servers and generators share the CPUs")
    print(
        f"method: one `meshlimit node --preset local` (alone: every check owner-local), "
        f"default rule {RULE_OPEN}; redis-server --save '' --appendonly no up alongside, runs "
        f"interleaved; {N_CLIENTS:,} client ids; wrk -t1 -d{b.http_s:g}s --latency, POST "
        f"/v1/check (keep-alive); redis-benchmark -c {RESP_CONNS} --csv, N sized to about "
        f"{b.resp_s:g} s a run; one untimed warm-up per setting; {b.reps} repetition(s), "
        f"median (min-max). Refusal phase: node restarted per setting with L/2s, "
        f"L = its measured rate / {N_CLIENTS:,}. Before each timed run the script waits (at "
        f"most {b.quiet_wait_s:g} s) for a second with the machine <= 0.15 cores busy; runs with "
        f"other work > {OTHER_LIMIT} cores are redone ({b.tries} tries at most, "
        f"{b.patience_s:g} s of patience in all). Floors: aiohttp / uvloop+hiredis with a "
        f"constant answer, pinned like the node."
    )
