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
from functools import cache, lru_cache
from operator import attrgetter
from typing import Any, NamedTuple, Protocol, TypeVar

import msgpack

from meshlimit.cluster.wire.frozen import twin
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
    """Collects one generated function's lines, fresh local names and referenced objects.

    ``mode``: ``decode`` writes a decoder of wire arrays; ``screen`` a screener of them (see
    :func:`screeners_for`: arrays may also be lists, as the encoders build them, and records
    are checked, not built); ``canon`` a checker of message objects themselves (see
    :func:`canonical_for`: records are read by attribute and must be of their exact class)."""

    def __init__(self, limits: Limits, *, mode: str = "decode") -> None:
        assert mode in ("decode", "screen", "canon")
        self.limits = limits
        self.mode = mode
        self.screen = mode != "decode"  # checks only, builds nothing
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

    def not_array(self, x: str) -> str:
        """The test that ``x`` is no array: msgpack decodes arrays as tuples, and a screener
        also takes the lists the encoders make (both encode as the same msgpack array)."""
        if self.mode == "screen":
            return f"(type({x}) is not tuple and type({x}) is not list)"
        return f"type({x}) is not tuple"

    def fail(self, test: str, reason: str, path: str, expected: str, value: str) -> None:
        """``if test: raise DecodeError(reason, ...)`` on one line."""
        self.line(f"if {test}: raise _bad({reason!r}, {path!r}, {expected!r}, {value})")

    def function(self, path: str, emit: Emit) -> Decoder[Any]:
        """Compiles ``def decode_<path>(v): ...; return <decoded v>`` from ``emit`` (a
        screener or checker: ``def screen_<path>(v): ...; return v``, ``canon_<path>``)."""
        result = emit(self, "v", path)
        name = f"{self.mode}_{path}"
        source = "\n".join([f"def {name}(v):", *self.lines, f"    return {result}", ""])
        exec(compile(source, f"<meshlimit codec: {name}>", "exec"), self.objects)
        function: Decoder[Any] = self.objects[name]
        function.source = source
        return function


Emit = Callable[[_Writer, str, str], str]
"""Writes checks of the wire value in variable ``x`` (a field at ``path``) and returns the
expression for its decoded value: ``x`` itself for scalars and tuples."""


Source = Callable[[str, int], str]
"""Given the expression of a field's Python value (and how deeply nested it is, for fresh
loop names), the expression of its wire value."""


@dataclass(frozen=True, slots=True)
class _Kind:
    """A field's type on the wire: how to decode it, and how its Python value is sent."""

    emit: Emit
    source: Source | None = None
    """Writes the expression of the wire value; None when msgpack sends the value as it is."""

    @property
    def wire(self) -> Callable[[Any], Any] | None:
        """Turns the Python value into its wire value (compiled from :attr:`source`); None
        when msgpack sends it as it is."""
        return None if self.source is None else _compile_wire(self)


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
    w.fail(f"{w.not_array(x)} or len({x}) != {n}", "bad_field", path, f"an array of {n}", x)
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
        w.fail(w.not_array(x), "bad_field", path, "an array", x)
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

    inner = item.source
    if inner is None:
        return _Kind(emit)
    return _Kind(emit, lambda x, depth: f"[{inner(f'i{depth}', depth + 1)} for i{depth} in {x}]")


def _record(cls: type, *parts: _Kind) -> _Kind:
    """A dataclass sent as the positional array of its fields, with no tag."""

    def emit(w: _Writer, x: str, path: str) -> str:
        names = (
            _attributes(w, cls, x, path) if w.mode == "canon" else _unpack(w, x, len(parts), path)
        )
        built = _emit_fields(w, cls, parts, names, path)
        return x if w.screen else built

    return _Kind(emit, _fields_source(cls, parts))


def _message(cls: type, parts: Sequence[_Kind]) -> Emit:
    """A message: its tag (checked by the caller), then its fields."""

    def emit(w: _Writer, x: str, path: str) -> str:
        if w.mode == "canon":
            names = _attributes(w, cls, x, path)
        else:
            names = _unpack(w, x, len(parts) + 1, path)[1:]
        built = _emit_fields(w, cls, parts, names, path)
        return x if w.screen else built

    return emit


