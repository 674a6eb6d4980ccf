"""What the three-daemon benchmark prints: its header, two tables, the ratios against
redis-server, and the issue's goals next to what was measured."""

from __future__ import annotations

import math
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness.machine import cpu_model, loadavg_text, package_version, tool_version
from harness.report import Column, Table, command_line, fmt_rate, ratio

#: The goals of the issue this benchmark checks.
GOAL_SATURATION = 100_000
GOAL_P99_MS = 2.0
GOAL_RECOVERY_S = 5.0

LOAD_TABLE = Table(
    [
        Column("subject", "<12"),
        Column("phase", "<10"),
        Column("load (per node)", "<18"),
        Column("checks/s", ">9"),
        Column("p50 ms", ">7"),
        Column("p99 ms", ">7"),
        Column("settle s", ">8"),
        Column("node cores", ">10"),
        Column("node runq", ">9"),
        Column("us/check", ">8"),
    ],
    indent="  ",
)
COUNT_TABLE = Table(
    [
        Column("subject", "<12"),
        Column("phase", "<10"),
        Column("decisions", ">10"),
        Column("fwd", ">4"),
        Column("owner", ">5"),
        Column("degraded", ">15"),
        Column("overloaded", ">15"),
        Column("fwd t/o", ">8"),
        Column("late 2x", ">7"),
        Column("transit.", ">8"),
        Column("susp.", ">5"),
    ],
    indent="  ",
)


