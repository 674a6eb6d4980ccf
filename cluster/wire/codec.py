"""The wire codec: envelopes to msgpack bytes and back, bounded and validated.

Theory of operation. An :class:`~meshlimit.cluster.messages.Envelope` travels as one msgpack
array of positional fields; no field names go on the wire::

    envelope = [PROTOCOL_VERSION, sender, [host, port], [message, ...]]
    message  = [TAG, field1, field2, ...]      # fields in dataclass order
    record   = [field1, field2, ...]           # CheckResult, CounterSlot, RuleEntry, and
                                               # MemberUpdate inside JoinReply (no tag)
    tuples   = arrays                          # addresses, checks, slots, HLC stamps

One table, :data:`_FIELDS`, gives each message's field kinds in dataclass order; a kind knows
how its Python value goes on the wire and how to check and decode its wire value. Decoding is
the boundary for a peer's garbage: :func:`decode` takes any bytes and either returns a fully
validated envelope (ints range-checked, bools never taken for ints, strings and lists bounded,
lists turned back into tuples) or raises :class:`DecodeError`, its only error, whose ``reason``
the node counts drops by. Since decoding is on every node's hot path, each message's decoder
is generated from the table, once per :class:`Limits`, as one straight-line function with
every check inlined (see ``_decoder_source``). Encoding trusts its input: our own node builds
the messages, so one that breaks the bounds is a programmer's error; :func:`pack_datagrams`
screens for them anyway, since one bad message would make the receiver drop every message
sharing its datagram.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from functools import lru_cache
from operator import attrgetter
from typing import Any, NamedTuple

import msgpack
from meshlimit.cluster.wire.messages import (
    Ack,
    Address,
    CheckBatch,
    CheckResult,
    CounterDeltas,
    CounterSlot,
    Envelope,
    IndirectAck,
    Join,
    JoinReply,
    MemberState,
    MemberUpdate,
    Message,
    Ping,
    PingReq,
    ReplyBatch,
    RuleDigest,
    RuleEntries,
    RuleEntry,
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

PROTOCOL_VERSION = 1
U64_MAX = 2**64 - 1
PORT_MAX = 65535

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
    """Garbage from a peer: the one error :func:`decode` raises.

    ``reason`` is one of :data:`REASONS`, short and stable for counting drops;
    ``detail`` says what was wrong, for logs.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


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
        # The bounds are written into generated code (see _Writer): only ints may get there.
        for f in fields(self):
            value = getattr(self, f.name)
            if type(value) is not int or value < 0:
                raise ValueError(f"Limits.{f.name} must be an int >= 0, not {value!r}")


DEFAULT_LIMITS = Limits()


# --- field kinds: each writes the Python source that checks and decodes it ---------------
#
# A validator call per field would cost more than the check itself, so each message's decoder
# is generated as one function, the way dataclasses and namedtuple generate their methods:
# checks inlined, a loop per list, and each failure raising a DecodeError that names the
# field's path, such as ``ReplyBatch.results[].limit``. Only our own table and Limits reach
# the generated source; a peer's bytes are data to it, never code.


