"""``envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit``: the servicer.

One ``ShouldRateLimit`` call (envoy ratelimit's ``shouldRateLimitWorker``):

1. An empty domain or descriptor list, a limit override of unit UNKNOWN, or
   more than ``max_descriptors`` descriptors is ``INVALID_ARGUMENT`` (a
   descriptor without entries matches no rule, as in envoy ratelimit).
2. The descriptors resolve to limits with the config in force
   (``matcher.limits_to_check``); unknown domains and unmatched descriptors
   are OK without ``current_limit``, unlimited ones OK with ``limit_remaining``
   4294967295.
3. Each limit is counted cluster-wide, as ``CL.THROTTLE`` counts its keys: the
   descriptor's cache key is a meshlimit client (``matcher.client_id``) whose
   rule (``counting.counting_rule``: ``N+1`` per unit, fixed window) this node
   writes to the rule registry as a per-call entry, renewed while in use; then an
   ordinary cluster check of cost ``hits`` runs, so the owner decides (strict
   mode) or this node (local mode), degraded when the owner is out of reach. All
   descriptors' checks start at once; forwarded ones travel in one batch.
4. Each decision becomes Envoy's status (``counting.outcome``): ``OVER_LIMIT``
   unless the rule is in ``shadow_mode``, ``current_limit``, ``limit_remaining``
   and ``duration_until_reset`` (the time to the window's end, whole seconds,
   as envoy ratelimit computes it), and the statistics (``stats.py``).
   ``overall_code`` is OVER_LIMIT if any status is.

A check answered under another limit than the rule written (the owner has not
received it yet) rewrites it and asks once more after ``rule_spread_wait_s``;
if the owner still disagrees, or is overloaded, the call fails ``UNAVAILABLE``
so that Envoy applies its ``failure_mode_deny``. A call never raises anything
else: a surprise is logged and answered ``INTERNAL``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from meshlimit.cluster.daemon.eager import start_eagerly
from meshlimit.cluster.daemon.rls.counting import (
    ALGORITHMS,
    Outcome,
    check_cost,
    counting_rule,
    outcome,
    seconds_until_reset,
    stats_delta,
)
from meshlimit.cluster.daemon.rls.loader import ConfigLoader
from meshlimit.cluster.daemon.rls.matcher import (
    UNLIMITED_REMAINING,
    MatchedLimit,
    cache_key,
    client_id,
    hits_addends,
    limits_to_check,
)
from meshlimit.cluster.daemon.rls.stats import DescriptorStats
from meshlimit.cluster.daemon.rls.yaml_config import UNIT_SECONDS
from meshlimit.core.decision import Decision
from meshlimit.core.registry import CLIENT_PREFIX
from meshlimit.core.rules import NS_PER_MS, Rule

if TYPE_CHECKING:
    from meshlimit.cluster.runtime import Runtime

log = logging.getLogger("meshlimit.envoy")

_RESPONSE = rls_pb2.RateLimitResponse
_OK = _RESPONSE.OK
_OVER_LIMIT = _RESPONSE.OVER_LIMIT
_UNIT_BY_NUMBER: dict[int, str] = {
    number: name for name, number in _RESPONSE.RateLimit.Unit.items() if name in UNIT_SECONDS
}
_UNIT_NUMBER: dict[str, int] = {name: number for number, name in _UNIT_BY_NUMBER.items()}
#: A counted descriptor: its outcome, the seconds to its window's end, and whether the node
#: is in shadow mode (``NodeConfig.shadow``: every refusal reported, none enforced).
Counted = tuple[Outcome, float, bool]
#: A request's descriptors: ``(entries, limit override)`` pairs.
Descriptors = list[tuple[tuple[tuple[str, str], ...], tuple[int, str] | None]]


@dataclass(frozen=True, slots=True)
class RlsConfig:
    """The Envoy front-end's settings and bounds."""

    algorithm: str = "fixed_window"
    """How descriptors' windows are kept: ``fixed_window`` (envoy ratelimit's) or
    ``sliding_window`` (meshlimit's opt-in; see ``docs/envoy.md``)."""
    max_descriptors: int = 64
    """Most descriptors in one request; more is INVALID_ARGUMENT. Why 64: Envoy sends one
    per matching rate limit action, a handful."""
    max_request_bytes: int = 64 * 1024
    """Largest request message accepted (gRPC refuses larger ones)."""
    max_concurrent_calls: int = 4096
    """Calls served at once; gRPC answers RESOURCE_EXHAUSTED beyond. Why 4,096: Envoy's
    rate limit cluster opens a few HTTP/2 connections of up to 1,024 streams each."""
    registry_share: int = 500_000
    """Most per-call rules a node keeps (shared with RESP's CL.THROTTLE keys); past it the
    one closest to expiry is evicted. Why: as ``RespConfig.throttle_registry_share``."""
    rule_spread_wait_s: float = 0.005
    """A check answered under another rule is retried once after this wait. Why 5 ms: a
    LAN round trip many times over, well inside Envoy's 20 ms filter timeout."""

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}")
        if min(self.max_descriptors, self.max_request_bytes, self.max_concurrent_calls) < 1:
            raise ValueError("the bounds must be at least 1")
        if self.registry_share < 1 or self.rule_spread_wait_s < 0:
            raise ValueError("registry_share must be positive, rule_spread_wait_s not negative")


