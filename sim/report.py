"""Reports of simulation runs: fixed-width text, JSON, and a PNG plot.

The text report prints the seed first, always (``seed=N``: whatever else
happens, the run can be reproduced), then the scenario, one row per phase, a
summary, and last the trace digest, each violation and the exact command that
reproduces the run. The plot needs matplotlib, an optional extra
(``pip install meshlimit[plot]``), imported only when a plot is asked for.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from .runner import FUZZ_SEED_STRIDE, Phase, RunResult

#: The paths a phase row shows, in this order (others are added after them).
PATHS = ("owner", "forwarded", "local", "degraded", "overloaded")
_LABEL_WIDTH = 34


def format_report(result: RunResult, *, seed_line: bool = True) -> str:
    """The text report of one run (see the module docstring).

    ``seed_line=False`` leaves out the first line, for a caller that printed
    ``seed=N`` itself before the run started.
    """
    s = result.summary
    lines = [
        f"seed={result.seed}",
        f"scenario={result.scenario} mode={result.mode} nodes={s['nodes']}"
        f" duration={s['duration_s']:g}s",
        "",
        *format_phases(result.phases),
        "",
        *_summary_lines(result),
        "",
        f"digest={result.digest}",
    ]
    lines += _verdict_lines(result)
    return "\n".join(lines[0 if seed_line else 1 :]) + "\n"


def format_phases(phases: list[Phase]) -> list[str]:
    """The per-phase table: one fixed-width row per phase."""
    paths = list(PATHS) + sorted({p for ph in phases for p in ph.answers} - set(PATHS))
    head = f"{'phase':<{_LABEL_WIDTH + 16}}" + "".join(f"{p:>11}" for p in paths)
    head += f"{'admitted':>10}{'refused':>9}{'unavail':>8}{'peak':>7}"
    rows = [head, "-" * len(head)]
    for phase in phases:
        span = f"{_sec(phase.start_ns)}-{_sec(phase.end_ns)}"
        label = phase.label
        if len(label) > _LABEL_WIDTH:
            label = label[: _LABEL_WIDTH - 3] + "..."
        row = f"{span:<15} {label:<{_LABEL_WIDTH}}"
        row += "".join(f"{phase.answers.get(p, 0):>11}" for p in paths)
        row += f"{phase.admitted:>10}{phase.refused:>9}{phase.unavailable:>8}"
        row += f"{phase.peak_ratio:>7.2f}"
        rows.append(row)
    return rows


def _bounds(summary: dict[str, Any]) -> str:
    """``exact=120 degraded=4 (97.0% at most the capacity)``: how each window was judged."""
    counts = summary.get("windows_by_bound") or {}
    share = summary.get("windows_at_most_capacity")
    text = " ".join(f"{k}={v}" for k, v in counts.items()) or "none"
    return text if share is None else f"{text} ({share:.1%} at most the capacity)"


def _all_windows(results: list[RunResult]) -> dict[str, Any]:
    """The windows of every run by the bound they were judged at, and the share held to
    the capacity or below (``exact`` and ``degraded_only``)."""
    counts: dict[str, int] = {}
    for r in results:
        for bound, windows in (r.summary.get("windows_by_bound") or {}).items():
            counts[bound] = counts.get(bound, 0) + windows
    total = sum(counts.values())
    at_most = counts.get("exact", 0) + counts.get("degraded_only", 0)
    share = round(at_most / total, 4) if total else None
    return {"windows_by_bound": dict(sorted(counts.items())), "windows_at_most_capacity": share}


def _summary_lines(result: RunResult) -> list[str]:
    s = result.summary
    det, fwd, net = s["detection_s"], s["forward_latency_ms"], s["network"]
    detection = (
        f"{det['min']}/{det['median']}/{det['max']} s (n={det['count']})"
        if det["count"]
        else "none"
    )
    latency = f"{fwd['p50']}/{fwd['p99']} ms (n={fwd['count']})" if fwd["count"] else "none"
    paths = " ".join(f"{k}={v}" for k, v in s["answers_by_path"].items()) or "none"
    return [
        f"{'answers by path':<22}{paths}",
        f"{'admitted/refused':<22}{s['admitted']}/{s['refused']}  unavailable={s['unavailable']}",
        f"{'windows checked':<22}{s['windows_checked']}  peak admitted/capacity="
        f"{s['peak_ratio']:.3f}",
        f"{'windows by bound':<22}{_bounds(s)}",
        f"{'saturated fill':<22}{_fill(s['saturated_fill'])}",
        f"{'detection min/med/max':<22}{detection}",
        f"{'false suspicions':<22}{s['false_suspicions']}",
        f"{'recovery':<22}{_recovery(s['recovery'])}",
        f"{'forward p50/p99':<22}{latency}",
        f"{'network':<22}" + " ".join(f"{k}={v}" for k, v in net.items()),
        f"{'speed':<22}{result.simulated_s:g} simulated s in {result.wall_s:.2f} wall s"
        f" = {s['sim_s_per_wall_s']} sim s/s, {result.events} events",
    ]


def _fill(fill: dict[str, Any]) -> str:
    if not fill["windows"]:
        return "no client was refused"
    return (
        f"median {fill['median']:.3f}, p10 {fill['p10']:.3f} of capacity admitted in the"
        f" {fill['windows']} windows with a refusal"
    )


def _recovery(recovery: dict[str, Any]) -> str:
    if recovery["last_heal_s"] is None:
        return "no heal, restart, join or resume in the timeline"
    return (
        f"degraded answers went on {recovery['degraded_for_s_after_heal']} s after the last"
        f" heal/restart at {recovery['last_heal_s']:g} s"
    )


def _verdict_lines(result: RunResult) -> list[str]:
    if result.ok:
        return ["ok: no violations"]
    lines = [f"FAILED: {len(result.violations)} violation(s)"]
    lines += [f"  {violation}" for violation in result.violations]
    lines.append(f"reproduce: {result.reproduce}")
    return lines


def format_fuzz(results: list[RunResult], base_seed: int, *, seed_line: bool = True) -> str:
    """A fuzz batch: the base seed first, one line per run, then the failures."""
    lines = [f"seed={base_seed}"] if seed_line else []
    lines += [f"fuzz runs={len(results)} (run i has seed {base_seed} * {FUZZ_SEED_STRIDE} + i)", ""]
    head = f"{'run seed':>14} {'mode':<7}{'nodes':>6}{'peak':>7}{'events':>9}{'wall s':>8}  result"
    lines += [head, "-" * len(head)]
    for r in results:
        verdict = "ok" if r.ok else f"FAILED ({len(r.violations)})"
        lines.append(
            f"{r.seed:>14} {r.mode:<7}{r.summary['nodes']:>6}{r.summary['peak_ratio']:>7.2f}"
            f"{r.events:>9}{r.wall_s:>8.2f}  {verdict}"
        )
    failed = [r for r in results if not r.ok]
    wall = sum(r.wall_s for r in results)
    simulated = sum(r.simulated_s for r in results)
    lines += ["", f"{len(results) - len(failed)} ok, {len(failed)} failed;"
              f" {simulated:g} simulated s in {wall:.1f} wall s",
              f"windows by bound: {_bounds(_all_windows(results))}"]  # fmt: skip
    for r in failed:
        lines.append(f"seed={r.seed} digest={r.digest}")
        lines += [f"  {violation}" for violation in r.violations]
        lines.append(f"reproduce: {r.reproduce}")
    return "\n".join(lines) + "\n"


def print_report(result: RunResult, out: TextIO) -> None:
    """Write :func:`format_report` to ``out``."""
    out.write(format_report(result))


# --- files --------------------------------------------------------------------------------


def to_json(result: RunResult) -> dict[str, Any]:
    """The run as JSON-ready data (the phases get their ``title`` too)."""
    data = asdict(result)
    for row, phase in zip(data["phases"], result.phases, strict=True):
        row["title"] = phase.title
    data["ok"] = result.ok
    return data


def write_json(result: RunResult, path: str | Path) -> Path:
    """Write the run as JSON to ``path``."""
    path = Path(path)
    path.write_text(json.dumps(to_json(result), indent=2) + "\n", encoding="utf-8")
    return path


def write_png(result: RunResult, world_or_data: Any, path: str | Path) -> Path:
    """Plot admitted and refused per second, faults shaded, peak window ratio on a second axis.

    ``world_or_data`` may be ``None`` (the series stored in ``result`` are used), the
    ``World`` that ran (its checkers' series), a ``RunResult``, or a dict with the
    ``series`` keys. Needs matplotlib.
    """
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")  # files only: never open a window
    import matplotlib.pyplot as plt

    series = _series(result, world_or_data)
    seconds = series["second"]
    fig, ax = plt.subplots(figsize=(10, 5), dpi=100)
    ax.plot(
        seconds, series["admitted"], color="tab:green", label="admitted/s", drawstyle="steps-post"
    )
    ax.plot(seconds, series["refused"], color="tab:red", label="refused/s", drawstyle="steps-post")
    if any(series.get("unavailable", ())):
        ax.plot(seconds, series["unavailable"], color="tab:gray", label="unavailable/s",
                drawstyle="steps-post")  # fmt: skip
    for index, (start, end, label) in enumerate(result.faults):
        ax.axvspan(start, max(end, start + 0.05), color="tab:orange", alpha=0.15,
                   label="faults" if index == 0 else None)  # fmt: skip
        ax.annotate(label[:24], (start, 1.0), xycoords=("data", "axes fraction"), fontsize=7,
                    rotation=90, va="top", ha="right", color="tab:brown")  # fmt: skip
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("answers per second")
    ax.set_xlim(0, max(seconds[-1] + 1 if seconds else 1, result.simulated_s))
    ax.set_ylim(bottom=0)
    ratio_ax = ax.twinx()
    ratio_ax.plot(seconds, series["peak_ratio"], color="tab:blue", linestyle=":",
                  label="peak admitted/capacity")  # fmt: skip
    ratio_ax.axhline(1.0, color="tab:blue", linewidth=0.6, alpha=0.5)
    ratio_ax.set_ylabel("peak admitted/capacity per window")
    ratio_ax.set_ylim(0, max(1.6, max(series["peak_ratio"], default=0) * 1.1))
    handles, labels = ax.get_legend_handles_labels()
    more_handles, more_labels = ratio_ax.get_legend_handles_labels()
    ax.legend(handles + more_handles, labels + more_labels, loc="upper center", fontsize=8,
              bbox_to_anchor=(0.5, -0.14), ncol=5, frameon=False)  # fmt: skip
    verdict = "ok" if result.ok else f"{len(result.violations)} violation(s)"
    ax.set_title(f"{result.scenario}  seed={result.seed}  {verdict}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def require_matplotlib() -> None:
    """Raise ``RuntimeError`` with the install command when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401 - only checking that it is there
    except ImportError as error:
        raise RuntimeError(
            "writing a .png report needs matplotlib: pip install 'meshlimit[plot]'"
        ) from error


def _series(result: RunResult, world_or_data: Any) -> dict[str, list[float]]:
    if world_or_data is None:
        return result.series
    if isinstance(world_or_data, RunResult):
        return world_or_data.series
    if isinstance(world_or_data, dict):
        return world_or_data
    checkers = getattr(world_or_data, "checkers", None)
    if checkers is not None:  # a World: its checkers' per-second series
        seconds = result.series.get("second") or [
            float(s) for s in range(int(result.simulated_s) + 1)
        ]
        return {
            "second": seconds,
            "admitted": [float(checkers.admitted_series.get(int(s), 0)) for s in seconds],
            "refused": [float(checkers.refused_series.get(int(s), 0)) for s in seconds],
            "peak_ratio": result.series.get("peak_ratio") or [0.0] * len(seconds),
        }
    raise TypeError(f"expected None, a World, a RunResult or a series dict, got {world_or_data!r}")


def _sec(ns: int) -> str:
    return f"{ns / 1e9:.3f}".rstrip("0").rstrip(".") + "s"
