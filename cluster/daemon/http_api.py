"""The HTTP front-end of a node: JSON over aiohttp, for callers not written in Python.

Handlers dispatch; the helpers below them compute (body validation, header
values, status snapshots). Every body is bounded (``max_body_bytes``, else
413), validated field by field, and refused with a 400 and
``{"error": "..."}`` naming what is wrong. Errors of routing (404, 405) and
anything unexpected (500) are JSON too; nothing a caller sends escapes a
handler as an exception, so no request can take the node down.

The daemon serves the app with ``http_check.HttpRunner``, which answers
``POST /v1/check`` ahead of aiohttp's router and middleware with the same bytes
(``decide_check`` is the route's work for both).

A check answers 200 whether it was allowed or refused: the decision is the
payload and the caller decides what to do with it (a 429 is the caller's to
send to its own clients).

Probes: ``GET /healthz`` is liveness (200 while the process serves, joined or
not); ``GET /readyz`` is readiness: 200 once the node has joined its cluster (or
at once without seeds), 503 with ``{"status": "not ready", "reason": ...}``
before and while draining, so load balancers send checks to nodes that know the
ring (a node that does not decides from its degraded quota).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder

from meshlimit.cluster.daemon.metrics import Family, Histogram, LatencyHistogram, node_families
from meshlimit.cluster.runtime import Runtime
from meshlimit.core.decision import PATHS, Decision, capped
from meshlimit.core.headers import ratelimit_headers
from meshlimit.core.registry import CLIENT_PREFIX, MAX_CLIENT_BYTES, RESET_PREFIX, check_tier_name
from meshlimit.core.rules import MAX_COUNT, Rule, parse_rule

log = logging.getLogger("meshlimit.http")

#: Fields a check body may carry; anything else is refused (a typo must not pass silently).
CHECK_FIELDS = frozenset({"client", "cost"})
RULE_FIELDS = frozenset({"rule"})
#: The policy name in the RateLimit headers: a node applies one rule per client.

RUNTIME: web.AppKey[Runtime] = web.AppKey("runtime", Runtime)
MAX_BODY: web.AppKey[int] = web.AppKey("max_body_bytes", int)
_METRICS: web.AppKey[CollectorRegistry] = web.AppKey("metrics", CollectorRegistry)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BadRequest(ValueError):
    """A caller's mistake: answered with 400 and the message."""


def make_app(
    runtime: Runtime,
    *,
    max_body_bytes: int = 64 * 1024,
    metrics: CollectorRegistry | None = None,
) -> web.Application:
    """The node's HTTP API over a started :class:`Runtime`.

    ``metrics`` is the registry ``GET /metrics`` exposes; by default one with the
    node's collector (:func:`metrics_registry`).
    """
    assert max_body_bytes > 0
    app = web.Application(client_max_size=max_body_bytes, middlewares=[_json_errors])
    app[RUNTIME] = runtime
    app[MAX_BODY] = max_body_bytes
    app[_METRICS] = metrics if metrics is not None else metrics_registry(runtime)
    app.router.add_post("/v1/check", _check)
    # ``.+``: client ids may hold ``/`` (tenant paths), sent raw or as %2F.
    app.router.add_get("/v1/rules/{client:.+}", _get_rule)
    app.router.add_put("/v1/rules/{client:.+}", _put_rule)
    app.router.add_delete("/v1/rules/{client:.+}", _delete_rule)
    app.router.add_get("/v1/owner/{client:.+}", _owner)
    app.router.add_delete("/v1/counters/{client:.+}", _reset_counters)
    app.router.add_get("/v1/cluster", _cluster)
    app.router.add_delete("/v1/members/{node}", _forget_member)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    return app


# --- handlers -------------------------------------------------------------------------


async def _check(request: web.Request) -> web.Response:
    decision, rule = await decide_check(request.app[RUNTIME], request)
    headers = ratelimit_headers(decision, rule)
    headers["Content-Type"] = JSON_TYPE  # what ``json_response`` sets
    return web.Response(body=decision_body(decision), headers=headers)


