"""Tests for meshlimit.core.hlc: hybrid-logical-clock stamps as pure values."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from meshlimit.core.hlc import NS_PER_MS, ZERO, Stamp, drift_ms, next_stamp, observe

nodes = st.sampled_from(["", "a", "b", "node-1"])
stamps = st.builds(Stamp, st.integers(0, 50), st.integers(0, 5), nodes)
nows = st.integers(0, 60 * NS_PER_MS)


def test_next_stamp_follows_the_wall_clock():
    assert next_stamp(ZERO, "a", now_ns=5 * NS_PER_MS) == Stamp(5, 0, "a")
    assert next_stamp(Stamp(5, 3, "b"), "a", now_ns=6 * NS_PER_MS + 999_999) == Stamp(6, 0, "a")


def test_next_stamp_counts_within_a_millisecond_and_when_the_clock_goes_back():
    assert next_stamp(Stamp(5, 0, "a"), "a", now_ns=5 * NS_PER_MS + 1) == Stamp(5, 1, "a")
    assert next_stamp(Stamp(5, 1, "a"), "a", now_ns=2 * NS_PER_MS) == Stamp(5, 2, "a")
    # From a fresh clock at time zero the first stamp is still after ZERO.
    assert next_stamp(ZERO, "local", now_ns=0) == Stamp(0, 1, "local") > ZERO


def test_observe_pinned_examples():
    ms = NS_PER_MS
    # Our wall clock is ahead of both: it wins and the counter resets.
    assert observe(Stamp(5, 3, "a"), Stamp(7, 9, "b"), "a", now_ns=8 * ms) == Stamp(8, 0, "a")
    # The remote is ahead: take its wall time and count past it.
    assert observe(Stamp(5, 3, "a"), Stamp(7, 9, "b"), "a", now_ns=6 * ms) == Stamp(7, 10, "a")
    # Our last stamp is ahead: count past it.
    assert observe(Stamp(9, 3, "a"), Stamp(7, 9, "b"), "a", now_ns=6 * ms) == Stamp(9, 4, "a")
    # Both on the same millisecond: count past the larger counter.
    assert observe(Stamp(7, 3, "a"), Stamp(7, 9, "b"), "a", now_ns=7 * ms) == Stamp(7, 10, "a")
    assert observe(Stamp(7, 12, "a"), Stamp(7, 9, "b"), "a", now_ns=2 * ms) == Stamp(7, 13, "a")
    # The wall clock equals the last stamp's time but not the remote's.
    assert observe(Stamp(7, 3, "a"), Stamp(4, 9, "b"), "a", now_ns=7 * ms) == Stamp(7, 4, "a")
    assert observe(Stamp(4, 3, "a"), Stamp(7, 9, "b"), "a", now_ns=7 * ms) == Stamp(7, 10, "a")


def test_stamps_order_by_wall_then_counter_then_node():
    assert Stamp(1, 9, "z") < Stamp(2, 0, "a")
    assert Stamp(2, 0, "z") < Stamp(2, 1, "a")
    assert Stamp(2, 1, "a") < Stamp(2, 1, "b")
    assert Stamp(0, 0, "a") > ZERO


def test_drift_ms():
    assert drift_ms(Stamp(1_005, 0, "b"), now_ns=1_000 * NS_PER_MS) == 5
    assert drift_ms(Stamp(995, 7, "b"), now_ns=1_000 * NS_PER_MS + 999_999) == -5


@settings(max_examples=200)
@given(stamps, st.lists(st.integers(0, 10**12), min_size=1, max_size=30), nodes)
def test_next_stamp_is_strictly_monotone_whatever_the_clock_does(start, clock, node):
    last = start
    for now_ns in clock:
        stamp = next_stamp(last, node, now_ns=now_ns)
        assert stamp > last
        assert stamp.node == node
        assert stamp.wall_ms >= now_ns // NS_PER_MS
        assert stamp.wall_ms == max(last.wall_ms, now_ns // NS_PER_MS)
        last = stamp


@settings(max_examples=200)
@given(stamps, stamps, nodes, nows)
def test_observe_is_after_both_inputs_and_the_wall_clock(last, remote, node, now_ns):
    stamp = observe(last, remote, node, now_ns=now_ns)
    assert stamp > last
    assert stamp > remote
    assert stamp.node == node
    assert stamp.wall_ms == max(last.wall_ms, remote.wall_ms, now_ns // NS_PER_MS)


@settings(max_examples=200)
@given(st.lists(st.tuples(st.booleans(), stamps, nows), max_size=30), nodes)
def test_a_clock_fed_local_and_remote_events_never_goes_back(events, node):
    last = ZERO
    for is_remote, remote, now_ns in events:
        if is_remote:
            stamp = observe(last, remote, node, now_ns=now_ns)
            assert stamp > remote
        else:
            stamp = next_stamp(last, node, now_ns=now_ns)
        assert stamp > last
        last = stamp
