"""Typed settings read from TOML: each setting declared once, every refusal one clear error.

Theory of operation. A settings class is a frozen dataclass. A field that a
file may set carries ``metadata=toml(...)``: its TOML key (the field's name
unless told), its TOML type (from the field's annotation unless told:
``int | None`` reads an integer), bounds, choices, and a check that may also
convert the value (``"250ms"`` to nanoseconds, ``"HOST:PORT"`` to an address).
A field annotated with another settings class is a sub-table. A field without
``toml`` metadata is not in the file; the caller supplies it.

:func:`read_settings` decodes the text and reads its top-level table into a
settings class (:meth:`Reader.settings`). A key the class does not declare is
refused; each value is checked for its type, then its items or entries, its
choices, by its check, and against its bounds. Fields are read in the order
they are declared, except those with a ``read`` hook, read last so that they
can see the others (a client mapped to a tier sees the tiers; a timeline sees
the number of nodes). A key left out keeps the field's default; a field
without one is required.

Every refusal is one :class:`SettingsError` naming the source, the key as a
dotted path (``limits.tiers.gold``, ``cluster.seeds[1]``; a key that is not
bare is quoted as in TOML, ``limits.clients."a b"``) and the problem::

    examples/meshlimit.toml: cluster.replicas: expected an integer, got a string ('x')

Pure: it takes the text and the name to show for it; the callers read files.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, fields, is_dataclass, replace
from typing import Any, TypeVar

T = TypeVar("T")
V = TypeVar("V")
R = TypeVar("R")

#: Where a field keeps its :class:`Setting` in ``dataclasses.field(metadata=...)``.
METADATA_KEY = "meshlimit.settings"
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
#: What a TOML value of each type is called in an error, as found (``got a float``)...
_FOUND: dict[type, str] = {
    bool: "a boolean",
    int: "an integer",
    float: "a float",
    str: "a string",
    list: "an array",
    dict: "a table",
}
#: ...and as expected (``expected a number``: an integer is taken where a float is).
_EXPECTED: dict[type, str] = {**_FOUND, float: "a number"}

#: A hook that reads one value itself: ``(reader, dotted key, raw value, the fields read
#: so far by name) -> the value to store``, raising ``reader.error(...)`` to refuse it.
ReadHook = Callable[["Reader", str, object, Mapping[str, object]], object]


class SettingsError(ValueError):
    """Settings that cannot be used: ``source: key: problem`` (``source: problem`` when
    the problem is the whole text's)."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source, self.key, self.problem = source, key, problem
        super().__init__(f"{source}: {key}: {problem}" if key else f"{source}: {problem}")


@dataclass(frozen=True, slots=True)
class Setting:
    """How one value is read: a field's, an array's item or a table's entry."""

    key: str | None = None
    """The TOML key; None: the field's name."""
    kind: type | None = None
    """The TOML type: bool, int, float (an integer is taken too), str, list or dict.
    None: from the field's annotation (``float | None`` is a float)."""
    expected: str | None = None
    """What a type error says was expected, e.g. ``'a "HOST:PORT" string'``; None: the
    type's name (``an integer``)."""
    check: Callable[[Any], object] | None = None
    """Checks the value and returns what is stored (the value itself, or it converted);
    a ValueError it raises is the error at this key, its message the problem."""
    low: float | None = None
    """Least value stored (inclusive); None: no bound."""
    high: float | None = None
    """Greatest value stored (inclusive); None: no bound."""
    choices: tuple[str, ...] = ()
    """The values a string may take; empty: any."""
    items: Setting | None = None
    """For an array: how each item is read. The array is stored as a tuple."""
    values: Setting | None = None
    """For a table of free names (``[limits.tiers]``): how each entry's value is read.
    The table is stored as a dict (before ``check``)."""
    names: Callable[[str], object] | None = None
    """For a table of free names: checks each name (a ValueError refuses it)."""
    section: type | None = None
    """For a sub-table: the settings class it is read into. None: from the annotation."""
    read: ReadHook | None = None
    """Reads the value instead of all the above (:data:`ReadHook`)."""


def toml(
    *,
    key: str | None = None,
    kind: type | None = None,
    expected: str | None = None,
    check: Callable[[Any], object] | None = None,
    low: float | None = None,
    high: float | None = None,
    choices: tuple[str, ...] = (),
    items: Setting | None = None,
    values: Setting | None = None,
    names: Callable[[str], object] | None = None,
    read: ReadHook | None = None,
) -> Mapping[str, Setting]:
    """Field metadata declaring a setting, ``field(default=..., metadata=toml(low=0))``;
    the options are :class:`Setting`'s."""
    setting = Setting(
        key=key, kind=kind, expected=expected, check=check, low=low, high=high,
        choices=choices, items=items, values=values, names=names, read=read,
    )  # fmt: skip
    return types.MappingProxyType({METADATA_KEY: setting})


def read_settings(
    cls: type[T],
    text: str | bytes,
    *,
    source: str,
    defaults: Mapping[str, object] | None = None,
    error: type[SettingsError] = SettingsError,
) -> T:
    """``text`` (TOML, UTF-8 if bytes) read into the settings class ``cls``.

    ``source`` names the text in errors; ``defaults`` gives fields by name when the
    text leaves them out (and those it cannot set); ``error`` is the subclass of
    :class:`SettingsError` raised.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise error(source, "", f"not UTF-8 text (byte {exc.start})") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(source, "", f"not valid TOML: {exc}") from None
    return Reader(source, text, error=error).settings(cls, document, defaults=defaults)


def dotted(prefix: str, name: str) -> str:
    """The dotted path of key ``name`` in table ``prefix``, the name quoted unless bare."""
    part = name if _BARE_KEY.fullmatch(name) else json.dumps(name)
    return f"{prefix}.{part}" if prefix else part


class Reader:
    """Reads decoded TOML tables into settings classes; every refusal is one error.

    ``text`` is the source text, for hooks that point into it (a line number).
    The methods below :meth:`settings` are the pieces hooks build with.
    """

    def __init__(
        self, source: str, text: str = "", *, error: type[SettingsError] = SettingsError
    ) -> None:
        self.source = source
        self.text = text
        self._error = error

    def error(self, key: str, problem: str) -> SettingsError:
        """The error to raise for ``key`` (a dotted path; empty: the whole text)."""
        return self._error(self.source, key, problem)

    def settings(
        self,
        cls: type[T],
        table: object,
        prefix: str = "",
        *,
        defaults: Mapping[str, object] | None = None,
    ) -> T:
        """The table at ``prefix`` (empty: the top level) read into ``cls``."""
        entries = self.typed(prefix, table, dict)
        declared = _declared(cls)
        self.known(entries, prefix, tuple(field.key for field in declared))
        values: dict[str, object] = dict(defaults or {})
        hooks: list[_Field] = []
        for field in declared:
            key = dotted(prefix, field.key)
            if field.key in entries:
                if field.setting.read is not None:
                    hooks.append(field)
                else:
                    values[field.name] = self.value(key, entries[field.key], field.setting)
            elif field.name not in values:
                if field.make_default is None:
                    raise self.error(key, "missing; this key is required")
                values[field.name] = field.make_default()
        for field in hooks:
            assert field.setting.read is not None
            key = dotted(prefix, field.key)
            values[field.name] = field.setting.read(self, key, entries[field.key], values)
        return cls(**values)

    def value(self, key: str, raw: object, setting: Setting) -> object:
        """One value read as ``setting`` says (its ``read`` hook aside)."""
        assert setting.kind is not None, f"{key}: declare the TOML type (kind=...)"
        value: object = self.typed(key, raw, setting.kind, setting.expected)
        if setting.section is not None:
            return self.settings(setting.section, value, key)
        if setting.items is not None and isinstance(value, list):
            items = setting.items
            value = tuple(self.value(f"{key}[{i}]", item, items) for i, item in enumerate(value))
        elif setting.values is not None and isinstance(value, dict):
            entries: dict[str, object] = {}
            for name, entry in value.items():
                entry_key = dotted(key, name)
                if setting.names is not None:
                    self.checked(entry_key, name, setting.names)
                entries[name] = self.value(entry_key, entry, setting.values)
            value = entries
        if setting.choices and value not in setting.choices:
            raise self.error(key, f"{value!r} is not one of {', '.join(setting.choices)}")
        if setting.check is not None:
            value = self.checked(key, value, setting.check)
        if setting.low is not None or setting.high is not None:
            assert isinstance(value, int | float), f"{key}: bounds on a value that is no number"
            problem = _out_of_bounds(value, setting.low, setting.high)
            if problem:
                raise self.error(key, problem)
        return value

    def typed(self, key: str, raw: object, kind: type[V], expected: str | None = None) -> V:
        """``raw`` if it is a TOML value of type ``kind``, else the error naming what it is.
        A float setting takes an integer too (as a float); it must be finite."""
        if kind is float and type(raw) is int:
            raw = _as_float(raw)
        # bool is an int subclass: ``replicas = true`` must not pass as 1.
        if type(raw) is kind and isinstance(raw, kind):
            if isinstance(raw, float) and not math.isfinite(raw):
                raise self.error(key, f"expected a finite number, got {raw}")
            return raw
        wanted = expected or _EXPECTED.get(kind, kind.__name__)
        shown = "" if kind is dict else f" ({_shown(raw)})"  # "expected a table, got an array"
        raise self.error(key, f"expected {wanted}, got {_found(raw)}{shown}")

    def checked(self, key: str, value: V, check: Callable[[V], R]) -> R:
        """``check(value)``, its ValueError turned into the error at ``key``."""
        try:
            return check(value)
        except ValueError as exc:
            raise self.error(key, str(exc)) from None

    def known(self, table: Mapping[str, object], prefix: str, names: tuple[str, ...]) -> None:
        """Refuse the first key of ``table`` that is not one of ``names``, listing them."""
        for name in table:
            if name not in names:
                where = f"[{prefix}]" if prefix else "the top level"
                raise self.error(
                    dotted(prefix, name),
                    f"unknown key; the keys known in {where} are {', '.join(names)}",
                )


# --- the declarations -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Field:
    """A settings class's field as read: its TOML key, its setting (type and sub-table
    resolved from the annotation) and how to make its default (None: it is required).
    Defaults are made even for the keys a table leaves out, so that hooks see them."""

    name: str
    key: str
    setting: Setting
    make_default: Callable[[], object] | None


def _declared(cls: type) -> tuple[_Field, ...]:
    """The TOML fields of settings class ``cls``, in declaration order. (Worked out on each
    read, a few microseconds: files are read at start and on a change, not per request.)"""
    assert is_dataclass(cls), f"{cls.__name__} is not a dataclass"
    hints = typing.get_type_hints(cls)
    declared = []
    for f in fields(cls):
        setting = f.metadata.get(METADATA_KEY)
        if setting is None:
            continue  # not in the file
        if setting.read is None and setting.kind is None:
            setting = _from_annotation(cls, f.name, hints[f.name], setting)
        make_default: Callable[[], object] | None = None
        if f.default is not MISSING:
            make_default = _constant(f.default)
        elif f.default_factory is not MISSING:
            make_default = f.default_factory
        declared.append(_Field(f.name, setting.key or f.name, setting, make_default))
    return tuple(declared)


def _from_annotation(cls: type, name: str, hint: object, setting: Setting) -> Setting:
    """``setting`` with its TOML type (and sub-table) taken from the annotation ``hint``."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    options = [a for a in typing.get_args(hint) if a is not type(None)] if union else [hint]
    only = options[0] if len(options) == 1 else None
    if only in (bool, int, float, str):
        return replace(setting, kind=typing.cast(type, only))
    if isinstance(only, type) and is_dataclass(only) and _declared(only):
        return replace(setting, kind=dict, section=only)
    raise AssertionError(f"{cls.__name__}.{name}: declare the TOML type of {hint} (kind=...)")


def _constant(value: object) -> Callable[[], object]:
    return lambda: value


# --- wording ----------------------------------------------------------------------------


def _out_of_bounds(value: float, low: float | None, high: float | None) -> str | None:
    if low is not None and high is not None:
        return None if low <= value <= high else f"must be from {low} to {high}, got {value}"
    if low is not None:
        return None if value >= low else f"must be {low} or more, got {value}"
    assert high is not None
    return None if value <= high else f"must be {high} or less, got {value}"


def _as_float(number: int) -> float:
    try:
        return float(number)
    except OverflowError:  # TOML integers are unbounded; no float holds this one
        return math.inf if number > 0 else -math.inf


def _found(value: object) -> str:
    return _FOUND.get(type(value), "a date/time")


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
