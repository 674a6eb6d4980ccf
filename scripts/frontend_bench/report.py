"""The front-end benchmark's tables: each setting's runs, the ratios between settings run
back to back, and the issue's targets."""

from __future__ import annotations

from harness.report import Column, Table, fmt_pct, fmt_rate, spread
from harness.stats import median

from frontend_bench.bench import Setting
from frontend_bench.constants import (
    HTTP_CONNS,
    OTHER_LIMIT,
    PIPELINES,
    QUIET_OTHER,
    RESP_CONNS,
    RULE_OPEN,
    TARGET_HTTP,
    TARGET_HTTP_VS_FLOOR,
    TARGET_RESP,
    TARGET_RESP_VS_REDIS,
)
from frontend_bench.runs import Run


def med(xs: list[float]) -> float:
    """The median of the figures a run could measure (NaNs dropped)."""
    return median(xs, skip_nan=True)


def cpu_per_request_us(r: Run) -> float:
    """The server's CPU time per request (all its threads, user and kernel)."""
    return r.srv_cpu * r.wall_s / r.requests * 1e6 if r.requests else float("nan")


def quiet_text(runs: list[Run]) -> str:
    """The median rate of the runs during which other work took at most ``QUIET_OTHER`` cores."""
    quiet = [r.rate for r in runs if r.other <= QUIET_OTHER]
    return f"{fmt_rate(med(quiet))} ({len(quiet)})" if quiet else "- (0)"


SETTINGS = Table(
    [
        Column("setting", "<44"),
        Column("rule", "<17"),
        Column("rate/s median (min-max)", ">27"),
        Column("p50 ms", ">7"),
        Column("p99 ms", ">7"),
        Column("srv CPU", ">7"),
        Column("runq", ">5"),
        Column("gen CPU", ">7"),
        Column("other", ">5"),
        Column("refused", ">7"),
        Column("counted", ">7"),
        Column("errors", ">6"),
        Column("us/req", ">6"),
        Column("ceiling/s", ">9"),
        Column("quiet runs: rate (n)", ">21"),
    ],
    indent="  ",
)


def print_table(title: str, rows: list[tuple[str, str, list[Run]]]) -> None:
    print(f"\n{title}")
    SETTINGS.print_heading()
    for label, rule, runs in rows:
        if not runs:
            continue
        counted = med([r.counted for r in runs])
        cpu_us = med([cpu_per_request_us(r) for r in runs])
        SETTINGS.print(
            label,
            rule,
            spread([r.rate for r in runs], bare_single=True),
            f"{med([r.p50_ms for r in runs]):.2f}",
            f"{med([r.p99_ms for r in runs]):.2f}",
            fmt_pct(med([r.srv_cpu for r in runs])),
            fmt_pct(med([r.srv_runq for r in runs])),
            fmt_pct(med([r.gen_cpu for r in runs])),
            f"{med([r.other for r in runs]):.2f}",
            fmt_pct(med([r.refused for r in runs])),
            "-" if counted != counted else f"{counted:.2f}",
            sum(r.errors for r in runs),
            f"{cpu_us:.1f}",
            fmt_rate(1e6 / cpu_us),
            quiet_text(runs),
        )
        redone = sum(r.tries - 1 for r in runs)
        noisy = sum(r.other > OTHER_LIMIT for r in runs)
        if redone or noisy:
            print(
                f"  {'':<44} ! {redone} tries redone for other work; {noisy} of {len(runs)} "
                f"runs kept had other > {OTHER_LIMIT} cores"
            )
        for note in sorted({n for r in runs for n in r.notes})[:3]:
            print(f"  {'':<44} ! {note}")


RATIOS = Table(
    [
        Column("", "<52"),
        Column("medians", ">8"),
        Column("paired median (min-max)", ">24"),
        Column("ceilings", ">9"),
    ],
    indent="  ",
)


def report(
    sets: list[Setting],
    refusal: dict[str, list[Run]],
    rules: dict[str, str],
    paired_open: dict[str, list[Run]],
) -> None:
    by = {s.key: s for s in sets}
    print(
        "\nEach row: median (min-max) over the repetitions of the rate; other columns are medians."
        "\n  srv/gen CPU: the server's / load generator's CPU time over wall time (100% = one"
        "\n  core saturated); runq: the server runnable but waiting for its CPU; other: cores busy"
        "\n  with anything else (other work on the machine, kernel work charged to neither);"
        "\n  counted: checks the node counted / requests sent; us/req: the server's CPU time per"
        "\n  request; ceiling/s: 1 / us/req, the rate it would reach with its core saturated and"
        "\n  to itself: an estimate, not a measurement (the generator's pace, batching and"
        "\n  contention change the cost per request); quiet runs: median rate of the runs with"
        f"\n  other <= {QUIET_OTHER} cores, and how many there were."
    )
    http = [s for s in sets if s.kind == "http"]
    rows = [(s.label, RULE_OPEN if s.server == "node" else "-", s.runs) for s in http]
    rows += [
        (s.label + " (~50% refused)", rules[s.key], refusal.get(s.key, []))
        for s in http
        if s.key in rules
    ]
    if http:
        print_table("HTTP front-end (wrk, keep-alive)", rows)
    resp = [s for s in sets if s.kind == "resp"]
    rows = [(s.label, RULE_OPEN if s.server == "node" else "-", s.runs) for s in resp]
    rows += [
        (s.label + " (~50% refused)", rules[s.key], refusal.get(s.key, []))
        for s in resp
        if s.key in rules
    ]
    if resp:
        print_table(f"RESP front-end and redis-server (redis-benchmark -c {RESP_CONNS})", rows)
    print_ratios(by, refusal, paired_open)
    print_targets(by)