class RequestError(ValueError):
    """A request answered with a gRPC error: ``code`` and the message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class RateLimitServicer(rls_pb2_grpc.RateLimitServiceServicer):
    """``ShouldRateLimit`` over a started runtime and the config in ``loader``."""

    def __init__(
        self,
        runtime: Runtime,
        loader: ConfigLoader,
        stats: DescriptorStats,
        config: RlsConfig | None = None,
        *,
        wall_s: Any = time.time,
    ) -> None:
        self.runtime = runtime
        self.loader = loader
        self.stats = stats
        self.config = config or RlsConfig()
        self.wall_s = wall_s

    async def ShouldRateLimit(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC's name
        """One call: the response, or the call aborted with a gRPC status."""
        try:
            response = await self.should_rate_limit(request)
        except RequestError as error:
            self.stats.service[error.code.name.lower()] += 1
            await context.abort(error.code, str(error))
        except Exception:
            log.exception("ShouldRateLimit failed", extra={"domain": request.domain})
            self.stats.service["internal"] += 1
            await context.abort(grpc.StatusCode.INTERNAL, "internal error (logged by the node)")
        self.stats.service["over_limit" if response.overall_code == _OVER_LIMIT else "ok"] += 1
        return response

    async def should_rate_limit(self, request: Any) -> Any:
        """The response to ``request``; :class:`RequestError` for a bad one."""
        domain = request.domain
        if not domain:
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT, "rate limit domain must not be empty"
            )
        if not request.descriptors:
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT, "rate limit descriptor list must not be empty"
            )
        if len(request.descriptors) > self.config.max_descriptors:
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{len(request.descriptors)} descriptors; at most {self.config.max_descriptors}",
            )
        descriptors, hits = _read_descriptors(request)
        config = self.loader.config
        if domain not in config.domains:
            for _ in descriptors:
                self.stats.domain_not_found(domain)
        limits, unlimited = limits_to_check(config, domain, descriptors)
        pending: list[Counted | Awaitable[Counted] | None] = []
        for (entries, _), limit, count in zip(descriptors, limits, hits, strict=True):
            if limit is None:
                pending.append(None)
                continue
            rule = counting_rule(limit.requests_per_unit, limit.unit, self.config.algorithm)
            client = client_id(cache_key(domain, entries, limit.share_patterns))
            self._ensure_rule(client, rule)
            pending.append(start_eagerly(self._count(client, rule, limit, count)))
        counted = await _settle(pending)
        response = _RESPONSE(overall_code=_OK)
        global_shadow = False
        now_s = int(self.wall_s())
        for index, item in enumerate(counted):
            status = response.statuses.add(code=_OK)
            limit = limits[index]
            if limit is None or item is None:
                if unlimited[index]:
                    status.limit_remaining = UNLIMITED_REMAINING
                continue
            result, reset_after_s, shadowed = item
            self._fill(status, limit, result, reset_after_s, now_s)
            global_shadow = global_shadow or shadowed
            delta = stats_delta(limit.requests_per_unit, hits[index], result, limit.shadow_mode)
            self.stats.add(domain, limit.stats_key, delta)
            if status.code == _OVER_LIMIT:
                response.overall_code = _OVER_LIMIT
        if global_shadow and response.overall_code == _OVER_LIMIT:
            # envoy ratelimit's global SHADOW_MODE: the statuses say what would have been
            # limited, the overall code lets the request through.
            response.overall_code = _OK
            self.stats.service["global_shadow_mode"] += 1
        return response

    def _fill(
        self, status: Any, limit: MatchedLimit, result: Outcome, reset_after_s: float, now_s: int
    ) -> None:
        """A descriptor's status from its outcome (shadow mode answers OK)."""
        if result.over and not limit.shadow_mode:
            status.code = _OVER_LIMIT
        current = status.current_limit
        current.requests_per_unit = limit.requests_per_unit
        current.unit = _UNIT_NUMBER[limit.unit]
        if limit.name:
            current.name = limit.name
        status.limit_remaining = result.remaining
        if self.config.algorithm == "fixed_window":
            status.duration_until_reset.seconds = seconds_until_reset(limit.unit, now_s)
        else:
            status.duration_until_reset.seconds = max(1, math.ceil(reset_after_s))

    async def _count(self, client: str, rule: Rule, limit: MatchedLimit, hits: int) -> Counted:
        """Count ``hits`` for ``client`` in the cluster: Envoy's outcome, and the seconds
        to the window's end as the deciding node saw them."""
        cost = check_cost(hits, rule)
        decision = await self._check(client, cost, rule)
        allowed = decision.allowed and not decision.shadowed
        result = outcome(
            limit.requests_per_unit, hits, cost, allowed, decision.remaining, rule.limit
        )
        if result.saturate:
            # Refused, so not counted: mark the window over, as Envoy's counter passed N.
            self.stats.service["over_limit_marked"] += 1
            await self._check(client, result.saturate, rule)
        return result, decision.reset_after, decision.shadowed

    async def _check(self, client: str, cost: int, rule: Rule) -> Decision:
        decision = await self.runtime.check(client, cost)
        if decision.path == "overloaded":
            raise RequestError(grpc.StatusCode.UNAVAILABLE, "the descriptor's owner is overloaded")
        if decision.limit != rule.limit:
            # The owner decided under another rule: ours has not reached it, or it lost
            # it. Send it again, give it time to arrive, and ask once more.
            self.stats.service["rule_mismatch"] += 1
            self._write_rule(client, rule)
            await asyncio.sleep(self.config.rule_spread_wait_s)
            decision = await self.runtime.check(client, cost)
            if decision.limit != rule.limit:
                raise RequestError(
                    grpc.StatusCode.UNAVAILABLE,
                    "the descriptor's rule is still spreading to its owner; retry",
                )
        return decision

    def _ensure_rule(self, client: str, rule: Rule) -> None:
        """Write ``client``'s per-call rule unless the registry holds it, fresh enough."""
        registry = self.runtime.node.registry
        if not registry.call_needs_write(client, rule, now_ms=time.time_ns() // NS_PER_MS):
            return
        renewal = registry.client_value(client) == rule
        registry.max_calls = self.config.registry_share
        self._write_rule(client, rule)
        self.stats.service["rule_renewals" if renewal else "rule_writes"] += 1

    def _write_rule(self, client: str, rule: Rule) -> None:
        self.runtime.set_rule(CLIENT_PREFIX + client, rule)


async def _settle(pending: list[Counted | Awaitable[Counted] | None]) -> list[Counted | None]:
    """Every descriptor's count, once all have settled; the first error is raised after
    all are done, so that none is left running unobserved."""
    waiting = [item for item in pending if item is not None and not isinstance(item, tuple)]
    if not waiting:
        return pending  # type: ignore[return-value] # all decided at once
    settled = iter(await asyncio.gather(*waiting, return_exceptions=True))
    counted: list[Counted | None] = []
    error: BaseException | None = None
    for item in pending:
        if item is not None and not isinstance(item, tuple):
            result = next(settled)
            if isinstance(result, BaseException):
                error = error or result
                item = None
            else:
                item = result
        counted.append(item)
    if error is not None:
        raise error
    return counted


def _read_descriptors(request: Any) -> tuple[Descriptors, list[int]]:
    """The request's descriptors as plain tuples, and each one's hits."""
    descriptors: Descriptors = []
    own_hits: list[int | None] = []
    for index, descriptor in enumerate(request.descriptors):
        entries = tuple((entry.key, entry.value) for entry in descriptor.entries)
        override = None
        if descriptor.HasField("limit"):
            unit = _UNIT_BY_NUMBER.get(descriptor.limit.unit)
            if unit is None:
                raise RequestError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"descriptor {index}: the limit override's unit ({descriptor.limit.unit}) "
                    f"is not one of {', '.join(UNIT_SECONDS)}",
                )
            override = (descriptor.limit.requests_per_unit, unit)
        descriptors.append((entries, override))
        own_hits.append(
            descriptor.hits_addend.value if descriptor.HasField("hits_addend") else None
        )
    return descriptors, hits_addends(request.hits_addend, own_hits)
