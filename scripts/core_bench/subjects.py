"""The subjects of the core benchmark: meshlimit's Engine and Limiter, limits' in-memory
strategies, and calibration baselines, each built fresh for one child process.

``build(spec, n_keys)`` makes a fresh instance and returns ``(run, close)``: ``run(keys)``
checks every key once and returns whether the last check was admitted; ``close()`` stops
anything the instance left running. Each loop is written out the same way so every
subject pays the same loop cost.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable, Iterable
from typing import Any

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

#: Checks every key once; whether the last check was admitted.
Run = Callable[[Iterable[str]], bool]
Built = tuple[Run, Callable[[], None]]


def label(spec: str) -> str:
    if spec in LABELS:
        return LABELS[spec]
    kind, _, algo = spec.partition(":")
    return f"{LABELS[kind]} {algo}"


def sizes_for(spec: str, n: int, hot: int) -> tuple[int, int]:
    """(distinct keys, hot-key checks) for a subject."""
    if spec == "limits:moving":
        return min(n, MOVING_KEYS), min(hot, MOVING_HOT_CHECKS)
    return n, hot


def _noop() -> None:
    pass


def build(spec: str, n_keys: int) -> Built:
    kind, _, name = spec.partition(":")
    if kind == "base":
        return _build_base(name, n_keys)
    if kind == "limits":
        return _build_limits(name)
    return _build_meshlimit(kind, name)


def _build_base(name: str, n_keys: int) -> Built:
    if name == "empty":

        def run_empty(keys: Iterable[str]) -> bool:
            r = None
            for k in keys:
                r = k
            return r is not None

        return run_empty, _noop
    if name == "dict":
        d: dict[str, int] = {}

        def run_dict(keys: Iterable[str]) -> bool:
            r = None
            for k in keys:
                d[k] = r = d.get(k, 0) + 1
            return r is not None

        return run_dict, _noop
    assert name == "floor"
    check = floor_table(n_keys)

    def run_floor(keys: Iterable[str]) -> bool:
        r = False
        for k in keys:
            r = check(k)
        return r

    return run_floor, _noop


def floor_table(n_keys: int) -> Callable[[str], bool]:
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


def _build_meshlimit(kind: str, algo: str) -> Built:
    from meshlimit import Limiter
    from meshlimit.core.engine import Engine

    rule = f"{LIMIT}/day algo {algo}"
    if kind == "engine":
        engine = Engine(rule)
        check = engine.check
        now_ns = NOW_NS

        def run_engine(keys: Iterable[str]) -> bool:
            r: Any = None
            for k in keys:
                r = check(k, 1, now_ns=now_ns)
            return bool(r.allowed)

        run_engine.engine = engine  # type: ignore[attr-defined]
        return run_engine, _noop
    if kind == "limiter-fixed":
        limiter = Limiter(rule, clock=lambda: NOW_NS)
    else:
        assert kind == "limiter-real"
        limiter = Limiter(rule)
    limiter_check = limiter.check

    def run(keys: Iterable[str]) -> bool:
        r: Any = None
        for k in keys:
            r = limiter_check(k)
        return bool(r.allowed)

    run.engine = limiter._engine  # type: ignore[attr-defined]
    return run, _noop


def _build_limits(name: str) -> Built:
    from limits import RateLimitItemPerDay, strategies
    from limits.storage import MemoryStorage

    storage = MemoryStorage()
    hit = getattr(strategies, LIMITS_CLASSES[name])(storage).hit
    item = RateLimitItemPerDay(LIMIT)

    def run(keys: Iterable[str]) -> bool:
        r = False
        for k in keys:
            r = hit(item, k)
        return r

    def close() -> None:
        # The expiry thread re-arms itself on every write; wait out its last sweep.
        storage.timer.cancel()
        storage.timer.join()

    return run, close


def table_bytes(run: Run) -> float | None:
    """meshlimit's buckets as ``sys.getsizeof`` sees them (no allocator overhead)."""
    engine = getattr(run, "engine", None)
    if engine is None:
        return None
    total = 0
    for series in engine.series.values():
        buckets = series.table._buckets
        total += sys.getsizeof(buckets) + sum(sys.getsizeof(b) for b in buckets if b)
    return total
