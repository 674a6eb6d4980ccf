"""Tests for meshlimit.core.fastpath: the fused checks equal the full paths exactly.

Two engines take the same random sequence of checks, costs, rule changes, resets and
time steps (window rolls, clock steps back), one with the fused path and one without;
every decision and, after every step, every series' table bytes and counters must be
identical. Tables are made small (one bucket to start, one record per bucket, a few
clients at most, a sweep every few checks) so that splits, sweeps and evictions happen
within a short sequence. The cluster's fused counter check (``admit_counter``) is held
to ``CounterStore.check`` the same way, with other nodes' slots merged in.
"""

from __future__ import annotations

import contextlib
import functools
import struct
from collections.abc import Callable
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshlimit.core import fastpath as fastpath_module
from meshlimit.core import series as series_module
from meshlimit.core.counter_fastpath import admit_counter
from meshlimit.core.counters import CounterStore
from meshlimit.core.decision import NS_PER_S, Decision, make_decision
from meshlimit.core.engine import Engine
from meshlimit.core.fastpath import check_token, check_window
from meshlimit.core.hlc import Stamp
from meshlimit.core.rules import Rule, parse_rule
from meshlimit.core.series import WINDOW_RECORD, WindowSeries, new_series
from meshlimit.core.table import ClientTable

S = NS_PER_S
T0 = 1_700_000_040 * S
CLIENTS = [f"c{i}" for i in range(12)]
RULES = [
    "3/second",
    "3/second burst 2",
    "5/second",
    "2/second burst 1",
    "4/2s",
    "3/second algo fixed_window",
    "3/second burst 2 algo fixed_window",
    "5/second algo fixed_window",
    "3/second algo token_bucket",
    "3/second burst 2 algo token_bucket",
    "3/second shadow",
    "2/second;5/minute",
]
#: Time steps: none, within a window, across one or many windows, and back.
STEPS = [0, 0, 1, S // 7, S // 3, S - 1, S, S + S // 9, 2 * S + 5, 9 * S, -S // 5, -S, -3 * S]
COSTS = [0, 1, 1, 1, 1, 2, 3, 6]
#: Small tables (set on the series: ``small_engines``): a split every record or so,
#: evictions past a few clients; and a sweep every few checks (patched into both paths'
#: modules: ``small_tables``).
small_table = functools.partial(ClientTable, initial_buckets=1, load=1)
SWEEP_EVERY = 5

#: Mostly a few clients, so one client sees runs of checks; sometimes any, to fill tables.
clients = st.one_of(st.sampled_from(CLIENTS[:2]), st.sampled_from(CLIENTS))
checks = st.tuples(st.just("check"), clients, st.sampled_from(COSTS))
steps = st.tuples(st.just("step"), st.sampled_from(STEPS), st.just(0))
rules = st.tuples(st.just("rule"), st.sampled_from([None, *CLIENTS[:4]]), st.sampled_from(RULES))
resets = st.tuples(st.just("reset"), st.sampled_from(CLIENTS), st.just(0))
operations = st.lists(st.one_of(checks, checks, checks, steps, rules, resets), min_size=20)


def state(engine: Engine) -> dict[str, tuple[object, ...]]:
    """Everything a series holds: its table's bytes and counters, and its own."""
    out: dict[str, tuple[object, ...]] = {}
    for name, series in engine.series.items():
        t = series.table
        table = (
            [bytes(b) if b is not None else None for b in t._buckets],
            (t._count, t._split, t._low_mask, t._high_mask, t._sweep_at, t._evict_at),
            (t.evicted_dead, t.evicted_live, t.expired),
        )
        if isinstance(series, WindowSeries):
            own: tuple[object, ...] = (series._ops, series._now_idx, series.horizon)
        else:
            own = (series._ops, series._now_ns)
        out[name] = (table, own)
    return out


def engines(default: str, max_clients: int) -> tuple[Engine, Engine]:
    return (
        Engine(default, max_clients=max_clients, fast_path=True),
        Engine(default, max_clients=max_clients, fast_path=False),
    )


def small_tables() -> contextlib.ExitStack:
    """Series sweep often while this is entered (``SWEEP_EVERY`` is a module global in
    both paths' modules, read at each check, compiled or not)."""
    stack = contextlib.ExitStack()
    for module in (series_module, fastpath_module):
        stack.enter_context(mock.patch.object(module, "SWEEP_EVERY", SWEEP_EVERY))
    return stack


def small_engines(default: str, max_clients: int) -> tuple[Engine, Engine]:
    """:func:`engines` whose series, one for every series of :data:`RULES`, are made up
    front with small tables. Set on the series rather than patched into ``series``'s
    module: a compiled ``series`` (``docs/design.md``, "The native build") calls its
    ``ClientTable`` directly. Made as ``Engine.series_for`` makes them, less its
    ``note_rule``, which the rule's own application does later, as it would."""
    pair = engines(default, max_clients)
    for engine in pair:
        for text in RULES:
            for limit in parse_rule(text).limits:
                series = engine.series.get(limit.series)
                if series is None:
                    series = engine.series[limit.series] = new_series(
                        limit.algo, limit.window_ns, max_clients=max_clients
                    )
                assert not len(series.table)
                series.table = small_table(series.table.record_size, max_clients=max_clients)
    return pair


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(RULES), st.sampled_from([1, 3, 1000]), operations)
def test_the_fused_path_decides_and_stores_exactly_as_the_full_path(default, max_clients, ops):
    with small_tables():
        fast, full = small_engines(default, max_clients)
        replay(fast, full, ops, state)


