#!/usr/bin/env python3
"""Benchmark: the node daemon's front-ends, HTTP (wrk) and RESP (redis-benchmark), against redis-server.

    .venv/bin/python scripts/bench_frontends.py [--quick] [--reps R] [--profile DIR] [--json FILE]
    .venv/bin/python scripts/bench_frontends.py --report FILE   # the tables of a saved run

Needs ``wrk``, ``redis-benchmark`` and ``redis-server`` (Debian: ``apt-get install -y wrk
redis-server redis-tools``); a missing binary skips its part with a message. ``--profile``
needs ``py-spy`` (``.venv/bin/pip install py-spy``).

Method (the output header says it again):

- Subject: ONE ``meshlimit node`` process (``python -m meshlimit node``, uvloop, ``--preset
  local``, alone in its cluster so every check is owner-local) serving ``--http`` and
  ``--resp`` on free loopback ports, default rule 1,000,000,000/minute (nothing is refused).
  The script waits for its readiness line. A second phase starts a node per front-end setting
  with a rule of ``L/2s``, L = that setting's measured rate / 1,000 clients (resized once from
  its warm-up if that refused outside 35-65%), so that about half the checks are refused (the
  refused share is measured, from ``/metrics``); each of its runs follows a run of the open
  node, which stays up, for paired ratios.
- Peer, in the same run on the same machine: a ``redis-server --save '' --appendonly no`` on a
  free port, up for the whole run; its runs sit next to the node's (``RUN_ORDER``).
- Pinning (when ``taskset`` exists and there are 2+ CPUs): servers on CPU 1 (``taskset -c 1``),
  every load generator and this script on CPU 0. So "one core" means one core for the server.
- HTTP: ``wrk -t1 -c{16,64} -d10s --latency -s post.lua`` (keep-alive, wrk's default); the Lua
  script POSTs ``/v1/check`` with ``{"client":"client-<n mod 1000>","cost":1}``, n a counter.
- RESP: ``redis-benchmark -c 50 -n N -P {1,16} -r 1000 --csv ML.CHECK client:__rand_int__``
  (1,000 client ids), ``CL.THROTTLE key 15 30 60 1`` (one key, as redis-cell's README; after
  the burst nearly all are refused), and on redis-server ``-t incr`` (one key) and ``INCR
  key:__rand_int__ -r 1000`` with the settings of ML.CHECK. N is sized per setting from a
  warm-up run so that a run lasts about 5 s. ``--csv`` rather than ``-q``: same figures plus p99.
- Repetitions: R (3; 1 with ``--quick``), the settings interleaved within each repetition;
  median (min-max). Ratios: of the medians, the median of the per-repetition ratios of runs
  done back to back ("paired"), and of the CPU costs ("ceilings"). Warm-up: one untimed run
  per setting (2 s of wrk; the N-sizing run).
- Columns: rate (requests/s as the generator reports it), p50/p99 latency (the generator's),
  srv CPU% and gen CPU% (CPU time of the server / load generator over the run's wall time: 100%
  is a saturated core), srv runq% (the server runnable but waiting for its CPU: other work on the
  machine), other (cores busy with anything else: other work on the machine, and kernel work
  charged to neither process), refused% and checks counted by the node (``meshlimit_checks_total``
  delta / requests; 1.00 means every request became exactly one check), errors (wrk's non-2xx and
  socket errors, redis-benchmark's error replies), us/req (the server's CPU time per
  request), ceiling/s (1 / us/req: an estimate of the rate on a saturated core of its own) and
  the median rate of the quiet runs (other <= 0.1 cores).
- Shared machine: before each timed run the script waits (at most 30 s; 5 s quick) for a second
  in which the machine is at most 0.15 cores busy, and a run during which other work took more
  than 0.4 cores is redone (3 tries at most; none quick), until 25 minutes in all (30 s quick)
  went to waiting and redoing; "other" shows what ran anyway, a note counts the redone tries.
- Floors, in the same run: the same stacks with the check replaced by a constant answer, pinned
  like the node (``FLOOR_SRC``: an aiohttp app that parses the JSON body and returns a fixed
  ``json_response``; an asyncio Protocol on uvloop + hiredis answering every ML.CHECK with a
  fixed 6-element array). They say what the framework alone costs; they are not meshlimit.
- ``--profile DIR``: py-spy records the node (100 Hz, no idle samples) for 10 s (4 s quick) under
  wrk -c64 and under ML.CHECK -P16; collapsed stacks go to DIR, top functions are printed.

This is a benchmark, not a test: it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from meshlimit.processes import HOST, NodeProcess, free_port  # noqa: E402

RULE_OPEN = "1000000000/minute"
N_CLIENTS = 1000
HTTP_CONNS = (16, 64)
RESP_CONNS = 50
PIPELINES = (1, 16)
SERVER_CPU, LOAD_CPU = 1, 0
#: Targets from the issue.
TARGET_RESP = 100_000
TARGET_RESP_VS_REDIS = 0.10
TARGET_HTTP = 15_000
#: The order of the runs within a repetition: each meshlimit setting next to its peers, so
#: that a pair shares the machine's conditions (the ratios are also taken per repetition).
RUN_ORDER = [
    *("http-c16", "floorh-c16", "http-c64", "floorh-c64"),
    *("ml-P1", "floor-P1", "incrr-P1", "incr-P1", "thr-P1"),
    *("ml-P16", "floor-P16", "incrr-P16", "incr-P16", "thr-P16"),
]
#: A timed run during which other work took more than this many cores is redone.
OTHER_LIMIT = 0.4
#: A run during which other work took at most this many cores counts as quiet (its own column:
#: a busy core elsewhere slows even the runs under ``OTHER_LIMIT``, through the generator).
QUIET_OTHER = 0.1

LUA = """\
-- POST /v1/check, cycling the client id over %(n)d ids (one counter per wrk thread).
local n = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  n = n + 1
  return wrk.format(nil, "/v1/check", nil,
                    '{"client":"client-' .. (n %% %(n)d) .. '","cost":1}')
