"""Printing what a benchmark measured: number formats, ratios, aligned tables, JSON reports.

``docs/performance.md`` quotes the scripts' output, so a table keeps its headings and
column widths: a :class:`Table` is given the exact alignment and width of each column
(``"<50"``, ``">9"``) and lays out both the heading and the rows with them.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.stats import median


def fmt_rate(x: float) -> str:
    """A rate with thousands separators and no decimals; ``-`` for NaN (not measured)."""
    return f"{x:,.0f}" if x == x else "-"


def fmt_pct(x: float) -> str:
    """A share as a whole percentage; ``-`` for NaN."""
    return f"{x:.0%}" if x == x else "-"


def ratio(a: float, b: float) -> float:
    """``a / b``, NaN when ``b`` is zero (a subject that did not run)."""
    return a / b if b else math.nan


def spread(
    values: Sequence[float], fmt: Callable[[float], str] = fmt_rate, *, bare_single: bool = False
) -> str:
    """``median (min-max)`` of repeated measurements (NaNs skipped for the median);
    ``bare_single`` prints a lone value without its range."""
    if bare_single and len(values) == 1:
        return fmt(values[0])
    return f"{fmt(median(values, skip_nan=True))} ({fmt(min(values))}-{fmt(max(values))})"


@dataclass(frozen=True, slots=True)
class Column:
    """One column: its heading, its format spec (alignment and width, as ``"<50"``), and the
    text between it and the column before (one space unless told)."""

    title: str
    spec: str
    gap: str = " "


class Table:
    """Columns laid out alike in the heading and in every row, after an indent."""

    def __init__(self, columns: Sequence[Column], indent: str = "") -> None:
        self.columns = tuple(columns)
        self.indent = indent

    def line(self, *cells: object) -> str:
        """One row: each cell (already formatted, or anything with ``str``) aligned."""
        assert len(cells) == len(self.columns), (len(cells), len(self.columns))
        parts = []
        for i, (column, cell) in enumerate(zip(self.columns, cells, strict=True)):
            parts.append(("" if i == 0 else column.gap) + format(str(cell), column.spec))
        return self.indent + "".join(parts)

    def heading(self) -> str:
        return self.line(*(column.title for column in self.columns))

    def print_heading(self, *, rule: bool = True) -> None:
        """The heading line, and a rule of dashes as wide as it (after the indent)."""
        head = self.heading()
        print(head)
        if rule:
            print(self.indent + "-" * (len(head) - len(self.indent)))

    def print(self, *cells: object) -> None:
        print(self.line(*cells))


def command_line(script: str) -> str:
    """The ``command:`` header line: how this run was started."""
    return f"command: .venv/bin/python scripts/{script} {' '.join(sys.argv[1:])}".rstrip()


def doc_section(doc: str | None, start: str, end: str | None = None) -> str:
    """The text of a docstring after the line ``start`` (up to ``end``, if given): the
    method a script states in its docstring, printed again at the head of its output."""
    text = (doc or "").split(start, 1)[1]
    return text.split(end, 1)[0] if end is not None else text


def write_json(path: str | Path, data: Any, *, indent: int | None = 1) -> None:
    """A JSON report, ending in a newline."""
    Path(path).write_text(json.dumps(data, indent=indent) + "\n")
