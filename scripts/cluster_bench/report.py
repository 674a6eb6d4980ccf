"""The cluster benchmark's tables: throughput, latency, ratios and the issue's targets.

A row is keyed (``fwd``, ``own-1``, ``redis-t``, ...) so that the ratios and targets can
name the rows they compare; :class:`Report` holds every run of every row and the
open-loop points, and prints them once all pairs have run.
"""

from __future__ import annotations

from typing import Any

from harness.report import Column, Table, fmt_pct, fmt_rate, spread
from harness.stats import median

from cluster_bench.constants import (
    ISSUE_REDIS_HITS,
    K_MAX,
    MULTI_THREADED,
    REDIS_THREADS,
    TARGET_FWD,
    TARGET_FWD_AIM,
    TARGET_LOCAL_RATIO,
    TARGET_P99_MS,
    TARGET_VS_REDIS,
)


def rate_of(r: dict[str, Any]) -> float:
    return r["checks"] / r["elapsed_s"]


def ceiling_of(r: dict[str, Any]) -> float:
    """Checks per CPU-second of the busier process: the rate if it had a core to itself."""
    busiest = max(r["cpu_client"], r["cpu_server"])
    return r["checks"] / busiest if busiest > 0 else float("nan")


def fmt_us(x: float) -> str:
    if x != x:
        return "-"
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


THROUGHPUT = Table(
    [
        Column("subject", "<50"),
        Column("checks/s median (min-max)", ">29"),
        Column("CPU us/check", ">13"),
        Column("CPU% c/s", ">9"),
        Column("runq% c/s", ">9"),
        Column("ceiling/s", ">9"),
        Column("batch", ">5"),
        Column("p50 us", ">7"),
        Column("p99 us", ">7"),
    ]
)
LATENCY = Table(
    [
        Column("subject", "<26"),
        Column("offered/s", ">9"),
        Column("achieved/s", ">10"),
        Column("p50 us", ">8"),
        Column("p90 us", ">8"),
        Column("p99 us", ">8"),
        Column("p99.9 us", ">9"),
        Column("max us", ">8"),
        Column("svc p99", ">8"),
        Column("batch", ">5"),
        Column("CPU% c/s", ">9"),
        Column("runq% c/s", ">9"),
    ]
)


