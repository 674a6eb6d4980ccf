"""Tests for meshlimit.core.engine and meshlimit.core.series: rules plus counting state."""

from __future__ import annotations

import math

import pytest

from meshlimit.core.decision import NS_PER_S, PATHS, Decision, make_decision
from meshlimit.core.engine import Engine
from meshlimit.core.hlc import Stamp
from meshlimit.core.rules import MAX_COUNT, parse_rule
from meshlimit.core.series import SWEEP_EVERY, TokenSeries, WindowSeries, new_series

S = NS_PER_S
T0 = 1_700_000_040 * S  # a whole minute: windows of 1 s and 1 minute start here


class Writer:
    """Hands out increasing stamps, as a node's clock would."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> Stamp:
        self.n += 1
        return Stamp(self.n, 0, "n1")


def peek(engine: Engine, client: str, now_ns: int) -> Decision:
    return engine.check(client, 0, now_ns=now_ns)


def room(engine: Engine, client: str, now_ns: int) -> int:
    """What ``client`` may spend at once, the burst included: the series' own answer
    (a decision caps ``remaining`` at the limit)."""
    rule = engine.registry.resolve(client)
    outcome = engine.series[rule.series].check(hash(client), rule.limit, rule.burst, 0, now_ns)
    return outcome[1]


def spend(engine: Engine, client: str, times: int, now_ns: int) -> int:
    return sum(engine.check(client, 1, now_ns=now_ns).allowed for _ in range(times))


def series_of(engine: Engine, rule: str) -> WindowSeries | TokenSeries:
    return engine.series[parse_rule(rule).series]


# -- decisions ---------------------------------------------------------------------------


def test_make_decision_maps_nanoseconds_to_seconds():
    assert make_decision(True, 10, 3, 1_500_000_000, 0) == Decision(True, 10, 3, 1.5, 0.0)
    refused = make_decision(False, 10, 0, S, 250_000_000, "owner", window_ns=S)
    assert refused == Decision(False, 10, 0, 1.0, 0.25, "owner", window_ns=S)
    assert make_decision(False, 10, 0, S, -1).retry_after == math.inf
    assert Decision(True, 1, 0, 0.0, 0.0).path == "local" and "local" in PATHS


def test_a_check_counts_and_refuses_with_retry_after():
    engine = Engine("3/second")
    decisions = [engine.check("acme", 1, now_ns=T0 + S // 4) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    assert all(d.limit == 3 and d.path == "local" for d in decisions)
    assert decisions[0] == Decision(True, 3, 2, 0.75, 0.0, "local", window_ns=S)
    # Sliding window: the 3 counted weigh fully until the next window starts, then fade.
    assert decisions[3].retry_after == pytest.approx(0.75 + 1 / 3)
    assert engine.check("acme", 1, now_ns=T0 + S + S // 3 + 1).allowed
    assert engine.check("other", 1, now_ns=T0).allowed  # clients are independent


def test_cost_zero_peeks_and_cost_over_capacity_is_never_allowed():
    engine = Engine("10/second burst 5")
    assert room(engine, "acme", T0) == 15
    assert peek(engine, "acme", T0).remaining == 10  # capped at the limit
    assert engine.client_count() == 0  # a peek stores nothing
    never = engine.check("acme", 16, now_ns=T0)
    assert not never.allowed and never.retry_after == math.inf
    assert engine.check("acme", 15, now_ns=T0).allowed
    assert peek(engine, "acme", T0).remaining == 0
    assert engine.check("acme", 0, now_ns=T0).allowed


def test_path_is_passed_through():
    engine = Engine("1/second")
    assert engine.check("a", 1, now_ns=T0, path="owner").path == "owner"
    assert engine.check("a", 1, now_ns=T0, path="forwarded").path == "forwarded"


@pytest.mark.parametrize(
    ("cost", "error"),
    [(-1, ValueError), (MAX_COUNT + 1, ValueError), (1.0, TypeError), (True, TypeError)]
    + [("1", TypeError), (None, TypeError)],
)
def test_bad_costs_are_refused(cost, error):
    with pytest.raises(error, match="cost"):
        Engine().check("acme", cost, now_ns=T0)


@pytest.mark.parametrize(
    ("client", "error"),
    [("", ValueError), ("x" * 257, ValueError), ("\u00e9" * 129, ValueError)]
    + [(None, TypeError), (5, TypeError), (b"acme", TypeError)],
)
def test_bad_client_ids_are_refused(client, error):
    with pytest.raises(error, match="client id"):
        Engine().check(client, 1, now_ns=T0)


def test_max_clients_must_be_a_positive_int():
    with pytest.raises(ValueError, match="max_clients must be at least 1"):
        Engine(max_clients=0)
    with pytest.raises(TypeError, match="max_clients must be an int"):
        Engine(max_clients=1.5)  # type: ignore[arg-type]


# -- several limits in one rule ------------------------------------------------------------


def test_a_multi_limit_rule_allows_only_what_every_limit_allows_and_counts_in_all():
    engine = Engine("3/second;5/minute")
    first = [engine.check("acme", 1, now_ns=T0) for _ in range(4)]
    assert [d.allowed for d in first] == [True, True, True, False]
    # The second's limit is the most restrictive: 2, 1, 0 left of 3 (vs 4, 3, 2 of 5).
    assert [(d.limit, d.remaining, d.window_ns) for d in first[:3]] == [
        (3, 2, S),
        (3, 1, S),
        (3, 0, S),
    ]
    refused = first[3]
    assert (refused.limit, refused.window_ns) == (3, S)
    # The refused fourth counted in neither: two seconds on, the minute has 2 left.
    later = [engine.check("acme", 1, now_ns=T0 + 2 * S) for _ in range(3)]
    assert [d.allowed for d in later] == [True, True, False]
    assert (later[1].limit, later[1].remaining, later[1].window_ns) == (5, 0, 60 * S)
    # Refused by the minute: the wait is the minute's, which the second's would not give.
    assert (later[2].limit, later[2].window_ns) == (5, 60 * S)
    assert later[2].retry_after > 50
    assert peek(engine, "other", T0).allowed and engine.client_count() == 2


def test_a_multi_limit_refusal_waits_for_the_slowest_limit_and_counts_nothing():
    engine = Engine("10/second;10/minute algo fixed_window")
    assert spend(engine, "a", 10, T0) == 10
    refused = engine.check("a", 1, now_ns=T0 + 1)
    assert not refused.allowed and refused.limit == 10 and refused.window_ns == 60 * S
    assert refused.retry_after == pytest.approx(60 - 1e-9)
    never = engine.check("b", 11, now_ns=T0)
    assert never.retry_after == math.inf
    assert engine.check("b", 10, now_ns=T0).allowed  # the refusal of 11 counted nothing


def test_a_multi_limit_rule_set_later_creates_every_series():
    engine, stamp = Engine("10/second"), Writer()
    engine.apply_rule("client:acme", "2/second algo token_bucket;3/hour", stamp())
    assert parse_rule("3/hour").series in engine.series
    assert spend(engine, "acme", 5, T0) == 2
    assert spend(engine, "acme", 5, T0 + 5 * S) == 1  # the hour holds the third
    assert engine.reset("acme") == 2  # both series forget it


def test_client_ids_up_to_256_bytes_are_accepted():
    engine = Engine("1/second")
    for client in ["x" * 65, "x" * 256, "\u00e9" * 128, "\U0001f600" * 64, "a"]:
        assert engine.check(client, 1, now_ns=T0).allowed


def test_token_bucket_rules_through_the_engine():
    engine = Engine("10/second algo token_bucket")
    assert spend(engine, "acme", 11, T0) == 10
    refused = engine.check("acme", 1, now_ns=T0)
    assert refused.retry_after == pytest.approx(0.1)
    assert engine.check("acme", 1, now_ns=T0 + S // 10).allowed


# -- rule changes and counts -------------------------------------------------------------


def test_a_limit_change_in_the_same_window_keeps_the_count():
    engine, stamp = Engine("10/minute"), Writer()
    assert spend(engine, "acme", 8, T0) == 8
    assert engine.apply_rule("client:acme", "20/minute", stamp())
    assert peek(engine, "acme", T0).remaining == 12
    assert engine.apply_rule("client:acme", "5/minute burst 5", stamp())  # burst too
    assert room(engine, "acme", T0) == 2
    assert engine.apply_rule("client:acme", "6/minute", stamp())
    assert not engine.check("acme", 1, now_ns=T0).allowed  # 8 counted > 6
    assert peek(engine, "acme", T0).remaining == 0


def test_a_window_or_algorithm_change_starts_a_fresh_count():
    engine, stamp = Engine("10/minute"), Writer()
    assert spend(engine, "acme", 10, T0) == 10
    assert engine.apply_rule("client:acme", "10/hour", stamp())
    assert peek(engine, "acme", T0).remaining == 10
    assert engine.apply_rule("client:acme", "10/minute algo fixed_window", stamp())
    assert peek(engine, "acme", T0).remaining == 10
    # Back to the first rule within its window: its series still holds the count.
    assert engine.apply_rule("client:acme", None, stamp())
    assert peek(engine, "acme", T0).remaining == 0


def test_tiers_and_defaults_resolve_through_the_engine():
    engine, stamp = Engine("1/second"), Writer()
    engine.apply_rule("tier:gold", "5/second", stamp())
    engine.apply_rule("client:acme", "@gold", stamp())
    assert spend(engine, "acme", 6, T0) == 5
    assert spend(engine, "other", 2, T0) == 1
    assert engine.apply_rule("default", "3/second", stamp())
    assert spend(engine, "other", 3, T0) == 2  # the 1 counted so far still counts
    assert not engine.apply_rule("default", "9/second", Stamp(0, 0, "n1"))  # an old write
    assert engine.registry.default == parse_rule("3/second")


def test_the_defaults_burst_keeps_records_until_its_carry_has_drained():
    # A client rule creates the series first; the default shares it with a burst that
    # takes three windows to drain. Its records must outlive that.
    engine = Engine("10/second burst 30")
    engine.apply_rule("client:x", "10/second", Stamp(1, 0, "n1"))
    series = series_of(engine, "10/second")
    assert series.horizon == 5
    assert engine.check("y", 40, now_ns=T0).allowed
    later = T0 + 2 * S
    for _ in range(SWEEP_EVERY * series.table.bucket_count):
        peek(engine, "x", later)
    assert len(series.table) == 1  # the carry still matters: not swept
    # Over the three windows T0..T0+2s at most 3 * 10 + 30 may pass.
    assert room(engine, "y", later) == 20
    assert not engine.check("y", 21, now_ns=later).allowed


def test_records_are_dropped_once_the_carry_has_drained():
    engine = Engine("10/second burst 30")
    series = series_of(engine, "10/second burst 30")
    assert engine.check("y", 40, now_ns=T0).allowed
    later = T0 + 5 * S
    for _ in range(SWEEP_EVERY * series.table.bucket_count):
        peek(engine, "x", later)
    assert len(series.table) == 0
    assert room(engine, "y", later) == 40


# -- memory: expiry and the client cap ---------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "idle_ns"),
    [
        ("10/second", 2 * S),
        ("10/second algo fixed_window", 2 * S),
        ("10/second algo token_bucket", S // 10),
    ],
)
def test_idle_clients_are_swept_once_their_windows_pass(rule, idle_ns):
    engine = Engine(rule)
    series = series_of(engine, rule)
    for i in range(500):
        assert engine.check(f"client-{i}", 1, now_ns=T0 + i).allowed
    assert len(series.table) == engine.client_count() == 500
    lap = SWEEP_EVERY * series.table.bucket_count
    # Not yet: a full lap of sweeps keeps every record that can still matter.
    for _ in range(lap):
        peek(engine, "probe", T0 + idle_ns - S // 100)
    assert len(series.table) == 500
    for _ in range(lap):
        peek(engine, "probe", T0 + idle_ns + 500)
    assert len(series.table) == 0
    assert series.table.expired == 500
    assert engine.check("client-1", 1, now_ns=T0 + idle_ns + 500).remaining == 9


def test_new_series_picks_the_table_layout():
    assert isinstance(new_series("token_bucket", S, max_clients=5), TokenSeries)
    window = new_series("fixed_window", S, max_clients=5)
    assert isinstance(window, WindowSeries) and window.table.max_clients == 5
    assert window.table.record_size == 24
    assert new_series("token_bucket", S, max_clients=5).table.record_size == 16


@pytest.mark.parametrize(
    "rule", ["10/second", "10/second algo fixed_window", "10/second algo token_bucket"]
)
def test_a_flood_of_new_ids_cannot_grow_the_table_or_evict_a_steady_client(rule):
    flood_engine = Engine(rule, max_clients=1_000)
    solo_engine = Engine(rule)  # the steady client alone: what it must see
    series = series_of(flood_engine, rule)
    now = T0
    for i in range(20_000):
        now += 200_000  # 5,000 new ids a second for four seconds
        flood_engine.check(f"flood-{i}", 1, now_ns=now)
        assert len(series.table) <= 1_000
        if i % 20 == 0:  # 250 checks a second, far over its limit of 10
            got = flood_engine.check("legit", 1, now_ns=now)
            assert got == solo_engine.check("legit", 1, now_ns=now), (i, got)
    assert flood_engine.client_count() <= 1_000
    dead, live = flood_engine.evictions()
    assert dead + live + series.table.expired >= 20_001 - 1_000
    assert series.table.find(hash("legit"))[1] >= 0  # its record was never dropped
