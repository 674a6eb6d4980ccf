"""Overload is answered, not misread as failure.

- A forward that times out while its owner has been answering (slowly, or at once until
  it stalled) is ``overloaded`` (refused, counted nowhere), not degraded: the owner's late
  count stays the only one. Only a silent owner's checks are degraded.
- The forward timeout adapts to the round trips it sees (RFC 6298), within bounds.
- A node that was itself stalled holds its probe inconclusive and accuses nobody.
- Degraded admissions are reported at a bounded pace per gossip round.
- The runtime lets at most ``max_inflight`` forwarded checks out at once; the rest wait
  their turn, untimed, and RESP stops reading while the queue is deep.

The sans-IO cases run on the in-memory link of ``test_node_links``; the runtime cases on
loopback, with every runtime stopped by its context manager.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
from runtimes import started_runtime
from test_late_replies import SlowRepliesLink
from test_node_links import NS_PER_MS, NS_PER_S, Link, client_owned_by, cluster, log_of

from meshlimit.cluster.node import Node
from meshlimit.cluster.node.config import NodeConfig
from meshlimit.cluster.node.degraded import DEGRADED_RESEND_MIN, DEGRADED_RESENDS_PER_S
from meshlimit.cluster.node.forwarding import MAX_TIMEOUT_MULT
from meshlimit.cluster.wire.messages import MemberState
from meshlimit.core.decision import Decision


def test_a_timeout_on_a_slow_owner_is_overloaded_not_degraded() -> None:
    link = cluster("abc", kind=SlowRepliesLink)
    client = client_owned_by(link, "a")
    asker = link.nodes["b"]
    timeout = asker.config.forward_timeout_ns
    # One reply that takes 60% of the timeout: the owner is answering, slowly.
    link.slow = "a"
    ticket = asker.check(client, 1, now_ns=link.now_ns, wall_ns=link.wall("b"))
    assert isinstance(ticket, int)
    link.advance(timeout * 6 // 10)
    link.slow = ""
    link.release()
    assert link.decided("b", ticket).path == "forwarded"
    assert asker.forwarding.owner_slow("a", link.now_ns), "a slow reply did not mark the owner"
    # Now its replies stop coming in time: the checks time out.
    link.slow = "a"
    tickets = [asker.check(client, 1, now_ns=link.now_ns, wall_ns=link.wall("b"))]
    link.advance(asker.forwarding.timeout_ns() + NS_PER_MS)
    decision = link.decided("b", tickets[0])  # type: ignore[arg-type]
    assert decision.path == "overloaded" and not decision.allowed, decision
    assert asker.stats["overloaded_slow_owner"] == 1
    assert [p for p, _ in log_of(link, "b", client)] == [], "asker: counted a check itself"
    link.slow = ""
    link.release()
    assert asker.stats["late_replies"] == 1 and asker.stats["late_replies_counted_twice"] == 0


def _answered_once() -> tuple[SlowRepliesLink, str, Node]:
    """A cluster whose owner ``a`` of ``client`` answered the asker ``b`` at once."""
    link = cluster("abc", kind=SlowRepliesLink)
    client = client_owned_by(link, "a")
    asker = link.nodes["b"]
    first = asker.check(client, 1, now_ns=link.now_ns, wall_ns=link.wall("b"))
    link.advance(NS_PER_MS)
    assert link.decided("b", first).path == "forwarded"  # type: ignore[arg-type]
    return link, client, asker


def test_a_timeout_on_an_owner_that_answered_at_once_is_overloaded_too() -> None:
    # The first stall of a 2x overload: the owner answered every check at once until it
    # stopped running for longer than the forward timeout. Busy, not gone.
    link, client, asker = _answered_once()
    link.slow = "a"  # now it stalls
    ticket = asker.check(client, 1, now_ns=link.now_ns, wall_ns=link.wall("b"))
    link.advance(asker.forwarding.timeout_ns() + NS_PER_MS)
    decision = link.decided("b", ticket)  # type: ignore[arg-type]
    assert decision.path == "overloaded" and not decision.allowed, decision
    assert asker.stats["overloaded_stalled_owner"] == 1
    assert [p for p, _ in log_of(link, "b", client)] == [], "asker: counted a check itself"


def test_a_node_that_itself_stalled_past_a_deadline_does_not_take_it_for_silence() -> None:
    # The asker is descheduled for longer than a probe interval with a check pending: when
    # it runs again, the owner's silence is judged as of the check's deadline.
    link, client, asker = _answered_once()
    link.slow = "a"
    ticket = asker.check(client, 1, now_ns=link.now_ns, wall_ns=link.wall("b"))
    link.settle()  # the check leaves
    link.off.add("b")  # b stops running (a and c go on)
    link.advance(2 * asker.config.membership.probe_interval_ns)
    link.off.discard("b")
    link.settle()
    decision = link.decided("b", ticket)  # type: ignore[arg-type]
    assert decision.path == "overloaded", decision
    assert asker.stats["overloaded_stalled_owner"] == 1


def test_an_owner_behind_on_replies_for_a_probe_interval_but_acking_is_busy() -> None:
    # Swamped: its replies queue for longer than a probe interval, its acks go out ahead of
    # them. Heard from, so busy, not gone (138-359 degraded a run under 3 x 300 x P64).
    link, client, asker = _answered_once()
    link.slow = "a"  # its replies are held; its acks and gossip still come
    link.advance(2 * asker.config.membership.probe_interval_ns)
    ticket = asker.check(client, 1, now_ns=link.now_ns, wall_ns=link.wall("b"))
    link.advance(asker.forwarding.timeout_ns() + NS_PER_MS)
    decision = link.decided("b", ticket)  # type: ignore[arg-type]
    assert decision.path == "overloaded", decision
    assert asker.stats["overloaded_stalled_owner"] == 1
    assert not asker.membership.is_suspect("a"), "the owner's acks stopped"


def test_an_owner_silent_for_a_probe_interval_is_taken_for_crashed() -> None:
    link, client, asker = _answered_once()
    link.off.add("a")  # silent from now on: no reply, no ack, no gossip
    link.advance(asker.config.membership.probe_interval_ns)
    ticket = asker.check(client, 1, now_ns=link.now_ns, wall_ns=link.wall("b"))
    link.advance(asker.forwarding.timeout_ns() + NS_PER_MS)
    if not asker.degraded.owner_unreachable("a"):  # else SWIM decided it: degraded too
        assert asker.stats["overloaded_stalled_owner"] == 0
    assert link.decided("b", ticket).path == "degraded"  # type: ignore[arg-type]


def test_a_first_timeout_on_an_owner_heard_from_is_overloaded() -> None:
    # A cold start under load: the owner has not answered any forward yet, and its first
    # replies come after the timeout. Its acks and gossip show it is there: busy, not gone
    # (it was decided degraded, 259 times per asker, on a healthy cluster).
    link = cluster("abc", kind=SlowRepliesLink)
    client = client_owned_by(link, "a")
    asker = link.nodes["b"]
    link.slow = "a"
    ticket = asker.check(client, 1, now_ns=link.now_ns, wall_ns=link.wall("b"))
    link.advance(asker.forwarding.timeout_ns() + NS_PER_MS)
    decision = link.decided("b", ticket)  # type: ignore[arg-type]
    assert decision.path == "overloaded" and not decision.allowed, decision
    assert asker.stats["overloaded_stalled_owner"] == 1
    link.slow = ""
    link.release()
    assert asker.stats["late_replies"] == 1 and asker.stats["late_replies_counted_twice"] == 0


def test_a_timeout_on_a_silent_owner_is_still_degraded() -> None:
    link = cluster("abc", kind=SlowRepliesLink)
    client = client_owned_by(link, "a")
    asker = link.nodes["b"]
    link.off.add("a")  # it stops running: nothing more comes from it
    link.advance(asker.config.membership.probe_interval_ns)
    assert not asker.degraded.owner_unreachable("a"), "the test needs an undetected owner"
    ticket = asker.check(client, 1, now_ns=link.now_ns, wall_ns=link.wall("b"))
    link.advance(asker.forwarding.timeout_ns() + NS_PER_MS)
    assert link.decided("b", ticket).path == "degraded"  # type: ignore[arg-type]
    assert asker.stats["overloaded_stalled_owner"] == 0


def test_the_forward_timeout_adapts_within_its_bounds() -> None:
    config = NodeConfig.preset("lan", "a", ("127.0.0.1", 7000))
    floor = config.forward_timeout_ns
    node = Node(config, random.Random(1), now_ns=0, wall_ns=NS_PER_S)
    fwd = node.forwarding
    assert fwd.timeout_ns() == floor
    for _ in range(20):
        fwd._sample_rtt(floor)  # answers that take the whole configured timeout
    assert floor < fwd.timeout_ns() <= MAX_TIMEOUT_MULT * floor
    for _ in range(20):
        fwd._sample_rtt(10 * floor)  # far slower: capped
    assert fwd.timeout_ns() == MAX_TIMEOUT_MULT * floor
    for _ in range(200):
        fwd._sample_rtt(NS_PER_MS)  # healthy again: back to the configured timeout
    assert fwd.timeout_ns() == floor


class StallLink(Link):
    """The in-memory link, where a stalled node neither runs nor reads: what is sent to it
    waits (as in its socket) until it resumes; it then ticks first, then reads (as libuv
    runs due timers before it polls)."""

    def __init__(self, **overrides: Any) -> None:
        super().__init__(**overrides)
        self.stalled = ""
        self.unread = ""  # runs, but what is sent to it waits unread
        self.held: list[tuple[bytes, str, str]] = []

    def up(self) -> list[tuple[str, Node]]:
        return [(n, node) for n, node in super().up() if n != self.stalled]

    def carry(self, src: str, dst: str, datagram: bytes, sender: Node) -> bool:
        if dst in (self.stalled, self.unread):
            self.held.append((datagram, src, dst))
            return False
        return True

    def resume(self) -> None:
        name, self.stalled, self.unread = self.stalled, "", ""
        node = self.nodes[name]
        node.tick(now_ns=self.now_ns, wall_ns=self.wall(name))
        held, self.held = self.held, []
        for datagram, src, _ in held:
            node.receive(
                datagram, self.nodes[src].config.addr, now_ns=self.now_ns, wall_ns=self.wall(name)
            )
        self.settle()


def test_a_stalled_node_accuses_nobody() -> None:
    link = cluster("abc", kind=StallLink)
    a = link.nodes["a"]
    interval = a.config.membership.probe_interval_ns
    for _ in range(3):  # stalls, each just after a sends a probe and longer than a round
        link.advance(a.membership._next_probe_at - link.now_ns - 1)
        link.unread = "a"
        link.advance(1)  # a sends its next ping...
        link.stalled = "a"  # ...and stalls before it reads the ack
        link.advance(2 * interval)
        link.resume()
        link.advance(interval)
    assert a.membership.stats["probes_inconclusive"] >= 3, a.membership.stats
    assert a.membership.stats["stalls"] >= 3
    accused = [m.node for m in a.membership.members() if m.state != MemberState.ALIVE]
    assert not accused, f"a stalled node accused its peers: {accused}"
    assert a.membership.local_health > 0, "a stall did not raise the awareness score"


def test_degraded_admissions_are_reported_at_a_bounded_pace() -> None:
    link = cluster("abc", default_rule="1000/hour")
    b = link.nodes["b"]
    clients = [f"user-{i}" for i in range(3000)]
    for client in clients:
        b.degraded.note_admitted("sliding_window:3600000000000", client)
        b.counters.check(client, b.registry.resolve(client), 1, now_ns=link.wall("b"))
    sent: list[int] = []
    real_send = b.replication.send_slots

    def count(by_node: dict[str, list[Any]]) -> None:
        sent.append(len({s.client for slots in by_node.values() for s in slots}))
        real_send(by_node)

    b.replication.send_slots = count  # type: ignore[method-assign]
    b.degraded.resend(link.wall("b"), b.ring)
    budget = max(
        DEGRADED_RESEND_MIN, DEGRADED_RESENDS_PER_S * b.config.gossip_interval_ns // NS_PER_S
    )
    assert sent == [budget] and budget < len(clients), f"resend: {sent} in one round"


@contextlib.asynccontextmanager
async def two_runtimes() -> AsyncIterator[Any]:
    """Runtimes ``a`` and ``b`` joined through ``a``, ``b`` with room for 2 forwards."""
    async with (
        started_runtime("a", default_rule="1000/hour") as a,
        started_runtime("b", seeds=[a.node.config.addr], default_rule="1000/hour") as b,
    ):
        assert await b.wait_ready(5.0)
        await asyncio.sleep(0.3)
        b.max_inflight = 2
        yield b


def test_checks_wait_for_room_when_too_many_are_in_flight() -> None:
    async def main() -> None:
        async with two_runtimes() as b:
            clients = [f"user-{i}" for i in range(400) if b.node.owner(f"user-{i}") == "a"]
            decisions = await asyncio.gather(*(b.check(c) for c in clients[:40]))
            assert all(isinstance(d, Decision) for d in decisions)
            assert {d.path for d in decisions} == {"forwarded"}, decisions
            assert b.node.stats["checks_waited"] >= 30, b.node.stats
            assert b.node.stats["busy_periods"] >= 1 and not b.busy

    asyncio.run(main())


def test_a_check_that_waited_too_long_for_room_is_overloaded_not_sent() -> None:
    """A queue left behind by an overload is answered at once, not forwarded for clients
    that gave up long ago (3 x 300 connections x P64 left seconds of it)."""

    async def main() -> None:
        async with two_runtimes() as b:
            clients = [f"user-{i}" for i in range(400) if b.node.owner(f"user-{i}") == "a"]
            b.max_wait_ns = 0  # any wait is too long
            first = b.check_batch(clients[:4])  # more than max_inflight (2): in flight
            late = b.check_batch(clients[4:8])  # waits for room, as one
            single = asyncio.ensure_future(b.check(clients[8]))
            assert isinstance(first, asyncio.Future) and isinstance(late, asyncio.Future)
            assert {d.path for d in await first} == {"forwarded"}
            assert [d.path for d in await late] == ["overloaded"] * 4
            assert (await single).path == "overloaded"
            assert b.node.stats["overloaded_waited_too_long"] == 5
            assert b.node.stats["batched_checks"] == 4, "checks that waited were sent"

    asyncio.run(main())


class _SilentTransport:
    """A RESP connection's transport that keeps what is written, for a closed client."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


