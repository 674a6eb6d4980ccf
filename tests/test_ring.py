"""Tests for meshlimit.core.ring: ownership, wrap-around, replicas, minimal disruption, balance."""

from __future__ import annotations

import ast
import inspect
from collections import Counter

import mmh3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshlimit.core import ring as ring_module
from meshlimit.core.ring import DEFAULT_VNODES, HASH_SPACE, HashRing, key_hash, vnode_token

KEYS = [f"client-{i}" for i in range(2_000)]

# Node ids may contain the "#" separator and any unicode; small vnodes keep examples fast.
node_ids = st.text(min_size=1, max_size=10)
node_sets = st.frozensets(node_ids, min_size=1, max_size=10)
small_vnodes = st.integers(min_value=1, max_value=24)
clients = st.text(max_size=20)


# -- hashing -----------------------------------------------------------------


def test_key_hash_is_pinned_unsigned_64_bit_mmh3():
    # Pinned so every node (and any future port) places keys identically.
    assert key_hash("acme") == 3961280000524817226
    # The first half of this hash has its top bit set: it must come out unsigned.
    assert key_hash("ключ") == 17753313917685924547
    assert key_hash("ключ") == mmh3.hash64("ключ".encode(), signed=False)[0]
    assert key_hash("") == 0


def test_vnode_token_hashes_node_hash_index():
    assert vnode_token("node-1", 7) == key_hash("node-1#7")


# -- construction and ownership ----------------------------------------------


def test_ownership_is_independent_of_node_order():
    a = HashRing(["n1", "n2", "n3", "n4"])
    b = HashRing(["n4", "n2", "n1", "n3", "n2"])  # another order, with a duplicate
    assert a == b and hash(a) == hash(b)
    assert a is not b
    assert [a.owner(k) for k in KEYS] == [b.owner(k) for k in KEYS]
    assert a.shares() == b.shares()


def test_owner_of_hash_agrees_with_owner():
    ring = HashRing(["a", "b", "c"])
    for k in KEYS[:200]:
        assert ring.owner(k) == ring.owner_of_hash(key_hash(k))


def test_wrap_around_and_token_boundaries():
    ring = HashRing(["a", "b", "c"], vnodes=4)
    tokens, owners = ring._tokens[:-1], ring._owners[:-1]
    first, last = tokens[0], tokens[-1]
    # Past the largest token the circle wraps to the smallest token's node.
    assert ring.owner_of_hash(last + 1) == owners[0]
    assert ring.owner_of_hash(HASH_SPACE - 1) == owners[0]
    # At or below the smallest token: the smallest token's node.
    assert ring.owner_of_hash(0) == owners[0]
    assert ring.owner_of_hash(first) == owners[0]
    # A token owns its own position; one past it belongs to the next token.
    for k, t in enumerate(tokens[:-1]):
        assert ring.owner_of_hash(t) == owners[k]
        assert ring.owner_of_hash(t + 1) == owners[k + 1]


def test_single_node_owns_everything():
    ring = HashRing(["solo"])
    assert {ring.owner(k) for k in KEYS} == {"solo"}
    assert ring.preference_list("x", 3) == ("solo",)
    assert ring.shares() == {"solo": 1.0}


def test_empty_ring():
    ring = HashRing()
    ring._check()
    assert len(ring) == 0 and ring.nodes == frozenset()
    with pytest.raises(LookupError, match="empty hash ring"):
        ring.owner("acme")
    with pytest.raises(LookupError, match="empty hash ring"):
        ring.owner_of_hash(12345)
    assert ring.preference_list("acme", 3) == ()
    assert ring.shares() == {}


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "128"])
def test_bad_vnodes_refused(bad):
    with pytest.raises(ValueError, match="vnodes"):
        HashRing(["a"], vnodes=bad)


@pytest.mark.parametrize("bad", ["", 7, None, b"a"])
def test_bad_node_ids_refused(bad):
    with pytest.raises(ValueError, match="node ids"):
        HashRing(["a", bad])
    with pytest.raises(ValueError, match="node ids"):
        HashRing(["a"]).with_node(bad)


def test_container_protocol():
    ring = HashRing(["b", "a", "c"], vnodes=8)
    assert len(ring) == 3
    assert "a" in ring and "z" not in ring
    assert ring.nodes == frozenset({"a", "b", "c"})
    assert list(ring) == ["a", "b", "c"]
    assert ring.vnodes == 8
    assert DEFAULT_VNODES == 128 and HashRing(["a"]).vnodes == 128
    assert repr(ring) == "HashRing(['a', 'b', 'c'], vnodes=8)"


# -- preference lists --------------------------------------------------------


def test_preference_list_distinct_and_length():
    ring = HashRing([f"n{i}" for i in range(5)])
    for k in KEYS[:300]:
        for n in range(8):
            pl = ring.preference_list(k, n)
            assert len(pl) == min(n, 5)
            assert len(set(pl)) == len(pl)
            if n:
                assert pl[0] == ring.owner(k)


def test_preference_list_follows_the_ring_clockwise():
    ring = HashRing(["a", "b", "c", "d"], vnodes=3)
    for k in KEYS[:100]:
        pl = ring.preference_list(k, 4)
        # Reference: walk the (token, node) pairs clockwise from the key's position.
        h = key_hash(k)
        pairs = list(ring._pairs)
        start = next((i for i, (t, _) in enumerate(pairs) if t >= h), 0)
        walk = [pairs[(start + j) % len(pairs)][1] for j in range(len(pairs))]
        assert pl == tuple(dict.fromkeys(walk))


# -- immutable updates --------------------------------------------------------


