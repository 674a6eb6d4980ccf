"""The codec's fast paths give exactly what its plain paths give.

- :class:`DatagramDecoder` (a reused msgpack unpacker) decodes as :func:`decode` does,
  errors and their details included, also after garbage left its unpacker mid-stream;
- :class:`DatagramPacker` packs as :func:`pack_datagrams` does;
- the generated encoders and screeners send, or drop as invalid, exactly what the strict
  path (fields packed by ``msgpack.packb``, then decoded) sends or refuses;
- with ``share``, packing is unchanged, every shelved envelope is what decoding the
  datagram gives (same values, same types all the way down), and a sharing decoder hands
  exactly that over; messages that are valid but not canonical (lists, int subclasses) are
  decoded as ever;
- :mod:`~meshlimit.cluster.wire.frozen`'s builders make the objects ``__init__`` makes;
- the ring's owner cache answers what the ring computes.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_codec import ADDR, FUZZ, SENDER, envelopes, messages, outcome

from meshlimit.cluster.wire import handoff
from meshlimit.cluster.wire.codec import (
    DEFAULT_LIMITS,
    DatagramDecoder,
    DatagramPacker,
    DecodeError,
    Limits,
    decode,
    encode,
    pack_datagrams,
)
from meshlimit.cluster.wire.frozen import builder
from meshlimit.cluster.wire.messages import (
    Ack,
    CheckBatch,
    CheckResult,
    CounterDeltas,
    CounterSlot,
    Envelope,
    MemberUpdate,
    Message,
    Ping,
    ReplyBatch,
    check_result,
)
from meshlimit.cluster.wire.schema import canonical_for, decode_message, decoders_for
from meshlimit.core.ring import HashRing, key_hash

DECODER = DatagramDecoder(DEFAULT_LIMITS)
"""One decoder for every example: what one input leaves in its unpacker must not leak."""


class Small(enum.IntEnum):
    """An int subclass: msgpack sends it as an int, so it is valid, but not canonical."""

    ONE = 1


def same(a: Any, b: Any) -> bool:
    """Equal, and of the very same types all the way down."""
    if type(a) is not type(b):
        return False
    if dataclasses.is_dataclass(a):
        return all(same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, tuple | list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def decoded_by(decoder: DatagramDecoder, data: bytes) -> Envelope | str:
    """What ``decoder`` makes of ``data``: the envelope, or the error's text."""
    try:
        return decoder.decode(data)
    except DecodeError as error:
        return f"DecodeError: {error}"


