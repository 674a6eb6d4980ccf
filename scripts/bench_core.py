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
import glob
import json
import os
import platform
import statistics
import struct
import subprocess
import sys
import sysconfig
import time

#: A fixed wall-clock instant (2023-11-14 22:13:20 UTC) for the injected clock.
NOW_NS = 1_700_000_000 * 1_000_000_000
#: High enough that no workload here is ever refused: every check admits and records.
LIMIT = 10_000_000
ALGOS = ("sliding_window", "fixed_window", "token_bucket")
#: limits strategies by short name, and the meshlimit algorithm each pairs with
#: (the moving window is exact, so the nearest meshlimit semantics is the sliding window).
LIMITS_CLASSES = {
    "sliding": "SlidingWindowCounterRateLimiter",
    "fixed": "FixedWindowRateLimiter",
    "moving": "MovingWindowRateLimiter",
}
LIMITS_PAIR = {"sliding": "sliding_window", "fixed": "fixed_window", "moving": "sliding_window"}
#: Hot-key checks per repetition: one key stays in cache, so 100k are plenty.
HOT_CHECKS = 100_000
#: limits' moving window keeps one object per hit in a per-key list that it
#: prepends to (O(hits in window) per check), and its expiry thread walks every
#: key's list: it runs on fewer keys and hot-key checks to keep the run short.
MOVING_KEYS = 100_000
MOVING_HOT_CHECKS = 10_000
#: Enough for CPython 3.11's specializing interpreter to settle, small enough
#: to leave the heap untouched before the memory baseline.
WARMUP_CHECKS = 2_000

TIME_SPECS = (
    ["base:empty", "base:dict", "base:floor"]
    + [f"engine:{a}" for a in ALGOS]
    + [f"limiter-fixed:{a}" for a in ALGOS]
    + [f"limiter-real:{a}" for a in ALGOS]
    + [f"limits:{s}" for s in LIMITS_CLASSES]
)
MEM_SPECS = ["base:dict"] + [f"engine:{a}" for a in ALGOS] + [f"limits:{s}" for s in LIMITS_CLASSES]

LABELS = {
    "base:empty": "baseline: empty for-loop",
    "base:dict": "baseline: d[k] = d.get(k, 0) + 1",
    "base:floor": "floor: hash+find+unpack/pack",
    "engine": "meshlimit Engine",
    "limiter-fixed": "meshlimit Limiter, fixed clock",
    "limiter-real": "meshlimit Limiter, real clock",
    "limits:sliding": "limits SlidingWindowCounter",
    "limits:fixed": "limits FixedWindow",
    "limits:moving": "limits MovingWindow",
}


def label(spec: str) -> str:
    if spec in LABELS:
        return LABELS[spec]
    kind, _, algo = spec.partition(":")
    return f"{LABELS[kind]} {algo}"


def make_ids(n: int) -> list[str]:
    """The key stream: ``client-0000000`` ... (64-byte str objects), in creation order."""
    return [f"client-{i:07d}" for i in range(n)]


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# --- subjects ---------------------------------------------------------------------------------
#
# build(spec) makes a fresh instance and returns (run, close): run(keys) checks
# every key once and returns whether the last check was admitted; close() stops
# anything the instance left running. Each loop is written out the same way so
# every subject pays the same loop cost.


def _noop() -> None:
    pass


def build(spec: str, n_keys: int):
    kind, _, name = spec.partition(":")
    if kind == "base":
        return _build_base(name, n_keys)
    if kind == "limits":
        return _build_limits(name)
    return _build_meshlimit(kind, name)


def _build_base(name: str, n_keys: int):
    if name == "empty":

        def run(keys):
            r = None
            for k in keys:
                r = k
            return r is not None

        return run, _noop
    if name == "dict":
        d: dict[str, int] = {}

        def run(keys):
            r = None
            for k in keys:
                d[k] = r = d.get(k, 0) + 1
            return r is not None

        return run, _noop
    assert name == "floor"
    check = floor_table(n_keys)

    def run(keys):
        r = None
        for k in keys:
            r = check(k)
        return r

    return run, _noop


def floor_table(n_keys: int):
    """The least a check can do with meshlimit's layout in pure Python: hash the
    id, pick a bucket, ``find`` the 8-byte key, unpack the 24-byte record and
    pack it back (or append a new one). No rule, no limit arithmetic, no result
    object, no table growth (the bucket count is fixed for ``n_keys``)."""
    size = 1
    while size * 12 < n_keys:  # meshlimit's load: about 12 records per bucket
        size *= 2
    buckets = [bytearray() for _ in range(size)]
    mask = size - 1
    pack_key = struct.Struct("<q").pack
    record = struct.Struct("<qIIII")
    unpack_from, pack_into, pack = record.unpack_from, record.pack_into, record.pack

    def check(client: str) -> bool:
        h = hash(client)
        b = buckets[h & mask]
        pos = b.find(pack_key(h))
        if pos >= 0:
            _, idx, cur, prev, carry = unpack_from(b, pos)
            pack_into(b, pos, h, idx, cur + 1, prev, carry)
        else:
            b += pack(h, 0, 1, 0, 0)
        return True

    return check


