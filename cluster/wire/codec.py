"""The wire codec: envelopes to msgpack bytes and back, bounded and validated.

Theory of operation. An :class:`~meshlimit.cluster.wire.messages.Envelope` travels as one
msgpack array of positional fields; no field names go on the wire::

    envelope = [PROTOCOL_VERSION, sender, [host, port], [message, ...]]
    message  = [TAG, field1, field2, ...]      # fields in dataclass order
    record   = [field1, field2, ...]           # CheckResult, CounterSlot, RuleEntry, and
                                               # MemberUpdate inside JoinReply (no tag)
    tuples   = arrays                          # addresses, checks, slots, HLC stamps

One table, :data:`~meshlimit.cluster.wire.schema.FIELDS`, gives each message's field kinds
in dataclass order; a kind knows how its Python value goes on the wire and how to check and
decode its wire value. Decoding is the boundary for a peer's garbage: :func:`decode` takes
any bytes and either returns a fully validated envelope (ints range-checked, bools never
taken for ints, strings and lists bounded, lists turned back into tuples) or raises
:class:`DecodeError`, its only error, whose ``reason`` the node counts drops by. Since
decoding is on every node's hot path, each message's decoder is generated from the table,
once per :class:`Limits`, as one straight-line function with every check inlined (see
``_decoder_source``). Encoding trusts its input: our own node builds the messages, so one
that breaks the bounds is a programmer's error; :func:`pack_datagrams` screens for them
anyway, since one bad message would make the receiver drop every message sharing its
datagram.

This module is the entry point that the rest of the cluster imports. The work is split by
job: ``limits`` holds the bounds and the error, ``schema`` the table and the code generated
from it, and ``datagrams`` the packing of messages into datagrams under a byte budget.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack

from meshlimit.cluster.wire.datagrams import (
    DatagramPacker,
    Packed,
    fit_items,
    message_budget,
    pack_datagrams,
)
from meshlimit.cluster.wire.frozen import builder
from meshlimit.cluster.wire.handoff import take
from meshlimit.cluster.wire.limits import (
    DEFAULT_LIMITS,
    REASONS,
    DecodeError,
    Limits,
    field_error,
)
from meshlimit.cluster.wire.messages import Envelope, Message
from meshlimit.cluster.wire.schema import (
    PROTOCOL_VERSION,
    TO_WIRE,
    Decoders,
    to_msgpack,
)
from meshlimit.cluster.wire.schema import (
    decoders_for as _decoders,  # by this name, scripts/fuzz_campaign.py instruments the decoders
)

__all__ = [
    "DEFAULT_LIMITS",
    "PROTOCOL_VERSION",
    "DatagramDecoder",
    "DatagramPacker",
    "REASONS",
    "DecodeError",
    "Limits",
    "Packed",
    "decode",
    "encode",
    "fit_items",
    "message_budget",
    "pack_datagrams",
]


def encode(env: Envelope) -> bytes:
    """The datagram for ``env``. Checks no bounds: our own messages are trusted."""
    wire = [TO_WIRE[type(m)](m) for m in env.messages]
    return to_msgpack((PROTOCOL_VERSION, env.sender, env.sender_addr, wire))


def decode(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Envelope:
    """The envelope in ``data``, fully validated against ``limits``.

    Raises :class:`DecodeError`, and nothing else, for anything that is not a valid datagram.
    """
    try:
        return _decode(data, limits)
    except DecodeError:
        raise
    except Exception as e:  # a bug here must drop one datagram, not crash the node
        raise DecodeError("internal", f"{type(e).__name__}: {e}") from None


class DatagramDecoder:
    """:func:`decode` for one node's datagrams: the same envelopes and the same errors, with
    one msgpack ``Unpacker`` reused for every datagram (``unpackb`` parses its seven options
    anew on every call, about half the cost of unpacking a small datagram). Not to be shared
    between threads: one node, driven by one thread, has one."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS, *, share: bool = False) -> None:
        self.limits = limits
        self.share = share
        """Take the envelope a sender in this process shelved for the datagram, when there
        is one, instead of decoding it (``handoff.py``): the same envelope either way."""
        self._bounds = _decoders(limits).unpack_bounds
        self._restart()

    def decode(self, data: bytes) -> Envelope:
        """The envelope in ``data``, as :func:`decode` gives it (or its DecodeError)."""
        if self.share and type(data) is bytes:
            shelved = take(data, self.limits)
            if shelved is not None:
                return shelved
        try:
            return _decode(data, self.limits, self._unpacked)
        except DecodeError:
            raise
        except Exception as e:  # a bug here must drop one datagram, not crash the node
            raise DecodeError("internal", f"{type(e).__name__}: {e}") from None

    def _restart(self) -> None:
        unpacker = msgpack.Unpacker(use_list=False, raw=False, **self._bounds)
        self._feed, self._unpack, self._tell = unpacker.feed, unpacker.unpack, unpacker.tell

    def _unpacked(self, data: Any) -> Any:
        """The one msgpack object ``data`` holds. Whatever the reused unpacker cannot take
        whole (bad bytes, bytes left over) goes to ``unpackb``, whose verdict is the one
        :func:`decode` gives, after the unpacker is replaced by a clean one."""
        start = self._tell()
        try:
            self._feed(data)
            obj = self._unpack()
            if self._tell() - start == len(data):
                return obj
        except Exception:  # noqa: BLE001, S110 - unpackb below raises the error decode gives
            pass
        self._restart()
        return msgpack.unpackb(data, use_list=False, raw=False, **self._bounds)


