"""The core benchmark's header and tables: ns per check, ratios to limits, bytes per
client, and the one-line JSON summary that ends the output."""

from __future__ import annotations

import argparse
import os
import platform
import sysconfig
from typing import Any

from harness.machine import cpu_caches, cpu_model
from harness.report import Column, Table, command_line
from harness.stats import median

from core_bench.subjects import LIMIT, LIMITS_CLASSES, LIMITS_PAIR, label, sizes_for

#: A child's result, as it printed it (see ``child_time`` and ``child_streamed``).
Result = dict[str, Any]


def machine() -> dict[str, Any]:
    config = sysconfig.get_config_var("CONFIG_ARGS") or ""
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "pgo_lto": "--enable-optimizations" in config or "--with-lto" in config,
        "nproc": os.cpu_count(),
        "cpu": cpu_model() or "unknown",
        "cache": cpu_caches(),
        "platform": platform.platform(),
        "loadavg_start": round(os.getloadavg()[0], 2),
    }


def cell(values: list[float]) -> str:
    return f"{median(values):7.0f} {min(values):6.0f}-{max(values):<6.0f}"


def stretch(res: Result) -> float:
    """Median wall/CPU over every timed sample of a subject (1.0 on an idle machine)."""
    factors = [
        w / c
        for phase in ("hot", "insert", "hit")
        for c, w in zip(res[phase], res[phase + "_wall"], strict=True)
        if c
    ]
    return median(factors)


def print_header(args: argparse.Namespace, info: dict[str, Any]) -> None:
    moving_keys, moving_hot = sizes_for("limits:moving", args.keys, args.hot)
    print("meshlimit core benchmark: in-process checks")
    print(command_line("bench_core.py"))
    print(
        f"machine: {info['cpu']}, nproc={info['nproc']}, caches {info['cache'] or 'unknown'},\n"
        f"         {info['platform']}, load average at start {info['loadavg_start']}"
    )
    pgo = "PGO/LTO build" if info["pgo_lto"] else "built without PGO/LTO"
    print(f"python:  {info['implementation']} {info['python']} ({pgo})")
    print(
        "method:  each subject in a fresh subprocess, one after another; warm-up first;\n"
        f"         {args.reps} repetitions, median shown with min-max; ns per check = process\n"
        "         CPU time / checks (all threads; wall clock in the JSON, wall/cpu column\n"
        "         = how much other load on this shared machine stretched it); for-loop\n"
        f"         included; gc enabled. Hot key: {args.reps} fresh instances x {args.hot:,} checks.\n"
        f"         Distinct: {args.keys:,} ids 'client-0000000'..., one fresh instance, pass 1\n"
        f"         inserts, pass 2 hits, each pass timed as {args.reps} slices of "
        f"{args.keys // args.reps:,} checks\n"
        "         (insert slices run as the table grows, hit slices on the full table).\n"
        f"         Rule {LIMIT:,}/day, never refusing. meshlimit fixed clock = one injected\n"
        "         instant; limits reads the real clock, MemoryStorage's expiry thread runs.\n"
        f"         limits MovingWindow only on {moving_keys:,} keys and {moving_hot:,} hot checks"
        " (list prepend per hit)."
    )
    print()


TIMES = Table(
    [
        Column("ns per check (CPU)", "<44"),
        Column("hot key", ">20"),
        Column("distinct: insert", ">20"),
        Column("distinct: hit", ">20"),
        Column("wall/cpu", ">8"),
    ]
)


def print_times(times: dict[str, Result]) -> None:
    print(TIMES.heading())
    print(TIMES.line("", *["median  min-max"] * 3, "").rstrip())
    print("-" * len(TIMES.heading()))
    for spec, res in times.items():
        name = label(spec)
        if spec == "limits:moving":
            name = f"{name} ({res['keys'] // 1000}k keys)"
        note = "" if res["admitted"] else "  (!) a check was refused"
        cells = (cell(res["hot"]), cell(res["insert"]), cell(res["hit"]))
        print(TIMES.line(name, *cells, f"{stretch(res):.2f}") + note)
        if spec in ("base:floor", "engine:token_bucket", "limiter-fixed:token_bucket"):
            print()
    print()