def test_a_closed_connections_checks_waiting_for_room_are_never_sent() -> None:
    """RESP: a client gone while its checks wait for room withdraws them (the queue of an
    overload's departed clients is not forwarded for nobody)."""
    from meshlimit.cluster.daemon import resp as resp_module

    async def main() -> None:
        async with two_runtimes() as b:
            clients = [f"user-{i}" for i in range(400) if b.node.owner(f"user-{i}") == "a"]
            server = resp_module.RespServer(b)
            connection = resp_module._Connection(server)
            connection.connection_made(_SilentTransport())  # type: ignore[arg-type]
            frames = [f"*2\r\n$8\r\nML.CHECK\r\n${len(c)}\r\n{c}\r\n" for c in clients]
            connection.data_received("".join(frames[:4]).encode())  # in flight
            connection.data_received("".join(frames[4:8]).encode())  # waits for room
            await asyncio.sleep(0)
            assert b.node.stats["checks_waited"] == 4
            connection.connection_lost(None)
            for _ in range(50):
                await asyncio.sleep(0.01)
                if not b.node.forwarding.pending and not b._waiting:
                    break
            assert b.node.stats["batched_checks"] == 4, "a departed client's checks were sent"
            assert b._waiting_checks == 0 and not b.busy

    asyncio.run(main())


