#!/usr/bin/env python3
"""Benchmark: a flood of distinct client ids against a capped client table.

    .venv/bin/python scripts/bench_flood.py [--ids N] [--quick] [--cap C] [--reps R]

Method (the output header says it again):

- Subjects: (a) the in-process ``meshlimit.Limiter(default="10/minute",
  max_clients=CAP, clock=...)``; (b) a sans-IO cluster ``Node`` (preset
  ``sim``, node ``a`` alone, ``max_clients=CAP``, ``default_rule="10/minute"``),
  every check taking the owner path. Each runs in a fresh subprocess (the
  script re-invokes itself with ``--child``), one after the other.
- Workload: N flood checks (``--ids``, default 10,000,000; ``--quick``
  1,000,000), each for a new random id ``f"{rng.getrandbits(64):016x}"`` made
  on the fly (none is kept), cost 1, so each one inserts a record; the cap
  (1,000,000) is reached within the first window and every insert after it
  must evict. Interleaved, one legit check per 1,000 flood checks: per
  window, 100 legit clients (fresh ids each window, so the sliding window's
  weight of the previous one never refuses them early) check 11 times each,
  round-robin, so a client's checks are spread over the whole window, about
  100,000 flood inserts apart. The first 10 must be allowed; the 11th, after
  about a million flood inserts (a full table's worth of evictions) since its
  first, must be refused: if it is allowed, its count was evicted. The last
  window is partial: its legit checks go on at their times after the flood
  ends, so its clients are judged too, under less pressure.
- Clock: fake and advancing. A window (one minute) holds exactly 1,101,100
  checks (1,100 slots of 1,000 flood checks and one legit check), so check k
  of window w is at ``T0 + w * 60 s + k * 60 s / 1,101,100``; 10M ids span
  10 windows, the last one partial. The node is ticked whenever its deadline has passed
  (checked once per slot), and its output drained, as a driver would.
- Figures: RSS from ``/proc/self/status`` (``VmRSS``; peak ``VmHWM``):
  ``before`` after building the subject and ``gc.collect()``; ``at cap``
  when the table first holds CAP records; ``after`` at the end (no collect);
  ``peak``. Bytes per record = growth / CAP, at the cap and at the peak.
  checks/s = all checks (flood and legit) / wall time of the loop, which
  includes making an id (its cost alone is printed). The garbage collector
  stays enabled, as in a service. With ``--reps R`` each subject runs R times
  (fresh processes) and the medians are shown.
- Verdicts, not assertions (this is a benchmark): ``memory`` passes when the
  peak growth stays within ``CAP x bytes per record at the cap x 1.5``: the
  flood past the cap may not grow memory by more than half of what filling
  the cap took; ``legit`` passes when every legit client's first 10 checks
  were allowed and its 11th refused.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import sys
import time
from collections.abc import Callable
from typing import Any

from harness.proc import status_kib
from harness.processes import run_json_child
from harness.report import doc_section, write_json
from harness.stats import median

T0 = 1_700_000_040 * 1_000_000_000  # a wall-clock instant on a minute boundary
WINDOW_NS = 60 * 1_000_000_000
FLOOD_PER_SLOT = 1000
LEGIT_CLIENTS = 100
LEGIT_ROUNDS = 11  # 10 within the limit, then one that must be refused
SLOTS_PER_WINDOW = LEGIT_CLIENTS * LEGIT_ROUNDS
CHECKS_PER_WINDOW = SLOTS_PER_WINDOW * (FLOOD_PER_SLOT + 1)
BUDGET_FACTOR = 1.5
SUBJECTS = ("limiter", "node")


def proc_status() -> dict[str, int]:
    """VmRSS and VmHWM in bytes."""
    return {name: kib * 1024 for name, kib in status_kib("self", ("VmRSS", "VmHWM")).items()}


def id_cost_ns(n: int = 200_000) -> float:
    """ns to make one flood id, as the loop does."""
    getrandbits = random.Random(1).getrandbits
    start = time.perf_counter_ns()
    for _ in range(n):
        f"{getrandbits(64):016x}"  # noqa: B018
    return (time.perf_counter_ns() - start) / n


# --- subjects ---------------------------------------------------------------------------


class LimiterSubject:
    def __init__(self, cap: int) -> None:
        from meshlimit import Limiter

        self.now = T0
        self.limiter = Limiter(default="10/minute", max_clients=cap, clock=lambda: self.now)

    def checker(self) -> Callable[[str, int], bool]:
        check = self.limiter.check

        def one(client: str, now_ns: int) -> bool:
            self.now = now_ns
            return check(client).allowed

        return one

    def slot(self, now_ns: int) -> None:
        """Once per 1,000 checks: nothing to drive."""

    def count(self) -> int:
        return self.limiter.stats()["clients"]

    def counters(self) -> dict[str, int]:
        stats = self.limiter.stats()
        swept = sum(s.table.expired for s in self.limiter._engine.series.values())
        return {**stats, "expired_by_sweep": swept}


class NodeSubject:
    def __init__(self, cap: int) -> None:
        from meshlimit.cluster.node import Node
        from meshlimit.cluster.node.config import NodeConfig

        config = NodeConfig.preset("sim", "a", ("a", 1), max_clients=cap, default_rule="10/minute")
        self.node = Node(config, random.Random(0), now_ns=T0)
        self.node.start([], now_ns=T0)
        self.deadline = self.node.next_deadline()
        self.ticks = 0

    def checker(self) -> Callable[[str, int], bool]:
        check = self.node.check

        def one(client: str, now_ns: int) -> bool:
            return check(client, 1, now_ns=now_ns).allowed  # type: ignore[union-attr]

        return one

    def slot(self, now_ns: int) -> None:
        if now_ns >= self.deadline:
            node = self.node
            node.tick(now_ns=now_ns)
            node.datagrams_to_send()
            node.events()
            self.deadline = node.next_deadline()
            self.ticks += 1

    def count(self) -> int:
        return len(self.node.counters)

    def counters(self) -> dict[str, int]:
        node = self.node
        return {
            "clients": len(node.counters),
            "evicted_live": node.counters.evicted_live,
            "expired": node.counters.expired,
            "refused_table_full": node.counters.dropped,
            "dirty_full": node.dropped["dirty_full"],
            "owner_allowed": node.stats["owner_allowed"],
            "owner_refused": node.stats["owner_refused"],
            "ticks": self.ticks,
        }


# --- the child: one subject ---------------------------------------------------------------


def child(subject_name: str, ids: int, cap: int, seed: int) -> dict[str, Any]:
    subject = LimiterSubject(cap) if subject_name == "limiter" else NodeSubject(cap)
    check = subject.checker()
    assert check("warm-up", T0) is True
    per_id_ns = id_cost_ns()
    gc.collect()
    before = proc_status()["VmRSS"]
    getrandbits = random.Random(seed).getrandbits
    flood = legit = lost = early = evaluated = 0
    at_cap: dict[str, Any] | None = None
    windows = []
    start = time.perf_counter()
    cpu_start = time.process_time()
    window = 0
    while flood < ids:
        base = T0 + window * WINDOW_NS
        window_start = time.perf_counter()
        window_checks = 0
        pos = 0  # checks made in this window
        for slot in range(SLOTS_PER_WINDOW):
            todo = min(FLOOD_PER_SLOT, ids - flood)
            for _ in range(todo):
                check(f"{getrandbits(64):016x}", base + pos * WINDOW_NS // CHECKS_PER_WINDOW)
                pos += 1
            flood += todo
            window_checks += todo
            pos += FLOOD_PER_SLOT - todo  # once the flood is over, legit checks go on alone
            now = base + pos * WINDOW_NS // CHECKS_PER_WINDOW
            pos += 1
            subject.slot(now)
            allowed = check(f"legit-{window}-{slot % LEGIT_CLIENTS}", now)
            legit += 1
            window_checks += 1
            if slot // LEGIT_CLIENTS < LEGIT_ROUNDS - 1:
                early += not allowed
            else:
                evaluated += 1
                lost += allowed
            if at_cap is None and subject.count() >= cap:
                rss = proc_status()["VmRSS"]
                at_cap = {
                    "rss": rss,
                    "flood_checks": flood,
                    "bytes_per_record": (rss - before) / cap,
                    "seconds": time.perf_counter() - start,
                }
        elapsed = time.perf_counter() - window_start
        status = proc_status()
        windows.append(
            {
                "window": window,
                "checks": window_checks,
                "checks_per_s": window_checks / elapsed,
                "clients": subject.count(),
                "rss": status["VmRSS"],
            }
        )
        print(
            f"  [{subject_name}] window {window}: {flood:,} flood ids, {subject.count():,} "
            f"records, RSS {status['VmRSS'] / 2**20:,.0f} MiB, "
            f"{window_checks / elapsed:,.0f} checks/s",
            file=sys.stderr,
            flush=True,
        )
        window += 1
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    status = proc_status()
    return {
        "subject": subject_name,
        "ids": ids,
        "cap": cap,
        "seed": seed,
        "flood_checks": flood,
        "legit_checks": legit,
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "checks_per_s": (flood + legit) / elapsed,
        "id_cost_ns": per_id_ns,
        "rss_before": before,
        "rss_at_cap": at_cap["rss"] if at_cap else None,
        "at_cap": at_cap,
        "rss_after": status["VmRSS"],
        "rss_peak": status["VmHWM"],
        "legit_evaluated": evaluated,
        "legit_lost": lost,
        "legit_refused_early": early,
        "counters": subject.counters(),
        "windows": windows,
    }


# --- the parent: method, children, verdicts -----------------------------------------------


def run_child(subject: str, ids: int, cap: int, seed: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", subject, "--ids", str(ids)]
    command += ["--cap", str(cap), "--seed", str(seed)]
    return run_json_child(command, subject, capture_stderr=False)


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def report(subject: str, runs: list[dict[str, Any]]) -> bool:
    def med(get: Callable[[dict[str, Any]], float]) -> float:
        return median(get(r) for r in runs)

    cap = runs[0]["cap"]
    before = med(lambda r: r["rss_before"])
    peak_growth = med(lambda r: r["rss_peak"] - r["rss_before"])
    per_record_cap = med(lambda r: r["at_cap"]["bytes_per_record"] if r["at_cap"] else 0.0)
    budget = cap * per_record_cap * BUDGET_FACTOR
    lost = max(r["legit_lost"] for r in runs)
    early = max(r["legit_refused_early"] for r in runs)
    evaluated = min(r["legit_evaluated"] for r in runs)
    reps = f" (median of {len(runs)})" if len(runs) > 1 else ""
    print(f"\n== {subject}{reps}")
    print(f"  checks: {runs[0]['flood_checks']:,} flood + {runs[0]['legit_checks']:,} legit")
    print(
        f"  checks/s: {med(lambda r: r['checks_per_s']):,.0f} "
        f"(wall {med(lambda r: r['seconds']):,.1f} s, cpu {med(lambda r: r['cpu_seconds']):,.1f} s;"
        f" making an id alone: {med(lambda r: r['id_cost_ns']):,.0f} ns)"
    )
    print(
        f"  RSS: before {mib(before)}, at cap {mib(med(lambda r: r['rss_at_cap'] or 0))}, "
        f"after {mib(med(lambda r: r['rss_after']))}, peak {mib(med(lambda r: r['rss_peak']))}"
    )
    print(
        f"  bytes per record: {per_record_cap:,.1f} at the cap, "
        f"{peak_growth / cap:,.1f} at the peak (peak growth {mib(peak_growth)} / {cap:,})"
    )
    for name, value in runs[-1]["counters"].items():
        print(f"  {name}: {value:,}")
    print("  per window (last run): records, RSS, checks/s")
    for w in runs[-1]["windows"]:
        print(
            f"    {w['window']:>3} {w['clients']:>10,} {mib(w['rss']):>12} {w['checks_per_s']:>10,.0f}"
        )
    memory_ok = per_record_cap > 0 and peak_growth <= budget
    legit_ok = evaluated > 0 and lost == 0 and early == 0
    print(
        f"  {'PASS' if memory_ok else 'FAIL'} memory: peak growth {mib(peak_growth)} <= budget "
        f"{mib(budget)} (cap {cap:,} x {per_record_cap:,.1f} B/record at the cap x {BUDGET_FACTOR})"
    )
    print(
        f"  {'PASS' if legit_ok else 'FAIL'} legit counts survived: {evaluated:,} legit clients "
        f"judged, {lost} got an 11th check in the window, {early} refused within their limit"
    )
    return memory_ok and legit_ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ids", type=int, default=10_000_000, help="flood ids (10,000,000)")
    parser.add_argument("--quick", action="store_true", help="1,000,000 flood ids")
    parser.add_argument("--cap", type=int, default=1_000_000, help="max_clients (1,000,000)")
    parser.add_argument("--reps", type=int, default=1, help="runs per subject (medians shown)")
    parser.add_argument("--subjects", default=",".join(SUBJECTS))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", help="write every run's figures here")
    parser.add_argument("--child", choices=SUBJECTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    ids = 1_000_000 if args.quick else args.ids
    if args.child:
        print(json.dumps(child(args.child, ids, args.cap, args.seed)))
        return 0
    print(doc_section(__doc__, "Method (the output header says it again):").strip())
    print(
        f"\nids {ids:,}, cap {args.cap:,}, reps {args.reps}, seed {args.seed}; "
        f"python {platform.python_version()}, {platform.machine()}\n",
        flush=True,
    )
    results: dict[str, list[dict[str, Any]]] = {}
    for subject in args.subjects.split(","):
        results[subject] = [
            run_child(subject, ids, args.cap, args.seed + rep) for rep in range(args.reps)
        ]
    if args.json:
        write_json(args.json, results, indent=1)
    ok = [report(subject, runs) for subject, runs in results.items()]
    print(f"\n{'PASS' if all(ok) else 'FAIL'} overall")
    return 0


if __name__ == "__main__":
    sys.exit(main())