async def decide_check(runtime: Runtime, request: web.BaseRequest) -> tuple[Decision, Rule | None]:
    """A check request's decision (capped) and this node's rule for its client: the route's
    work, shared with its fast path (``http_check.py``). Raises :class:`BadRequest` (400) or
    aiohttp's ``HTTPRequestEntityTooLarge`` (413)."""
    raw = await request.read()  # raises HTTPRequestEntityTooLarge past client_max_size
    common = _CHECK_BODY.fullmatch(raw)
    if common is not None:  # ``{"client": "...", "cost": N}``: what json.loads would give
        client = common[1].decode("ascii")
        cost = 1 if common[2] is None else int(common[2])
    else:
        body = _json_body(raw)
        if not body.keys() <= CHECK_FIELDS:
            _refuse_unknown(body, CHECK_FIELDS)
        client = body.get("client")
        cost = body.get("cost", 1)
    if type(client) is not str or not client.isascii() or not 0 < len(client) <= MAX_CLIENT_BYTES:
        client = _client(client, "'client'")  # the full checks, and their messages
    if type(cost) is not int or not 0 <= cost <= MAX_COUNT:
        cost = _cost(cost)
    try:
        decided = runtime.check_now(client, cost)  # no coroutine for a check decided here
        decision = capped(await decided if isinstance(decided, asyncio.Future) else decided)
    except ValueError as error:  # validated above; the node has the last word
        raise BadRequest(str(error)) from None
    # ``q`` comes from the decision (the owner's rule); the window from this node's view
    # of the rule, which agrees with the owner's once a rule change has spread.
    return decision, runtime.node.rule_for(client)


#: The common check body, read without the json module: a client id of printable ASCII with
#: no escapes, then an optional cost that is a JSON integer, JSON white space anywhere
#: between. Anything else (escapes, other fields or orders, floats) goes to ``json.loads``.
_CHECK_BODY = re.compile(
    rb'[ \t\n\r]*\{[ \t\n\r]*"client"[ \t\n\r]*:[ \t\n\r]*"([\x20\x21\x23-\x5b\x5d-\x7e]*)"'
    rb'[ \t\n\r]*(?:,[ \t\n\r]*"cost"[ \t\n\r]*:[ \t\n\r]*(0|[1-9][0-9]{0,17})[ \t\n\r]*)?\}[ \t\n\r]*'
)


async def _get_rule(request: web.Request) -> web.Response:
    client = _path_client(request)
    return web.json_response(rule_json(request.app[RUNTIME], client))


async def _put_rule(request: web.Request) -> web.Response:
    client = _path_client(request)
    body = await _json_object(request)
    _refuse_unknown(body, RULE_FIELDS)
    value = _rule_value(body.get("rule"))
    runtime = request.app[RUNTIME]
    if isinstance(value, str) and value[1:] not in runtime.node.registry.tiers():
        raise BadRequest(f"no tier {value[1:]!r} is defined on this node (a typo?)")
    try:
        runtime.set_rule(CLIENT_PREFIX + client, value)
    except ValueError as error:  # e.g. the registry is full
        raise BadRequest(str(error)) from None
    return web.json_response(rule_json(runtime, client))


async def _delete_rule(request: web.Request) -> web.Response:
    client = _path_client(request)
    runtime = request.app[RUNTIME]
    runtime.set_rule(CLIENT_PREFIX + client, None)
    return web.json_response(rule_json(runtime, client))


async def _reset_counters(request: web.Request) -> web.Response:
    """Forget a client's counts cluster-wide: a stamped reset entry that spreads like a
    rule; gossip from before it cannot bring the old counts back (docs/design.md)."""
    client = _path_client(request)
    request.app[RUNTIME].set_rule(RESET_PREFIX + client, None)
    return web.json_response({"client": client, "reset": True})