def _attributes(w: _Writer, cls: type, x: str, path: str) -> list[str]:
    """Checks that ``x`` is exactly a ``cls`` (a checker of objects) and reads its fields
    into fresh names."""
    w.fail(f"type({x}) is not {w.ref(cls, cls.__name__)}", "bad_field", path, cls.__name__, x)
    names = [w.fresh() for _ in fields(cls)]
    w.line(f"{', '.join(names)}, = {', '.join(f'{x}.{f.name}' for f in fields(cls))},")
    return names


def _emit_fields(w: _Writer, cls: type, parts: Sequence[_Kind], names: list[str], path: str) -> str:
    """Decodes a dataclass's fields from ``names`` and builds it."""
    slots = [f.name for f in fields(cls)]
    assert len(slots) == len(parts), f"{cls.__name__}: the table and the dataclass disagree"
    assert "__slots__" in vars(cls) and not hasattr(cls, "__post_init__")
    values = [
        part.emit(w, x, f"{path}.{slot}") for part, x, slot in zip(parts, names, slots, strict=True)
    ]
    if w.screen:
        return ""  # checked only: the caller returns the wire value itself
    # Build the frozen dataclass as frozen.builder does: a twin with the same slots, filled
    # with plain stores, then given the class. The object cls(...) would make, at a fifth
    # of the cost of the generated __init__, which goes through object.__setattr__.
    obj = w.fresh()
    w.line(f"{obj} = new({w.ref(twin(cls), cls.__name__ + 'Twin')})")
    for slot, value in zip(slots, values, strict=True):
        w.line(f"{obj}.{slot} = {value}")
    w.line(f"{obj}.__class__ = {w.ref(cls, cls.__name__)}")
    return obj


def _fields_source(cls: type, parts: Sequence[_Kind]) -> Source:
    """A dataclass's field values as they go on the wire, in field order, as a tuple."""
    names = [f.name for f in fields(cls)]

    def source(x: str, depth: int) -> str:
        values = [
            f"{x}.{name}" if part.source is None else part.source(f"{x}.{name}", depth)
            for name, part in zip(names, parts, strict=True)
        ]
        return f"({', '.join(values)},)"

    return source


@cache
def _compile_wire(kind: _Kind) -> Callable[[Any], Any]:
    assert kind.source is not None
    function: Callable[[Any], Any] = eval(f"lambda v: {kind.source('v', 0)}")  # noqa: S307
    return function


# --- the table ---------------------------------------------------------------------------

_U64 = _int(0, lambda _: U64_MAX)  # sequence numbers, request ids, incarnations, hashes
_I64 = _int(-(2**63), lambda _: 2**63 - 1)  # instants since the epoch and window indexes
_COUNT = _int(0, attrgetter("max_count"))  # counts, costs, limits, durations in ms
_RETRY = _int(-1, attrgetter("max_count"))  # ms, or -1 for never (a cost above the limit)
_NODE = _str(attrgetter("max_node_id_bytes"))
#: A counter slot's name: a node id, or one named for a reset's window (a separator and six
#: hex digits more: ``replication.epoch_name``).
_SLOT_NODE = _str(lambda limits: limits.max_node_id_bytes + 7)
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
        _items(_record(CounterSlot, _CLIENT, _RULE, _I64, _items(_tuple(_SLOT_NODE, _COUNT)))),
    ),
    RuleEntries: (  # entries: key, value or None, stamp of (wall, logical, node_id)
        _items(_record(RuleEntry, _RULE, _optional(_RULE), _tuple(_I64, _U64, _NODE))),
    ),
    RuleDigest: (_U64, _COUNT, _BOOL),  # digest, count, reply
    HandoverDone: (_NODE, _U64, _COUNT),  # member, incarnation, slots
}
"""Each message's field kinds, in dataclass field order. The tag comes from the class."""