def plain(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Envelope | str:
    try:
        return decode(data, limits)
    except DecodeError as error:
        return f"DecodeError: {error}"


# --- DatagramDecoder ---------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=1600))
def test_the_reused_unpacker_decodes_any_bytes_as_decode_does(data: bytes) -> None:
    assert decoded_by(DECODER, data) == plain(data)


@FUZZ
@given(envelopes, st.integers(0, 3), st.binary(max_size=8))
def test_truncated_extended_and_valid_datagrams_decode_as_decode_does(
    env: Envelope, cut: int, tail: bytes
) -> None:
    wire = encode(env)
    for data in (wire, wire[: max(0, len(wire) - cut)], wire + tail, tail + wire):
        assert decoded_by(DECODER, data) == plain(data)
    assert decoded_by(DECODER, wire) == plain(wire)  # after all that, still clean


def test_the_decoder_recovers_after_an_incomplete_datagram() -> None:
    decoder = DatagramDecoder(DEFAULT_LIMITS)
    good = encode(Envelope(SENDER, ADDR, (Ack(1, 2, 3),)))
    assert isinstance(decoded_by(decoder, good[:-2]), str)  # leaves half an object behind
    assert decoded_by(decoder, good) == decode(good)
    assert decoded_by(decoder, good + b"\x01") == plain(good + b"\x01")  # extra data refused
    assert decoded_by(decoder, good) == decode(good)


# --- DatagramPacker and sharing ------------------------------------------------------------------


def mangled(msg: Message) -> list[Message]:
    """Variants of ``msg``: valid but not canonical, and invalid."""
    out: list[Message] = []
    if isinstance(msg, CheckBatch) and msg.checks:
        out.append(CheckBatch(list(msg.checks)))  # type: ignore[arg-type]  # a list: valid
        request_id, client, cost = msg.checks[0]
        out.append(CheckBatch(((request_id, client, Small.ONE),)))  # an int subclass: valid
        out.append(CheckBatch(((request_id, client, True),)))  # a bool for an int: invalid
        out.append(CheckBatch(((request_id, "x" * 300, cost),)))  # too long: invalid
        out.append(CheckBatch(((request_id, "\ud800", cost),)))  # cannot be encoded
    if isinstance(msg, ReplyBatch) and msg.results:
        out.append(ReplyBatch(list(msg.results)))  # type: ignore[arg-type]
        first = msg.results[0]
        out.append(ReplyBatch((dataclasses.replace(first, limit=-1),)))
    if isinstance(msg, CounterDeltas) and msg.deltas:
        slot = msg.deltas[0]
        out.append(CounterDeltas((dataclasses.replace(slot, slots=list(slot.slots)),)))  # type: ignore[arg-type]
    return out


message_lists = st.lists(messages, max_size=6).map(
    lambda msgs: [m for msg in msgs for m in (msg, *mangled(msg))]
)


@settings(max_examples=150, deadline=None)
@given(message_lists, st.integers(200, 1400))
def test_the_packer_and_sharing_pack_as_pack_datagrams_does(
    msgs: list[Message], budget: int
) -> None:
    limits = Limits(max_datagram_bytes=1400)
    expected = pack_datagrams(SENDER, ADDR, msgs, budget, limits=limits)
    packer = DatagramPacker(SENDER, ADDR, budget, limits=limits, share=True)
    assert pack_datagrams(SENDER, ADDR, msgs, budget, limits=limits, share=True) == expected
    assert packer.pack(msgs) == expected
    assert DatagramPacker(SENDER, ADDR, budget, limits=limits).pack(msgs) == expected
    for one in msgs:  # one message alone takes a path of its own
        alone = pack_datagrams(SENDER, ADDR, [one], budget, limits=limits)
        assert packer.pack([one]) == alone


@settings(max_examples=150, deadline=None)
@given(message_lists)
def test_a_shared_envelope_is_exactly_what_decoding_gives(msgs: list[Message]) -> None:
    sender_limits, receiver_limits = Limits(), Limits()  # equal, not the same object
    packed = pack_datagrams(SENDER, ADDR, msgs, limits=sender_limits, share=True)
    sharing = DatagramDecoder(receiver_limits, share=True)
    for data in packed.datagrams:
        shelved = handoff.take(data, receiver_limits)
        decoded = decode(data, receiver_limits)
        if shelved is not None:
            assert same(shelved, decoded)
        assert same(sharing.decode(data), decoded)
        assert handoff.take(data, Limits(max_items=1)) is None  # other bounds: decode again


def strict_piece(msg: Message, limits: Limits) -> bytes | None:
    """The strict path, written out independently of the generated code: the message as
    its fields (records as arrays, recursively) packed by a fresh ``msgpack.packb``, kept
    only if the receiver's decoder takes those bytes back."""

    def wire(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return [wire(getattr(value, f.name)) for f in dataclasses.fields(value)]
        if isinstance(value, tuple | list):
            return [wire(item) for item in value]
        return value

    try:
        piece = msgpack.packb([type(msg).TAG, *wire(msg)], use_bin_type=True)
        decode_message(decoders_for(limits).by_tag, msgpack.unpackb(piece, use_list=False))
    except (DecodeError, TypeError, ValueError, OverflowError):
        return None
    return bytes(piece)


@settings(max_examples=300, deadline=None)
@given(message_lists, st.sampled_from([DEFAULT_LIMITS, Limits(max_items=2, max_count=10**6)]))
def test_screening_and_encoding_agree_with_the_strict_path(
    msgs: list[Message], limits: Limits
) -> None:
    """What the generated encoders and screeners send (or drop as invalid) is exactly what
    the strict path sends (or refuses): the same bytes, the same verdicts."""
    for msg in msgs:
        expected = strict_piece(msg, limits)
        packed = pack_datagrams(SENDER, ADDR, [msg], 1400, limits=limits)
        shared = pack_datagrams(SENDER, ADDR, [msg], 1400, limits=limits, share=True)
        assert shared == packed
        if expected is None:
            assert packed.invalid == 1 and not packed.datagrams
        else:
            assert packed.invalid == 0
            assert all(d.endswith(expected) for d in packed.datagrams), msg


def test_only_canonical_messages_are_shared() -> None:
    canonical = canonical_for(DEFAULT_LIMITS)
    good = CheckBatch(((1, "c", 2),))
    assert canonical[CheckBatch](good) is good
    for bad in (
        CheckBatch([(1, "c", 2)]),  # type: ignore[arg-type]
        CheckBatch(((1, "c", Small.ONE),)),
        CheckBatch(((1, "c", True),)),
        ReplyBatch([CheckResult(1, True, 2, 3, 4, -1)]),  # type: ignore[arg-type]
        Ping(1, "n", 2**63),
    ):
        with pytest.raises(DecodeError):
            canonical[type(bad)](bad)
    valid_not_canonical = CheckBatch(((7, "c", Small.ONE),))
    packed = pack_datagrams(SENDER, ADDR, [valid_not_canonical], share=True)
    assert handoff.take(packed.datagrams[0], DEFAULT_LIMITS) is None  # decoded as ever
    assert decode(packed.datagrams[0]).messages == (CheckBatch(((7, "c", 1),)),)


def test_a_sender_that_does_not_decode_as_itself_is_not_shared() -> None:
    class Name(str):
        pass

    packed = pack_datagrams(Name("n1"), ("h", 1), [Ack(1, 2, 3)], share=True)
    assert handoff.take(packed.datagrams[0], DEFAULT_LIMITS) is None
    assert decode(packed.datagrams[0]).sender == "n1"


def test_the_shelf_is_bounded() -> None:
    datagrams = [
        pack_datagrams(SENDER, ADDR, [Ack(i, 2, 3)], share=True).datagrams[0]
        for i in range(handoff.MAX_SHELVED + 10)
    ]
    assert len(handoff._SHELF) <= handoff.MAX_SHELVED
    assert handoff.take(datagrams[0], DEFAULT_LIMITS) is None
    assert handoff.take(datagrams[-1], DEFAULT_LIMITS) is not None


# --- frozen builders -------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**64 - 1), st.booleans(), st.integers(-1, 2**53))
def test_builders_make_the_objects_init_makes(request_id: int, allowed: bool, n: int) -> None:
    built = check_result(request_id, allowed, 5, 4, 3, n)
    made = CheckResult(request_id, allowed, 5, 4, 3, n)
    assert type(built) is CheckResult and built == made and hash(built) == hash(made)
    assert repr(built) == repr(made)
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.limit = 1  # type: ignore[misc]
    slot = builder(CounterSlot)("c", "s", 1, (("n", 2),))
    assert same(slot, CounterSlot("c", "s", 1, (("n", 2),)))
    update = builder(MemberUpdate)("n", ("h", 1), 0, 3)
    assert same(update, MemberUpdate("n", ("h", 1), 0, 3))


def test_a_builder_refuses_a_class_it_cannot_build() -> None:
    @dataclasses.dataclass(frozen=True)
    class Unslotted:
        a: int

    with pytest.raises(AssertionError):
        builder(Unslotted)


# --- the ring's owner cache --------------------------------------------------------------------------


def test_the_ring_remembers_owners_it_computed() -> None:
    ring = HashRing(["a", "b", "c"])
    clients = [f"client-{i}" for i in range(500)]
    first = [ring.owner(c) for c in clients]
    again = [ring.owner(c) for c in clients]  # from the cache
    fresh = HashRing(["c", "b", "a"])
    assert first == again == [fresh._owners[_at(fresh, c)] for c in clients]
    ring._check()  # the cache holds what the ring computes
    with pytest.raises(LookupError):
        HashRing([]).owner("x")


def _at(ring: HashRing, client: str) -> int:
    from bisect import bisect_left

    return bisect_left(ring._tokens, key_hash(client))


def test_outcome_helper_agrees_with_decode() -> None:  # the shared helper still means decode
    data = encode(Envelope(SENDER, ADDR, (Ack(1, 2, 3),)))
    assert outcome(data) == decode(data, Limits(max_datagram_bytes=1 << 20))