async def _owner(request: web.Request) -> web.Response:
    client = _path_client(request)
    return web.json_response({"client": client, "owner": request.app[RUNTIME].node.owner(client)})


async def _cluster(request: web.Request) -> web.Response:
    return web.json_response(cluster_json(request.app[RUNTIME]))


#: What ``Node.forget`` answers, as ``(HTTP status, message)``; ``{}`` is the node id.
_FORGET_ANSWERS = {
    "forgotten": (200, "{} forgotten: it no longer counts toward the majority"),
    "gone": (200, "{} had already left or been forgotten"),
    "unknown": (404, "no member {} is known here"),
    "alive": (409, "{} is alive: stop it before forgetting it"),
    "self": (409, "{} is this node: stop it, or forget it from another member"),
}


async def _forget_member(request: web.Request) -> web.Response:
    """An operator removes a member gone for good (``meshlimit ctl forget NODE``): it stops
    counting toward the majority, here and, as the news spreads, on every member
    (``docs/design.md``, "Degraded mode and the majority rule")."""
    node_id = request.match_info["node"]
    if len(node_id.encode()) > 256:
        return json_error(400, "node id longer than 256 bytes")
    runtime = request.app[RUNTIME]
    result = runtime.node.forget(node_id, now_ns=time.monotonic_ns())
    status, message = _FORGET_ANSWERS[result]
    if status != 200:
        return json_error(status, message.format(node_id))
    body = {"node": node_id, "result": result, "message": message.format(node_id)}
    return web.json_response(body)


