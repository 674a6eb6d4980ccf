"""envoy ratelimit's YAML, its descriptor matching and its counting, without a network.

- The YAML reader (``cluster/daemon/rls/yaml_config.py``): envoy ratelimit's README
  examples load; each refusal of ``config_impl.go`` is refused here, naming file, line,
  path and key; scalars read as Go's yaml.v2 reads them.
- The matcher (``matcher.py``): README examples 2-9 resolve as the README says; cache
  keys and hits are ``cache_key.go``'s and ``GetHitsAddends``.
- The counting (``counting.py``): a hypothesis model check drives meshlimit's own fixed
  window (``core/algorithms.py``) with the ``N+1`` rule and compares every answer and
  statistic with envoy ratelimit's ``INCRBY`` counter over the same hits.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("yaml", reason="the envoy extra (pyyaml) is not installed")

from meshlimit.cluster.daemon.rls.counting import (  # noqa: E402
    check_cost,
    counting_rule,
    near_limit_threshold,
    outcome,
    seconds_until_reset,
    stats_delta,
)
from meshlimit.cluster.daemon.rls.matcher import (  # noqa: E402
    CLIENT_PREFIX,
    cache_key,
    client_id,
    get_limit,
    hits_addends,
    limits_to_check,
)
from meshlimit.cluster.daemon.rls.yaml_config import RlsConfigError, load_config  # noqa: E402
from meshlimit.core.algorithms import fixed_window  # noqa: E402
from meshlimit.core.registry import MAX_CLIENT_BYTES  # noqa: E402


def config(*texts: str, merge: bool = False):
    return load_config([(f"f{i}.yaml", text) for i, text in enumerate(texts)], merge_domains=merge)


def refused(text: str, *more: str, merge: bool = False) -> RlsConfigError:
    with pytest.raises(RlsConfigError) as info:
        config(text, *more, merge=merge)
    return info.value


def limit_of(cfg, domain, *entries, override=None):
    found = get_limit(cfg, domain, entries, override)
    return None if found is None else (found.requests_per_unit, found.unit, found.stats_key)


# --- the README's examples ---------------------------------------------------------------

MESSAGING = """
domain: messaging
descriptors:
  # Only allow 5 marketing messages a day
  - key: message_type
    value: marketing
    descriptors:
      - key: to_number
        rate_limit:
          unit: day
          requests_per_unit: 5
  # Only allow 100 messages a day to any unique phone number
  - key: to_number
    rate_limit:
      unit: day
      requests_per_unit: 100
"""


def test_example_2_nested_and_value_less_keys():
    cfg = config(MESSAGING)
    marketing = limit_of(
        cfg, "messaging", ("message_type", "marketing"), ("to_number", "2061111111")
    )
    assert marketing == (5, "DAY", "messaging.message_type_marketing.to_number")
    assert limit_of(cfg, "messaging", ("to_number", "2061111111")) == (
        100,
        "DAY",
        "messaging.to_number",
    )
    # A value-less key gives each distinct value its own counter: the value is in the key.
    a = cache_key("messaging", [("to_number", "2061111111")])
    b = cache_key("messaging", [("to_number", "2062222222")])
    assert a == "messaging_to_number_2061111111_" and a != b
    # The placeholder level has no limit of its own.
    assert limit_of(cfg, "messaging", ("message_type", "marketing")) is None
    assert limit_of(cfg, "other", ("to_number", "1")) is None


def test_example_3_key_value_wins_over_value_less_key():
    cfg = config(
        """
domain: edge_proxy_per_ip
descriptors:
  - key: remote_address
    rate_limit: {unit: second, requests_per_unit: 10}
  - key: remote_address
    value: 50.0.0.5
    rate_limit: {unit: second, requests_per_unit: 0}
"""
    )
    assert limit_of(cfg, "edge_proxy_per_ip", ("remote_address", "50.0.0.1"))[0] == 10
    assert limit_of(cfg, "edge_proxy_per_ip", ("remote_address", "50.0.0.5"))[0] == 0


def test_example_4_a_rule_needs_as_many_levels_as_the_descriptor_has_entries():
    flat = config(
        "domain: example4\ndescriptors:\n  - key: key\n    value: value\n"
        "    rate_limit: {requests_per_unit: 300, unit: second}\n"
    )
    assert limit_of(flat, "example4", ("key", "value"), ("subkey", "subvalue")) is None
    assert limit_of(flat, "example4", ("key", "value"))[0] == 300
    nested = config(
        "domain: example4\ndescriptors:\n  - key: key\n    value: value\n    descriptors:\n"
        "      - key: subkey\n        rate_limit: {requests_per_unit: 300, unit: second}\n"
    )
    assert limit_of(nested, "example4", ("key", "value"), ("subkey", "subvalue"))[0] == 300
    assert limit_of(nested, "example4", ("key", "value")) is None


def test_example_5_to_7_unlimited_shadow_and_replaces():
    cfg = config(
        """
