"""``meshlimit.client``: ``Client`` and ``AsyncClient`` against real daemons on loopback.

A two-node cluster (``meshlimit node --resp``, started by the module's fixture and always
stopped) serves most tests; the fail-open/closed/raise tests start and stop a daemon of
their own. Rules use day-long windows so that no window rolls over while a test runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from meshlimit.client import AsyncClient, Client, DaemonUnavailable
from meshlimit.core.rules import Rule, parse_rule
from meshlimit.processes import HOST, NodeProcess, free_port, wait_for

pytestmark = [pytest.mark.loopback, pytest.mark.process]

DAY_NS = 86_400 * 1_000_000_000


class Daemon:
    """A ``meshlimit node`` with a RESP port, kept across restarts."""

    def __init__(self, name: str, seeds: list[int] | None = None, default: str = "5/day") -> None:
        self.resp_port = free_port(socket.SOCK_STREAM)
        self.node = NodeProcess(
            name, seeds=seeds or [], default=default, extra=["--resp", f"{HOST}:{self.resp_port}"]
        )

    @property
    def address(self) -> str:
        return f"{HOST}:{self.resp_port}"


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[Daemon, Daemon]]:
    first = Daemon("c1")
    second = Daemon("c2", seeds=[first.node.udp_port])
    try:
        first.node.start()
        second.node.start()

        def both_alive() -> bool:
            return all(
                sorted(s for s in d.node.members().values()) == ["alive", "alive"]
                for d in (first, second)
            )

        wait_for("both members alive in both views", both_alive, 10)
        yield first, second
    finally:
        first.node.stop()
        second.node.stop()


def dead_address() -> str:
    """A loopback port nobody listens on (connections are refused)."""
    return f"{HOST}:{free_port(socket.SOCK_STREAM)}"


def test_check_rules_and_reset_through_one_daemon(pair: tuple[Daemon, Daemon]) -> None:
    with Client(pair[0].address) as client:
        decisions = [client.check("solo") for _ in range(6)]
        assert [d.allowed for d in decisions] == [True] * 5 + [False]
        assert [d.remaining for d in decisions[:5]] == [4, 3, 2, 1, 0]
        first = decisions[0]
        assert (first.limit, first.window_ns, first.fallback) == (5, DAY_NS, False)
        assert first.path in ("owner", "forwarded") and 0 < first.reset_after <= 86_400
        refused = decisions[5]
        assert 0 < refused.retry_after <= 2 * 86_400 and not math.isinf(refused.retry_after)
        assert client.check("solo", 0).allowed  # a peek
        assert math.isinf(client.check("solo", 6).retry_after)  # never fits
        # Rules: set (several limits), read, remove; a reset forgets the counts.
        client.set_rule("solo", "2/minute;7/day")
        assert client.get_rule("solo") == parse_rule("2/minute;7/day")
        # The day's 5 counted so far count under the new rule's day too: 2 more fit...
        assert client.check("solo").allowed and client.check("solo").allowed
        # ...and then both limits refuse: the day's wait, the longest, is reported.
        full = client.check("solo")
        assert not full.allowed and (full.limit, full.window_ns) == (7, DAY_NS)
        client.reset("solo")  # counts forgotten: now the minute is the tighter limit
        assert client.check("solo").allowed and client.check("solo").allowed
        blocked = client.check("solo")
        assert not blocked.allowed and (blocked.limit, blocked.window_ns) == (2, 60 * 10**9)
        assert blocked.retry_after <= 120  # a sliding window: the count slides out
        assert client.remove_rule("solo") is True and client.remove_rule("solo") is False
        assert client.get_rule("solo") == parse_rule("5/day")
        assert client.check("solo").remaining == 2  # 2 of the default's 5 spent
        client.set_rule("solo-2", Rule(3, DAY_NS))
        assert client.get_rule("solo-2") == Rule(3, DAY_NS)
        # The daemon's refusals are ValueErrors; wrong types TypeErrors, before any IO.
        with pytest.raises(ValueError, match="no tier 'glod'"):
            client.set_rule("solo", "@glod")
        with pytest.raises(ValueError, match="fortnight"):
            client.set_rule("solo", "1/fortnight")
        with pytest.raises(ValueError, match="client id"):
            client.check("x" * 300)
        with pytest.raises(TypeError, match="client id must be a str"):
            client.check(5)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="cost must be an int"):
            client.check("solo", 1.5)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="closed"):
        client.check("solo")


def test_keys_spread_over_both_daemons_and_each_limit_holds_cluster_wide(
    pair: tuple[Daemon, Daemon],
) -> None:
    keys = [f"spread-{n}" for n in range(20)]
    with Client([pair[0].address, pair[1].address]) as client:
        admitted = Counter(k for k in keys for _ in range(7) if client.check(k).allowed)
    assert admitted == dict.fromkeys(keys, 5)
    # Both daemons served some of the keys (their first choice is a hash of the key).
    with Client([pair[0].address, pair[1].address]) as client:
        order = {client._options.addresses.order(k)[0] for k in keys}
    assert order == {0, 1}


def test_threads_sharing_one_client_admit_exactly_the_limit(pair: tuple[Daemon, Daemon]) -> None:
    with Client([pair[0].address, pair[1].address], pool_size=3, timeout_ms=2000) as client:
        client.set_rule("shared", "150/day")
        wait_for("the rule on both nodes", lambda: client.get_rule("shared").limit == 150, 5)

        def hammer(_: int) -> int:
            return sum(client.check("shared").allowed for _ in range(25))

        with ThreadPoolExecutor(12) as pool:
            admitted = sum(pool.map(hammer, range(12)))  # 300 checks from 12 threads
    assert admitted == 150


def test_fail_over_to_the_next_address_and_back_off_the_dead_one(
    pair: tuple[Daemon, Daemon],
) -> None:
    with Client([dead_address(), pair[0].address], dead_for_ms=60_000) as client:
        keys = [f"failover-{n}" for n in range(10)]
        first_dead = [k for k in keys if client._options.addresses.order(k)[0] == 0]
        assert first_dead, "some keys pick the dead address first"
        decisions = [client.check(k) for k in keys]
        assert all(d.allowed and not d.fallback for d in decisions)
        # The dead address is skipped now: no call tries it for a minute.
        assert client._options.addresses.order(first_dead[0]) == [1]


def test_unreachable_daemon_allow_deny_raise_then_recovery(tmp_path: object) -> None:
    daemon = Daemon("c9", default="3/day")
    daemon.node.start()
    clients = {
        policy: Client(daemon.address, on_error=policy, timeout_ms=300, dead_for_ms=200)
        for policy in ("allow", "deny", "raise")
    }
    try:
        for client in clients.values():
            assert client.check("down").path in ("owner", "forwarded")
        daemon.node.kill()
        began = time.monotonic()
        allowed = clients["allow"].check("down")
        assert allowed.allowed and allowed.fallback and allowed.path == "fallback"
        assert (allowed.limit, allowed.remaining, allowed.window_ns) == (0, 0, 0)
        denied = clients["deny"].check("down")
        assert not denied.allowed and denied.fallback and 0 < denied.retry_after <= 0.2
        with pytest.raises(DaemonUnavailable, match="no meshlimit daemon reachable"):
            clients["raise"].check("down")
        # Rule calls raise whatever the policy: a rule change must not silently vanish.
        with pytest.raises(DaemonUnavailable):
            clients["allow"].set_rule("down", "1/day")
        assert time.monotonic() - began < 1.0, "a refused connection fails at once"
        # While the address backs off, calls do not even try it.
        assert clients["allow"]._options.addresses.order("down") == []
        assert clients["allow"].check("down").fallback
        # The daemon comes back on the same port: pooled connections to the dead one are
        # replaced and the back-off runs out, so checks are the cluster's again.
        daemon.node.start()
        wait_for("the allow client back", lambda: not clients["allow"].check("x").fallback, 5)
        assert clients["deny"].check("down").path in ("owner", "forwarded")
        assert clients["raise"].check("down").allowed  # a new life: counts start afresh
    finally:
        for client in clients.values():
            client.close()
        daemon.node.stop()


def test_a_daemon_that_never_answers_costs_at_most_the_timeout() -> None:
    # A listening socket nobody reads: connections succeed, replies never come.
    with socket.socket() as silent:
        silent.bind((HOST, 0))
        silent.listen(16)
        address = f"{HOST}:{silent.getsockname()[1]}"
        with Client(address, timeout_ms=150, on_error="deny") as client:
            began = time.monotonic()
            decision = client.check("slow")
            took = time.monotonic() - began
        assert decision.fallback and not decision.allowed
        assert 0.14 <= took < 0.5, took


def test_the_async_client(pair: tuple[Daemon, Daemon]) -> None:
    async def scenario() -> None:
        addresses = [pair[0].address, pair[1].address]
        async with AsyncClient(addresses, pool_size=4, timeout_ms=2000) as client:
            await client.set_rule("async-shared", "40/day")
            rule = await client.get_rule("async-shared")
            assert rule == parse_rule("40/day")
            decisions = await asyncio.gather(*(client.check("async-shared") for _ in range(60)))
            assert sum(d.allowed for d in decisions) == 40
            assert {d.window_ns for d in decisions} == {DAY_NS}
            await client.reset("async-shared")
            assert (await client.check("async-shared")).allowed
            assert await client.remove_rule("async-shared") is True
            with pytest.raises(ValueError, match="no tier"):
                await client.set_rule("async-shared", "@nope")
        async with AsyncClient([dead_address()], on_error="allow") as down:
            decision = await down.check("anything")
            assert decision.fallback and decision.allowed
        async with AsyncClient([dead_address()], on_error="raise") as down:
            with pytest.raises(DaemonUnavailable):
                await down.check("anything")
        async with AsyncClient([dead_address(), addresses[0]], dead_for_ms=60_000) as half:
            assert all([not (await half.check(f"af-{n}")).fallback for n in range(6)])

    asyncio.run(scenario())


def test_arguments_are_checked_when_the_client_is_made() -> None:
    with pytest.raises(ValueError, match="not HOST:PORT"):
        Client("localhost")
    with pytest.raises(TypeError, match="addresses must be"):
        Client([])
    with pytest.raises(TypeError, match="timeout_ms must be an int"):
        Client("127.0.0.1:1", timeout_ms=0.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout_ms must be at least 1"):
        Client("127.0.0.1:1", timeout_ms=0)
    with pytest.raises(ValueError, match="on_error must be"):
        Client("127.0.0.1:1", on_error="ignore")
    with pytest.raises(ValueError, match="pool_size must be at least 1"):
        AsyncClient("127.0.0.1:1", pool_size=0)
    assert Client("127.0.0.1:1", on_error="open").on_error == "allow"  # the old spelling
    assert Client("[::1]:6380")._options.addresses.all == [("::1", 6380)]
    assert threading.active_count() >= 1


def test_a_node_that_says_it_cannot_serve_is_failed_over(pair: tuple[Daemon, Daemon]) -> None:
    # A full front-end (or one shutting down) answers an error and closes: that is no
    # answer to the command, so the next address is asked.
    server = socket.create_server((HOST, 0))
    full = f"{HOST}:{server.getsockname()[1]}"

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = server.accept()
                with connection:
                    connection.sendall(b"-ERR max number of clients reached\r\n")

    threading.Thread(target=serve, daemon=True).start()
    try:
        with Client([full, pair[0].address]) as client:
            key = next(
                k
                for k in (f"full-{n}" for n in range(50))
                if client._options.addresses.order(k)[0] == 0
            )
            decision = client.check(key)
            assert decision.allowed and not decision.fallback
            assert client._options.addresses.order(key) == [1]  # the full one backs off
    finally:
        server.close()
