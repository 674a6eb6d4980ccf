"""Tests for meshlimit.core.table: the linearly hashed client table."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
)

from meshlimit.core.table import ClientTable

RECORD = struct.Struct("<qq")  # key, payload
SIZE = RECORD.size


def record(key: int, payload: int = 0) -> bytes:
    return RECORD.pack(key, payload)


def payload_of(table: ClientTable, key: int) -> int | None:
    bucket, pos = table.find(key)
    if pos < 0:
        return None
    assert bucket is not None and pos % SIZE == 0
    stored_key, payload = RECORD.unpack_from(bucket, pos)
    assert stored_key == key
    return payload


def is_odd(bucket: bytearray, pos: int) -> bool:
    """A dead predicate for tests: records with an odd payload are dead."""
    return RECORD.unpack_from(bucket, pos)[1] % 2 == 1


def by_payload(bucket: bytearray, pos: int) -> int:
    """An eviction score for tests: the payload itself."""
    return RECORD.unpack_from(bucket, pos)[1]


# Keys that share their low bits (they land in one bucket until deep splits), negative
# keys, the extremes of the signed range, and plain random ones.
colliding = st.integers(0, 40).map(lambda i: (i << 20) | 0x5)
extremes = st.sampled_from([0, 1, -1, -(2**63), 2**63 - 1, 2**62, -(2**62)])
random_keys = st.integers(-(2**63), 2**63 - 1)
keys = st.one_of(colliding, extremes, random_keys, st.integers(-64, 64))


# -- basics ------------------------------------------------------------------------------


def test_insert_find_delete():
    table = ClientTable(SIZE)
    assert table.find(42) == (None, -1)
    table.insert(42, record(42, 7))
    table.insert(-42, record(-42, 8))
    assert payload_of(table, 42) == 7
    assert payload_of(table, -42) == 8
    assert len(table) == 2
    assert table.delete(42)
    assert not table.delete(42)
    assert payload_of(table, 42) is None
    assert sorted(table.keys()) == [-42]
    table._check()


def test_the_record_size_is_enforced():
    table = ClientTable(SIZE)
    with pytest.raises(AssertionError):
        table.insert(1, b"short")
    with pytest.raises(AssertionError):
        ClientTable(4)
    with pytest.raises(AssertionError):
        ClientTable(SIZE, initial_buckets=3)


def test_growth_by_splits_keeps_every_record_findable():
    table = ClientTable(SIZE, initial_buckets=1, load=2)
    rnd = random.Random(7)
    inserted = {}
    for i in range(5_000):
        key = rnd.getrandbits(64) - 2**63 if i % 3 else (i << 16) | 3  # some share low bits
        if key in inserted:
            continue
        table.insert(key, record(key, i))
        inserted[key] = i
        if i % 500 == 0:
            table._check()
    table._check()
    assert len(table) == len(inserted)
    assert table.bucket_count > 1_000
    assert len(table) <= table.load * table.bucket_count
    assert all(payload_of(table, key) == value for key, value in inserted.items())
    assert sorted(table.keys()) == sorted(inserted)


def test_a_needle_straddling_two_records_is_not_mistaken_for_a_key():
    # One bucket (no splits): record A's payload tail plus record B's key head spell
    # the bytes of a third key, which bytearray.find meets first, at a misaligned offset.
    table = ClientTable(SIZE, initial_buckets=1, load=1_000)
    key_a, key_b = 0x1111_1111_1111_1111, 0x2222_2222_2222_2222
    payload_a = 0x3333_3333_4444_4444
    table.insert(key_a, record(key_a, payload_a))
    table.insert(key_b, record(key_b, 5))
    ghost_bytes = record(key_a, payload_a)[12:16] + record(key_b)[0:4]
    ghost = int.from_bytes(ghost_bytes, "little", signed=True)
    bucket, _ = table.find(key_a)
    assert bucket is not None and bucket.find(ghost_bytes) == 12  # really straddling
    assert table.find(ghost) == (bucket, -1)  # absent: the straddle is not a match
    assert not table.delete(ghost)
    table.insert(ghost, record(ghost, 9))
    assert payload_of(table, ghost) == 9  # present: found at its own, aligned, offset
    assert payload_of(table, key_a) == payload_a and payload_of(table, key_b) == 5
    assert table.delete(ghost)
    assert payload_of(table, key_a) == payload_a and payload_of(table, key_b) == 5
    table._check()


def test_a_key_appearing_in_a_payload_after_its_own_record_is_found_at_its_record():
    table = ClientTable(SIZE, initial_buckets=1, load=1_000)
    table.insert(7, record(7, 99))
    table.insert(8, record(8, 7))  # the payload bytes equal key 7's bytes
    assert payload_of(table, 7) == 99
    table.delete(7)
    assert payload_of(table, 7) is None  # only the payload copy is left: not a match
    assert payload_of(table, 8) == 7


# -- maintenance -------------------------------------------------------------------------


def filled(n: int, *, seed: int = 3, **kwargs) -> tuple[ClientTable, dict[int, int]]:
    table = ClientTable(SIZE, **kwargs)
    rnd = random.Random(seed)
    model: dict[int, int] = {}
    while len(model) < n:
        key = rnd.getrandbits(64) - 2**63
        if key not in model:
            model[key] = rnd.randrange(1_000)
            table.insert(key, record(key, model[key]))
    return table, model


def test_a_lap_of_sweeps_drops_exactly_the_dead_records():
    table, model = filled(2_000, initial_buckets=4, load=4)
    dead = {key for key, payload in model.items() if payload % 2}
    dropped = sum(table.sweep_bucket(is_odd) for _ in range(table.bucket_count))
    assert dropped == len(dead) == table.expired
    assert len(table) == len(model) - len(dead)
    assert sorted(table.keys()) == sorted(set(model) - dead)
    assert all(payload_of(table, key) == model[key] for key in set(model) - dead)
    table._check()
    # The next lap finds nothing more to drop.
    assert sum(table.sweep_bucket(is_odd) for _ in range(table.bucket_count)) == 0


def test_one_sweep_drops_the_dead_records_of_one_bucket_only():
    table, model = filled(500, initial_buckets=8, load=100)
    before = set(table.keys())
    dropped = table.sweep_bucket(is_odd)
    gone = before - set(table.keys())
    assert len(gone) == dropped
    assert all(model[key] % 2 for key in gone)
    assert {key & 7 for key in gone} <= {0}  # all from bucket 0
    assert all(model[key] % 2 == 0 for key in before if key & 7 == 0 and key not in gone)
    table._check()


def test_evict_drops_dead_records_first():
    table, model = filled(300, initial_buckets=4, load=100, max_clients=300)
    assert table.over_capacity()
    table.evict(is_odd, by_payload)
    assert table.evicted_dead > 0 and table.evicted_live == 0
    remaining = set(table.keys())
    gone = set(model) - remaining
    assert len(gone) == table.evicted_dead
    assert all(model[key] % 2 for key in gone)
    assert not table.over_capacity()
    table._check()


def test_evict_without_dead_records_drops_the_highest_score():
    table, model = filled(300, initial_buckets=4, load=100, max_clients=300)
    never_dead = lambda bucket, pos: False  # noqa: E731
    # With every bucket sampled, the victim is the global maximum.
    table.evict(never_dead, by_payload, samples=table.bucket_count)
    assert table.evicted_live == 1 and table.evicted_dead == 0
    gone = set(model) - set(table.keys())
    assert len(gone) == 1
    assert model[gone.pop()] == max(model.values())
    # With the default sampling, the victim is the maximum of the buckets it sampled.
    for _ in range(50):
        keys_before = set(table.keys())
        table.evict(never_dead, by_payload)
        victim = (keys_before - set(table.keys())).pop()
        assert model[victim] >= min(model[k] for k in keys_before)
    assert table.evicted_live == 51
    table._check()


def test_evict_always_makes_room_even_when_the_sampled_buckets_are_empty():
    # One record in 64 buckets: a sample of four buckets is almost always empty, and
    # the cap must still hold (an insert past it used to evict nothing).
    table = ClientTable(SIZE, max_clients=1)
    table.insert(5, record(5, 0))
    table.evict(lambda b, p: False, by_payload)
    assert len(table) == 0 and table.evicted_live == 1
    table._check()


def test_evict_samples_past_a_lone_record_to_find_a_better_victim():
    # Bucket 0 holds one valuable record, bucket 33 the cheap ones; the buckets between
    # them in the sampling order are empty.
    table = ClientTable(SIZE, max_clients=3)
    table.insert(0, record(0, 1))  # valuable: low score
    table.insert(33, record(33, 500))
    table.insert(33 + 64, record(33 + 64, 400))
    table.evict(lambda b, p: False, by_payload, samples=2)
    assert sorted(table.keys()) == [0, 33 + 64]


def test_evict_visits_other_buckets_when_the_count_is_a_multiple_of_the_stride():
    # With 7,919 buckets (the prime stride), a stride of 7,919 would revisit one bucket.
    table = ClientTable(SIZE, initial_buckets=1, load=1)
    rnd = random.Random(11)
    while table.bucket_count < 7_919:
        key = rnd.getrandbits(64) - 2**63
        table.insert(key, record(key, 0))
    assert table.bucket_count == 7_919
    table.max_clients = len(table)
    table.load = 10**9  # no more splits
    for _ in range(300):
        key = rnd.getrandbits(64) - 2**63
        if table.over_capacity():
            table.evict(lambda b, p: False, by_payload)
        table.insert(key, record(key, 0))
    assert len(table) == table.max_clients
    assert table.evicted_live == 300
    table._check()


# -- stateful model test -----------------------------------------------------------------


class TableMachine(RuleBasedStateMachine):
    """Random inserts, finds, deletes, sweeps and evictions against a dict model."""

    keys = Bundle("keys")

    @initialize(
        initial=st.sampled_from([1, 2, 8]),
        load=st.integers(1, 4),
        cap=st.sampled_from([10**9, 40]),
    )
    def start(self, initial, load, cap):
        self.table = ClientTable(SIZE, initial_buckets=initial, load=load, max_clients=cap)
        self.model: dict[int, int] = {}

    @rule(target=keys, key=keys, payload=st.integers(0, 1_000))
    def insert(self, key, payload):
        if key not in self.model:
            if self.table.over_capacity():
                self.evict()
            self.table.insert(key, record(key, payload))
            self.model[key] = payload
        return key

    @rule(key=keys)
    def find(self, key):
        assert payload_of(self.table, key) == self.model.get(key)

    @rule(key=keys)
    def find_other(self, key):
        for other in (key ^ 1, key + 64, ~key):
            assert payload_of(self.table, other) == self.model.get(other)

    @rule(key=consumes(keys))
    def delete(self, key):
        assert self.table.delete(key) == (key in self.model)
        self.model.pop(key, None)

    @rule(key=keys, payload=st.integers(0, 1_000))
    def update_in_place(self, key, payload):
        bucket, pos = self.table.find(key)
        if key in self.model:
            RECORD.pack_into(bucket, pos, key, payload)  # type: ignore[arg-type]
            self.model[key] = payload

    @rule()
    def sweep(self):
        before = set(self.model)
        dropped = self.table.sweep_bucket(is_odd)
        for key in before - set(self.table.keys()):
            assert self.model.pop(key) % 2 == 1
        assert len(before) - len(self.model) == dropped

    @precondition(lambda self: self.model)
    @rule()
    def evict(self):
        before = len(self.table)
        self.table.evict(is_odd, by_payload)
        assert len(self.table) < before
        for key in set(self.model) - set(self.table.keys()):
            del self.model[key]

    @invariant()
    def consistent(self):
        self.table._check()
        assert len(self.table) == len(self.model)
        assert len(self.table) <= self.table.max_clients
        assert sorted(self.table.keys()) == sorted(self.model)


TableMachine.TestCase.settings = settings(max_examples=120, stateful_step_count=40, deadline=None)
test_table_against_a_dict_model = TableMachine.TestCase