domain: internal
descriptors:
  - key: ldap
    rate_limit: {unlimited: true}
  - key: azure
    rate_limit: {unit: minute, requests_per_unit: 100}
  - key: service
    descriptors:
      - key: user
        value: user-a
        rate_limit: {requests_per_unit: 10, unit: second}
        shadow_mode: true
  - key: key_1
    value: value_1
    descriptors:
      - key: user
        value: bkthomps
        rate_limit: {name: specific_limit, requests_per_unit: 5, unit: second}
  - key: key_2
    value: value_2
    descriptors:
      - key: user
        value: bkthomps
        rate_limit:
          replaces: [{name: specific_limit}]
          requests_per_unit: 10
          unit: second
"""
    )
    ldap = get_limit(cfg, "internal", [("ldap", "x")])
    assert ldap is not None and ldap.unlimited
    shadow = get_limit(cfg, "internal", [("service", "auth"), ("user", "user-a")])
    assert shadow is not None and shadow.shadow_mode and shadow.requests_per_unit == 10
    one = [("key_1", "value_1"), ("user", "bkthomps")]
    two = [("key_2", "value_2"), ("user", "bkthomps")]
    limits, unlimited = limits_to_check(
        cfg, "internal", [([("ldap", "x")], None), (one, None), (two, None)]
    )
    assert unlimited == [True, False, False]
    assert limits[0] is None, "unlimited descriptors are never counted"
    assert limits[1] is None, "replaced by the second descriptor's rule"
    assert limits[2] is not None and limits[2].requests_per_unit == 10
    alone, _ = limits_to_check(cfg, "internal", [(one, None)])
    assert alone[0] is not None and alone[0].requests_per_unit == 5


def test_example_8_detailed_metric_puts_the_value_in_the_statistics_key():
    cfg = config(
        """
domain: example8
descriptors:
  - key: key1
    detailed_metric: true
    rate_limit: {unit: minute, requests_per_unit: 10}
  - key: key1
    value: value1
    rate_limit: {unit: minute, requests_per_unit: 20}
"""
    )
    assert limit_of(cfg, "example8", ("key1", "unspecified")) == (
        10,
        "MINUTE",
        "example8.key1_unspecified",
    )
    assert limit_of(cfg, "example8", ("key1", "value1")) == (20, "MINUTE", "example8.key1_value1")


def test_example_9_wildcards_match_by_prefix_per_level_first_one_wins():
    cfg = config(
        """
