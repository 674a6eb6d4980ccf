"""The settings of the front-end benchmark (a generator configuration against a server)
and :class:`Bench`, which runs them: warm-ups that size each run, timed runs that wait
for a quiet machine and are redone when other work disturbed them."""

from __future__ import annotations

import argparse
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.proc import wait_quiet
from harness.processes import Cleanup

from frontend_bench.constants import HTTP_CONNS, N_CLIENTS, OTHER_LIMIT, PIPELINES
from frontend_bench.runs import Run, run_rb, run_wrk
from frontend_bench.servers import FLOOR_SRC, LUA, FrontNode, Pinning


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
    """The run's settings, the open node and the other servers, and the patience left."""

    def __init__(
        self, args: argparse.Namespace, tmp: Path, pinning: Pinning, cleanup: Cleanup
    ) -> None:
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
        self.pinning = pinning
        #: Everything started, stopped when the script leaves its ``with`` block.
        self.cleanup = cleanup

    # --- servers ----------------------------------------------------------------------

    def start_node(self, name: str, rule: str) -> FrontNode:
        node = FrontNode(name, default=rule, cpu=self.pinning.server_cpu, log_dir=self.tmp)
        self.cleanup.add(node)
        node.start()
        return node

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
            seconds = seconds or self.http_s
            return run_wrk(port, s.conns, seconds, self.lua, pid, watch, self.pinning.load_cpu)
        return run_rb(port, s.args, n or s.n, s.pipeline, pid, watch, self.pinning.load_cpu)

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
