"""Tests for meshlimit.core.algorithms: the limiting algorithms as pure functions.

The window algorithms are driven the way the series drives them: state is
stored only when a request is admitted with a positive cost. Every property
is checked against arbitrary sequences of (time step, cost), including times
whose window index crosses the 32-bit wrap of the stored index.
"""

from __future__ import annotations

from collections import Counter
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshlimit.core.algorithms import (
    BACKWARDS_GAP,
    WINDOW_MASK,
    _windows_to_drain,
    fixed_window,
    roll_window,
    sliding_window,
    stepped_back,
    token_bucket,
)

FRESH = (0, 0, 0, 0)
algos = pytest.mark.parametrize("decide", [fixed_window, sliding_window], ids=["fixed", "sliding"])


# -- pinned values -----------------------------------------------------------------------


def test_roll_window_pinned():
    assert roll_window(5, 7, 3, 2, 10, 5, 5) == (7, 3, 2)  # same window: unchanged
    assert roll_window(5, 12, 3, 2, 10, 5, 6) == (0, 12, 4)  # over-use of 4 carried
    assert roll_window(5, 7, 3, 2, 10, 5, 6) == (0, 7, 0)  # under the limit: carry paid off
    assert roll_window(5, 15, 0, 5, 10, 5, 6) == (0, 15, 5)  # the carry is capped at burst
    assert roll_window(5, 15, 0, 5, 10, 5, 7) == (0, 0, 0)  # two windows pay 20 off
    assert roll_window(5, 15, 0, 5, 10, 50, 7) == (0, 0, 0)
    assert roll_window(5, 40, 0, 10, 10, 50, 7) == (0, 0, 30)
    assert roll_window(5, 12, 3, 0, 10, 0, 6) == (0, 12, 0)  # no burst: no carry
    # The stored index is 32 bits; the gap is taken modulo 2**32.
    assert roll_window(WINDOW_MASK, 12, 3, 2, 10, 5, 2**32) == (0, 12, 4)
    assert roll_window(WINDOW_MASK, 12, 3, 2, 10, 5, 2**32 + 1) == (0, 0, 0)


def test_windows_to_drain_pinned():
    assert _windows_to_drain(0, 10, 15, 10) == 0
    assert _windows_to_drain(5, 10, 15, 10) == 0
    assert _windows_to_drain(6, 10, 15, 10) == 1
    assert _windows_to_drain(30, 15, 15, 10) == 3
    assert _windows_to_drain(31, 15, 15, 10) == 4


def test_fixed_window_pinned():
    # limit 10 per 1000 ns: now 5500 is 500 ns into window 5.
    assert fixed_window(*FRESH, 10, 0, 1000, 3, 5500) == (True, 5, 3, 0, 0, 7, 500, 0)
    assert fixed_window(5, 10, 0, 0, 10, 0, 1000, 1, 5500) == (False, 5, 10, 0, 0, 0, 500, 500)
    assert fixed_window(5, 10, 0, 0, 10, 0, 1000, 11, 5500)[7] == -1  # can never fit
    assert fixed_window(5, 10, 0, 0, 10, 0, 1000, 10, 6000) == (True, 6, 10, 10, 0, 0, 1000, 0)
    # With burst 5: 15 at once, then the carry of 5 holds the next window to 10.
    assert fixed_window(*FRESH, 10, 5, 1000, 15, 5500) == (True, 5, 15, 0, 0, 0, 500, 0)
    assert fixed_window(5, 15, 0, 0, 10, 5, 1000, 11, 6000) == (
        False, 6, 0, 15, 5, 10, 1000, 1000,
    )  # fmt: skip
    assert fixed_window(5, 15, 0, 0, 10, 5, 1000, 15, 7000)[0]


