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
order-independent hash of the durable entries (below), kept up to date
incrementally, so anti-entropy compares two registries with one integer.

How entries end (theory of operation). Three kinds, each with its own end:

- *Rules* (the default, tiers, client overrides): kept until replaced or removed.
  At most ``max_entries`` durable entries (rules and graves); a new key beyond
  that is refused with ``ValueError``, updates always apply.
- *Graves* (removals of tiers and clients, and resets): needed only until every
  member has them, so that an older write arriving late loses to them. They are
  purged ``grave_horizon_ms`` (a day) after their stamp: anti-entropy spreads an
  entry to every reachable member within seconds, so a day is some four orders
  of magnitude of margin. The trade-off: a member cut off for longer than that
  which still holds an entry older than a purged grave would bring it back when
  it returns (a restart forgets everything; a config file still holding a rule
  removed over the API re-asserts it, see ``docs/design.md``). A grave older than
  the horizon that arrives is not stored: it still removes an older rule, a
  reset that old is ignored.
- *Per-call entries*: clients under :data:`PER_CALL_PREFIX` (``cl.throttle:``)
  get their rule from each call (RESP ``CL.THROTTLE`` writes it), not from an
  operator. Such an entry lives :meth:`RuleRegistry.call_lifetime_ms` after its
  stamp: the larger of ``call_lifetime_floor_ms`` (ten minutes) and twice the
  time its rule's state takes to drain (:func:`drain_ns`). A caller re-writes it
  once less than half is left (:meth:`RuleRegistry.call_needs_write`), so an entry
  in use never expires, and one that expires has had no call for at least the
  drain time: nothing counted under it is left. They are soft state, outside
  the digest: anti-entropy neither repairs nor resurrects them (their writer
  re-sends one an owner lacks); at most ``max_calls`` are kept, beyond which the
  one closest to expiry is evicted. Expired ones are refused on arrival.

:meth:`RuleRegistry.collect` does the purging and expiring (the node calls it
every gossip round), in bounded steps; ``stats`` counts what went and why.
Both kinds of ending keep their keys by due time in :class:`~meshlimit.core.deadlines.
Deadlines` (8 bytes a key, up to a second late), with lazy deletion: an item whose
entry was re-written is skipped when it comes out, and the items are rebuilt when
stale ones outnumber live ones.

Resolution (``resolve``) is on every check's path: one dict lookup for a
client without an override (two once per-call entries exist), two for a
client on a tier.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Iterator

import mmh3

from .deadlines import Deadlines, second_of
from .hlc import NS_PER_MS, ZERO, Stamp
from .rules import Rule, as_rule, parse_rule

DEFAULT_KEY = "default"
TIER_PREFIX = "tier:"
CLIENT_PREFIX = "client:"
#: ``reset:ID`` entries record when an operator reset a client's counts (value None).
RESET_PREFIX = "reset:"
#: Client ids under this prefix hold per-call rules: soft state that expires (see above).
PER_CALL_PREFIX = "cl.throttle:"
MAX_CLIENT_BYTES = 256
_TIER_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}\Z")

#: How long graves are kept. Why a day: far above anti-entropy (a round every 2 s
#: reaches every member within a minute) and failure detection (a dead member is
#: reaped after 35 s), short enough that removals and resets do not pile up.
GRAVE_HORIZON_MS = 24 * 3600 * 1000
#: The shortest life of a per-call entry. Why ten minutes: an entry in use is re-written
#: every five (one rule write per active key per five minutes, cluster-wide), and a
#: flood's keys are gone ten minutes after it stops.
CALL_LIFETIME_FLOOR_MS = 10 * 60 * 1000
#: Most per-call entries kept (beyond, the one closest to expiry is evicted).
MAX_CALLS = 500_000
#: Most deadline items examined by one :meth:`RuleRegistry.collect` call, per kind.
COLLECT_BUDGET = 2048
#: Distinct rule texts and stamp node ids shared between entries (beyond: not shared).
_MAX_SHARED = 4096

Value = Rule | str | None  # a rule, "@tier" for a client, or None for a removal