async def _healthz(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    node = runtime.node
    return web.json_response(
        {
            "status": "ok",
            "node": node.node_id,
            "members": len(node.membership.alive_nodes()),
            "ready": runtime.ready,
        }
    )


async def _readyz(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    ready, reason = runtime.readiness()
    body = {
        "status": "ready" if ready else "not ready",
        "reason": reason,
        "node": runtime.node.node_id,
        "members": len(runtime.node.membership.alive_nodes()),
    }
    return web.json_response(body, status=200 if ready else 503)


async def _metrics(request: web.Request) -> web.Response:
    # Prometheus text by default; OpenMetrics when the scraper asks for it.
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return web.Response(body=encoder(request.app[_METRICS]), headers={"Content-Type": content_type})


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every refusal is JSON: ours (400), aiohttp's (404, 405, 413) and the unexpected (500)."""
    try:
        return await handler(request)
    except BadRequest as error:
        return json_error(400, str(error))
    except web.HTTPRequestEntityTooLarge:
        return json_error(413, f"request body larger than {request.app[MAX_BODY]} bytes")
    except web.HTTPException as error:
        if error.status < 400:
            raise
        headers = {"Allow": error.headers["Allow"]} if "Allow" in error.headers else None
        return json_error(error.status, error.reason, headers)
    except Exception:
        log.exception("unexpected error method=%s path=%s", request.method, request.path)
        return json_error(500, "internal error (logged by the node)")


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """A refusal: ``{"error": message}`` with ``status``."""
    return web.json_response({"error": message}, status=status, headers=headers)


# --- validating input -----------------------------------------------------------------


async def _json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object; 413 past the size bound, 400 for anything else."""
    return _json_body(await request.read())  # raises HTTPRequestEntityTooLarge past the bound


def _json_body(raw: bytes) -> dict[str, Any]:
    """A body as a JSON object; 400 for anything else."""
    if not raw.strip():
        raise BadRequest("request body is empty; expected a JSON object")
    try:
        body = json.loads(raw)
    except UnicodeDecodeError:
        raise BadRequest("request body is not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise BadRequest(f"request body is not JSON: {error}") from None
    except RecursionError:
        raise BadRequest("request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise BadRequest(f"request body must be a JSON object, not {_json_type(body)}")
    return body


def _refuse_unknown(body: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        names = ", ".join(repr(u) for u in unknown)
        raise BadRequest(f"unknown field {names}; expected {', '.join(sorted(allowed))}")


def _client(value: Any, what: str) -> str:
    """A client id: a non-empty string of at most 256 UTF-8 bytes."""
    if value is None:
        raise BadRequest(f"missing {what}: the client id to check")
    if not isinstance(value, str):
        raise BadRequest(f"{what} must be a string, not {_json_type(value)}")
    if not value:
        raise BadRequest(f"{what} must not be empty")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate from a \ud800 escape
        raise BadRequest(f"{what} is not valid Unicode text") from None
    if size > MAX_CLIENT_BYTES:
        raise BadRequest(f"{what} is {size} bytes long; the limit is {MAX_CLIENT_BYTES}")
    return value


def _path_client(request: web.Request) -> str:
    return _client(request.match_info["client"], "client id in the path")


def _cost(value: Any) -> int:
    # bool is an int subclass in Python: ``true`` must not pass as cost 1.
    if type(value) is not int:
        shown = json.dumps(value)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        raise BadRequest(
            f"'cost' must be a non-negative integer, not {_json_type(value)} ({shown})"
        )
    if value < 0:
        raise BadRequest(f"'cost' must be a non-negative integer, got {value}")
    if value > MAX_COUNT:
        raise BadRequest(f"'cost' must be at most {MAX_COUNT}, got {value}")
    return value


def _rule_value(value: Any) -> Rule | str:
    """A rule in notation (``100/minute``) or a tier mapping (``@gold``)."""
    if value is None:
        raise BadRequest('missing \'rule\': a rule such as "100/minute" or a tier as "@gold"')
    if not isinstance(value, str):
        raise BadRequest(f"'rule' must be a string, not {_json_type(value)}")
    try:
        if value.startswith("@"):
            check_tier_name(value[1:])
            return value
        return parse_rule(value)
    except ValueError as error:
        raise BadRequest(str(error)) from None


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a decimal number", str: "a string"}
    names |= {list: "an array", dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


# --- computing answers ----------------------------------------------------------------


def decision_json(decision: Decision) -> dict[str, Any]:
    """A decision as the API's JSON object; ``retry_after`` is -1 when the cost never fits,
    ``remaining`` at most the limit."""
    decision = capped(decision)
    retry = -1 if math.isinf(decision.retry_after) else round(decision.retry_after, 3)
    return {
        "allowed": decision.allowed,
        "limit": decision.limit,
        "remaining": decision.remaining,
        "reset_after": round(decision.reset_after, 3),
        "retry_after": retry,
        "path": decision.path,
    }


def decision_body(decision: Decision) -> bytes:
    """``json.dumps(decision_json(decision))``, encoded, by one format: the check's reply."""
    decision = capped(decision)
    retry = -1 if math.isinf(decision.retry_after) else round(decision.retry_after, 3)
    path = _PATHS_JSON.get(decision.path) or json.dumps(decision.path)
    return _DECISION_BODY % (
        b"true" if decision.allowed else b"false",
        decision.limit,
        decision.remaining,
        repr(round(decision.reset_after, 3)).encode(),
        repr(retry).encode(),
        path.encode(),
    )


_DECISION_BODY = (
    b'{"allowed": %b, "limit": %d, "remaining": %d, "reset_after": %b, "retry_after": %b, '
    b'"path": %b}'
)
_PATHS_JSON = {path: json.dumps(path) for path in PATHS}
JSON_TYPE = "application/json; charset=utf-8"


def rule_json(runtime: Runtime, client: str) -> dict[str, Any]:
    """The rule in force for ``client`` and where it comes from."""
    node = runtime.node
    registry = node.registry
    value = registry.client_value(client)
    if isinstance(value, Rule):
        source = "client"
    elif isinstance(value, str) and value[1:] in registry.tiers():
        source = f"tier:{value[1:]}"
    else:  # no override, or a tier that is not (or no longer) defined
        source = "default"
    return {"client": client, "rule": str(node.rule_for(client)), "source": source}


def cluster_json(runtime: Runtime) -> dict[str, Any]:
    """This node's view of the cluster: members, ring shares, clock offsets, counters."""
    node = runtime.node
    membership = node.membership
    registry = node.registry
    rtts = membership.rtts()
    members = [
        {
            "node": name,
            "addr": f"{addr[0]}:{addr[1]}",
            "state": state,
            "incarnation": incarnation,
            "rtt_ms": round(rtts[name] / 1e6, 3) if name in rtts else None,
        }
        for name, addr, state, incarnation in sorted(node.members())
    ]
    host, port = node.config.addr
    ready, readiness = runtime.readiness()
    return {
        "node": node.node_id,
        "addr": f"{host}:{port}",
        "mode": node.config.mode,
        "ready": ready,
        "readiness": readiness,
        "members": members,
        "ring": {name: round(share, 6) for name, share in node.ring.shares().items()},
        "clock_offsets_ms": {
            name: round(ns / 1e6, 3) for name, ns in sorted(membership.clock_offsets().items())
        },
        "rules": {
            "entries": registry.entry_count(),
            "clients": len(registry.overrides()),
            "tiers": len(registry.tiers()),
            "default": str(registry.default),
        },
        "pending_forwards": node.pending_count(),
        "stats": _counters(node.stats, membership.stats),
        "dropped": _counters(node.dropped, membership.dropped),
    }


def _counters(node: dict[str, int], membership: dict[str, int]) -> dict[str, int]:
    """The node's counters and the membership layer's, the latter prefixed ``swim_``."""
    merged = dict(node)
    merged.update((f"swim_{name}", count) for name, count in membership.items())
    return dict(sorted(merged.items()))


# --- metrics --------------------------------------------------------------------------


class NodeCollector:
    """A ``prometheus_client`` collector: the node's metric families, read at scrape time
    (:func:`meshlimit.cluster.metrics.node_families`); nothing is recorded per check."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        reloads: Mapping[str, int] | None = None,
        forward_latency: LatencyHistogram | None = None,
    ) -> None:
        self.runtime = runtime
        self.reloads = reloads
        self.forward_latency = forward_latency

    def collect(self) -> Iterator[Metric]:
        """Every family, computed now."""
        families = node_families(
            self.runtime.node, reloads=self.reloads, forward_latency=self.forward_latency
        )
        return map(prometheus_family, families)


def prometheus_family(family: Family) -> Metric:
    """A :class:`~meshlimit.cluster.metrics.Family` as a ``prometheus_client`` family."""
    labels = list(family.labels)
    if family.kind == "histogram":
        histogram = HistogramMetricFamily(family.name, family.doc, labels=labels)
        for values, value in family.samples:
            assert isinstance(value, Histogram)
            buckets = [(le, float(count)) for le, count in value.buckets]
            histogram.add_metric(list(values), buckets, value.sum)
        return histogram
    kind = CounterMetricFamily if family.kind == "counter" else GaugeMetricFamily
    metric = kind(family.name, family.doc, labels=labels)
    for values, value in family.samples:
        assert not isinstance(value, Histogram)
        metric.add_metric(list(values), value)
    return metric


def metrics_registry(
    runtime: Runtime, *, reloads: Mapping[str, int] | None = None, process: bool = True
) -> CollectorRegistry:
    """A registry with the node's collector and, with ``process``, the standard process,
    GC and platform collectors. When the runtime has an ``on_forwarded`` hook, a
    forward-latency histogram is attached to it and exposed."""
    latency = None
    if hasattr(runtime, "on_forwarded"):
        latency = LatencyHistogram()
        runtime.on_forwarded = latency.observe
    registry = CollectorRegistry()
    registry.register(NodeCollector(runtime, reloads=reloads, forward_latency=latency))
    if process:
        ProcessCollector(registry=registry)
        GCCollector(registry=registry)
        PlatformCollector(registry=registry)
    return registry