def code_version() -> str:
    """The git commit the daemons run, and how many tracked files differ from it."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + (f" + changes in {len(dirty)} tracked files" if dirty else " (clean)")


def machine() -> dict[str, str]:
    return {
        "code": code_version(),
        "cpu": cpu_model() or platform.processor() or "unknown",
        "nproc": str(os.cpu_count()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "uvloop": package_version("uvloop"),
        "redis-benchmark": tool_version(["redis-benchmark", "--version"], r"redis-benchmark (\S+)"),
        "redis-server": tool_version(["redis-server", "--version"], r"v=(\S+)"),
        "loadavg": loadavg_text(),
    }


def print_header(info: dict[str, str], method: str) -> None:
    print("meshlimit cluster benchmark: three `meshlimit node` daemons under redis-benchmark,")
    print("beside redis-server in the same run")
    print(command_line("bench_cluster.py"))
    print(
        f"machine: {info['cpu']}, nproc={info['nproc']}, load average at start {info['loadavg']}\n"
        f"         {info['platform']}\n"
        f"         Python {info['python']}, uvloop {info['uvloop']}, redis-benchmark "
        f"{info['redis-benchmark']}, redis-server {info['redis-server']}\n"
        f"code:    git {info['code']}"
    )
    print("method:" + method.rstrip())
    sys.stdout.flush()


def ms(x: float) -> str:
    if x != x:
        return "-"
    return f"{x:.3f}" if x < 10 else f"{x:,.1f}"


def _count(n: int, share: float) -> str:
    return f"{n:,} ({share:.1%})" if share == share else f"{n:,}"


def _load_row(subject: str, name: str, phase: dict[str, Any]) -> None:
    counts = phase.get("counts", {})
    LOAD_TABLE.print(
        subject,
        name,
        phase["load"],
        fmt_rate(phase.get("rate", math.nan)),
        ms(phase.get("p50_ms", math.nan)),
        ms(phase.get("p99_ms", math.nan)),
        f"{phase['settled_s']:.1f}" if phase.get("settled_s", math.nan) >= 0 else "-",
        "-" if not counts else f"{counts['node_cpu_cores']:.2f}",
        "-" if not counts else f"{counts['node_runq_cores']:.2f}",
        _us_per_check(counts),
    )


def _us_per_check(counts: dict[str, Any]) -> str:
    """CPU of the three daemons over the phase per client-facing decision, in us."""
    if not counts or not counts.get("decisions"):
        return "-"
    return f"{counts['node_cpu_cores'] * counts['seconds'] / counts['decisions'] * 1e6:.1f}"


def _count_row(subject: str, name: str, counts: dict[str, Any]) -> None:
    paths, shares = counts["paths"], counts["shares"]
    COUNT_TABLE.print(
        subject,
        name,
        f"{counts['decisions']:,}",
        f"{shares['forwarded']:.0%}" if shares["forwarded"] == shares["forwarded"] else "-",
        f"{shares['owner']:.0%}" if shares["owner"] == shares["owner"] else "-",
        _count(paths["degraded"], shares["degraded"]),
        _count(paths["overloaded"], shares["overloaded"]),
        f"{counts['forward_timeouts']:,}",
        f"{counts['late_replies_counted_twice']:,}",
        counts["transitions"],
        counts["swim"]["suspicions"],
    )


def print_tables(result: dict[str, Any]) -> None:
    presets: dict[str, dict[str, Any]] = result["presets"]
    peer = result.get("redis_server")
    print("\nLoad: checks/s of the three redis-benchmark processes together; p50/p99 of all")
    print("their requests; settle s: seconds until the cluster was normal before the phase")
    print("(every member alive, a probe's p50 within 2x the moderate p50; - never, in 30 s);")
    print("node cores: CPU of the three daemons over the phase (cores busy); node runq: cores'")
    print("worth of time they were runnable but waiting for a CPU (other work on the machine);")
    print("us/check: the daemons' CPU over the phase per decision (microseconds, all three)")
    LOAD_TABLE.print_heading()
    for preset, phases in presets.items():
        for name, phase in phases.items():
            _load_row(preset, name, phase)
    if peer:
        for name, phase in peer.items():
            _load_row("redis-server", name, phase)
    print("\nCounts, from every node's /metrics (deltas over the phase): decisions by path (fwd:")
    print("answered by another node's owner), forward timeouts, late replies counted twice;")
    print("transit.: 'member X a -> b' lines in the nodes' logs; susp.: SWIM suspicions")
    COUNT_TABLE.print_heading()
    for preset, phases in presets.items():
        for name, phase in phases.items():
            _count_row(preset, name, phase["counts"])
    for preset, phases in presets.items():
        if "recovery" not in phases:
            continue
        rec = phases["recovery"]
        when = (
            f"{rec['recovered_s']:.1f} s ({'held' if rec['held'] else 'NOT held'} for the next "
            f"{rec['hold_s']:g} s)"
            if rec["recovered_s"] == rec["recovered_s"]
            else f"not recovered in {rec['limit_s']:.0f} s"
        )
        print(
            f"recovery ({preset}): {when} after the overload stopped (p50 <= "
            f"{ms(rec['p50_bound_ms'])} ms and every member alive; {len(rec['probes'])} probes)"
        )
    for preset, phases in presets.items():
        if "half" not in phases:
            continue
        half = phases["half"]
        print(
            f"half load ({preset}): {half['load']}, {half['of_saturation']:.0%} of saturation "
            f"(target {fmt_rate(half['target_rate'])}/s)"
        )


def ratios(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """meshlimit / redis-server, per preset: saturation rate, moderate p50 and p99."""
    peer = result.get("redis_server")
    if not peer:
        return {}
    out = {}
    for preset, phases in result["presets"].items():
        if "saturation" not in phases:
            continue
        out[preset] = {
            "saturation": ratio(phases["saturation"]["rate"], peer["saturation"]["rate"]),
            "moderate_p50": ratio(phases["moderate"]["p50_ms"], peer["moderate"]["p50_ms"]),
            "moderate_p99": ratio(phases["moderate"]["p99_ms"], peer["moderate"]["p99_ms"]),
        }
    return out


def print_ratios(result: dict[str, Any]) -> None:
    if not result.get("ratios"):
        why = "no redis-server on the PATH" if "redis_server" not in result else "no saturation"
        if not shutil.which("redis-server") or "redis_server" in result:
            print(f"\nredis-server: not compared ({why})")
        else:
            print("\nredis-server: not run (it runs with the saturation phase: --phases)")
        return
    print("\nmeshlimit / redis-server INCR, same redis-benchmark settings (3 processes, one")
    print("redis-server against three daemons):")
    for preset, r in result["ratios"].items():
        print(
            f"  {preset}: saturation {r['saturation']:.3f}x, moderate p50 "
            f"{r['moderate_p50']:.1f}x, p99 {r['moderate_p99']:.1f}x"
        )


def goals(phases: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(goal, measured, met) for one preset."""
    every = [p["counts"] for p in phases.values()]
    degraded = sum(c["paths"]["degraded"] for c in every)
    transitions = sum(c["transitions"] for c in every)
    # A phase not run (--phases) reads as NaN: "-", not met.
    rec = phases.get("recovery", {}).get("recovered_s", math.nan)
    held = phases.get("recovery", {}).get("held", False)
    half_p99 = phases.get("half", {}).get("p99_ms", math.nan)
    mod_p99 = phases["moderate"]["p99_ms"]
    sat = phases.get("saturation", {}).get("rate", math.nan)
    return [
        (f">= {GOAL_SATURATION:,} checks/s at saturation", fmt_rate(sat), sat >= GOAL_SATURATION),
        (f"p99 <= {GOAL_P99_MS:g} ms at half load", f"{ms(half_p99)} ms", half_p99 <= GOAL_P99_MS),
        (f"p99 <= {GOAL_P99_MS:g} ms, moderate load", f"{ms(mod_p99)} ms", mod_p99 <= GOAL_P99_MS),
        ("zero degraded decisions", f"{degraded:,}", degraded == 0),
        ("zero membership transitions", f"{transitions:,}", transitions == 0),
        (
            f"recovery <= {GOAL_RECOVERY_S:g} s after overload",
            "-"
            if "recovery" not in phases
            else "never"
            if rec != rec
            else f"{rec:.1f} s{'' if held else ', not held'}",
            rec <= GOAL_RECOVERY_S and held,
        ),
    ]


def print_goals(result: dict[str, Any]) -> None:
    presets = result["presets"]
    names = list(presets)
    table = Table(
        [Column("goal (issue 14), every phase summed", "<40")]
        + [Column(name, "<20") for name in names],
        indent="  ",
    )
    print()
    table.print_heading()
    rows = {name: goals(phases) for name, phases in presets.items()}
    for i, (goal, _, _) in enumerate(next(iter(rows.values()), [])):
        cells = [f"{rows[n][i][1]} {'met' if rows[n][i][2] else 'NOT met'}" for n in names]
        table.print(goal, *cells)
    print(f"load average at end: {loadavg_text()}")