class Entry:
    """One registry entry: its value and the stamp of the write that set it.

    The stamp is kept as its parts in slots: 64 bytes, where a tuple holding a stamp
    tuple takes 150, and the registry holds one per override and per CL.THROTTLE key.
    """

    __slots__ = ("value", "wall_ms", "counter", "node")

    def __init__(self, value: Value, stamp: Stamp) -> None:
        self.value = value
        self.wall_ms, self.counter, self.node = stamp

    @property
    def stamp(self) -> Stamp:
        """The stamp of the write that set this entry."""
        return Stamp(self.wall_ms, self.counter, self.node)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Entry):
            return NotImplemented
        return (self.value, self.wall_ms, self.counter, self.node) == (
            other.value,
            other.wall_ms,
            other.counter,
            other.node,
        )

    def __hash__(self) -> int:
        return hash((value_text(self.value), self.wall_ms, self.counter, self.node))

    def __repr__(self) -> str:
        return f"Entry({self.value!r}, {self.stamp!r})"


def check_client_id(client: object) -> str:
    """Refuse client ids that are not text (``TypeError``), empty or longer than 256 UTF-8
    bytes (``ValueError``); return the id."""
    if not isinstance(client, str):
        raise TypeError(f"client id must be a str, got {type(client).__name__} {client!r}")
    if not client:
        raise ValueError("client id must be a non-empty string, got ''")
    try:
        size = len(client.encode())
    except UnicodeEncodeError:
        raise ValueError("client id is not valid Unicode text (lone surrogate)") from None
    if size > MAX_CLIENT_BYTES:
        raise ValueError(f"client id longer than {MAX_CLIENT_BYTES} bytes")
    return client


def check_tier_name(name: str) -> None:
    """Tier names are 1 to 64 letters, digits, ``_``, ``.`` or ``-`` (``TypeError`` if
    not text)."""
    if not isinstance(name, str):
        raise TypeError(f"tier name must be a str, got {type(name).__name__} {name!r}")
    if not _TIER_NAME.match(name):
        raise ValueError(f"tier name {name!r} must be 1-64 of A-Z a-z 0-9 _ . -")


def value_text(value: Value) -> str | None:
    """The wire form of a value: rule notation, ``@tier`` or ``None``."""
    return str(value) if isinstance(value, Rule) else value


