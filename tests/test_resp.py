"""The RESP front-end (``cluster/daemon/resp*.py``, ``eager.py``) and redis-cell's arithmetic
(``cluster/daemon/throttle.py``).

The first half is pure: redis-cell's own ``it_rate_limits`` table (from
``src/cell/mod.rs`` of brandur/redis-cell, ported with an injected clock) run
through the reference :func:`rate_limit` and through meshlimit's
``token_bucket`` under the rule :func:`throttle_rule` maps the arguments to;
pinned values of the formulas; a property test that the two agree on every
sequence when the mapping is exact; the eager coroutine driver.

The second half (marked ``loopback``) starts a :class:`Runtime` on a free UDP
port of 127.0.0.1 with the ``local`` preset and a :class:`RespServer` on a
free TCP port, and talks to it with redis-py, raw sockets and ``redis-cli``
(skipped when it is not installed; Debian's ``redis-tools`` has it). Rules
use day-long windows so that no window rolls over while a test runs.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from types import SimpleNamespace
from typing import Any, NamedTuple

import pytest
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.exceptions import ResponseError
from runtimes import free_udp_port, started_runtime

from meshlimit.cluster.daemon import resp as resp_module
from meshlimit.cluster.daemon.eager import start_eagerly
from meshlimit.cluster.daemon.resp import RespConfig, RespServer
from meshlimit.cluster.daemon.resp_commands import THROTTLE_PREFIX, check_reply
from meshlimit.cluster.daemon.resp_protocol import command_size, encode_error
from meshlimit.cluster.daemon.throttle import (
    MAX_BURST,
    MAX_PERIOD_S,
    check_params,
    emission_interval_ns,
    rate_limit,
    reply,
    reply_from_decision,
    reply_seconds,
    throttle_rule,
)
from meshlimit.cluster.runtime import Runtime
from meshlimit.core.algorithms import token_bucket
from meshlimit.core.decision import PATHS, Decision, make_decision
from meshlimit.core.hlc import Stamp
from meshlimit.core.registry import RuleRegistry
from meshlimit.core.rules import Rule, parse_rule

loopback = pytest.mark.loopback

S = 1_000_000_000
MS = 1_000_000
#: An arbitrary wall-clock start with a sub-second part, as redis-cell's test uses now_utc().
START_NS = 1_764_000_000_123_456_789


# --- redis-cell's it_rate_limits table --------------------------------------------------


class Case(NamedTuple):
    """(test case #, now, volume, remaining, reset_after, retry_after, limited), in ns."""

    num: int
    now_ns: int
    volume: int
    remaining: int
    reset_after_ns: int
    retry_after_ns: int
    limited: bool


# limit = 5; quota = RateQuota { max_burst: limit - 1, max_rate: Rate::per_second(1) }
TABLE_MAX_BURST, TABLE_COUNT, TABLE_PERIOD_S = 4, 1, 1
TABLE = [
    # You can never make a request larger than the maximum.
    Case(0, 0, 6, 5, 0, -S, True),
    # Rate limit normal requests appropriately.
    Case(1, 0, 1, 4, 1 * S, -S, False),
    Case(2, 0, 1, 3, 2 * S, -S, False),
    Case(3, 0, 1, 2, 3 * S, -S, False),
    Case(4, 0, 1, 1, 4 * S, -S, False),
    Case(5, 0, 1, 0, 5 * S, -S, False),
    Case(6, 0, 1, 0, 5 * S, 1 * S, True),
    Case(7, 3000 * MS, 1, 2, 3000 * MS, -S, False),
    Case(8, 3100 * MS, 1, 1, 3900 * MS, -S, False),
    Case(9, 4000 * MS, 1, 1, 4000 * MS, -S, False),
    Case(10, 8000 * MS, 1, 4, 1000 * MS, -S, False),
    Case(11, 9500 * MS, 1, 4, 1000 * MS, -S, False),
    # Zero-volume request just peeks at the state.
    Case(12, 9500 * MS, 0, 4, 1 * S, -S, False),
    # High-volume request uses up more of the limit.
    Case(13, 9500 * MS, 2, 2, 3 * S, -S, False),
    # Large requests cannot exceed limits
    Case(14, 9500 * MS, 5, 2, 3 * S, 3 * S, True),
]


@pytest.mark.parametrize("upto", range(len(TABLE)), ids=[f"case{c.num}" for c in TABLE])
def test_reference_matches_redis_cell_table(upto: int) -> None:
    interval = emission_interval_ns(TABLE_COUNT, TABLE_PERIOD_S)
    tat: int | None = None
    for case in TABLE[: upto + 1]:
        result, stored = rate_limit(
            tat, START_NS + case.now_ns, TABLE_MAX_BURST, interval, case.volume
        )
        if stored is not None:
            tat = stored
    assert result.limited == case.limited
    assert result.limit == 5
    assert result.remaining == case.remaining
    assert result.reset_after_ns == case.reset_after_ns
    assert result.retry_after_ns == case.retry_after_ns


@pytest.mark.parametrize("upto", range(len(TABLE)), ids=[f"case{c.num}" for c in TABLE])
def test_cluster_rule_matches_redis_cell_table(upto: int) -> None:
    """The token bucket under the mapped rule decides the table exactly as redis-cell."""
    rule = throttle_rule(TABLE_MAX_BURST, TABLE_COUNT, TABLE_PERIOD_S)
    assert str(rule) == "1/second burst 4 algo token_bucket"
    tat = 0
    for case in TABLE[: upto + 1]:
        allowed, new_tat, remaining, reset_ns, retry_ns = token_bucket(
            tat, rule.limit, rule.burst, rule.window_ns, case.volume, START_NS + case.now_ns
        )
        if allowed:
            tat = new_tat
    decision = make_decision(allowed, rule.limit, remaining, reset_ns, retry_ns)
    expected_retry = -1 if case.retry_after_ns < 0 else case.retry_after_ns // S
    assert reply_from_decision(decision, TABLE_MAX_BURST) == [
        int(case.limited),
        5,
        case.remaining,
        expected_retry,
        reply_seconds(case.reset_after_ns),
    ]


def test_table_replies_in_seconds() -> None:
    """What a client sees for the table: whole seconds, partial ones rounded up."""
    interval = emission_interval_ns(TABLE_COUNT, TABLE_PERIOD_S)
    tat: int | None = None
    replies = []
    for case in TABLE:
        result, stored = rate_limit(
            tat, START_NS + case.now_ns, TABLE_MAX_BURST, interval, case.volume
        )
        tat = tat if stored is None else stored
        replies.append(reply(result))
    assert replies[0] == [1, 5, 5, -1, 0]
    assert replies[6] == [1, 5, 0, 1, 5]
    assert replies[8] == [0, 5, 1, -1, 4]  # reset 3.9 s: 4
    assert replies[14] == [1, 5, 2, 3, 3]


# --- pinned values ----------------------------------------------------------------------


def test_emission_interval_matches_redis_cell_rates() -> None:
    assert emission_interval_ns(24, 86_400) == 3600 * S  # it_creates_rates_from_days
    assert emission_interval_ns(6, 3600) == 600 * S  # ..._from_hours
    assert emission_interval_ns(6, 60) == 10 * S  # ..._from_minutes
    assert emission_interval_ns(6, 120) == 20 * S  # ..._from_periods
    assert emission_interval_ns(5, 1) == 200 * MS  # ..._from_seconds
    assert emission_interval_ns(3, 1) == 333_333_333  # f64 quotient, truncated
    assert emission_interval_ns(0, 1) == emission_interval_ns(1, 0) == 0  # zero rates


def test_reply_seconds_rounding() -> None:
    assert reply_seconds(0) == 0
    assert reply_seconds(-S) == -1
    assert reply_seconds(S) == 1
    assert reply_seconds(S + MS) == 2  # a whole millisecond over: the next second
    assert reply_seconds(S + MS - 1) == 1  # under a millisecond over: dropped, as redis-cell
    assert reply_seconds(3900 * MS) == 4
    assert reply_seconds(999_999) == 0
    assert reply_seconds(-S // 2) == 0  # truncated toward zero, never rounded up


def test_throttle_rule_pinned() -> None:
    assert str(throttle_rule(15, 30, 60)) == "1/2s burst 15 algo token_bucket"  # README's
    assert throttle_rule(15, 30, 60) == Rule(1, 2 * S, 15, "token_bucket")  # equal by value
    assert str(throttle_rule(0, 1000, 1)) == "1/1ms algo token_bucket"
    assert str(throttle_rule(99, 100, 1)) == "1/10ms burst 99 algo token_bucket"
    # 3 per second: 333,333,333 ns is no whole number of ms for any limit <= 5, the
    # nearest rule is 1 ns slower per emission.
    rule = throttle_rule(4, 3, 1)
    assert rule.limit + rule.burst == 5
    assert -(-rule.window_ns // rule.limit) == 333_333_334
    # max_burst 0: the interval must be a whole ms on its own: 334 ms, 0.2 % slower.
    assert str(throttle_rule(0, 3, 1)) == "1/334ms algo token_bucket"
    # An interval that is whole ms only for a limit of 125 (8 us * 125 = 1 ms).
    rule = throttle_rule(200, 125_000, 1)
    assert (rule.limit, rule.window_ns, rule.burst) == (125, MS, 76)


def test_throttle_rule_refusals() -> None:
    with pytest.raises(ValueError, match="200.0% slower"):
        throttle_rule(0, 3000, 1)  # 333 us with no burst: a rule's interval is >= 1 ms
    with pytest.raises(ValueError, match="zero rate"):
        throttle_rule(5, 0, 60)
    with pytest.raises(ValueError, match="max_burst"):
        throttle_rule(-1, 1, 1)
    with pytest.raises(ValueError, match="max_burst"):
        throttle_rule(MAX_BURST + 1, 1, 1)
    with pytest.raises(ValueError, match="period"):
        throttle_rule(5, 1, MAX_PERIOD_S + 1)
    with pytest.raises(ValueError, match="period"):
        throttle_rule(5, 1, 0)
    with pytest.raises(ValueError, match="quantity"):
        check_params(5, 1, 1, -1)
    # A refusal is cached too, and raised again on every call.
    with pytest.raises(ValueError, match="slower"):
        throttle_rule(0, 3000, 1)


@settings(max_examples=300, deadline=None)
@given(
    max_burst=st.integers(0, 40),
    period_s=st.integers(1, 600),
    pick=st.integers(0, 10**6),
    steps=st.lists(st.tuples(st.integers(0, 3 * S), st.integers(0, 45)), max_size=40),
)
def test_cluster_rule_agrees_with_redis_cell(
    max_burst: int, period_s: int, pick: int, steps: list[tuple[int, int]]
) -> None:
    """Whenever the interval is whole milliseconds the mapping is exact: every reply of
    the cluster's token bucket (through a Decision's float seconds) is redis-cell's."""
    divisors = [d for d in range(1, 1001) if period_s * 1000 % d == 0]
    count = divisors[pick % len(divisors)]
    interval = emission_interval_ns(count, period_s)
    assert interval == period_s * 1000 // count * MS
    rule = throttle_rule(max_burst, count, period_s)
    assert rule.limit + rule.burst == max_burst + 1
    now = START_NS
    ref_tat: int | None = None
    tat = 0
    for step_ns, quantity in steps:
        now += step_ns
        expected, stored = rate_limit(ref_tat, now, max_burst, interval, quantity)
        ref_tat = ref_tat if stored is None else stored
        allowed, new_tat, remaining, reset_ns, retry_ns = token_bucket(
            tat, rule.limit, rule.burst, rule.window_ns, quantity, now
        )
        tat = new_tat if allowed else tat
        decision = make_decision(allowed, rule.limit, remaining, reset_ns, retry_ns)
        assert reply_from_decision(decision, max_burst) == reply(expected)


@settings(max_examples=200, deadline=None)
@given(
    max_burst=st.integers(0, 10_000),
    count=st.integers(1, 1_000_000),
    period_s=st.integers(1, 100_000),
)
def test_cluster_rule_never_faster(max_burst: int, count: int, period_s: int) -> None:
    """A mapped rule holds the capacity and is never faster than redis-cell, and at most
    1 % slower; otherwise the arguments are refused."""
    interval = emission_interval_ns(count, period_s)
    try:
        rule = throttle_rule(max_burst, count, period_s)
    except ValueError as error:
        assert "slower" in str(error) or "zero" in str(error)
        return
    mapped = -(-rule.window_ns // rule.limit)
    assert rule.limit + rule.burst == max_burst + 1
    assert interval <= mapped <= interval * 1.01
    assert parse_rule(str(rule)) == rule


def test_command_size_is_the_encoded_size() -> None:
    frame = [b"CL.THROTTLE", b"k" * 12, b"15", b"30", b"60"]
    encoded = b"*5\r\n" + b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in frame)
    assert command_size(frame) == len(encoded)
    assert command_size([]) == 4
    assert command_size([b"PING", 1]) is None
    assert command_size(b"PING") is None
    assert command_size([[b"PING"]]) is None


def test_check_reply_format() -> None:
    allowed = Decision(True, 10, 9, 59.0004, 0.0, "owner")
    assert check_reply(allowed) == b"*6\r\n:1\r\n:10\r\n:9\r\n:59001\r\n:0\r\n$5\r\nowner\r\n"
    refused = Decision(False, 10, 0, 3.9, 1.25, "forwarded")
    assert check_reply(refused).split(b"\r\n")[1:6] == [b":0", b":10", b":0", b":3900", b":1250"]
    never = Decision(False, 10, 0, 1.0, float("inf"), "degraded")
    assert b":-1\r\n$8\r\ndegraded" in check_reply(never)


#: Decisions of every shape: refused or not, ``remaining`` over the limit (a burst), any
#: reset (a float from nanoseconds), a finite or endless retry, every path.
decisions = st.builds(
    Decision,
    st.booleans(),
    st.integers(0, 10**9),
    st.integers(0, 2 * 10**9),
    st.integers(0, 10**15).map(lambda ns: ns / 1e9),
    st.one_of(st.just(float("inf")), st.integers(0, 10**12).map(lambda ns: ns / 1e9)),
    st.sampled_from(PATHS),
    st.booleans(),
    st.integers(0, 10**13),
)


@given(decisions)
def test_check_reply_of_an_allowed_decision_is_the_general_reply(decision: Decision) -> None:
    """The allowed reply's one-format path gives the bytes of the general one (which
    ``WITHWINDOW`` takes: the same six elements, then the window)."""
    general = check_reply(decision, with_window=True)
    head, _, window = general.rpartition(b":")
    assert window.endswith(b"\r\n") and general.startswith(b"*7\r\n")
    assert check_reply(decision) == b"*6" + head[2:]


def test_errors_are_one_line() -> None:
    assert encode_error("bad\r\nthing") == b"-ERR bad  thing\r\n"
    assert encode_error("wait", "TRYAGAIN") == b"-TRYAGAIN wait\r\n"


# --- the eager driver -------------------------------------------------------------------


def test_start_eagerly_finishes_synchronously_or_hands_over_to_a_task() -> None:
    async def main() -> None:
        async def at_once() -> bytes:
            return b"now"

        assert start_eagerly(at_once()) == b"now"

        gate: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def later() -> bytes:
            first = await gate
            await asyncio.sleep(0)  # a bare yield on the way
            return first + b"!"

        task = start_eagerly(later())
        assert isinstance(task, asyncio.Future) and not task.done()
        gate.set_result(b"later")
        assert await task == b"later!"

        blocked: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        cleaned: list[str] = []

        async def cancelled() -> bytes:
            try:
                return await blocked
            finally:
                cleaned.append("yes")

        task = start_eagerly(cancelled())
        assert isinstance(task, asyncio.Future)
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert cleaned == ["yes"] and blocked.cancelled()

        failing: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        task = start_eagerly(later_raise(failing))
        failing.set_exception(KeyError("x"))
        with pytest.raises(KeyError):
            await task

    async def later_raise(future: asyncio.Future[bytes]) -> bytes:
        return await future

    asyncio.run(main())


# --- CL.THROTTLE's rule reaching the owner late (a stand-in runtime) ---------------------


class StandInRuntime:
    """A runtime with a real rule registry whose checks are answered from a script."""

    def __init__(self, answers: list[Decision], *, max_calls: int = 1000) -> None:
        self.answers = answers
        self.writes: list[tuple[str, object]] = []
        self.node = SimpleNamespace(registry=RuleRegistry("100/minute", max_calls=max_calls))
        self.clock_ms = time.time_ns() // MS
        self.busy = False  # never short of room (``Runtime.busy``)
        self.on_not_busy: list[object] = []

    def set_rule(self, key: str, value: object) -> bool:
        self.writes.append((key, value))
        stamp = Stamp(self.clock_ms, len(self.writes), "n1")
        return bool(self.node.registry.apply(key, value, stamp))  # type: ignore[arg-type]

    async def check(self, client: str, cost: int) -> Decision:
        assert cost == 1
        return self.answers.pop(0)

    def check_now(self, client: str, cost: int) -> Decision:
        assert cost == 1
        return self.answers.pop(0)

    def check_batch(self, clients: list[str], cost: int) -> list[Decision]:
        return [self.check_now(client, cost) for client in clients]


def test_throttle_decided_under_another_rule_is_resent_retried_then_refused() -> None:
    """A forwarded CL.THROTTLE decided by an owner that lacks the key's rule (its limit
    shows it) sends the rule again and is retried once, then answered -TRYAGAIN; a later
    one under the rule works, and writes nothing (the rule is there, fresh)."""
    rule = throttle_rule(15, 30, 60)
    answers = [Decision(True, 100, 99, 60.0, 0.0, "forwarded")] * 2
    answers.append(Decision(True, rule.limit, 15, 2.0, 0.0, "forwarded"))
    runtime = StandInRuntime(answers)
    server = RespServer(runtime, RespConfig(rule_spread_wait_s=0))  # type: ignore[arg-type]

    async def main() -> None:
        command = [b"CL.THROTTLE", b"k", b"15", b"30", b"60"]
        first = server.execute(command)
        assert isinstance(first, asyncio.Future)
        assert (await first).startswith(b"-TRYAGAIN ")
        assert server.execute(command) == b"*5\r\n:0\r\n:16\r\n:15\r\n:-1\r\n:2\r\n"

    asyncio.run(main())
    key = "client:" + THROTTLE_PREFIX + "k"
    assert runtime.writes == [(key, rule), (key, rule)]  # written, then sent again once
    assert server.stats["throttle_rule_mismatch"] == 1  # counted once per command
    assert server.stats["throttle_tryagain"] == 1


def test_throttle_renews_its_rule_past_half_its_lifetime_and_floods_never_refuse() -> None:
    """A key's per-call rule is written once, renewed once half its lifetime has passed
    (so that it never expires in use), and a flood of keys past the share evicts instead
    of refusing new keys."""
    rule = throttle_rule(15, 30, 60)
    answer = Decision(True, rule.limit, 15, 2.0, 0.0, "owner")
    runtime = StandInRuntime([answer] * 100)
    server = RespServer(runtime, RespConfig(throttle_registry_share=3))  # type: ignore[arg-type]
    registry = runtime.node.registry
    command = [b"CL.THROTTLE", b"k", b"15", b"30", b"60"]
    now_ms = runtime.clock_ms
    runtime.clock_ms = now_ms - registry.call_lifetime_ms(rule) // 2  # half a lifetime ago
    server.execute(command)
    assert server.stats["throttle_rule_writes"] == 1 and len(runtime.writes) == 1
    runtime.clock_ms = now_ms
    for _ in range(3):  # the first call renews the rule, the others find it fresh
        server.execute(command)
    assert server.stats["throttle_rule_renewals"] == 1 and len(runtime.writes) == 2
    for n in range(10):
        reply_ = server.execute([b"CL.THROTTLE", b"flood%d" % n, b"15", b"30", b"60"])
        assert reply_ == b"*5\r\n:0\r\n:16\r\n:15\r\n:-1\r\n:2\r\n"
    assert registry.max_calls == 3 and registry.call_count() == 3
    assert registry.stats["calls_evicted"] == 8
    assert server.stats["throttle_rule_writes"] == 11


# --- loopback: a runtime and its RESP server --------------------------------------------


@asynccontextmanager
async def resp_server(runtime: Runtime, **config: Any) -> AsyncIterator[RespServer]:
    server = RespServer(runtime, RespConfig(**config))
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.close()


@asynccontextmanager
async def redis_client(server: RespServer) -> AsyncIterator[aioredis.Redis]:
    host, port = server.address
    client = aioredis.Redis(host=host, port=port, socket_timeout=5)
    try:
        yield client
    finally:
        await client.aclose()


Scenario = Callable[[aioredis.Redis, RespServer, Runtime], Awaitable[None]]


def run(scenario: Scenario, **config: Any) -> None:
    """Run ``scenario`` against a one-node cluster, its RESP server and a redis-py client."""

    async def main() -> None:
        async with (
            started_runtime() as runtime,
            resp_server(runtime, **config) as server,
            redis_client(server) as client,
        ):
            await scenario(client, server, runtime)

    asyncio.run(main())


async def raw_exchange(server: RespServer, payload: bytes, *, timeout_s: float = 5.0) -> bytes:
    """Send ``payload`` and half-close, then read until the server closes the connection."""
    reader, writer = await asyncio.open_connection(*server.address)
    try:
        writer.write(payload)
        writer.write_eof()
        return await asyncio.wait_for(reader.read(), timeout_s)
    finally:
        writer.close()


async def raw_request(server: RespServer, payload: bytes, reply_bytes: int) -> bytes:
    """Send ``payload`` and read exactly ``reply_bytes`` of reply; the connection stays up."""
    reader, writer = await asyncio.open_connection(*server.address)
    try:
        writer.write(payload)
        return await asyncio.wait_for(reader.readexactly(reply_bytes), 5)
    finally:
        writer.close()


@loopback
def test_ping() -> None:
    async def scenario(client: aioredis.Redis, server: RespServer, runtime: Runtime) -> None:
        assert await client.ping() is True  # redis-py 8 opened with HELLO 3
        ping = b"*2\r\n$4\r\nping\r\n$11\r\nhello there\r\n*1\r\n$4\r\nPiNg\r\n"
        expected = b"$11\r\nhello there\r\n+PONG\r\n"
        assert await raw_request(server, ping, len(expected)) == expected

    run(scenario)


@loopback
def test_ml_check_allows_then_refuses_at_the_limit() -> None:
    async def scenario(client: aioredis.Redis, server: RespServer, runtime: Runtime) -> None:
        replies = [await client.execute_command("ML.CHECK", "acme") for _ in range(3)]
        for reply_, remaining in zip(replies, (2, 1, 0), strict=True):
            allowed, limit, left, reset_ms, retry_ms, path = reply_
            assert (allowed, limit, left, retry_ms, path) == (1, 3, remaining, 0, b"owner")
            assert 0 < reset_ms <= 86_400_000
        allowed, limit, left, reset_ms, retry_ms, path = await client.execute_command(
            "ML.CHECK", "acme"
        )
        assert (allowed, limit, left, path) == (0, 3, 0, b"owner")
        assert 0 < retry_ms <= 2 * 86_400_000
        # cost 0 peeks; a cost larger than the capacity can never fit: retry -1.
        assert (await client.execute_command("ML.CHECK", "acme", "0"))[0] == 1
        assert (await client.execute_command("ML.CHECK", "other", 4))[:5:4] == [0, -1]
        assert (await client.execute_command("ML.CHECK", "other", 3))[:3] == [1, 3, 0]
        # Unicode client ids are client ids like any other.
        assert (await client.execute_command("ML.CHECK", "zoë/tenant"))[:3] == [1, 3, 2]

    run(scenario)


@loopback
def test_cl_throttle_sequence_like_redis_cell() -> None:
    async def scenario(client: aioredis.Redis, server: RespServer, runtime: Runtime) -> None:
        # README example of redis-cell: 30 per 60 s with a burst of 15 (capacity 16).
        for n in range(16):
            reply_ = await client.execute_command("CL.THROTTLE", "user123", 15, 30, 60)
            assert reply_ == [0, 16, 15 - n, -1, 2 * (n + 1)]
        limited = await client.execute_command("CL.THROTTLE", "user123", 15, 30, 60)
        assert limited == [1, 16, 0, 2, 32]
        peek = await client.execute_command("CL.THROTTLE", "user123", 15, 30, 60, 0)
        assert peek == [0, 16, 0, -1, 32]
        too_big = await client.execute_command("CL.THROTTLE", "user123", 15, 30, 60, 17)
        assert too_big == [1, 16, 0, -1, 32]
        # One rule write for the key, whatever the number of calls; the rule is cluster
        # state that an operator can read like any other.
        assert server.stats["throttle_rule_writes"] == 1
        rule = runtime.node.rule_for(THROTTLE_PREFIX + "user123")
        assert str(rule) == "1/2s burst 15 algo token_bucket"
        # New arguments for the key replace its rule; the TAT carries over within the
        # series (same interval), so the bucket is still full.
        reply_ = await client.execute_command("CL.THROTTLE", "user123", 31, 30, 60)
        assert reply_[:3] == [0, 32, 15] and server.stats["throttle_rule_writes"] == 2
        # ML.CHECK sees the same bucket under the same client id; its remaining is capped
        # at the rule's limit (1), where CL.THROTTLE's counts the burst as redis-cell's does.
        peek = await client.execute_command("ML.CHECK", THROTTLE_PREFIX + "user123", 0)
        assert peek[1:3] == [1, 1]
        # Keys never fill the registry: past the share, the key closest to its expiry is
        # evicted (and written again by its next call), and new keys always work.
        registry = runtime.node.registry
        assert (registry.entry_count(), registry.call_count()) == (1, 1)  # default; user123
        await client.execute_command("CL.THROTTLE", "second", 15, 30, 60)
        await client.execute_command("CL.THROTTLE", "third", 15, 30, 60)
        assert registry.call_count() == 2 and registry.stats["calls_evicted"] == 1
        # Whichever was evicted is written again by its next call; its bucket (a counter)
        # outlived its rule.
        reply_ = await client.execute_command("CL.THROTTLE", "user123", 31, 30, 60)
        assert reply_[:3] == [0, 32, 14]
        for key in ("second", "third"):
            reply_ = await client.execute_command("CL.THROTTLE", key, 15, 30, 60)
            assert reply_[:3] == [0, 16, 14]
        assert server.stats["throttle_rule_writes"] >= 5 and registry.call_count() == 2

    run(scenario, throttle_registry_share=2)


@loopback
def test_pipelining_answers_in_order() -> None:
    async def scenario(client: aioredis.Redis, server: RespServer, runtime: Runtime) -> None:
        pipe = client.pipeline(transaction=False)
        for i in range(100):
            kind = i % 4
            if kind == 0:
                pipe.execute_command("PING")
            elif kind == 1:
                pipe.execute_command("ML.CHECK", "piped")
            elif kind == 2:
                pipe.execute_command("CL.THROTTLE", "piped", 9, 1, 60)
            else:
                pipe.execute_command("NOPE", i)
        results = await pipe.execute(raise_on_error=False)
        assert len(results) == 100
        assert results[0::4] == [True] * 25
        checks = results[1::4]
        assert [c[0] for c in checks] == [1, 1, 1] + [0] * 22
        assert [c[2] for c in results[2::4]] == list(range(9, -1, -1)) + [0] * 15
        assert all(isinstance(e, ResponseError) for e in results[3::4])
        assert "unknown command 'NOPE'" in str(results[3])

    run(scenario)


@loopback
def test_replies_of_a_loop_turn_are_written_at_its_end() -> None:
    """Each connection's replies of a loop turn go out in one write once the turn's reads
    have all run (``RespServer.write_soon``): writes in a row, as Redis makes them."""

    class Transport:
        def __init__(self, name: str) -> None:
            self.name = name

        def write(self, data: bytes) -> None:
            writes.append((self.name, data))

        def is_closing(self) -> bool:
            return False

        def close(self) -> None:
            writes.append((self.name, b"closed"))

        def pause_reading(self) -> None: ...
        def resume_reading(self) -> None: ...

    writes: list[tuple[str, bytes]] = []
    check = b"*2\r\n$8\r\nML.CHECK\r\n$1\r\nx\r\n"
    ping, quit_ = b"*1\r\n$4\r\nPING\r\n", b"*1\r\n$4\r\nQUIT\r\n"

    async def main() -> None:
        async with started_runtime(default_rule="100/minute") as runtime:
            server = RespServer(runtime)
            a, b, c = (resp_module._Connection(server) for _ in range(3))
            for connection, name in ((a, "a"), (b, "b"), (c, "c")):
                connection.connection_made(Transport(name))  # type: ignore[arg-type]
            a.data_received(check * 3)
            b.data_received(ping)
            a.data_received(ping)
            assert writes == []  # not yet: the turn's other reads first
            c.data_received(ping + quit_)  # closing: its replies go now, then the close
            assert writes == [("c", b"+PONG\r\n+OK\r\n"), ("c", b"closed")]
            await asyncio.sleep(0)
            assert [name for name, _ in writes[2:]] == ["a", "b"]
            assert writes[2][1].count(b"*6\r\n:1\r\n:100\r\n") == 3
            assert writes[2][1].endswith(b"+PONG\r\n") and writes[3][1] == b"+PONG\r\n"
            for connection in (a, b, c):
                connection.connection_lost(None)

    asyncio.run(main())


@loopback
def test_errors_keep_the_connection() -> None:
    async def scenario(client: aioredis.Redis, server: RespServer, runtime: Runtime) -> None:
        bad = {
            ("FOO", "bar"): "unknown command 'FOO'",
            ("ML.CHECK",): "wrong number of arguments for 'ml.check' command",
            ("ML.CHECK", "a", "1", "2"): "wrong number of arguments",
            ("ML.CHECK", "a", "x"): "cost must be an integer, got 'x'",
            ("ML.CHECK", "a", "-1"): "cost must be an integer from 0",
            ("ML.CHECK", "a", "1.5"): "cost must be an integer",
            ("ML.CHECK", "a", " 1"): "cost must be an integer",
            ("ML.CHECK", "a", "1_0"): "cost must be an integer",
            ("ML.CHECK", "a", "99999999999999999999"): "cost must be an integer",
            ("ML.CHECK", ""): "client id must not be empty",
            ("ML.CHECK", "x" * 257): "client id is 257 bytes long; the limit is 256",
            ("ML.CHECK", b"\xff\xfe"): "is not UTF-8 text",
            ("CL.THROTTLE", "k", "15", "30"): "wrong number of arguments for 'cl.throttle'",
            ("CL.THROTTLE", "k", "x", "30", "60"): "max_burst must be an integer, got 'x'",
            ("CL.THROTTLE", "k", "15", "0", "60"): "zero rate",
            ("CL.THROTTLE", "k", "-1", "30", "60"): "max_burst must be an integer from 0",
            ("CL.THROTTLE", "k", "15", "30", "60", "-2"): "quantity must be an integer from 0",
            ("CL.THROTTLE", "k", "0", "3000", "1"): "cannot be held by a rule",
            ("CL.THROTTLE", "k" * 245, "1", "1", "1"): "key is 245 bytes long; the limit is 244",
            ("CL.THROTTLE", "", "1", "1", "1"): "key must not be empty",
        }
        for command, message in bad.items():
            with pytest.raises(ResponseError, match=message.replace("(", r"\(")):
                await client.execute_command(*command)
        assert await client.ping() is True
        assert server.stats["command_errors"] >= len(bad)
        assert server.stats["protocol_errors"] == 0

    run(scenario)


@loopback
def test_protocol_garbage_is_answered_and_closed() -> None:
    async def scenario(client: aioredis.Redis, server: RespServer, runtime: Runtime) -> None:
        ping = b"*1\r\n$4\r\nPING\r\n"
        cases = {
            # What does not start with "*" is a line, an inline command, as Redis reads
            # one (test_resp_tooling.py): RESP values other than arrays included.
            b"garbage\r\n": b"-ERR unknown command 'garbage'\r\n",
            ping + b":5\r\n": b"+PONG\r\n-ERR unknown command ':5'\r\n",
            b"#f\r\n": b"-ERR unknown command '#f'",  # RESP3 false
            b"-ERR not for you\r\n": b"-ERR unknown command '-ERR'",
            bytes(range(256)) * 4: b"-ERR unknown command",  # lines of binary garbage
            # Arrays are RESP: anything but bulk strings in one is a protocol error.
            b"*1\r\n:5\r\n": b"-ERR Protocol error: expected an array of bulk strings\r\n",
            b"*1\r\n*1\r\n$4\r\nPING\r\n": b"-ERR Protocol error: expected an array",
            b"*-1\r\n": b"-ERR Protocol error: expected an array",
            b"*1\r\n$-1\r\n": b"-ERR Protocol error: expected an array",
            b"*1\r\n$x\r\n": b"-ERR Protocol error",
            b"*0\r\n" + ping: b"+PONG\r\n",  # an empty array is skipped, as Redis does
            ping + b"*1\r\n$4\r\nQUIT\r\n" + ping: b"+PONG\r\n+OK\r\n",  # nothing after QUIT
            # Found by scripts/fuzz_campaign.py: a RESP3 map keyed by an array made
            # hiredis raise TypeError (unhashable list), which escaped the server. Its
            # first line is an inline command now; the array after it is garbage.
            bytes.fromhex("25310d0a2a350d0add9e5d0a2b620d0a"): b"-ERR unknown command '%1'"
            + b'\r\n-ERR Protocol error, got "\\xdd" as reply type byte',
        }
        for payload, expected in cases.items():
            answer = await raw_exchange(server, payload)
            assert answer.startswith(expected), (payload[:30], answer)
        # The server lives on.
        assert await client.ping() is True
        assert server.stats["protocol_errors"] == len(cases) - 7

    run(scenario)


@loopback
def test_oversized_frames_are_refused() -> None:
    async def scenario(client: aioredis.Redis, server: RespServer, runtime: Runtime) -> None:
        limit = server.config.max_frame_bytes
        closing = b"-ERR Protocol error: command larger than 4096 bytes\r\n"
        # One bulk string that would never end, sent in full and in small pieces.
        huge = b"*2\r\n$4\r\nPING\r\n$100000000\r\n" + b"x" * (limit + 10)
        assert await raw_exchange(server, huge) == closing
        # A complete frame over the bound, in a single read.
        whole = b"*2\r\n$4\r\nPING\r\n$5000\r\n" + b"x" * 5000 + b"\r\n"
        assert await raw_exchange(server, whole) == closing
        # Many small arguments adding up past the bound.
        many = b"*2000\r\n" + b"$1\r\nx\r\n" * 1999
        assert await raw_exchange(server, many) == closing
        # Just under the bound is fine, and frames after it are counted afresh.
        arg = b"y" * (limit - 30)
        fits = b"*2\r\n$4\r\nPING\r\n$%d\r\n%b\r\n" % (len(arg), arg)
        assert len(fits) <= limit
        echoed = (b"$%d\r\n%b\r\n" % (len(arg), arg)) * 3
        assert await raw_request(server, fits * 3, len(echoed)) == echoed
        # Too many arguments is an error for the command, not the connection.
        args = b"*70\r\n" + b"$1\r\nx\r\n" * 70 + b"*1\r\n$4\r\nPING\r\n"
        expected = b"-ERR too many arguments (70; at most 64)\r\n+PONG\r\n"
        assert await raw_request(server, args, len(expected)) == expected
        assert server.stats["oversized"] == 3

    run(scenario, max_frame_bytes=4096)


@loopback
def test_half_frame_then_close_leaves_the_server_well() -> None:
    async def scenario(client: aioredis.Redis, server: RespServer, runtime: Runtime) -> None:
        for payload in (b"*2\r\n$8\r\nML.CHECK\r\n$4\r\nac", b"*3\r\n$11\r\nCL.THR", b"*"):
            reader, writer = await asyncio.open_connection(*server.address)
            writer.write(payload)
            await writer.drain()
            writer.close()
            await writer.wait_closed()
        # A client that half-closes after a command still gets its reply.
        assert await raw_exchange(server, b"*1\r\n$4\r\nPING\r\n") == b"+PONG\r\n"
        assert await client.ping() is True
        deadline = time.monotonic() + 5
        while len(server._connections) > 1:  # only redis-py's connection is left
            assert time.monotonic() < deadline, "connections were not released"
            await asyncio.sleep(0.01)
        # Nothing of the half-sent check was counted.
        assert (await client.execute_command("ML.CHECK", "acme", 0))[2] == 3

    run(scenario)


@loopback
def test_connection_limit() -> None:
    async def scenario(client: aioredis.Redis, server: RespServer, runtime: Runtime) -> None:
        assert await client.ping() is True  # one connection in use
        reader, writer = await asyncio.open_connection(*server.address)
        writer.write(b"*1\r\n$4\r\nPING\r\n")
        assert await reader.readexactly(7) == b"+PONG\r\n"  # the second is accepted
        third_reader, third_writer = await asyncio.open_connection(*server.address)
        refused = await asyncio.wait_for(third_reader.read(), 5)  # told, then closed
        assert refused == b"-ERR max number of clients reached\r\n"
        third_writer.close()
        assert server.stats["connections_refused"] == 1
        writer.close()
        await writer.wait_closed()

    run(scenario, max_connections=2)


@loopback
def test_idle_connections_are_closed() -> None:
    async def scenario(client: aioredis.Redis, server: RespServer, runtime: Runtime) -> None:
        reader, writer = await asyncio.open_connection(*server.address)
        started = time.monotonic()
        writer.write(b"*1\r\n$4\r\nPING\r\n")
        assert await reader.readexactly(7) == b"+PONG\r\n"
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
        assert time.monotonic() - started >= 0.2
        assert server.stats["idle_closed"] >= 1
        writer.close()

    run(scenario, idle_timeout_s=0.2)


@loopback
def test_deep_pipeline_is_paced_not_dropped() -> None:
    """Reading pauses while more replies are owed than ``max_pipeline``; none are lost,
    and they come in order. (A stand-in runtime makes every check wait a loop turn.)"""
    decided = 0

    async def check(client: str, cost: int) -> Decision:
        nonlocal decided
        await asyncio.sleep(0)
        decided += 1
        return Decision(True, 10**6, decided, 1.0, 0.0, "forwarded")

    def check_now(client: str, cost: int) -> asyncio.Future[Decision]:
        return asyncio.ensure_future(check(client, cost))

    def check_batch(clients: list[str], cost: int) -> asyncio.Future[list[Decision]]:
        return asyncio.gather(*(check(client, cost) for client in clients))

    runtime = SimpleNamespace(
        check=check,
        check_now=check_now,
        check_batch=check_batch,
        busy=False,
        on_not_busy=[],
    )

    async def main() -> None:
        server = RespServer(runtime, RespConfig(max_pipeline=8))  # type: ignore[arg-type]
        await server.start("127.0.0.1", 0)
        try:
            count = 3000
            reader, writer = await asyncio.open_connection(*server.address)
            writer.write(b"*2\r\n$8\r\nML.CHECK\r\n$4\r\ndeep\r\n" * count)  # no drain: read
            data = b""
            while data.count(b"$9\r\nforwarded") < count:
                chunk = await asyncio.wait_for(reader.read(1 << 16), 5)
                assert chunk, "the server closed the connection"
                data += chunk
            remaining = [int(r.split(b"\r\n")[2][1:]) for r in data.split(b"*6\r\n")[1:]]
            assert remaining == list(range(1, count + 1))
            assert server.stats["paused_pipeline"] >= 1
            writer.close()
        finally:
            await server.close()

    asyncio.run(main())


@loopback
def test_close_refuses_new_connections() -> None:
    async def main() -> None:
        async with started_runtime() as runtime:
            server = RespServer(runtime)
            host, port = await server.start("127.0.0.1", 0)
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"*1\r\n$4\r\nPING\r\n")
            assert await reader.readexactly(7) == b"+PONG\r\n"
            await server.close()
            assert await asyncio.wait_for(reader.read(), 5) == b""
            with pytest.raises(OSError):
                await asyncio.open_connection(host, port)
            await server.close()  # idempotent
            writer.close()

    asyncio.run(main())


@loopback
def test_cl_throttle_is_cluster_wide() -> None:
    """Two nodes, each with a RESP server: a key's bucket is one, whichever node is asked."""

    async def main() -> None:
        async with AsyncExitStack() as stack:
            first = await stack.enter_async_context(started_runtime("n1"))
            second = await stack.enter_async_context(
                started_runtime("n2", seeds=[first.node.config.addr])
            )
            deadline = time.monotonic() + 5
            while any(len(r.node.membership.alive_nodes()) < 2 for r in (first, second)):
                assert time.monotonic() < deadline, "two nodes on loopback did not converge"
                await asyncio.sleep(0.02)
            servers = [await stack.enter_async_context(resp_server(r)) for r in (first, second)]
            one, two = [await stack.enter_async_context(redis_client(s)) for s in servers]
            key = next(
                f"k{i}" for i in range(1000) if first.node.owner(THROTTLE_PREFIX + f"k{i}") == "n2"
            )
            command = ("CL.THROTTLE", key, 3, 1, 60)  # capacity 4, one per minute
            replies = [
                await (one if n % 2 == 0 else two).execute_command(*command) for n in range(5)
            ]
            assert [r[:3] for r in replies] == [
                [0, 4, 3],
                [0, 4, 2],
                [0, 4, 1],
                [0, 4, 0],
                [1, 4, 0],
            ]
            assert replies[4][3] in (59, 60)  # retry after: about one interval
            # n1 wrote the rule and forwarded; n2, the owner, decided everything.
            assert servers[0].stats["throttle_rule_writes"] == 1
            assert servers[1].stats["throttle_rule_writes"] == 0
            assert first.node.stats["forwarded_allowed"] == 2
            assert second.node.stats["owner_allowed"] == 2
            assert servers[0].stats["throttle_rule_mismatch"] == 0

    asyncio.run(main())


@loopback
@pytest.mark.skipif(
    shutil.which("redis-cli") is None, reason="redis-cli not installed (Debian: redis-tools)"
)
def test_redis_cli() -> None:
    async def scenario(client: aioredis.Redis, server: RespServer, runtime: Runtime) -> None:
        host, port = server.address

        async def cli(*args: str) -> str:
            argv = ["redis-cli", "-h", host, "-p", str(port), *args]
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            out, _ = await asyncio.wait_for(proc.communicate(), 10)
            return out.decode()

        assert await cli("PING") == "PONG\n"
        lines = (await cli("ML.CHECK", "cli-client", "2")).split()
        assert lines[:3] == ["1", "3", "1"] and lines[5] == "owner"
        throttled = await cli("CL.THROTTLE", "cli-key", "15", "30", "60")
        assert throttled.split() == ["0", "16", "15", "-1", "2"]
        assert "unknown command 'NOPE'" in await cli("NOPE")

    run(scenario)


@loopback
@pytest.mark.process
def test_daemon_serves_resp() -> None:
    """``meshlimit node --resp``: the ready line names the address; SIGTERM stops it."""
    command = [sys.executable, "-m", "meshlimit", "node", "--preset", "local"]
    command += ["--bind", f"127.0.0.1:{free_udp_port()}", "--resp", "127.0.0.1:0"]
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("meshlimit node ready ") and " http=off resp=127.0.0.1:" in line
        port = int(line.rsplit(":", 1)[1])

        async def talk() -> None:
            client = aioredis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
            try:
                assert await client.ping() is True
                assert (await client.execute_command("ML.CHECK", "acme"))[:3] == [1, 100, 99]
            finally:
                await client.aclose()

        asyncio.run(talk())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # A busy RESP port is reported before the node joins anyone (exit 1, no ready line).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        command[-1] = f"127.0.0.1:{port}"
        result = subprocess.run(command, capture_output=True, text=True, timeout=20)
    assert result.returncode == 1, result
    assert f"cannot bind RESP 127.0.0.1:{port}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "ready" not in result.stdout