end
"""


#: The floors: the same front-end stacks with the check replaced by a constant answer, so
#: that a row says what the framework alone costs on this machine. Not meshlimit code.
FLOOR_SRC = """\
import asyncio, json, sys
import uvloop

KIND, HOST, PORT = sys.argv[1], sys.argv[2], int(sys.argv[3])
ANSWER = {"allowed": True, "limit": 1000000000, "remaining": 999999999,
          "reset_after": 23.865, "retry_after": 0.0, "path": "owner"}
REPLY = b"*6\\r\\n:1\\r\\n:1000000000\\r\\n:999999999\\r\\n:23865\\r\\n:0\\r\\n$5\\r\\nowner\\r\\n"


def http():
    from aiohttp import web

    async def check(request):
        body = json.loads(await request.read())  # parsed, as the node does, then ignored
        return web.json_response(ANSWER)

    app = web.Application()
    app.router.add_post("/v1/check", check)
    web.run_app(app, host=HOST, port=PORT, access_log=None, print=None)


class Resp(asyncio.Protocol):
    def connection_made(self, transport):
        import hiredis
        self.transport, self.reader = transport, hiredis.Reader()

    def data_received(self, data):
        self.reader.feed(data)
        out = []
        while (command := self.reader.gets()) is not False:
            ok = command[0].upper() == b"ML.CHECK"
            out.append(REPLY if ok else b"-ERR unknown command\\r\\n")
        if out:
            self.transport.write(b"".join(out))


async def resp():
    server = await asyncio.get_running_loop().create_server(Resp, HOST, PORT)
    await server.serve_forever()


uvloop.install()
http() if KIND == "http" else asyncio.run(resp())
"""


# --- processes ------------------------------------------------------------------------


def pinned(cpu: int | None) -> list[str]:
    return ["taskset", "-c", str(cpu)] if cpu is not None else []


class FrontNode(NodeProcess):
    """A ``meshlimit node`` with ``--resp`` too, started under ``taskset`` when pinning."""

    def __init__(self, name: str, *, default: str, cpu: int | None, log_dir: Path) -> None:
        self.resp_port = free_port(socket.SOCK_STREAM)
        self.cpu = cpu
        super().__init__(
            name, default=default, log_dir=log_dir, extra=["--resp", f"{HOST}:{self.resp_port}"]
        )

    @property
    def argv(self) -> list[str]:
        return pinned(self.cpu) + super().argv

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid  # taskset execs the node: same pid

    def checks(self) -> Counter[str]:
        """``meshlimit_checks_total`` summed by result, from ``/metrics``."""
        conn_text = _http_get(self.http_port, "/metrics")
        counts: Counter[str] = Counter()
        for m in re.finditer(
            r'^meshlimit_checks_total\{path="\w+",result="(\w+)"\} (\S+)$', conn_text, re.M
        ):
            counts[m[1]] += int(float(m[2]))
        return counts


def _http_get(port: int, path: str) -> str:
    import http.client

    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def start_redis(port: int, cpu: int | None) -> subprocess.Popen[bytes]:
    argv = ["redis-server", "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(
        pinned(cpu) + argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection((HOST, port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return proc
        except OSError:
            time.sleep(0.05)
    stop_process(proc)
    raise RuntimeError(f"redis-server did not start on port {port}")


def start_floor(kind: str, port: int, cpu: int | None, src: Path) -> subprocess.Popen[bytes]:
    """A floor server (``FLOOR_SRC``) of ``kind`` "http" or "resp", ready for connections."""
    argv = [sys.executable, str(src), kind, HOST, str(port)]
    proc = subprocess.Popen(pinned(cpu) + argv, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
            return proc
        except OSError:
            time.sleep(0.05)
    stop_process(proc)
    raise RuntimeError(f"the {kind} floor server did not start on port {port}")


def stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def schedstat(pid: int) -> tuple[int, int]:
    """(CPU ns, run-queue wait ns) summed over the process's threads."""
    cpu = wait = 0
    for task in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            a, b, _ = task.read_text().split()
        except (OSError, ValueError):
            continue
        cpu, wait = cpu + int(a), wait + int(b)
    return cpu, wait


