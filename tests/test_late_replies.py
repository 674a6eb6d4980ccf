"""A forwarded check the asker gave up on: answered once, a late reply counted, never a
suspicion; membership datagrams leave ahead of data ones; and an owner with too many
checks awaiting it gets explicit ``overloaded`` answers, not degraded ones.

The owner's replies are held back on the in-memory link of ``test_node_links`` past the
asker's forward timeout (a busy owner, not a dead one), then delivered. The asker must
have answered each check exactly once (``overloaded``: the owner's acks show it is there,
so its count stays the only one), must count each late reply without a second answer or a
second count, and must keep the owner alive: forward timeouts never feed failure
detection. A check lost twice on its way to an owner that answers the others (a lossy
link) is decided degraded, and its late reply counted as counted twice.
"""

from __future__ import annotations

from typing import Any, TypeVar

from test_node_links import NS_PER_MS, Link, client_owned_by, log_of

from meshlimit.cluster.node import Decided, MembershipChanged, Node
from meshlimit.cluster.wire import codec
from meshlimit.cluster.wire.messages import Ack, Envelope, Ping, ReplyBatch
from meshlimit.core.decision import Decision

CHECKS = 5
SlowRepliesLinkT = TypeVar("SlowRepliesLinkT", bound="SlowRepliesLink")


class SlowRepliesLink(Link):
    """The in-memory link, holding back datagrams that carry a reply ``slow`` sends."""

    def __init__(self, **overrides: Any) -> None:
        super().__init__(default_rule="100/hour", **overrides)
        self.slow = ""
        self.held: list[tuple[bytes, str, str]] = []

    def carry(self, src: str, dst: str, datagram: bytes, sender: Node) -> bool:
        messages = codec.decode(datagram, sender.limits).messages
        if src == self.slow and any(isinstance(m, ReplyBatch) for m in messages):
            self.held.append((datagram, src, dst))
            return False
        return True

    def release(self) -> None:
        """Deliver what was held back, now."""
        held, self.held = self.held, []
        for datagram, src, dst in held:
            self.nodes[dst].receive(
                datagram, self.nodes[src].config.addr, now_ns=self.now_ns, wall_ns=self.wall(dst)
            )
        self.settle()


def three_nodes(link: SlowRepliesLinkT) -> SlowRepliesLinkT:
    """``a``, then ``b`` and ``c`` joined through it, settled for two seconds."""
    link.add("a")
    for name in "bc":
        link.add(name, seeds=["a"])
    link.advance(2_000 * NS_PER_MS)
    return link


def test_a_late_reply_is_counted_and_never_answers_or_counts_again() -> None:
    link = three_nodes(SlowRepliesLink())
    client = client_owned_by(link, "a")
    asker = link.nodes["b"]
    link.slow = "a"
    seen_before = len(link.events["b"])
    tickets = []
    for _ in range(CHECKS):
        ticket = asker.check(client, 1, now_ns=link.now_ns, wall_ns=link.wall("b"))
        assert isinstance(ticket, int), "forwarding: a non-owner decided at once"
        tickets.append(ticket)
    link.settle()
    assert log_of(link, "a", client) == [("forwarded", True)] * CHECKS, "owner: not counted"
    link.advance(asker.config.forward_timeout_ns)
    assert asker.stats["forward_timeouts"] == CHECKS
    assert log_of(link, "b", client) == [], "asker: counted a check of a reachable owner"
    assert link.held, "link: no reply was held back"
    link.slow = ""
    link.release()
    for ticket in tickets:  # exactly one answer each, or this fails
        assert link.decided("b", ticket).path == "overloaded"
    assert log_of(link, "b", client) == [], "asker: a late reply counted"
    assert asker.stats["late_replies"] == CHECKS, "asker: late replies not counted"
    assert asker.stats["late_replies_counted_twice"] == 0
    assert asker.stats["unexpected_replies"] == 0
    assert asker.pending_count() == 0
    since = link.events["b"][seen_before:]
    changes = [e.event for e in since if isinstance(e, MembershipChanged)]
    assert changes == [], f"membership: timeouts changed {changes}"
    assert {m: s for m, _, s, _ in asker.members()}["a"] == "alive", "timeouts fed SWIM"
    assert sum(isinstance(e, Decided) for e in since) == CHECKS, "asker: not one answer each"


