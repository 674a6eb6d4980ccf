"""The web integrations' shared parts: the gate (``meshlimit/gate.py``), route limits
(``meshlimit/routes.py``), the backend protocol (``meshlimit/backend.py``) and the headers
of several policies (``core/headers.py``). No framework here; fakes stand in for a
cluster whose rule writes reach the deciding owner late."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from meshlimit import Limiter
from meshlimit.backend import BoundBackend, reported_limit, rule_in
from meshlimit.core.decision import Decision
from meshlimit.core.headers import policy_headers, ratelimit_headers
from meshlimit.core.rules import Rule
from meshlimit.gate import (
    Gate,
    PolicyCheck,
    RuleWrites,
    Verdict,
    error_policy,
    renew_after_s,
)
from meshlimit.routes import ROUTE_PREFIX, RouteLimit, RouteTable, parse_limits

S = 1_000_000_000
T0 = 1_700_000_040 * S


class LaggingOwner:
    """A blocking backend (a daemon in front of a cluster): a rule written reaches the
    owner that decides only after ``lag`` more checks, as gossip would deliver it."""

    def __init__(self, default: str = "100/minute", lag: int = 3) -> None:
        self.owner = Limiter(default, clock=lambda: T0)
        self.lag = lag
        self.in_flight: list[list[Any]] = []
        self.writes: list[tuple[str, Rule]] = []
        self.checks: list[tuple[str, int]] = []

    def set_rule(self, client: str, rule: Rule) -> None:
        self.writes.append((client, rule))
        self.in_flight.append([self.lag, client, rule])

    def check(self, client: str, cost: int = 1) -> Decision:
        for item in self.in_flight:
            item[0] -= 1
            if item[0] < 0:
                self.owner.set_rule(item[1], item[2])
        self.in_flight = [item for item in self.in_flight if item[0] >= 0]
        self.checks.append((client, cost))
        return self.owner.check(client, cost)._replace(path="owner")


class AsyncLaggingOwner(LaggingOwner):
    """The same, as a cluster node on the caller's loop (``Node``-like)."""

    async def set_rule(self, client: str, rule: Rule) -> None:  # type: ignore[override]
        super().set_rule(client, rule)

    async def check(self, client: str, cost: int = 1) -> Decision:  # type: ignore[override]
        return super().check(client, cost)


def route_check(limit: RouteLimit, key: str = "alice") -> PolicyCheck:
    return PolicyCheck(limit.name, limit.client_id(key), 1, limit.rule)


LOGIN = RouteLimit("login", Rule.parse("2/minute"))


def test_a_first_rule_write_waits_until_the_owner_holds_it():
    # 2/minute shares the default's counting series (sliding, 60 s): a check decided
    # under the default would be counted where the route's rule later looks.
    backend = LaggingOwner("100/minute", lag=3)
    gate = Gate(backend)
    verdicts = [gate.decide([route_check(LOGIN)]) for _ in range(4)]
    assert [v.allowed for v in verdicts] == [True, True, False, False]
    client = LOGIN.client_id("alice")
    assert backend.writes == [(client, LOGIN.rule)]  # written once
    peeks = [c for c in backend.checks if c[1] == 0]
    assert len(peeks) == 4  # three under the old rule, then the one that saw it
    assert all(cost == 1 for _, cost in backend.checks[len(peeks) :])


def test_without_waiting_the_first_check_is_decided_under_another_rule_and_retried():
    backend = LaggingOwner("100/minute", lag=1)
    gate = Gate(backend, rule_wait_s=0)
    verdict = gate.decide([route_check(LOGIN)])
    # The one peek saw the default; the check (the rule arrived with it) is the route's.
    assert verdict.allowed and "q=2" in verdict.headers["RateLimit-Policy"]


def test_a_rule_the_owner_lost_is_written_again():
    backend = LaggingOwner("100/minute", lag=0)
    gate = Gate(backend)
    assert gate.decide([route_check(LOGIN)]).allowed
    backend.owner.remove_rule(LOGIN.client_id("alice"))  # evicted or expired there
    verdict = gate.decide([route_check(LOGIN)])
    assert len(backend.writes) == 2
    assert verdict.headers["RateLimit-Policy"] == '"2/minute";q=2;w=60'


def test_an_async_backend_waits_on_the_loop_without_blocking_it():
    backend = AsyncLaggingOwner("100/minute", lag=2)
    gate = Gate(backend)

    async def run() -> list[bool]:
        return [(await gate.adecide([route_check(LOGIN)])).allowed for _ in range(3)]

    assert asyncio.run(run()) == [True, True, False]
    assert len(backend.writes) == 1


def test_in_process_writes_never_wait_and_limits_are_checked_shortest_window_first():
    limiter = Limiter("100/minute", clock=lambda: T0)
    gate = Gate(limiter)
    assert not gate.backend.blocking and not gate.backend.is_async
    hourly, per_second = (RouteLimit("r", rule) for rule in parse_limits("3/hour;1/second"))
    assert (hourly.rule, per_second.rule) == (Rule.parse("1/second"), Rule.parse("3/hour"))
    checks = [route_check(per_second), route_check(hourly)]  # given longest first
    assert gate.decide(checks).allowed
    refused = gate.decide(checks)  # the second's limit refuses before the hour is charged
    assert not refused.allowed and "3/hour" not in refused.headers["RateLimit"]
    assert limiter.check(per_second.client_id("alice"), 0).remaining == 2