def machine_busy_s() -> tuple[float, float]:
    """(busy, steal) CPU-seconds of the whole machine so far, from ``/proc/stat``."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq) / tick, steal / tick


def wait_quiet(max_wait_s: float, busy_limit: float = 0.15) -> float:
    """Wait (at most ``max_wait_s``) for a second in which the machine's CPUs are at most
    ``busy_limit`` busy (cores) with other work; the last second's busy cores."""
    deadline = time.monotonic() + max_wait_s
    while True:
        b0, t0 = machine_busy_s()[0], time.monotonic()
        time.sleep(1.0)
        busy = (machine_busy_s()[0] - b0) / (time.monotonic() - t0)
        if busy <= busy_limit or time.monotonic() >= deadline:
            return busy


def children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


# --- one run --------------------------------------------------------------------------


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


def measured(cmd: list[str], server_pid: int, node: FrontNode | None) -> tuple[str, str, dict]:
    """Run a load generator to completion, with the server's and its own CPU around it."""
    before = node.checks() if node is not None else None
    m0, s0, g0, t0 = machine_busy_s(), schedstat(server_pid), children_cpu_s(), time.perf_counter()
    out = subprocess.run(
        pinned(LOAD_CPU_OR_NONE) + cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL
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
    port: int, conns: int, seconds: float, lua: Path, server_pid: int, node: FrontNode | None
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
    stdout, _, x = measured(cmd, server_pid, node)
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
    port: int, args: list[str], n: int, pipeline: int, server_pid: int, node: FrontNode | None
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
    stdout, stderr, x = measured(cmd, server_pid, node)
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
    rate: float, p50: float, p99: float, requests: int, x: dict, errors: int, notes: list[str]
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


# --- the settings ---------------------------------------------------------------------


@dataclass
class Setting:
    key: str
    label: str
    kind: str  # "http" or "resp"
    server: str  # "node", "redis", "floor-http" or "floor-resp"
    conns: int = 0
    pipeline: int = 1
    args: list[str] = field(default_factory=list)
    n: int = 0  # redis-benchmark requests, sized by the warm-up
    runs: list[Run] = field(default_factory=list)


def settings(have_wrk: bool, have_rb: bool, have_redis: bool) -> list[Setting]:
    out: list[Setting] = []
    if have_wrk:
        for c in HTTP_CONNS:
            out.append(Setting(f"http-c{c}", f"POST /v1/check  wrk -c{c}", "http", "node", conns=c))
        for c in HTTP_CONNS:
            out.append(
                Setting(
                    f"floorh-c{c}",
                    f"floor: aiohttp, constant  -c{c}",
                    "http",
                    "floor-http",
                    conns=c,
                )
            )
    if have_rb:
        ml = ["-r", str(N_CLIENTS), "ML.CHECK", "client:__rand_int__"]
        thr = ["CL.THROTTLE", "key", "15", "30", "60", "1"]
        for p in PIPELINES:
            out.append(
                Setting(
                    f"ml-P{p}",
                    f"ML.CHECK client:__rand_int__  -P{p}",
                    "resp",
                    "node",
                    pipeline=p,
                    args=ml,
                )
            )
        for p in PIPELINES:
            out.append(
                Setting(
                    f"thr-P{p}",
                    f"CL.THROTTLE key 15 30 60 1  -P{p}",
                    "resp",
                    "node",
                    pipeline=p,
                    args=thr,
                )
            )
        for p in PIPELINES:
            out.append(
                Setting(
                    f"floor-P{p}",
                    f"floor: uvloop+hiredis, constant  -P{p}",
                    "resp",
                    "floor-resp",
                    pipeline=p,
                    args=ml,
                )
            )
        if have_redis:
            for p in PIPELINES:
                out.append(
                    Setting(
                        f"incr-P{p}",
                        f"redis INCR (-t incr, 1 key)  -P{p}",
                        "resp",
                        "redis",
                        pipeline=p,
                        args=["-t", "incr"],
                    )
                )
            for p in PIPELINES:
                out.append(
                    Setting(
                        f"incrr-P{p}",
                        f"redis INCR key:__rand_int__  -P{p}",
                        "resp",
                        "redis",
                        pipeline=p,
                        args=["-r", str(N_CLIENTS), "INCR", "key:__rand_int__"],
                    )
                )
    return out


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.quick = args.quick
        self.reps = args.reps or (1 if args.quick else 3)
        self.http_s = 3.0 if args.quick else 10.0
        self.resp_s = 2.0 if args.quick else 5.0
        self.quiet_wait_s = 5.0 if args.quick else 30.0
        self.tries = 1 if args.quick else 3
        #: Waiting for quiet and redoing disturbed runs stop once this much time went to them.
        self.patience_s = 30.0 if args.quick else 1500.0
        self.tmp = tmp
        self.lua = tmp / "post.lua"
        self.lua.write_text(LUA % {"n": N_CLIENTS})
        self.node: FrontNode | None = None
        self.floor_src = tmp / "floor.py"
        self.floor_src.write_text(FLOOR_SRC)
        #: The other servers: redis-server and the floors, by name, with their ports.
        self.servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
        self.started: list[Any] = []  # everything to stop, in any order

    # --- servers ----------------------------------------------------------------------

    def start_node(self, name: str, rule: str) -> FrontNode:
        node = FrontNode(name, default=rule, cpu=SERVER_CPU_OR_NONE, log_dir=self.tmp)
        self.started.append(node)
        node.start()
        return node

    def stop_all(self) -> None:
        for thing in self.started:
            try:
                if isinstance(thing, NodeProcess):
                    thing.stop()
                else:
                    stop_process(thing)
            except Exception as error:  # keep stopping the rest
                print(f"  (while stopping: {error})", file=sys.stderr)
        self.started.clear()

    # --- running settings -------------------------------------------------------------

    def once(
        self,
        s: Setting,
        node: FrontNode | None,
        *,
        seconds: float | None = None,
        n: int | None = None,
    ) -> Run:
        if s.server == "node":
            assert node is not None
            pid, port, watch = (
                node.pid,
                (node.http_port if s.kind == "http" else node.resp_port),
                node,
            )
        else:
            proc, port = self.servers[s.server]
            pid, watch = proc.pid, None
        if s.kind == "http":
            return run_wrk(port, s.conns, seconds or self.http_s, self.lua, pid, watch)
        return run_rb(port, s.args, n or s.n, s.pipeline, pid, watch)

    def measure(self, s: Setting, node: FrontNode | None) -> Run:
        """One timed run, after waiting (bounded) for the machine to be quiet; redone (at most
        ``tries`` times in all) when other work took more than ``OTHER_LIMIT`` cores during it,
        as long as ``patience_s`` lasts. The last try is kept; ``tries`` says how many."""
        for attempt in range(1, self.tries + 1):
            t0 = time.monotonic()
            busy = wait_quiet(min(self.quiet_wait_s, max(0.0, self.patience_s)))
            self.patience_s -= time.monotonic() - t0
            run = self.once(s, node)
            run.busy_before, run.tries = busy, attempt
            if run.other <= OTHER_LIMIT or attempt == self.tries or self.patience_s <= 0:
                return run
            self.patience_s -= run.wall_s
            print(f"  {s.key:<10} redone: other work took {run.other:.2f} cores during it")
        raise AssertionError("unreachable")

    def warm(self, s: Setting, node: FrontNode | None) -> Run:
        """The untimed warm-up; for RESP it also sizes N to about ``resp_s`` seconds a run."""
        if s.kind == "http":
            return self.once(s, node, seconds=2)
        probe = 20_000 if s.pipeline == 1 else 100_000
        run = self.once(s, node, n=probe)
        if run.rate > probe:  # the probe took under a second: too short to size from
            run = self.once(s, node, n=int(round(run.rate * 1.5, -3)))
        s.n = max(20_000, int(round(run.rate * self.resp_s, -3)))
        return run


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}" if x == x else "-"