@functools.lru_cache(maxsize=1024)
def drain_ns(rule: Rule) -> int:
    """How long after a client's last admission its state under ``rule`` still counts.

    Window algorithms keep a window's count for the next one and carry a burst
    ``ceil(burst / limit)`` windows further (``series.py``'s horizon); a token
    bucket is full again ``(limit + burst)`` emission intervals after its last
    admission. The larger of the two, so it holds for every algorithm; for a rule of
    several limits, the longest of its limits'.
    """
    if rule.also:
        return max(drain_ns(limit) for limit in rule.limits)
    windows = (2 + -(-rule.burst // rule.limit)) * rule.window_ns
    interval = -(-rule.window_ns // rule.limit)
    return max(windows, interval * (rule.limit + rule.burst))


def _newer(value: Value, stamp: Stamp, current: Entry) -> bool:
    """Last writer wins; equal stamps (e.g. two configured defaults) break on the value text."""
    held = current.stamp
    if stamp != held:
        return stamp > held
    return (value_text(value) or "") > (value_text(current.value) or "")


def _entry_hash(key: str, entry: Entry) -> int:
    text = f"{key}\0{value_text(entry.value)}\0{entry.wall_ms}.{entry.counter}"
    return mmh3.hash64(f"{text}.{entry.node}", signed=False)[0]


class RuleRegistry:
    """Default rule, tiers and client overrides, merged last-writer-wins by stamp."""

    def __init__(
        self,
        default: Rule | str,
        *,
        max_entries: int = 1_000_000,
        max_calls: int = MAX_CALLS,
        grave_horizon_ms: int = GRAVE_HORIZON_MS,
        call_lifetime_floor_ms: int = CALL_LIFETIME_FLOOR_MS,
    ) -> None:
        # The default entry is kept as its parts: its value is always a rule (it can be
        # neither removed nor mapped to a tier), and the hot path returns it as one.
        self._default_rule = as_rule(default)
        self._default_stamp = ZERO
        self._tiers: dict[str, Entry] = {}
        self._clients: dict[str, Entry] = {}
        self._resets: dict[str, Entry] = {}
        self._calls: dict[str, Entry] = {}
        self._max_entries = max_entries
        #: Most per-call entries kept; the RESP front-end may lower it.
        self.max_calls = max_calls
        self.grave_horizon_ms = grave_horizon_ms
        self.call_lifetime_floor_ms = call_lifetime_floor_ms
        self._graves = Deadlines()  # grave keys by their stamp's wall time
        self._grave_count = 0
        self._call_ends = Deadlines()  # per-call clients by their expiry
        self._nodes: dict[str, str] = {}  # stamp node ids, shared between entries
        self._rules: dict[str, Rule] = {}  # rules parsed from text, shared likewise
        #: What left the registry, by reason: ``calls_expired``, ``calls_evicted``,
        #: ``calls_refused_expired``, ``graves_purged``, ``graves_refused_old``.
        self.stats: Counter[str] = Counter()
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
            if not self._calls:
                return self._default_rule
            entry = self._calls.get(client)
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

    def apply(self, key: str, value: Value, stamp: Stamp, *, now_ms: int | None = None) -> bool:
        """Merge one entry last-writer-wins; True if it changed what we hold.

        With ``now_ms`` (the node's wall clock), an entry already past its end is
        not stored: an expired per-call entry is refused, a grave older than the
        horizon only removes an older rule. Raises ``ValueError`` for a malformed
        key or value (a peer's garbage is refused whole, never half-applied).
        """
        table, name = self._table_for(key)
        if isinstance(value, str) and not value.startswith("@"):
            value = self._parse(value)
        self._check_value(key, value)
        current = self._default_entry() if table is None else table.get(name)
        if current is not None and not _newer(value, stamp, current):
            return False
        stamp = self._share_node(stamp)
        if table is self._calls:
            return self._apply_call(name, value, stamp, now_ms, is_new=current is None)
        grave = table is self._resets or (table is not None and value is None)
        if grave and now_ms is not None and stamp.wall_ms < now_ms - self.grave_horizon_ms:
            self.stats["graves_refused_old"] += 1
            if current is None or table is None or table is self._resets:
                return False
            self._drop(key, table, name, current)  # the late removal still wins
            return True
        if table is not None and current is None and self.entry_count() >= self._max_entries:
            raise ValueError(f"rule registry is full ({self._max_entries} entries)")
        new = Entry(value, stamp)
        if current is not None:
            self.digest ^= _entry_hash(key, current)
            if _is_grave(table, self._resets, current):
                self._grave_count -= 1
        self.digest ^= _entry_hash(key, new)
        if table is None:
            assert isinstance(value, Rule)  # _check_value refused anything else
            self._default_rule, self._default_stamp = value, stamp
            return True
        table[name] = new
        if grave:
            self._grave_count += 1
            self._graves.add(stamp.wall_ms, key)
            if len(self._graves) > 2 * self._grave_count + 1024:
                self._graves.rebuild(
                    (e.wall_ms, k) for k, e in self.entries() if _is_grave_key(k, e)
                )
        return True

    def merge(self, other: RuleRegistry) -> int:
        """Merge every entry of ``other`` (per-call ones too); returns how many of ours changed."""
        merged = [*other.entries(), *other.call_entries()]
        return sum(self.apply(key, entry.value, entry.stamp) for key, entry in merged)

    # --- ending entries ---------------------------------------------------------------

    def collect(self, *, now_ms: int, budget: int = COLLECT_BUDGET) -> int:
        """Expire per-call entries past their lifetime and purge graves past the horizon,
        examining at most ``budget`` items of each kind; returns how many entries went."""
        gone = self._expire_calls(now_ms, budget)
        return gone + self.purge_graves(
            before_wall_ms=now_ms - self.grave_horizon_ms, budget=budget
        )

    def purge_graves(self, *, before_wall_ms: int, budget: int = COLLECT_BUDGET) -> int:
        """Forget removals and resets stamped before ``before_wall_ms`` (up to a second
        late: :mod:`~meshlimit.core.deadlines`); how many went."""
        graves, purged = self._graves, 0
        for _ in range(budget):
            first = graves.first_ms()
            if first is None or first >= before_wall_ms:
                break
            second, key = graves.pop()
            table, name = self._table_for(key)
            entry = None if table is None else table.get(name)
            if entry is None or second_of(entry.wall_ms) != second:
                continue  # re-written since: a stale item
            if not _is_grave(table, self._resets, entry):
                continue
            assert table is not None
            self._drop(key, table, name, entry)
            purged += 1
        self.stats["graves_purged"] += purged
        return purged

    def call_lifetime_ms(self, value: Value) -> int:
        """How long a per-call entry holding ``value`` lives after its stamp."""
        if not isinstance(value, Rule):
            return self.call_lifetime_floor_ms
        return max(self.call_lifetime_floor_ms, 2 * -(-drain_ns(value) // NS_PER_MS))

    def call_needs_write(self, client: str, rule: Rule, *, now_ms: int) -> bool:
        """Whether a call for per-call ``client`` under ``rule`` must write the rule: it is
        missing, another, or past half its lifetime (a renewal, so that it never expires
        while in use)."""
        entry = self._calls.get(client)
        if entry is None or entry.value != rule:
            return True
        return now_ms >= entry.wall_ms + self.call_lifetime_ms(rule) // 2

    # --- reads ------------------------------------------------------------------------

    def entries(self) -> Iterator[tuple[str, Entry]]:
        """Every durable entry with its key, graves included (for gossip and anti-entropy)."""
        yield DEFAULT_KEY, self._default_entry()
        for name, entry in self._tiers.items():
            yield TIER_PREFIX + name, entry
        for client, entry in self._clients.items():
            yield CLIENT_PREFIX + client, entry
        for client, entry in self._resets.items():
            yield RESET_PREFIX + client, entry

    def call_entries(self) -> Iterator[tuple[str, Entry]]:
        """Every per-call entry with its key (``client:cl.throttle:KEY``)."""
        for client, entry in self._calls.items():
            yield CLIENT_PREFIX + client, entry

    def entry(self, key: str) -> Entry | None:
        """One entry by key, or None."""
        table, name = self._table_for(key)
        return self._default_entry() if table is None else table.get(name)

    def client_value(self, client: str) -> Value:
        """The client's own override (a rule, ``"@tier"``) or None."""
        entry = self._clients.get(client) or self._calls.get(client)
        return None if entry is None else entry.value

    def tiers(self) -> dict[str, Rule]:
        """Live tiers by name."""
        return {n: e.value for n, e in self._tiers.items() if isinstance(e.value, Rule)}

    def overrides(self) -> dict[str, Value]:
        """Live client overrides (per-call ones not included)."""
        return {c: e.value for c, e in self._clients.items() if e.value is not None}

    def latest_stamp(self) -> Stamp:
        """The newest stamp of any entry (feeds the node's hybrid clock)."""
        calls = (entry.stamp for entry in self._calls.values())
        return max(max(entry.stamp for _, entry in self.entries()), max(calls, default=ZERO))

    def entry_count(self) -> int:
        """Durable entries held, graves included (per-call ones are :meth:`call_count`)."""
        return 1 + len(self._tiers) + len(self._clients) + len(self._resets)

    def call_count(self) -> int:
        """Per-call entries held."""
        return len(self._calls)

    def grave_count(self) -> int:
        """Removals and resets held (awaiting their purge)."""
        return self._grave_count

    def reset_wall_ms(self, client: str) -> int:
        """When ``client``'s counts were last reset (HLC wall ms), or -1."""
        entry = self._resets.get(client)
        return -1 if entry is None else entry.wall_ms

    def _check(self) -> None:
        """Assert the invariants (tests call this): digest, grave count, deadlines cover."""
        digest = 0
        for key, entry in self.entries():
            digest ^= _entry_hash(key, entry)
        assert digest == self.digest, "digest out of step with the entries"
        graves = {key for key, entry in self.entries() if _is_grave_key(key, entry)}
        assert len(graves) == self._grave_count, "grave count out of step"
        assert graves <= self._graves.keys(), "a grave has no deadline"
        assert set(self._calls) <= self._call_ends.keys(), "a per-call entry has no deadline"
        assert len(self._calls) <= max(self.max_calls, 1)

    # --- helpers ----------------------------------------------------------------------

    def _apply_call(
        self, client: str, value: Value, stamp: Stamp, now_ms: int | None, *, is_new: bool
    ) -> bool:
        ends_ms = stamp.wall_ms + self.call_lifetime_ms(value)
        if now_ms is not None and ends_ms <= now_ms:
            self.stats["calls_refused_expired"] += 1
            return False
        calls, ends = self._calls, self._call_ends
        calls[client] = Entry(value, stamp)
        ends.add(ends_ms, client)
        if len(ends) > 2 * len(calls) + 1024:
            ends.rebuild((self._call_ends_at(c), c) for c in calls)
        while is_new and len(calls) > self.max_calls and self._evict_call(keep=client):
            pass
        return True

    def _expire_calls(self, now_ms: int, budget: int) -> int:
        ends, expired = self._call_ends, 0
        for _ in range(budget):
            first = ends.first_ms()
            if first is None or first > now_ms:
                break
            second, client = ends.pop()
            entry = self._calls.get(client)
            if entry is not None and second_of(self._ends_ms(entry)) == second:
                del self._calls[client]
                expired += 1
        self.stats["calls_expired"] += expired
        return expired

    def _evict_call(self, keep: str) -> bool:
        """Drop a per-call entry of the earliest expiry second, other than ``keep`` (just
        written): the registry is at its bound. False if there was none to drop."""
        ends, kept, evicted = self._call_ends, False, False
        while ends:
            second, client = ends.pop()
            entry = self._calls.get(client)
            if entry is None or second_of(self._ends_ms(entry)) != second:
                continue
            if client == keep:
                kept = True
                continue
            del self._calls[client]
            self.stats["calls_evicted"] += 1
            evicted = True
            break
        if kept:
            ends.add(self._call_ends_at(keep), keep)
        return evicted

    def _call_ends_at(self, client: str) -> int:
        return self._ends_ms(self._calls[client])

    def _ends_ms(self, entry: Entry) -> int:
        """When a per-call entry expires."""
        return entry.wall_ms + self.call_lifetime_ms(entry.value)

    def _drop(self, key: str, table: dict[str, Entry], name: str, entry: Entry) -> None:
        """Forget a durable entry (a purged grave, or a rule a too-old grave removes)."""
        del table[name]
        self.digest ^= _entry_hash(key, entry)
        if _is_grave(table, self._resets, entry):
            self._grave_count -= 1

    def _share_node(self, stamp: Stamp) -> Stamp:
        """The stamp with its node id shared with earlier entries' (a string saved each)."""
        node = self._nodes.get(stamp.node)
        if node is stamp.node:
            return stamp
        if node is None:
            if len(self._nodes) < _MAX_SHARED:
                self._nodes[stamp.node] = stamp.node
            return stamp
        return Stamp(stamp.wall_ms, stamp.counter, node)

    def _parse(self, text: str) -> Rule:
        """Rule notation parsed once per distinct text (entries share the rule)."""
        rule = self._rules.get(text)
        if rule is None:
            rule = parse_rule(text)
            if len(self._rules) < _MAX_SHARED:
                self._rules[text] = rule
        return rule

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
            return (self._calls if client.startswith(PER_CALL_PREFIX) else self._clients), client
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


def _is_grave(table: dict[str, Entry] | None, resets: dict[str, Entry], entry: Entry) -> bool:
    """Whether ``entry`` of ``table`` is a grave: any reset, a removed tier or client."""
    return table is resets or (table is not None and entry.value is None)


def _is_grave_key(key: str, entry: Entry) -> bool:
    """Whether the entry under ``key`` is a grave."""
    return key.startswith(RESET_PREFIX) or (key != DEFAULT_KEY and entry.value is None)
