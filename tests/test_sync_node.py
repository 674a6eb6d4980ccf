"""``SyncNode`` (``meshlimit/sync.py``): a cluster node on a background thread, on loopback."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from meshlimit.core.ring import HashRing
from meshlimit.core.rules import Rule
from meshlimit.sync import JoinTimeoutError, NodeForkedError, NodeStoppedError, SyncNode

pytestmark = pytest.mark.loopback

THREADS = 16
CHECKS_PER_THREAD = 500


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def node_threads(port: int) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"meshlimit-node-127.0.0.1:{port}"]


def start(port: int | None = None, **options: object) -> SyncNode:
    port = port or free_udp_port()
    options.setdefault("preset", "local")
    return SyncNode.start(f"127.0.0.1:{port}", **options)  # type: ignore[arg-type]


def away_from_a_minute_boundary(margin_s: float = 10.0) -> None:
    """Wait for the next minute if this one ends within ``margin_s``: windows align to wall
    time, and a sliding window that turns over mid-run would admit a few more."""
    into = time.time() % 60
    if into > 60 - margin_s:
        time.sleep(60 - into + 0.05)


def test_hammered_from_16_threads_admits_exactly_the_limit():
    with start(default="100/minute") as node:
        node.set_rule("hammered", "1000/minute")
        assert node.get_rule("hammered") == Rule.parse("1000/minute")
        away_from_a_minute_boundary()

        def hammer(_: int) -> Counter[tuple[bool, str]]:
            results: Counter[tuple[bool, str]] = Counter()
            for _ in range(CHECKS_PER_THREAD):
                decision = node.check("hammered")
                results[decision.allowed, decision.path] += 1
            return results

        with ThreadPoolExecutor(THREADS) as pool:
            total = sum(pool.map(hammer, range(THREADS)), Counter())
        assert total[True, "owner"] == 1000
        assert total[False, "owner"] == THREADS * CHECKS_PER_THREAD - 1000
        refused = node.check("hammered")
        assert not refused.allowed and refused.remaining == 0 and refused.retry_after > 0
        assert node.check("someone-else").allowed  # the default rule, a count of its own


def test_two_nodes_form_a_cluster_and_the_non_owner_forwards():
    with (
        start(node_id="n1", default="3/day") as first,
        start(node_id="n2", default="3/day", seeds=[f"127.0.0.1:{port_of(first)}"]) as second,
    ):
        deadline = time.monotonic() + 10
        while not all(alive(node) == {"n1", "n2"} for node in (first, second)):
            assert time.monotonic() < deadline, "two nodes on loopback did not converge"
            time.sleep(0.02)
        client = next(f"c{i}" for i in range(1000) if first.owner(f"c{i}") == "n2")
        assert second.owner(client) == "n2"
        forwarded = first.check(client, 2)
        assert forwarded.allowed and forwarded.path == "forwarded" and forwarded.remaining == 1
        owned = second.check(client)
        assert owned.allowed and owned.path == "owner" and owned.remaining == 0
        refused = first.check(client)
        assert not refused.allowed and refused.path == "forwarded"


def port_of(node: SyncNode) -> int:
    members = {name: addr for name, addr, _, _ in node.members()}
    return members[node.node_id][1]


def alive(node: SyncNode) -> set[str]:
    return {name for name, _, state, _ in node.members() if state == "alive"}


def test_rules_set_get_and_remove_through_the_loop_thread():
    with start(default="10/minute", rules={"vip": "100/minute"}) as node:
        assert node.get_rule("vip") == Rule.parse("100/minute")
        node.set_rule("vip", "200/minute")
        assert node.get_rule("vip") == Rule.parse("200/minute")
        node.remove_rule("vip")
        assert node.get_rule("vip") == Rule.parse("10/minute")
        node.set_tier("gold", "500/minute")
        node.set_rule("vip", "@gold")
        assert node.get_rule("vip") == Rule.parse("500/minute")
        node.set_default("20/minute")
        assert node.get_rule("anyone") == Rule.parse("20/minute")
        with pytest.raises(ValueError):
            node.check("")  # the node's own validation reaches the caller's thread


def test_stop_joins_the_thread_frees_the_port_and_refuses_further_calls():
    port = free_udp_port()
    node = start(port)
    assert node.running and len(node_threads(port)) == 1
    assert node.check("acme").allowed
    node.stop()
    assert not node.running
    assert node_threads(port) == []
    assert port_is_free(port)
    for call in (
        lambda: node.check("acme"),
        lambda: node.set_rule("acme", "1/s"),
        lambda: node.get_rule("acme"),
        node.members,
    ):
        with pytest.raises(NodeStoppedError, match="stopped"):
            call()
    node.stop()  # a second stop does nothing


def test_the_context_manager_stops_on_error_too():
    port = free_udp_port()
    with pytest.raises(KeyError), start(port):
        raise KeyError("the caller's own error")
    assert node_threads(port) == []
    assert port_is_free(port)


def test_a_port_in_use_fails_start_and_leaves_no_thread():
    port = free_udp_port()
    with start(port), pytest.raises(OSError):
        start(port)
    # Only the first node's thread ever held this name; it is gone with the first node.
    assert node_threads(port) == []


def test_calls_from_the_nodes_own_thread_are_refused():
    with start() as node:
        seen: list[BaseException] = []

        async def from_inside() -> None:
            try:
                node.check("acme")
            except RuntimeError as error:
                seen.append(error)

        asyncio.run_coroutine_threadsafe(from_inside(), node._loop).result(5)
        assert len(seen) == 1 and "own loop thread" in str(seen[0])


def test_start_waits_for_the_join_and_times_out_clearly_when_no_seed_answers():
    port, silent = free_udp_port(), free_udp_port()
    started = time.monotonic()
    with pytest.raises(JoinTimeoutError, match="did not join in 0.5 s: joining: no seed"):
        start(port, seeds=[f"127.0.0.1:{silent}"], join_timeout=0.5)
    assert time.monotonic() - started < 5
    assert node_threads(port) == [] and port_is_free(port), "the node was stopped"
    # join_timeout=0: back at once, not ready, deciding from the degraded quota; it joins
    # the seed when the seed comes up at the address it keeps trying.
    with start(port, seeds=[f"127.0.0.1:{silent}"], join_timeout=0) as joining:
        assert not joining.ready
        assert joining.check("acme").path == "degraded"
        with start(silent) as seed:
            assert joining.wait_ready(5), "joined once the seed came up"
            client = next(c for c in (f"c{i}" for i in range(500)) if seed.owner(c) == seed.node_id)
            assert joining.check(client).path == "forwarded"


def test_start_returns_joined_so_the_first_check_is_the_owners():
    ring = HashRing(["n1", "n2"])  # the ring n2 will know once it has joined
    client = next(c for c in (f"c{i}" for i in range(500)) if ring.owner(c) == "n1")
    with (
        start(node_id="n1") as first,
        start(node_id="n2", seeds=[f"127.0.0.1:{port_of(first)}"]) as second,
    ):
        assert second.ready
        assert second.check(client).path == "forwarded", "decided before it knew the ring"


def test_a_forked_child_is_refused_at_once_and_the_parent_carries_on():
    # gunicorn --preload: the node starts in the master, the workers are forks of it.
    with start(default="5/minute") as node:
        assert node.check("before").allowed
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report what a check does, then leave at once
            code = 1
            try:
                began = time.monotonic()
                try:
                    node.check("in-child")
                    answer = "answered"
                except NodeForkedError as error:
                    answer = f"refused {time.monotonic() - began:.3f} {error}"
                    node.stop()  # does nothing here, and must not hang
                    answer += f" | {node!r}"
                os.write(write_end, answer.encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            answer = pipe.read().decode()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, answer
        word, seconds, message = answer.split(" ", 2)
        assert word == "refused", answer
        assert float(seconds) < 0.1, "the child must be refused at once, not time out"
        assert f"started in process {os.getpid()}" in message and "Client" in message
        assert "forked>" in message  # the child's repr says so
        assert isinstance(NodeForkedError("x"), NodeStoppedError)
        # The parent's node never noticed.
        assert node.check("after").allowed and node.running


def test_the_node_api_has_what_the_limiter_has_and_refuses_bad_arguments_clearly():
    with start(default="3/minute", tiers={"gold": "5/minute"}, rules={"vip": "@gold"}) as node:
        assert node.get_rule("vip") == Rule.parse("5/minute")
        assert node.tiers() == {"gold": Rule.parse("5/minute")}
        assert node.default == Rule.parse("3/minute")
        assert node.owner("anyone") == node.node_id  # a cluster of one
        assert [node.check("r").allowed for _ in range(4)] == [True, True, True, False]
        node.reset("r")
        assert node.check("r").allowed
        node.assign_tier("r", "gold")
        assert node.get_rule("r").limit == 5
        with pytest.raises(ValueError, match="no tier 'glod'"):
            node.set_rule("r", "@glod")
        node.set_rule("multi", "2/second;4/minute")
        assert node.get_rule("multi").limits == (Rule.parse("2/second"), Rule.parse("4/minute"))
        node.remove_tier("gold")
        assert node.get_rule("vip") == node.default
        assert node.stats()["owner_allowed"] >= 4
        with pytest.raises(TypeError, match="cost must be an int"):
            node.check("r", "1")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="client id must be a str"):
            node.get_rule(5)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="rule must be a Rule"):
            node.set_rule("r", 10)  # type: ignore[arg-type]
        # remaining never exceeds the limit, burst or not
        node.set_rule("bursty", "2/minute burst 3")
        assert node.check("bursty").remaining == 2
    port = free_udp_port()
    for bad, error, message in [
        ({"rules": {"a": "@nope"}}, ValueError, "no tier 'nope' in tiers"),
        ({"max_clients": 0}, ValueError, "max_clients must be at least 1"),
        ({"preset": "lna"}, ValueError, "preset must be one of"),
        ({"seeds": "127.0.0.1:7401"}, TypeError, "seeds must be a list"),
        ({"default": 100}, TypeError, "default must be a Rule"),
        ({"tiers": [("gold", "1/s")]}, TypeError, "tiers must be a mapping"),
    ]:
        with pytest.raises(error, match=message):
            SyncNode.start(f"127.0.0.1:{port}", **bad)  # type: ignore[arg-type]
        assert port_is_free(port) and not node_threads(port)
