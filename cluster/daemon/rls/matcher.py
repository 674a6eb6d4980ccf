"""A request's descriptors resolved to their limits, with envoy ratelimit's semantics exactly.

Theory of operation. :func:`get_limit` is envoy ratelimit's ``GetLimit``
(``src/config/config_impl.go``) over the trees of ``yaml_config.py``. For each
entry of a descriptor, in order, it looks for the child ``key_value``, then for
the first wildcard child whose key without its ``*`` is a prefix of
``key_value``, then for the child ``key`` (a value-less rule: each distinct
value gets its own counter, since the cache key holds the value). A limit is
found only at the descriptor's last entry: a rule needs as many nesting levels
as the descriptor has entries. The walk stops where the tree has no deeper
level. A descriptor's ``limit`` override replaces the lookup whenever the
domain is known (not shadowed, no name, no ``replaces``).

:func:`limits_to_check` is ``constructLimitsToCheck`` (``src/service/ratelimit.go``):
``unlimited`` limits are taken out (answered OK with ``limit_remaining``
4294967295, never counted), and a limit whose ``name`` another matched limit
``replaces`` (an unlimited one too) is dropped.

:func:`cache_key` is ``GenerateCacheKey`` (``src/limiter/cache_key.go``) without
its window timestamp: ``domain_key1_value1_key2_value2_``; every entry's value
is in it, except that an entry matched through a ``share_threshold`` wildcard
holds the wildcard instead (its values share one counter). meshlimit's fixed
windows give the timestamp's part (``now // unit * unit``). :func:`client_id`
makes it a meshlimit client id, hashed when it is too long for one.

:func:`hits_addends` is ``utils.GetHitsAddends``: a descriptor's own
``hits_addend``, when set, is used as is (0 checks without counting); otherwise
the request's, 0 counting as 1.

Pure, and the hot path: plain strings and tuples in, no protobuf.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from meshlimit.cluster.daemon.rls.yaml_config import DescriptorNode, RateLimitConfig
from meshlimit.core.registry import MAX_CLIENT_BYTES, PER_CALL_PREFIX

#: A descriptor's entries: ``(key, value)`` pairs, in order.
Entries = Sequence[tuple[str, str]]
#: Envoy descriptors' counters are meshlimit clients under this prefix: per-call
#: registry entries (soft state that expires, ``core/registry.py``), apart from RESP keys.
CLIENT_PREFIX = PER_CALL_PREFIX + "envoy:"
_HASHED_PREFIX = CLIENT_PREFIX + "sha256:"
#: ``limit_remaining`` of an unlimited descriptor: Go's ``math.MaxUint32``.
UNLIMITED_REMAINING = 2**32 - 1


@dataclass(frozen=True, slots=True)
class MatchedLimit:
    """The limit a descriptor resolved to."""

    requests_per_unit: int
    unit: str
    """A ``yaml_config.UNIT_SECONDS`` name (an override may name any Envoy unit)."""
    stats_key: str
    """``domain.key_value...``: the statistics key of the limit (``FullKey``)."""
    unlimited: bool = False
    shadow_mode: bool = False
    name: str = ""
    replaces: tuple[str, ...] = ()
    share_patterns: tuple[str, ...] | None = None
    """Per entry, the wildcard value (``files*``) its counter is shared under, or ``""``;
    None when no entry was matched through a ``share_threshold`` wildcard."""


def get_limit(
    config: RateLimitConfig,
    domain: str,
    entries: Entries,
    override: tuple[int, str] | None = None,
) -> MatchedLimit | None:
    """The limit of one descriptor, or None; ``override`` is its ``(requests_per_unit,
    unit)`` limit override, if the request gave one."""
    tree = config.domains.get(domain)
    if tree is None:
        return None
    if override is not None:
        return MatchedLimit(override[0], override[1], descriptor_key(domain, entries))
    level, previous = tree.children, tree
    detailed, to_metric = [domain], [domain]
    shared: dict[int, str] = {}
    found = None
    patterns: tuple[str, ...] | None = None
    last = len(entries) - 1
    for index, (key, value) in enumerate(entries):
        final_key = f"{key}_{value}"
        detailed.append(final_key)
        node = level.get(final_key)
        wildcard = ""
        if node is None:
            for candidate in previous.wildcard_keys:
                if final_key.startswith(candidate[:-1]):
                    node, wildcard = level.get(candidate), candidate
                    break
        by_value = node is not None
        if node is None:
            node = level.get(key)
        if wildcard and node is not None and node.share_threshold and node.wildcard_pattern:
            shared[index] = node.wildcard_pattern.removeprefix(key + "_")
        to_metric.append(_metric_part(key, value, node, wildcard, by_value, shared.get(index)))
        if node is not None and node.limit is not None and index == last:
            found = node.limit
            if shared:
                patterns = tuple(shared.get(i, "") for i in range(len(entries)))
        if node is None or not node.children:
            break
        level, previous = node.children, node
    if found is None:
        return None
    if found.detailed_metric:
        if patterns is not None:
            parts = [domain] + [
                f"{k}_{p}" if p else _key_value(k, v)
                for (k, v), p in zip(entries, patterns, strict=True)
            ]
            stats_key = ".".join(parts)
        else:
            stats_key = ".".join(detailed)
    else:
        stats_key = ".".join(to_metric)
    return MatchedLimit(
        found.requests_per_unit,
        found.unit,
        stats_key,
        found.unlimited,
        found.shadow_mode,
        found.name,
        found.replaces,
        patterns,
    )


def _metric_part(
    key: str,
    value: str,
    node: DescriptorNode | None,
    wildcard: str,
    by_value: bool,
    shared: str | None,
) -> str:
    """One level of the statistics key as ``GetLimit`` builds it (``value_to_metric``,
    ``share_threshold``); without either it spells the configured path, ``FullKey``."""
    if node is None:
        return key
    value_to_metric = node.value_to_metric
    if wildcard:
        if shared:
            return f"{key}_{shared}"
        if value_to_metric:
            return _key_value(key, value)
        return f"{key}_{wildcard.removeprefix(key + '_')}"
    if by_value:
        return f"{key}_{shared}" if shared else _key_value(key, value)
    return _key_value(key, value) if value_to_metric else key


def _key_value(key: str, value: str) -> str:
    return f"{key}_{value}" if value else key


def descriptor_key(domain: str, entries: Entries) -> str:
    """``domain.key_value.key``: the statistics key of an override (``descriptorKey``)."""
    return domain + "." + ".".join(_key_value(k, v) for k, v in entries)


def limits_to_check(
    config: RateLimitConfig,
    domain: str,
    descriptors: Sequence[tuple[Entries, tuple[int, str] | None]],
) -> tuple[list[MatchedLimit | None], list[bool]]:
    """Each descriptor's limit to count (None: none) and whether it was unlimited."""
    limits: list[MatchedLimit | None] = []
    unlimited: list[bool] = []
    replacing: set[str] = set()
    for entries, override in descriptors:
        limit = get_limit(config, domain, entries, override)
        if limit is not None:
            replacing.update(limit.replaces)
            if limit.unlimited:
                limit = None
                unlimited.append(True)
            else:
                unlimited.append(False)
        else:
            unlimited.append(False)
        limits.append(limit)
    if replacing:
        limits = [
            None if limit is not None and limit.name and limit.name in replacing else limit
            for limit in limits
        ]
    return limits, unlimited


def cache_key(domain: str, entries: Entries, share_patterns: tuple[str, ...] | None = None) -> str:
    """envoy ratelimit's cache key without its window: ``domain_key1_value1_key2_value2_``."""
    parts = [domain, "_"]
    for index, (key, value) in enumerate(entries):
        if share_patterns is not None and share_patterns[index]:
            value = share_patterns[index]
        parts += (key, "_", value, "_")
    return "".join(parts)


def client_id(key: str) -> str:
    """The meshlimit client counting ``key``: :data:`CLIENT_PREFIX` and the key, or its
    SHA-256 when that would be longer than a client id may be (256 UTF-8 bytes)."""
    client = CLIENT_PREFIX + key
    if len(client) * 4 <= MAX_CLIENT_BYTES or len(client.encode()) <= MAX_CLIENT_BYTES:
        return client
    return _HASHED_PREFIX + hashlib.sha256(key.encode()).hexdigest()


def hits_addends(request_hits: int, descriptor_hits: Sequence[int | None]) -> list[int]:
    """Each descriptor's hits: its own ``hits_addend`` when set, else the request's (0: 1)."""
    default = max(1, request_hits)
    return [default if hits is None else hits for hits in descriptor_hits]
