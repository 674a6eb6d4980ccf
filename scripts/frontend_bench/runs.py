"""One run of a load generator (wrk or redis-benchmark) against one server, and what it
measured: the generator's rate and latency, the CPU the server, the generator and any
other work used meanwhile, and, against a node, the checks it counted."""

from __future__ import annotations

import csv
import io
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.proc import children_cpu_s, machine_busy_s, schedstat
from harness.processes import HOST, pinned

from frontend_bench.constants import RESP_CONNS
from frontend_bench.servers import FrontNode


@dataclass
class Run:
    rate: float
    p50_ms: float
    p99_ms: float
    wall_s: float
    srv_cpu: float  # share of one core
    srv_runq: float
    gen_cpu: float
    other: float  # cores busy with anything else on the machine (other work, the kernel)
    steal: float  # cores stolen by the hypervisor
    requests: int
    refused: float = float("nan")  # share of checks refused (meshlimit only)
    counted: float = float("nan")  # checks counted by the node / requests
    errors: int = 0
    notes: list[str] = field(default_factory=list)
    busy_before: float = float("nan")  # cores busy in the second before the run
    tries: int = 1  # 2+: earlier tries were disturbed by other work and redone


def measured(
    cmd: list[str], server_pid: int, node: FrontNode | None, load_cpu: int | None
) -> tuple[str, str, dict[str, Any]]:
    """Run a load generator (on ``load_cpu``) to completion, with the server's and its own
    CPU around it."""
    before = node.checks() if node is not None else None
    m0, s0, g0, t0 = machine_busy_s(), schedstat(server_pid), children_cpu_s(), time.perf_counter()
    out = subprocess.run(
        pinned(load_cpu) + cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    t1, g1, s1, m1 = time.perf_counter(), children_cpu_s(), schedstat(server_pid), machine_busy_s()
    wall = t1 - t0
    extra: dict[str, Any] = {
        "wall_s": wall,
        "srv_cpu": (s1[0] - s0[0]) / 1e9 / wall,
        "srv_runq": (s1[1] - s0[1]) / 1e9 / wall,
        "gen_cpu": (g1 - g0) / wall,
    }
    extra["other"] = max(0.0, (m1[0] - m0[0]) / wall - extra["srv_cpu"] - extra["gen_cpu"])
    extra["steal"] = (m1[1] - m0[1]) / wall
    if node is not None and before is not None:
        after = node.checks()
        extra["allowed"] = after["allowed"] - before["allowed"]
        extra["refused"] = after["refused"] - before["refused"]
    if out.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited {out.returncode}: {out.stderr.strip()[:500]}")
    return out.stdout, out.stderr, extra


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        return float("nan")
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[m[2]]
    return float(m[1]) * scale


def run_wrk(
    port: int,
    conns: int,
    seconds: float,
    lua: Path,
    server_pid: int,
    node: FrontNode | None,
    load_cpu: int | None,
) -> Run:
    cmd = [
        "wrk",
        "-t1",
        f"-c{conns}",
        f"-d{round(seconds)}s",
        "--latency",
        "-s",
        str(lua),
        f"http://{HOST}:{port}/",
    ]
    stdout, _, x = measured(cmd, server_pid, node, load_cpu)
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", stdout)[1])  # type: ignore[index]
    requests = int(re.search(r"(\d+) requests in", stdout)[1])  # type: ignore[index]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", stdout, re.M)[1])  # type: ignore[index]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", stdout, re.M)[1])  # type: ignore[index]
    errors, notes = 0, []
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", stdout):
        errors += int(m[1])
        notes.append(m[0])
    if m := re.search(r"Socket errors: (.*)", stdout):
        errors += sum(int(n) for n in re.findall(r"\d+", m[1]))
        notes.append(m[0])
    return _run(rate, p50, p99, requests, x, errors, notes)


def run_rb(
    port: int,
    args: list[str],
    n: int,
    pipeline: int,
    server_pid: int,
    node: FrontNode | None,
    load_cpu: int | None,
) -> Run:
    cmd = [
        "redis-benchmark",
        "-h",
        HOST,
        "-p",
        str(port),
        "-c",
        str(RESP_CONNS),
        "-n",
        str(n),
        "-P",
        str(pipeline),
        "--csv",
        *args,
    ]
    stdout, stderr, x = measured(cmd, server_pid, node, load_cpu)
    rows = list(csv.DictReader(io.StringIO(stdout)))
    if len(rows) != 1:
        raise RuntimeError(f"unexpected redis-benchmark output: {stdout[:300]!r} {stderr[:300]!r}")
    row = rows[0]
    bad = [
        ln for ln in stderr.splitlines() if ln.strip() and "Could not fetch server CONFIG" not in ln
    ]
    return _run(
        float(row["rps"]),
        float(row["p50_latency_ms"]),
        float(row["p99_latency_ms"]),
        n,
        x,
        len(bad),
        bad[:3],
    )


def _run(
    rate: float,
    p50: float,
    p99: float,
    requests: int,
    x: dict[str, Any],
    errors: int,
    notes: list[str],
) -> Run:
    run = Run(
        rate,
        p50,
        p99,
        x["wall_s"],
        x["srv_cpu"],
        x["srv_runq"],
        x["gen_cpu"],
        x["other"],
        x["steal"],
        requests,
        errors=errors,
        notes=notes,
    )
    if "allowed" in x:
        checks = x["allowed"] + x["refused"]
        run.counted = checks / requests if requests else float("nan")
        run.refused = x["refused"] / checks if checks else float("nan")
    return run
