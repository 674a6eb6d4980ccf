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
import http.client
import json
import math
import os
import platform
import random
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshlimit.cluster.node.config import NodeConfig
from meshlimit.core.rules import Rule, parse_rule

from meshlimit.processes import HOST, NodeProcess, wait_for

#: Tier name -> rule; three clients per tier.
TIERS = {
    "sw": "20/2s",
    "swb": "30/5s burst 10",
    "fwb": "25/3s algo fixed_window burst 5",
    "tbb": "8/s algo token_bucket burst 4",
}
CLIENTS_PER_TIER = 3
NODE_NAMES = ("n1", "n2", "n3")
KILL_EVERY_S = (20.0, 40.0)
RESTART_AFTER_S = (5.0, 10.0)
#: A fault's windows last until this long after every node sees three alive members.
SETTLE_S = 5.0
#: No kill starts this close to the end: the node must restart and rejoin in the run.
QUIET_END_S = 25.0
REJOIN_TIMEOUT_S = 30.0
RSS_EVERY_S = 1.0
HTTP_TIMEOUT_S = 5.0
#: A thread this far behind its schedule drops the missed checks.
MAX_LAG_S = 1.0
FRACTION = NodeConfig.preset("local", "x", (HOST, 1)).degraded_fraction


# --- records --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    """One answered check."""

    client: str
    node: str
    path: str
    allowed: bool
    window: int
    latency_ns: int


@dataclass
class Fault:
    """A kill and what followed; ``settled`` is None until the cluster is whole again."""

    node: str
    killed: float
    restarted: float | None = None
    alive: float | None = None

    def span(self, end: float) -> tuple[float, float]:
        """Wall-clock span whose windows are judged against the fault bound."""
        return self.killed, (self.alive + SETTLE_S) if self.alive is not None else end + 1


@dataclass
class Shared:
    """State shared by the load threads, the sampler and the fault loop."""

    up: dict[str, int] = field(default_factory=dict)
    """Node name -> life number, for nodes the load may send to."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    answers: list[Answer] = field(default_factory=list)
    unavailable: Counter[str] = field(default_factory=Counter)
    http_errors: list[str] = field(default_factory=list)
    skipped: int = 0
    rss: dict[tuple[str, int], list[tuple[float, int]]] = field(
        default_factory=lambda: defaultdict(list)
    )


# --- the cluster ----------------------------------------------------------------------


def client_rules() -> dict[str, Rule]:
    """Client id -> its rule."""
    return {
        f"soak-{tier}-{i}": parse_rule(rule)
        for tier, rule in TIERS.items()
        for i in range(CLIENTS_PER_TIER)
    }


def write_config(path: Path) -> None:
    """The ``[limits]`` every node starts with."""
    lines = ["[limits]", 'default = "100/minute"', "", "[limits.tiers]"]
    lines += [f'{tier} = "{rule}"' for tier, rule in TIERS.items()]
    lines += ["", "[limits.clients]"]
    for client in client_rules():
        lines.append(f'"{client}" = "{client.split("-")[1]}"')
    path.write_text("\n".join(lines) + "\n")


def all_alive(nodes: list[NodeProcess]) -> bool:
    """Every node answers and sees every node alive."""
    names = {node.name for node in nodes}
    for node in nodes:
        try:
            members = node.members()
        except (OSError, ValueError, KeyError, http.client.HTTPException):
            return False
        if {n for n, state in members.items() if state == "alive"} < names:
            return False
    return True


def rules_everywhere(nodes: list[NodeProcess], rules: dict[str, Rule]) -> bool:
    """Every node reports every client's configured rule."""
    for node in nodes:
        for client, rule in rules.items():
            answer = node.call("GET", f"/v1/rules/{client}")
            if parse_rule(answer["rule"]) != rule:
                return False
    return True


# --- load -----------------------------------------------------------------------------


