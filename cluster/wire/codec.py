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

from typing import Any

import msgpack

from meshlimit.cluster.wire.datagrams import Packed, fit_items, message_budget, pack_datagrams
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
    decode_message,
    to_msgpack,
)
from meshlimit.cluster.wire.schema import (
    decoders_for as _decoders,  # by this name, scripts/fuzz_campaign.py instruments the decoders
)

__all__ = [
    "DEFAULT_LIMITS",
    "PROTOCOL_VERSION",
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


def _decode(data: Any, limits: Limits) -> Envelope:
    """:func:`decode` without its safety net."""
    if len(data) > limits.max_datagram_bytes:
        raise DecodeError("too_large", f"{len(data)} bytes > {limits.max_datagram_bytes}")
    d = _decoders(limits)
    try:
        obj = msgpack.unpackb(data, use_list=False, raw=False, **d.unpack_bounds)
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
    by_tag = d.by_tag
    return Envelope(
        d.sender(sender), d.sender_addr(addr), tuple([decode_message(by_tag, m) for m in messages])
    )


def _decoder_source(cls: type[Message], limits: Limits = DEFAULT_LIMITS) -> str:
    """The generated source of ``cls``'s decoder, for reading and debugging."""
    return _decoders(limits).by_tag[cls.TAG].source
