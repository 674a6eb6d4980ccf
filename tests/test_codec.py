"""Tests for the wire codec: round trips, bounds, fuzzing, and datagram packing."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshlimit.cluster.wire.codec import (
    DEFAULT_LIMITS,
    PROTOCOL_VERSION,
    REASONS,
    DecodeError,
    Limits,
    Packed,
    _decoder_source,
    decode,
    encode,
    fit_items,
    message_budget,
    pack_datagrams,
)
from meshlimit.cluster.wire.messages import (
    Ack,
    CheckBatch,
    CheckResult,
    CounterDeltas,
    CounterSlot,
    Envelope,
    HandoverDone,
    IndirectAck,
    Join,
    JoinReply,
    MemberUpdate,
    Message,
    Ping,
    PingReq,
    ReplyBatch,
    RuleDigest,
    RuleEntries,
    RuleEntry,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BIG = Limits(max_datagram_bytes=1 << 20)
"""Default bounds but for the datagram size, so that round trips of any size can be checked."""
SENDER, ADDR = "node-a", ("10.0.0.1", 7400)

# --- strategies: values within DEFAULT_LIMITS (a char is at most 4 utf-8 bytes) ---------------

node_ids = st.text(max_size=16)
clients = st.text(max_size=64)
rules = st.text(max_size=128)
addrs = st.tuples(st.text(max_size=63), st.integers(0, 65535))
u64 = st.integers(0, 2**64 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)  # instants, window indexes
counts = st.integers(0, 2**53)
retries = st.integers(-1, 2**53)  # -1: never


def small(elements: st.SearchStrategy[Any], max_size: int = 5) -> st.SearchStrategy[tuple]:
    """Short tuples of ``elements``, as the messages hold them."""
    return st.lists(elements, max_size=max_size).map(tuple)


member_updates = st.builds(MemberUpdate, node_ids, addrs, st.integers(0, 3), u64)
check_results = st.builds(CheckResult, u64, st.booleans(), counts, counts, counts, retries)
counter_slots = st.builds(CounterSlot, clients, rules, i64, small(st.tuples(node_ids, counts)))
rule_entries = st.builds(RuleEntry, rules, st.none() | rules, st.tuples(i64, u64, node_ids))

MESSAGES: dict[type, st.SearchStrategy[Any]] = {
    Ping: st.builds(Ping, u64, node_ids, i64),
    Ack: st.builds(Ack, u64, i64, i64),
    PingReq: st.builds(PingReq, u64, node_ids, addrs),
    IndirectAck: st.builds(IndirectAck, u64, node_ids),
    MemberUpdate: member_updates,
    Join: st.builds(Join, node_ids, addrs, u64),
    JoinReply: st.builds(JoinReply, small(member_updates)),
    CheckBatch: st.builds(CheckBatch, small(st.tuples(u64, clients, counts), 20)),
    ReplyBatch: st.builds(ReplyBatch, small(check_results, 20)),
    CounterDeltas: st.builds(CounterDeltas, small(counter_slots)),
    RuleEntries: st.builds(RuleEntries, small(rule_entries)),
    RuleDigest: st.builds(RuleDigest, u64, counts, st.booleans()),
    HandoverDone: st.builds(HandoverDone, node_ids, u64, counts),
}
messages = st.one_of(*MESSAGES.values())
envelopes = st.builds(Envelope, node_ids, addrs, small(messages, 8))

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.integers(-2, 300)
    | st.floats()
    | st.text(max_size=20)
)
nested = st.recursive(scalars | st.binary(max_size=20), lambda inner: st.lists(inner, max_size=6))
"""Random msgpack-able structures."""
fields_like = st.recursive(scalars, lambda inner: st.lists(inner, max_size=6), max_leaves=20)
"""Random structures without bytes, which msgpack-level bounds refuse: these reach the fields."""


def outcome(data: bytes, limits: Limits = BIG) -> Envelope | str:
    """The decoded envelope or the refusal's reason; fails the test on any other exception.

    Whatever decode accepts must be a proper envelope: it round-trips to itself.
    """
    try:
        env = decode(data, limits)
    except DecodeError as e:
        assert e.reason in REASONS and e.reason != "internal", e
        return e.reason
    assert decode(encode(env), limits) == env
    return env


def reason(data: bytes, limits: Limits = DEFAULT_LIMITS) -> str:
    """The reason ``data`` is refused for; fails the test if it is accepted."""
    with pytest.raises(DecodeError) as info:
        decode(data, limits)
    return info.value.reason


def datagram(*messages: Any, version: Any = PROTOCOL_VERSION, sender: Any = SENDER) -> bytes:
    """A hand-made datagram of raw wire arrays, for what encode would never produce."""
    return msgpack.packb([version, sender, list(ADDR), list(messages)])


def envelope(*messages: Message, sender: str = SENDER) -> bytes:
    return encode(Envelope(sender, ADDR, messages))


# --- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("cls", list(MESSAGES), ids=lambda cls: cls.__name__)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_each_message_round_trips(cls: type, data: st.DataObject) -> None:
    msg = data.draw(MESSAGES[cls])
    env = Envelope(data.draw(node_ids), data.draw(addrs), (msg,))
    assert decode(encode(env), BIG) == env


@settings(max_examples=200, deadline=None)
@given(envelopes)
def test_envelopes_round_trip_byte_for_byte(env: Envelope) -> None:
    wire = encode(env)
    decoded = decode(wire, BIG)
    assert decoded == env
    assert all(type(m) is type(o) for m, o in zip(decoded.messages, env.messages, strict=True))
    assert encode(decoded) == wire


def test_decoded_containers_are_tuples_and_records_dataclasses() -> None:
    env = decode(
        envelope(
            CheckBatch(((1, "acme", 2),)),
            ReplyBatch((CheckResult(1, True, 10, 8, 1000, 0),)),
            JoinReply((MemberUpdate("b", ("h", 1), 0, 3),)),
        )
    )
    checks, replies, join = env.messages
    assert type(env.sender_addr) is tuple and type(checks.checks[0]) is tuple
    assert type(replies.results) is tuple and type(replies.results[0]) is CheckResult
    assert type(join.members[0]) is MemberUpdate and type(join.members[0].addr) is tuple


def test_wire_format_is_positional() -> None:
    wire = envelope(Ping(7, "node-b", 99), ReplyBatch((CheckResult(1, False, 5, 0, 10, 20),)))
    assert msgpack.unpackb(wire) == [
        1,
        "node-a",
        ["10.0.0.1", 7400],
        [[Ping.TAG, 7, "node-b", 99], [ReplyBatch.TAG, [[1, False, 5, 0, 10, 20]]]],
    ]


def test_bounds_are_inclusive() -> None:
    env = Envelope(
        "n" * 64,
        ("h" * 255, 65535),
        (
            CheckBatch(((2**64 - 1, "c" * 256, 2**53), (0, "é" * 128, 0))),
            CounterDeltas((CounterSlot("c", "s" * 512, -(2**63), (("ñ" * 32, 2**53),)),)),
            RuleEntries((RuleEntry("k" * 512, "r" * 512, (2**63 - 1, 2**64 - 1, "n" * 64)),)),
            ReplyBatch((CheckResult(0, False, 2**53, 0, 2**53, -1),)),
            Ack(2**64 - 1, -(2**63), 2**63 - 1),
            MemberUpdate("m", ("", 0), 3, 0),
        ),
    )
    assert decode(encode(env), BIG) == env


def test_decode_accepts_any_bytes_like() -> None:
    wire = envelope(Ack(1, 2, 3))
    assert decode(bytearray(wire)) == decode(memoryview(wire)) == decode(wire)


def test_limits_defaults_are_pinned() -> None:
    assert Limits() == Limits(1400, 256, 64, 256, 1000, 2**53, 255, 512)


# --- bounds: each refused with its reason --------------------------------------------------

REFUSED = {
    "client id of 257 bytes": (envelope(CheckBatch(((1, "x" * 257, 1),))), "too_long"),
    "client id of 258 utf-8 bytes": (envelope(CheckBatch(((1, "é" * 129, 1),))), "too_long"),
    "sender of 65 bytes": (envelope(Ack(1, 2, 3), sender="n" * 65), "too_long"),
    "ping target of 65 bytes": (envelope(Ping(1, "n" * 65, 2)), "too_long"),
    "slot name of 72 bytes (a node id and a reset tag: 71)": (
        envelope(CounterDeltas((CounterSlot("c", "s", 1, (("n" * 72, 1),)),))),
        "too_long",
    ),
    "rule of 513 bytes": (
        envelope(RuleEntries((RuleEntry("default", "r" * 513, (1, 1, "a")),))),
        "too_long",
    ),
    "host of 256 bytes": (envelope(Join("b", ("h" * 256, 1), 1)), "too_long"),
    "negative cost": (envelope(CheckBatch(((1, "acme", -1),))), "bad_field"),
    "negative seq": (envelope(Ping(-1, "b", 2)), "bad_field"),
    "negative incarnation": (envelope(Join("b", ("h", 1), -1)), "bad_field"),
    "retry below -1": (envelope(ReplyBatch((CheckResult(1, False, 5, 0, 0, -2),))), "bad_field"),
    "instant beyond int64": (envelope(Ping(1, "b", 2**63)), "bad_field"),
    "cost over max_count": (envelope(CheckBatch(((1, "acme", 2**53 + 1),))), "bad_field"),
    "bool as seq": (envelope(Ping(True, "b", 2)), "bad_field"),
    "bool as cost": (envelope(CheckBatch(((1, "acme", False),))), "bad_field"),
    "bool as limit": (envelope(ReplyBatch((CheckResult(1, True, True, 0, 0, 0),))), "bad_field"),
    "int as bool": (datagram([ReplyBatch.TAG, [[1, 1, 5, 0, 0, 0]]]), "bad_field"),
    "float as int": (datagram([Ack.TAG, 1.0, 2, 3]), "bad_field"),
    "str as int": (datagram([Ping.TAG, "1", "b", 2]), "bad_field"),
    "port 65536": (envelope(Join("b", ("h", 65536), 1)), "bad_field"),
    "member state 4": (envelope(MemberUpdate("b", ("h", 1), 4, 1)), "bad_field"),
    "None as rule key": (datagram([RuleEntries.TAG, [[None, "1/s", [1, 1, "a"]]]]), "bad_field"),
    "missing field": (datagram([Ping.TAG, 1, "b"]), "bad_field"),
    "extra field": (datagram([Ping.TAG, 1, "b", 2, 3]), "bad_field"),
    "short record": (datagram([ReplyBatch.TAG, [[1, True, 5, 0, 0]]]), "bad_field"),
    "list as record": (datagram([ReplyBatch.TAG, [[1, True, 5, 0, 0, [0]]]]), "bad_field"),
    "message not an array": (datagram(5), "bad_field"),
    "empty message": (datagram([]), "bad_field"),
    "unknown tag": (datagram([99, 1]), "unknown_tag"),
    "bool tag": (datagram([True, 1, "b", 2]), "unknown_tag"),
    "str tag": (datagram(["1", 1, "b", 2]), "unknown_tag"),
    "version 2": (datagram(version=2), "bad_version"),
    "version True": (datagram(version=True), "bad_version"),
    "version 1.0": (datagram(version=1.0), "bad_version"),
    "envelope not an array": (msgpack.packb(1), "bad_envelope"),
    "empty envelope": (msgpack.packb([]), "bad_envelope"),
    "envelope of 3": (msgpack.packb([1, "a", ["h", 1]]), "bad_envelope"),
    "messages not an array": (msgpack.packb([1, "a", ["h", 1], {}]), "bad_envelope"),
    "sender not a str": (datagram(sender=5), "bad_field"),
    "oversize datagram": (b"\x90" * 1401, "too_large"),
    "oversize valid datagram": (envelope(CheckBatch(((1, "c" * 200, 1),) * 7)), "too_large"),
    "not msgpack": (b"\xc1", "bad_msgpack"),
    "empty bytes": (b"", "bad_msgpack"),
    "truncated": (envelope(Ping(1, "b", 2))[:-1], "bad_msgpack"),
    "trailing bytes": (envelope(Ping(1, "b", 2)) + b"\x00", "bad_msgpack"),
    "map": (msgpack.packb({"a": 1}), "bad_msgpack"),
    "bin": (msgpack.packb([1, b"node", ["h", 1], []], use_bin_type=True), "bad_msgpack"),
    "ext": (msgpack.packb(msgpack.ExtType(5, b"x")), "bad_msgpack"),
    "timestamp": (msgpack.packb(msgpack.Timestamp(1, 0), datetime=False), "bad_msgpack"),
    "huge array header": (b"\xdd\xff\xff\xff\xff", "bad_msgpack"),
    "huge str header": (b"\xdb\xff\xff\xff\xff", "bad_msgpack"),
    "invalid utf-8": (b"\x94\x01\xa2\xff\xfe\x92\xa0\x00\x90", "bad_msgpack"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_with_reason(case: str) -> None:
    data, expected = REFUSED[case]
    assert reason(data) == expected


def test_too_many_messages_and_items() -> None:
    assert reason(envelope(*[Ack(1, 2, 3)] * 257), BIG) == "too_many"
    assert isinstance(outcome(envelope(*[Ack(1, 2, 3)] * 256), BIG), Envelope)
    few = Limits(max_items=3)
    assert reason(envelope(CheckBatch(((1, "a", 1),) * 4)), few) == "too_many"
    slots = (("n", 1),) * 4
    assert reason(envelope(CounterDeltas((CounterSlot("c", "s", 1, slots),))), few) == "too_many"
    assert decode(envelope(CheckBatch(((1, "a", 1),) * 3)), few).messages[0].checks[2] == (
        1,
        "a",
        1,
    )


@pytest.mark.parametrize("depth", [10, 999, 1000, 1100, 1300])
def test_deep_nesting_is_refused(depth: int) -> None:
    """[1, "a", ["h", 1], [[Ping.TAG, [[[...0...]]], "b", 2]]], the seq nested ``depth`` deep."""
    data = b"\x94\x01\xa1a\x92\xa1h\x01\x91\x94\x01" + b"\x91" * depth + b"\x00\xa1b\x02"
    assert reason(data) in ("bad_field", "bad_msgpack")  # msgpack stops at 1,024 levels


def test_error_names_the_field() -> None:
    with pytest.raises(DecodeError) as info:
        decode(envelope(ReplyBatch((CheckResult(1, True, -5, 0, 0, 0),))))
    assert isinstance(info.value, ValueError)
    assert "ReplyBatch.results[].limit" in str(info.value)
    assert info.value.detail and info.value.reason == "bad_field"


def test_decoders_are_generated_per_limits() -> None:
    assert "def decode_CheckBatch(v):" in _decoder_source(CheckBatch)
    assert "> 1000" in _decoder_source(CheckBatch)
    assert "> 7" in _decoder_source(CheckBatch, Limits(max_items=7))


# --- fuzzing -----------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=1600))
def test_arbitrary_bytes_raise_only_decode_error(data: bytes) -> None:
    outcome(data, DEFAULT_LIMITS)


@FUZZ
@given(envelopes, st.data())
def test_mutated_encodings_decode_or_raise_decode_error(env: Envelope, data: st.DataObject) -> None:
    wire = bytearray(encode(env))
    at = data.draw(st.integers(0, len(wire) - 1))
    op = data.draw(st.sampled_from(["flip", "truncate", "extend", "insert", "delete"]))
    if op == "flip":
        wire[at] ^= data.draw(st.integers(1, 255))
    elif op == "truncate":
        del wire[at:]
    elif op == "extend":
        wire += data.draw(st.binary(min_size=1, max_size=8))
    elif op == "insert":
        wire[at:at] = data.draw(st.binary(min_size=1, max_size=4))
    else:
        del wire[at : at + data.draw(st.integers(1, 4))]
    outcome(bytes(wire))


@FUZZ
@given(nested)
def test_random_structures_raise_only_decode_error(value: Any) -> None:
    outcome(msgpack.packb(value, use_bin_type=True))


tags = st.sampled_from([cls.TAG for cls in MESSAGES] + [0, 99])
shaped = st.tuples(
    st.just(PROTOCOL_VERSION),
    node_ids | fields_like,
    addrs | fields_like,
    st.lists(st.builds(lambda tag, rest: [tag, *rest], tags, small(fields_like, 6)), max_size=4),
)
"""Envelopes with random messages under valid and invalid tags."""


@FUZZ
@given(shaped)
def test_envelope_shaped_structures_raise_only_decode_error(value: Any) -> None:
    outcome(msgpack.packb(value, use_bin_type=True))


def _paths(value: Any, path: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
    """Every position in a nested list, the root included."""
    found = [path]
    if isinstance(value, list):
        for i, item in enumerate(value):
            found += _paths(item, (*path, i))
    return found


@FUZZ
@given(st.builds(Envelope, node_ids, addrs, small(messages, 8).filter(bool)), st.data())
def test_valid_messages_with_one_part_replaced(env: Envelope, data: st.DataObject) -> None:
    tree = msgpack.unpackb(encode(env))
    path = data.draw(st.sampled_from(_paths(tree[3], (3,))[1:]))  # a message or a part of one
    parent = tree
    for i in path[:-1]:
        parent = parent[i]
    parent[path[-1]] = data.draw(fields_like)
    outcome(msgpack.packb(tree, use_bin_type=True))


# --- pack_datagrams ----------------------------------------------------------------------


def _alone(msg: Message) -> int:
    return len(envelope(msg))


@settings(max_examples=150, deadline=None)
@given(
    st.lists(messages | MESSAGES[CheckBatch].map(lambda b: CheckBatch(b.checks * 30)), max_size=40),
    st.integers(48, 1400),
)
def test_pack_datagrams(msgs: list[Message], budget: int) -> None:
    packed = pack_datagrams(SENDER, ADDR, msgs, budget)
    groups = [decode(d).messages for d in packed.datagrams]
    kept = [m for m in msgs if _alone(m) <= 1400]
    assert [m for group in groups for m in group] == kept
    assert packed.oversized == len(msgs) - len(kept) and packed.invalid == 0
    for d, group in zip(packed.datagrams, groups, strict=True):
        assert encode(Envelope(SENDER, ADDR, group)) == d  # assembled exactly as encode would
        assert len(d) <= budget or len(group) == 1
    for group, after in zip(groups, groups[1:], strict=False):  # greedy: no room for the next
        assert len(encode(Envelope(SENDER, ADDR, (*group, after[0])))) > budget


def test_pack_datagrams_long_envelopes_and_max_messages() -> None:
    acks = [IndirectAck(i % 100, "b") for i in range(300)]  # 5 bytes each
    packed = pack_datagrams(SENDER, ADDR, acks)
    assert [len(decode(d).messages) for d in packed.datagrams][:1] == [256]  # array 16 header
    assert [m for d in packed.datagrams for m in decode(d).messages] == acks
    packed = pack_datagrams(SENDER, ADDR, acks[:25], limits=Limits(max_messages=10))
    assert [len(decode(d).messages) for d in packed.datagrams] == [10, 10, 5]


def test_pack_datagrams_sends_big_messages_alone_and_drops_oversize() -> None:
    big = CheckBatch(((1, "c" * 200, 1),) * 5)  # about 1,000 bytes
    huge = CheckBatch(((1, "c" * 200, 1),) * 7)  # over 1,400
    packed = pack_datagrams(SENDER, ADDR, [Ack(1, 2, 3), big, huge, Ack(4, 5, 6)], budget=512)
    assert [decode(d).messages for d in packed.datagrams] == [
        (Ack(1, 2, 3),),
        (big,),
        (Ack(4, 5, 6),),
    ]
    assert packed == Packed(packed.datagrams, oversized=1, invalid=0)


def test_pack_datagrams_screens_invalid_messages() -> None:
    bad = [
        CheckBatch(((1, "x" * 257, 1),)),  # the receiver would refuse it
        Ping(2**64, "b", 1),  # msgpack cannot encode it
        CheckBatch(((1, "\ud800", 1),)),  # a lone surrogate, as json.loads can produce
        Ping(1, "b", 2.5),  # type: ignore[arg-type]
    ]
    good = [Ack(1, 2, 3), Ack(4, 5, 6)]
    packed = pack_datagrams(SENDER, ADDR, [good[0], *bad, good[1]])
    assert packed.invalid == len(bad)
    assert [m for d in packed.datagrams for m in decode(d).messages] == good
    unscreened = pack_datagrams(SENDER, ADDR, [good[0], bad[0], good[1]], validate=False)
    assert reason(unscreened.datagrams[0]) == "too_long"  # one bad message sinks its datagram


def test_pack_datagrams_nothing_and_budget_check() -> None:
    assert pack_datagrams(SENDER, ADDR, []) == Packed([], 0, 0)
    with pytest.raises(AssertionError):
        pack_datagrams(SENDER, ADDR, [Ack(1, 2, 3)], budget=1401)


# --- fit_items ---------------------------------------------------------------------------

ITEMS: dict[type, st.SearchStrategy[Any]] = {
    JoinReply: member_updates,
    CheckBatch: st.tuples(u64, clients, counts),
    ReplyBatch: check_results,
    CounterDeltas: counter_slots,
    RuleEntries: rule_entries,
}


@pytest.mark.parametrize("cls", list(ITEMS), ids=lambda cls: cls.__name__)
@settings(max_examples=40, deadline=None)
@given(data=st.data(), budget=st.integers(40, 1400))
def test_fit_items(cls: type, data: st.DataObject, budget: int) -> None:
    items = data.draw(st.lists(ITEMS[cls], max_size=60))
    parts = fit_items(cls, items, message_budget(SENDER, ADDR, budget))
    field = fields(cls)[0].name
    assert all(type(m) is cls and getattr(m, field) for m in parts)
    assert [item for m in parts for item in getattr(m, field)] == items
    for m in parts:
        assert len(envelope(m)) <= budget or len(getattr(m, field)) == 1
    for m, after in zip(parts, parts[1:], strict=False):  # greedy: the next item did not fit
        grown = cls((*getattr(m, field), getattr(after, field)[0]))
        assert len(envelope(grown)) > budget


def test_fit_items_caps_items_and_refuses_other_messages() -> None:
    checks = [(i, "c", 1) for i in range(20)]
    parts = fit_items(CheckBatch, checks, 10_000, limits=Limits(max_items=7))
    assert [len(m.checks) for m in parts] == [7, 7, 6]
    assert fit_items(CheckBatch, [], 1000) == []
    with pytest.raises(AssertionError):
        fit_items(Ping, [1], 1000)


def test_message_budget() -> None:
    room = message_budget(SENDER, ADDR)
    first, second, *_ = fit_items(CheckBatch, [(i, f"client-{i}", 1) for i in range(500)], room)
    grown = CheckBatch((*first.checks, second.checks[0]))
    assert len(envelope(first)) <= 1400 < len(envelope(grown))


def test_limits_must_be_ints() -> None:
    """Limits end up in generated code, and may come from a config file."""
    for bad in ("1000", -1, True, 1.5):
        with pytest.raises(ValueError, match="max_items"):
            Limits(max_items=bad)  # type: ignore[arg-type]
