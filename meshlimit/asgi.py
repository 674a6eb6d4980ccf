"""Rate limiting for ASGI applications (Starlette, FastAPI, any ASGI 3 app).

```python
from meshlimit import Limiter
from meshlimit.asgi import RateLimitMiddleware, key_from_header

app = RateLimitMiddleware(app, Limiter(default="100/minute"), key=key_from_header("x-api-key"))
# or, with Starlette / FastAPI:
app.add_middleware(RateLimitMiddleware, limiter=limiter, key=key_from_header("x-api-key"))
```

Theory of operation: for each ``http`` request that is not exempt, the key
function names the client (``None``: not limited), the limiter decides, and
the middleware either answers 429 itself or calls the app with a ``send``
that adds the RateLimit headers to the app's ``http.response.start``. The
headers are the ones the node's HTTP API sends
(:func:`meshlimit.core.headers.ratelimit_headers`), so a client sees one
format whichever front door it came through. ``websocket`` and ``lifespan``
scopes pass through untouched.

The limiter is a :class:`meshlimit.Limiter` (a check is about a microsecond
under a lock, so it runs inline on the event loop), a :class:`meshlimit.Node`,
or any object with ``check(client, cost) -> Decision`` and
``get_rule(client) -> Rule``, each either a plain or an ``async`` method
(detected once, at construction). Do not pass a :class:`meshlimit.sync.SyncNode`:
its ``check`` blocks the calling thread, which here is the event loop.

Pure ASGI: nothing here imports Starlette.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from meshlimit.core.decision import Decision
from meshlimit.core.headers import ratelimit_headers
from meshlimit.core.rules import Rule

log = logging.getLogger("meshlimit.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
#: Names the client a request counts against; ``None`` leaves the request unlimited.
KeyFunc = Callable[[Scope], str | None]
CostFunc = Callable[[Scope], int]

ON_ERROR = ("open", "closed")
#: Names of :attr:`RateLimitMiddleware.stats`.
STATS = ("allowed", "refused", "dry_run_refused", "shadowed", "skipped", "exempt", "errors")


# --- key functions --------------------------------------------------------------------


def key_from_header(name: str, *, prefix: str = "", fallback: KeyFunc | None = None) -> KeyFunc:
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


def key_from_client_address(*, prefix: str = "") -> KeyFunc:
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


# --- the middleware -------------------------------------------------------------------


class RateLimitMiddleware:
    """Refuse requests over a client's limit with 429; report the limit on every response.

    ``app``: the ASGI app to protect. ``limiter``: see the module docstring.
    ``key``: ``(scope) -> client id | None``; default :func:`key_from_client_address`.
    ``cost``: what a request spends, an ``int`` or ``(scope) -> int``.
    ``dry_run``: compute, count (``stats["dry_run_refused"]``), log and add the
    headers, but never refuse; try a limit on live traffic before enforcing it.
    ``exempt``: paths never limited (``"/health"`` covers ``/health`` and
    ``/health/...``), or a ``(scope) -> bool`` predicate.
    ``on_error``: what a limiter or key error does to the request. ``"open"``
    (default) lets it through without RateLimit headers, logged and counted: an
    outage of the limiter should not become an outage of the app. ``"closed"``
    answers 503 ``{"error": "rate limiter unavailable"}``: for endpoints where an
    unmetered request costs more than a refused one.

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
        dry_run: bool = False,
        exempt: Iterable[str] | Callable[[Scope], bool] = (),
        on_error: str = "open",
    ) -> None:
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be 'open' or 'closed', not {on_error!r}")
        if not callable(getattr(limiter, "check", None)):
            raise TypeError(f"limiter {limiter!r} has no check(client, cost) method")
        if not callable(getattr(limiter, "get_rule", None)):
            raise TypeError(f"limiter {limiter!r} has no get_rule(client) method")
        if not callable(cost) and (type(cost) is not int or cost < 0):
            raise ValueError(f"cost must be a non-negative int or a callable, not {cost!r}")
        self.app = app
        self.limiter = limiter
        self.key: KeyFunc = key if key is not None else key_from_client_address()
        self.cost = cost
        self.dry_run = dry_run
        self.on_error = on_error
        self._is_exempt = exempt if callable(exempt) else _path_matcher(exempt)
        self._async_check = inspect.iscoroutinefunction(limiter.check)
        self._async_rule = inspect.iscoroutinefunction(limiter.get_rule)
        #: Requests by outcome (see :data:`STATS`), for tests and metrics.
        self.stats: dict[str, int] = dict.fromkeys(STATS, 0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # websocket, lifespan: not ours to limit
            await self.app(scope, receive, send)
            return
        if self._is_exempt(scope):
            self.stats["exempt"] += 1
            await self.app(scope, receive, send)
            return
        # Only the key function and the limiter are guarded: the app's own errors are
        # not the limiter's, and the app must never run twice.
        try:
            client = self.key(scope)
            decided = None if client is None else await self._decide(client, scope)
        except Exception:
            await self._on_limiter_error(scope, receive, send)
            return
        if client is None or decided is None:
            self.stats["skipped"] += 1
            await self.app(scope, receive, send)
            return
        decision, rule = decided
        headers = ratelimit_headers(decision, rule)
        if decision.allowed:
            self._count_allowed(decision, client, scope)
        elif self.dry_run:
            self.stats["dry_run_refused"] += 1
            log.info("dry run: would refuse client=%r path=%s", client, scope.get("path"))
        else:
            self.stats["refused"] += 1
            await _send_refusal(send, decision, headers)
            return
        # Retry-After has no meaning on a response that went through (dry run).
        headers.pop("Retry-After", None)
        await self.app(scope, receive, _adding_headers(send, _encode(headers)))

    async def _decide(self, client: str, scope: Scope) -> tuple[Decision, Rule]:
        cost = self.cost(scope) if callable(self.cost) else self.cost
        if self._async_check:
            decision = await self.limiter.check(client, cost)
        else:
            decision = self.limiter.check(client, cost)
        if self._async_rule:
            rule = await self.limiter.get_rule(client)
        else:
            rule = self.limiter.get_rule(client)
        return decision, rule

    def _count_allowed(self, decision: Decision, client: str, scope: Scope) -> None:
        self.stats["allowed"] += 1
        # getattr: ``shadowed`` is set by rules in shadow mode; other limiters may lack it.
        if getattr(decision, "shadowed", False):
            self.stats["shadowed"] += 1
            log.info("shadow rule: would refuse client=%r path=%s", client, scope.get("path"))

    async def _on_limiter_error(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.stats["errors"] += 1
        log.warning(
            "rate limiter error, failing %s: path=%s",
            self.on_error,
            scope.get("path"),
            exc_info=True,
        )
        if self.on_error == "open":
            await self.app(scope, receive, send)
        else:
            await _send_json(send, 503, {"error": "rate limiter unavailable"}, [])


# --- helpers --------------------------------------------------------------------------


def _path_matcher(paths: Iterable[str]) -> Callable[[Scope], bool]:
    """A predicate true for each path in ``paths`` and anything below it."""
    exact = frozenset(p.rstrip("/") or "/" for p in paths)
    prefixes = tuple(p + "/" for p in exact if p != "/")

    def is_exempt(scope: Scope) -> bool:
        path = scope.get("path", "")
        return path in exact or path.startswith(prefixes)

    return is_exempt


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


async def _send_refusal(send: Send, decision: Decision, headers: dict[str, str]) -> None:
    retry = -1 if math.isinf(decision.retry_after) else math.ceil(decision.retry_after)
    body = {"error": "rate limited", "retry_after": retry}
    await _send_json(send, 429, body, _encode(headers))


async def _send_json(
    send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]]
) -> None:
    payload = json.dumps(body).encode()
    start_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        *headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": start_headers})
    await send({"type": "http.response.body", "body": payload})