def _build_meshlimit(kind: str, algo: str):
    from meshlimit.core.engine import Engine

    from meshlimit import Limiter

    rule = f"{LIMIT}/day algo {algo}"
    if kind == "engine":
        engine = Engine(rule)
        check = engine.check
        now_ns = NOW_NS

        def run(keys):
            r = None
            for k in keys:
                r = check(k, 1, now_ns=now_ns)
            return r.allowed

        run.engine = engine  # type: ignore[attr-defined]
        return run, _noop
    if kind == "limiter-fixed":
        limiter = Limiter(rule, clock=lambda: NOW_NS)
    else:
        assert kind == "limiter-real"
        limiter = Limiter(rule)
    check = limiter.check

    def run(keys):
        r = None
        for k in keys:
            r = check(k)
        return r.allowed

    run.engine = limiter._engine  # type: ignore[attr-defined]
    return run, _noop


def _build_limits(name: str):
    from limits import RateLimitItemPerDay, strategies
    from limits.storage import MemoryStorage

    storage = MemoryStorage()
    hit = getattr(strategies, LIMITS_CLASSES[name])(storage).hit
    item = RateLimitItemPerDay(LIMIT)

    def run(keys):
        r = None
        for k in keys:
            r = hit(item, k)
        return r

    def close() -> None:
        # The expiry thread re-arms itself on every write; wait out its last sweep.
        storage.timer.cancel()
        storage.timer.join()

    return run, close


def table_bytes(run) -> float | None:
    """meshlimit's buckets as ``sys.getsizeof`` sees them (no allocator overhead)."""
    engine = getattr(run, "engine", None)
    if engine is None:
        return None
    total = 0
    for series in engine.series.values():
        buckets = series.table._buckets
        total += sys.getsizeof(buckets) + sum(sys.getsizeof(b) for b in buckets if b)
    return total


# --- children ---------------------------------------------------------------------------------


def sizes_for(spec: str, n: int, hot: int) -> tuple[int, int]:
    """(distinct keys, hot-key checks) for a subject."""
    if spec == "limits:moving":
        return min(n, MOVING_KEYS), min(hot, MOVING_HOT_CHECKS)
    return n, hot


def time_pass(run, keys) -> tuple[int, int, bool]:
    """(CPU ns, wall ns, last check admitted) for one pass over ``keys``."""
    c0, w0 = time.process_time_ns(), time.perf_counter_ns()
    admitted = run(keys)
    wall = time.perf_counter_ns() - w0
    return time.process_time_ns() - c0, wall, bool(admitted)


def child_time(spec: str, n: int, reps: int, hot: int) -> dict:
    """Time one subject, and measure its memory with the caller holding its ids.

    Memory: r0 with the empty instance built; r1 after the caller's N id
    strings (and the lists holding them) exist; r2 after pass 1 and
    ``gc.collect()``. ids alone = r1 - r0; state only = r2 - r1 (what the
    subject allocated: the ids existed before); state + caller's ids = r2 - r0
    ("key included").
    """
    n, hot = sizes_for(spec, n, hot)
    out: dict = {"spec": spec, "keys": n, "hot_checks": hot}
    admitted = True

    # Warm-up on a throw-away instance: insert and hit paths, and the hot key.
    run, close = build(spec, n)
    warm = [f"warm-{i}" for i in range(WARMUP_CHECKS)]
    for _ in range(3):
        run(warm)
    close()
    del run, close, warm

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


def child_streamed(spec: str, n: int) -> dict:
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


def run_child(mode: str, spec: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", f"{mode}:{spec}"]
    cmd += ["--keys", str(args.keys), "--reps", str(args.reps), "--hot", str(args.hot)]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"child {mode}:{spec} failed with exit code {proc.returncode}")
    print(f"  {mode:8} {spec:30} {time.monotonic() - t0:6.1f} s", file=sys.stderr, flush=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- report -----------------------------------------------------------------------------------


def machine() -> dict:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    caches = []
    for index in sorted(glob.glob("/sys/devices/system/cpu/cpu0/cache/index*")):
        try:
            with (
                open(f"{index}/level") as f,
                open(f"{index}/size") as g,
                open(f"{index}/type") as h,
            ):
                kind = h.read().strip()
                if kind != "Instruction":
                    caches.append(f"L{f.read().strip()} {g.read().strip()}")
        except OSError:
            pass
    config = sysconfig.get_config_var("CONFIG_ARGS") or ""
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "pgo_lto": "--enable-optimizations" in config or "--with-lto" in config,
        "nproc": os.cpu_count(),
        "cpu": model,
        "cache": ", ".join(caches),
        "platform": platform.platform(),
        "loadavg_start": round(os.getloadavg()[0], 2),
    }


