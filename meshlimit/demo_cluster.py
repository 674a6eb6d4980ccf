"""``meshlimit demo``: a three-node cluster on loopback, a crash, a restart.

Three ``meshlimit node`` processes start on free loopback ports. Traffic for
a few clients goes to all three nodes over HTTP; then the node that owns one
client is killed with SIGKILL and traffic continues; then it restarts. After
each phase a table shows, per client, what was sent and admitted against the
limit, which path decided (owner, forwarded, degraded), and what each node
thinks of its peers.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TextIO

from meshlimit.cluster.node.config import NodeConfig
from meshlimit.processes import NodeProcess, wait_for

WINDOW_S = 5
DEFAULT_RULE = f"20/{WINDOW_S}s"
RULES = {"acme": f"40/{WINDOW_S}s"}
CLIENTS = ("acme", "globex", "initech")
ROUNDS = 60
FRACTION = NodeConfig("x", ("x", 0)).degraded_fraction


def run(out: TextIO = sys.stdout) -> int:
    """Run the demo; returns a process exit code."""
    with tempfile.TemporaryDirectory(prefix="meshlimit-demo-") as logs:
        nodes = _start_cluster(Path(logs), out)
        try:
            return _phases(nodes, out)
        finally:
            for node in nodes:
                node.stop()


def _start_cluster(logs: Path, out: TextIO) -> list[NodeProcess]:
    first = NodeProcess("n1", default=DEFAULT_RULE, log_dir=logs)
    nodes = [first] + [
        NodeProcess(f"n{i}", seeds=[first.udp_port], default=DEFAULT_RULE, log_dir=logs)
        for i in (2, 3)
    ]
    out.write("meshlimit demo: three nodes on loopback, strict mode\n\n")
    for node in nodes:
        node.start()
        out.write(f"  started {node.name}: udp 127.0.0.1:{node.udp_port}  "
                  f"http 127.0.0.1:{node.http_port}\n")  # fmt: skip
    wait_for("three alive members", lambda: _converged(nodes, 3), 20)
    out.write(f"\n  default rule {DEFAULT_RULE}; rule for acme set on n2: {RULES['acme']}\n")
    for client, rule in RULES.items():
        nodes[1].call("PUT", f"/v1/rules/{client}", {"rule": rule})
    wait_for("the rule on every node", lambda: _rule_everywhere(nodes), 10)
    out.write("  (a rule set on one node reaches every node by gossip)\n")
    return nodes


def _phases(nodes: list[NodeProcess], out: TextIO) -> int:
    _phase(nodes, nodes, "Phase 1: healthy cluster", out, healthy=True)
    victim_name = nodes[0].owner_of("acme")
    victim = next(n for n in nodes if n.name == victim_name)
    survivors = [n for n in nodes if n is not victim]
    victim.kill()
    out.write(f"\n  >>> killed {victim.name} (owner of acme) with SIGKILL\n")
    _phase(nodes, survivors, f"Phase 2: {victim.name} crashed", out, healthy=False)
    victim.start()
    out.write(f"\n  >>> restarted {victim.name} on the same ports\n")
    wait_for("the restarted node alive everywhere", lambda: _converged(nodes, 3), 20)
    _phase(nodes, nodes, f"Phase 3: {victim.name} back", out, healthy=True)
    out.write(
        "\nWhat this showed: while healthy, the owner of each client decides every check,\n"
        "so the cluster admits at most the limit per window wherever requests land.\n"
        "With the owner dead, the survivors decide alone against a local quota\n"
        f"(degraded_fraction {FRACTION} of the limit shared between them), so the cluster\n"
        f"never admits more than limit x {1 + FRACTION:g} per window. After the restart the\n"
        "node rejoins and strict enforcement resumes.\n"
    )
    return 0


def _phase(
    nodes: list[NodeProcess], targets: list[NodeProcess], title: str, out: TextIO, *, healthy: bool
) -> None:
    _wait_for_quiet_window()
    jobs = [
        (client, targets[(round_ + i) % len(targets)])
        for round_ in range(ROUNDS)
        for i, client in enumerate(CLIENTS)
    ]
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda job: (job[0], job[1].check(job[0]), time.time()), jobs))
    sent: Counter[str] = Counter()
    per_window: dict[str, Counter[int]] = {c: Counter() for c in CLIENTS}
    paths: dict[str, Counter[str]] = {c: Counter() for c in CLIENTS}
    limits: dict[str, int] = {}
    for client, answer, at in answers:
        sent[client] += 1
        limits[client] = answer["limit"]
        if answer["allowed"]:
            # The window the answer fell in: the node says how long until it ends.
            per_window[client][round((at + answer["reset_after"]) / WINDOW_S)] += 1
            paths[client][answer["path"]] += 1
    out.write(f"\n{title}  (requests spread over {', '.join(t.name for t in targets)})\n\n")
    header = (
        f"  {'client':<8} {'limit':>5} {'bound':>5} {'sent':>5} {'admitted':>8}"
        f" {'max/window':>10}  admitted by path"
    )
    out.write(header + "\n  " + "-" * (len(header) - 2) + "\n")
    for client in CLIENTS:
        limit = limits[client]
        bound = limit if healthy else math.floor(limit * (1 + FRACTION))
        admitted = sum(per_window[client].values())
        peak = max(per_window[client].values(), default=0)
        by_path = ", ".join(f"{p} {n}" for p, n in sorted(paths[client].items())) or "-"
        out.write(f"  {client:<8} {limit:>5} {bound:>5} {sent[client]:>5} {admitted:>8}"
                  f" {peak:>10}  {by_path}\n")  # fmt: skip
    out.write("\n  membership as each node sees it:\n")
    for node in nodes:
        if node.running:
            view = "  ".join(f"{n}={s}" for n, s in sorted(node.members().items()))
            out.write(f"    {node.name}: {view}\n")
        else:
            out.write(f"    {node.name}: (down)\n")
    out.flush()


def _wait_for_quiet_window() -> None:
    """Start just after a window boundary with the previous window empty, so the
    sliding window starts from nothing and one phase shows one window's limit."""
    now = time.time()
    time.sleep(2 * WINDOW_S - now % WINDOW_S + 0.05)


def _converged(nodes: list[NodeProcess], count: int) -> bool:
    names = {n.name for n in nodes}
    for node in nodes:
        view = node.members()
        if {n for n, s in view.items() if s == "alive"} != names or len(names) != count:
            return False
    return True


def _rule_everywhere(nodes: list[NodeProcess]) -> bool:
    return all(
        n.call("GET", f"/v1/rules/{c}")["rule"] == r for n in nodes for c, r in RULES.items()
    )
