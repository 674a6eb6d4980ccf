"""Three ``meshlimit node`` daemons on loopback, and what they say about a span of load.

Theory of operation. :class:`Cluster` starts the daemons (``--resp`` and ``--http`` on free
ports, the first alone, the others seeded through it, a default rule so large that nothing
is refused) and waits until every node sees every member alive. Around each phase of load
the benchmark takes a :class:`Snapshot`: every node's ``/metrics`` (Prometheus text), the
size of its stderr log, its CPU time; :func:`phase_counts` turns two snapshots into what the
phase did:

- the client-facing decisions, by path: ``owner`` (the asked node owns the client),
  ``forwarded`` (answered by the owner; counted on the asking node, as
  ``meshlimit_forward_latency_seconds_count{path="forwarded"}``: the node's own
  ``meshlimit_checks_total{path="forwarded"}`` also counts what it decided as owner for a
  peer, so it counts a forwarded check twice in the cluster's sum), ``degraded`` and
  ``overloaded`` (``meshlimit_checks_total``);
- forward timeouts, checks that waited for room, late replies and late replies counted twice,
  ``overloaded`` by reason;
- membership: the transition lines (``member X a -> b``) each node logged during the phase,
  and the deltas of ``meshlimit_swim_events_total`` (suspicions, refutations, stalls...).

Every daemon is registered with the script's :class:`~harness.processes.Cleanup`.
"""

from __future__ import annotations

import http.client
import math
import re
import socket
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.proc import schedstat
from harness.processes import HOST, Cleanup, NodeProcess, free_port, wait_for

from meshlimit.cluster.daemon.metrics import OVERLOAD_REASONS

#: Default rule of every daemon: nothing is ever refused by a limit.
HUGE_RULE = "1000000000/minute"
NODES = 3
#: Membership transitions in a node's log (``cluster/runtime.py``).
TRANSITION = re.compile(r'msg="member (\S+) (\w+) -> (\w+)')
_SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
#: ``meshlimit_swim_events_total{event}`` worth reporting per phase.
SWIM_EVENTS = (
    "suspicions",
    "false_suspicions",
    "refutations",
    "declared_dead",
    "failed_probes",
    "probes_inconclusive",
    "stalls",
)

Metrics = list[tuple[str, dict[str, str], float]]


def parse_metrics(text: str) -> Metrics:
    """Prometheus text exposition -> (name, labels, value) samples; comments skipped."""
    samples: Metrics = []
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m is None or line.startswith("#"):
            continue
        labels = dict(_LABEL.findall(m[2] or ""))
        samples.append((m[1], labels, float(m[3])))
    return samples