class Client:
    """One load thread: keep-alive connections to the nodes, a fixed schedule."""

    def __init__(
        self,
        index: int,
        shared: Shared,
        nodes: dict[str, NodeProcess],
        rules: dict[str, Rule],
        rate: float,
        seed: int,
    ) -> None:
        self.shared = shared
        self.nodes = nodes
        self.rules = rules
        self.interval_s = 1.0 / rate
        self.rng = random.Random(seed * 1000 + index)
        self.cycle = list(rules)
        self.rng.shuffle(self.cycle)
        self.offset_s = self.interval_s * self.rng.random()
        self.conns: dict[str, tuple[int, http.client.HTTPConnection]] = {}
        self.answers: list[Answer] = []

    def run(self) -> None:
        """Check on schedule until the shared stop event is set."""
        next_t = time.perf_counter() + self.offset_s
        k = 0
        while not self.shared.stop.is_set():
            now = time.perf_counter()
            if next_t > now:
                self.shared.stop.wait(next_t - now)
                continue
            if now - next_t > MAX_LAG_S:
                missed = int((now - next_t) / self.interval_s)
                with self.shared.lock:
                    self.shared.skipped += missed
                next_t += missed * self.interval_s
            next_t += self.interval_s
            with self.shared.lock:
                up = sorted(self.shared.up.items())
            if not up:
                continue
            name, life = self.rng.choice(up)
            client = self.cycle[k % len(self.cycle)]
            k += 1
            self.check(name, life, client)
        for _, conn in self.conns.values():
            conn.close()
        with self.shared.lock:
            self.shared.answers.extend(self.answers)

    def _conn(self, name: str, life: int) -> tuple[http.client.HTTPConnection, bool]:
        """A connection to the node's current life; True if it was used before."""
        held = self.conns.get(name)
        if held is not None and held[0] == life:
            return held[1], True
        if held is not None:
            held[1].close()
        conn = http.client.HTTPConnection(HOST, self.nodes[name].http_port, timeout=HTTP_TIMEOUT_S)
        self.conns[name] = (life, conn)
        return conn, False

    def check(self, name: str, life: int, client: str) -> None:
        body = json.dumps({"client": client})
        headers = {"Content-Type": "application/json"}
        for attempt in (0, 1):
            conn, reused = self._conn(name, life)
            send_wall = time.time()
            start = time.perf_counter_ns()
            try:
                conn.request("POST", "/v1/check", body=body, headers=headers)
                response = conn.getresponse()
                payload = response.read()
            except (OSError, http.client.HTTPException) as error:
                conn.close()
                self.conns.pop(name, None)
                if reused and attempt == 0:
                    continue  # a keep-alive connection the server closed: retry once, fresh
                with self.shared.lock:
                    self.shared.unavailable[f"{name}: {type(error).__name__}"] += 1
                return
            latency = time.perf_counter_ns() - start
            recv_wall = time.time()
            if response.status != 200:
                with self.shared.lock:
                    self.shared.http_errors.append(
                        f"{name} HTTP {response.status} for {client}: {payload[:200]!r}"
                    )
                return
            decision = json.loads(payload)
            rule = self.rules[client]
            window_s = rule.window_ns / 1e9
            if rule.algo == "token_bucket":
                window = math.floor((send_wall + recv_wall) / 2 / window_s)
            else:
                window = round((recv_wall + decision["reset_after"]) / window_s) - 1
            self.answers.append(
                Answer(client, name, decision["path"], decision["allowed"], window, latency)
            )
            return


def sample_rss(shared: Shared, nodes: list[NodeProcess], lives: dict[str, int]) -> None:
    """Every node process's VmRSS (kB), once a second, until stop."""
    while True:
        sample_rss_once(shared, nodes, lives)
        if shared.stop.wait(RSS_EVERY_S):
            return


def sample_rss_once(shared: Shared, nodes: list[NodeProcess], lives: dict[str, int]) -> None:
    """One VmRSS sample of every running node. A node the fault loop has taken out of
    ``shared.up`` (it is about to be, or has been, killed) is skipped, and so is a sample
    read while that happened: a dying process's shrinking RSS is not its footprint."""
    now = time.time()
    for node in nodes:
        proc = node.proc
        with shared.lock:
            life = shared.up.get(node.name)
        if proc is None or proc.poll() is not None or life is None:
            continue
        rss = read_rss_kb(proc.pid)
        with shared.lock:
            if rss is not None and shared.up.get(node.name) == life == lives[node.name]:
                shared.rss[(node.name, life)].append((now, rss))


def read_rss_kb(pid: int) -> int | None:
    """``VmRSS`` of a live process in kB; None if it is gone, dying or a zombie."""
    rss = None
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("State:") and line.split()[1] in ("Z", "X"):
                    return None
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return rss


# --- faults ---------------------------------------------------------------------------


def restart(node: NodeProcess, others: list[NodeProcess], violations: list[str]) -> bool:
    """Start a killed node again, seeded with the others; up to three tries."""
    node.seeds = [other.udp_port for other in others]
    for attempt in range(3):
        try:
            node.start()
            return True
        except RuntimeError as error:
            node.kill()
            print(f"  restart of {node.name} failed (try {attempt + 1}): {error}", flush=True)
    violations.append(f"restart_failed: {node.name} did not come back after three tries")
    return False