def print_ratios(
    by: dict[str, Setting], refusal: dict[str, list[Run]], paired_open: dict[str, list[Run]]
) -> None:
    """Ratios between settings run back to back: of the medians, per repetition, of CPU."""

    def runs_of(key: str) -> list[Run]:
        return by[key].runs if key in by else []

    print(
        "\nRatios (same run, same pinning, same generator settings): of the median rates; the"
        "\n  median (min-max) of the per-repetition ratios of runs done back to back; and of the"
        "\n  ceilings (CPU cost per request of the second / of the first)."
    )
    lines: list[tuple[str, list[Run], list[Run]]] = []
    for p in PIPELINES:
        lines.append(
            (
                f"ML.CHECK -P{p} / INCR key:__rand_int__ -P{p}",
                runs_of(f"ml-P{p}"),
                runs_of(f"incrr-P{p}"),
            )
        )
        lines.append(
            (f"ML.CHECK -P{p} / INCR -t incr -P{p}", runs_of(f"ml-P{p}"), runs_of(f"incr-P{p}"))
        )
        lines.append(
            (
                f"CL.THROTTLE -P{p} / INCR key:__rand_int__ -P{p}",
                runs_of(f"thr-P{p}"),
                runs_of(f"incrr-P{p}"),
            )
        )
        lines.append(
            (
                f"ML.CHECK -P{p} / floor uvloop+hiredis -P{p}",
                runs_of(f"ml-P{p}"),
                runs_of(f"floor-P{p}"),
            )
        )
    for c in HTTP_CONNS:
        lines.append(
            (f"HTTP -c{c} / floor aiohttp -c{c}", runs_of(f"http-c{c}"), runs_of(f"floorh-c{c}"))
        )
    lines.append(("ML.CHECK -P16 / ML.CHECK -P1 (pipelining)", runs_of("ml-P16"), runs_of("ml-P1")))
    lines.append(
        (
            "ML.CHECK -P1 / HTTP -c64 (one request per round trip)",
            runs_of("ml-P1"),
            runs_of("http-c64"),
        )
    )
    for key in refusal:
        if key in paired_open:  # absent from runs saved before the pairing
            lines.append((f"{key}: ~50% refused / nothing refused", refusal[key], paired_open[key]))
    RATIOS.print_heading(rule=False)
    for text, first, second in lines:
        if not first or not second:
            continue
        medians = med([r.rate for r in first]) / med([r.rate for r in second])
        paired = [x.rate / y.rate for x, y in zip(first, second, strict=False)]
        ceilings = med([cpu_per_request_us(r) for r in second]) / med(
            [cpu_per_request_us(r) for r in first]
        )
        spread_text = f"{med(paired):.3f} ({min(paired):.3f}-{max(paired):.3f})"
        RATIOS.print(text, f"{medians:.3f}", spread_text, f"{ceilings:.3f}")


def print_targets(by: dict[str, Setting]) -> None:
    """The issue's targets against this run's medians."""

    def rate(key: str) -> float:
        return med([r.rate for r in by[key].runs]) if key in by else float("nan")

    print("\nTargets from the issue (this run's medians):")
    ml16, incr16, http_best = (
        rate("ml-P16"),
        rate("incrr-P16"),
        max(rate("http-c16"), rate("http-c64")),
    )

    def verdict(ok: bool) -> str:
        return "MET" if ok else "NOT MET"

    if ml16 == ml16:
        print(
            f"  RESP >= {TARGET_RESP:,} ML.CHECK/s pipelined on one core: {fmt_rate(ml16)}/s "
            f"-> {verdict(ml16 >= TARGET_RESP)} ({ml16 / TARGET_RESP:.0%} of the target)"
        )
    if ml16 == ml16 and incr16 == incr16:
        paired = med(
            [x.rate / y.rate for x, y in zip(by["ml-P16"].runs, by["incrr-P16"].runs, strict=True)]
        )
        print(
            f"  RESP >= {TARGET_RESP_VS_REDIS:.0%} of redis-server INCR (same settings, -P16): "
            f"{ml16 / incr16:.1%} of the medians, {paired:.1%} paired -> "
            f"{verdict(min(paired, ml16 / incr16) >= TARGET_RESP_VS_REDIS)} (INCR's rate is the "
            f"generator's limit when its gen CPU is ~100%: then the ratio flatters meshlimit)"
        )
    if http_best == http_best:
        print(
            f"  HTTP >= {TARGET_HTTP:,} checks/s keep-alive on one core: {fmt_rate(http_best)}/s "
            f"(best of -c16/-c64) -> {verdict(http_best >= TARGET_HTTP)} "
            f"({http_best / TARGET_HTTP:.0%} of the target)"
        )
    for c in (16, 64):
        node, floor = f"http-c{c}", f"floorh-c{c}"
        if node in by and floor in by and by[node].runs and by[floor].runs:
            of_medians = rate(node) / rate(floor)
            paired = med(
                [x.rate / y.rate for x, y in zip(by[node].runs, by[floor].runs, strict=False)]
            )
            print(
                f"  HTTP -c{c} >= {TARGET_HTTP_VS_FLOOR}x bare aiohttp (same JSON): "
                f"{of_medians:.2f}x of the medians, {paired:.2f}x paired -> "
                f"{verdict(min(paired, of_medians) >= TARGET_HTTP_VS_FLOOR)}"
            )
    for key in ("http-c16", "http-c64", "ml-P16"):
        if key in by and by[key].runs:
            cpu_us = med([cpu_per_request_us(r) for r in by[key].runs])
            print(
                f"  {key}: node CPU per check {cpu_us:.1f} us -> ceiling "
                f"{fmt_rate(1e6 / cpu_us)}/s on a saturated core of its own (estimate)"
            )