class _Writer:
    """Collects one generated function's lines, fresh local names and referenced objects."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.lines: list[str] = []
        self.objects: dict[str, Any] = {"new": object.__new__, "_bad": _bad}
        self.depth = 1
        self.count = 0

    def fresh(self) -> str:
        """A new local variable name."""
        self.count += 1
        return f"v{self.count}"

    def ref(self, obj: object, name: str) -> str:
        """A global name, based on ``name``, for ``obj`` in the generated code."""
        while name in self.objects:
            name += "_"
        self.objects[name] = obj
        return name

    def line(self, text: str) -> None:
        self.lines.append("    " * self.depth + text)

    def fail(self, test: str, reason: str, path: str, expected: str, value: str) -> None:
        """``if test: raise DecodeError(reason, ...)`` on one line."""
        self.line(f"if {test}: raise _bad({reason!r}, {path!r}, {expected!r}, {value})")

    def function(self, path: str, emit: Emit) -> Any:
        """Compiles ``def decode_<path>(v): ...; return <decoded v>`` from ``emit``."""
        result = emit(self, "v", path)
        name = f"decode_{path}"
        source = "\n".join([f"def {name}(v):", *self.lines, f"    return {result}", ""])
        exec(compile(source, f"<meshlimit codec: {name}>", "exec"), self.objects)
        function = self.objects[name]
        function.source = source
        return function


def _show(value: object) -> str:
    """A short, safe description of a bad value for an error's detail."""
    if type(value) is tuple:  # never repr an array: it may nest a thousand deep
        return f"an array of {len(value)}"
    text = repr(value[:41] if type(value) is str else value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


def _bad(reason: str, path: str, expected: str, value: object) -> DecodeError:
    """The error for a field at ``path`` that is not what was ``expected``."""
    return DecodeError(reason, f"{path}: expected {expected}, not {_show(value)}")


Emit = Callable[[_Writer, str, str], str]
"""Writes checks of the wire value in variable ``x`` (a field at ``path``) and returns the
expression for its decoded value: ``x`` itself for scalars and tuples."""


@dataclass(frozen=True, slots=True)
class _Kind:
    """A field's type on the wire: how to decode it, and how its Python value is sent."""

    emit: Emit
    wire: Callable[[Any], Any] | None = None
    """Turns the Python value into its wire value; None when msgpack sends it as it is."""


def _int(low: int, top: Callable[[Limits], int]) -> _Kind:
    """An int in ``low..top(limits)``; bools (a subclass of int) and floats are refused."""

    def emit(w: _Writer, x: str, path: str) -> str:
        hi = top(w.limits)
        test = f"type({x}) is not int or not {low} <= {x} <= {hi}"
        w.fail(test, "bad_field", path, f"an int in {low}..{hi}", x)
        return x

    return _Kind(emit)


def _str(top: Callable[[Limits], int]) -> _Kind:
    """A str of at most ``top(limits)`` utf-8 bytes (msgpack has already checked the utf-8)."""

    def emit(w: _Writer, x: str, path: str) -> str:
        hi = top(w.limits)
        w.fail(f"type({x}) is not str", "bad_field", path, "a str", x)
        # No str of hi // 4 characters can exceed hi bytes, so most skip the encoding.
        w.fail(f"len({x}) > {hi // 4} and len({x}.encode()) > {hi}", "too_long", path,
               f"at most {hi} bytes", x)  # fmt: skip
        return x

    return _Kind(emit)


def _emit_bool(w: _Writer, x: str, path: str) -> str:
    w.fail(f"{x} is not True and {x} is not False", "bad_field", path, "a bool", x)
    return x


_BOOL = _Kind(_emit_bool)
"""True or False, and not 0 or 1."""


def _optional(inner: _Kind) -> _Kind:
    """None, or a scalar of kind ``inner``."""

    def emit(w: _Writer, x: str, path: str) -> str:
        w.line(f"if {x} is not None:")
        w.depth += 1
        assert inner.emit(w, x, path) == x, "only scalars may be optional"
        w.depth -= 1
        return x

    return _Kind(emit)


def _unpack(w: _Writer, x: str, n: int, path: str) -> list[str]:
    """Checks that ``x`` is an array of ``n`` and unpacks it into fresh names."""
    w.fail(f"type({x}) is not tuple or len({x}) != {n}", "bad_field", path, f"an array of {n}", x)
    names = [w.fresh() for _ in range(n)]
    w.line(f"{', '.join(names)}, = {x}")
    return names


def _tuple(*parts: _Kind) -> _Kind:
    """A fixed-arity array of scalars, kept as the tuple msgpack built (``use_list=False``)."""

    def emit(w: _Writer, x: str, path: str) -> str:
        for i, (part, name) in enumerate(zip(parts, _unpack(w, x, len(parts), path), strict=True)):
            assert part.emit(w, name, f"{path}[{i}]") == name, "a tuple holds scalars only"
        return x

    return _Kind(emit)


def _items(item: _Kind) -> _Kind:
    """A list field of at most ``limits.max_items`` items, decoded to a tuple."""

    def emit(w: _Writer, x: str, path: str) -> str:
        hi = w.limits.max_items
        w.fail(f"type({x}) is not tuple", "bad_field", path, "an array", x)
        w.fail(f"len({x}) > {hi}", "too_many", path, f"at most {hi} items", f"len({x})")
        y, out, at = w.fresh(), w.fresh(), len(w.lines)
        w.line(f"for {y} in {x}:")
        w.depth += 1
        value = item.emit(w, y, f"{path}[]")
        w.depth -= 1
        if value != y:  # items become new objects (records): collect them
            w.lines.insert(at, "    " * w.depth + f"{out} = []")
            w.lines.append("    " * (w.depth + 1) + f"{out}.append({value})")
        return x if value == y else f"tuple({out})"

    wire = item.wire
    return _Kind(emit, None if wire is None else lambda v: list(map(wire, v)))


def _record(cls: type, *parts: _Kind) -> _Kind:
    """A dataclass sent as the positional array of its fields, with no tag."""
    return _Kind(
        lambda w, x, path: _emit_fields(w, cls, parts, _unpack(w, x, len(parts), path), path),
        _values(cls, parts),
    )


def _message(cls: type, parts: Sequence[_Kind]) -> Emit:
    """A message: its tag (checked by the caller), then its fields."""

    def emit(w: _Writer, x: str, path: str) -> str:
        return _emit_fields(w, cls, parts, _unpack(w, x, len(parts) + 1, path)[1:], path)

    return emit


def _emit_fields(w: _Writer, cls: type, parts: Sequence[_Kind], names: list[str], path: str) -> str:
    """Decodes a dataclass's fields from ``names`` and builds it."""
    slots = [f.name for f in fields(cls)]
    assert len(slots) == len(parts), f"{cls.__name__}: the table and the dataclass disagree"
    assert "__slots__" in vars(cls) and not hasattr(cls, "__post_init__")
    values = [
        part.emit(w, x, f"{path}.{slot}") for part, x, slot in zip(parts, names, slots, strict=True)
    ]
    # Build the frozen dataclass through its slots: the object cls(...) would make, at half
    # the cost of the generated __init__, which goes through object.__setattr__.
    obj = w.fresh()
    w.line(f"{obj} = new({w.ref(cls, cls.__name__)})")
    for slot, value in zip(slots, values, strict=True):
        w.line(f"{w.ref(getattr(cls, slot).__set__, f'set_{slot}')}({obj}, {value})")
    return obj


def _values(cls: type, parts: Sequence[_Kind]) -> Callable[[Any], tuple[Any, ...]]:
    """Reads a dataclass's field values, as they go on the wire, in field order."""
    names = [f.name for f in fields(cls)]
    get = attrgetter(*names) if len(names) > 1 else lambda obj: (getattr(obj, names[0]),)
    wires = [part.wire for part in parts]
    if all(wire is None for wire in wires):
        return get
    return lambda obj: tuple(
        v if wire is None else wire(v) for wire, v in zip(wires, get(obj), strict=True)
    )


# --- the table ---------------------------------------------------------------------------

_U64 = _int(0, lambda _: U64_MAX)  # sequence numbers, request ids, incarnations, hashes
_I64 = _int(-(2**63), lambda _: 2**63 - 1)  # instants since the epoch and window indexes
_COUNT = _int(0, attrgetter("max_count"))  # counts, costs, limits, durations in ms
_RETRY = _int(-1, attrgetter("max_count"))  # ms, or -1 for never (a cost above the limit)
_NODE = _str(attrgetter("max_node_id_bytes"))
_CLIENT = _str(attrgetter("max_client_bytes"))
_RULE = _str(attrgetter("max_rule_bytes"))
_ADDR = _tuple(_str(attrgetter("max_host_bytes")), _int(0, lambda _: PORT_MAX))
_MEMBER = (_NODE, _ADDR, _int(0, lambda _: max(MemberState.NAMES)), _U64)

_FIELDS: dict[type, tuple[_Kind, ...]] = {
    # membership
    Ping: (_U64, _NODE, _I64),  # seq, target, sent_ns
    Ack: (_U64, _I64, _I64),  # seq, echo_ns, responder_ns
    PingReq: (_U64, _NODE, _ADDR),  # seq, target, target_addr
    IndirectAck: (_U64, _NODE),  # seq, target
    MemberUpdate: _MEMBER,  # node, addr, state, incarnation
    Join: (_NODE, _ADDR, _U64),  # node, addr, incarnation
    JoinReply: (_items(_record(MemberUpdate, *_MEMBER)),),  # members, without their tags
    # rate limiting
    CheckBatch: (_items(_tuple(_U64, _CLIENT, _COUNT)),),  # checks: (request_id, client, cost)
    ReplyBatch: (
        _items(  # results: request_id, allowed, limit, remaining, reset_after_ms, retry_after_ms
            _record(CheckResult, _U64, _BOOL, _COUNT, _COUNT, _COUNT, _RETRY)
        ),
    ),
    CounterDeltas: (  # deltas: client, series, window, slots of (node_id, count)
        _items(_record(CounterSlot, _CLIENT, _RULE, _I64, _items(_tuple(_NODE, _COUNT)))),
    ),
    RuleEntries: (  # entries: key, value or None, stamp of (wall, logical, node_id)
        _items(_record(RuleEntry, _RULE, _optional(_RULE), _tuple(_I64, _U64, _NODE))),
    ),
    RuleDigest: (_U64, _COUNT, _BOOL),  # digest, count, reply
}
"""Each message's field kinds, in dataclass field order. The tag comes from the class."""

assert set(_FIELDS) == set(Message.__args__), "the table must cover the vocabulary"
_BATCHES = {cls: kinds[0] for cls, kinds in _FIELDS.items() if len(kinds) == 1}  # a list field


# --- encoding ----------------------------------------------------------------------------


def _wire_encoder(cls: type) -> Callable[[Any], tuple[Any, ...]]:
    """Turns one message into its wire array: the tag, then the field values."""
    tag, values = cls.TAG, _values(cls, _FIELDS[cls])
    return lambda msg: (tag, *values(msg))


_WIRE = {cls: _wire_encoder(cls) for cls in _FIELDS}


def _pack(obj: object) -> bytes:
    """msgpack bytes; ``use_bin_type`` keeps str and bin apart (we only ever send str)."""
    return msgpack.packb(obj, use_bin_type=True)


def encode(env: Envelope) -> bytes:
    """The datagram for ``env``. Checks no bounds: our own messages are trusted."""
    wire = [_WIRE[type(m)](m) for m in env.messages]
    return _pack((PROTOCOL_VERSION, env.sender, env.sender_addr, wire))


# --- decoding ----------------------------------------------------------------------------


class _Decoders(NamedTuple):
    """Everything :func:`decode` runs for one :class:`Limits`."""

    unpack_bounds: dict[str, int]
    sender: Callable[[Any], str]
    sender_addr: Callable[[Any], Address]
    by_tag: dict[int, Callable[[Any], Message]]
    """Decoders of a message's whole wire array, tag included (checked by the caller)."""


@lru_cache(maxsize=8)
def _decoders(limits: Limits) -> _Decoders:
    """The decoders for ``limits``, generated from :data:`_FIELDS` once."""
    by_tag = {
        cls.TAG: _Writer(limits).function(cls.__name__, _message(cls, kinds))
        for cls, kinds in _FIELDS.items()
    }
    return _Decoders(
        unpack_bounds={  # msgpack's own bounds, checked before it allocates
            "max_array_len": max(limits.max_items, limits.max_messages, 8),  # a list per item
            "max_str_len": limits.max_datagram_bytes,  # the fields' own bounds name the field
            "max_bin_len": 0,  # we send no bytes, maps or extension types
            "max_map_len": 0,
            "max_ext_len": 0,
        },
        sender=_Writer(limits).function("sender", _NODE.emit),
        sender_addr=_Writer(limits).function("sender_addr", _ADDR.emit),
        by_tag=by_tag,
    )


def _decoder_source(cls: type, limits: Limits = DEFAULT_LIMITS) -> str:
    """The generated source of ``cls``'s decoder, for reading and debugging."""
    return _decoders(limits).by_tag[cls.TAG].source  # type: ignore[attr-defined]


def _decode_message(by_tag: dict[int, Callable[[Any], Message]], v: Any) -> Message:
    """One message from its wire array."""
    if type(v) is not tuple or not v:
        raise _bad("bad_field", "message", "a non-empty array", v)
    tag = v[0]
    decoder = by_tag.get(tag) if type(tag) is int else None  # True == 1, but is no tag
    if decoder is None:
        raise _bad("unknown_tag", "message", "a known tag", tag)
    return decoder(v)


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
        raise _bad("bad_envelope", "envelope", "an array", obj)
    if type(obj[0]) is not int or obj[0] != PROTOCOL_VERSION:
        raise _bad("bad_version", "version", str(PROTOCOL_VERSION), obj[0])
    if len(obj) != 4:
        raise _bad("bad_envelope", "envelope", "an array of 4", obj)
    _, sender, addr, messages = obj
    if type(messages) is not tuple:
        raise _bad("bad_envelope", "messages", "an array", messages)
    if len(messages) > limits.max_messages:
        raise _bad("too_many", "messages", f"at most {limits.max_messages}", len(messages))
    by_tag = d.by_tag
    return Envelope(
        d.sender(sender), d.sender_addr(addr), tuple([_decode_message(by_tag, m) for m in messages])
    )


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


# --- batching ----------------------------------------------------------------------------


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
    return budget - len(_pack((PROTOCOL_VERSION, sender, sender_addr, [])))


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
    by_tag = _decoders(limits).by_tag if validate else None
    head = _pack((PROTOCOL_VERSION, sender, sender_addr, []))[:-1]  # all but the empty array
    base, most = len(head), limits.max_messages
    out: list[bytes] = []
    oversized = invalid = 0
    batch: list[bytes] = []
    size = 0  # bytes in batch

    def flush() -> None:
        out.append(b"".join([head, _array_header(len(batch)), *batch]))

    for msg in messages:
        piece = _pack(_WIRE[type(msg)](msg)) if by_tag is None else _screened(by_tag, msg)
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


def _screened(by_tag: dict[int, Callable[[Any], Message]], msg: Message) -> bytes | None:
    """``msg`` encoded, or None if it cannot be, or the receiver's decoder would refuse it."""
    try:  # msgpack refuses e.g. ints beyond 64 bits and lone surrogates (json.loads makes them)
        piece = _pack(_WIRE[type(msg)](msg))
        _decode_message(by_tag, msgpack.unpackb(piece, use_list=False, raw=False))
    except (DecodeError, TypeError, ValueError, OverflowError):
        return None
    return piece


def fit_items(
    cls: type[Message],
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
    kind = _BATCHES.get(cls)
    assert kind is not None, f"{cls.__name__} is not a batch message"
    wire = kind.wire
    fixed = 2  # fixarray(2) and the tag, a positive fixint
    out: list[Message] = []
    start = size = 0
    sizes = [len(_pack(x)) for x in (wire(items) if wire is not None else items)]
    for i, item_size in enumerate(sizes):
        n = i - start
        if n and (n >= limits.max_items or fixed + _header_size(n + 1) + size + item_size > budget):
            out.append(cls(tuple(items[start:i])))
            start, size = i, 0
        size += item_size
    if start < len(items):
        out.append(cls(tuple(items[start:])))
    return out