def ratios(times: dict[str, Result]) -> dict[str, dict[str, float]]:
    out = {}
    for name, algo in LIMITS_PAIR.items():
        theirs = times[f"limits:{name}"]
        for kind in ("limiter-real", "engine"):
            ours = times[f"{kind}:{algo}"]
            out[f"limits:{name}/{kind}:{algo}"] = {
                phase: median(theirs[phase]) / median(ours[phase])
                for phase in ("hot", "insert", "hit")
            }
    return out


RATIOS = Table(
    [
        Column("limits strategy", "<22"),
        Column("meshlimit", "<36"),
        Column("hot", ">5"),
        Column("insert", ">6"),
        Column("hit", ">6"),
    ]
)


def print_ratios(table: dict[str, dict[str, float]]) -> None:
    print("ratio of medians, limits / meshlimit (> 1: meshlimit faster)")
    RATIOS.print_heading()
    for key, r in table.items():
        theirs, ours = key.split("/")
        kind, _, algo = ours.partition(":")
        api = "Limiter, real clock" if kind == "limiter-real" else "Engine"
        strategy = LIMITS_CLASSES[theirs.split(":")[1]].removesuffix("RateLimiter")
        RATIOS.print(
            strategy, f"{api} {algo}", f"{r['hot']:.1f}", f"{r['insert']:.1f}", f"{r['hit']:.1f}"
        )
    print("(token_bucket has no counterpart in limits. MovingWindow pairs with sliding_window, the")
    print(" nearest meshlimit semantics, and ran on fewer keys than meshlimit: see above.)")
    print()


MEMORY = Table(
    [
        Column("bytes per client (RSS growth)", "<36"),
        Column("clients", ">9"),
        Column("ids alone", ">9"),
        Column("state only", ">10"),
        Column("state+ids", ">9"),
        Column("streamed", ">8"),
        Column("getsizeof", ">9"),
    ]
)


def print_memory(times: dict[str, Result], streamed: dict[str, Result]) -> None:
    MEMORY.print_heading()
    for spec, s in streamed.items():
        m = times[spec]["memory"]
        name = "baseline: dict[str, int]" if spec == "base:dict" else label(spec)
        MEMORY.print(
            name,
            f"{s['keys']:,}",
            f"{m['ids']:.0f}",
            f"{m['state']:.0f}",
            f"{m['state_ids']:.0f}",
            f"{s['streamed']:.0f}",
            f"{m['getsizeof']:.0f}" if "getsizeof" in m else "",
        )
    print(
        "ids alone: the caller's id strings and the lists holding them. state only: growth while\n"
        "checking ids that existed before the reading. state+ids: both (key included). streamed:\n"
        "a fresh process checks ids made one at a time and dropped after their check, as a service\n"
        "does; the subject keeps what it keeps of each id (meshlimit a 64-bit hash, limits its own\n"
        "key strings, a dict the strings themselves): the fair comparison. getsizeof: meshlimit's\n"
        "buckets by sys.getsizeof, a cross-check without allocator overhead."
    )
    print()


def summary(
    args: argparse.Namespace,
    info: dict[str, Any],
    times: dict[str, Result],
    ratio_table: dict[str, dict[str, float]],
    streamed: dict[str, Result],
    elapsed: float,
) -> dict[str, Any]:
    """Everything the tables show, as one JSON object (the last line of the output)."""
    phases = ("hot", "insert", "hit")
    memory = {
        spec: {
            **{f: round(v, 1) for f, v in times[spec]["memory"].items()},
            "streamed": round(s["streamed"], 1),
        }
        for spec, s in streamed.items()
    }
    return {
        "bench": "core",
        "keys": args.keys,
        "reps": args.reps,
        "hot_checks": args.hot,
        "machine": info,
        "ns_cpu_median": {s: {p: round(median(r[p])) for p in phases} for s, r in times.items()},
        "ns_wall_median": {
            s: {p: round(median(r[p + "_wall"])) for p in phases} for s, r in times.items()
        },
        "ns_cpu_insert_mean": {s: round(r["insert_mean"]) for s, r in times.items()},
        "ratio_median": {k: {p: round(v, 2) for p, v in r.items()} for k, r in ratio_table.items()},
        "bytes_per_client": memory,
        "all_admitted": all(r["admitted"] for r in times.values()),
        "seconds": round(elapsed),
    }
