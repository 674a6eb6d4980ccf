"""Tests for meshlimit.core.deadlines: keys come out by second, never before they are due."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from meshlimit.core.deadlines import Deadlines, second_of


def test_second_of_is_the_first_whole_second_at_or_after():
    assert [second_of(ms) for ms in (0, 1, 999, 1000, 1001, -1)] == [0, 1, 1, 1, 2, 0]


def test_items_come_out_earliest_second_first_and_buckets_go_when_empty():
    deadlines = Deadlines()
    assert deadlines.first_ms() is None and len(deadlines) == 0
    for due_ms, key in ((5500, "late"), (1200, "a"), (1900, "b"), (3000, "c")):
        deadlines.add(due_ms, key)
    assert deadlines.first_ms() == 2000 and len(deadlines) == 4
    assert {deadlines.pop(), deadlines.pop()} == {(2, "a"), (2, "b")}
    assert deadlines.first_ms() == 3000 and deadlines.pop() == (3, "c")
    assert deadlines.pop() == (6, "late") and deadlines.first_ms() is None
    deadlines.add(10, "x")
    deadlines.rebuild([(4000, "y")])
    assert deadlines.keys() == {"y"} and len(deadlines) == 1


@settings(max_examples=200)
@given(st.lists(st.tuples(st.integers(-10_000, 10_000), st.text(max_size=3)), max_size=50))
def test_every_item_comes_out_once_in_second_order_never_early(items):
    deadlines = Deadlines()
    for due_ms, key in items:
        deadlines.add(due_ms, key)
    out = []
    while deadlines:
        first = deadlines.first_ms()
        second, key = deadlines.pop()
        assert first == second * 1000
        out.append((second, key))
    assert [s for s, _ in out] == sorted(s for s, _ in out)
    # Each item comes out in its own second: the first whole one at or after it is due.
    assert sorted(out) == sorted((second_of(due), key) for due, key in items)
