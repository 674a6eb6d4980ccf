"""Profiling the node under one setting with py-spy (an optional tool), and the top
functions by own and inclusive samples."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from harness.processes import pinned
from harness.report import fmt_pct, fmt_rate

from frontend_bench.bench import Bench, Setting
from frontend_bench.runs import Run
from frontend_bench.servers import FrontNode


def profile(b: Bench, node: FrontNode, s: Setting, out_dir: Path, seconds: float) -> None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print(f"\nprofile {s.key}: skipped, py-spy not found (.venv/bin/pip install py-spy)")
        return
    raw = out_dir / f"profile-{s.key}.txt"
    rec = subprocess.Popen(
        pinned(b.pinning.load_cpu)
        + [
            spy,
            "record",
            "--pid",
            str(node.pid),
            "-d",
            f"{seconds:g}",
            "-r",
            "100",
            "-F",
            "--format",
            "raw",
            "-o",
            str(raw),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)  # py-spy attaches
    if s.kind == "http":
        run = b.once(s, node, seconds=seconds + 2)
    else:
        run = b.once(s, node, n=int(s.n * (seconds + 2) / b.resp_s))
    _, err = rec.communicate(timeout=seconds + 30)
    if rec.returncode != 0 or not raw.exists():
        print(f"\nprofile {s.key}: py-spy failed: {err.strip()[:300]}")
        return
    print_profile(s, raw, run, seconds)


def print_profile(s: Setting, raw: Path, run: Run, seconds: float) -> None:
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = [re.sub(r" \((.*?)/?([^/]+\.py):\d+\)$", r" (\2)", f) for f in stack.split(";")]
        frames = [f.replace(" (<frozen runpy>)", "") for f in frames]
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    print(
        f"\nProfile of the node under {s.label} (py-spy, 100 Hz, {seconds:g} s, samples where "
        f"the thread was not idle: {total}, {total / (100 * seconds):.0%} of the time; rate "
        f"during the run {fmt_rate(run.rate)}/s, srv CPU {fmt_pct(run.srv_cpu)}). {raw}"
    )
    print(
        "  Time in C code (uvloop, the parsers, syscalls) is charged to the Python frame that "
        "called it; 'Runner.run' self = inside uvloop's loop outside any Python callback."
    )
    print(f"  {'self':>6}  function                                          {'incl':>6}  function")
    top_own, top_incl = own.most_common(15), incl.most_common(25)
    top_incl = [(f, n) for f, n in top_incl if n < total * 0.999 or f.startswith("Runner.run")][:15]
    for i in range(15):
        left = (
            f"{top_own[i][1] / total:6.1%}  {top_own[i][0][:48]:<48}"
            if i < len(top_own)
            else " " * 56
        )
        right = f"{top_incl[i][1] / total:6.1%}  {top_incl[i][0][:60]}" if i < len(top_incl) else ""
        print(f"  {left}  {right}")
