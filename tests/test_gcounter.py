"""Tests for meshlimit.core.gcounter: the G-counter CRDT laws and its compact layout."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshlimit.core.gcounter import GCounter

NODES = ["a", "b", "c", "d", "e"]
slot_maps = st.dictionaries(st.sampled_from(NODES), st.integers(0, 1_000), max_size=5)
counters = slot_maps.map(GCounter)


def test_increment_get_total_and_items():
    c = GCounter()
    assert c.total == 0 and len(c) == 0 and c.slots() == {}
    c.increment("a")
    c.increment("a", 4)
    c.increment("b", 2)
    assert c.get("a") == 5 and c.get("b") == 2 and c.get("z") == 0
    assert c.total == 7
    assert len(c) == 2
    assert dict(c.items()) == {"a": 5, "b": 2} == c.slots()
    assert repr(c) == "GCounter({'a': 5, 'b': 2})"


def test_zero_slots_are_not_stored():
    assert GCounter({"a": 0, "b": 0}) == GCounter()
    assert len(GCounter({"a": 0, "b": 3})) == 1
    c = GCounter()
    c.increment("a", 0)
    assert len(c) == 0 and not c.merge_slot("b", 0)


def test_merge_slot_only_raises():
    c = GCounter({"a": 5})
    assert not c.merge_slot("a", 3)
    assert not c.merge_slot("a", 5)
    assert c.merge_slot("a", 6)
    assert c.merge_slot("b", 1)
    assert not c.merge_slot("b", 1)
    assert c.slots() == {"a": 6, "b": 1}


def test_negative_slots_and_decrements_are_refused():
    with pytest.raises(ValueError, match="negative"):
        GCounter({"a": -1})
    c = GCounter({"a": 3})
    with pytest.raises(ValueError, match="negative"):
        c.merge_slot("b", -5)
    with pytest.raises(ValueError, match="negative"):
        c.merge_slot("a", -1)
    with pytest.raises(AssertionError):
        c.increment("a", -1)
    assert c.slots() == {"a": 3}


def test_a_single_slot_counter_allocates_no_dict():
    c = GCounter({"owner": 3})
    assert c._more is None
    c.increment("owner", 10)
    c.merge(GCounter({"owner": 20}))
    c.merge(GCounter())
    assert c._more is None
    assert c.copy()._more is None
    assert c.delta({})._more is None
    c.increment("other")
    assert c._more == {"other": 1}
    assert c.slots() == {"owner": 20, "other": 1}


def test_copy_is_independent():
    c = GCounter({"a": 1, "b": 2})
    d = c.copy()
    d.increment("b", 5)
    d.increment("c")
    assert c.slots() == {"a": 1, "b": 2}
    assert d.slots() == {"a": 1, "b": 7, "c": 1}


def test_counters_are_not_hashable_and_compare_by_slots():
    with pytest.raises(TypeError):
        hash(GCounter())
    assert GCounter({"a": 1, "b": 2}) == GCounter({"b": 2, "a": 1})
    assert GCounter({"a": 1}) != GCounter({"a": 2})
    assert GCounter() != {}


def test_delta_pinned():
    c = GCounter({"a": 5, "b": 2, "c": 7})
    assert c.delta({"a": 5, "b": 1}).slots() == {"b": 2, "c": 7}
    assert c.delta(c.slots()) == GCounter()


# -- laws --------------------------------------------------------------------------------


@settings(max_examples=200)
@given(counters, counters)
def test_merge_is_commutative(a, b):
    assert a.merged(b) == b.merged(a)
    assert a.merged(b).total == b.merged(a).total


@settings(max_examples=200)
@given(counters, counters, counters)
def test_merge_is_associative(a, b, c):
    assert a.merged(b).merged(c) == a.merged(b.merged(c))


@settings(max_examples=200)
@given(counters, counters)
def test_merge_is_idempotent(a, b):
    ab = a.merged(b)
    assert ab.merged(b) == ab
    assert ab.merged(ab) == ab
    again = ab.copy()
    assert not again.merge(b)
    assert not again.merge(ab)


@settings(max_examples=200)
@given(counters, counters)
def test_merge_is_monotone(a, b):
    before = a.copy()
    grew = a.merge(b)
    assert a.total >= before.total
    assert all(a.get(n) >= before.get(n) for n in NODES)
    assert all(a.get(n) >= b.get(n) for n in NODES)
    assert all(a.get(n) == max(before.get(n), b.get(n)) for n in NODES)
    assert grew == (a != before)


@settings(max_examples=200)
@given(counters, st.lists(st.tuples(st.sampled_from(NODES), st.integers(0, 50)), max_size=20))
def test_delta_since_an_earlier_state_brings_that_state_up_to_date(start, increments):
    since = start.slots()
    full = start.copy()
    for node, amount in increments:
        full.increment(node, amount)
    behind = GCounter(since)
    behind.merge(full.delta(since))
    assert behind == full
    assert all(count > since.get(node, 0) for node, count in full.delta(since).items())


@settings(max_examples=200)
@given(counters, slot_maps)
def test_delta_against_any_view_merges_to_the_join(full, since):
    view = GCounter(since)
    view.merge(full.delta(since))
    assert view == full.merged(GCounter(since))


@settings(max_examples=200)
@given(st.lists(counters, max_size=6), st.randoms(use_true_random=False))
def test_gossip_in_any_order_with_duplicates_converges(states, rnd):
    expected = GCounter()
    for s in states:
        expected.merge(s)
    deliveries = states + states[: len(states) // 2]
    rnd.shuffle(deliveries)
    got = GCounter()
    for s in deliveries:
        got.merge(s)
    assert got == expected