def test_sliding_window_pinned():
    # 4 counted in window 5; 250 ns into window 6, three quarters of them still weigh 3.
    assert sliding_window(5, 4, 0, 0, 10, 0, 1000, 7, 6250) == (True, 6, 7, 4, 0, 0, 750, 0)
    refused = sliding_window(5, 4, 0, 0, 10, 0, 1000, 8, 6250)
    assert refused == (False, 6, 0, 4, 0, 7, 750, 250)
    assert sliding_window(5, 4, 0, 0, 10, 0, 1000, 8, 6500)[0]
    assert sliding_window(5, 4, 0, 0, 10, 0, 1000, 11, 6500)[7] == -1
    # With a burst, the carry holds back more than the weighted previous window.
    assert sliding_window(5, 15, 0, 0, 10, 5, 1000, 11, 6900) == (
        False, 6, 0, 15, 5, 10, 100, 100,
    )  # fmt: skip


def test_token_bucket_pinned():
    # limit 10 per 1000 ns: one token every 100 ns, depth 10.
    assert token_bucket(0, 10, 0, 1000, 10, 5000) == (True, 6000, 0, 1000, 0)
    assert token_bucket(6000, 10, 0, 1000, 1, 5000) == (False, 6000, 0, 1000, 100)
    assert token_bucket(6000, 10, 0, 1000, 1, 5100) == (True, 6100, 0, 1000, 0)
    assert token_bucket(6000, 10, 0, 1000, 11, 5100)[4] == -1
    # The emission interval rounds up: 3 per 10 ns is one per 4 ns, never faster.
    assert token_bucket(0, 3, 0, 10, 3, 100) == (True, 112, 0, 12, 0)
    assert token_bucket(0, 10, 5, 1000, 15, 5000) == (True, 6500, 0, 1500, 0)


