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
from typing import Any, NamedTuple

import msgpack

from meshlimit.cluster.wire.frozen import builder
from meshlimit.cluster.wire.handoff import shelve
from meshlimit.cluster.wire.limits import DEFAULT_LIMITS, DecodeError, Limits
from meshlimit.cluster.wire.messages import (
    Address,
    CheckBatch,
    CounterDeltas,
    Envelope,
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
    canonical_for,
    decode_message,
    decoders_for,
    screeners_for,
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
    share: bool = False,
) -> Packed:
    """Pack ``messages`` greedily, in order, into as few envelopes of ``budget`` bytes as fit.

    Each message is encoded once and envelopes are assembled from the pieces, their sizes
    computed, never re-encoded. A message too big to fit ``budget`` goes alone in a datagram
    if it fits ``limits.max_datagram_bytes`` and is dropped as ``oversized`` otherwise. With
    ``validate``, a message that cannot be encoded, or that the receiver would refuse under
    ``limits``, is dropped as ``invalid``, so it cannot take the messages sharing its datagram
    down with it (checked by a generated screener, ``schema.screeners_for``, at about a
    third of the cost of encoding). Without, such messages raise or go out. With ``share``
    (and ``validate``), each datagram whose messages are all canonical is also shelved,
    decoded, for a receiver in this process (``handoff.py``).
    """
    assert budget <= limits.max_datagram_bytes, "the receiver would refuse such datagrams"
    kit = _kit(limits) if validate else None
    head = _head(sender, sender_addr)
    share = share and kit is not None and _canonical_sender(kit, sender, sender_addr)
    return _pack(kit, head, sender, sender_addr, messages, budget, limits, share)


class DatagramPacker:
    """:func:`pack_datagrams` for one sender, with what does not change between calls
    (the envelope head, the screening kit, whether envelopes may be shelved) worked out
    once: a node packs every datagram it sends with one."""

    def __init__(
        self,
        sender: str,
        sender_addr: Address,
        budget: int = 1400,
        *,
        limits: Limits = DEFAULT_LIMITS,
        share: bool = False,
    ) -> None:
        assert budget <= limits.max_datagram_bytes, "the receiver would refuse such datagrams"
        self._args = (_kit(limits), _head(sender, sender_addr), sender, sender_addr)
        self._budget, self._limits = budget, limits
        self._share = share and _canonical_sender(self._args[0], sender, sender_addr)

    def pack(self, messages: list[Message]) -> Packed:
        """``pack_datagrams(sender, sender_addr, messages, budget, limits=..., share=...)``."""
        kit, head, sender, sender_addr = self._args
        if len(messages) == 1:
            return _pack_one(kit, head, sender, sender_addr, messages[0], self._budget, self._share)
        return _pack(
            kit, head, sender, sender_addr, messages, self._budget, self._limits, self._share
        )


def _pack(
    kit: _Kit | None,
    head: bytes,
    sender: str,
    sender_addr: Address,
    messages: Iterable[Message],
    budget: int,
    limits: Limits,
    share: bool,
) -> Packed:
    """:func:`pack_datagrams`, once the kit (None: no validation) and head are known. With
    ``share`` (a kit needed), each datagram whose messages are all canonical is shelved with
    its envelope; the datagrams, their order and the counts are the same either way."""
    if kit is not None and type(messages) is list and len(messages) == 1:
        return _pack_one(kit, head, sender, sender_addr, messages[0], budget, share)
    assert kit is not None or not share
    base, most, largest = len(head), limits.max_messages, limits.max_datagram_bytes
    out: list[bytes] = []
    oversized = invalid = 0
    batch: list[bytes] = []
    kept: list[Message] = []  # the batch's messages (shared: while every one is canonical)
    whole = share  # every message of the batch is canonical
    size = 0  # bytes in batch

    def flush() -> None:
        datagram = _envelope(head, batch)
        out.append(datagram)
        if whole:
            shelve(datagram, limits, _new_envelope(sender, sender_addr, tuple(kept)))

    for msg in messages:
        if share:
            assert kit is not None
            piece, fit = _canonical_piece(kit, kit.canonical, msg)
        elif kit is None:
            piece, fit = to_msgpack(TO_WIRE[type(msg)](msg)), False
        else:
            piece, fit = _screened(kit, msg), False
        if piece is None:
            invalid += 1
            continue
        alone = base + 1 + len(piece)
        if alone > largest:
            oversized += 1
            continue
        n = len(batch)
        if n and n < most and base + _header_size(n + 1) + size + len(piece) <= budget:
            batch.append(piece)
            kept.append(msg)
            whole = whole and fit
            size += len(piece)
            continue
        if batch:
            flush()
        batch, kept, whole, size = [piece], [msg], fit, len(piece)
        if alone > budget:  # too big to share a datagram: it goes alone
            flush()
            batch, kept, whole, size = [], [], share, 0
    if batch:
        flush()
    return Packed(out, oversized, invalid)