assert set(FIELDS) == set(Message.__args__), "the table must cover the vocabulary"
BATCH_ITEMS = {cls: kinds[0] for cls, kinds in FIELDS.items() if len(kinds) == 1}
"""The batch messages, whose only field is a list, and the kind of that list."""


# --- encoding ----------------------------------------------------------------------------


def _wire_encoder(cls: type[Message]) -> Callable[[Any], tuple[Any, ...]]:
    """Turns one message into its wire array: the tag, then the field values. Generated as
    one expression (``(10, m.checks)``; a list of records becomes a list comprehension of
    tuples), which msgpack packs as arrays: no call per field or record."""
    body = _fields_source(cls, FIELDS[cls])("m", 0)
    source = f"def wire_{cls.__name__}(m):\n    return ({cls.TAG}, {body[1:]}\n"
    namespace: dict[str, Any] = {}
    exec(compile(source, f"<meshlimit codec: wire_{cls.__name__}>", "exec"), namespace)  # noqa: S102
    function: Callable[[Any], tuple[Any, ...]] = namespace[f"wire_{cls.__name__}"]
    return function


TO_WIRE = {cls: _wire_encoder(cls) for cls in FIELDS}
"""Per message class, what turns a message into its wire array."""


def to_msgpack(obj: object) -> bytes:
    """msgpack bytes; ``use_bin_type`` keeps str and bin apart (we only ever send str)."""
    packed: bytes = _PACK(obj)
    return packed


#: One packer for every call (``msgpack.packb`` makes a new one each time, a third of the
#: cost of packing a small message). Safe to share: packing our values (tuples, lists, str,
#: int, bool, None) runs in C under the GIL without calling back into Python, and the packer
#: empties its buffer when a value cannot be packed (autoreset).
_PACK = msgpack.Packer(use_bin_type=True).pack


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


@lru_cache(maxsize=8)
def screeners_for(limits: Limits) -> dict[type[Message], Decoder[Any]]:
    """Per message class, a generated screener of its wire array (as :data:`TO_WIRE` makes
    it): it raises :class:`~meshlimit.cluster.wire.limits.DecodeError` where the decoder
    would refuse the array after a trip through msgpack, and returns the array otherwise.

    What it passes, the decoder takes: the checks are the decoder's own, on the same values
    (msgpack turns the lists and tuples it is given into tuples, and gives back exact str,
    int and bool for exact ones). Only the converse may fail: a value of a subclass (an
    ``IntEnum`` for an int) is refused here though msgpack would send it as its base type,
    so a refusal is a reason to ask the decoder (``datagrams._screened``), never a verdict.
    """
    return {
        cls: _Writer(limits, mode="screen").function(cls.__name__, _message(cls, kinds))
        for cls, kinds in FIELDS.items()
    }


@lru_cache(maxsize=8)
def canonical_for(limits: Limits) -> dict[type[Message], Decoder[Any]]:
    """Per message class, a generated checker of a message *object*: it returns the message
    when decoding its encoding under ``limits`` would give back an equal object built of
    the very same types -- every list a tuple, every record of its exact class, every value
    an exact int, str, bool or None that the decoder takes -- and raises
    :class:`~meshlimit.cluster.wire.limits.DecodeError` otherwise (a message it refuses may
    still be valid: that is for the screener and the decoder to say). The decoder's own
    checks, read from the object instead of the wire array (``datagrams`` uses it to hand a
    datagram's messages to a receiver in the same process without decoding them again)."""
    return {
        cls: _Writer(limits, mode="canon").function(cls.__name__, _message(cls, kinds))
        for cls, kinds in FIELDS.items()
    }


def decode_message(by_tag: dict[int, Decoder[Message]], v: Any) -> Message:
    """One message from its wire array."""
    if type(v) is not tuple or not v:
        raise field_error("bad_field", "message", "a non-empty array", v)
    tag = v[0]
    decoder = by_tag.get(tag) if type(tag) is int else None  # True == 1, but is no tag
    if decoder is None:
        raise field_error("unknown_tag", "message", "a known tag", tag)
    return decoder(v)