def replay(
    fast: Engine, full: Engine, ops: list[tuple[str, Any, Any]], snapshot: Callable[[Engine], Any]
) -> None:
    """Run ``ops`` (checks, clock steps, rule changes, resets) through both engines: every
    answer the same, and ``snapshot`` of both the same after each step."""
    now, stamp = T0, 0
    for kind, arg, value in ops:
        if kind == "check":
            assert fast.check(arg, value, now_ns=now) == full.check(arg, value, now_ns=now)
        elif kind == "step":
            now += arg
        elif kind == "rule":
            stamp += 1
            key = "default" if arg is None else f"client:{arg}"
            for engine in (fast, full):
                engine.apply_rule(key, value, Stamp(stamp, 0, "n1"))
        else:
            assert fast.reset(arg) == full.reset(arg)
        assert snapshot(fast) == snapshot(full)


def test_the_fused_path_takes_the_common_cases_and_leaves_the_rest():
    """Admissions of new and known clients are fused; a refusal, a window roll and a
    clock step back are left to the full path (None). The fused functions are called as
    ``Engine.check`` calls them (not spied on through the engine's module: compiled, the
    engine calls them directly), the full path decides where they decline, and both
    agree with the reference engine throughout."""
    for text in ("2/second", "2/second algo fixed_window", "2/second algo token_bucket"):
        rule = parse_rule(text)
        fused = check_token if rule.algo == "token_bucket" else check_window
        fast, full = engines(text, 1000)
        series = fast.series[rule.series]
        taken = []
        for now in (T0, T0, T0, T0 + S, T0):
            before = state(fast)
            decision = fused(series, hash("acme"), rule, 1, now, "local")
            taken.append(decision is not None)
            if decision is None:
                assert state(fast) == before, "a declining fused check changed nothing"
                fast.fast_path = False
                decision = fast.check("acme", 1, now_ns=now)
                fast.fast_path = True
            assert decision == full.check("acme", 1, now_ns=now)
            assert state(fast) == state(full)
        if rule.algo == "token_bucket":
            # GCRA: in, in (the bucket just full), refused, in a second later; then
            # the clock steps back.
            assert taken == [True, True, False, True, False]
        else:
            # new, known (the last that fits), refused, a window roll, a step back.
            assert taken == [True, True, False, False, False]


