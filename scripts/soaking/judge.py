"""Judging the soak and reporting it: every admitted check counted in its client's window,
each window held to the bound the design documents, and the run's figures as plain data
(also written as JSON) and as text.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from collections import Counter, defaultdict
from typing import Any

from harness.processes import HOST
from harness.stats import latency_summary

from meshlimit.cluster.node.config import NodeConfig
from meshlimit.core.rules import Rule
from soaking.state import Answer, Fault, Shared

FRACTION = NodeConfig.preset("local", "x", (HOST, 1)).degraded_fraction


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
    return latency_summary(values, unit=1e6, names=("p50", "p99", "p999", "max"))


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
