#!/usr/bin/env python3
"""Soak: a three-node cluster under steady load while nodes crash and come back.

    .venv/bin/python scripts/soak.py [--minutes M] [--rate R] [--seed S]
                                     [--threads T] [--log-dir DIR] [--json FILE]

What it does:

- Cluster. Three ``meshlimit node`` processes on 127.0.0.1
  (:class:`meshlimit.processes.NodeProcess`: ``--preset local``, strict mode,
  the default ``degraded_fraction``), all given one TOML ``--config`` whose
  ``[limits]`` put twelve fixed clients on four tiers, a mix of algorithms:
  sliding window (``20/2s``), sliding window with a burst (``30/5s burst
  10``), fixed window with a burst (``25/3s algo fixed_window burst 5``) and
  token bucket (``8/s algo token_bucket burst 4``). The second and third
  nodes join through the first. Load starts once every node sees three alive
  members and every node reports every client's rule.
- Load. ``--threads`` (4) client threads share ``--rate`` (200) checks/s,
  each on a fixed schedule (a thread more than a second late drops what it
  missed and counts it as skipped). A check is ``POST /v1/check`` over a
  keep-alive HTTP connection to a random node among those running; the
  client is the next one of a per-thread shuffled cycle, so every client gets
  about ``rate / 12`` checks/s, about twice what its rule admits. Latency is
  client-side: from sending the request to reading the answer
  (``perf_counter_ns``), so it includes HTTP and the GIL shared by the
  threads.
- Faults. A seeded RNG (``--seed``) picks, every 20-40 s, a node to kill with
  SIGKILL, and restarts it on the same ports 5-10 s later, seeded with the
  other two. The load stops sending to a node from just before it is killed
  until its readiness line (checks in flight when it dies fail and are
  counted as unavailable). The next kill waits until every node sees three
  alive members again; none starts in the last 25 s of the run.
- Accounting. Every admitted check is placed in its client's window: for the
  window algorithms by the answer's ``reset_after`` (the end of the window
  the node decided in), for the token bucket by the midpoint of the request.
  The bound per client and window is the one ``docs/design.md`` ("Degraded
  mode and the majority rule") documents and ``sim/checkers.py`` asserts:
  ``capacity`` (limit + burst) in a healthy window, and
  ``floor(capacity * (1 + f)) + capacity`` in a window touched by a fault,
  i.e. overlapping the span from a kill until 5 s after every node sees
  three alive members again (degraded decisions, plus one capacity because
  ownership may move). For the token bucket ``capacity`` is one window's
  refill more (a full bucket, then a window of refill, fit in one window).
- Memory. The resident set (``VmRSS`` in ``/proc/PID/status``) of every
  node process, once a second; reported per node and process life as
  start / peak / end.
- Report. Latency p50 / p99 / p99.9 / max overall and by decision path,
  decisions by path, windows judged, the highest admitted / bound ratios,
  memory, and every violation: a window over its bound (client, window,
  count, bound, paths), a node that could not restart or did not rejoin
  within 30 s, an HTTP error answer from a running node. Exit status 1 if
  there is any violation, 0 otherwise.

Everything is bounded: the run stops by itself after ``--minutes`` (plus the
time a last restart and the final report take), waits poll with deadlines,
and every node process is killed in ``finally``. Node logs (stderr) go to
``--log-dir`` (default: a new temporary directory, printed at the end).
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

from harness.processes import Cleanup, NodeProcess, interrupt_on_signals, wait_for
from harness.report import write_json
from soaking.cluster import all_alive, client_rules, rules_everywhere, run_faults, write_config
from soaking.judge import build_report, print_report
from soaking.load import Client, sample_rss, sample_rss_once
from soaking.state import HTTP_TIMEOUT_S, NODE_NAMES, Fault, Shared


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="load duration (default 3)")
    parser.add_argument("--rate", type=float, default=200.0, help="checks/s in all (default 200)")
    parser.add_argument("--seed", type=int, default=1, help="fault schedule seed (default 1)")
    parser.add_argument("--threads", type=int, default=4, help="client threads (default 4)")
    parser.add_argument("--log-dir", type=Path, help="node logs (default: a new temp dir)")
    parser.add_argument("--json", type=Path, help="also write the report here as JSON")
    args = parser.parse_args(argv)
    if not 0 < args.minutes <= 24 * 60 or not 0 < args.rate <= 100_000 or args.threads < 1:
        parser.error("--minutes must be in (0, 1440], --rate in (0, 100000], --threads >= 1")

    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="meshlimit-soak-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    config = log_dir / "limits.toml"
    write_config(config)
    rules = client_rules()
    rng = random.Random(args.seed)
    shared = Shared()
    violations: list[str] = []
    lives = dict.fromkeys(NODE_NAMES, 1)
    threads: list[threading.Thread] = []
    faults: list[Fault] = []
    interrupt_on_signals()
    with Cleanup() as cleanup:
        try:
            nodes = start_cluster(log_dir, config, cleanup)
            wait_for("every rule on every node", lambda: rules_everywhere(nodes, rules), 20)
            by_name = {node.name: node for node in nodes}
            shared.up.update(lives)
            sample_rss_once(shared, nodes, lives)
            t0 = time.time()
            print(
                f"soak: {len(nodes)} nodes, {len(rules)} clients, {args.rate:g} checks/s from "
                f"{args.threads} threads, {args.minutes:g} min, seed {args.seed}, logs {log_dir}",
                flush=True,
            )
            sampler = threading.Thread(target=sample_rss, args=(shared, nodes, lives), daemon=True)
            threads.append(sampler)
            for i in range(args.threads):
                client = Client(i, shared, by_name, rules, args.rate / args.threads, args.seed)
                threads.append(threading.Thread(target=client.run, name=f"client-{i}", daemon=True))
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + args.minutes * 60
            faults = run_faults(shared, nodes, lives, rng, deadline, t0, violations)
            while time.monotonic() < deadline:
                time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
            end = time.time()
            shared.stop.set()
            for thread in threads:
                thread.join(timeout=HTTP_TIMEOUT_S + 5)
            sample_rss_once(shared, nodes, lives)
        finally:
            shared.stop.set()  # the load threads stop before the nodes are killed

    report = build_report(args, shared, rules, faults, end, t0, violations)
    print_report(report)
    if args.json is not None:
        write_json(args.json, report, indent=2)
    print(f"node logs: {log_dir}")
    return 1 if report["violations"] else 0


def start_cluster(log_dir: Path, config: Path, cleanup: Cleanup) -> list[NodeProcess]:
    """Three nodes on the ``[limits]`` of ``config``, the second and third seeded with the
    first, killed (SIGKILL) when ``cleanup`` closes; returns once all see three alive."""
    first = NodeProcess(NODE_NAMES[0], log_dir=log_dir, extra=["--config", str(config)])
    nodes = [first]
    for name in NODE_NAMES[1:]:
        nodes.append(
            NodeProcess(
                name, seeds=[first.udp_port], log_dir=log_dir, extra=["--config", str(config)]
            )
        )
    for node in nodes:
        cleanup.add(node, stop=node.kill)
        node.start()
    wait_for("three alive members in every view", lambda: all_alive(nodes), 20)
    return nodes


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
