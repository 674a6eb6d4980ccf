"""The codec's contract with a peer: what a datagram may hold, and the one error if it does not.

:class:`Limits` bounds every string, list and datagram the decoders accept; one broken
bound refuses the whole datagram. :class:`DecodeError` is the only error
:func:`~meshlimit.cluster.wire.codec.decode` raises, and its ``reason``, one of
:data:`REASONS`, is what the node counts drops by.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

REASONS = (
    "too_large",  # the datagram is longer than Limits.max_datagram_bytes; not even unpacked
    "bad_msgpack",  # not exactly one well-formed msgpack object within msgpack-level bounds
    "bad_envelope",  # not [version, sender, addr, messages]
    "bad_version",  # a protocol version other than ours
    "unknown_tag",  # a message whose tag is not in the vocabulary
    "bad_field",  # a field of the wrong type, arity or range
    "too_long",  # a string longer than its bound in utf-8 bytes
    "too_many",  # more messages or list items than the bounds allow
    "internal",  # a codec bug caught by the safety net; tests assert it never happens
)
"""Every ``DecodeError.reason``, so metrics can pre-register one drop counter per reason."""


class DecodeError(ValueError):
    """Garbage from a peer: the one error :func:`~meshlimit.cluster.wire.codec.decode` raises.

    ``reason`` is one of :data:`REASONS`, short and stable for counting drops;
    ``detail`` says what was wrong, for logs.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def _show(value: object) -> str:
    """A short, safe description of a bad value for an error's detail."""
    if type(value) is tuple:  # never repr an array: it may nest a thousand deep
        return f"an array of {len(value)}"
    text = repr(value[:41] if type(value) is str else value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


def field_error(reason: str, path: str, expected: str, value: object) -> DecodeError:
    """The error for a field at ``path`` that is not what was ``expected``."""
    return DecodeError(reason, f"{path}: expected {expected}, not {_show(value)}")


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on everything a datagram may carry; one broken bound refuses the whole datagram.

    An array longer than every list bound is refused by msgpack itself (reason
    ``bad_msgpack``), before it allocates room for the length a hostile header claims.
    """

    max_datagram_bytes: int = 1400
    """Longest datagram accepted: the UDP budget memberlist uses, which fits a 1,500-byte MTU."""
    max_client_bytes: int = 256
    """Longest client id, in utf-8 bytes: room for API keys and tenant paths, not for documents."""
    max_node_id_bytes: int = 64
    """Longest node id (sender, members, counter slots, HLC stamps), in utf-8 bytes."""
    max_messages: int = 256
    """Most messages in one envelope: room for a datagram full of small membership messages."""
    max_items: int = 1000
    """Most items in one list field (checks, results, deltas, slots, entries, members)."""
    max_count: int = 2**53
    """Largest count, cost, limit or millisecond duration: exact as a float, so JSON-safe."""
    max_host_bytes: int = 255
    """Longest host in an address: the DNS name limit."""
    max_rule_bytes: int = 512
    """Longest rule string, rule key (``client:`` and a client id) or counter series name."""

    def __post_init__(self) -> None:
        # The bounds are written into generated code (see schema._Writer): only ints may get
        # there.
        for f in fields(self):
            value = getattr(self, f.name)
            if type(value) is not int or value < 0:
                raise ValueError(f"Limits.{f.name} must be an int >= 0, not {value!r}")


DEFAULT_LIMITS = Limits()
