"""``meshlimit sim``: run a scenario, or a batch of swarm-fuzz runs, and report.

Usage::

    meshlimit sim SCENARIO [--seed N] [--report FILE.json|FILE.png] [--progress]
    meshlimit sim --fuzz [--long] --runs N [--seed N] [--progress]
    meshlimit sim --fuzz [--long] --one SEED [--report FILE] [--save-scenario FILE.toml]
    meshlimit sim --list

``SCENARIO`` is a path to a TOML file or the name of a shipped scenario
(``healthy`` is ``sim/scenarios/healthy.toml``). The seed is printed first,
always. Exit status: 0 when no invariant broke, 1 when one did (each violation
and the command that reproduces the run are printed), 2 for a bad scenario
file or bad arguments. Progress goes to stderr when it is a terminal (or with
``--progress``): a bar for one run; for a fuzz batch, runs done of the total, runs
with violations so far and the time left. Nothing of it reaches stdout, whose
report is the same for the same seed.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from . import report
from .runner import (
    SCENARIO_DIR,
    RunResult,
    fuzz_command,
    fuzz_scenario,
    run_fuzz,
    run_scenario,
)
from .scenario import Scenario, ScenarioError, load_scenario

#: Exit statuses.
OK, VIOLATIONS, BAD_INPUT = 0, 1, 2
#: Runs a fuzz batch makes when ``--runs`` is not given.
DEFAULT_RUNS = 100


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``meshlimit sim``."""
    parser.add_argument(
        "scenario", nargs="?", metavar="SCENARIO",
        help="a scenario file, or the name of a shipped one (see --list)",
    )  # fmt: skip
    parser.add_argument(
        "--seed", type=int, default=None,
        help="the run's seed (default: the file's `seed`, else 1); with --fuzz, the batch's "
        "base seed (default: random, printed first)",
    )  # fmt: skip
    parser.add_argument(
        "--report", metavar="FILE",
        help="also write FILE: .json (the run as JSON) or .png (a plot, and FILE.json beside)",
    )  # fmt: skip
    parser.add_argument("--fuzz", action="store_true", help="swarm-fuzz: generated scenarios")
    parser.add_argument(
        "--long", action="store_true",
        help="with --fuzz: long schedules (60-300 simulated s, faults past detection and reaping)",
    )  # fmt: skip
    parser.add_argument(
        "--runs", type=int, default=DEFAULT_RUNS, help=f"fuzz runs (default {DEFAULT_RUNS})"
    )
    parser.add_argument(
        "--one", type=int, metavar="SEED",
        help="with --fuzz: rerun exactly the one fuzz run that printed this seed",
    )  # fmt: skip
    parser.add_argument(
        "--save-scenario", metavar="FILE",
        help="write the scenario that runs as TOML (keep a failing fuzz run as a file)",
    )  # fmt: skip
    parser.add_argument("--list", action="store_true", help="list the shipped scenarios")
    parser.add_argument(
        "--progress", action="store_true",
        help="show a progress bar on stderr even when it is not a terminal",
    )  # fmt: skip