def fresh(now_ns: int, window_ns: int) -> tuple[int, int, int, int]:
    """A new client's state, as the series makes it: empty, two windows back."""
    return (now_ns // window_ns - 2) & WINDOW_MASK, 0, 0, 0


def test_a_window_index_crossing_the_32_bit_wrap_rolls_as_one_window():
    window = 1000
    last = (2**32 - 1) * window + 10  # the last window before the stored index wraps
    out = fixed_window(*fresh(last, window), 10, 0, window, 10, last)
    allowed, idx, cur, prev, carry = out[:5]
    assert allowed and idx == WINDOW_MASK and out[6] == window - 10
    # 100 ns into the next window 9 of the previous 10 still weigh: one more fits.
    assert not sliding_window(idx, cur, prev, carry, 10, 0, window, 1, 2**32 * window + 99)[0]
    out = sliding_window(idx, cur, prev, carry, 10, 0, window, 1, 2**32 * window + 100)
    assert out[:5] == (True, 0, 1, 10, 0)
    assert not fixed_window(idx, cur, prev, carry, 10, 0, window, 1, last + 1)[0]
    assert fixed_window(idx, cur, prev, carry, 10, 0, window, 10, last + window)[0]


@algos
def test_a_clock_stepping_back_over_a_window_boundary_keeps_the_counts(decide):
    window = 1000
    now = 5000 * window + 10
    state = decide(*fresh(now, window), 10, 0, window, 7, now)[1:5]
    for back in (20, window, 1000 * window):
        refused = decide(*state, 10, 0, window, 4, now - back)
        assert not refused[0]
        assert refused[1:5] == state  # still counting in the newer window
        admitted = decide(*state, 10, 0, window, 3, now - back)
        assert admitted[0] and admitted[1:5] == (5000, 10, 0, 0)
    # Once time is back in the newer window the counts are all there.
    assert not decide(*admitted[1:5], 10, 0, window, 1, now + 1)[0]


def test_a_clock_stepping_back_beyond_the_tolerance_is_a_long_gap():
    window = 1000
    now = (BACKWARDS_GAP + 10) * window  # far enough from 0 that "back" is unambiguous
    state = fixed_window(*fresh(now, window), 10, 0, window, 10, now)[1:5]
    assert not fixed_window(*state, 10, 0, window, 1, now - (WINDOW_MASK - BACKWARDS_GAP) * window)[
        0
    ]
    far = now - (WINDOW_MASK - BACKWARDS_GAP + 1) * window
    assert fixed_window(*state, 10, 0, window, 10, far)[0]
    assert stepped_back(5, 4) and stepped_back(0, WINDOW_MASK) and not stepped_back(5, 6)


# -- scenarios ---------------------------------------------------------------------------

WINDOWS = [1, 2, 3, 7, 10, 1000, 60 * 10**9]
#: Examples per property: each walks up to 50 checks, several probes per check.
EXAMPLES = 150


@st.composite
def window_scenarios(draw):
    limit = draw(st.integers(1, 12))
    burst = draw(st.one_of(st.just(0), st.integers(0, 3 * limit), st.integers(0, 40)))
    window = draw(st.sampled_from(WINDOWS))
    base = draw(
        st.sampled_from(
            [0, 1_700_000_000_123_456_789, (2**32 - 3) * window + window // 3, 2**33 * window]
        )
    )
    # Steps up to ``span``; about a fifth of them are 0 (checks at the same instant).
    span = draw(st.sampled_from([window, 3 * window, (3 + burst // limit) * window]))
    step = st.integers(-span // 4, span).map(lambda x: max(0, x))
    steps = draw(st.lists(st.tuples(step, st.integers(0, limit + burst + 2)), max_size=50))
    return limit, burst, window, base, steps


def walk(decide, limit, burst, window, base, steps):
    """Drive ``decide`` like the series; yield ``(now, cost, state_before, outcome)``."""
    state = None
    now = base
    for step, cost in steps:
        now += step
        if state is None:
            state = fresh(now, window)
        out = decide(*state, limit, burst, window, cost, now)
        yield now, cost, state, out
        if out[0] and cost:
            state = out[1:5]


def admitted_per_window(decide, scenario) -> Counter:
    limit, burst, window, base, steps = scenario
    admitted: Counter = Counter()
    for now, cost, _, out in walk(decide, *scenario):
        if out[0]:
            admitted[now // window] += cost
    return admitted


@algos
@settings(max_examples=EXAMPLES)
@given(window_scenarios())
def test_windows_admit_at_most_k_limits_plus_burst(decide, scenario):
    limit, burst = scenario[:2]
    admitted = admitted_per_window(decide, scenario)
    # Any single aligned window: at most limit + burst.
    assert all(total <= limit + burst for total in admitted.values())
    # Any k consecutive aligned windows: at most k * limit + burst.
    indexes = sorted(admitted)
    for i, first in enumerate(indexes):
        total = 0
        for last in indexes[i:]:
            total += admitted[last]
            assert total <= (last - first + 1) * limit + burst, (first, last, admitted)


class WindowModel:
    """What the counts must be: admissions per window and the carry, tracked directly."""

    def __init__(self, limit: int, burst: int, window: int) -> None:
        self.limit, self.burst, self.window = limit, burst, window
        self.admitted: Counter = Counter()
        self.at: int | None = None  # the window the carry below is for
        self.carry = 0

    def carry_into(self, idx: int) -> int:
        if self.at is not None and idx > self.at:
            # The window ``at`` passes its over-use on (capped at burst); each empty
            # window after it pays ``limit`` off.
            carry = min(self.burst, max(0, self.carry + self.admitted[self.at] - self.limit))
            self.carry = max(0, carry - (idx - self.at - 1) * self.limit)
        self.at = idx
        return self.carry

    def fits(self, decide, cost: int, now: int) -> bool:
        idx, elapsed = divmod(now, self.window)
        carry = self.carry_into(idx)
        cur, prev = self.admitted[idx], self.admitted[idx - 1]
        used = Fraction(cur + cost)
        if decide is sliding_window:
            used += max(Fraction(prev * (self.window - elapsed), self.window), carry)
        else:
            used += carry
        return used <= self.limit + self.burst


@algos
@settings(max_examples=EXAMPLES)
@given(window_scenarios())
def test_decisions_and_counts_match_an_independent_model(decide, scenario):
    limit, burst, window, _, _ = scenario
    model = WindowModel(limit, burst, window)
    for now, cost, state, out in walk(decide, *scenario):
        assert out[0] == model.fits(decide, cost, now), (now, cost, state, out)
        idx = now // window
        # The returned (rolled) state is exactly the model's counts.
        assert out[1] == idx & WINDOW_MASK
        assert out[2] == model.admitted[idx] + (cost if out[0] else 0)
        assert out[4] == model.carry
        if decide is sliding_window:
            assert out[3] == model.admitted[idx - 1]
        if out[0]:
            model.admitted[idx] += cost


@algos
@settings(max_examples=EXAMPLES)
@given(window_scenarios())
def test_refusals_and_zero_cost_checks_change_nothing(decide, scenario):
    limit, burst, window, _, _ = scenario
    for now, cost, state, out in walk(decide, *scenario):
        peek = decide(*state, limit, burst, window, 0, now)
        assert peek[0] and peek[7] == 0
        if not out[0]:
            # A refusal returns the state a peek sees: nothing of its cost counted.
            assert out[1:6] == peek[1:6]
        # Storing a peek's (rolled) state would not change any later decision.
        for later in (now, now + window // 2, now + window, now + 3 * window):
            for probe in (1, cost, limit + burst):
                assert decide(*peek[1:5], limit, burst, window, probe, later) == decide(
                    *state, limit, burst, window, probe, later
                )


@algos
@settings(max_examples=EXAMPLES)
@given(window_scenarios(), st.integers(0, 3), st.floats(0, 1, exclude_max=True))
def test_after_idling_a_client_spends_exactly_limit_plus_burst_at_once(
    decide, scenario, extra, offset
):
    limit, burst, window, base, steps = scenario
    last = base
    state = fresh(base, window)
    for now, cost, _, out in walk(decide, *scenario):
        if out[0] and cost:
            last, state = now, out[1:5]
    idle = 2 + -(-burst // limit) + extra
    now = (last // window + idle) * window + int(offset * window)
    capacity = limit + burst
    spent = decide(*state, limit, burst, window, capacity, now)
    assert spent[0] and spent[5] == 0
    assert not decide(*spent[1:5], limit, burst, window, 1, now)[0]
    too_much = decide(*state, limit, burst, window, capacity + 1, now)
    assert not too_much[0] and too_much[7] == -1
    assert decide(*state, limit, burst, window, 0, now)[5] == capacity


@algos
@settings(max_examples=EXAMPLES)
@given(window_scenarios())
def test_retry_after_is_exactly_when_the_refused_cost_first_fits(decide, scenario):
    limit, burst, window, _, _ = scenario
    for now, cost, state, out in walk(decide, *scenario):
        retry = out[7]
        if out[0]:
            assert retry == 0
        elif cost > limit + burst:
            assert retry == -1
        else:
            assert retry > 0
            assert decide(*state, limit, burst, window, cost, now + retry)[0], (state, now)
            assert not decide(*state, limit, burst, window, cost, now + retry - 1)[0]


@algos
@settings(max_examples=EXAMPLES)
@given(window_scenarios())
def test_remaining_is_what_would_be_admitted_right_now(decide, scenario):
    limit, burst, window, _, _ = scenario
    for now, cost, state, out in walk(decide, *scenario):
        allowed, remaining, reset_ns = out[0], out[5], out[6]
        after = out[1:5] if allowed and cost else state
        assert 0 <= remaining <= limit + burst
        assert 0 < reset_ns <= window
        assert reset_ns == window - now % window
        assert decide(*after, limit, burst, window, remaining, now)[0]
        assert not decide(*after, limit, burst, window, remaining + 1, now)[0]


@settings(max_examples=EXAMPLES)
@given(window_scenarios())
def test_fixed_window_without_burst_is_the_textbook_counter(scenario):
    limit, _, window, base, steps = scenario
    admitted: Counter = Counter()
    for now, cost, _, out in walk(fixed_window, limit, 0, window, base, steps):
        assert out[0] == (admitted[now // window] + cost <= limit)
        if out[0]:
            admitted[now // window] += cost


# -- token bucket ------------------------------------------------------------------------


@st.composite
def bucket_scenarios(draw):
    limit = draw(st.integers(1, 12))
    burst = draw(st.one_of(st.just(0), st.integers(0, 3 * limit), st.integers(0, 40)))
    window = draw(st.sampled_from([1, 3, 10, 999, 1000, 60 * 10**9]))
    base = draw(st.sampled_from([1, 10**6, 1_700_000_000_123_456_789]))
    span = draw(st.sampled_from([window // limit + 1, 3 * window]))
    step = st.integers(-span // 4, span).map(lambda x: max(0, x))
    steps = draw(st.lists(st.tuples(step, st.integers(0, limit + burst + 2)), max_size=50))
    tat = draw(st.sampled_from([0, base // 2, base]))  # a fresh client, or one long idle
    return limit, burst, window, base, steps, tat


def walk_bucket(limit, burst, window, base, steps, tat):
    now = base
    for step, cost in steps:
        now += step
        out = token_bucket(tat, limit, burst, window, cost, now)
        yield now, cost, tat, out
        if out[0] and cost:
            tat = out[1]


@settings(max_examples=EXAMPLES)
@given(bucket_scenarios())
def test_token_bucket_never_beats_the_sustained_rate(scenario):
    limit, burst, window = scenario[:3]
    admissions = [(now, cost) for now, cost, _, out in walk_bucket(*scenario) if out[0] and cost]
    for i, (t0, _) in enumerate(admissions):
        total = 0
        for t1, cost in admissions[i:]:
            total += cost
            # admitted <= (limit + burst) + (t1 - t0) * limit / window, in integers.
            assert total * window <= (limit + burst) * window + (t1 - t0) * limit


@settings(max_examples=EXAMPLES)
@given(bucket_scenarios(), st.integers(0, 10**12))
def test_token_bucket_after_idling_spends_exactly_limit_plus_burst(scenario, idle):
    limit, burst, window = scenario[:3]
    tat, now = scenario[5], scenario[3]
    for at, cost, _, out in walk_bucket(*scenario):
        now = at
        if out[0] and cost:
            tat = out[1]
    now = max(now, tat) + idle
    capacity = limit + burst
    spent = token_bucket(tat, limit, burst, window, capacity, now)
    assert spent[0] and spent[2] == 0
    assert not token_bucket(spent[1], limit, burst, window, 1, now)[0]
    assert token_bucket(tat, limit, burst, window, capacity + 1, now)[4] == -1
    assert token_bucket(tat, limit, burst, window, 0, now)[2] == capacity


@settings(max_examples=EXAMPLES)
@given(bucket_scenarios())
def test_token_bucket_refusals_and_peeks_leave_tat_alone(scenario):
    limit, burst, window = scenario[:3]
    for now, _, tat, out in walk_bucket(*scenario):
        peek = token_bucket(tat, limit, burst, window, 0, now)
        assert peek[0] and peek[1] == max(tat, now)
        if not out[0]:
            # max(tat, now) and tat are the same state from ``now`` on.
            assert out[1] == max(tat, now)
            assert out[1:4] == peek[1:4]


@settings(max_examples=EXAMPLES)
@given(bucket_scenarios())
def test_token_bucket_retry_after_is_exact(scenario):
    limit, burst, window = scenario[:3]
    for now, cost, tat, out in walk_bucket(*scenario):
        retry = out[4]
        if out[0]:
            assert retry == 0
        elif cost > limit + burst:
            assert retry == -1
        else:
            assert retry > 0
            assert token_bucket(tat, limit, burst, window, cost, now + retry)[0]
            assert not token_bucket(tat, limit, burst, window, cost, now + retry - 1)[0]


@settings(max_examples=EXAMPLES)
@given(bucket_scenarios())
def test_token_bucket_remaining_and_reset(scenario):
    limit, burst, window = scenario[:3]
    interval = -(-window // limit)
    for now, cost, tat, out in walk_bucket(*scenario):
        allowed, new_tat, remaining, reset_ns, _ = out
        after = new_tat if allowed and cost else tat
        assert 0 <= remaining <= limit + burst
        assert token_bucket(after, limit, burst, window, remaining, now)[0]
        assert not token_bucket(after, limit, burst, window, remaining + 1, now)[0]
        # reset_after: until the bucket is full again.
        assert reset_ns == max(after, now) - now
        assert reset_ns <= (limit + burst) * interval