def test_rule_writes_renew_at_half_the_per_call_lifetime_and_stay_bounded():
    now = [0.0]
    writes = RuleWrites(max_entries=2, clock=lambda: now[0])
    rule = Rule.parse("2/minute")
    assert renew_after_s(rule) == 300  # the ten-minute floor, halved
    assert renew_after_s(Rule.parse("1000/day")) == 2 * 86_400  # twice two days' drain, halved
    assert writes.due("a", rule) == "new"
    writes.note("a", rule)
    assert writes.due("a", rule) is None
    now[0] = 300
    assert writes.due("a", rule) == "renew"
    writes.note("b", rule)
    writes.note("c", rule)  # over the bound: the least recently used goes
    assert len(writes) == 2 and writes.due("a", rule) == "new"


def test_route_ids_are_distinct_bounded_and_per_call_entries():
    a = RouteLimit("login", Rule.parse("2/minute")).client_id("alice")
    assert a == f"{ROUTE_PREFIX}login|2/minute|alice" and a.startswith("cl.throttle:")
    assert a != RouteLimit("login", Rule.parse("3/minute")).client_id("alice")
    assert a != RouteLimit("signup", Rule.parse("2/minute")).client_id("alice")
    long = RouteLimit("r" * 200, Rule.parse("2/minute")).client_id("k" * 200)
    assert len(long.encode()) <= 256 and long.startswith(ROUTE_PREFIX)
    with pytest.raises(ValueError, match="client id"):
        LOGIN.client_id("")


def test_limit_notation():
    assert parse_limits("10/second; 1000/hour") == (Rule.parse("10/s"), Rule.parse("1000/h"))
    assert parse_limits(["5/minute", "5/minute", Rule.parse("1/s")]) == (
        Rule.parse("1/s"),
        Rule.parse("5/minute"),
    )
    for bad, message in (
        ("", "no limit"),
        ("5/fortnight", "fortnight"),
        (";".join(["1/s"] * 9), "at most"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_limits(bad)
    with pytest.raises(TypeError):
        parse_limits([5])  # type: ignore[list-item]


def test_route_tables_match_the_most_specific_entry():
    table = RouteTable(
        {
            "/api": "100/minute",
            "POST /api/login": "5/minute",
            "/api/users/{id}/posts": "20/minute",
        }
    )
    names = lambda method, path: [lim.route for lim in table.match(method, path) or ()]  # noqa: E731
    assert names("POST", "/api/login") == ["POST /api/login"]
    assert names("GET", "/api/login") == ["/api"]
    assert names("GET", "/api/users/7/posts/3") == ["/api/users/{id}/posts"]
    assert names("GET", "/api/users/7/likes") == ["/api"]
    assert names("GET", "/apiary") == [] and names("GET", "/") == []
    for bad in ("login", "P0ST /x"):
        with pytest.raises(ValueError, match="route"):
            RouteTable({bad: "1/s"})


def test_policy_headers_name_each_policy_and_take_the_longest_wait():
    minute, hour = Rule.parse("2/minute burst 1"), Rule.parse("3/hour")
    ok = Decision(True, 2, 1, 60.0, 0.0, "local")
    refused = Decision(False, 3, 0, 3600.0, 1800.5, "local")
    headers = policy_headers([("2/minute", ok, minute), ("3/hour", refused, hour), ("x", ok, None)])
    assert headers == {
        "RateLimit-Policy": '"2/minute";q=2;w=60;meshlimit-burst=1, "3/hour";q=3;w=3600, "x";q=2',
        "Retry-After": "1801",
        "RateLimit": '"2/minute";r=1;t=60, "3/hour";r=0;t=1801, "x";r=1;t=60',
    }
    assert ratelimit_headers(ok, None) == {
        "RateLimit-Policy": '"default";q=2',
        "RateLimit": '"default";r=1;t=60',
    }
    assert policy_headers([]) == {}
    verdict = Verdict.of([("a", ok, None), ("a", ok, None)])
    assert verdict.headers["RateLimit-Policy"] == '"a";q=2, "a#2";q=2'


def test_the_rule_behind_a_decision():
    class Blocking:
        blocking = True

        def __init__(self) -> None:
            self.asked = 0

        def check(self, key: str, cost: int = 1) -> Decision:
            return Decision(True, 10, 9, 1.0, 0.0, "owner", window_ns=S)

        def get_rule(self, key: str) -> str:
            self.asked += 1
            return "10/second burst 5;1000/hour"

    backend = Blocking()
    bound = BoundBackend(backend)
    decision = backend.check("k")
    # A daemon client's decision carries its window: no second round trip for the rule.
    assert bound.rule_for("k", decision) == Rule.parse("10/second") and backend.asked == 0
    backend.blocking = False
    cheap = BoundBackend(backend)  # in process: asked, and the burst comes with it
    assert cheap.rule_for("k", decision) == Rule.parse("10/second burst 5")
    # Under a rule of several limits, the one the decision reports.
    hourly = Decision(True, 1000, 5, 9.0, 0.0, "owner", window_ns=3600 * S)
    assert reported_limit("10/second burst 5;1000/hour", hourly) == Rule.parse("1000/hour")
    assert reported_limit(Rule.parse("5/minute"), hourly) is None
    assert rule_in(Decision(True, 3, 2, 1.0, 0.0, "owner")) is None  # no window carried


def test_error_policy_spellings():
    assert [error_policy(v) for v in ("allow", "deny", "raise", "open", "closed")] == [
        "allow",
        "deny",
        "raise",
        "allow",
        "deny",
    ]
    with pytest.raises(ValueError, match="'allow', 'deny' or 'raise'"):
        error_policy("ajar")
