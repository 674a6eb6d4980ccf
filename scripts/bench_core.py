#!/usr/bin/env python3
"""Benchmark: meshlimit's in-process check against the ``limits`` library.

    .venv/bin/python scripts/bench_core.py [--keys N] [--reps R] [--quick]

Method (the output header says it again):

- Subjects: meshlimit ``Engine.check`` and ``Limiter.check`` (fixed injected
  clock, and real clock) for each algorithm; ``limits``' in-memory strategies
  (``MemoryStorage``, real clock, its background expiry thread running as in
  production); and calibration baselines: an empty loop, ``d[k] = d.get(k, 0)
  + 1``, and a "floor" (see ``floor_table``).
- Isolation: every subject runs in a fresh subprocess, one after another (the
  script re-invokes itself with the hidden ``--child MODE:SPEC`` flag and reads
  one JSON line back), so no two share a heap or a warm cache, and they never
  compete for the two cores.
- Workloads: (a) hot key: one client checked ``--hot`` times (100,000) on a
  fresh instance, repeated R times; (b) N distinct clients (1,000,000): pass 1
  checks every client once (inserts), pass 2 checks every one again (hits).
  The rule (10,000,000 a day) never refuses, so every check takes the
  admit-and-record path; the last check of each pass is verified admitted.
- Repetitions: R (5; 3 with ``--quick``). The hot key runs R times on R fresh
  instances. Each distinct-key pass is timed as R consecutive slices of N/R
  checks: the hit slices repeat one measurement on an N-client table; the
  insert slices run while the table grows from 0 to N, so their spread also
  shows the size effect (their mean is in the JSON). Filling 1,000,000
  clients into ``limits`` takes about 20 s, so R fresh fills per subject would
  take the run far past 8 minutes.
- Figures: ns per check = process CPU time of a slice / checks, median of the
  R samples with min and max. CPU time rather than wall time because this
  2-core machine is shared with other work; the wall-clock medians are in the
  JSON and the table's ``wall/cpu`` column says how much other load stretched
  them. Process CPU time includes every thread, so ``limits``' expiry thread
  is counted. The Python ``for`` loop is included for every subject alike.
  A warm-up on a throw-away instance comes first; the garbage collector stays
  enabled, as in a service.
- Memory: RSS growth (``/proc/self/statm``) after ``gc.collect()``; see
  ``child_time`` (caller holds its ids) and ``child_streamed`` (caller holds
  none, the fair comparison).

This is a benchmark, not a test: it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Iterable

from core_bench.report import (
    Result,
    machine,
    print_header,
    print_memory,
    print_ratios,
    print_times,
    ratios,
    summary,
)
from core_bench.subjects import (
    HOT_CHECKS,
    MEM_SPECS,
    TIME_SPECS,
    Run,
    build,
    sizes_for,
    table_bytes,
)
from harness.proc import status_kib
from harness.processes import run_json_child
from harness.stats import Stopwatch

#: Enough for CPython 3.11's specializing interpreter to settle, small enough
#: to leave the heap untouched before the memory baseline.
WARMUP_CHECKS = 2_000


def make_ids(n: int) -> list[str]:
    """The key stream: ``client-0000000`` ... (64-byte str objects), in creation order."""
    return [f"client-{i:07d}" for i in range(n)]


def rss_bytes() -> int:
    return status_kib()["VmRSS"] * 1024


# --- children (one subject each) --------------------------------------------------------------


def time_pass(run: Run, keys: Iterable[str]) -> tuple[int, int, bool]:
    """(CPU ns, wall ns, last check admitted) for one pass over ``keys``."""
    watch = Stopwatch()
    admitted = run(keys)
    span = watch.stop()
    return span.cpu_ns, span.wall_ns, bool(admitted)


def child_time(spec: str, n: int, reps: int, hot: int) -> Result:
    """Time one subject, and measure its memory with the caller holding its ids.

    Memory: r0 with the empty instance built; r1 after the caller's N id
    strings (and the lists holding them) exist; r2 after pass 1 and
    ``gc.collect()``. ids alone = r1 - r0; state only = r2 - r1 (what the
    subject allocated: the ids existed before); state + caller's ids = r2 - r0
    ("key included").
    """
    n, hot = sizes_for(spec, n, hot)
    out: Result = {"spec": spec, "keys": n, "hot_checks": hot}
    if not spec.startswith(("base:", "limits:")):
        from meshlimit import _native  # what ran: the native build or pure Python

        out["native"] = _native.state()
    admitted = True

    # Warm-up on a throw-away instance: insert and hit paths, and the hot key.
    run, close = build(spec, n)
    warm = [f"warm-{i}" for i in range(WARMUP_CHECKS)]
    for _ in range(3):
        run(warm)
    close()
    del run, close, warm

    if "native" in out:
        out["compiled"] = _native.compiled_modules()
        out["hotpath"], out["hotpath_loaded"] = _native.hotpath_state(), _native.hotpath_loaded()

    # Distinct keys: one fresh instance, pass 1 (inserts) then pass 2 (hits),
    # each timed in `reps` slices.
    run, close = build(spec, n)
    gc.collect()
    r0 = rss_bytes()
    ids = make_ids(n)
    slices = [ids[i * n // reps : (i + 1) * n // reps] for i in range(reps)]
    del ids
    gc.collect()
    r1 = rss_bytes()
    for phase in ("insert", "hit"):
        cpu, wall = [], []
        for keys in slices:
            c, w, ok = time_pass(run, keys)
            cpu.append(c / len(keys))
            wall.append(w / len(keys))
            admitted &= ok
        out[phase], out[phase + "_wall"] = cpu, wall
        if phase == "insert":
            out["insert_mean"] = statistics.fmean(cpu)
            close()  # lets limits' expiry sweep finish before the reading
            gc.collect()
            r2 = rss_bytes()
    close()
    out["memory"] = {
        "ids": (r1 - r0) / n,
        "state": (r2 - r1) / n,
        "state_ids": (r2 - r0) / n,
    }
    size = table_bytes(run)
    if size is not None:
        out["memory"]["getsizeof"] = size / n
    del run, close, slices
    gc.collect()

    # Hot key: `reps` fresh instances.
    hot_keys = ["client-hot"] * hot
    cpu, wall = [], []
    for _ in range(reps):
        run, close = build(spec, n)
        run(hot_keys[:1000])
        gc.collect()
        c, w, ok = time_pass(run, hot_keys)
        cpu.append(c / hot)
        wall.append(w / hot)
        admitted &= ok
        close()
        del run, close
    out["hot"], out["hot_wall"] = cpu, wall
    out["admitted"] = admitted
    return out


def child_streamed(spec: str, n: int) -> Result:
    """Bytes per client once N clients were checked with ids made one at a time
    and dropped after their check, as a service does with request data: the RSS
    growth is the subject's state alone, with whatever it keeps of each id.
    meshlimit keeps a 64-bit hash; limits' MemoryStorage its own key strings
    (which contain the id); a dict the id strings themselves. The fair
    comparison, in its own fresh process."""
    n, _ = sizes_for(spec, n, 0)
    run, close = build(spec, n)
    gc.collect()
    r0 = rss_bytes()
    admitted = run(f"client-{i:07d}" for i in range(n))
    close()
    gc.collect()
    return {"spec": spec, "keys": n, "admitted": bool(admitted), "streamed": (rss_bytes() - r0) / n}


def run_child(mode: str, spec: str, args: argparse.Namespace) -> Result:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", f"{mode}:{spec}"]
    cmd += ["--keys", str(args.keys), "--reps", str(args.reps), "--hot", str(args.hot)]
    t0 = time.monotonic()
    result = run_json_child(cmd, f"{mode}:{spec}", capture_stderr=True)
    print(f"  {mode:8} {spec:30} {time.monotonic() - t0:6.1f} s", file=sys.stderr, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=None, help="distinct clients (1,000,000)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per figure (5)")
    parser.add_argument("--hot", type=int, default=None, help="hot-key checks per repetition")
    parser.add_argument("--quick", action="store_true", help="100,000 keys, 3 repetitions")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.keys is None:
        args.keys = 100_000 if args.quick else 1_000_000
    if args.reps is None:
        args.reps = 3 if args.quick else 5
    if args.hot is None:
        args.hot = min(HOT_CHECKS, args.keys)

    if args.child:
        mode, _, spec = args.child.partition(":")
        if mode == "time":
            result = child_time(spec, args.keys, args.reps, args.hot)
        else:
            result = child_streamed(spec, args.keys)
        print(json.dumps(result))
        return

    started = time.monotonic()
    info = machine()
    print_header(args, info)
    print("running, one subprocess at a time:", file=sys.stderr, flush=True)
    times = {spec: run_child("time", spec, args) for spec in TIME_SPECS}
    streamed = {spec: run_child("streamed", spec, args) for spec in MEM_SPECS}
    info["loadavg_end"] = round(os.getloadavg()[0], 2)
    print_times(times)
    ratio_table = ratios(times)
    print_ratios(ratio_table)
    print_memory(times, streamed)
    elapsed = time.monotonic() - started
    print(f"total {elapsed:.0f} s; load average at end {info['loadavg_end']}")
    data = summary(args, info, times, ratio_table, streamed, elapsed)
    print("JSON " + json.dumps(data, separators=(",", ":")))


if __name__ == "__main__":
    main()
