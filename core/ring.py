"""The consistent-hash ring: which node owns which client.

Theory of operation
-------------------
Every node id ``n`` is placed on a circle of 2**64 positions at ``vnodes``
points ("virtual nodes"): the token of virtual node ``i`` is the first 64-bit
half of MurmurHash3_x64_128 of ``f"{n}#{i}"`` (UTF-8, seed 0, unsigned).
A client id hashes the same way (:func:`key_hash`) and is owned by the node
of the first token clockwise at or after its hash, wrapping past 2**64 - 1
to the smallest token. Many virtual nodes per node even out the arcs, and
adding or removing one node only moves the keys on that node's own arcs:
every other key keeps its owner (the minimal-disruption property).

Two tokens of different virtual nodes may collide (odds about (N*V)**2/2**65);
``(token, node)`` pairs then sort by node id, so every node still computes
the same owner. The suffix ``#<int>`` parses back unambiguously (split at the
last ``#``), so distinct ``(node, i)`` pairs never hash the same string.

A :class:`HashRing` is an immutable value, as gubernator's is: a membership
change builds a new ring (:meth:`HashRing.with_node`,
:meth:`HashRing.without_node`) and its holder swaps the reference in one
assignment, so readers never see a half-edited ring. The module is pure: no
clock, no randomness, no I/O.

Complexity, with N nodes and V virtual nodes each
-------------------------------------------------
- build (``HashRing(...)``): O(N*V log(N*V)) -- N*V hashes, one sort.
- ``with_node`` / ``without_node``: O(N*V): V new hashes, then a sort of
  already-sorted runs (linear in practice) or a filter; no rehashing.
- ``owner``, ``owner_of_hash``: O(log(N*V)), one bisect on a plain list (``owner``:
  a dict lookup for the ``OWNER_CACHE`` clients it last answered).
- ``preference_list(client, n)``: O(log(N*V)) plus the walk to ``n``
  distinct nodes, about ``n`` tokens when ``n`` is small beside N, and at
  most N*V.
- ``shares``: O(N*V). ``nodes``, ``len``, ``in``: O(1).
- memory: O(N*V); 128 virtual nodes on 100 nodes is 12,800 tokens.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator
from functools import lru_cache

import mmh3
from sortedcontainers import SortedList

__all__ = ["HASH_SPACE", "HashRing", "key_hash", "vnode_token"]

HASH_SPACE = 1 << 64
"""Size of the hash circle: tokens and key hashes lie in ``[0, 2**64)``."""

# Default virtual nodes per node. Measured (scripted, exact arc lengths from
# shares(), 30 node-name sets per cell, median max/mean share):
#   vnodes         3 nodes  10 nodes  100 nodes  100-node build
#   64               1.10     1.19      1.33        ~6 ms
#   128              1.07     1.12      1.23       ~12 ms
#   256              1.05     1.09      1.15       ~25 ms
# 128 keeps the busiest of 100 nodes within about a quarter of the mean (max/min
# about 1.6) for 12,800 tokens; the spread shrinks only as 1/sqrt(vnodes), so
# 256 doubles memory and rebuild time for 8 points. With nodes "node-%d" and
# 100,000 keys "client-%d", max/min keys per node is 1.18 / 1.45 / 1.73 for
# 3 / 10 / 100 nodes (pinned in tests/test_ring.py).
DEFAULT_VNODES = 128
#: Ring layouts kept for reuse (``_layout``). Why 8: the sets a node moves between while
#: members flap or restart; at 100 members of 128 tokens a layout is about 1.3 MB.
LAYOUTS = 8
#: Most clients whose owner a ring remembers, then it forgets them all at once. Why
#: 65,536: every client of a busy node's hot set, at about 6 MB for the ring's lifetime.
OWNER_CACHE = 65_536


def key_hash(client: str) -> int:
    """Return the ring position of ``client``: unsigned 64-bit mmh3 (x64_128, first half, seed 0).

    mmh3 hashes a ``str`` as its UTF-8 bytes, so ``key_hash(s)`` equals the
    hash of ``s.encode()``.
    """
    # `signed` must be a keyword: mmh3 5.3.1 ignores it when passed by position
    # and returns signed halves (tests pin a key whose unsigned hash is >= 2**63).
    # Hash the encoded bytes: mmh3 crashes the process on a str with a lone
    # surrogate, while ``encode`` raises UnicodeEncodeError (a ValueError).
    return mmh3.hash64(client.encode(), signed=False)[0]


def vnode_token(node: str, i: int) -> int:
    """Return the token of virtual node ``i`` of ``node``: ``key_hash(f"{node}#{i}")``."""
    return mmh3.hash64(f"{node}#{i}", signed=False)[0]


@lru_cache(maxsize=4096)
def _tokens_of(node: str, vnodes: int) -> tuple[int, ...]:
    """``vnode_token(node, i)`` for every ``i < vnodes``: a ring is rebuilt on every
    membership change (and a simulator's checkers build one per member set they meet),
    always from the same few nodes, whose tokens are hashed once here."""
    return tuple(vnode_token(node, i) for i in range(vnodes))


def _pairs_of(nodes: frozenset[str], vnodes: int) -> list[tuple[int, str]]:
    return [(token, n) for n in nodes for token in _tokens_of(n, vnodes)]


def _lookup_lists(pairs: SortedList) -> tuple[list[int], list[str]]:
    """The tokens and their owners in ring order, each ending in the sentinel."""
    tokens = [t for t, _ in pairs]
    owners = [n for _, n in pairs]
    if pairs:
        tokens.append(HASH_SPACE)
        owners.append(owners[0])
    return tokens, owners


@lru_cache(maxsize=LAYOUTS)
def _layout(nodes: frozenset[str], vnodes: int) -> tuple[SortedList, list[int], list[str]]:
    """A ring's sorted pairs and lookup lists, shared by the rings of the same member set:
    a node rebuilds its ring on every membership change, often to a set it had before (a
    member flaps, or comes back), and in one process (the simulator) every node and the
    checkers build the same rings. Nothing mutates them once built (``with_node`` copies)."""
    pairs = SortedList(_pairs_of(nodes, vnodes))
    return (pairs, *_lookup_lists(pairs))


class HashRing:
    """An immutable consistent-hash ring of node ids with ``vnodes`` tokens each.

    Equal rings (same nodes, same ``vnodes``) compare equal and hash alike,
    whatever order their nodes were given in.
    """

    __slots__ = ("_nodes", "_vnodes", "_pairs", "_tokens", "_owners", "_owner_of")

    _nodes: frozenset[str]
    _vnodes: int
    # Canonical form: every (token, node), sorted. The SortedList builds and
    # merges in O(n log n); lookups go through the plain lists below instead,
    # since bisect.bisect_left on a list is C code and 3-4x faster than
    # SortedList.bisect_left's Python-level two-level index (median of 7 timeit
    # runs over 1,000 hashes, 1,280 tokens: ~120-250 ns against ~480-790 ns).
    _pairs: SortedList
    # _tokens[k] is the k-th smallest token and _owners[k] its node. Both end
    # in a sentinel: token 2**64 (above every hash) owned by the node of the
    # smallest token, so a lookup needs no wrap-around branch.
    _tokens: list[int]
    _owners: list[str]
    # owner()'s answers so far, for at most OWNER_CACHE clients: a node asks for the owner
    # of every check it takes (and the owner again), and the ring never changes.
    _owner_of: dict[str, str]

    def __init__(self, nodes: Iterable[str] = (), vnodes: int = DEFAULT_VNODES) -> None:
        """Build a ring of ``nodes`` (duplicates ignored), each at ``vnodes`` tokens."""
        node_set = frozenset(nodes)
        _validate(node_set, vnodes)
        if all(type(n) is str for n in node_set):  # plain ids: the layout may be shared
            self._set(node_set, vnodes, *_layout(node_set, vnodes))
        else:
            self._init(node_set, vnodes, SortedList(_pairs_of(node_set, vnodes)))

    @classmethod
    def _from_pairs(cls, nodes: frozenset[str], vnodes: int, pairs: SortedList) -> HashRing:
        """Make a ring from already-computed tokens, skipping the hashing."""
        ring = cls.__new__(cls)
        ring._init(nodes, vnodes, pairs)
        return ring

    def _init(self, nodes: frozenset[str], vnodes: int, pairs: SortedList) -> None:
        self._set(nodes, vnodes, pairs, *_lookup_lists(pairs))

    def _set(
        self,
        nodes: frozenset[str],
        vnodes: int,
        pairs: SortedList,
        tokens: list[int],
        owners: list[str],
    ) -> None:
        self._nodes = nodes
        self._vnodes = vnodes
        self._pairs = pairs
        self._tokens = tokens
        self._owners = owners
        self._owner_of = {}

    # -- membership ----------------------------------------------------------

    @property
    def nodes(self) -> frozenset[str]:
        """The node ids on the ring."""
        return self._nodes

    @property
    def vnodes(self) -> int:
        """Virtual nodes (tokens) per node."""
        return self._vnodes

    def __len__(self) -> int:
        """Number of nodes (not tokens)."""
        return len(self._nodes)

    def __contains__(self, node: object) -> bool:
        return node in self._nodes

    def __iter__(self) -> Iterator[str]:
        """The node ids, sorted."""
        return iter(sorted(self._nodes))

    def with_node(self, node: str) -> HashRing:
        """Return a new ring with ``node`` added; ``self`` if it is already there."""
        if node in self._nodes:
            return self
        nodes = self._nodes | {node}
        _validate(nodes, self._vnodes)
        pairs = self._pairs.copy()
        pairs.update((vnode_token(node, i), node) for i in range(self._vnodes))
        return HashRing._from_pairs(nodes, self._vnodes, pairs)

    def without_node(self, node: str) -> HashRing:
        """Return a new ring with ``node`` removed; ``self`` if it is not there."""
        if node not in self._nodes:
            return self
        pairs = SortedList(p for p in self._pairs if p[1] != node)
        return HashRing._from_pairs(self._nodes - {node}, self._vnodes, pairs)

    # -- lookups -------------------------------------------------------------

    def owner(self, client: str) -> str:
        """Return the node owning ``client``. Raises ``LookupError`` on an empty ring."""
        if type(client) is str:
            owner = self._owner_of.get(client)
            if owner is not None:
                return owner
        # key_hash() inlined: the call costs ~40 ns of a ~250 ns lookup.
        try:
            owner = self._owners[
                bisect_left(self._tokens, mmh3.hash64(client.encode(), signed=False)[0])
            ]
        except IndexError:
            raise LookupError(f"empty hash ring: no node can own client {client!r}") from None
        if type(client) is str:
            if len(self._owner_of) >= OWNER_CACHE:
                self._owner_of.clear()  # forget all at once: the active clients come back
            self._owner_of[client] = owner
        return owner

    def owner_of_hash(self, h: int) -> str:
        """Return the node owning ring position ``h`` (``0 <= h < 2**64``)."""
        assert 0 <= h < HASH_SPACE, f"hash {h} outside [0, 2**64)"
        try:
            return self._owners[bisect_left(self._tokens, h)]
        except IndexError:
            raise LookupError(f"empty hash ring: no node can own hash {h}") from None

    def preference_list(self, client: str, n: int) -> tuple[str, ...]:
        """Return the owner of ``client`` then the next distinct nodes clockwise, ``n`` at most.

        The result has ``min(n, len(self))`` entries; the entries after the
        owner are where its replicas live, and the first of them is the next
        owner should the owner leave.
        """
        assert n >= 0, f"preference list length {n} < 0"
        want = min(n, len(self._nodes))
        if want == 0:
            return ()
        owners = self._owners
        count = len(owners) - 1  # without the sentinel
        k = bisect_left(self._tokens, key_hash(client)) % count
        found: list[str] = []
        # Terminates: every node has a token, and k visits them all within count steps.
        while len(found) < want:
            node = owners[k]
            if node not in found:  # a list: `want` is a small replica count
                found.append(node)
            k = k + 1 if k + 1 < count else 0
        return tuple(found)

    def shares(self) -> dict[str, float]:
        """Return the fraction of the 2**64 hash space each node owns (they sum to 1)."""
        if not self._nodes:
            return {}
        arcs = dict.fromkeys(self._nodes, 0)
        tokens, owners = self._tokens, self._owners
        # The smallest token owns (largest token, 2**64) and [0, smallest]:
        # tokens[0] + 2**64 - tokens[-2], with tokens[-1] the sentinel.
        prev = tokens[-2] - HASH_SPACE
        for k in range(len(tokens) - 1):
            arcs[owners[k]] += tokens[k] - prev
            prev = tokens[k]
        return {node: arc / HASH_SPACE for node, arc in sorted(arcs.items())}

    # -- value semantics -----------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HashRing):
            return NotImplemented
        return self._vnodes == other._vnodes and self._nodes == other._nodes

    def __hash__(self) -> int:
        return hash((self._vnodes, self._nodes))

    def __repr__(self) -> str:
        return f"HashRing({sorted(self._nodes)!r}, vnodes={self._vnodes})"

    def _check(self) -> None:
        """Assert every invariant of the ring (for tests; O(N*V))."""
        pairs, tokens, owners = self._pairs, self._tokens, self._owners
        pairs._check()
        assert isinstance(self._nodes, frozenset)
        assert self._vnodes >= 1
        assert len(pairs) == len(self._nodes) * self._vnodes
        expected = sorted((vnode_token(n, i), n) for n in self._nodes for i in range(self._vnodes))
        assert list(pairs) == expected, "tokens are not those of the nodes"
        if not pairs:
            assert tokens == [] and owners == []
            return
        assert len(tokens) == len(owners) == len(pairs) + 1
        assert tokens[:-1] == [t for t, _ in pairs]
        assert owners[:-1] == [n for _, n in pairs]
        assert all(0 <= t < HASH_SPACE for t in tokens[:-1])
        assert all(a <= b for a, b in zip(tokens, tokens[1:], strict=False)), "tokens unsorted"
        assert tokens[-1] == HASH_SPACE and owners[-1] == owners[0], "bad sentinel"
        assert len(self._owner_of) <= OWNER_CACHE
        for client, owner in self._owner_of.items():
            assert owners[bisect_left(tokens, key_hash(client))] == owner, "stale owner cache"
        counts = dict.fromkeys(self._nodes, 0)
        for n in owners[:-1]:
            counts[n] += 1
        assert all(c == self._vnodes for c in counts.values()), "a node lacks vnodes tokens"


def _validate(nodes: frozenset[str], vnodes: int) -> None:
    """Refuse non-string or empty node ids and a non-positive ``vnodes``."""
    if isinstance(vnodes, bool) or not isinstance(vnodes, int) or vnodes < 1:
        raise ValueError(f"vnodes must be a positive int, not {vnodes!r}")
    for n in nodes:
        if not isinstance(n, str) or not n:
            raise ValueError(f"node ids must be non-empty strings, not {n!r}")
