"""Authenticated cluster datagrams: forged, replayed, stale and truncated packets are
dropped and counted before decoding; keys rotate without downtime."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshlimit.cluster.node import Node
from meshlimit.cluster.node.config import NodeConfig
from meshlimit.cluster.wire.auth import TRAILER_BYTES, new_guard, parse_key_file

KEY = b"k" * 32
OLD = b"o" * 32
NOW = 1_800_000_000_000_000_000


def test_round_trip_and_trailer_size() -> None:
    sender, receiver = new_guard([KEY], 1), new_guard([KEY], 2)
    sealed = sender.seal(b"payload", now_ns=NOW)
    assert len(sealed) == len(b"payload") + TRAILER_BYTES
    assert receiver.open(sealed, now_ns=NOW) == b"payload"


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: d[:-1] + bytes([d[-1] ^ 1]), "auth_bad_mac"),
        (lambda d: bytes([d[0] ^ 1]) + d[1:], "auth_bad_mac"),
        (lambda d: d[:10], "auth_short"),
        (lambda d: b"", "auth_short"),
    ],
)
def test_tampered_datagrams_are_dropped_and_counted(mutate, reason) -> None:
    sealed = new_guard([KEY], 1).seal(b"payload", now_ns=NOW)
    receiver = new_guard([KEY], 2)
    assert receiver.open(mutate(sealed), now_ns=NOW) is None
    assert receiver.dropped == {reason: 1}


def test_a_replayed_datagram_is_refused_and_reordering_within_the_window_is_not() -> None:
    sender, receiver = new_guard([KEY], 1), new_guard([KEY], 2)
    first, second, third = (sender.seal(b"%d" % i, now_ns=NOW) for i in range(3))
    assert receiver.open(third, now_ns=NOW) == b"2"
    assert receiver.open(first, now_ns=NOW) == b"0"  # late but new
    assert receiver.open(first, now_ns=NOW + 1) is None  # seen
    assert receiver.open(second, now_ns=NOW) == b"1"
    assert receiver.dropped == {"auth_replay": 1}


def test_stale_datagrams_are_refused() -> None:
    sender, receiver = new_guard([KEY], 1), new_guard([KEY], 2, max_age_ns=10)
    sealed = sender.seal(b"x", now_ns=NOW)
    assert receiver.open(sealed, now_ns=NOW + 11) is None
    assert receiver.dropped == {"auth_stale": 1}


def test_key_rotation_accepts_any_key_of_the_ring() -> None:
    old_sender = new_guard([OLD], 1)
    rotated = new_guard([KEY, OLD], 2)  # new primary, old still accepted
    assert rotated.open(old_sender.seal(b"a", now_ns=NOW), now_ns=NOW) == b"a"
    assert new_guard([OLD], 3).open(rotated.seal(b"b", now_ns=NOW), now_ns=NOW) is None


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_pass(data: bytes) -> None:
    receiver = new_guard([KEY], 2)
    assert receiver.open(data, now_ns=NOW) is None


def test_key_file_parsing() -> None:
    assert parse_key_file("# comment\n" + "ab" * 16 + "\nsecond-key-long-enough\n") == (
        bytes.fromhex("ab" * 16),
        b"second-key-long-enough",
    )
    with pytest.raises(ValueError, match="line 1"):
        parse_key_file("short")
    with pytest.raises(ValueError, match="no key"):
        parse_key_file("# nothing\n")


def _node(name: str, keys: tuple[bytes, ...], seed: int) -> Node:
    config = NodeConfig.preset("sim", name, (name, 1), cluster_keys=keys)
    return Node(config, random.Random(seed), now_ns=0, wall_ns=NOW)


def _exchange(nodes: list[Node], now: int, rounds: int = 6) -> None:
    by_addr = {n.config.addr: n for n in nodes}
    for _ in range(rounds):
        for node in nodes:
            for datagram, addr in node.datagrams_to_send():
                if addr in by_addr:
                    by_addr[addr].receive(datagram, node.config.addr, now_ns=now, wall_ns=NOW + now)


def test_keyed_nodes_form_a_cluster_and_an_unkeyed_or_wrong_keyed_node_cannot_join() -> None:
    a, b = _node("a", (KEY,), 1), _node("b", (KEY,), 2)
    a.start([], now_ns=1)
    b.start([("a", 1)], now_ns=1)
    _exchange([a, b], 2)
    assert {m[0] for m in a.members()} == {"a", "b"}
    intruder = _node("x", (OLD,), 3)
    intruder.start([("a", 1)], now_ns=3)
    _exchange([a, intruder], 4)
    assert {m[0] for m in a.members()} == {"a", "b"}
    assert a.dropped["auth_bad_mac"] >= 1


def test_a_replayed_forwarded_check_does_not_consume_quota() -> None:
    a, b = _node("a", (KEY,), 1), _node("b", (KEY,), 2)
    a.start([], now_ns=1)
    b.start([("a", 1)], now_ns=1)
    _exchange([a, b], 2)
    client = next(c for c in (f"c{i}" for i in range(200)) if b.owner(c) == "a")
    ticket = b.check(client, 10, now_ns=10, wall_ns=NOW + 10)
    assert isinstance(ticket, int)
    flush_at = 10 + b.config.batch_window_ns
    b.tick(now_ns=flush_at, wall_ns=NOW + flush_at)  # the batch window closes
    captured = [d for d, addr in b.datagrams_to_send() if addr == ("a", 1)]
    for datagram in captured:
        a.receive(datagram, ("b", 1), now_ns=11, wall_ns=NOW + 11)
    rule = a.rule_for(client)
    counter = a.counters.get(rule.series, client)
    assert counter is not None and counter.cur.total == 10
    for datagram in captured * 3:  # the attacker replays what it captured
        a.receive(datagram, ("b", 1), now_ns=12, wall_ns=NOW + 12)
    assert counter.cur.total == 10
    assert a.dropped["auth_replay"] == 3 * len(captured)


def test_a_huge_sequence_jump_is_accepted_without_building_a_huge_window() -> None:
    sender, receiver = new_guard([KEY], 1), new_guard([KEY], 2)
    assert receiver.open(sender.seal(b"a", now_ns=NOW), now_ns=NOW) == b"a"
    sender.seq = 2**63  # found by the fuzz campaign: a MemoryError before the fix
    assert receiver.open(sender.seal(b"b", now_ns=NOW), now_ns=NOW) == b"b"


def test_a_new_life_of_a_sender_gets_a_fresh_replay_window() -> None:
    receiver = new_guard([KEY], 1)
    old_life = new_guard([KEY], 7)
    for _ in range(5):
        assert receiver.open(old_life.seal(b"x", now_ns=NOW), now_ns=NOW) == b"x"
    same_boot = new_guard([KEY], 7)  # a restart that drew the same boot id: seq 1 again
    assert receiver.open(same_boot.seal(b"y", now_ns=NOW), now_ns=NOW) is None
    assert receiver.dropped["auth_replay"] == 1
    new_life = new_guard([KEY], 8)
    assert receiver.open(new_life.seal(b"z", now_ns=NOW), now_ns=NOW) == b"z"