def test_a_carried_burst_and_a_shrunk_burst_count_alike():
    """A window's over-use carried into the next (the carry holds it back, with or
    without a previous window's weight), and a rule whose burst shrank below it."""
    for algo in ("sliding_window", "fixed_window", "token_bucket"):
        for offset in (0, S // 3, S - 1):
            fast, full = engines(f"3/second burst 2 algo {algo}", 1000)
            times = [T0] * 6 + [T0 + S + offset] * 4 + [T0 + 3 * S + offset] * 7
            for i, now in enumerate(times):
                if i == 8:  # the burst shrinks under the carry just rolled in (and the
                    # limit grows, so a check still fits: the carry must be clamped)
                    for engine in (fast, full):
                        engine.apply_rule(
                            "default", f"10/second burst 1 algo {algo}", Stamp(1, 0, "n1")
                        )
                assert fast.check("acme", 1, now_ns=now) == full.check("acme", 1, now_ns=now)
                assert state(fast) == state(full)


def test_times_past_2_to_the_53_ns_are_left_to_the_full_path():
    """Windows over 104 days: compiled, ``ns / NS_PER_S`` divides two doubles, and a time
    past 2**53 ns is rounded before the division (``reset_after`` was 1 ulp off the full
    path's, ``10719960.0`` for ``10719959.999999998``); the fused checks leave those times
    to the full path, whose division is Python's."""
    for text in ("5/200d", "5/200d algo fixed_window", "3/200d burst 2 algo token_bucket"):
        fast, full = engines(text, 1000)
        for now in (T0 + 1, T0 + 1, T0 + 3 * S + 1, T0 + 200 * 86_400 * S - 1):
            for cost in (0, 1):
                assert fast.check("acme", cost, now_ns=now) == full.check("acme", cost, now_ns=now)
            assert state(fast) == state(full)


@pytest.mark.parametrize("offset", [12, 16])
def test_a_key_match_that_straddles_two_records_is_left_to_the_table(offset):
    """``bytearray.find`` may match a key across two records (at any offset, 8-aligned
    too); the fused path must not read that as a record: it leaves the check to the
    full path, having changed nothing, or (the C hot path, which compares record starts
    only) counts key 2's own record."""
    series = WindowSeries("fixed_window", S, max_clients=100)
    rule = parse_rule("100/second algo fixed_window")
    now_idx = T0 // S & 0xFFFFFFFF
    # Record 1's bytes offset..offset+8 spell key 2 (which shares its bucket): at 16 they
    # start with the current window's index, so a misread would look current and fit.
    fields = [now_idx, 1, now_idx, 9]
    fields[offset // 4 - 2 : offset // 4] = [now_idx, 9]
    key2 = int.from_bytes(struct.pack("<II", now_idx, 9), "little", signed=True)
    key1 = key2 & 63 | 64
    series.table.insert(key1, WINDOW_RECORD.pack(key1, *fields))
    series.table.insert(key2, WINDOW_RECORD.pack(key2, now_idx, 0, 0, 0))
    bucket = series.table._buckets[key2 & 63]
    assert bucket is not None and bucket.find(struct.pack("<q", key2)) == offset
    before = bytes(bucket)
    decision = check_window(series, key2, rule, 1, T0, "local")
    if decision is None:  # the Python fused path: the table's own search decides
        assert bytes(bucket) == before and series._ops == 0
        assert series.check(key2, 100, 0, 1, T0)[:2] == (True, 99)
    else:  # the C hot path (core/_hotpath.c) compares record starts only
        assert decision[:3] == (True, 100, 99)
    assert bucket[:24] == before[:24], "record 1 is untouched"
    assert WINDOW_RECORD.unpack_from(bucket, 24) == (key2, now_idx, 1, 0, 0)


def test_a_token_series_at_its_cap_evicts_and_sweeps_as_the_full_path_does():
    """The token series' insert (eviction at the cap) and sweep, shared by both paths."""
    with small_tables():
        fast, full = small_engines("2/second algo token_bucket", 3)
        for i in range(300):
            now = T0 + i * S // 2
            client = CLIENTS[i % 5]
            assert fast.check(client, 1, now_ns=now) == full.check(client, 1, now_ns=now)
            assert state(fast) == state(full)
    table = next(iter(fast.series.values())).table
    # Past the cap every insert evicts, dead records first; whether the sweep then finds any
    # left depends on the table's per-process hash layout, so only the total is certain.
    assert table.evicted_live + table.evicted_dead > 0
    assert table.evicted_dead + table.expired >= 250  # dead records went, one way or the other


# --- the cluster's counters (``admit_counter``) -----------------------------------------

#: Another node's slots merged into the counters: G-counters of two slots, as replicas hold.
merges = st.tuples(st.just("merge"), st.sampled_from(CLIENTS[:3]), st.sampled_from([1, 2, 5]))
counter_ops = st.lists(st.one_of(checks, checks, checks, steps, rules, resets, merges), min_size=20)


def counter_state(store: CounterStore) -> list[tuple[object, ...]]:
    """Every counter's fields, slots included."""
    return [
        (key, c.window, c.cur.slots(), c.prev.slots(), c.carry, c.tat) for key, c in store.items()
    ]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(RULES[:-1]), counter_ops)
def test_the_fused_counter_check_decides_and_counts_exactly_as_the_store(default, ops):
    """``admit_counter`` then, when it declines, ``CounterStore.check``, against the store's
    check alone: the same decisions, and the same counters after every step (slots of
    other nodes, window rolls, clock steps back, burst carries and refusals included)."""
    fused, full = CounterStore("n1"), CounterStore("n1")
    rule_of = {client: parse_rule(default) for client in CLIENTS}
    now = T0
    for kind, arg, value in ops:
        if kind == "check":
            rule = rule_of[arg]
            decision = admit_counter(fused, arg, rule, value, now, "owner")
            if decision is None:
                decision = _decided(fused.check(arg, rule, value, now_ns=now), rule)
            assert decision == _decided(full.check(arg, rule, value, now_ns=now), rule)
        elif kind == "step":
            now += arg
        elif kind == "rule":
            if arg is not None and ";" not in value:  # one limit: the node splits the rest
                rule_of[arg] = parse_rule(value)
        elif kind == "reset":
            windows = {rule_of[arg].series: rule_of[arg].window_ns}
            assert fused.reset(arg, windows) == full.reset(arg, windows)
        else:
            rule = rule_of[arg]
            if rule.algo != "token_bucket":
                window = now // rule.window_ns
                for store in (fused, full):
                    store.merge(arg, rule.series, window, (("n2", value),), window)
        assert counter_state(fused) == counter_state(full)


def _decided(outcome: tuple[bool, int, int, int], rule: Rule) -> Decision:
    allowed, remaining, reset_ns, retry_ns = outcome
    return make_decision(
        allowed, rule.limit, remaining, reset_ns, retry_ns, "owner", False, rule.window_ns
    )


def test_the_fused_counter_check_takes_admissions_of_known_clients_only():
    """A new client, a refusal, a window roll and a limit of 0 are the store's (None, and
    nothing changed); an admission of a known client in its window is fused."""
    for text in ("2/second", "2/second algo fixed_window", "2/second algo token_bucket"):
        store, rule = CounterStore("n1"), parse_rule(text)
        assert admit_counter(store, "acme", rule, 1, T0, "owner") is None  # new
        store.check("acme", rule, 1, now_ns=T0)
        assert admit_counter(store, "acme", rule, 1, T0, "owner") is not None
        before = counter_state(store)
        assert admit_counter(store, "acme", rule, 1, T0, "owner") is None  # refused
        assert counter_state(store) == before
        if rule.algo != "token_bucket":
            assert admit_counter(store, "acme", rule, 1, T0 + S, "owner") is None  # rolled
            assert counter_state(store) == before


def test_the_fused_counter_check_counts_a_carried_and_a_shrunk_burst_alike():
    """As for the engine: a carry rolled into the window (with and without a previous
    window's weight), then a rule whose burst shrank below it while its limit grew."""
    for algo in ("sliding_window", "fixed_window", "token_bucket"):
        for offset in (0, S // 3, S - 1):
            fused, full = CounterStore("n1"), CounterStore("n1")
            rule = parse_rule(f"3/second burst 2 algo {algo}")
            times = [T0] * 6 + [T0 + S + offset] * 4 + [T0 + 3 * S + offset] * 7
            for i, now in enumerate(times):
                if i == 8:
                    rule = parse_rule(f"10/second burst 1 algo {algo}")
                decision = admit_counter(fused, "acme", rule, 1, now, "owner")
                if decision is None:
                    decision = _decided(fused.check("acme", rule, 1, now_ns=now), rule)
                assert decision == _decided(full.check("acme", rule, 1, now_ns=now), rule)
                assert counter_state(fused) == counter_state(full)