def run_faults(
    shared: Shared,
    nodes: list[NodeProcess],
    lives: dict[str, int],
    rng: random.Random,
    deadline: float,
    t0: float,
    violations: list[str],
) -> list[Fault]:
    """Kill and restart nodes until ``deadline`` (monotonic); the faults, in order."""
    faults: list[Fault] = []
    next_kill = time.monotonic() + rng.uniform(*KILL_EVERY_S)
    while True:
        now = time.monotonic()
        if now >= deadline:
            return faults
        if now < next_kill or next_kill + QUIET_END_S > deadline:
            time.sleep(min(0.2, max(0.0, deadline - now)))
            continue
        victim = rng.choice(nodes)
        restart_after = rng.uniform(*RESTART_AFTER_S)
        with shared.lock:
            shared.up.pop(victim.name, None)
        fault = Fault(victim.name, time.time())
        faults.append(fault)
        killed_mono = time.monotonic()
        victim.kill()
        print(f"[{time.time() - t0:6.1f} s] killed {victim.name} (SIGKILL)", flush=True)
        time.sleep(restart_after)
        others = [node for node in nodes if node is not victim]
        if restart(victim, others, violations):
            lives[victim.name] += 1
            fault.restarted = time.time()
            with shared.lock:
                shared.up[victim.name] = lives[victim.name]
            print(f"[{fault.restarted - t0:6.1f} s] restarted {victim.name}", flush=True)
            try:
                wait_for(f"{victim.name} to rejoin", lambda: all_alive(nodes), REJOIN_TIMEOUT_S)
                fault.alive = time.time()
                print(f"[{fault.alive - t0:6.1f} s] three alive in every view", flush=True)
            except TimeoutError as error:
                violations.append(f"no_rejoin: {error}")
        next_kill = killed_mono + rng.uniform(*KILL_EVERY_S)
        if fault.alive is None:
            return faults  # the cluster is not whole: no more faults on top of it


# --- judging --------------------------------------------------------------------------


def bound_of(rule: Rule, faulty: bool) -> int:
    """Most the design lets through for one client in one window."""
    capacity = rule.capacity
    if rule.algo == "token_bucket":
        capacity += rule.limit  # a full bucket, then one window's refill
    if not faulty:
        return capacity
    return math.floor(capacity * (1 + FRACTION)) + capacity


def judge(
    answers: list[Answer], rules: dict[str, Rule], spans: list[tuple[float, float]]
) -> tuple[list[str], dict[str, Any]]:
    """Violations of the per-window bound, and figures about the windows."""
    admitted: Counter[tuple[str, int]] = Counter()
    paths: dict[tuple[str, int], Counter[str]] = defaultdict(Counter)
    for a in answers:
        paths[(a.client, a.window)][f"{a.path}{'' if a.allowed else '-refused'}"] += 1
        if a.allowed:
            admitted[(a.client, a.window)] += 1
    violations: list[str] = []
    judged = Counter[str]()
    peak: dict[str, float] = {"healthy": 0.0, "faulty": 0.0}
    full = Counter[str]()
    for (client, window), counted in sorted(paths.items()):
        rule = rules[client]
        window_s = rule.window_ns / 1e9
        start, end = window * window_s, (window + 1) * window_s
        faulty = any(s < end and start < e for s, e in spans)
        kind = "faulty" if faulty else "healthy"
        bound = bound_of(rule, faulty)
        got = admitted[(client, window)]
        judged[kind] += 1
        peak[kind] = max(peak[kind], got / bound)
        if got >= bound_of(rule, False):
            full[kind] += 1
        if got > bound:
            violations.append(
                f"over_admission: client={client} window={window} "
                f"[{time.strftime('%H:%M:%S', time.localtime(start))}+{window_s:g}s] "
                f"admitted {got} > bound {bound} ({kind}; rule {rule}; {dict(counted)})"
            )
    figures = {
        "windows_judged": dict(judged),
        "peak_admitted_over_bound": peak,
        "windows_admitting_full_capacity": dict(full),
    }
    return violations, figures


def percentiles(values: list[int]) -> dict[str, float]:
    """p50 / p99 / p99.9 / max in milliseconds."""
    if not values:
        return {}
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6

    return {"n": len(ordered), "p50": at(0.5), "p99": at(0.99), "p999": at(0.999), "max": at(1.0)}


def memory_figures(rss: dict[tuple[str, int], list[tuple[float, int]]]) -> dict[str, Any]:
    """Per node and process life: start / peak / end VmRSS in MiB, and samples."""
    out: dict[str, Any] = {}
    for (name, life), samples in sorted(rss.items()):
        values = [kb for _, kb in samples]
        out[f"{name}#{life}"] = {
            "start_mib": values[0] / 1024,
            "peak_mib": max(values) / 1024,
            "end_mib": values[-1] / 1024,
            "samples": len(values),
            "seconds": samples[-1][0] - samples[0][0],
        }
    return out