def _pack_one(
    kit: _Kit,
    head: bytes,
    sender: str,
    sender_addr: Address,
    msg: Message,
    budget: int,
    share: bool,
) -> Packed:
    """:func:`pack_datagrams` of a single message (most datagrams): the same result."""
    limits = kit.limits
    if share:
        piece, fit = _canonical_piece(kit, kit.canonical, msg)
    else:
        piece, fit = _screened(kit, msg), False
    if piece is None:
        return _packed([], 0, 1)
    if len(head) + 1 + len(piece) > limits.max_datagram_bytes:
        return _packed([], 1, 0)
    datagram = head + _ONE + piece  # alone: it goes out even when longer than ``budget``
    if fit:
        shelve(datagram, limits, _new_envelope(sender, sender_addr, (msg,)))
    return _packed([datagram], 0, 0)


def _canonical_piece(
    kit: _Kit, canonical: dict[type[Message], Decoder[Any]], msg: Message
) -> tuple[bytes | None, bool]:
    """``msg`` encoded as :func:`_screened` encodes it, and whether it is canonical (valid,
    and decoding gives back an equal object of the very same types)."""
    try:
        canonical[type(msg)](msg)
    except Exception:  # noqa: BLE001 - not canonical: screened as ever
        return _screened(kit, msg), False
    try:
        return to_msgpack(TO_WIRE[type(msg)](msg)), True
    except (TypeError, ValueError, OverflowError):  # as _screened: it cannot be encoded
        return None, False


def _canonical_sender(kit: _Kit, sender: str, sender_addr: Address) -> bool:
    """Whether decoding gives back exactly this sender and address (exact str, a tuple of
    an exact str and int, within the limits): then envelopes from it may be shelved."""
    known = kit.senders.get((sender, sender_addr))
    if known is None:
        decoders = decoders_for(kit.limits)
        try:
            decoders.sender(sender)
            decoders.sender_addr(sender_addr)
            known = type(sender) is str and type(sender_addr) is tuple
            known = known and type(sender_addr[0]) is str and type(sender_addr[1]) is int
        except (DecodeError, TypeError, ValueError):
            known = False
        if len(kit.senders) >= _MOST_HEADS:
            kit.senders.clear()
        kit.senders[(sender, sender_addr)] = known
    return known


def _envelope(head: bytes, pieces: list[bytes]) -> bytes:
    """An envelope from its head (all but the messages) and its messages' pieces."""
    if len(pieces) == 1:
        return head + _ONE + pieces[0]
    return b"".join([head, _array_header(len(pieces)), *pieces])


_ONE = _array_header(1)
_new_envelope = builder(Envelope)
_packed = builder(Packed)
#: Envelope heads (``[version, sender, addr,`` encoded) by sender and address: the same few
#: are packed for every datagram a node sends. Bounded: cleared when full.
_HEADS: dict[tuple[str, Address], bytes] = {}
_MOST_HEADS = 1024


def _head(sender: str, sender_addr: Address) -> bytes:
    head = _HEADS.get((sender, sender_addr))
    if head is None:
        if len(_HEADS) >= _MOST_HEADS:
            _HEADS.clear()
        # All but the empty array of messages, whose header comes with the messages.
        head = to_msgpack((PROTOCOL_VERSION, sender, sender_addr, []))[:-1]
        _HEADS[(sender, sender_addr)] = head
    return head


class _Kit(NamedTuple):
    """What screening takes, for one :class:`Limits`: the decoders, the screeners, the
    checkers of canonical messages, and which senders are canonical (for ``share``)."""

    limits: Limits
    by_tag: dict[int, Decoder[Message]]
    screens: dict[type[Message], Decoder[Any]]
    canonical: dict[type[Message], Decoder[Any]]
    senders: dict[tuple[str, Address], bool]


_KITS: dict[int, _Kit] = {}  # by id(limits); each kit keeps its limits alive, so ids stay


def _kit(limits: Limits) -> _Kit:
    """The screening kit of ``limits``, looked up by identity (hashing a Limits costs more
    than screening a small message)."""
    kit = _KITS.get(id(limits))
    if kit is None or kit.limits is not limits:
        if len(_KITS) >= 64:
            _KITS.clear()
        by_tag = decoders_for(limits).by_tag
        kit = _Kit(limits, by_tag, screeners_for(limits), canonical_for(limits), {})
        _KITS[id(limits)] = kit
    return kit


def _screened(kit: _Kit, msg: Message) -> bytes | None:
    """``msg`` encoded, or None if it cannot be, or the receiver's decoder would refuse it.

    The screener passes what the decoder takes (``schema.screeners_for``); what it refuses
    goes through msgpack and the decoder itself, whose verdict is the one that counts."""
    try:  # msgpack refuses e.g. ints beyond 64 bits and lone surrogates (json.loads makes them)
        wire = TO_WIRE[type(msg)](msg)
        piece = to_msgpack(wire)
    except (TypeError, ValueError, OverflowError):
        return None
    try:
        kit.screens[type(msg)](wire)
    except Exception:  # noqa: BLE001 - not a verdict: the decoder decides
        try:
            decode_message(kit.by_tag, msgpack.unpackb(piece, use_list=False, raw=False))
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