def _decode(data: Any, limits: Limits, unpack: Callable[[Any], Any] | None = None) -> Envelope:
    """:func:`decode` without its safety net (``unpack``: a reused unpacker's, see
    :class:`DatagramDecoder`)."""
    if len(data) > limits.max_datagram_bytes:
        raise DecodeError("too_large", f"{len(data)} bytes > {limits.max_datagram_bytes}")
    d = _DECODERS.get(id(limits))
    if d is None or d[0] is not limits:
        d = _remember(limits)
    decoders = d[1]
    try:
        if unpack is None:
            obj = msgpack.unpackb(data, use_list=False, raw=False, **decoders.unpack_bounds)
        else:
            obj = unpack(data)
    except Exception as e:  # msgpack's advice: it may raise more than its own errors
        raise DecodeError("bad_msgpack", f"{type(e).__name__}: {e}") from None
    if type(obj) is not tuple or not obj:
        raise field_error("bad_envelope", "envelope", "an array", obj)
    if type(obj[0]) is not int or obj[0] != PROTOCOL_VERSION:
        raise field_error("bad_version", "version", str(PROTOCOL_VERSION), obj[0])
    if len(obj) != 4:
        raise field_error("bad_envelope", "envelope", "an array of 4", obj)
    _, sender, addr, messages = obj
    if type(messages) is not tuple:
        raise field_error("bad_envelope", "messages", "an array", messages)
    if len(messages) > limits.max_messages:
        raise field_error("too_many", "messages", f"at most {limits.max_messages}", len(messages))
    sender = decoders.sender(sender)  # sender, address, messages: the order errors are found in
    addr = decoders.sender_addr(addr)
    by_tag = decoders.by_tag
    decoded = []
    for m in messages:  # decode_message, inlined: one call less per message
        if type(m) is not tuple or not m:
            raise field_error("bad_field", "message", "a non-empty array", m)
        tag = m[0]
        decoder = by_tag.get(tag) if type(tag) is int else None  # True == 1, but is no tag
        if decoder is None:
            raise field_error("unknown_tag", "message", "a known tag", tag)
        decoded.append(decoder(m))
    return _envelope(sender, addr, tuple(decoded))


_envelope = builder(Envelope)  # Envelope(...), a fifth of the cost (frozen.py)
#: The decoders of each Limits seen, by identity: hashing a Limits (``decoders_for``'s
#: cache key) costs more than decoding a small datagram. Each entry keeps its Limits alive,
#: so an id is never reused while its entry stands.
_DECODERS: dict[int, tuple[Limits, Decoders]] = {}


def _remember(limits: Limits) -> tuple[Limits, Decoders]:
    if len(_DECODERS) >= 64:
        _DECODERS.clear()
    entry = _DECODERS[id(limits)] = (limits, _decoders(limits))
    return entry


def _decoder_source(cls: type[Message], limits: Limits = DEFAULT_LIMITS) -> str:
    """The generated source of ``cls``'s decoder, for reading and debugging."""
    return _decoders(limits).by_tag[cls.TAG].source