def med(values: list[float]) -> float:
    return statistics.median(values)


def cell(values: list[float]) -> str:
    return f"{med(values):7.0f} {min(values):6.0f}-{max(values):<6.0f}"


def stretch(res: dict) -> float:
    """Median wall/CPU over every timed sample of a subject (1.0 on an idle machine)."""
    factors = [
        w / c
        for phase in ("hot", "insert", "hit")
        for c, w in zip(res[phase], res[phase + "_wall"], strict=True)
        if c
    ]
    return med(factors)


def print_header(args: argparse.Namespace, info: dict) -> None:
    moving_keys, moving_hot = sizes_for("limits:moving", args.keys, args.hot)
    print("meshlimit core benchmark: in-process checks")
    print(f"command: .venv/bin/python scripts/bench_core.py {' '.join(sys.argv[1:])}".rstrip())
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


def print_times(times: dict[str, dict]) -> None:
    width = 44
    print(
        f"{'ns per check (CPU)':{width}} {'hot key':>20} {'distinct: insert':>20} "
        f"{'distinct: hit':>20} {'wall/cpu':>8}"
    )
    print(f"{'':{width}} {'median  min-max':>20} {'median  min-max':>20} {'median  min-max':>20}")
    print("-" * (width + 3 * 21 + 9))
    for spec, res in times.items():
        name = label(spec)
        if spec == "limits:moving":
            name = f"{name} ({res['keys'] // 1000}k keys)"
        note = "" if res["admitted"] else "  (!) a check was refused"
        print(
            f"{name:{width}} {cell(res['hot']):>20} {cell(res['insert']):>20} "
            f"{cell(res['hit']):>20} {stretch(res):8.2f}{note}"
        )
        if spec in ("base:floor", "engine:token_bucket", "limiter-fixed:token_bucket"):
            print()
    print()


def ratios(times: dict[str, dict]) -> dict[str, dict[str, float]]:
    out = {}
    for name, algo in LIMITS_PAIR.items():
        theirs = times[f"limits:{name}"]
        for kind in ("limiter-real", "engine"):
            ours = times[f"{kind}:{algo}"]
            out[f"limits:{name}/{kind}:{algo}"] = {
                phase: med(theirs[phase]) / med(ours[phase]) for phase in ("hot", "insert", "hit")
            }
    return out


def print_ratios(table: dict[str, dict[str, float]]) -> None:
    print("ratio of medians, limits / meshlimit (> 1: meshlimit faster)")
    head = f"{'limits strategy':22} {'meshlimit':36} {'hot':>5} {'insert':>6} {'hit':>6}"
    print(head)
    print("-" * len(head))
    for key, r in table.items():
        theirs, ours = key.split("/")
        kind, _, algo = ours.partition(":")
        api = "Limiter, real clock" if kind == "limiter-real" else "Engine"
        strategy = LIMITS_CLASSES[theirs.split(":")[1]].removesuffix("RateLimiter")
        print(
            f"{strategy:22} {api + ' ' + algo:36} {r['hot']:5.1f} {r['insert']:6.1f} {r['hit']:6.1f}"
        )
    print("(token_bucket has no counterpart in limits. MovingWindow pairs with sliding_window, the")
    print(" nearest meshlimit semantics, and ran on fewer keys than meshlimit: see above.)")
    print()


def print_memory(times: dict[str, dict], streamed: dict[str, dict]) -> None:
    width = 36
    head = (
        f"{'bytes per client (RSS growth)':{width}} {'clients':>9} {'ids alone':>9} "
        f"{'state only':>10} {'state+ids':>9} {'streamed':>8} {'getsizeof':>9}"
    )
    print(head)
    print("-" * len(head))
    for spec, s in streamed.items():
        m = times[spec]["memory"]
        name = "baseline: dict[str, int]" if spec == "base:dict" else label(spec)
        size = f"{m['getsizeof']:9.0f}" if "getsizeof" in m else f"{'':9}"
        print(
            f"{name:{width}} {s['keys']:>9,} {m['ids']:9.0f} {m['state']:10.0f} "
            f"{m['state_ids']:9.0f} {s['streamed']:8.0f} {size}"
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


def summary(args, info, times, ratio_table, streamed, elapsed) -> dict:
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
        "ns_cpu_median": {s: {p: round(med(r[p])) for p in phases} for s, r in times.items()},
        "ns_wall_median": {
            s: {p: round(med(r[p + "_wall"])) for p in phases} for s, r in times.items()
        },
        "ns_cpu_insert_mean": {s: round(r["insert_mean"]) for s, r in times.items()},
        "ratio_median": {k: {p: round(v, 2) for p, v in r.items()} for k, r in ratio_table.items()},
        "bytes_per_client": memory,
        "all_admitted": all(r["admitted"] for r in times.values()),
        "seconds": round(elapsed),
    }


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