def test_with_node_returns_a_new_ring_and_leaves_the_old_one():
    old = HashRing(["a", "b", "c"])
    before = [old.owner(k) for k in KEYS]
    new = old.with_node("d")
    assert new is not old
    assert old.nodes == {"a", "b", "c"} and new.nodes == {"a", "b", "c", "d"}
    assert [old.owner(k) for k in KEYS] == before
    old._check()
    new._check()
    assert new == HashRing(["a", "b", "c", "d"])
    assert list(new._pairs) == list(HashRing(["d", "c", "b", "a"])._pairs)
    assert old.with_node("a") is old  # already a member: the same value


def test_without_node_returns_a_new_ring_and_leaves_the_old_one():
    old = HashRing(["a", "b", "c"])
    before = [old.owner(k) for k in KEYS]
    new = old.without_node("b")
    assert new is not old
    assert old.nodes == {"a", "b", "c"} and new.nodes == {"a", "c"}
    assert [old.owner(k) for k in KEYS] == before
    assert "b" not in {new.owner(k) for k in KEYS}
    old._check()
    new._check()
    assert list(new._pairs) == list(HashRing(["a", "c"])._pairs)
    assert old.without_node("zz") is old  # not a member: the same value
    assert new.without_node("a").without_node("c") == HashRing()


# -- shares --------------------------------------------------------------------


def test_shares_sum_to_one_and_match_the_arcs():
    ring = HashRing(["a", "b"], vnodes=1)
    (t0, n0), (t1, n1) = ring._pairs
    assert ring.shares() == {n1: (t1 - t0) / HASH_SPACE, n0: (HASH_SPACE - t1 + t0) / HASH_SPACE}
    big = HashRing([f"n{i}" for i in range(10)])
    assert sum(big.shares().values()) == pytest.approx(1.0, abs=1e-12)


def test_shares_predict_key_counts():
    ring = HashRing([f"n{i}" for i in range(4)], vnodes=16)
    keys = [f"client-{i}" for i in range(20_000)]
    counts = Counter(ring.owner(k) for k in keys)
    for node, share in ring.shares().items():
        assert counts[node] / len(keys) == pytest.approx(share, abs=0.02)


# -- balance, pinned -------------------------------------------------------------


# Measured with the default 128 vnodes, nodes "node-%d", 100,000 keys "client-%d":
#   3 nodes: max/min 1.180   10 nodes: max/min 1.445   100 nodes: max/min 1.730
# (medians over 30 other node-name sets: 1.16 / 1.30 / 1.57; see DEFAULT_VNODES).
# The figures are deterministic; the bounds add a small margin so a harmless
# change (say, a tie-break) passes while a broken hash or token layout fails.
@pytest.mark.parametrize(("n_nodes", "bound"), [(3, 1.22), (10, 1.50), (100, 1.80)])
def test_balance_is_pinned(n_nodes, bound):
    ring = HashRing([f"node-{i}" for i in range(n_nodes)])
    owner = ring.owner
    counts = Counter(owner(f"client-{i}") for i in range(100_000))
    assert len(counts) == n_nodes  # every node owns something
    assert max(counts.values()) / min(counts.values()) < bound


# -- properties ------------------------------------------------------------------


@given(nodes=st.frozensets(node_ids, max_size=12), vnodes=small_vnodes)
def test_check_passes_for_random_rings(nodes, vnodes):
    HashRing(nodes, vnodes=vnodes)._check()


@given(nodes=node_sets, vnodes=small_vnodes, client=clients, k=st.integers(0, 14))
def test_preference_list_property(nodes, vnodes, client, k):
    ring = HashRing(nodes, vnodes=vnodes)
    pl = ring.preference_list(client, k)
    assert len(pl) == min(k, len(nodes))
    assert len(set(pl)) == len(pl)
    assert set(pl) <= nodes
    if k:
        assert pl[0] == ring.owner(client)
    # A longer list extends a shorter one.
    assert ring.preference_list(client, k + 1)[: len(pl)] == pl


@settings(max_examples=60)
@given(nodes=node_sets, new=node_ids, vnodes=small_vnodes, keys=st.lists(clients, max_size=60))
def test_adding_a_node_moves_only_keys_to_it(nodes, new, vnodes, keys):
    old = HashRing(nodes - {new}, vnodes=vnodes)
    grown = old.with_node(new)
    grown._check()
    assert grown == HashRing(old.nodes | {new}, vnodes=vnodes)
    for k in [*keys, *KEYS[:100]]:
        after = grown.owner(k)
        if old.nodes:
            assert after in (old.owner(k), new)
        else:
            assert after == new


@settings(max_examples=60)
@given(nodes=node_sets, vnodes=small_vnodes, pick=st.integers(0), keys=st.lists(clients))
def test_removing_a_node_moves_only_its_keys(nodes, vnodes, pick, keys):
    old = HashRing(nodes, vnodes=vnodes)
    gone = sorted(nodes)[pick % len(nodes)]
    shrunk = old.without_node(gone)
    shrunk._check()
    for k in [*keys, *KEYS[:100]]:
        before = old.owner(k)
        if before != gone:
            assert shrunk.owner(k) == before
        elif shrunk.nodes:
            # The first replica takes over: the successor already holds the counts.
            assert shrunk.owner(k) == old.preference_list(k, 2)[1]
        else:
            with pytest.raises(LookupError):
                shrunk.owner(k)


# -- purity ------------------------------------------------------------------------


def test_ring_module_imports_nothing_impure():
    tree = ast.parse(inspect.getsource(ring_module))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"time", "random", "socket", "asyncio", "os", "threading"}