class LossyRepliesLink(SlowRepliesLink):
    """Holds back only the replies that answer request ``lost`` (a lossy link)."""

    def __init__(self, **overrides: Any) -> None:
        super().__init__(**overrides)
        self.lost = -1

    def carry(self, src: str, dst: str, datagram: bytes, sender: Node) -> bool:
        messages = codec.decode(datagram, sender.limits).messages
        replies = [m for m in messages if isinstance(m, ReplyBatch)]
        if any(r.request_id == self.lost for m in replies for r in m.results):
            self.held.append((datagram, src, dst))
            return False
        return True


def test_a_check_lost_twice_to_an_answering_owner_is_degraded_and_counted_twice() -> None:
    link = three_nodes(LossyRepliesLink())
    client = client_owned_by(link, "a")
    asker = link.nodes["b"]

    def answered_at_once() -> None:
        ticket = asker.check(client, 1, now_ns=link.now_ns, wall_ns=link.wall("b"))
        link.advance(NS_PER_MS)
        assert link.decided("b", ticket).path == "forwarded"  # type: ignore[arg-type]

    lost = asker.check(client, 1, now_ns=link.now_ns, wall_ns=link.wall("b"))
    assert isinstance(lost, int)
    link.lost = lost
    link.advance(NS_PER_MS)  # its batch leaves alone; the reply is held
    answered_at_once()  # the owner answers a later check: this one was lost on the way
    link.advance(asker.forwarding.timeout_ns())  # expires: sent once more
    assert asker.stats["forward_retries"] == 1
    link.advance(NS_PER_MS)
    answered_at_once()  # ... and the second sending is lost too
    link.advance(asker.forwarding.timeout_ns())
    decision = link.decided("b", lost)
    assert decision.path == "degraded" and decision.allowed, decision
    link.lost = -1
    link.release()
    assert asker.stats["late_replies"] == 1, "the first late reply is the late one"
    assert asker.stats["late_replies_counted_twice"] == 1
    assert [p for p, _ in log_of(link, "b", client)] == ["degraded"], "counted here once"


def test_probes_and_acks_leave_ahead_of_data() -> None:
    link = three_nodes(SlowRepliesLink())
    asker = link.nodes["b"]
    owned = [f"user-{i}" for i in range(2000) if asker.owner(f"user-{i}") == "a"][:400]
    for client in owned:  # full batches queue for a as they fill
        asker.check(client, 1, now_ns=link.now_ns, wall_ns=link.wall("b"))
    ping = Envelope("a", link.nodes["a"].config.addr, (Ping(7, "b", link.now_ns),))
    asker.receive(codec.encode(ping), ping.sender_addr, now_ns=link.now_ns)
    sent = [codec.decode(d, asker.limits).messages for d, _ in asker.datagrams_to_send()]
    assert len(sent) > 3, "forwarding: the checks did not fill several datagrams"
    assert any(isinstance(m, Ack) for m in sent[0]), "link: the ack waited behind data"
    assert not any(isinstance(m, Ack) for batch in sent[1:] for m in batch)
    link.settle()


PER_OWNER = 3


def test_a_backlogged_owner_gets_overloaded_answers_not_degraded_ones() -> None:
    link = SlowRepliesLink(max_pending_per_owner=PER_OWNER)
    link.add("a")
    for name in "bc":
        link.add(name, seeds=["a"])
    link.advance(2_000 * NS_PER_MS)
    asker = link.nodes["b"]
    busy, other = client_owned_by(link, "a"), client_owned_by(link, "c")
    link.slow = "a"
    now, wall = link.now_ns, link.wall("b")
    tickets = [asker.check(busy, 1, now_ns=now, wall_ns=wall) for _ in range(PER_OWNER)]
    assert all(isinstance(t, int) for t in tickets), "forwarding: not forwarded"
    refused = asker.check(busy, 1, now_ns=now, wall_ns=wall)
    assert isinstance(refused, Decision), "backpressure: a fourth check was queued"
    assert (refused.path, refused.allowed) == ("overloaded", False)
    assert refused.retry_after == asker.config.forward_timeout_ns / 1e9
    assert asker.stats["overloaded"] == 1
    assert log_of(link, "b", busy) == [], "backpressure: the refusal was counted"
    assert isinstance(asker.check(other, 1, now_ns=now, wall_ns=wall), int), "c held back"
    link.settle()
    link.advance(asker.config.forward_timeout_ns)  # the three time out: room again
    assert isinstance(asker.check(busy, 1, now_ns=link.now_ns, wall_ns=link.wall("b")), int)
    link.slow = ""
    link.release()
