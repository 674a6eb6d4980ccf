"""Tests for meshlimit.Limiter: the in-process API of the brief, on a fake clock."""

from __future__ import annotations

import asyncio
import math
import sys
import threading

import pytest

from meshlimit import Decision, Limiter, Rule
from meshlimit.core.rules import MAX_COUNT, parse_rule

S = 1_000_000_000
T0 = 1_700_000_040 * S  # the start of a minute


class FakeClock:
    """Wall time in nanoseconds, moved by hand."""

    def __init__(self, now_ns: int = T0) -> None:
        self.now_ns = now_ns

    def __call__(self) -> int:
        return self.now_ns

    def advance(self, seconds: float) -> None:
        self.now_ns += round(seconds * S)


def limiter(default="100/minute", **kwargs) -> tuple[Limiter, FakeClock]:
    clock = FakeClock()
    return Limiter(default, clock=clock, **kwargs), clock


def admitted(lim: Limiter, client: str, times: int, cost: int = 1) -> int:
    return sum(lim.check(client, cost).allowed for _ in range(times))


# -- the brief's example -----------------------------------------------------------------


def test_the_brief_example():
    clock = FakeClock()
    lim = Limiter(default="100/minute", rules={"acme": "1000/minute burst 200"}, clock=clock)
    d = lim.check("acme", cost=1)
    assert isinstance(d, Decision)
    # remaining is capped at the limit: the burst is spendable, not shown
    assert d == Decision(True, 1000, 1000, 60.0, 0.0, "local", window_ns=60 * S)
    assert (d.allowed, d.limit, d.remaining, d.reset_after, d.retry_after) == d[:5]
    assert lim.get_rule("acme") == parse_rule("1000/minute burst 200")
    assert lim.get_rule("someone") == lim.default == parse_rule("100/minute")
    lim.set_rule("acme", "50/second")
    assert lim.get_rule("acme") == Rule(50, S)


def test_decision_fields_and_types():
    lim, clock = limiter("2/second")
    clock.advance(0.25)
    ok = lim.check("a")
    assert type(ok.allowed) is bool and ok.allowed
    assert type(ok.limit) is int and ok.limit == 2
    assert type(ok.remaining) is int and ok.remaining == 1
    assert type(ok.reset_after) is float and ok.reset_after == pytest.approx(0.75)
    assert type(ok.retry_after) is float and ok.retry_after == 0.0
    assert ok.path == "local"
    lim.check("a")
    refused = lim.check("a")
    assert refused.allowed is False and refused.remaining == 0
    assert type(refused.retry_after) is float and refused.retry_after > 0
    clock.advance(refused.retry_after)
    assert lim.check("a").allowed


def test_retry_after_is_infinite_when_the_cost_exceeds_the_capacity():
    lim, _ = limiter("10/second burst 5")
    never = lim.check("a", cost=16)
    assert not never.allowed and never.retry_after == math.inf
    assert lim.check("a", cost=15).allowed
    later = lim.check("a", cost=15)
    assert not later.allowed and math.isfinite(later.retry_after)


def test_cost_zero_peeks_without_counting():
    lim, _ = limiter("3/minute")
    for _ in range(5):
        assert lim.check("a", cost=0) == Decision(True, 3, 3, 60.0, 0.0, window_ns=60 * S)
    assert lim.stats()["clients"] == 0
    assert admitted(lim, "a", 5) == 3


def test_windows_follow_the_clock():
    lim, clock = limiter("3/minute algo fixed_window")
    assert admitted(lim, "a", 5) == 3
    clock.advance(59.999)
    assert not lim.check("a").allowed
    clock.advance(0.001)
    assert admitted(lim, "a", 5) == 3


# -- validation --------------------------------------------------------------------------


@pytest.mark.parametrize("cost", [-1, MAX_COUNT + 1])
def test_bad_costs_raise_value_error(cost):
    lim, _ = limiter()
    with pytest.raises(ValueError, match="cost"):
        lim.check("a", cost)


@pytest.mark.parametrize("cost", [1.5, 1.0, True, False, "1", None])
def test_costs_of_the_wrong_type_raise_type_error(cost):
    lim, _ = limiter()
    with pytest.raises(TypeError, match="cost must be an int"):
        lim.check("a", cost)


@pytest.mark.parametrize(
    ("client", "error"),
    [("", ValueError), ("x" * 257, ValueError), ("\u00e9" * 129, ValueError)]
    + [(None, TypeError), (42, TypeError), (b"acme", TypeError), (["a"], TypeError)],
)
def test_bad_client_ids_raise_naming_the_client_id(client, error):
    lim, _ = limiter()
    lim.set_tier("gold", "5/second")
    for call in (
        lambda: lim.check(client),
        lambda: lim.set_rule(client, "1/second"),
        lambda: lim.assign_tier(client, "gold"),
        lambda: lim.remove_rule(client),
        lambda: lim.reset(client),
        lambda: lim.get_rule(client),
    ):
        with pytest.raises(error, match="client id"):
            call()


