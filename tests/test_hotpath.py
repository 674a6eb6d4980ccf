"""Tests for the C hot path (``core/_hotpath.c``): its answers are exactly the pure path's.

Skipped where it is not loaded (no native build, ``MESHLIMIT_PURE``, an edited source:
``tests/test_native.py`` tests that choice). Three levels:

- the C function alone, on a window series holding one record of random fields, against
  the series' own ``check`` (the reference) on a copy: where C answers, the same
  decision and the same table bytes; where it declines (None), nothing changed;
- two engines, one taking the fused path (C first) and one the full path, through random
  sequences of checks, costs, rules (limits, bursts, windows of a second to 200 days),
  resets and time steps across window boundaries: every decision, and the tables' bytes
  after every step, equal;
- which cases C takes and which it leaves to Python.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_fastpath import replay

from meshlimit.core import fastpath as fastpath_module
from meshlimit.core import series as series_module
from meshlimit.core.decision import NS_PER_S, allowed_decision
from meshlimit.core.engine import Engine
from meshlimit.core.rules import MAX_COUNT, Rule, parse_rule
from meshlimit.core.series import WINDOW_RECORD, WindowSeries, new_series
from meshlimit.core.table import ClientTable

try:
    from meshlimit.core._hotpath import check_window as hot_window
except ImportError as error:
    pytest.skip(f"the C hot path is not loaded ({error})", allow_module_level=True)

S = NS_PER_S
DAY = 86_400 * S
T0 = 1_700_000_040 * S
KEY = -0x5EED_0000_0000_0001  # negative: the bucket address of a negative hash

#: Windows of a second, a day (a product prev * rest_ns past 64 bits) and 200 days (past
#: 2**53 ns: C declines, one double division would not be exact).
windows = st.sampled_from([S, 3 * S, DAY, 200 * DAY])
counts = st.one_of(st.integers(0, 5), st.integers(0, MAX_COUNT))
#: The record's window against now's: mostly the same (what C takes), or a roll either way.
window_steps = st.sampled_from([0, 0, 0, 0, -1, 1, -2])
hashes = st.integers(-(2**63), 2**63 - 1)


def table_bytes(series: WindowSeries) -> list[bytes | None]:
    return [None if b is None else bytes(b) for b in series.table._buckets]


def one_record_series(algo: str, window_ns: int, others: list[int], at: int, record: bytes):
    """A window series whose small table (a split per record: any bucket count) holds
    ``record`` (of :data:`KEY`), inserted after ``at`` of ``others`` and before the rest."""
    series = WindowSeries(algo, window_ns, max_clients=1000)
    series.table = ClientTable(WINDOW_RECORD.size, initial_buckets=1, load=1)
    for i, key in enumerate([*others[:at], KEY, *others[at:]]):
        # Neighbours with KEY's low bits share its bucket whatever the bucket count.
        key = key if i % 2 else (key & ~0xFFFF) | (KEY & 0xFFFF)
        if key == KEY and i != at:
            continue
        series.table.insert(key, record if i == at else WINDOW_RECORD.pack(key, 0, 1, 2, 3))
    return series


@settings(max_examples=500, deadline=None)
@given(
    algo=st.sampled_from(["sliding_window", "fixed_window"]),
    window_ns=windows,
    limit=st.one_of(st.integers(1, 5), st.integers(1, MAX_COUNT)),
    burst=st.one_of(st.just(0), st.integers(0, 3), st.integers(0, MAX_COUNT)),
    fields=st.tuples(window_steps, counts, counts, st.one_of(st.integers(-3, 1), counts)),
    cost=st.one_of(st.integers(0, 3), st.integers(0, MAX_COUNT)),
    offset=st.one_of(st.sampled_from([0, 1, -1]), st.integers(-2 * S, 2 * S)),
    others=st.lists(hashes, max_size=40, unique=True),
    at=st.integers(0, 40),
)
def test_the_c_check_answers_as_the_series_or_declines_changing_nothing(
    algo, window_ns, limit, burst, fields, cost, offset, others, at
):
    burst = min(burst, MAX_COUNT - limit)
    rule = Rule(limit, window_ns, burst, algo)
    now = T0 - T0 % window_ns + offset  # near a window boundary
    window_step, cur, prev, carry = fields
    carry = max(0, burst + carry) if carry <= 1 else carry  # about the burst, or any
    idx = (now // window_ns + window_step) & 0xFFFFFFFF
    record = WINDOW_RECORD.pack(KEY, idx, cur, prev, carry)
    at = min(at, len(others))
    series, reference = (one_record_series(algo, window_ns, others, at, record) for _ in "ab")
    before = table_bytes(series)

    decision = hot_window(series.table._buckets, KEY, rule, series.sliding, cost, now, "local")
    if decision is None:
        assert table_bytes(series) == before
        return
    allowed, remaining, reset_ns, _ = reference.check(KEY, limit, burst, cost, now)
    assert allowed
    expected = allowed_decision(limit, min(remaining, limit), reset_ns, "local", window_ns)
    assert decision == expected
    assert [type(field) for field in decision] == [type(field) for field in expected]
    assert table_bytes(series) == table_bytes(reference)


@pytest.mark.parametrize("window_ns", [3 * S, DAY, 104 * DAY])
@pytest.mark.parametrize("prev", [1, 1023, 1024, 2**20 + 7, 2**31 + 3, MAX_COUNT - 3])
def test_the_weight_of_any_previous_count_is_exact(window_ns, prev):
    """``ceil(prev * rest_ns / window_ns)`` in 64 bits for a small ``prev``, 128 past it
    (the product reaches 2**85), at instants where it is not whole: the ``remaining``
    shown is the series' own."""
    rule = Rule(MAX_COUNT, window_ns, 0, "sliding_window")
    start = T0 - T0 % window_ns
    for offset in (1, window_ns // 3, window_ns // 2 + 1, window_ns - 1):
        record = WINDOW_RECORD.pack(KEY, start // window_ns & 0xFFFFFFFF, 2, prev, 0)
        series, reference = (one_record_series(rule.algo, window_ns, [], 0, record) for _ in "ab")
        decision = hot_window(series.table._buckets, KEY, rule, True, 1, start + offset, "local")
        allowed, remaining, reset_ns, _ = reference.check(KEY, MAX_COUNT, 0, 1, start + offset)
        assert allowed and decision is not None, (offset, allowed)
        assert decision == allowed_decision(MAX_COUNT, remaining, reset_ns, "local", window_ns)
        assert table_bytes(series) == table_bytes(reference)


CLIENTS = [f"c{i}" for i in range(10)]
RULES = [
    "3/second",
    "3/second burst 2",
    "1000/second burst 9",
    "4/3s algo fixed_window",
    "2/second burst 1 algo fixed_window",
    "50000/day burst 7",
    "4000000000/day",
    "5/200d",
    "3/second algo token_bucket",
    "3/200d burst 2 algo token_bucket",
]
#: Steps within a window, to just before and after boundaries, across and back.
STEPS = [0, 1, S // 3, S - 1, S, 2 * S + 7, DAY - 1, DAY, -1, -S // 2, -S]
COSTS = [0, 1, 1, 1, 1, 2, 5, 1000, MAX_COUNT]
clients = st.one_of(st.sampled_from(CLIENTS[:2]), st.sampled_from(CLIENTS))
checks = st.tuples(st.just("check"), clients, st.sampled_from(COSTS))
operations = st.lists(
    st.one_of(
        checks,
        checks,
        checks,
        st.tuples(st.just("step"), st.sampled_from(STEPS), st.just(0)),
        st.tuples(st.just("rule"), st.sampled_from([None, *CLIENTS[:3]]), st.sampled_from(RULES)),
        st.tuples(st.just("reset"), st.sampled_from(CLIENTS), st.just(0)),
    ),
    min_size=10,
)


def engine_bytes(engine: Engine) -> dict[str, object]:
    """Every series' table bytes and counters, and its own."""
    return {
        name: (
            [None if b is None else bytes(b) for b in s.table._buckets],
            (len(s.table), s.table.evicted_dead, s.table.evicted_live, s.table.expired),
            s._ops,
        )
        for name, s in engine.series.items()
    }


def small_engine(default: str, max_clients: int, fast_path: bool) -> Engine:
    """An engine whose series (one per series of :data:`RULES`) have small tables: a split
    per record, evictions past ``max_clients``."""
    engine = Engine(default, max_clients=max_clients, fast_path=fast_path)
    for text in RULES:
        limit = parse_rule(text)
        if limit.series not in engine.series:
            engine.series[limit.series] = new_series(
                limit.algo, limit.window_ns, max_clients=max_clients
            )
        series = engine.series[limit.series]
        series.table = ClientTable(series.table.record_size, max_clients=max_clients, load=1)
    return engine


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(RULES), st.sampled_from([3, 1000]), operations)
def test_an_engine_with_the_c_path_decides_and_stores_as_the_full_path(default, cap, ops):
    with sweeping_often():
        fast, full = (small_engine(default, cap, fast_path) for fast_path in (True, False))
        run(fast, full, ops)


def sweeping_often() -> contextlib.ExitStack:
    """A sweep every 5 checks (a module global of both paths, read at each check)."""
    stack = contextlib.ExitStack()
    for module in (series_module, fastpath_module):
        stack.enter_context(mock.patch.object(module, "SWEEP_EVERY", 5))
    return stack


def run(fast: Engine, full: Engine, ops: list[tuple[str, Any, Any]]) -> None:
    replay(fast, full, ops, engine_bytes)


def hot_check(series: WindowSeries, rule: Any, now: int, cost: int = 1) -> object:
    return hot_window(series.table._buckets, KEY, rule, series.sliding, cost, now, "local")


def test_c_takes_admissions_of_known_clients_in_their_window_and_leaves_the_rest():
    for algo in ("sliding_window", "fixed_window"):
        rule = Rule(2, S, 0, algo)
        series = WindowSeries(algo, S, max_clients=100)
        hot = functools.partial(hot_check, series, rule)

        assert hot(T0) is None  # a new client: the insert is Python's
        series.check(KEY, 2, 0, 1, T0)
        assert hot(T0 + 1) == (True, 2, 0, (S - 1) / S, 0.0, "local", False, S)
        before = table_bytes(series)
        assert hot(T0 + 2) is None  # refused: Python works out the retry time
        assert hot(T0 + S) is None  # the next window: a roll
        assert hot(T0 - S) is None  # the clock stepped back a window
        assert hot(-1) is None  # a time before 1970
        assert hot_check(series, Rule(2, 200 * DAY, 0, algo), T0) is None  # past 2**53 ns
        assert table_bytes(series) == before
        assert hot(T0 + 3, cost=0) == (True, 2, 0, (S - 3) / S, 0.0, "local", False, S)
        with pytest.raises(AttributeError):
            hot_check(series, "2/second", T0)  # no rule: an error, not an answer
        assert table_bytes(series) == before