# --- main -----------------------------------------------------------------------------


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
    nodes: list[NodeProcess] = []
    lives = dict.fromkeys(NODE_NAMES, 1)
    threads: list[threading.Thread] = []
    faults: list[Fault] = []
    try:
        first = NodeProcess(NODE_NAMES[0], log_dir=log_dir, extra=["--config", str(config)])
        nodes.append(first)
        for name in NODE_NAMES[1:]:
            nodes.append(
                NodeProcess(
                    name, seeds=[first.udp_port], log_dir=log_dir, extra=["--config", str(config)]
                )
            )
        for node in nodes:
            node.start()
        wait_for("three alive members in every view", lambda: all_alive(nodes), 20)
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
        sampler.start()
        threads.append(sampler)
        for i in range(args.threads):
            client = Client(i, shared, by_name, rules, args.rate / args.threads, args.seed)
            thread = threading.Thread(target=client.run, name=f"client-{i}", daemon=True)
            thread.start()
            threads.append(thread)
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
        shared.stop.set()
        for node in nodes:
            node.kill()

    report = build_report(args, shared, rules, faults, end, t0, violations)
    print_report(report)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"node logs: {log_dir}")
    return 1 if report["violations"] else 0


def build_report(
    args: argparse.Namespace,
    shared: Shared,
    rules: dict[str, Rule],
    faults: list[Fault],
    end: float,
    t0: float,
    violations: list[str],
) -> dict[str, Any]:
    """Everything the run measured, as plain data."""
    answers = shared.answers
    spans = [fault.span(end) for fault in faults]
    over, windows = judge(answers, rules, spans)
    by_path: dict[str, list[int]] = defaultdict(list)
    decisions: Counter[str] = Counter()
    for a in answers:
        by_path[a.path].append(a.latency_ns)
        decisions[f"{a.path} {'allowed' if a.allowed else 'refused'}"] += 1
    latency = {"all": percentiles([a.latency_ns for a in answers])}
    latency.update((path, percentiles(values)) for path, values in sorted(by_path.items()))
    return {
        "command": f"scripts/soak.py --minutes {args.minutes:g} --rate {args.rate:g} "
        f"--seed {args.seed} --threads {args.threads}",
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, Linux {platform.release()}, "
        f"Python {platform.python_version()}",
        "seconds": end - t0,
        "checks": len(answers),
        "skipped": shared.skipped,
        "unavailable": dict(shared.unavailable),
        "faults": [
            {
                "node": f.node,
                "killed_at_s": round(f.killed - t0, 1),
                "restarted_at_s": None if f.restarted is None else round(f.restarted - t0, 1),
                "alive_at_s": None if f.alive is None else round(f.alive - t0, 1),
            }
            for f in faults
        ],
        "decisions": dict(sorted(decisions.items())),
        "latency_ms": latency,
        "windows": windows,
        "memory": memory_figures(shared.rss),
        "violations": violations + shared.http_errors + over,
    }


def print_report(report: dict[str, Any]) -> None:
    print()
    print(f"== soak report: {report['command']}")
    print(f"machine: {report['machine']}")
    print(
        f"{report['seconds']:.0f} s, {report['checks']} checks answered "
        f"({report['checks'] / max(report['seconds'], 1e-9):.0f}/s), "
        f"{report['skipped']} skipped (client late), unavailable: {report['unavailable'] or 0}"
    )
    print("faults:")
    for f in report["faults"]:
        print(
            f"  {f['node']}: killed at {f['killed_at_s']} s, restarted at "
            f"{f['restarted_at_s']} s, three alive in every view at {f['alive_at_s']} s"
        )
    print("decisions by path:")
    for key, count in report["decisions"].items():
        print(f"  {key:<20} {count:>8}")
    print("latency (client-side, ms):   n        p50      p99    p99.9      max")
    for path, figures in report["latency_ms"].items():
        if figures:
            print(
                f"  {path:<20} {figures['n']:>8} {figures['p50']:>8.2f} {figures['p99']:>8.2f}"
                f" {figures['p999']:>8.2f} {figures['max']:>8.2f}"
            )
    windows = report["windows"]
    print(
        f"windows judged: {windows['windows_judged']}; admitting their full capacity: "
        f"{windows['windows_admitting_full_capacity']}; highest admitted/bound: "
        + ", ".join(f"{k} {v:.2f}" for k, v in windows["peak_admitted_over_bound"].items())
    )
    print("memory (VmRSS, MiB):     start     peak      end  samples")
    for key, m in report["memory"].items():
        print(
            f"  {key:<18} {m['start_mib']:>8.1f} {m['peak_mib']:>8.1f} {m['end_mib']:>8.1f}"
            f" {m['samples']:>8}"
        )
    print(f"invariant violations: {len(report['violations'])}")
    for violation in report["violations"]:
        print(f"  {violation}")


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