class Report:
    """Every closed-loop row (its runs) and open-loop point of the run, by key."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, list[dict[str, Any]]]] = []
        self.latency: list[tuple[str, str, dict[str, Any]]] = []

    def add(self, key: str, label: str, runs: list[dict[str, Any]]) -> None:
        self.rows.append((key, label, runs))

    def runs(self, key: str) -> list[dict[str, Any]]:
        return next((runs for k, _, runs in self.rows if k == key), [])

    def rate(self, key: str) -> float:
        return median(rate_of(r) for r in self.runs(key))

    def ceiling(self, key: str) -> float:
        if key in MULTI_THREADED:  # more than one core's worth of client CPU: no ceiling
            return float("nan")
        return median(ceiling_of(r) for r in self.runs(key))

    def cpu_us(self, key: str, role: str = "client") -> float:
        """Median CPU microseconds per check of one process."""
        return median(r[f"cpu_{role}"] / r["checks"] * 1e6 for r in self.runs(key))

    def print_throughput(self) -> None:
        print("\nThroughput (closed loop); each row is a median (min-max) over the repetitions.")
        print("  CPU us/check: CPU time of the client / server process per check (server = the")
        print("  owner node, or redis-server); CPU% and runq%: share of the wall time each process")
        print("  spent on a CPU, and runnable but waiting for one (other work on the machine);")
        print(
            "  ceiling: checks per CPU-second of the busier process, the rate if it had a core to"
        )
        print("  itself; batch: forwarded checks per CheckBatch; p50/p99: 1-task runs only.")
        THROUGHPUT.print_heading()
        for key, label, runs in self.rows:
            cpu_c, cpu_s = self.cpu_us(key, "client"), self.cpu_us(key, "server")
            share = "/".join(
                fmt_pct(median(r[f"cpu_{x}"] / r["wall"] for r in runs))
                for x in ("client", "server")
            )
            runq = "/".join(
                fmt_pct(median(r[f"runq_{x}"] / r["wall"] for r in runs))
                for x in ("client", "server")
            )
            batched = sum(r.get("batched", 0) for r in runs)
            batches = sum(r.get("batches", 0) for r in runs)
            batch = f"{batched / batches:.1f}" if batches else "-"
            p50 = fmt_us(median(r["p50_us"] for r in runs)) if "p50_us" in runs[0] else "-"
            p99 = fmt_us(median(r["p99_us"] for r in runs)) if "p99_us" in runs[0] else "-"
            THROUGHPUT.print(
                label,
                spread([rate_of(r) for r in runs]),
                f"{cpu_c:.1f}+{cpu_s:.1f}",
                share,
                runq,
                fmt_rate(self.ceiling(key)),
                batch,
                p50,
                p99,
            )
            flags = _flags(runs)
            if flags:
                print(f"{'':<6}! {'; '.join(flags)}")

    def print_latency(self) -> None:
        print("\nLatency (open loop): latency from each check's scheduled instant; svc p99 from")
        print("  the instant its task started (without the generator's lag); one run per point.")
        LATENCY.print_heading()
        for _, label, r in self.latency:
            LATENCY.print(
                label,
                f"{r['offered']:,.0f}",
                f"{r['achieved']:,.0f}",
                fmt_us(r["p50_us"]),
                fmt_us(r["p90_us"]),
                fmt_us(r["p99_us"]),
                fmt_us(r["p999_us"]),
                fmt_us(r["max_us"]),
                fmt_us(r["svc_p99_us"]),
                f"{r['batched'] / r['batches']:.1f}" if r.get("batches") else "-",
                f"{fmt_pct(r['cpu_client'] / r['wall'])}/{fmt_pct(r['cpu_server'] / r['wall'])}",
                f"{fmt_pct(r['runq_client'] / r['wall'])}/{fmt_pct(r['runq_server'] / r['wall'])}",
            )
            lost = r["scheduled"] - r["answered"]
            if lost or r.get("timeouts") or r.get("degraded"):
                print(
                    f"{'':<6}! unanswered {lost:,}, forward timeouts {r.get('timeouts', 0):,}, "
                    f"degraded decisions {r.get('degraded', 0):,}"
                )


def _flags(runs: list[dict[str, Any]]) -> list[str]:
    """What went wrong in a row's runs: timeouts, degraded decisions, drops, a dead member."""
    flags = []
    timeouts = sum(r.get("timeouts", 0) for r in runs)
    degraded = sum(r.get("degraded", 0) for r in runs)
    if timeouts or degraded:
        flags.append(f"forward timeouts {timeouts:,}, degraded decisions {degraded:,}")
    drops: dict[str, int] = {}
    for r in runs:
        for k, v in r.get("dropped", {}).items():
            drops[k] = drops.get(k, 0) + v
    if drops:
        flags.append(f"dropped {drops}")
    if not all(r.get("members_ok", True) for r in runs):
        flags.append("a member was not alive after a run")
    return flags


RATIOS = Table([Column("", "<78"), Column("wall", ">7"), Column("ceiling", ">8")], indent="  ")
SLOWDOWN = Table(
    [
        Column("slowdown against the in-process Limiter.check (same harness, same process)", "<78"),
        Column("wall", ">7"),
        Column("CPU", ">8"),
    ],
    indent="  ",
)
TARGETS = Table(
    [Column("", "<66"), Column("", ">14"), Column("", "<22", gap="  "), Column("", "")],
    indent="  ",
)


