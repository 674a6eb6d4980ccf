"""Rate limiting for WSGI applications (any WSGI app: Flask, Django, Pyramid, Bottle).

```python
from meshlimit.client import Client
from meshlimit.wsgi import RateLimitMiddleware, key_from_header

app = RateLimitMiddleware(app, limiter=Client("127.0.0.1:6380"), key=key_from_header("x-api-key"))
```

The WSGI twin of :mod:`meshlimit.asgi`, with the same options, headers, refusal
and statistics. Theory of operation: for each request that is not exempt, the
key function names the client (``None``: not limited), the request's policies
(the backend's rule for the key, or a ``routes`` entry's limits) are checked by
a :class:`~meshlimit.gate.Gate` in the request's thread, and the middleware
either answers 429 itself or calls the app with a ``start_response`` that adds
the RateLimit headers.

The limiter must answer in the calling thread: a :class:`meshlimit.Limiter`,
a :class:`meshlimit.sync.SyncNode` or a ``meshlimit.client.Client``, or any
object with a plain ``check(key, cost)`` (:mod:`meshlimit.backend`). An async
one (``Node``, ``AsyncClient``) is refused at construction: no loop runs here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
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
from meshlimit.routes import RouteTable, path_matcher

__all__ = ["ON_ERROR", "STATS", "RateLimitMiddleware", "key_from_client_address", "key_from_header"]

log = logging.getLogger("meshlimit.wsgi")

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]
#: Names the client a request counts against; ``None`` leaves the request unlimited.
KeyFunc = Callable[[Environ], str | None]
CostFunc = Callable[[Environ], int]

#: Names of :attr:`RateLimitMiddleware.stats` (as in :mod:`meshlimit.asgi`).
STATS = ("allowed", "refused", "dry_run_refused", "shadowed", "skipped", "exempt", "errors")


def key_from_header(name: str, *, prefix: str = "", fallback: KeyFunc | None = None) -> KeyFunc:
    """The value of request header ``name`` (case-insensitive), with ``prefix`` before it.

    A request without the header (or with it empty) gets ``fallback(environ)`` when
    given, else ``None``, which leaves it *unlimited*: reject such requests in your
    authentication, or pass ``fallback=key_from_client_address()``.
    """
    variable = "HTTP_" + name.upper().replace("-", "_")

    def key(environ: Environ) -> str | None:
        value = environ.get(variable)
        if value:
            return prefix + str(value)
        return fallback(environ) if fallback is not None else None

    return key


def key_from_client_address(*, prefix: str = "") -> KeyFunc:
    """The peer's address (``REMOTE_ADDR``), with ``prefix``; ``None`` when the server
    gives none. Behind a proxy this is the proxy's address unless a trusted middleware
    (werkzeug's ``ProxyFix``) rewrites it: ``X-Forwarded-For`` is not read here."""

    def key(environ: Environ) -> str | None:
        address = environ.get("REMOTE_ADDR")
        return prefix + str(address) if address else None

    return key


class RateLimitMiddleware:
    """Refuse requests over a client's limit with 429; report the limit on every response.

    ``app``: the WSGI app. ``limiter``: see the module docstring. ``key``:
    ``(environ) -> client id | None``; default :func:`key_from_client_address`.
    ``cost``, ``routes``, ``dry_run``, ``exempt`` (paths, or ``(environ) -> bool``)
    and ``on_error`` (``"allow"``, ``"deny"``, ``"raise"``; ``"open"``/``"closed"``
    as aliases) as in :class:`meshlimit.asgi.RateLimitMiddleware`.
    """

    def __init__(
        self,
        app: WSGIApp,
        limiter: Any,
        *,
        key: KeyFunc | None = None,
        cost: int | CostFunc = 1,
        routes: Mapping[str, str | Rule | Iterable[str | Rule]] | None = None,
        dry_run: bool = False,
        exempt: Iterable[str] | Callable[[Environ], bool] = (),
        on_error: str = "allow",
    ) -> None:
        self.on_error = error_policy(on_error)
        if not callable(cost) and (type(cost) is not int or cost < 0):
            raise ValueError(f"cost must be a non-negative int or a callable, not {cost!r}")
        self.gate = Gate(limiter)
        self.gate.backend.require_sync("meshlimit.wsgi")
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
            self._is_exempt = lambda environ: matches(environ.get("PATH_INFO") or "/")
        #: Requests by outcome (see :data:`STATS`). Counted without a lock: under
        #: threads a count may lag by a few, which monitoring can bear.
        self.stats: dict[str, int] = dict.fromkeys(STATS, 0)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        # Only the key function and the limiter are guarded: the app's own errors are
        # not the limiter's, and the app must never run twice.
        try:
            checks = None if self._is_exempt(environ) else self._policies(environ)
            verdict = self.gate.decide(checks) if checks else None
        except Exception:
            if self.on_error == "raise":
                raise
            return self._on_limiter_error(environ, start_response)
        if checks is None or verdict is None:
            self.stats["exempt" if checks is None else "skipped"] += 1
            return self.app(environ, start_response)
        if verdict.fallback:  # the backend could not decide and said so (no exception)
            self.stats["errors"] += 1
            if verdict.allowed:
                return self.app(environ, start_response)
            return _respond(start_response, "503 Service Unavailable", UNAVAILABLE_BODY, {})
        client = checks[0].client
        if verdict.allowed:
            self._count_allowed(verdict, client, environ)
        elif self.dry_run:
            self.stats["dry_run_refused"] += 1
            log.info("dry run: would refuse client=%r path=%s", client, environ.get("PATH_INFO"))
        else:
            self.stats["refused"] += 1
            return _respond(
                start_response, "429 Too Many Requests", verdict.refusal_body(), verdict.headers
            )
        return self.app(environ, _adding_headers(start_response, verdict.passing_headers()))

    def _policies(self, environ: Environ) -> list[PolicyCheck]:
        """The checks for this request: ``[]`` when no key applies."""
        method, path = environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO") or "/"
        limits = self.routes.match(method, path)
        key = self.key(environ)
        if key is not None and not isinstance(key, str):
            raise TypeError(f"key function returned {key!r}, not a str or None")
        if key is None:
            return []
        cost = self.cost(environ) if callable(self.cost) else self.cost
        if limits is None:
            return [default_check(key, cost)]
        return [PolicyCheck(lim.name, lim.client_id(key), cost, lim.rule) for lim in limits]

    def _count_allowed(self, verdict: Verdict, client: str, environ: Environ) -> None:
        self.stats["allowed"] += 1
        if verdict.shadowed:
            self.stats["shadowed"] += 1
            log.info(
                "shadow rule: would refuse client=%r path=%s", client, environ.get("PATH_INFO")
            )

    def _on_limiter_error(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        self.stats["errors"] += 1
        log.warning(
            "rate limiter error, failing %s: path=%s",
            "open" if self.on_error == "allow" else "closed",
            environ.get("PATH_INFO"),
            exc_info=True,
        )
        if self.on_error == "allow":
            return self.app(environ, start_response)
        return _respond(start_response, "503 Service Unavailable", UNAVAILABLE_BODY, {})


def _adding_headers(start_response: StartResponse, extra: dict[str, str]) -> StartResponse:
    """``start_response`` with ``extra`` appended to the app's headers."""
    pairs = list(extra.items())

    def wrapped(status: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
        return start_response(status, [*headers, *pairs], *exc_info)

    return wrapped


def _respond(
    start_response: StartResponse, status: str, body: bytes, headers: dict[str, str]
) -> list[bytes]:
    start_response(
        status,
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            *headers.items(),
        ],
    )
    return [body]
