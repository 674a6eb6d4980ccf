"""Cluster counters (core/counters.py): the burst carry survives every way a counter rolls.

A counter's carry is as of the start of its current window. A check rolls it on the
rule's numbers; a merge of a newer window's gossip, or a degraded quota check, rolls it
too and must settle the carry the same way, or the next full check spends the burst again.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from meshlimit.core.counters import CounterStore
from meshlimit.core.rules import Rule

S = 1_000_000_000
RULES = [
    Rule(10, S, 5, "fixed_window"),
    Rule(10, S, 5, "sliding_window"),
    Rule(4, S, 7, "fixed_window"),
    Rule(3, S, 0, "sliding_window"),
]


def _numbers_for(rule: Rule):  # type: ignore[no-untyped-def]
    def numbers(series: str, client: str) -> tuple[int, int]:
        return (rule.limit, rule.burst) if series == rule.series else (0, 0)

    return numbers


def _admit(store: CounterStore, rule: Rule, n: int, now_ns: int, **kw: int) -> int:
    return sum(store.check("c", rule, 1, now_ns=now_ns, **kw)[0] for _ in range(n))  # type: ignore[misc]


def test_a_merge_into_a_new_window_settles_the_carry() -> None:
    rule = RULES[0]
    store = CounterStore("a")
    assert _admit(store, rule, 20, 0) == 15  # limit + burst after idling; carry is now 5
    # Another node's admission in window 1 arrives before any check here in window 1.
    store.merge("c", rule.series, 1, (("b", 1),), 1, _numbers_for(rule))
    # Window 1 holds limit + burst - carry - merged = 10 + 5 - 5 - 1 = 9, not 14.
    assert _admit(store, rule, 20, S) == 9


def test_a_degraded_quota_check_settles_the_carry() -> None:
    rule = RULES[0]
    store = CounterStore("a")
    assert _admit(store, rule, 15, 0) == 15
    # Cut off from the owner in window 1: one admission from the local quota.
    assert store.check("c", rule, 1, now_ns=S, capacity=3)[0]
    # Healed within window 1: the burst spent in window 0 is still carried.
    assert _admit(store, rule, 20, S + 1) == 10 + 5 - 5 - 1


@settings(max_examples=300, deadline=None)
@given(
    rule=st.sampled_from(RULES),
    steps=st.lists(
        st.tuples(
            st.integers(0, 2),  # 0: local checks, 1: a peer's slot merged, 2: a quota check
            st.integers(0, 4 * S),  # time advance
            st.integers(1, 12),  # how many checks, or the peer's count
            st.integers(-1, 1),  # the merged slot's window relative to now
        ),
        max_size=30,
    ),
)
def test_merges_roll_exactly_as_a_check_would(rule: Rule, steps: list) -> None:  # type: ignore[type-arg]
    """Every decision equals a reference store whose counter a zero-cost check rolled to
    the present before each merge (the check path rolls exactly)."""
    store, reference = CounterStore("a"), CounterStore("a")
    numbers = _numbers_for(rule)
    now, peer = 0, 0
    for kind, advance, amount, offset in steps:
        now += advance
        idx = now // rule.window_ns
        if kind == 1:
            window = max(0, idx + offset)
            peer = max(peer, amount)
            reference.check("c", rule, 0, now_ns=now)
            for target in (store, reference):
                target.merge("c", rule.series, window, (("b", peer),), idx, numbers)
        elif kind == 2:
            got = [store.check("c", rule, 1, now_ns=now, capacity=2) for _ in range(amount)]
            want = [reference.check("c", rule, 1, now_ns=now, capacity=2) for _ in range(amount)]
            assert got == want
        else:
            got = [store.check("c", rule, 1, now_ns=now) for _ in range(amount)]
            want = [reference.check("c", rule, 1, now_ns=now) for _ in range(amount)]
            assert got == want


def test_a_late_reset_keeps_the_windows_begun_since_it() -> None:
    """A reset issued at 2.98 s that reaches this node at 3.12 s (after a pause) clears
    the counts from before it, not the 21 admitted in the window begun at 3 s since (fuzz
    seed 777002355: the node admitted 21 more in that window)."""
    rule = Rule(20, S, 1, "fixed_window")
    store = CounterStore("a")
    assert _admit(store, rule, 30, 2 * S) == 21
    assert _admit(store, rule, 30, 3 * S + 121_000_000) == 20  # carry 1
    store.reset("c", {rule.series: rule.window_ns}, 2 * S + 980_000_000)
    assert _admit(store, rule, 30, 3 * S + 122_000_000) == 1  # the carry forgiven, no more
    store.reset("c", {rule.series: rule.window_ns}, 3 * S + 500_000_000)
    assert _admit(store, rule, 30, 3 * S + 600_000_000) == 21  # a reset within the window


def test_a_reset_forgets_token_buckets_unless_a_window_past_it() -> None:
    rule = Rule(5, S, 0, "token_bucket")
    store = CounterStore("a")
    assert _admit(store, rule, 10, 10 * S) == 5  # the arrival time is now 11 s
    store.reset("c", {rule.series: rule.window_ns}, 9 * S)  # a window before: kept
    assert _admit(store, rule, 10, 10 * S) == 0
    store.reset("c", {rule.series: rule.window_ns}, 10 * S + S // 2)
    assert _admit(store, rule, 10, 10 * S + S // 2) == 5
    store.reset("c", {rule.series: rule.window_ns})
    assert store.get(rule.series, "c") is None
