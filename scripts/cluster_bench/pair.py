"""Two meshlimit nodes in two processes, and one measurement on them with CPU accounting.

The *owner* node only answers; the *load* node runs every measurement. Around each one,
:meth:`Pair.run` reads both processes' CPU time and run-queue wait (``/proc``) and both
nodes' counters, so a row can say what a check cost each side, how full the batches were,
and whether anything timed out, degraded or was dropped.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from multiprocessing.context import SpawnContext
from typing import Any

from harness.proc import SchedWatch
from harness.processes import Cleanup, Worker, free_port

from cluster_bench.workers import node_worker


def measured(call: Callable[[], dict[str, Any]], pids: dict[str, int]) -> dict[str, Any]:
    """Run ``call`` and add, for the ``client`` and ``server`` processes, the CPU time they
    used and the time they waited in the run queue (other work holding the CPUs) meanwhile."""
    watch = SchedWatch(pids)
    t0 = time.perf_counter()
    result = call()
    wall = time.perf_counter() - t0
    used = watch.stop()
    result["wall"] = wall
    for role, (cpu_s, runq_s) in used.items():
        result[f"cpu_{role}"] = cpu_s
        result[f"runq_{role}"] = runq_s
    if "cpu_s" in result:
        # The worker's own process CPU time also counts threads that have exited.
        result["cpu_client"] = result["cpu_s"]
    return result


class Pair:
    """An owner node and a load node, each in its own process (registered with ``cleanup``,
    so they are stopped even if the run fails)."""

    def __init__(self, ctx: SpawnContext, options: dict[str, Any], cleanup: Cleanup) -> None:
        owner_port, load_port = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
        self.cleanup = cleanup
        self.owner = cleanup.add(Worker(ctx, node_worker, "owner", owner_port, None, options))
        self.load = cleanup.add(Worker(ctx, node_worker, "load", load_port, owner_port, options))
        self.info = self.load.call("info")
        self.load.call("wait_peer", timeout_s=60)

    def run(self, cmd: str, arg: dict[str, Any]) -> dict[str, Any]:
        """One measurement on the load node, with CPU, run-queue and node counters around it."""
        o0, l0 = self.owner.call("stats"), self.load.call("stats")
        timeout = arg.get("seconds", 1) * 4 + 60
        result = measured(
            lambda: self.load.call(cmd, arg, timeout_s=timeout),
            {"client": self.load.pid, "server": self.owner.pid},
        )
        o1, l1 = self.owner.call("stats"), self.load.call("stats")
        diff = {k: v - l0["stats"].get(k, 0) for k, v in l1["stats"].items()}
        result["datagrams"] = diff.get("datagrams_sent", 0)
        result["owner_datagrams"] = o1["stats"].get("datagrams_sent", 0) - o0["stats"].get(
            "datagrams_sent", 0
        )
        result["batches"] = diff.get("batches_sent", 0)
        result["batched"] = diff.get("batched_checks", 0)
        result["timeouts"] = diff.get("forward_timeouts", 0)
        result["degraded"] = diff.get("degraded_allowed", 0) + diff.get("degraded_refused", 0)
        dropped = {k: v - l0["dropped"].get(k, 0) for k, v in l1["dropped"].items()}
        dropped.update(
            {f"owner.{k}": v - o0["dropped"].get(k, 0) for k, v in o1["dropped"].items()}
        )
        result["dropped"] = {k: v for k, v in dropped.items() if v}
        result["members_ok"] = all(m[2] == "alive" for m in l1["members"] + o1["members"])
        return result

    def stop(self) -> None:
        self.cleanup.stop(self.load)
        self.cleanup.stop(self.owner)
