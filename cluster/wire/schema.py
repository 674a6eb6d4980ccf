"""The wire schema: each message's fields on the wire, and the code generated from it.

One table, :data:`FIELDS`, gives each message's field kinds in dataclass order; a kind knows
how its Python value goes on the wire and how to check and decode its wire value. From the
table come the encoders (:data:`TO_WIRE`: a message to its wire array) and, once per
:class:`~meshlimit.cluster.wire.limits.Limits`, the validating decoders
(:func:`decoders_for`), each one straight-line generated function. The envelope around the
messages, and the theory of the whole, are in :mod:`~meshlimit.cluster.wire.codec`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from functools import lru_cache
from operator import attrgetter
from typing import Any, NamedTuple, Protocol, TypeVar

import msgpack

from meshlimit.cluster.wire.limits import Limits, field_error
from meshlimit.cluster.wire.messages import (
    Ack,
    Address,
    CheckBatch,
    CheckResult,
    CounterDeltas,
    CounterSlot,
    HandoverDone,
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

PROTOCOL_VERSION = 1
U64_MAX = 2**64 - 1
PORT_MAX = 65535

_T_co = TypeVar("_T_co", covariant=True)


class Decoder(Protocol[_T_co]):
    """A generated decoder: a wire value in, its checked Python value out (or DecodeError)."""

    source: str
    """The generated Python source, for reading and debugging."""

    def __call__(self, v: Any, /) -> _T_co: ...


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
        self.objects: dict[str, Any] = {"new": object.__new__, "_bad": field_error}
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

    def function(self, path: str, emit: Emit) -> Decoder[Any]:
        """Compiles ``def decode_<path>(v): ...; return <decoded v>`` from ``emit``."""
        result = emit(self, "v", path)
        name = f"decode_{path}"
        source = "\n".join([f"def {name}(v):", *self.lines, f"    return {result}", ""])
        exec(compile(source, f"<meshlimit codec: {name}>", "exec"), self.objects)
        function: Decoder[Any] = self.objects[name]
        function.source = source
        return function


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

FIELDS: dict[type[Message], tuple[_Kind, ...]] = {
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
    HandoverDone: (_U64, _COUNT),  # incarnation, slots
}
"""Each message's field kinds, in dataclass field order. The tag comes from the class."""

assert set(FIELDS) == set(Message.__args__), "the table must cover the vocabulary"
BATCH_ITEMS = {cls: kinds[0] for cls, kinds in FIELDS.items() if len(kinds) == 1}
"""The batch messages, whose only field is a list, and the kind of that list."""


# --- encoding ----------------------------------------------------------------------------


def _wire_encoder(cls: type[Message]) -> Callable[[Any], tuple[Any, ...]]:
    """Turns one message into its wire array: the tag, then the field values."""
    tag, values = cls.TAG, _values(cls, FIELDS[cls])
    return lambda msg: (tag, *values(msg))


TO_WIRE = {cls: _wire_encoder(cls) for cls in FIELDS}
"""Per message class, what turns a message into its wire array."""


def to_msgpack(obj: object) -> bytes:
    """msgpack bytes; ``use_bin_type`` keeps str and bin apart (we only ever send str)."""
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


# --- decoding ----------------------------------------------------------------------------


class Decoders(NamedTuple):
    """Everything :func:`~meshlimit.cluster.wire.codec.decode` runs for one :class:`Limits`."""

    unpack_bounds: dict[str, int]
    sender: Decoder[str]
    sender_addr: Decoder[Address]
    by_tag: dict[int, Decoder[Message]]
    """Decoders of a message's whole wire array, tag included (checked by the caller)."""


@lru_cache(maxsize=8)
def decoders_for(limits: Limits) -> Decoders:
    """The decoders for ``limits``, generated from :data:`FIELDS` once."""
    by_tag = {
        cls.TAG: _Writer(limits).function(cls.__name__, _message(cls, kinds))
        for cls, kinds in FIELDS.items()
    }
    return Decoders(
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


def decode_message(by_tag: dict[int, Decoder[Message]], v: Any) -> Message:
    """One message from its wire array."""
    if type(v) is not tuple or not v:
        raise field_error("bad_field", "message", "a non-empty array", v)
    tag = v[0]
    decoder = by_tag.get(tag) if type(tag) is int else None  # True == 1, but is no tag
    if decoder is None:
        raise field_error("unknown_tag", "message", "a known tag", tag)
    return decoder(v)