def summarize(rep: Report, peer_ok: bool, default_label: str) -> None:
    """The ratios of medians, the slowdown against Limiter.check, and the issue's targets."""
    rate, ceil, cpu = rep.rate, rep.ceiling, rep.cpu_us
    print("\nRatios of medians (wall: checks/s as measured; ceiling: per CPU-second of the busier")
    print("process; CPU: CPU time per check of the process making the checks):")
    lines: list[tuple[str, float, float | None]] = []
    if peer_ok:
        lines += [
            (
                f"forwarded, {K_MAX} tasks / limits+Redis, 1 connection",
                rate("fwd") / rate("redis-1"),
                ceil("fwd") / ceil("redis-1"),
            ),
            (
                f"forwarded, {K_MAX} tasks / limits+Redis, {REDIS_THREADS} threads",
                rate("fwd") / rate("redis-t"),
                None,
            ),
            (
                "forwarded, 1 task / limits+Redis, 1 connection (one request in flight each)",
                rate("fwd-1") / rate("redis-1"),
                None,
            ),
            (
                f"limits+Redis, 1 connection / the issue's {ISSUE_REDIS_HITS:,} hits/s",
                rate("redis-1") / ISSUE_REDIS_HITS,
                None,
            ),
        ]
    lines.append(
        (
            "forwarded batch 0 / batch default (256 tasks)",
            rate("fwd-w0") / rate("fwd"),
            ceil("fwd-w0") / ceil("fwd"),
        )
    )
    if rep.runs("fwd-w1000000"):
        lines.append(
            (
                "forwarded batch 1 ms / batch default (256 tasks)",
                rate("fwd-w1000000") / rate("fwd"),
                ceil("fwd-w1000000") / ceil("fwd"),
            )
        )
    lines.append(
        ("forwarded, 36-byte ids / 13-byte ids (256 tasks)", rate("fwd-uuid") / rate("fwd"), None)
    )
    RATIOS.print_heading(rule=False)
    for text, wall, ceiling in lines:
        RATIOS.print(text, f"{wall:6.2f}x", "" if ceiling is None else f"{ceiling:7.2f}x")
    print()
    SLOWDOWN.print_heading(rule=False)
    local_lines = [
        (f"owner-local, {K_MAX} tasks vs Limiter awaited, {K_MAX} tasks", "own", "lim"),
        ("owner-local, 1 task vs Limiter awaited, 1 task", "own-1", "lim-1"),
        (f"owner-local, {K_MAX} tasks vs Limiter, plain for loop", "own", "lim-sync"),
        (
            f"local mode, {K_MAX} tasks vs Limiter awaited, {K_MAX} tasks (local pair)",
            "loc",
            "lim-L",
        ),
        ("local mode, 1 task vs Limiter awaited, 1 task (local pair)", "loc-1", "lim-L-1"),
        (f"local mode, {K_MAX} tasks vs Limiter, plain for loop", "loc", "lim-sync"),
    ]
    for text, key, ref in local_lines:
        SLOWDOWN.print(text, f"{rate(ref) / rate(key):6.2f}x", f"{cpu(key) / cpu(ref):7.2f}x")
    print_targets(rep, peer_ok, default_label)


def print_targets(rep: Report, peer_ok: bool, default_label: str) -> None:
    """Each target from the issue, this run's figure, and whether it was met."""
    rate, ceil, cpu = rep.rate, rep.ceiling, rep.cpu_us
    print("\nTargets from the issue (judged on this run's wall-clock medians; the ceiling says")
    print("what the same CPU cost would give with a free core per process):")
    half = [r for key, _, r in rep.latency if key == "fwd" and r["offered"] == TARGET_FWD / 2]
    p99_half = half[0]["p99_us"] / 1000 if half else float("nan")
    rows: list[tuple[str, str, str, bool]] = [
        (
            f"forwarded >= {TARGET_FWD:,}/s with batching (aim {TARGET_FWD_AIM:,})",
            f"{rate('fwd'):,.0f}/s",
            f"ceiling {ceil('fwd'):,.0f}/s",
            rate("fwd") >= TARGET_FWD,
        ),
        (
            f"p99 < {TARGET_P99_MS:g} ms at {TARGET_FWD // 2:,}/s offered (half the target)",
            f"{p99_half:,.2f} ms",
            f"{default_label}",
            p99_half < TARGET_P99_MS,
        ),
    ]
    if peer_ok:
        ratio = rate("fwd") / rate("redis-1")
        rows.append(
            (
                f">= {TARGET_VS_REDIS:g}x limits+Redis on one connection, same run",
                f"{ratio:.2f}x",
                f"ceiling {ceil('fwd') / ceil('redis-1'):.2f}x",
                ratio >= TARGET_VS_REDIS,
            )
        )
    for key, ref, text in (("own", "lim", "owner-local"), ("loc", "lim-L", "local mode")):
        wall, by_cpu = rate(ref) / rate(key), cpu(key) / cpu(ref)
        rows.append(
            (
                f"{text} within {TARGET_LOCAL_RATIO:g}x of Limiter.check (awaited, {K_MAX} tasks)",
                f"{wall:.2f}x wall",
                f"{by_cpu:.2f}x CPU",
                wall <= TARGET_LOCAL_RATIO and by_cpu <= TARGET_LOCAL_RATIO,
            )
        )
    for text, value, note, ok in rows:
        TARGETS.print(text, value, note, "met" if ok else "NOT met")


def print_profile(path: str, title: str, checks: int, top: int = 16) -> None:
    """The top functions by own time of a cProfile dump, and Python calls per check."""
    import io
    import pstats

    out = io.StringIO()
    stats = pstats.Stats(path, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    text = out.getvalue()
    start = text.find("ncalls")
    print(
        f"\n{title}: cProfile (CPU-time timer) of the profiled forwarded run, "
        f"{vars(stats)['total_calls'] / max(1, checks):,.0f} Python calls per check; "
        f"top {top} by own time:"
    )
    for line in text[start:].rstrip().splitlines():
        print(
            "  "
            + line.replace("/work/main/", "").replace(".venv/lib/python3.11/site-packages/", "")[
                :150
            ]
        )
