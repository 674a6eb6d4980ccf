"""Datagrams handed over within one process: the receiver takes the sender's messages
instead of decoding the bytes again.

Decoding is a pure function of a datagram's bytes and the receiver's :class:`Limits`.
When sender and receiver live in one process (the simulator runs every node in one),
the sender already holds what decoding would give back, provided every message is made
of exactly the types decoding makes and keeps every bound: ``schema.canonical_for``
checks that, with the decoder's own checks, read from the objects. ``pack_datagrams``
with ``share`` then leaves each such datagram's envelope here, keyed by its bytes, and a
:class:`~meshlimit.cluster.wire.codec.DatagramDecoder` with ``share`` takes it instead of
decoding (messages are frozen and hold only immutable values, so sharing one is as good
as a copy).

A pure cache, never a second source of truth: equal bytes decode to equal envelopes, so
a hit returns what decoding would, and a miss (a datagram from another process, one
evicted, one holding a message that is not canonical) is decoded as ever. Bounded: past
:data:`MAX_SHELVED` envelopes the oldest goes first (datagrams lost in flight are never
taken).
"""

from __future__ import annotations

from collections import deque

from meshlimit.cluster.wire.limits import Limits
from meshlimit.cluster.wire.messages import Envelope

#: Most envelopes kept. Why 256: many times the datagrams a simulated cluster has in
#: flight at once (about 10 at 2,000 checks/s over 1 ms links, a few dozen over slow,
#: jittery ones); a datagram evicted before it arrives is only decoded, as ever.
MAX_SHELVED = 256

#: Envelopes by datagram bytes, with the limits they were checked against.
_SHELF: dict[bytes, tuple[Limits, Envelope]] = {}
#: The shelf's keys, oldest first. A deque, not the dict's own order: a dict whose oldest
#: entry is deleted over and over walks ever more deleted slots to find the next one.
_ORDER: deque[bytes] = deque()


def shelve(datagram: bytes, limits: Limits, envelope: Envelope) -> None:
    """Leave ``envelope``, what decoding ``datagram`` under ``limits`` gives, for a receiver."""
    if len(_ORDER) >= MAX_SHELVED:
        _SHELF.pop(_ORDER.popleft(), None)
    _ORDER.append(datagram)
    _SHELF[datagram] = (limits, envelope)


def take(datagram: bytes, limits: Limits) -> Envelope | None:
    """The envelope decoding ``datagram`` under ``limits`` gives, if one was shelved."""
    entry = _SHELF.get(datagram)
    if entry is None or (entry[0] is not limits and entry[0] != limits):
        return None
    return entry[1]
