"""Rate limiting for ASGI applications (Starlette, FastAPI, any ASGI 3 app).

```python
from meshlimit import Limiter
from meshlimit.asgi import RateLimitMiddleware, key_from_header, limit

app = RateLimitMiddleware(app, Limiter(default="100/minute"), key=key_from_header("x-api-key"))
# or, with Starlette / FastAPI:
app.add_middleware(RateLimitMiddleware, limiter=limiter, key=key_from_header("x-api-key"))

@app.post("/login")
@limit("5/minute;20/hour")  # this route's own limits, per key (Starlette, FastAPI)
async def login(): ...
```

Theory of operation: for each ``http`` request that is not exempt, the key
function names the client (``None``: not limited; an ``async`` key function is
awaited), the request's policies are checked (:mod:`meshlimit.gate`: the
backend's own rule for the key, or the route's limits), and the middleware
either answers 429 itself or calls the app with a ``send`` that adds the
RateLimit headers to the app's ``http.response.start``. The headers are the
ones the node's HTTP API sends (:mod:`meshlimit.core.headers`), one named item
per policy, so a client sees one format whichever front door it came through.
``websocket`` and ``lifespan`` scopes pass through untouched.

The limiter is any backend of :mod:`meshlimit.backend`: a
:class:`meshlimit.Limiter` (run inline: a check is about a microsecond), a
:class:`meshlimit.Node` or ``meshlimit.client.AsyncClient`` (awaited), or a
blocking one, :class:`meshlimit.sync.SyncNode` or ``meshlimit.client.Client``,
which runs off the event loop in its default executor. Only ``check(key,
cost)`` is required; ``get_rule`` (when the decision does not carry its window)
fills ``w`` in ``RateLimit-Policy``, and ``set_rule`` is needed for per-route limits.

Per-route limits, two ways, each limit its own counter per key
(:mod:`meshlimit.routes`): ``routes={"POST /login": "5/minute"}`` on the
middleware matches paths, for any ASGI app; the :func:`limit` and :func:`exempt`
decorators mark Starlette and FastAPI endpoints, which the middleware finds by
asking the app's routes which one matches (``route.matches(scope)``, as the
router will). A marked route uses only its own limits; a route table entry
likewise replaces the key's own rule.

Pure ASGI: nothing here imports Starlette.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any

from meshlimit.core.rules import Rule
from meshlimit.gate import (
    ON_ERROR,
    UNAVAILABLE_BODY,
    Gate,
    PolicyCheck,
    Verdict,
    default_check,
    error_policy,
)
from meshlimit.routes import (
    RouteLimit,
    RouteMarks,
    RouteTable,
    exempt,
    limit_decorator,
    marks_of,
    path_matcher,
)

__all__ = [
    "ON_ERROR",
    "STATS",
    "RateLimitMiddleware",
    "exempt",
    "key_from_client_address",
    "key_from_header",
    "limit",
]

log = logging.getLogger("meshlimit.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
#: Names the client a request counts against; ``None`` leaves the request unlimited.
SyncKeyFunc = Callable[[Scope], str | None]
#: A key function as the middleware takes it: plain, or ``async``.
KeyFunc = SyncKeyFunc | Callable[[Scope], Awaitable[str | None]]
CostFunc = Callable[[Scope], int]

#: Names of :attr:`RateLimitMiddleware.stats`.
STATS = ("allowed", "refused", "dry_run_refused", "shadowed", "skipped", "exempt", "errors")
#: How deep route matching follows ``Mount``\ s.
_MAX_MOUNT_DEPTH = 8


# --- key functions --------------------------------------------------------------------


def key_from_header(
    name: str, *, prefix: str = "", fallback: SyncKeyFunc | None = None
) -> SyncKeyFunc:
    """The value of request header ``name`` (case-insensitive), with ``prefix`` before it.

    A request without the header (or with it empty) gets ``fallback(scope)`` when
    given, else ``None``, which leaves it *unlimited*: reject such requests in your
    authentication, or pass ``fallback=key_from_client_address()``. A value longer
    than a client id may be (256 bytes) makes the limiter raise ``ValueError``,
    which the middleware handles per its ``on_error``.
    """
    wanted = name.lower().encode("latin-1")

    def key(scope: Scope) -> str | None:
        for header, value in scope.get("headers") or ():
            if header.lower() == wanted and value:
                return prefix + value.decode("latin-1")
        return fallback(scope) if fallback is not None else None

    return key


def key_from_client_address(*, prefix: str = "") -> SyncKeyFunc:
    """The peer's IP address from the ASGI scope (``scope["client"]``), with ``prefix``.

    Behind a reverse proxy this is the proxy's address unless the server rewrites
    it from ``X-Forwarded-For`` (uvicorn's ``--proxy-headers``/``--forwarded-allow-ips``);
    ``X-Forwarded-For`` is not read here, since any client can forge it. ``None``
    (unlimited) when the server gives no client address.
    """

    def key(scope: Scope) -> str | None:
        client = scope.get("client")
        return prefix + str(client[0]) if client else None

    return key


def limit(
    limits: str | Rule | Iterable[str | Rule],
    *,
    key: KeyFunc | None = None,
    cost: int | CostFunc | None = None,
) -> Callable[[Any], Any]:
    """Give a Starlette or FastAPI endpoint its own limits, per key (its own counters).

    ``limits``: ``"5/minute"``, ``"10/second;1000/hour"`` (each its own counter, all
    must allow) or a list; stack the decorator for limits with other keys or costs.
    ``key``/``cost``: this limit's own, instead of the middleware's. Put it below the
    route decorator (``@app.get(...)`` first) or on the function given to ``Route``.
    The middleware's backend needs ``set_rule``.
    """
    return limit_decorator(limits, key, cost)


# --- the middleware -------------------------------------------------------------------


class RateLimitMiddleware:
    """Refuse requests over a client's limit with 429; report the limit on every response.

    ``app``: the ASGI app to protect. ``limiter``: see the module docstring.
    ``key``: ``(scope) -> client id | None``, plain or ``async``; default
    :func:`key_from_client_address`. ``cost``: what a request spends, an ``int`` or
    ``(scope) -> int``. ``routes``: per-route limits by path (:class:`~meshlimit.
    routes.RouteTable`). ``dry_run``: compute, count (``stats["dry_run_refused"]``),
    log and add the headers, but never refuse; try a limit on live traffic before
    enforcing it. ``exempt``: paths never limited (``"/health"`` covers ``/health``
    and ``/health/...``), or a ``(scope) -> bool`` predicate.
    ``on_error``: what a limiter or key error does to the request. ``"allow"``
    (default) lets it through without RateLimit headers, logged and counted: an
    outage of the limiter should not become an outage of the app. ``"deny"``
    answers 503 ``{"error": "rate limiter unavailable"}``: for endpoints where an
    unmetered request costs more than a refused one. ``"raise"`` lets the error
    propagate (the server answers 500). ``"open"`` and ``"closed"`` are the old
    names of the first two.

    A refusal is ``429`` with ``Retry-After`` (whole seconds, rounded up), the
    ``RateLimit`` and ``RateLimit-Policy`` headers and a JSON body
    ``{"error": "rate limited", "retry_after": SECONDS}``; when the cost can never
    fit the rule, ``Retry-After`` is left out and ``retry_after`` is -1 (as in the
    node's HTTP API).

    ``stats`` counts requests by outcome (:data:`STATS`); ``shadowed`` counts
    requests a rule in shadow mode would have refused. To read it, keep the
    instance: ``app = RateLimitMiddleware(app, ...)`` rather than Starlette's
    ``add_middleware``, which builds the instance out of reach.
    """

    def __init__(
        self,
        app: ASGIApp,
        limiter: Any,
        *,
        key: KeyFunc | None = None,
        cost: int | CostFunc = 1,
        routes: Mapping[str, str | Rule | Iterable[str | Rule]] | None = None,
        dry_run: bool = False,
        exempt: Iterable[str] | Callable[[Scope], bool] = (),
        on_error: str = "allow",
    ) -> None:
        self.on_error = error_policy(on_error)
        if not callable(cost) and (type(cost) is not int or cost < 0):
            raise ValueError(f"cost must be a non-negative int or a callable, not {cost!r}")
        self.gate = Gate(limiter)
        self.routes = RouteTable(routes or {})
        if self.routes:
            self.gate.backend.require_rules("routes=")
        self.app = app
        self.limiter = limiter
        self.key: KeyFunc = key if key is not None else key_from_client_address()
        self.cost = cost
        self.dry_run = dry_run
        if callable(exempt):
            self._is_exempt = exempt
        else:
            matches = path_matcher(exempt)
            self._is_exempt = lambda scope: matches(scope.get("path", ""))
        #: The routes last scanned for marked endpoints: (the list, its length, any marked).
        self._scanned: tuple[object, int, bool] | None = None
        #: Requests by outcome (see :data:`STATS`), for tests and metrics.
        self.stats: dict[str, int] = dict.fromkeys(STATS, 0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # websocket, lifespan: not ours to limit
            await self.app(scope, receive, send)
            return
        # Only the key function and the limiter are guarded: the app's own errors are
        # not the limiter's, and the app must never run twice.
        try:
            checks = None if self._is_exempt(scope) else await self._policies(scope)
            verdict = None if not checks else await self.gate.adecide(checks)
        except Exception:
            if self.on_error == "raise":
                raise
            await self._on_limiter_error(scope, receive, send)
            return
        if checks is None or verdict is None:
            self.stats["exempt" if checks is None else "skipped"] += 1
            await self.app(scope, receive, send)
            return
        if verdict.fallback:  # the backend could not decide and said so (no exception)
            self.stats["errors"] += 1
            if verdict.allowed:
                await self.app(scope, receive, send)
            else:
                await _send_json(send, 503, UNAVAILABLE_BODY, [])
            return
        client = checks[0].client
        if verdict.allowed:
            self._count_allowed(verdict, client, scope)
        elif self.dry_run:
            self.stats["dry_run_refused"] += 1
            log.info("dry run: would refuse client=%r path=%s", client, scope.get("path"))
        else:
            self.stats["refused"] += 1
            await _send_json(send, 429, verdict.refusal_body(), _encode(verdict.headers))
            return
        extra = _encode(verdict.passing_headers())
        await self.app(scope, receive, _adding_headers(send, extra))

    # --- the request's policies -------------------------------------------------------

    async def _policies(self, scope: Scope) -> list[PolicyCheck] | None:
        """The checks for this request: ``[]`` when no key applies, None when exempt."""
        found = self._marked_route(scope)
        if found is not None and found[1].exempt:
            return None
        limits: tuple[RouteLimit, ...] | None
        if found is not None and found[1].limits:
            limits = found[1].route_limits(found[0])
        else:
            limits = self.routes.match(scope.get("method", "GET"), scope.get("path", ""))
        if limits is None:
            key = await self._key(self.key, scope)
            return [] if key is None else [default_check(key, self._cost(self.cost, scope))]
        checks = []
        for route_limit in limits:
            key = await self._key(route_limit.key or self.key, scope)
            if key is not None:
                cost = self._cost(
                    route_limit.cost if route_limit.cost is not None else self.cost, scope
                )
                checks.append(_route_check(route_limit, key, cost))
        return checks

    @staticmethod
    async def _key(key_func: Callable[[Scope], Any], scope: Scope) -> str | None:
        key = key_func(scope)
        if inspect.isawaitable(key):
            key = await key
        if key is not None and not isinstance(key, str):
            raise TypeError(f"key function returned {key!r}, not a str or None")
        return key

    @staticmethod
    def _cost(cost: int | CostFunc, scope: Scope) -> int:
        return cost(scope) if callable(cost) else cost

    def _marked_route(self, scope: Scope) -> tuple[str, RouteMarks] | None:
        """The matching endpoint's route path and marks, when it has any (Starlette's
        routes, looked up only in apps that have a marked endpoint)."""
        routes = getattr(scope.get("app") or self.app, "routes", None)
        if not isinstance(routes, list):
            return None
        scanned = self._scanned
        if scanned is None or scanned[0] is not routes or scanned[1] != len(routes):
            any_marked = _any_marked(routes, 0)
            if any_marked:
                self.gate.backend.require_rules("a route with @limit")
            self._scanned = scanned = (routes, len(routes), any_marked)
        if not scanned[2]:
            return None
        return _match_route(routes, scope, "", 0)

    # --- outcomes ---------------------------------------------------------------------

    def _count_allowed(self, verdict: Verdict, client: str, scope: Scope) -> None:
        self.stats["allowed"] += 1
        if verdict.shadowed:
            self.stats["shadowed"] += 1
            log.info("shadow rule: would refuse client=%r path=%s", client, scope.get("path"))

    async def _on_limiter_error(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.stats["errors"] += 1
        log.warning(
            "rate limiter error, failing %s: path=%s",
            "open" if self.on_error == "allow" else "closed",
            scope.get("path"),
            exc_info=True,
        )
        if self.on_error == "allow":
            await self.app(scope, receive, send)
        else:
            await _send_json(send, 503, UNAVAILABLE_BODY, [])


# --- helpers --------------------------------------------------------------------------


def _route_check(route_limit: RouteLimit, key: str, cost: int) -> PolicyCheck:
    return PolicyCheck(route_limit.name, route_limit.client_id(key), cost, route_limit.rule)


def _any_marked(routes: list[Any], depth: int) -> bool:
    """Whether any endpoint among ``routes`` (and their mounts) carries marks."""
    for route in routes:
        if marks_of(getattr(route, "endpoint", None)) is not None:
            return True
        inner = getattr(route, "routes", None)
        if isinstance(inner, list) and depth < _MAX_MOUNT_DEPTH and _any_marked(inner, depth + 1):
            return True
    return False


def _match_route(
    routes: list[Any], scope: Scope, prefix: str, depth: int
) -> tuple[str, RouteMarks] | None:
    """The first route matching ``scope`` fully, as Starlette's router picks it: its full
    path pattern and its endpoint's marks (None if it has none, or nothing matches)."""
    for route in routes:
        matches = getattr(route, "matches", None)
        if matches is None:
            continue
        match, child = matches(scope)
        if getattr(match, "name", None) != "FULL":
            continue
        path = prefix + str(getattr(route, "path", ""))
        inner = getattr(route, "routes", None)
        if isinstance(inner, list) and depth < _MAX_MOUNT_DEPTH:  # a Mount: look inside
            found = _match_route(inner, {**scope, **child}, path, depth + 1)
            if found is not None:
                return found
            continue
        marks = marks_of(getattr(route, "endpoint", None))
        return None if marks is None else (path, marks)
    return None


def _encode(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    """Header pairs as ASGI wants them: lower-case latin-1 bytes."""
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


def _adding_headers(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
    """``send`` with ``extra`` appended to the headers of ``http.response.start``."""

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *extra]}
        await send(message)

    return wrapped


async def _send_json(
    send: Send, status: int, payload: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    start_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        *headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": start_headers})
    await send({"type": "http.response.body", "body": payload})