def test_client_ids_of_up_to_256_bytes_work():
    lim, _ = limiter("1/minute")
    for client in ["x" * 256, "\u00e9" * 128, "\U0001f600" * 64, " ", "a/b:c"]:
        assert lim.check(client).allowed
        assert not lim.check(client).allowed


def test_bad_rules_and_tier_names_raise_value_error_and_change_nothing():
    lim, _ = limiter("5/minute")
    before = lim.stats()
    for call in [
        lambda: lim.set_rule("a", "5/fortnight"),
        lambda: lim.set_rule("a", "@bad tier"),
        lambda: lim.set_rule("a", "@gold"),  # no such tier: a typo, not the default
        lambda: lim.assign_tier("a", "glod"),
        lambda: lim.set_tier("bad tier", "1/second"),
        lambda: lim.set_tier("gold", "nonsense"),
        lambda: lim.assign_tier("a", "bad tier"),
        lambda: lim.remove_tier("bad tier"),
        lambda: lim.set_default("0/second"),
        lambda: Limiter("1/fortnight"),
        lambda: Limiter("1/second", rules={"a": "nonsense"}),
        lambda: Limiter("1/second", tiers={"gold": "nonsense"}),
        lambda: Limiter("1/second", rules={"a": "@gold"}),
        lambda: Limiter("1/second", max_clients=0),
    ]:
        with pytest.raises(ValueError):
            call()
    for call in [
        lambda: lim.set_rule("a", None),  # type: ignore[arg-type]
        lambda: lim.set_rule("a", 5),  # type: ignore[arg-type]
        lambda: lim.set_tier("gold", 5),  # type: ignore[arg-type]
        lambda: lim.set_default(None),  # type: ignore[arg-type]
        lambda: Limiter(5),  # type: ignore[arg-type]
        lambda: Limiter("1/second", rules=["a"]),  # type: ignore[arg-type]
        lambda: Limiter("1/second", max_clients="10"),  # type: ignore[arg-type]
        lambda: Limiter("1/second", clock=5),  # type: ignore[arg-type]
    ]:
        with pytest.raises(TypeError):
            call()
    assert lim.stats() == before
    assert lim.get_rule("a") == parse_rule("5/minute")


