"""Tests for meshlimit.core.registry: resolution, last-writer-wins, and the CRDT laws."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshlimit.core.hlc import ZERO, Stamp
from meshlimit.core.registry import (
    CALL_LIFETIME_FLOOR_MS,
    MAX_CLIENT_BYTES,
    Entry,
    RuleRegistry,
    check_client_id,
    check_tier_name,
    drain_ns,
    value_text,
)
from meshlimit.core.rules import Rule, parse_rule

DEFAULT = parse_rule("100/minute")
GOLD = parse_rule("1000/minute burst 200")
SILVER = parse_rule("500/minute")
OWN = parse_rule("50/second")


def stamp(wall_ms: int, counter: int = 0, node: str = "n1") -> Stamp:
    return Stamp(wall_ms, counter, node)


def snapshot(registry: RuleRegistry) -> tuple[dict[str, Entry], int]:
    registry._check()
    return dict(registry.entries()) | dict(registry.call_entries()), registry.digest


# -- resolution --------------------------------------------------------------------------


def test_resolve_order_client_rule_then_client_tier_then_default():
    reg = RuleRegistry("100/minute")
    assert reg.default == DEFAULT
    assert reg.resolve("acme") == DEFAULT

    assert reg.set_tier("gold", GOLD, stamp(1))
    assert reg.set_client("acme", "@gold", stamp(2))
    assert reg.resolve("acme") == GOLD
    assert reg.resolve("other") == DEFAULT

    assert reg.set_client("acme", "50/second", stamp(3))
    assert reg.resolve("acme") == OWN
    assert reg.client_value("acme") == OWN

    assert reg.set_client("acme", None, stamp(4))
    assert reg.resolve("acme") == DEFAULT
    assert reg.client_value("acme") is None


def test_a_client_on_a_missing_or_removed_tier_falls_back_to_the_default():
    reg = RuleRegistry(DEFAULT)
    reg.set_client("acme", "@gold", stamp(1))
    assert reg.resolve("acme") == DEFAULT  # the tier does not exist (yet)
    reg.set_tier("gold", "1000/minute burst 200", stamp(2))
    assert reg.resolve("acme") == GOLD
    reg.set_tier("gold", None, stamp(3))
    assert reg.resolve("acme") == DEFAULT
    assert reg.tiers() == {}
    assert reg.overrides() == {"acme": "@gold"}
    reg.set_tier("gold", SILVER, stamp(4))  # a tier can come back
    assert reg.resolve("acme") == SILVER


def test_set_default_changes_every_client_without_an_override():
    reg = RuleRegistry(DEFAULT)
    reg.set_client("acme", OWN, stamp(1))
    assert reg.set_default("500/minute", stamp(2))
    assert reg.default == SILVER
    assert reg.resolve("other") == SILVER
    assert reg.resolve("acme") == OWN


def test_reads():
    reg = RuleRegistry(DEFAULT)
    reg.set_tier("gold", GOLD, stamp(1))
    reg.set_tier("old", SILVER, stamp(2))
    reg.set_tier("old", None, stamp(3))
    reg.set_client("a", "@gold", stamp(4))
    reg.set_client("b", OWN, stamp(5, 2))
    reg.set_client("c", None, stamp(6))
    assert reg.tiers() == {"gold": GOLD}
    assert reg.overrides() == {"a": "@gold", "b": OWN}
    assert reg.entry_count() == 6  # default, two tiers, three clients (tombstones count)
    assert reg.latest_stamp() == stamp(6)
    assert reg.entry("tier:old") == Entry(None, stamp(3))
    assert reg.entry("default") == Entry(DEFAULT, ZERO)
    assert reg.entry("client:nobody") is None
    keys = [key for key, _ in reg.entries()]
    assert keys[0] == "default"
    assert sorted(keys) == sorted(
        ["default", "tier:gold", "tier:old", "client:a", "client:b", "client:c"]
    )
    assert value_text(OWN) == "50/second"
    assert value_text("@gold") == "@gold"
    assert value_text(None) is None


# -- last writer wins --------------------------------------------------------------------


def test_last_writer_wins_by_stamp():
    reg = RuleRegistry(DEFAULT)
    assert reg.set_client("acme", OWN, stamp(10))
    assert not reg.set_client("acme", SILVER, stamp(9))  # older: ignored
    assert not reg.set_client("acme", SILVER, stamp(10, 0, "a"))  # same time, lower node
    assert reg.resolve("acme") == OWN
    assert reg.set_client("acme", SILVER, stamp(10, 1))  # newer counter
    assert reg.resolve("acme") == SILVER
    assert reg.set_client("acme", GOLD, stamp(10, 1, "n2"))  # same counter, higher node
    assert reg.resolve("acme") == GOLD


def test_equal_stamps_break_ties_on_the_value_in_either_order():
    one, two = RuleRegistry(DEFAULT), RuleRegistry(DEFAULT)
    same = stamp(10)
    one.set_client("acme", "500/minute", same)
    one.set_client("acme", "50/second", same)
    two.set_client("acme", "50/second", same)
    two.set_client("acme", "500/minute", same)
    assert one.resolve("acme") == two.resolve("acme")
    assert snapshot(one) == snapshot(two)
    # Re-applying the winning entry itself changes nothing.
    assert not one.set_client("acme", one.client_value("acme"), same)


def test_two_configured_defaults_with_zero_stamps_agree_after_merging():
    one, two = RuleRegistry("100/minute"), RuleRegistry("500/minute")
    one_copy = RuleRegistry("100/minute")
    one.merge(two)
    two.merge(one_copy)
    assert one.default == two.default
    assert snapshot(one) == snapshot(two)


def test_tombstones_beat_older_writes_and_lose_to_newer_ones():
    reg = RuleRegistry(DEFAULT)
    reg.set_client("acme", OWN, stamp(5))
    assert reg.set_client("acme", None, stamp(6))
    assert reg.resolve("acme") == DEFAULT
    assert not reg.set_client("acme", GOLD, stamp(4))  # a late old write does not resurrect
    assert reg.resolve("acme") == DEFAULT
    assert reg.set_client("acme", GOLD, stamp(7))  # a newer one does
    assert reg.resolve("acme") == GOLD


def test_at_an_equal_stamp_a_write_beats_a_tombstone_in_either_order():
    # Distinct writes never share a stamp (the node id is part of it); if one is
    # replayed with another value anyway, every node must still pick the same side.
    one, two = RuleRegistry(DEFAULT), RuleRegistry(DEFAULT)
    one.set_client("acme", None, stamp(6))
    assert one.set_client("acme", OWN, stamp(6))
    two.set_client("acme", OWN, stamp(6))
    assert not two.set_client("acme", None, stamp(6))
    assert snapshot(one) == snapshot(two)
    assert one.resolve("acme") == OWN


def test_a_tombstone_for_an_unknown_key_is_kept_and_blocks_older_writes():
    reg = RuleRegistry(DEFAULT)
    assert reg.set_tier("gold", None, stamp(5))
    assert not reg.set_tier("gold", GOLD, stamp(4))
    assert reg.tiers() == {}
    assert reg.entry("tier:gold") == Entry(None, stamp(5))


def test_apply_accepts_rule_text_and_tier_references():
    reg = RuleRegistry(DEFAULT)
    assert reg.apply("tier:gold", "1000/minute burst 200", stamp(1))
    assert reg.apply("client:acme", "@gold", stamp(2))
    assert reg.apply("client:solo", "50/second", stamp(3))
    assert reg.apply("default", "500/minute", stamp(4))
    assert reg.resolve("acme") == GOLD
    assert reg.resolve("solo") == OWN
    assert reg.default == SILVER


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("bogus", OWN),
        ("", OWN),
        ("Default", OWN),
        ("tier:", OWN),
        ("tier:bad name", OWN),
        ("tier:" + "x" * 65, OWN),
        ("client:", OWN),
        ("client:" + "x" * (MAX_CLIENT_BYTES + 1), OWN),
        ("client:" + "\u00e9" * (MAX_CLIENT_BYTES // 2 + 1), OWN),
        ("default", None),
        ("default", "@gold"),
        ("tier:gold", "@silver"),
        ("client:acme", "@"),
        ("client:acme", "@bad tier!"),
        ("client:acme", 42),
        ("client:acme", 4.5),
        ("client:acme", b"50/second"),
        ("client:acme", "not a rule"),
        ("client:acme", "0/minute"),
    ],
)
def test_bad_keys_and_values_are_refused_whole(key, value):
    reg = RuleRegistry(DEFAULT)
    reg.set_tier("gold", GOLD, stamp(1))
    before = snapshot(reg)
    with pytest.raises(ValueError):
        reg.apply(key, value, stamp(99))
    assert snapshot(reg) == before


def test_bad_arguments_to_the_typed_setters():
    reg = RuleRegistry(DEFAULT)
    with pytest.raises(ValueError):
        reg.set_tier("no spaces", GOLD, stamp(1))
    with pytest.raises(ValueError):
        reg.set_client("", OWN, stamp(1))
    with pytest.raises(TypeError, match="client id must be a str"):
        reg.set_client(7, OWN, stamp(1))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        reg.set_client("acme", "@no spaces", stamp(1))
    with pytest.raises(ValueError):
        reg.set_default("nonsense", stamp(1))
    with pytest.raises(ValueError):
        RuleRegistry("nonsense")
    assert reg.entry_count() == 1


def test_client_id_and_tier_name_checks():
    check_client_id("a")
    check_client_id("x" * MAX_CLIENT_BYTES)
    check_client_id("\u00e9" * (MAX_CLIENT_BYTES // 2))  # 256 bytes of UTF-8
    for bad in ["", "x" * (MAX_CLIENT_BYTES + 1), "\U0001f600" * 65]:
        with pytest.raises(ValueError):
            check_client_id(bad)
    for bad in [None, 5, b"acme"]:
        with pytest.raises(TypeError):
            check_client_id(bad)  # type: ignore[arg-type]
    check_tier_name("gold.v2-eu_1")
    check_tier_name("x" * 64)
    for bad in ["", "x" * 65, "a b", "gold!", "@gold", "g\u00f6ld"]:
        with pytest.raises(ValueError):
            check_tier_name(bad)
    with pytest.raises(TypeError):
        check_tier_name(None)  # type: ignore[arg-type]


def test_max_entries_bounds_new_keys_but_not_updates():
    reg = RuleRegistry(DEFAULT, max_entries=3)
    reg.set_client("a", OWN, stamp(1))
    reg.set_tier("gold", GOLD, stamp(2))
    before = snapshot(reg)
    with pytest.raises(ValueError, match="full"):
        reg.set_client("b", OWN, stamp(3))
    with pytest.raises(ValueError, match="full"):
        reg.set_client("b", None, stamp(3))  # a tombstone is an entry too
    assert snapshot(reg) == before
    assert reg.set_client("a", SILVER, stamp(4))
    assert reg.set_tier("gold", None, stamp(5))
    assert reg.set_default(SILVER, stamp(6))
    assert reg.entry_count() == 3


def test_purge_graves_drops_only_old_removals_and_keeps_the_digest_right():
    # Stamps a whole number of seconds apart: graves are kept by the second (and may be
    # purged up to a second late, never early).
    reg = RuleRegistry(DEFAULT)
    reg.set_tier("gold", GOLD, stamp(1000))
    reg.set_tier("gold", None, stamp(10_000))
    reg.set_client("a", OWN, stamp(2000))
    reg.set_client("a", None, stamp(20_000))
    reg.set_client("b", OWN, stamp(3000))
    assert reg.purge_graves(before_wall_ms=15_000) == 1
    assert reg.entry("tier:gold") is None
    assert reg.entry("client:a") == Entry(None, stamp(20_000))
    assert reg.purge_graves(before_wall_ms=15_000) == 0
    assert reg.purge_graves(before_wall_ms=20_000) == 0  # not early
    assert reg.purge_graves(before_wall_ms=20_001) == 1
    fresh = RuleRegistry(DEFAULT)
    fresh.set_client("b", OWN, stamp(3000))
    assert snapshot(reg) == snapshot(fresh)


# -- how entries end: graves and per-call entries ---------------------------------------

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
THROTTLE = parse_rule("1/2s burst 15 algo token_bucket")  # CL.THROTTLE k 15 30 60


def test_drain_time_and_call_lifetime_pinned():
    assert drain_ns(parse_rule("100/minute")) == 120 * 10**9  # this window and the next
    assert drain_ns(parse_rule("10/minute burst 25")) == 5 * 60 * 10**9  # 2 + ceil(25/10)
    # The bucket refills in 16 emission intervals of 2 s; the windows' carry (2 + 15
    # windows of 2 s) is longer, and the larger of the two holds for every algorithm.
    assert drain_ns(THROTTLE) == 17 * 2 * 10**9
    assert drain_ns(parse_rule("1/hour burst 99 algo token_bucket")) == 101 * HOUR_MS * 10**6
    reg = RuleRegistry(DEFAULT)
    assert reg.call_lifetime_ms(THROTTLE) == CALL_LIFETIME_FLOOR_MS == 10 * 60_000
    assert reg.call_lifetime_ms(None) == CALL_LIFETIME_FLOOR_MS
    assert reg.call_lifetime_ms(parse_rule("1/hour burst 99 algo token_bucket")) == 202 * HOUR_MS


def test_graves_are_purged_after_the_horizon_and_only_then():
    reg = RuleRegistry(DEFAULT)
    reg.set_client("a", OWN, stamp(1000))
    reg.set_client("a", None, stamp(10_000))
    reg.set_tier("gold", None, stamp(20_000))
    reg.apply("reset:a", None, stamp(30_000))
    reg.set_client("b", OWN, stamp(5000))
    assert reg.grave_count() == 3 and reg.entry_count() == 5
    assert reg.collect(now_ms=DAY_MS + 10_000) == 0  # the oldest grave is exactly a day old
    assert reg.collect(now_ms=DAY_MS + 21_000) == 2
    assert reg.entry("client:a") is None and reg.entry("tier:gold") is None
    assert reg.reset_wall_ms("a") == 30_000 and reg.stats["graves_purged"] == 2
    assert reg.collect(now_ms=DAY_MS + 31_000) == 1 and reg.reset_wall_ms("a") == -1
    fresh = RuleRegistry(DEFAULT)
    fresh.set_client("b", OWN, stamp(5000))
    assert snapshot(reg) == snapshot(fresh) and reg.grave_count() == 0


def test_a_grave_older_than_the_horizon_is_not_stored_but_still_removes_an_older_rule():
    reg = RuleRegistry(DEFAULT)
    now = 10 * DAY_MS
    reg.set_client("a", OWN, stamp(1))
    assert reg.apply("client:a", None, stamp(2), now_ms=now)  # removes the older rule...
    assert reg.entry("client:a") is None and reg.grave_count() == 0  # ...and is not kept
    assert not reg.apply("client:b", None, stamp(2), now_ms=now)  # nothing to remove
    assert not reg.apply("reset:c", None, stamp(2), now_ms=now)  # a reset that old: ignored
    assert reg.reset_wall_ms("c") == -1 and reg.stats["graves_refused_old"] == 3
    assert reg.apply("client:d", None, stamp(now - DAY_MS), now_ms=now)  # within: kept
    assert reg.grave_count() == 1 and reg.entry_count() == 2
    reg._check()


def test_rewriting_one_grave_many_times_keeps_the_heap_bounded():
    reg = RuleRegistry(DEFAULT)
    for n in range(20_000):
        reg.apply("reset:a", None, stamp(n))
    assert len(reg._graves) <= 2 * reg.grave_count() + 1024  # stale items are dropped
    reg._check()


def test_per_call_entries_expire_after_their_lifetime_and_stay_out_of_the_digest():
    reg = RuleRegistry(DEFAULT)
    digest = reg.digest
    life = reg.call_lifetime_ms(THROTTLE)
    assert reg.apply("client:cl.throttle:k", THROTTLE, stamp(1000), now_ms=1000)
    assert reg.resolve("cl.throttle:k") == THROTTLE and reg.client_value("cl.throttle:k")
    assert reg.digest == digest and reg.entry_count() == 1 and reg.call_count() == 1
    assert [key for key, _ in reg.call_entries()] == ["client:cl.throttle:k"]
    assert reg.collect(now_ms=1000 + life - 1) == 0
    assert reg.collect(now_ms=1000 + life) == 1 and reg.call_count() == 0
    assert reg.resolve("cl.throttle:k") == DEFAULT and reg.stats["calls_expired"] == 1
    # An entry already expired when it arrives (a late gossip) is not stored.
    assert not reg.apply("client:cl.throttle:k", THROTTLE, stamp(1000), now_ms=1000 + life)
    assert reg.stats["calls_refused_expired"] == 1 and reg.call_count() == 0
    reg._check()


def test_a_call_renews_its_entry_past_half_its_lifetime():
    reg = RuleRegistry(DEFAULT)
    life = reg.call_lifetime_ms(THROTTLE)
    assert reg.call_needs_write("cl.throttle:k", THROTTLE, now_ms=0)  # missing
    reg.apply("client:cl.throttle:k", THROTTLE, stamp(0))
    assert not reg.call_needs_write("cl.throttle:k", THROTTLE, now_ms=life // 2 - 1)
    assert reg.call_needs_write("cl.throttle:k", THROTTLE, now_ms=life // 2)  # renew
    assert reg.call_needs_write("cl.throttle:k", OWN, now_ms=1)  # other arguments
    reg.apply("client:cl.throttle:k", THROTTLE, stamp(life // 2))
    assert reg.collect(now_ms=life) == 0  # renewed in use: it does not expire
    assert reg.resolve("cl.throttle:k") == THROTTLE


def test_past_the_bound_the_call_closest_to_expiry_is_evicted_never_the_new_one():
    reg = RuleRegistry(DEFAULT, max_calls=3)
    long_life = parse_rule("1/hour burst 99 algo token_bucket")
    reg.apply("client:cl.throttle:long", long_life, stamp(0))
    for n in range(1, 4):  # a second apart: expiry is kept by the second
        assert reg.apply(f"client:cl.throttle:k{n}", THROTTLE, stamp(n * 1000))
    assert reg.call_count() == 3 and reg.stats["calls_evicted"] == 1
    assert reg.client_value("cl.throttle:k1") is None  # the soonest to expire went
    assert reg.client_value("cl.throttle:long") == long_life  # older, but lives longer
    # Many entries expiring in the same millisecond: still never the one just written.
    for n in range(100):
        assert reg.apply(f"client:cl.throttle:same{n}", THROTTLE, stamp(5000))
        assert reg.client_value(f"cl.throttle:same{n}") == THROTTLE
    assert reg.call_count() == 3
    reg._check()


def test_a_flood_of_per_call_keys_stays_bounded_and_new_keys_always_apply():
    reg = RuleRegistry(DEFAULT, max_calls=10_000)
    life = reg.call_lifetime_ms(THROTTLE)
    for n in range(100_000):
        now = n // 10  # 10,000 keys a second
        assert reg.apply(f"client:cl.throttle:f{n}", THROTTLE, stamp(now), now_ms=now)
        if n % 100 == 0:
            reg.collect(now_ms=now)
    assert reg.call_count() == 10_000 and reg.stats["calls_evicted"] == 90_000
    assert reg.resolve("cl.throttle:f99999") == THROTTLE
    assert len(reg._call_ends) <= 2 * reg.call_count() + 1024
    # Once the flood's period has passed, every flooded key is collected.
    while reg.collect(now_ms=10_000 + life):
        pass
    assert reg.call_count() == 0 and reg.entry_count() == 1
    reg._check()


# -- CRDT laws ---------------------------------------------------------------------------

KEYS = ["default", "tier:gold", "tier:silver", "client:a", "client:b", "client:c", "reset:a"]
KEYS += ["client:cl.throttle:k", "client:cl.throttle:j"]
RULES = [DEFAULT, GOLD, SILVER, OWN]
write_stamps = st.builds(Stamp, st.integers(0, 3), st.integers(0, 2), st.sampled_from(["n1", "n2"]))


@st.composite
def writes(draw):
    key = draw(st.sampled_from(KEYS))
    if key == "default":
        value = draw(st.sampled_from(RULES))
    elif key.startswith("reset:"):
        value = None
    elif key.startswith("tier:"):
        value = draw(st.sampled_from([*RULES, None]))
    else:
        value = draw(st.sampled_from([*RULES, None, "@gold", "@silver"]))
    return key, value, draw(write_stamps)


write_lists = st.lists(writes(), max_size=12)
defaults = st.sampled_from(RULES)


def build(default: Rule, ops) -> RuleRegistry:
    reg = RuleRegistry(default)
    for key, value, at in ops:
        reg.apply(key, value, at)
    return reg


@settings(max_examples=150)
@given(defaults, write_lists, defaults, write_lists)
def test_merge_is_commutative(da, a, db, b):
    ab = build(da, a)
    ab.merge(build(db, b))
    ba = build(db, b)
    ba.merge(build(da, a))
    assert snapshot(ab) == snapshot(ba)


@settings(max_examples=100)
@given(defaults, write_lists, defaults, write_lists, defaults, write_lists)
def test_merge_is_associative(da, a, db, b, dc, c):
    left = build(da, a)
    left.merge(build(db, b))
    left.merge(build(dc, c))
    right_tail = build(db, b)
    right_tail.merge(build(dc, c))
    right = build(da, a)
    right.merge(right_tail)
    assert snapshot(left) == snapshot(right)


@settings(max_examples=150)
@given(defaults, write_lists)
def test_merge_is_idempotent(default, ops):
    reg = build(default, ops)
    before = snapshot(reg)
    assert reg.merge(build(default, ops)) == 0
    assert reg.merge(reg) == 0
    assert snapshot(reg) == before


@settings(max_examples=150)
@given(defaults, write_lists, st.randoms(use_true_random=False))
def test_every_order_of_the_same_writes_converges(default, ops, rnd):
    shuffled = list(ops)
    rnd.shuffle(shuffled)
    twice = shuffled + ops  # duplicates are harmless too
    assert snapshot(build(default, ops)) == snapshot(build(default, twice))


@settings(max_examples=150)
@given(defaults, write_lists, defaults, write_lists)
def test_digest_is_equal_exactly_when_the_durable_entries_are(da, a, db, b):
    one, two = build(da, a), build(db, b)
    assert (one.digest == two.digest) == (dict(one.entries()) == dict(two.entries()))


@settings(max_examples=150)
@given(defaults, write_lists, st.integers(0, 4))
def test_incremental_digest_matches_a_registry_built_from_its_entries(default, ops, horizon):
    reg = build(default, ops)
    reg.purge_graves(before_wall_ms=horizon)
    rebuilt = RuleRegistry(default)
    for key, entry in reversed([*reg.entries(), *reg.call_entries()]):
        rebuilt.apply(key, entry.value, entry.stamp)
    assert snapshot(rebuilt) == snapshot(reg)
