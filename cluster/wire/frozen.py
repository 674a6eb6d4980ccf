"""Building frozen, slotted dataclasses fast, for hot paths that make one per datagram.

A frozen dataclass's generated ``__init__`` stores every field through
``object.__setattr__`` (its own ``__setattr__`` refuses): a six-field ``CheckResult``
costs about 9,900 CPU instructions to make, measured under valgrind, where a plain
slotted class takes about 1,400. A node makes several such objects per forwarded check
(messages decoded and sent, records, events), so :func:`builder` makes the same objects
another way: an instance of a *twin* class, a plain class with the very same slots, is
filled with ordinary attribute stores and then given the dataclass as its class
(CPython allows assigning ``__class__`` between classes of identical layout). What
comes out is an ordinary instance of the dataclass -- its type, its fields, frozen from
then on, equal and hashing alike to one its ``__init__`` makes -- for about 2,100.

Only for dataclasses that are frozen, slotted, without ``__post_init__``, with object as
their only base and every field set by ``__init__``: :func:`twin` checks once per class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from functools import cache
from typing import Any, TypeVar, cast

T = TypeVar("T")


@cache
def twin(cls: type) -> type:
    """The plain class whose instances become ``cls``'s by ``__class__`` assignment."""
    names = [f.name for f in fields(cls)]
    assert cls.__bases__ == (object,), f"{cls.__name__}: a twin needs object as the only base"
    assert getattr(cls, "__slots__", None) == tuple(names), f"{cls.__name__} is not slotted"
    assert not hasattr(cls, "__post_init__"), f"{cls.__name__} has a __post_init__"
    assert all(f.init for f in fields(cls)), f"{cls.__name__} has a field __init__ does not set"
    plain: type = type(f"{cls.__name__}Twin", (), {"__slots__": tuple(names)})
    probe: Any = object.__new__(plain)
    probe.__class__ = cls  # raises TypeError now, at import, if the layouts differ
    return plain


def builder(cls: type[T]) -> Callable[..., T]:
    """A function taking ``cls``'s fields positionally, in order, and returning the same
    object ``cls(...)`` would (see the module docstring), generated once per class."""
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    stores = "".join(f"\n    o.{name} = {name}" for name in names)
    source = (
        f"def build_{cls.__name__}({', '.join(names)}):\n"
        f"    o = new(twin){stores}\n"
        f"    o.__class__ = cls\n"
        f"    return o\n"
    )
    namespace: dict[str, Any] = {"new": object.__new__, "twin": twin(cast(type, cls)), "cls": cls}
    exec(compile(source, f"<meshlimit build_{cls.__name__}>", "exec"), namespace)
    function: Callable[..., T] = namespace[f"build_{cls.__name__}"]
    return function