def test_a_front_end_batch_is_one_future_and_waits_for_room_as_one() -> None:
    """``Runtime.check_batch``: a batch this node decides alone is a list at once; one
    with forwarded checks is one future of every decision in order (owner-local ones
    included), done when the owners have answered; while checks wait for room a batch
    waits as one, counted as its checks; every forwarded check is timed."""

    async def main() -> None:
        async with two_runtimes() as b:
            timed: list[str] = []
            b.on_forwarded = lambda _ns, path: timed.append(path)
            clients = [f"user-{i}" for i in range(40)]
            owned = [c for c in clients if b.node.owner(c) == "b"]
            assert owned and len(owned) < len(clients) - 2
            alone = b.check_batch(owned)
            assert isinstance(alone, list) and {d.path for d in alone} == {"owner"}
            first = b.check_batch(clients)  # more forwarded than max_inflight (2)
            second = b.check_batch(clients[:5])  # must wait, as one, behind the first
            assert isinstance(first, asyncio.Future) and isinstance(second, asyncio.Future)
            await asyncio.sleep(0)  # the waiting batch's task starts waiting
            assert b.node.stats["checks_waited"] == 5
            decided = await first
            assert [d.path == "owner" for d in decided] == [c in owned for c in clients]
            assert {d.path for d in decided} == {"owner", "forwarded"}
            assert len(await second) == 5
            forwarded = [c for c in clients + clients[:5] if c not in owned]
            assert sorted(timed) == ["forwarded"] * len(forwarded)
            assert not b.busy and not b._batched
            with pytest.raises(ValueError):
                b.check_batch(["ok", ""])
            b.max_inflight = 0  # as while checks wait: still raised at once
            with pytest.raises(ValueError):
                b.check_batch(["ok", ""])

    asyncio.run(main())
