"""Datagram packing: messages into envelopes under a byte budget, long lists into messages.

The node sends compound datagrams, as memberlist does: every message bound for one peer
goes into as few envelopes as fit the budget (:func:`pack_datagrams`), so membership
updates ride along with checks and counters. A list too long for one datagram is split
into several batch messages beforehand (:func:`fit_items`), each under the bytes left for
one message (:func:`message_budget`). Sizes are computed from msgpack's encoding, never by
encoding an envelope twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from meshlimit.cluster.wire.limits import DEFAULT_LIMITS, DecodeError, Limits
from meshlimit.cluster.wire.messages import (
    Address,
    CheckBatch,
    CounterDeltas,
    JoinReply,
    Message,
    ReplyBatch,
    RuleEntries,
)
from meshlimit.cluster.wire.schema import (
    BATCH_ITEMS,
    PROTOCOL_VERSION,
    TO_WIRE,
    Decoder,
    decode_message,
    decoders_for,
    to_msgpack,
)

BatchMessage = JoinReply | CheckBatch | ReplyBatch | CounterDeltas | RuleEntries
"""The messages whose only field is a list, which :func:`fit_items` splits."""

assert set(BatchMessage.__args__) == set(BATCH_ITEMS), "the batches and the schema disagree"


def _array_header(n: int) -> bytes:
    """msgpack's header for an array of ``n`` items (fixarray, array 16 or array 32)."""
    if n <= 15:
        return bytes((0x90 | n,))
    if n <= 0xFFFF:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def _header_size(n: int) -> int:
    """``len(_array_header(n))``, without building it."""
    return 1 if n <= 15 else 3 if n <= 0xFFFF else 5


def message_budget(sender: str, sender_addr: Address, budget: int = 1400) -> int:
    """Bytes left for one message in a datagram of ``budget`` bytes from this sender.

    Pass it to :func:`fit_items` so that each resulting message fits a datagram alone.
    """
    return budget - len(to_msgpack((PROTOCOL_VERSION, sender, sender_addr, [])))


@dataclass(frozen=True, slots=True)
class Packed:
    """What :func:`pack_datagrams` made: the datagrams to send, and the messages it dropped."""

    datagrams: list[bytes]
    """Encoded envelopes; decoding them in order yields the kept messages in order."""
    oversized: int = 0
    """Messages dropped because even alone they exceed ``limits.max_datagram_bytes``."""
    invalid: int = 0
    """Messages dropped because they break ``limits``: the receiver would refuse the datagram."""


def pack_datagrams(
    sender: str,
    sender_addr: Address,
    messages: Iterable[Message],
    budget: int = 1400,
    *,
    limits: Limits = DEFAULT_LIMITS,
    validate: bool = True,
) -> Packed:
    """Pack ``messages`` greedily, in order, into as few envelopes of ``budget`` bytes as fit.

    Each message is encoded once and envelopes are assembled from the pieces, their sizes
    computed, never re-encoded. A message too big to fit ``budget`` goes alone in a datagram
    if it fits ``limits.max_datagram_bytes`` and is dropped as ``oversized`` otherwise. With
    ``validate``, a message that cannot be encoded, or that the receiver would refuse under
    ``limits``, is dropped as ``invalid``, so it cannot take the messages sharing its datagram
    down with it; this about doubles the cost. Without, such messages raise or go out.
    """
    assert budget <= limits.max_datagram_bytes, "the receiver would refuse such datagrams"
    by_tag = decoders_for(limits).by_tag if validate else None
    head = to_msgpack((PROTOCOL_VERSION, sender, sender_addr, []))[:-1]  # all but the empty array
    base, most = len(head), limits.max_messages
    out: list[bytes] = []
    oversized = invalid = 0
    batch: list[bytes] = []
    size = 0  # bytes in batch

    def flush() -> None:
        out.append(b"".join([head, _array_header(len(batch)), *batch]))

    for msg in messages:
        piece = to_msgpack(TO_WIRE[type(msg)](msg)) if by_tag is None else _screened(by_tag, msg)
        if piece is None:
            invalid += 1
            continue
        alone = base + 1 + len(piece)
        if alone > limits.max_datagram_bytes:
            oversized += 1
            continue
        n = len(batch)
        if n and n < most and base + _header_size(n + 1) + size + len(piece) <= budget:
            batch.append(piece)
            size += len(piece)
            continue
        if batch:
            flush()
        batch, size = [piece], len(piece)
        if alone > budget:  # too big to share a datagram: it goes alone
            flush()
            batch, size = [], 0
    if batch:
        flush()
    return Packed(out, oversized, invalid)


def _screened(by_tag: dict[int, Decoder[Message]], msg: Message) -> bytes | None:
    """``msg`` encoded, or None if it cannot be, or the receiver's decoder would refuse it."""
    try:  # msgpack refuses e.g. ints beyond 64 bits and lone surrogates (json.loads makes them)
        piece = to_msgpack(TO_WIRE[type(msg)](msg))
        decode_message(by_tag, msgpack.unpackb(piece, use_list=False, raw=False))
    except (DecodeError, TypeError, ValueError, OverflowError):
        return None
    return piece


def fit_items(
    cls: type[BatchMessage],
    items: Sequence[Any],
    budget: int,
    *,
    limits: Limits = DEFAULT_LIMITS,
) -> list[Message]:
    """Split a long list into several ``cls`` messages, each encoding to at most ``budget`` bytes.

    ``cls`` is a batch message, one whose only field is a list (:class:`JoinReply`,
    :class:`CheckBatch`, :class:`ReplyBatch`, :class:`CounterDeltas`, :class:`RuleEntries`),
    and ``items`` are that list's items. Greedy and in order; each message also holds at most
    ``limits.max_items`` items. An item too big for ``budget`` gets a message of its own,
    which :func:`pack_datagrams` then sends alone or counts as oversized: nothing is dropped
    silently here. Pass :func:`message_budget` as ``budget`` to make each message fit a
    datagram alone.
    """
    kind = BATCH_ITEMS.get(cls)
    assert kind is not None, f"{cls.__name__} is not a batch message"
    wire = kind.wire
    fixed = 2  # fixarray(2) and the tag, a positive fixint
    out: list[Message] = []
    start = size = 0
    sizes = [len(to_msgpack(x)) for x in (wire(items) if wire is not None else items)]
    for i, item_size in enumerate(sizes):
        n = i - start
        if n and (n >= limits.max_items or fixed + _header_size(n + 1) + size + item_size > budget):
            out.append(cls(tuple(items[start:i])))
            start, size = i, 0
        size += item_size
    if start < len(items):
        out.append(cls(tuple(items[start:])))
    return out