def run_sim(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run ``meshlimit sim`` with parsed ``args``; returns the exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    if args.list:
        shipped = shipped_scenarios()
        width = max(map(len, shipped), default=0) + 2
        for name, path in shipped.items():
            out.write(f"{name:<{width}}{_first_line(path)}\n")
        return OK
    problem = _check_args(args)
    if problem:
        err.write(f"meshlimit sim: error: {problem}\n")
        return BAD_INPUT
    show = args.progress or err.isatty()
    if args.fuzz and args.one is None:
        return _run_batch(args, out, FuzzProgress(err, args.runs) if show else None)
    bar = ProgressBar(err) if show else None
    try:
        scenario, seed, command = _single(args)
    except ScenarioError as error:
        err.write(f"meshlimit sim: error: {error}\n")
        return BAD_INPUT
    out.write(f"seed={seed}\n")  # first, before anything can go wrong
    out.flush()
    if args.save_scenario:
        Path(args.save_scenario).write_text(scenario.to_toml(), encoding="utf-8")
    result = run_scenario(
        scenario, seed, progress=bar, reproduce=command, stopwatch=time.perf_counter
    )
    if bar is not None:
        bar(1.0, scenario.name)
        bar.done()
    out.write(report.format_report(result, seed_line=False))
    if args.report:
        for path in _write_report(result, Path(args.report)):
            out.write(f"wrote {path}\n")
    return OK if result.ok else VIOLATIONS


def _check_args(args: argparse.Namespace) -> str:
    """What is wrong with the arguments, or ``""``."""
    if args.one is not None and not args.fuzz:
        return "--one needs --fuzz"
    if args.long and not args.fuzz:
        return "--long needs --fuzz"
    if args.fuzz and args.scenario:
        return "give either SCENARIO or --fuzz, not both"
    if not args.fuzz and not args.scenario:
        return "give a SCENARIO (see --list) or --fuzz"
    if args.runs < 1:
        return "--runs must be at least 1"
    if args.report and Path(args.report).suffix not in (".json", ".png"):
        return f"--report {args.report}: the file must end in .json or .png"
    if args.fuzz and args.one is None and args.report and args.report.endswith(".png"):
        return "a plot shows one run: use --report FILE.json for a batch, or --one SEED"
    if args.fuzz and args.one is None and args.save_scenario:
        return "--save-scenario needs a single run (SCENARIO or --fuzz --one SEED)"
    if args.report and args.report.endswith(".png"):
        try:
            report.require_matplotlib()
        except RuntimeError as error:
            return str(error)
    return ""


def _single(args: argparse.Namespace) -> tuple[Scenario, int, str]:
    """The scenario, seed and reproducing command of a single run."""
    if args.fuzz:
        scenario = fuzz_scenario(args.one, long=args.long)
        return scenario, args.one, fuzz_command(args.one, long=args.long)
    path = resolve_scenario(args.scenario)
    scenario = load_scenario(path)
    seed = next(s for s in (args.seed, scenario.seed, 1) if s is not None)
    return scenario, seed, f"meshlimit sim {args.scenario} --seed {seed}"


def _run_batch(args: argparse.Namespace, out: TextIO, bar: FuzzProgress | None) -> int:
    base = args.seed if args.seed is not None else secrets.randbelow(2**32)
    out.write(f"seed={base}\n")
    out.flush()
    results = run_fuzz(
        args.runs,
        base,
        progress=bar,
        stopwatch=time.perf_counter,
        long=args.long,
        on_result=None if bar is None else bar.count,
    )
    if bar is not None:
        bar.done()
    out.write(report.format_fuzz(results, base, seed_line=False))
    if args.report:
        path = Path(args.report)
        data = {"seed": base, "runs": [report.to_json(r) for r in results]}
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        out.write(f"wrote {path}\n")
    return OK if all(r.ok for r in results) else VIOLATIONS


def _write_report(result: RunResult, path: Path) -> list[Path]:
    if path.suffix == ".png":
        return [
            report.write_png(result, None, path),
            report.write_json(result, path.with_suffix(".json")),
        ]
    return [report.write_json(result, path)]


# --- shipped scenarios ----------------------------------------------------------------------


def shipped_scenarios() -> dict[str, Path]:
    """Name -> file of every scenario shipped in ``sim/scenarios``, sorted by name."""
    return {path.stem: path for path in sorted(SCENARIO_DIR.glob("*.toml"))}


def resolve_scenario(ref: str) -> Path:
    """A path as given if it names a file, else the shipped scenario of that name."""
    path = Path(ref)
    if path.is_file():
        return path
    shipped = shipped_scenarios()
    if ref in shipped:
        return shipped[ref]
    names = ", ".join(shipped) or "none"
    raise ScenarioError(ref, "", f"no such file, and no shipped scenario of that name ({names})")


def _first_line(path: Path) -> str:
    try:
        scenario = load_scenario(path)
    except ScenarioError as error:
        return f"(broken: {error})"
    first = scenario.description.strip().split(". ")[0].rstrip(".")
    return f"{first}." if first else ""


# --- progress -------------------------------------------------------------------------------


class ProgressBar:
    """A one-line text bar on ``stream``, redrawn only when the percentage changes."""

    def __init__(self, stream: TextIO, width: int = 30) -> None:
        self.stream = stream
        self.width = width
        self._shown = (-1, "")

    def __call__(self, fraction: float, label: str) -> None:
        percent = max(0, min(100, int(fraction * 100)))
        if (percent, label) == self._shown:
            return
        self._shown = (percent, label)
        filled = self.width * percent // 100
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r[{bar}] {percent:3d}% {label[:40]:<40}")
        self.stream.flush()

    def done(self) -> None:
        """End the bar's line."""
        if self._shown[0] >= 0:
            self.stream.write("\n")
            self.stream.flush()


class FuzzProgress:
    """The progress line of a fuzz campaign on ``stream`` (stderr: never in the report, which
    stays the same for the same seed): a bar, runs done of the total, runs with violations
    so far, and the time left at the pace so far, e.g.::

        [#######.................]  31/100 runs, 2 with violations, ETA 1m04s  fuzz 32/100 seed=...

    Redrawn when the percentage, the counts or the ETA's second change. ``clock`` is a
    monotonic clock in seconds (a test passes a fake one)."""

    def __init__(
        self,
        stream: TextIO,
        runs: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        width: int = 24,
    ) -> None:
        self.stream = stream
        self.runs = runs
        self.width = width
        self.finished = 0
        """Runs done."""
        self.failed = 0
        """Runs done that broke an invariant."""
        self._clock = clock
        self._started = clock()
        self._fraction = 0.0
        self._label = ""
        self._shown = ""

    def __call__(self, fraction: float, label: str) -> None:
        """Where the batch is (``run_fuzz``'s progress callback)."""
        self._fraction, self._label = max(0.0, min(1.0, fraction)), label
        self._draw()

    def count(self, result: RunResult) -> None:
        """A run is done (``run_fuzz``'s ``on_result``)."""
        self.finished += 1
        self.failed += not result.ok
        self._draw()

    def line(self) -> str:
        """The progress line as it stands."""
        percent = int(self._fraction * 100)
        filled = self.width * percent // 100
        bar = "#" * filled + "." * (self.width - filled)
        return (
            f"[{bar}] {self.finished:>{len(str(self.runs))}}/{self.runs} runs, "
            f"{self.failed} with violations, ETA {self._eta()}  {self._label[:40]}"
        )

    def _eta(self) -> str:
        if self._fraction < 0.01:  # too little done to tell the pace
            return "--"
        elapsed = self._clock() - self._started
        return _duration(elapsed * (1 - self._fraction) / self._fraction)

    def _draw(self) -> None:
        line = self.line()
        if line == self._shown:
            return
        pad = " " * max(0, len(self._shown) - len(line))  # wipe what a longer line left
        self._shown = line
        self.stream.write(f"\r{line}{pad}")
        self.stream.flush()

    def done(self) -> None:
        """End the line."""
        if self._shown:
            self.stream.write("\n")
            self.stream.flush()


def _duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    whole = int(seconds + 0.5)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