def test_type_errors_name_the_argument():
    lim, _ = limiter("5/minute")
    with pytest.raises(TypeError, match="^rule must be"):
        lim.set_rule("a", 5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="^default must be"):
        Limiter(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="^rules must be a mapping"):
        Limiter("1/second", rules=["a"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no tier 'glod'"):
        lim.assign_tier("a", "glod")


def test_a_multi_limit_rule_through_the_limiter():
    lim, clock = limiter("10/second;15/minute")
    assert lim.get_rule("a").limits == (Rule(10, S), Rule(15, 60 * S))
    assert admitted(lim, "a", 12) == 10
    clock.advance(2)  # the second's count has slid out; the minute's has not
    assert admitted(lim, "a", 12) == 5  # the minute's 15
    refused = lim.check("a")
    assert (refused.limit, refused.window_ns) == (15, 60 * S) and refused.retry_after > 50
    lim.set_rule("b", "1/second;2/day")
    assert lim.get_rule("b") == parse_rule("1/second;2/day")


# -- rules, tiers, defaults --------------------------------------------------------------


def test_set_rule_accepts_notation_a_rule_object_or_a_tier():
    lim, _ = limiter("1/minute", tiers={"gold": "1000/minute"})
    lim.set_rule("a", "7/second")
    lim.set_rule("b", Rule(8, S, 2, "token_bucket"))
    lim.set_rule("c", "@gold")
    assert lim.get_rule("a") == Rule(7, S)
    assert lim.get_rule("b") == parse_rule("8/second burst 2 algo token_bucket")
    assert lim.get_rule("c") == parse_rule("1000/minute")
    assert admitted(lim, "a", 10) == 7
    assert admitted(lim, "b", 12) == 10
    assert admitted(lim, "c", 20) == 20


def test_tiers_assignment_removal_and_fallback():
    lim, _ = limiter("1/minute", tiers={"gold": "5/minute"}, rules={"acme": "@gold"})
    assert lim.tiers() == {"gold": parse_rule("5/minute")}
    assert lim.get_rule("acme") == parse_rule("5/minute")
    lim.set_tier("silver", "3/minute")
    lim.assign_tier("bob", "silver")
    assert lim.get_rule("bob") == parse_rule("3/minute")
    lim.set_tier("silver", "4/minute")  # a tier change reaches its clients
    assert lim.get_rule("bob") == parse_rule("4/minute")
    lim.remove_tier("silver")
    assert lim.get_rule("bob") == lim.default
    assert set(lim.tiers()) == {"gold"}
    with pytest.raises(ValueError, match="no tier 'platinum'"):  # a typo is no default
        lim.assign_tier("carol", "platinum")
    lim.set_tier("platinum", "9/minute")
    lim.assign_tier("carol", "platinum")
    assert lim.get_rule("carol") == parse_rule("9/minute")


def test_remove_rule_and_set_default():
    lim, _ = limiter("1/minute", rules={"acme": "10/minute"})
    lim.remove_rule("acme")
    assert lim.get_rule("acme") == parse_rule("1/minute")
    lim.remove_rule("never-had-one")
    lim.set_default("2/minute")
    assert lim.default == lim.get_rule("acme") == lim.get_rule("x") == parse_rule("2/minute")
    lim.set_default(Rule(3, 60 * S))
    assert lim.default == parse_rule("3/minute")


def test_counts_survive_a_limit_change_and_restart_with_a_new_window():
    lim, _ = limiter("100/minute")
    assert admitted(lim, "acme", 60) == 60
    lim.set_rule("acme", "80/minute burst 10")
    assert lim.check("acme", 0).remaining == 30
    assert admitted(lim, "acme", 40) == 30
    lim.set_rule("acme", "50/second")  # a new window length: a fresh count
    assert lim.check("acme", 0).remaining == 50


def test_rule_writes_are_ordered_even_when_the_clock_goes_back():
    lim, clock = limiter("1/minute")
    lim.set_rule("a", "5/minute")
    clock.advance(-3600)
    lim.set_rule("a", "6/minute")  # later in real order, earlier by the wall clock
    assert lim.get_rule("a") == parse_rule("6/minute")
    clock.advance(7200)
    lim.remove_rule("a")
    assert lim.get_rule("a") == parse_rule("1/minute")


def test_stats():
    lim, _ = limiter("1/minute", rules={"a": "5/second"}, tiers={"gold": "9/minute"})
    assert lim.stats() == {"clients": 0, "rules": 3, "evicted_dead": 0, "evicted_live": 0}
    lim.check("a")
    lim.check("b")
    lim.check("b")
    assert lim.stats()["clients"] == 2


def test_max_clients_bounds_the_clients_tracked():
    lim, clock = limiter("5/minute", max_clients=50)
    for i in range(500):
        clock.advance(0.001)
        lim.check(f"c{i}")
    stats = lim.stats()
    assert stats["clients"] <= 50
    assert stats["evicted_live"] + stats["evicted_dead"] >= 450


def test_the_default_clock_is_the_wall_clock():
    lim = Limiter("2/minute")
    assert lim.check("a").allowed and lim.check("a").allowed
    assert not lim.check("a").allowed


# -- concurrency -------------------------------------------------------------------------


def test_threads_checking_one_client_admit_exactly_the_limit():
    lim, _ = limiter("1000/minute")
    threads, per_thread = 8, 5_000
    counts = [0] * threads
    start = threading.Barrier(threads)

    def worker(n: int) -> None:
        start.wait()
        allowed = 0
        for _ in range(per_thread):
            allowed += lim.check("shared").allowed
        counts[n] = allowed

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        workers = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    finally:
        sys.setswitchinterval(interval)
    assert sum(counts) == 1000
    assert lim.check("shared", 0).remaining == 0


def test_threads_changing_rules_while_others_check():
    lim, _ = limiter("1000/minute")
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for i in range(300):
                lim.set_rule("shared", f"{1000 + i % 2}/minute")
                lim.set_tier("gold", f"{i + 1}/second")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def checker() -> None:
        try:
            for _ in range(2_000):
                lim.check("shared")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    workers = [threading.Thread(target=writer)] + [
        threading.Thread(target=checker) for _ in range(3)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors
    assert lim.check("shared", 0).remaining in (0, 1)  # the limit ends at 1000 or 1001


def test_usable_from_asyncio_code():
    lim, _ = limiter("100/minute")

    async def client(name: str, times: int) -> int:
        return sum(lim.check(name).allowed for _ in range(times))

    async def main() -> list[int]:
        return await asyncio.gather(*(client(f"c{i % 3}", 60) for i in range(6)))

    results = asyncio.run(main())
    assert sum(results) == 3 * 100  # three clients, two tasks each, 120 tries apiece
    assert all(lim.check(f"c{i}", 0).remaining == 0 for i in range(3))


def test_shadow_rule_allows_everything_and_marks_would_be_refusals() -> None:
    from meshlimit import Limiter

    limiter = Limiter("2/s", rules={"trial": "2/s shadow"}, clock=lambda: 0)
    decisions = [limiter.check("trial") for _ in range(4)]
    assert all(d.allowed for d in decisions)
    assert [d.shadowed for d in decisions] == [False, False, True, True]
    assert str(limiter.get_rule("trial")) == "2/second shadow"


def test_reset_forgets_a_clients_counts() -> None:
    from meshlimit import Limiter

    limiter = Limiter("2/s", clock=lambda: 0)
    assert [limiter.check("a").allowed for _ in range(3)] == [True, True, False]
    limiter.reset("a")
    assert limiter.check("a").allowed
