"""The progress line of a fuzz campaign: runs done of the total, runs with violations so far,
the time left; on stderr only, when asked for or on a terminal, never in the report."""

from __future__ import annotations

import argparse
import io
import re
from dataclasses import dataclass

from meshlimit.sim.cli import FuzzProgress, add_arguments, run_sim


@dataclass
class _Result:  # what FuzzProgress reads of a RunResult
    ok: bool


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_line_counts_runs_and_failures_and_estimates_the_time_left() -> None:
    stream, clock = io.StringIO(), _Clock()
    bar = FuzzProgress(stream, 10, clock=clock, width=10)
    bar(0.001, "fuzz 1/10 seed=7")
    assert bar.line() == "[..........]  0/10 runs, 0 with violations, ETA --  fuzz 1/10 seed=7"
    clock.now += 10  # 10 s for a quarter of the batch: 30 s to go
    bar.count(_Result(ok=True))
    bar.count(_Result(ok=False))
    bar(0.25, "fuzz 3/10 seed=9")
    assert bar.line() == "[##........]  2/10 runs, 1 with violations, ETA 30s  fuzz 3/10 seed=9"
    clock.now += 290  # 300 s for half: as long again
    bar(0.5, "fuzz 6/10 seed=12")
    assert "ETA 5m00s" in bar.line()
    bar.done()
    text = stream.getvalue()
    assert text.startswith("\r[") and text.endswith("\n")
    assert text.count("\n") == 1  # one line, redrawn in place


def test_the_line_is_redrawn_only_when_it_changes() -> None:
    stream = io.StringIO()
    bar = FuzzProgress(stream, 2, clock=_Clock())
    for _ in range(5):
        bar(0.5, "fuzz 2/2")
    assert stream.getvalue().count("\r") == 1


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_a_fuzz_batch_shows_progress_on_stderr_only_when_asked() -> None:
    out, err = io.StringIO(), io.StringIO()
    assert run_sim(_args("--fuzz", "--runs", "2", "--seed", "3", "--progress"), out, err) == 0
    line = err.getvalue().split("\r")[-1]
    assert "2/2 runs, 0 with violations, ETA" in line and err.getvalue().endswith("\n")
    assert "ETA" not in out.getvalue() and "\r" not in out.getvalue()
    quiet_out, quiet_err = io.StringIO(), io.StringIO()  # a StringIO is not a terminal
    assert run_sim(_args("--fuzz", "--runs", "2", "--seed", "3"), quiet_out, quiet_err) == 0
    assert quiet_err.getvalue() == ""
    # The report is the same with or without the bar (but for the wall time it took).
    assert _no_wall(out.getvalue()) == _no_wall(quiet_out.getvalue())


def _no_wall(report: str) -> list[str]:
    """The report without the wall times: a run's own column, and the batch's total."""
    rows = [line for line in report.splitlines() if "wall s" not in line]
    return [re.sub(r" +\d+\.\d\d  (ok|FAILED)", r"  \1", row) for row in rows]