def metric(samples: Metrics, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels`` (0 if none)."""
    return sum(
        value
        for n, have, value in samples
        if n == name and all(have.get(k) == v for k, v in labels.items())
    )


class Daemon(NodeProcess):
    """A ``meshlimit node`` serving RESP on a free port too, logging to ``log_dir``."""

    def __init__(self, name: str, *, preset: str, seeds: list[int], log_dir: Path) -> None:
        self.resp_port = free_port(socket.SOCK_STREAM)
        extra = ["--resp", f"{HOST}:{self.resp_port}", "--preset", preset]
        super().__init__(name, seeds=seeds, default=HUGE_RULE, log_dir=log_dir, extra=extra)
        self.log_path = log_dir / f"{name}.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def metrics(self, timeout_s: float = 10.0, tries: int = 3) -> Metrics:
        """``/metrics``, asked up to ``tries`` times (a node just out of overload can be
        slow to answer); the last error if it never answers."""
        for attempt in range(tries):
            conn = http.client.HTTPConnection(HOST, self.http_port, timeout=timeout_s)
            try:
                conn.request("GET", "/metrics")
                return parse_metrics(conn.getresponse().read().decode())
            except OSError:
                if attempt == tries - 1:
                    raise
            finally:
                conn.close()
        raise AssertionError("unreachable")

    def log_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def log_between(self, start: int, end: int) -> list[str]:
        """The log lines written between two sizes of the file."""
        with open(self.log_path, "rb") as f:
            f.seek(start)
            return f.read(max(0, end - start)).decode(errors="replace").splitlines()


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every node's metrics, log size and CPU at one instant."""

    at: float
    metrics: list[Metrics]
    log_sizes: list[int]
    cpu: list[tuple[int, int]]
    """(on-CPU, run-queue) nanoseconds per node, from ``/proc/PID/schedstat``."""


class Cluster:
    """Three daemons of one preset; stopped by the ``cleanup`` they were registered with."""

    def __init__(self, preset: str, log_dir: Path, cleanup: Cleanup) -> None:
        self.preset = preset
        self.nodes: list[Daemon] = []
        log_dir.mkdir(parents=True, exist_ok=True)
        for i in range(1, NODES + 1):
            seeds = [self.nodes[0].udp_port] if self.nodes else []
            node = Daemon(f"{preset}-n{i}", preset=preset, seeds=seeds, log_dir=log_dir)
            cleanup.add(node)
            node.start()
            self.nodes.append(node)
        wait_for(f"{NODES} alive members on every {preset} node", self.all_alive, 60, 0.2)

    @property
    def resp_ports(self) -> list[int]:
        return [node.resp_port for node in self.nodes]

    def all_alive(self) -> bool:
        """Every node answers and sees all the members alive."""
        try:
            views = [node.members() for node in self.nodes]
        except (OSError, ValueError):
            return False
        return all(len(v) == NODES and set(v.values()) == {"alive"} for v in views)

    def snapshot(self) -> Snapshot:
        return Snapshot(
            at=time.monotonic(),
            metrics=[node.metrics() for node in self.nodes],
            log_sizes=[node.log_size() for node in self.nodes],
            cpu=[schedstat(node.pid) for node in self.nodes],
        )

    def transitions(self, before: Snapshot, after: Snapshot) -> list[str]:
        """The membership transition lines the nodes logged between two snapshots, each as
        ``observer: member old -> new``."""
        found = []
        for node, start, end in zip(self.nodes, before.log_sizes, after.log_sizes, strict=True):
            for line in node.log_between(start, end):
                m = TRANSITION.search(line)
                if m is not None:
                    found.append(f"{node.name}: {m[1]} {m[2]} -> {m[3]}")
        return found


def _delta(before: Snapshot, after: Snapshot, name: str, **labels: str) -> float:
    return sum(
        metric(a, name, **labels) - metric(b, name, **labels)
        for b, a in zip(before.metrics, after.metrics, strict=True)
    )


def phase_counts(cluster: Cluster, before: Snapshot, after: Snapshot) -> dict[str, Any]:
    """What the cluster did between two snapshots (see the module docstring)."""

    def d(name: str, **labels: str) -> int:
        return round(_delta(before, after, name, **labels))

    paths = {
        "owner": d("meshlimit_checks_total", path="owner"),
        "forwarded": d("meshlimit_forward_latency_seconds_count", path="forwarded"),
        "degraded": d("meshlimit_checks_total", path="degraded"),
        "overloaded": d("meshlimit_checks_total", path="overloaded"),
    }
    decided = sum(paths.values())
    shares = {p: n / decided if decided else math.nan for p, n in paths.items()}
    lines = cluster.transitions(before, after)
    seconds = after.at - before.at
    cpu_ns = sum(a[0] - b[0] for b, a in zip(before.cpu, after.cpu, strict=True))
    runq_ns = sum(a[1] - b[1] for b, a in zip(before.cpu, after.cpu, strict=True))
    kinds = Counter(line.split(": ", 1)[1].split(" ", 1)[1] for line in lines)
    return {
        "seconds": seconds,
        "decisions": decided,
        "paths": paths,
        "shares": shares,
        "decided_as_owner_for_peers": d("meshlimit_checks_total", path="forwarded")
        - paths["forwarded"],
        "overloaded_by_reason": {
            r: d("meshlimit_overloaded_total", reason=r) for r in OVERLOAD_REASONS
        },
        "forward_timeouts": d("meshlimit_forward_timeouts_total"),
        "checks_waited": d("meshlimit_checks_waited_total"),
        "late_replies": d("meshlimit_forward_late_replies_total"),
        "late_replies_counted_twice": d(
            "meshlimit_node_events_total", event="late_replies_counted_twice"
        ),
        "transitions": len(lines),
        "transition_kinds": dict(kinds),
        "transition_lines": lines[:50],
        "swim": {e: d("meshlimit_swim_events_total", event=e) for e in SWIM_EVENTS},
        "node_cpu_cores": cpu_ns / 1e9 / seconds if seconds > 0 else math.nan,
        "node_runq_cores": runq_ns / 1e9 / seconds if seconds > 0 else math.nan,
    }