domain: example9
descriptors:
  - key: key1
    value: value*
    rate_limit: {unit: minute, requests_per_unit: 20}
  - key: path
    value: /api/*
    descriptors:
      - key: method
        value: G*
        rate_limit: {unit: second, requests_per_unit: 3}
      - key: method
        value: GE*
        rate_limit: {unit: second, requests_per_unit: 4}
  - key: key1
    rate_limit: {unit: minute, requests_per_unit: 7}
"""
    )
    assert limit_of(cfg, "example9", ("key1", "value_1")) == (20, "MINUTE", "example9.key1_value*")
    assert limit_of(cfg, "example9", ("key1", "other"))[0] == 7
    nested = limit_of(cfg, "example9", ("path", "/api/users"), ("method", "GET"))
    assert nested == (3, "SECOND", "example9.path_/api/*.method_G*"), "first wildcard wins"
    # Each value matched by a wildcard still has its own counter (the key holds the value).
    assert cache_key("example9", [("key1", "value_1")]) != cache_key(
        "example9", [("key1", "value_2")]
    )


def test_share_threshold_shares_one_counter_across_a_wildcards_values():
    cfg = config(
        """
domain: files
descriptors:
  - key: path
    value: files*
    share_threshold: true
    rate_limit: {unit: minute, requests_per_unit: 10}
"""
    )
    a = get_limit(cfg, "files", [("path", "files/a")])
    b = get_limit(cfg, "files", [("path", "files/b")])
    assert a is not None and b is not None and a.share_patterns == ("files*",)
    key_a = cache_key("files", [("path", "files/a")], a.share_patterns)
    assert (
        key_a == cache_key("files", [("path", "files/b")], b.share_patterns) == "files_path_files*_"
    )
    assert "share_threshold can only be used with wildcard" in str(
        refused("domain: d\ndescriptors:\n  - key: k\n    share_threshold: true\n")
    )


def test_a_limit_override_replaces_the_configured_limit_when_the_domain_is_known():
    cfg = config(MESSAGING)
    entries = (("to_number", "1"), ("extra", ""))
    assert limit_of(cfg, "messaging", *entries, override=(42, "HOUR")) == (
        42,
        "HOUR",
        "messaging.to_number_1.extra",
    )
    assert limit_of(cfg, "unknown", ("to_number", "1"), override=(42, "HOUR")) is None


# --- refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "path", "problem"),
    [
        ("descriptors: []\n", "domain", "config file cannot have empty domain"),
        ("domain: d\ndescriptors:\n  - value: v\n", "descriptors[0]", "descriptor has empty key"),
        (
            "domain: d\ndescriptors:\n  - key: k\n    value: v\n  - key: k_v\n",
            "descriptors[1]",
            "duplicate descriptor composite key 'd.k_v'",
        ),
        (
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: fortnight}\n",
            "descriptors[0].rate_limit.unit",
            "invalid rate limit unit 'fortnight'",
        ),
        (
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unlimited: true, unit: HOUR}\n",
            "descriptors[0].rate_limit.unit",
            "should not specify rate limit unit when unlimited",
        ),
        (
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: second\n"
            "      replaces: [{name: ''}]\n",
            "descriptors[0].rate_limit.replaces[0]",
            "should not have an empty replaces entry",
        ),
        (
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: second\n"
            "      name: a\n      replaces: [{name: a}]\n",
            "descriptors[0].rate_limit.replaces[0]",
            "replaces should not contain name of same descriptor",
        ),
        (
            "domain: d\ndescriptors:\n  - key: k\n    limit: 5\n",
            "descriptors[0].limit",
            "config error, unknown key 'limit'",
        ),
        (
            "domain: d\ndescriptors:\n  - key\n",
            "descriptors[0]",
            "list of type other than map",
        ),
        (
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: -1}\n",
            "descriptors[0].rate_limit.requests_per_unit",
            "expected an integer from 0 to 4294967295",
        ),
        (
            "domain: d\ndescriptors:\n  - key: k\n    shadow_mode: maybe\n",
            "descriptors[0].shadow_mode",
            "expected true or false",
        ),
        ("domain: d\ndescriptors: [\n", "", "error loading config file"),
    ],
)
def test_refusals_name_file_line_path_and_problem(text, path, problem):
    error = refused(text)
    assert error.source == "f0.yaml" and error.path == path and problem in error.problem
    assert str(error).startswith("f0.yaml:"), str(error)
    if path:
        assert error.line is not None and f"f0.yaml:{error.line}: {path}: " in str(error)


def test_a_second_file_of_a_domain_is_refused_unless_merging():
    first = "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, requests_per_unit: 1}\n"
    second = "domain: d\ndescriptors:\n  - key: b\n    rate_limit: {unit: second, requests_per_unit: 2}\n"
    error = refused(first, second)
    assert error.source == "f1.yaml" and "duplicate domain 'd'" in error.problem
    merged = config(first, second, merge=True)
    assert limit_of(merged, "d", ("a", "x"))[0] == 1 and limit_of(merged, "d", ("b", "x"))[0] == 2
    assert "duplicate descriptor composite key 'd.a'" in str(refused(first, first, merge=True))


def test_scalars_read_as_go_yaml_v2_reads_them():
    cfg = config(
        "domain: 7\ndescriptors:\n  - key: code\n    value: 010\n"
        "    rate_limit: {unit: Minute, requests_per_unit: 0x10}\n  - key: off\n    value:\n"
    )
    assert limit_of(cfg, "7", ("code", "010")) == (16, "MINUTE", "7.code_010")
    assert limit_of(cfg, "7", ("code", "8")) is None
    assert "off" in cfg.domains["7"].children, "a null value is the empty string"


def test_known_keys_out_of_place_are_ignored_and_reported():
    cfg = config(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: second\n"
        "      requests_per_unit: 1\n      shadow_mode: true\n"
    )
    found = get_limit(cfg, "d", [("k", "v")])
    assert found is not None and not found.shadow_mode, "envoy ratelimit ignores it there too"
    assert len(cfg.warnings) == 1 and "descriptors[0].rate_limit.shadow_mode" in cfg.warnings[0]


def test_alias_bombs_and_deep_nesting_are_bounded():
    levels = ["  - &l0 {key: k0, descriptors: [{key: x}]}\n"] + [
        f"  - &l{i} {{key: k{i}, descriptors: [{', '.join([f'*l{i - 1}'] * 9)}]}}\n"
        for i in range(1, 9)
    ]
    bomb = "domain: d\ndescriptors:\n" + "".join(levels)  # 9**8 descriptors once expanded
    assert "more than 200000 nodes" in refused(bomb).problem
    deep = "domain: d\ndescriptors:\n" + "".join(
        "  " * i + "  - key: k\n" + "  " * i + "    descriptors:\n" for i in range(40)
    )
    assert "nested deeper than" in refused(deep).problem


# --- keys and hits ------------------------------------------------------------------------


def test_client_ids_are_the_cache_key_or_its_hash_when_too_long():
    key = cache_key("d", [("k", "v")])
    assert client_id(key) == CLIENT_PREFIX + "d_k_v_"
    long_key = cache_key("d", [("path", "/" + "é" * 200)])
    hashed = client_id(long_key)
    assert len(hashed.encode()) <= MAX_CLIENT_BYTES and hashed == client_id(long_key)
    assert hashed != client_id(cache_key("d", [("path", "/" + "é" * 199)]))


def test_hits_addends_follow_get_hits_addends():
    assert hits_addends(0, [None, None]) == [1, 1], "0 or unset counts as 1"
    assert hits_addends(5, [None, 0, 3]) == [5, 0, 3], "a descriptor's own, 0 too, wins"


# --- counting -----------------------------------------------------------------------------


def test_counting_rule_is_n_plus_one_per_unit_in_a_fixed_window():
    assert str(counting_rule(5, "MINUTE")) == "6/minute algo fixed_window"
    assert str(counting_rule(0, "SECOND")) == "1/second algo fixed_window"
    assert counting_rule(3, "MONTH").window_ns == 30 * 86_400 * 10**9
    assert str(counting_rule(5, "HOUR", "sliding_window")) == "6/hour"


def test_pinned_formulas():
    assert [near_limit_threshold(n) for n in (0, 1, 3, 5, 10, 100, 1000)] == [
        0,
        0,
        2,
        4,
        8,
        80,
        800,
    ]
    assert seconds_until_reset("MINUTE", 120) == 60 and seconds_until_reset("MINUTE", 179) == 1
    assert seconds_until_reset("DAY", 86_400 + 3600) == 82_800
    # base_limiter.go: crossing the limit with one request of 4 from 3 of 5.
    crossing = stats_delta(5, 4, outcome(5, 4, 4, False, 3, 6), shadow=True)
    assert crossing == (4, 2, 1, 0, 2)


class EnvoyCounter:
    """envoy ratelimit's counter for one key and window: INCRBY, then compare."""

    def __init__(self, limit: int) -> None:
        self.limit, self.count = limit, 0

    def hit(self, hits: int, shadow: bool):
        before = self.count
        self.count += hits
        after = self.count
        n, near = self.limit, near_limit_threshold(self.limit)
        over_limit = near_limit = within = shadowed = 0
        if after > n:
            if before >= n:
                over_limit = hits
            else:
                over_limit, near_limit = after - n, n - max(near, before)
            if shadow:
                shadowed = hits if before >= n else after - n
            return True, 0, (hits, over_limit, near_limit, 0, shadowed)
        if after > near:
            near_limit = hits if before >= near else after - near
        within = hits
        return False, n - after, (hits, over_limit, near_limit, within, shadowed)


class MeshlimitWindow:
    """The ``N+1`` rule on meshlimit's fixed window, as an owner applies it."""

    NOW_NS = 7 * 60 * 10**9 + 123

    def __init__(self, limit: int) -> None:
        self.limit, self.rule = limit, counting_rule(limit, "MINUTE")
        self.state = (0, 0, 0, 0)

    def _check(self, cost: int):
        r = self.rule
        allowed, *state, remaining, _, _ = fixed_window(
            *self.state, r.limit, r.burst, r.window_ns, cost, self.NOW_NS
        )
        if allowed and cost:
            self.state = tuple(state)
        return allowed, remaining

    def hit(self, hits: int, shadow: bool):
        cost = check_cost(hits, self.rule)
        allowed, remaining = self._check(cost)
        result = outcome(self.limit, hits, cost, allowed, remaining, self.rule.limit)
        if result.saturate:
            assert self._check(result.saturate)[0]
        return result.over, result.remaining, tuple(stats_delta(self.limit, hits, result, shadow))


@settings(max_examples=300, deadline=None)
@given(
    limit=st.integers(0, 12),
    hits=st.lists(st.integers(0, 15), min_size=1, max_size=25),
    shadow=st.booleans(),
)
def test_meshlimit_answers_as_envoys_counter_for_any_hits(limit, hits, shadow):
    envoy, meshlimit = EnvoyCounter(limit), MeshlimitWindow(limit)
    for index, count in enumerate(hits):
        assert meshlimit.hit(count, shadow) == envoy.hit(count, shadow), f"hit {index}: {count}"


# --- files: the loader and the daemon's config file -----------------------------------------


def test_the_loader_reads_folders_keeps_the_rules_on_a_bad_edit_and_sees_changes(tmp_path):
    from meshlimit.cluster.daemon.rls.loader import ConfigLoader

    folder = tmp_path / "config"
    folder.mkdir()
    (folder / "a.yaml").write_text(MESSAGING)
    (folder / "b.yml").write_text("domain: other\n")
    (folder / "notes.txt").write_text("not yaml")
    loader = ConfigLoader([folder])
    assert sorted(loader.load().domains) == ["messaging", "other"]
    assert loader.poll() is None, "nothing changed"
    (folder / "b.yml").write_text(
        "domain: other\ndescriptors:\n  - key: k\n    rate_limit: {unit: x}\n"
    )
    assert loader.poll() is False, "a bad edit fails..."
    assert sorted(loader.config.domains) == ["messaging", "other"], "...and keeps the rules"
    assert loader.counts == {"config_load_success": 1, "config_load_error": 1}
    assert "b.yml:4: descriptors[0].rate_limit.unit: invalid rate limit unit 'x'" in (
        loader.last_error or ""
    )
    assert loader.poll() is None, "a bad file is not re-read until it changes again"
    (folder / "b.yml").unlink()
    assert loader.poll() is True and sorted(loader.config.domains) == ["messaging"]
    (folder / "a.yaml").unlink()
    assert loader.poll() is True and not loader.config.domains


def test_the_toml_config_names_the_envoy_settings(tmp_path):
    from meshlimit.cluster.daemon.config_file import ConfigError, parse_config

    text = (
        '[cluster]\nbind = "127.0.0.1:7400"\ngrpc = "127.0.0.1:0"\n'
        'ratelimit_config = ["rl.yaml", "/etc/rl"]\nmerge_domain_config = true\n'
        'ratelimit_algorithm = "sliding_window"\n'
    )
    cluster = parse_config(text, source="m.toml", base=tmp_path).cluster
    assert cluster.grpc == ("127.0.0.1", 0)
    assert cluster.ratelimit_config == (str(tmp_path / "rl.yaml"), "/etc/rl")
    assert cluster.merge_domain_config is True and cluster.ratelimit_algorithm == "sliding_window"
    with pytest.raises(ConfigError) as info:
        parse_config('[cluster]\nratelimit_algorithm = "leaky"\n', source="m.toml")
    assert info.value.key == "cluster.ratelimit_algorithm"


def test_the_yaml_of_docs_envoy_md_loads():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "envoy.md").read_text()
    block = doc.split("```yaml\ndomain: edge\n", 1)[1].split("```", 1)[0]
    cfg = config("domain: edge\n" + block)
    assert limit_of(cfg, "edge", ("api_key", "partner-7"))[0] == 1000
    internal = get_limit(cfg, "edge", [("api_key", "internal-ci")])
    assert internal is not None and internal.unlimited
    login = [("generic_key", "login"), ("remote_address", "10.1.2.3")]
    assert limit_of(cfg, "edge", *login) == (5, "MINUTE", "edge.generic_key_login.remote_address")


def test_statistics_keep_a_bounded_set_of_keys():
    from meshlimit.cluster.daemon.rls.counting import StatsDelta
    from meshlimit.cluster.daemon.rls.stats import OTHER_KEY, DescriptorStats

    stats = DescriptorStats(max_keys=2)
    one = StatsDelta(1, 0, 0, 1, 0)
    for key in ("d.a", "d.b", "d.c", "d.d", "d.a"):
        stats.add("d", key, one)
    assert len(stats) == 3 and stats.dropped_keys == 2
    assert stats.counts("d", "d.a")["total_hits"] == 2
    assert stats.counts("", OTHER_KEY)["within_limit"] == 2, "c and d, folded"
    total = next(f for f in stats.families() if f.name == "meshlimit_envoy_rate_limit_total_hits")
    assert sorted(total.samples) == [(("", OTHER_KEY), 2), (("d", "a"), 2), (("d", "b"), 1)]