def med(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def spread(runs: list[Run], attr: str) -> str:
    xs = [getattr(r, attr) for r in runs]
    if len(xs) == 1:
        return fmt_rate(xs[0])
    return f"{fmt_rate(med(xs))} ({fmt_rate(min(xs))}-{fmt_rate(max(xs))})"


def pct(x: float) -> str:
    return f"{x:.0%}" if x == x else "-"


def print_table(title: str, rows: list[tuple[str, str, list[Run]]]) -> None:
    print(f"\n{title}")
    head = (
        f"  {'setting':<44} {'rule':<17} {'rate/s median (min-max)':>27} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'srv CPU':>7} {'runq':>5} {'gen CPU':>7} {'other':>5} {'refused':>7} "
        f"{'counted':>7} {'errors':>6} {'us/req':>6} {'ceiling/s':>9} {'quiet runs: rate (n)':>21}"
    )
    print(head)
    print("  " + "-" * (len(head) - 2))
    for label, rule, runs in rows:
        if not runs:
            continue
        counted = med([r.counted for r in runs])
        cpu_us = med([cpu_per_request_us(r) for r in runs])
        print(
            f"  {label:<44} {rule:<17} {spread(runs, 'rate'):>27} "
            f"{med([r.p50_ms for r in runs]):7.2f} {med([r.p99_ms for r in runs]):7.2f} "
            f"{pct(med([r.srv_cpu for r in runs])):>7} {pct(med([r.srv_runq for r in runs])):>5} "
            f"{pct(med([r.gen_cpu for r in runs])):>7} {med([r.other for r in runs]):5.2f} "
            f"{pct(med([r.refused for r in runs])):>7} "
            f"{'-' if counted != counted else f'{counted:.2f}':>7} "
            f"{sum(r.errors for r in runs):>6} {cpu_us:6.1f} {fmt_rate(1e6 / cpu_us):>9} "
            f"{quiet_text(runs):>21}"
        )
        redone = sum(r.tries - 1 for r in runs)
        noisy = sum(r.other > OTHER_LIMIT for r in runs)
        if redone or noisy:
            print(
                f"  {'':<44} ! {redone} tries redone for other work; {noisy} of {len(runs)} "
                f"runs kept had other > {OTHER_LIMIT} cores"
            )
        for note in sorted({n for r in runs for n in r.notes})[:3]:
            print(f"  {'':<44} ! {note}")


def quiet_text(runs: list[Run]) -> str:
    """The median rate of the runs during which other work took at most ``QUIET_OTHER`` cores."""
    quiet = [r.rate for r in runs if r.other <= QUIET_OTHER]
    return f"{fmt_rate(med(quiet))} ({len(quiet)})" if quiet else "- (0)"


def cpu_per_request_us(r: Run) -> float:
    """The server's CPU time per request (all its threads, user and kernel)."""
    return r.srv_cpu * r.wall_s / r.requests * 1e6 if r.requests else float("nan")


# --- machine and method ---------------------------------------------------------------


def tool_version(argv: list[str], pattern: str) -> str:
    if not shutil.which(argv[0]):
        return "absent"
    out = subprocess.run(argv, capture_output=True, text=True)
    m = re.search(pattern, out.stdout + out.stderr)
    return m[1] if m else "?"


def machine() -> dict[str, str]:
    cpu = platform.processor() or "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break

    def version(dist: str) -> str:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as v

        try:
            return v(dist)
        except PackageNotFoundError:
            return "absent"

    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "meshlimit": version("meshlimit"),
        "aiohttp": version("aiohttp"),
        "uvloop": version("uvloop"),
        "hiredis": version("hiredis"),
        "wrk": tool_version(["wrk", "-v"], r"wrk (\S+)"),
        "redis-benchmark": tool_version(["redis-benchmark", "--version"], r"redis-benchmark (\S+)"),
        "redis-server": tool_version(["redis-server", "--version"], r"v=(\S+)"),
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def print_header(info: dict[str, str], b: Bench) -> None:
    print("meshlimit front-end benchmark: one node's HTTP and RESP servers, and redis-server")
    print(f"command: .venv/bin/python scripts/bench_frontends.py {' '.join(sys.argv[1:])}".rstrip())
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
    if SERVER_CPU_OR_NONE is not None:
        print(
            f"pinning: servers on CPU {SERVER_CPU} (taskset -c {SERVER_CPU}), load generators "
            f"and this script on CPU {LOAD_CPU}"
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


# --- profiling ------------------------------------------------------------------------


def profile(b: Bench, node: FrontNode, s: Setting, out_dir: Path, seconds: float) -> None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print(f"\nprofile {s.key}: skipped, py-spy not found (.venv/bin/pip install py-spy)")
        return
    raw = out_dir / f"profile-{s.key}.txt"
    rec = subprocess.Popen(
        pinned(LOAD_CPU_OR_NONE)
        + [
            spy,
            "record",
            "--pid",
            str(node.pid),
            "-d",
            f"{seconds:g}",
            "-r",
            "100",
            "-F",
            "--format",
            "raw",
            "-o",
            str(raw),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)  # py-spy attaches
    if s.kind == "http":
        run = b.once(s, node, seconds=seconds + 2)
    else:
        run = b.once(s, node, n=int(s.n * (seconds + 2) / b.resp_s))
    _, err = rec.communicate(timeout=seconds + 30)
    if rec.returncode != 0 or not raw.exists():
        print(f"\nprofile {s.key}: py-spy failed: {err.strip()[:300]}")
        return
    print_profile(s, raw, run, seconds)


def print_profile(s: Setting, raw: Path, run: Run, seconds: float) -> None:
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = [re.sub(r" \((.*?)/?([^/]+\.py):\d+\)$", r" (\2)", f) for f in stack.split(";")]
        frames = [f.replace(" (<frozen runpy>)", "") for f in frames]
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    print(
        f"\nProfile of the node under {s.label} (py-spy, 100 Hz, {seconds:g} s, samples where "
        f"the thread was not idle: {total}, {total / (100 * seconds):.0%} of the time; rate "
        f"during the run {fmt_rate(run.rate)}/s, srv CPU {pct(run.srv_cpu)}). {raw}"
    )
    print(
        "  Time in C code (uvloop, the parsers, syscalls) is charged to the Python frame that "
        "called it; 'Runner.run' self = inside uvloop's loop outside any Python callback."
    )
    print(f"  {'self':>6}  function                                          {'incl':>6}  function")
    top_own, top_incl = own.most_common(15), incl.most_common(25)
    top_incl = [(f, n) for f, n in top_incl if n < total * 0.999 or f.startswith("Runner.run")][:15]
    for i in range(15):
        left = (
            f"{top_own[i][1] / total:6.1%}  {top_own[i][0][:48]:<48}"
            if i < len(top_own)
            else " " * 56
        )
        right = f"{top_incl[i][1] / total:6.1%}  {top_incl[i][0][:60]}" if i < len(top_incl) else ""
        print(f"  {left}  {right}")


# --- main -----------------------------------------------------------------------------

LOAD_CPU_OR_NONE: int | None = None
SERVER_CPU_OR_NONE: int | None = None


def _interrupted(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    global LOAD_CPU_OR_NONE, SERVER_CPU_OR_NONE
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 repetition, shorter runs")
    parser.add_argument("--reps", type=int, default=0, help="repetitions (default 3, quick 1)")
    parser.add_argument("--profile", metavar="DIR", help="also profile the node with py-spy")
    parser.add_argument("--json", metavar="FILE", help="write every run's figures here")
    parser.add_argument(
        "--report", metavar="FILE", help="print the tables of a run saved with --json; run nothing"
    )
    args = parser.parse_args()
    if args.report:
        return report_saved(Path(args.report))
    # SIGTERM (and SIGINT, even where a shell started us with it ignored) unwinds through the
    # ``finally`` below, which stops every server this script started.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _interrupted)

    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        LOAD_CPU_OR_NONE, SERVER_CPU_OR_NONE = LOAD_CPU, SERVER_CPU
        os.sched_setaffinity(0, {LOAD_CPU})
    have = {
        tool: shutil.which(tool) is not None for tool in ("wrk", "redis-benchmark", "redis-server")
    }
    with tempfile.TemporaryDirectory(prefix="bench_frontends-") as tmp_name:
        b = Bench(args, Path(tmp_name))
        print_header(machine(), b)
        for tool, ok in have.items():
            if not ok:
                part = {
                    "wrk": "the HTTP runs",
                    "redis-benchmark": "every RESP run",
                    "redis-server": "the redis-server reference and its ratios",
                }[tool]
                print(
                    f"!! {tool} not found: skipping {part} "
                    f"(apt-get install -y wrk redis-server redis-tools)"
                )
        sets = settings(have["wrk"], have["redis-benchmark"], have["redis-server"])
        if not sets:
            print("nothing to run")
            return 1
        refusal: dict[str, list[Run]] = {}
        paired_open: dict[str, list[Run]] = {}
        rules: dict[str, str] = {}
        try:
            b.node = b.start_node("bench-open", RULE_OPEN)
            for name in sorted({s.server for s in sets} - {"node"}):
                port = free_port(socket.SOCK_STREAM)
                if name == "redis":
                    proc = start_redis(port, SERVER_CPU_OR_NONE)
                else:
                    proc = start_floor(name.split("-")[1], port, SERVER_CPU_OR_NONE, b.floor_src)
                b.started.append(proc)
                b.servers[name] = (proc, port)
            print(
                f"\nnode pid {b.node.pid} (http :{b.node.http_port}, resp :{b.node.resp_port}); "
                + "; ".join(f"{k} pid {p.pid} (:{port})" for k, (p, port) in b.servers.items())
            )
            order = sorted(sets, key=lambda s: RUN_ORDER.index(s.key))
            print("\nwarm-up (untimed; sizes N for redis-benchmark):")
            for s in order:
                run = b.warm(s, b.node)
                print(
                    f"  {s.key:<10} {fmt_rate(run.rate):>10}/s" + (f"  -> N={s.n:,}" if s.n else "")
                )
            for rep in range(b.reps):
                print(f"\nrepetition {rep + 1}/{b.reps}:")
                for s in order:
                    run = b.measure(s, b.node)
                    s.runs.append(run)
                    print(
                        f"  {s.key:<10} {fmt_rate(run.rate):>10}/s  p50 {run.p50_ms:6.2f} ms  "
                        f"p99 {run.p99_ms:6.2f} ms  srv CPU {pct(run.srv_cpu):>4}  gen CPU "
                        f"{pct(run.gen_cpu):>4}  other {run.other:.2f}  busy before {run.busy_before:.2f}  "
                        f"refused {pct(run.refused):>3}  errors {run.errors}",
                        flush=True,
                    )
            if args.profile:
                out_dir = Path(args.profile)
                out_dir.mkdir(parents=True, exist_ok=True)
                for key in ("http-c64", "ml-P16"):
                    s = next((s for s in sets if s.key == key), None)
                    if s is not None:
                        profile(b, b.node, s, out_dir, 4.0 if args.quick else 10.0)
            # The open node stays up: the refusal phase alternates its runs with the refusing
            # node's, for paired ratios.

            # Refusal phase: a fresh node per setting, rule sized to refuse about half.
            for s in sets:
                if s.server != "node" or not s.key.startswith(("http", "ml")):
                    continue
                run_refusal(b, s, refusal, rules, paired_open)
        finally:
            b.stop_all()
            # The nodes' warnings and errors, each distinct message once, with its count.
            messages: Counter[str] = Counter()
            for log in sorted(Path(tmp_name).glob("*.log")):
                for ln in log.read_text().splitlines():
                    if "level=warning" in ln or "level=error" in ln:
                        m = re.search(r'level=(\w+) .*?msg=("[^"]*"|\S+)', ln)
                        messages[f"{m[1]} {m[2]}" if m else ln[:160]] += 1
            if messages:
                print(f"\nnode logs ({sum(messages.values())} warning/error lines):")
                for text, count in messages.most_common(8):
                    print(f"  {count:4d} x {text[:160]}")

    report(sets, refusal, rules, paired_open)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "settings": {s.key: [vars(r) for r in s.runs] for s in sets},
                    "refusal": {k: [vars(r) for r in v] for k, v in refusal.items()},
                    "refusal_rules": rules,
                    "refusal_paired_open": {
                        k: [vars(r) for r in v] for k, v in paired_open.items()
                    },
                },
                indent=1,
            )
        )
    return 0


def run_refusal(
    b: Bench,
    s: Setting,
    refusal: dict[str, list[Run]],
    rules: dict[str, str],
    paired_open: dict[str, list[Run]],
) -> None:
    """Rule ``L/2s`` with L = rate / clients admits half of 2 s of checks. The rate under
    refusals is not the rate without (a refusal costs less), so L is sized from the open
    run's median first, then resized once if the warm-up under the rule refused a share
    outside 35-65%: by the admitted share when some were refused, else from its rate."""
    limit = max(1, round(med([r.rate for r in s.runs]) / N_CLIENTS))
    for attempt in (1, 2):
        rules[s.key] = f"{limit}/2s"
        node = b.start_node(f"bench-refuse-{s.key}", rules[s.key])
        try:
            # Warm-up: wrk for 2 s, or half a run of redis-benchmark.
            warm = b.warm(s, node) if s.kind == "http" else b.once(s, node, n=s.n // 2)
            admitted = 1 - warm.refused
            if attempt == 1 and not 0.35 <= warm.refused <= 0.65:
                if admitted < 0.98:
                    better = max(1, round(limit * 0.5 / admitted))
                else:
                    better = max(1, min(round(warm.rate / N_CLIENTS), limit // 2))
                print(
                    f"\nrefusal phase, {s.key}: rule {rules[s.key]} refused "
                    f"{pct(warm.refused)} at {fmt_rate(warm.rate)}/s; resized to {better}/2s"
                )
                limit = better
                continue
            runs = refusal.setdefault(s.key, [])
            opens = paired_open.setdefault(s.key, [])
            print(f"\nrefusal phase, {s.key}, rule {rules[s.key]} (each after an open-node run):")
            for _ in range(b.reps):
                for which, target, into in (("open", b.node, opens), ("refusing", node, runs)):
                    run = b.measure(s, target)
                    into.append(run)
                    print(
                        f"  {s.key:<10} {which:<9} {fmt_rate(run.rate):>10}/s  refused "
                        f"{pct(run.refused):>3}  srv CPU {pct(run.srv_cpu):>4}  other "
                        f"{run.other:.2f}  us/req {cpu_per_request_us(run):.1f}",
                        flush=True,
                    )
            return
        finally:
            node.stop()
            b.started.remove(node)


def report_saved(path: Path) -> int:
    """The tables, ratios and targets of a run saved with ``--json``."""
    saved = json.loads(path.read_text())
    sets = [s for s in settings(True, True, True) if s.key in saved["settings"]]
    for s in sets:
        s.runs = [Run(**r) for r in saved["settings"][s.key]]

    def runs(name: str) -> dict[str, list[Run]]:
        return {k: [Run(**r) for r in v] for k, v in saved.get(name, {}).items()}

    print(f"saved run: {path}")
    report(sets, runs("refusal"), saved["refusal_rules"], runs("refusal_paired_open"))
    return 0


def report(
    sets: list[Setting],
    refusal: dict[str, list[Run]],
    rules: dict[str, str],
    paired_open: dict[str, list[Run]],
) -> None:
    by = {s.key: s for s in sets}
    print(
        "\nEach row: median (min-max) over the repetitions of the rate; other columns are medians."
        "\n  srv/gen CPU: the server's / load generator's CPU time over wall time (100% = one"
        "\n  core saturated); runq: the server runnable but waiting for its CPU; other: cores busy"
        "\n  with anything else (other work on the machine, kernel work charged to neither);"
        "\n  counted: checks the node counted / requests sent; us/req: the server's CPU time per"
        "\n  request; ceiling/s: 1 / us/req, the rate it would reach with its core saturated and"
        "\n  to itself: an estimate, not a measurement (the generator's pace, batching and"
        "\n  contention change the cost per request); quiet runs: median rate of the runs with"
        f"\n  other <= {QUIET_OTHER} cores, and how many there were."
    )
    http = [s for s in sets if s.kind == "http"]
    rows = [(s.label, RULE_OPEN if s.server == "node" else "-", s.runs) for s in http]
    rows += [
        (s.label + " (~50% refused)", rules[s.key], refusal.get(s.key, []))
        for s in http
        if s.key in rules
    ]
    if http:
        print_table("HTTP front-end (wrk, keep-alive)", rows)
    resp = [s for s in sets if s.kind == "resp"]
    rows = [(s.label, RULE_OPEN if s.server == "node" else "-", s.runs) for s in resp]
    rows += [
        (s.label + " (~50% refused)", rules[s.key], refusal.get(s.key, []))
        for s in resp
        if s.key in rules
    ]
    if resp:
        print_table(f"RESP front-end and redis-server (redis-benchmark -c {RESP_CONNS})", rows)

    def rate(key: str) -> float:
        return med([r.rate for r in by[key].runs]) if key in by else float("nan")

    def runs_of(key: str) -> list[Run]:
        return by[key].runs if key in by else []

    print(
        "\nRatios (same run, same pinning, same generator settings): of the median rates; the"
        "\n  median (min-max) of the per-repetition ratios of runs done back to back; and of the"
        "\n  ceilings (CPU cost per request of the second / of the first)."
    )
    lines: list[tuple[str, list[Run], list[Run]]] = []
    for p in PIPELINES:
        lines.append(
            (
                f"ML.CHECK -P{p} / INCR key:__rand_int__ -P{p}",
                runs_of(f"ml-P{p}"),
                runs_of(f"incrr-P{p}"),
            )
        )
        lines.append(
            (f"ML.CHECK -P{p} / INCR -t incr -P{p}", runs_of(f"ml-P{p}"), runs_of(f"incr-P{p}"))
        )
        lines.append(
            (
                f"CL.THROTTLE -P{p} / INCR key:__rand_int__ -P{p}",
                runs_of(f"thr-P{p}"),
                runs_of(f"incrr-P{p}"),
            )
        )
        lines.append(
            (
                f"ML.CHECK -P{p} / floor uvloop+hiredis -P{p}",
                runs_of(f"ml-P{p}"),
                runs_of(f"floor-P{p}"),
            )
        )
    for c in HTTP_CONNS:
        lines.append(
            (f"HTTP -c{c} / floor aiohttp -c{c}", runs_of(f"http-c{c}"), runs_of(f"floorh-c{c}"))
        )
    lines.append(("ML.CHECK -P16 / ML.CHECK -P1 (pipelining)", runs_of("ml-P16"), runs_of("ml-P1")))
    lines.append(
        (
            "ML.CHECK -P1 / HTTP -c64 (one request per round trip)",
            runs_of("ml-P1"),
            runs_of("http-c64"),
        )
    )
    for key in refusal:
        if key in paired_open:  # absent from runs saved before the pairing
            lines.append((f"{key}: ~50% refused / nothing refused", refusal[key], paired_open[key]))
    print(f"  {'':<52} {'medians':>8} {'paired median (min-max)':>24} {'ceilings':>9}")
    for text, a, c in lines:
        if not a or not c:
            continue
        medians = med([r.rate for r in a]) / med([r.rate for r in c])
        paired = [x.rate / y.rate for x, y in zip(a, c, strict=False)]
        ceilings = med([cpu_per_request_us(r) for r in c]) / med([cpu_per_request_us(r) for r in a])
        spread_text = f"{med(paired):.3f} ({min(paired):.3f}-{max(paired):.3f})"
        print(f"  {text:<52} {medians:8.3f} {spread_text:>24} {ceilings:9.3f}")

    print("\nTargets from the issue (this run's medians):")
    ml16, incr16, http_best = (
        rate("ml-P16"),
        rate("incrr-P16"),
        max(rate("http-c16"), rate("http-c64")),
    )

    def verdict(ok: bool) -> str:
        return "MET" if ok else "NOT MET"

    if ml16 == ml16:
        print(
            f"  RESP >= {TARGET_RESP:,} ML.CHECK/s pipelined on one core: {fmt_rate(ml16)}/s "
            f"-> {verdict(ml16 >= TARGET_RESP)} ({ml16 / TARGET_RESP:.0%} of the target)"
        )
    if ml16 == ml16 and incr16 == incr16:
        paired = med(
            [x.rate / y.rate for x, y in zip(by["ml-P16"].runs, by["incrr-P16"].runs, strict=True)]
        )
        print(
            f"  RESP >= {TARGET_RESP_VS_REDIS:.0%} of redis-server INCR (same settings, -P16): "
            f"{ml16 / incr16:.1%} of the medians, {paired:.1%} paired -> "
            f"{verdict(min(paired, ml16 / incr16) >= TARGET_RESP_VS_REDIS)} (INCR's rate is the "
            f"generator's limit when its gen CPU is ~100%: then the ratio flatters meshlimit)"
        )
    if http_best == http_best:
        print(
            f"  HTTP >= {TARGET_HTTP:,} checks/s keep-alive on one core: {fmt_rate(http_best)}/s "
            f"(best of -c16/-c64) -> {verdict(http_best >= TARGET_HTTP)} "
            f"({http_best / TARGET_HTTP:.0%} of the target)"
        )
    for key in ("http-c16", "http-c64", "ml-P16"):
        if key in by and by[key].runs:
            cpu_us = med([cpu_per_request_us(r) for r in by[key].runs])
            print(
                f"  {key}: node CPU per check {cpu_us:.1f} us -> ceiling "
                f"{fmt_rate(1e6 / cpu_us)}/s on a saturated core of its own (estimate)"
            )


if __name__ == "__main__":
    sys.exit(main())
