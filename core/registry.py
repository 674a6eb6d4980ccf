"""The rule registry: a default rule, named tiers and per-client overrides.

Every entry carries a hybrid-logical-clock :class:`~meshlimit.core.hlc.Stamp`
and registries merge entry by entry, last writer wins. That makes the
registry a state-based CRDT (a map of LWW registers): any node may change a
rule at any time, changes spread by gossip in any order, and every node ends
with the same rules. A removal is an entry too (a tombstone with a stamp), so
an old write arriving late cannot resurrect a removed rule.

Keys are ``"default"``, ``"tier:NAME"``, ``"client:ID"`` and ``"reset:ID"`` (when
an operator last reset a client's counts: a stamp with no value). A client's value
is a rule, or ``"@NAME"`` mapping it to a tier. ``digest`` is an
order-independent hash of all entries, kept up to date incrementally, so
anti-entropy compares two registries with one integer.

Resolution (``resolve``) is on every check's path: one dict lookup for a
client without an override, two for a client on a tier.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import NamedTuple

import mmh3

from .hlc import ZERO, Stamp
from .rules import Rule, as_rule, parse_rule

DEFAULT_KEY = "default"
TIER_PREFIX = "tier:"
CLIENT_PREFIX = "client:"
#: ``reset:ID`` entries record when an operator reset a client's counts (value None).
RESET_PREFIX = "reset:"
MAX_CLIENT_BYTES = 256
_TIER_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}\Z")

Value = Rule | str | None  # a rule, "@tier" for a client, or None for a removal


class Entry(NamedTuple):
    """One registry entry: its value and the stamp of the write that set it."""

    value: Value
    stamp: Stamp


def check_client_id(client: str) -> None:
    """Refuse client ids that are empty, not text, or longer than 256 UTF-8 bytes."""
    if not isinstance(client, str) or not client:
        raise ValueError(f"client id must be a non-empty string, got {client!r}")
    try:
        size = len(client.encode())
    except UnicodeEncodeError:
        raise ValueError("client id is not valid Unicode text (lone surrogate)") from None
    if size > MAX_CLIENT_BYTES:
        raise ValueError(f"client id longer than {MAX_CLIENT_BYTES} bytes")


def check_tier_name(name: str) -> None:
    """Tier names are 1 to 64 letters, digits, ``_``, ``.`` or ``-``."""
    if not isinstance(name, str) or not _TIER_NAME.match(name):
        raise ValueError(f"tier name {name!r} must be 1-64 of A-Z a-z 0-9 _ . -")


def value_text(value: Value) -> str | None:
    """The wire form of a value: rule notation, ``@tier`` or ``None``."""
    return str(value) if isinstance(value, Rule) else value


def _newer(value: Value, stamp: Stamp, current: Entry) -> bool:
    """Last writer wins; equal stamps (e.g. two configured defaults) break on the value text."""
    if stamp != current.stamp:
        return stamp > current.stamp
    return (value_text(value) or "") > (value_text(current.value) or "")


def _entry_hash(key: str, entry: Entry) -> int:
    text = f"{key}\0{value_text(entry.value)}\0{entry.stamp.wall_ms}.{entry.stamp.counter}"
    return mmh3.hash64(f"{text}.{entry.stamp.node}", signed=False)[0]


class RuleRegistry:
    """Default rule, tiers and client overrides, merged last-writer-wins by stamp."""

    def __init__(self, default: Rule | str, *, max_entries: int = 1_000_000) -> None:
        # The default entry is kept as its parts: its value is always a rule (it can be
        # neither removed nor mapped to a tier), and the hot path returns it as one.
        self._default_rule = as_rule(default)
        self._default_stamp = ZERO
        self._tiers: dict[str, Entry] = {}
        self._clients: dict[str, Entry] = {}
        self._resets: dict[str, Entry] = {}
        self._max_entries = max_entries
        self.digest = _entry_hash(DEFAULT_KEY, self._default_entry())

    # --- the hot path -----------------------------------------------------------------

    @property
    def default(self) -> Rule:
        """The rule for clients with no override and no tier."""
        return self._default_rule

    def resolve(self, client: str) -> Rule:
        """The rule in force for ``client``."""
        entry = self._clients.get(client)
        if entry is None:
            return self._default_rule
        value = entry.value
        if isinstance(value, Rule):
            return value
        if value is not None:
            tier = self._tiers.get(value[1:])
            if tier is not None and isinstance(tier.value, Rule):  # else a removed tier
                return tier.value
        return self._default_rule

    # --- writes -----------------------------------------------------------------------

    def set_default(self, rule: Rule | str, stamp: Stamp) -> bool:
        """Set the default rule if ``stamp`` is newer; True if it changed."""
        return self.apply(DEFAULT_KEY, as_rule(rule), stamp)

    def set_tier(self, name: str, rule: Rule | str | None, stamp: Stamp) -> bool:
        """Define, change or (with ``None``) remove a tier."""
        check_tier_name(name)
        return self.apply(TIER_PREFIX + name, None if rule is None else as_rule(rule), stamp)

    def set_client(self, client: str, value: Rule | str | None, stamp: Stamp) -> bool:
        """Give a client a rule, a tier (``"@gold"``), or remove its override (``None``)."""
        check_client_id(client)
        if isinstance(value, str):
            value = self._client_value(value)
        return self.apply(CLIENT_PREFIX + client, value, stamp)

    def apply(self, key: str, value: Value, stamp: Stamp) -> bool:
        """Merge one entry last-writer-wins; True if it replaced ours.

        Raises ``ValueError`` for a malformed key or value (a peer's garbage is
        refused whole, never half-applied).
        """
        table, name = self._table_for(key)
        if isinstance(value, str) and not value.startswith("@"):
            value = parse_rule(value)
        self._check_value(key, value)
        current = self._default_entry() if table is None else table.get(name)
        if current is not None and not _newer(value, stamp, current):
            return False
        if table is not None and current is None and self.entry_count() >= self._max_entries:
            raise ValueError(f"rule registry is full ({self._max_entries} entries)")
        new = Entry(value, stamp)
        if current is not None:
            self.digest ^= _entry_hash(key, current)
        self.digest ^= _entry_hash(key, new)
        if table is None:
            assert isinstance(value, Rule)  # _check_value refused anything else
            self._default_rule, self._default_stamp = value, stamp
        else:
            table[name] = new
        return True

    def merge(self, other: RuleRegistry) -> int:
        """Merge every entry of ``other``; returns how many of ours changed."""
        return sum(self.apply(key, entry.value, entry.stamp) for key, entry in other.entries())

    # --- reads ------------------------------------------------------------------------

    def entries(self) -> Iterator[tuple[str, Entry]]:
        """Every entry with its key, tombstones included (for gossip and anti-entropy)."""
        yield DEFAULT_KEY, self._default_entry()
        for name, entry in self._tiers.items():
            yield TIER_PREFIX + name, entry
        for client, entry in self._clients.items():
            yield CLIENT_PREFIX + client, entry
        for client, entry in self._resets.items():
            yield RESET_PREFIX + client, entry

    def entry(self, key: str) -> Entry | None:
        """One entry by key, or None."""
        table, name = self._table_for(key)
        return self._default_entry() if table is None else table.get(name)

    def client_value(self, client: str) -> Value:
        """The client's own override (a rule, ``"@tier"``) or None."""
        entry = self._clients.get(client)
        return None if entry is None else entry.value

    def tiers(self) -> dict[str, Rule]:
        """Live tiers by name."""
        return {n: e.value for n, e in self._tiers.items() if isinstance(e.value, Rule)}

    def overrides(self) -> dict[str, Value]:
        """Live client overrides."""
        return {c: e.value for c, e in self._clients.items() if e.value is not None}

    def latest_stamp(self) -> Stamp:
        """The newest stamp of any entry (feeds the node's hybrid clock)."""
        return max(entry.stamp for _, entry in self.entries())

    def entry_count(self) -> int:
        """Entries held, tombstones and resets included."""
        return 1 + len(self._tiers) + len(self._clients) + len(self._resets)

    def reset_wall_ms(self, client: str) -> int:
        """When ``client``'s counts were last reset (HLC wall ms), or -1."""
        entry = self._resets.get(client)
        return -1 if entry is None else entry.stamp.wall_ms

    def purge_tombstones(self, *, before_wall_ms: int) -> int:
        """Forget removals older than ``before_wall_ms``; returns how many were dropped.

        Safe once every node has seen the removal: call it with a horizon much
        longer than anti-entropy takes to converge (the node uses a day).
        """
        dropped = 0
        for table, prefix in ((self._tiers, TIER_PREFIX), (self._clients, CLIENT_PREFIX)):
            for name in [n for n, e in table.items() if e.value is None]:
                if table[name].stamp.wall_ms < before_wall_ms:
                    self.digest ^= _entry_hash(prefix + name, table.pop(name))
                    dropped += 1
        return dropped

    # --- helpers ----------------------------------------------------------------------

    def _default_entry(self) -> Entry:
        return Entry(self._default_rule, self._default_stamp)

    def _table_for(self, key: str) -> tuple[dict[str, Entry] | None, str]:
        if key == DEFAULT_KEY:
            return None, ""
        if key.startswith(TIER_PREFIX):
            name = key[len(TIER_PREFIX) :]
            check_tier_name(name)
            return self._tiers, name
        if key.startswith(CLIENT_PREFIX):
            client = key[len(CLIENT_PREFIX) :]
            check_client_id(client)
            return self._clients, client
        if key.startswith(RESET_PREFIX):
            client = key[len(RESET_PREFIX) :]
            check_client_id(client)
            return self._resets, client
        raise ValueError(
            f"rule key {key!r} is not 'default', 'tier:NAME', 'client:ID' or 'reset:ID'"
        )

    @staticmethod
    def _client_value(text: str) -> Value:
        if text.startswith("@"):
            check_tier_name(text[1:])
            return text
        return parse_rule(text)

    @staticmethod
    def _check_value(key: str, value: Value) -> None:
        if key == DEFAULT_KEY and not isinstance(value, Rule):
            raise ValueError("the default rule cannot be removed or mapped to a tier")
        if key.startswith(RESET_PREFIX) and value is not None:
            raise ValueError(f"reset entry {key!r} carries no value")
        if key.startswith(TIER_PREFIX) and isinstance(value, str):
            raise ValueError(f"tier {key!r} must hold a rule, not {value!r}")
        if isinstance(value, str):
            check_tier_name(value[1:])
        elif value is not None and not isinstance(value, Rule):
            raise ValueError(f"rule value {value!r} is not a rule, '@tier' or None")
