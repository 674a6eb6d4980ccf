"""Rate limiting for Flask: the app's default per key, and limits of a route's own.

```python
from flask import Flask
from meshlimit.client import Client
from meshlimit.flask import RateLimiter, remote_address

app = Flask(__name__)
rl = RateLimiter(app, limiter=Client("127.0.0.1:6380"), key=remote_address)

@app.get("/search")
@rl.limit("10/second;1000/hour")   # this route's own limits, each its own counter
def search(): ...

@app.get("/health")
@rl.exempt
def health(): ...
```

Theory of operation: a ``before_request`` hook finds the request's view
(``app.view_functions[request.endpoint]``), reads the marks its decorators left
(:mod:`meshlimit.routes`), names the key (``key()``, called in the request
context; ``None``: not limited) and asks the :class:`~meshlimit.gate.Gate`. A
refused request is answered 429 there, before the view runs; an allowed one
gets its ``RateLimit`` headers in an ``after_request`` hook. Routes without
marks count against the backend's own rule for the key (a daemon's default,
tiers and overrides); a decorated route counts only against its own limits,
each under an id of its own per route and key, whose rule the gate writes to
the backend. ``@rl.limit`` stacks (each may have its own ``key`` and ``cost``).
Requests that match no view (404) count against the default.

The limiter must answer in the request's thread: :class:`meshlimit.Limiter`,
``meshlimit.client.Client`` (a daemon: one count shared by every worker of a
gunicorn app), :class:`meshlimit.sync.SyncNode` (:mod:`meshlimit.backend`).
Route limits need its ``set_rule``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import flask

from meshlimit.core.rules import Rule
from meshlimit.gate import UNAVAILABLE_BODY, Gate, PolicyCheck, Verdict, default_check, error_policy
from meshlimit.routes import exempt as mark_exempt
from meshlimit.routes import limit_decorator, marks_of

__all__ = ["RateLimiter", "header", "remote_address"]

log = logging.getLogger("meshlimit.flask")

F = TypeVar("F", bound=Callable[..., Any])
#: Names the client of the current request (Flask's ``request`` is in context); ``None``:
#: not limited.
KeyFunc = Callable[[], str | None]
CostFunc = Callable[[], int]
#: Where a request's verdict waits for ``after_request``.
_G_ATTRIBUTE = "_meshlimit_verdict"


def remote_address() -> str | None:
    """The peer's address (``request.remote_addr``); behind a proxy, use werkzeug's
    ``ProxyFix`` so that this is the client's, not the proxy's."""
    return flask.request.remote_addr or None


def header(name: str, *, prefix: str = "") -> KeyFunc:
    """A key function: request header ``name`` with ``prefix``; ``None`` when absent or empty."""

    def key() -> str | None:
        value = flask.request.headers.get(name)
        return prefix + value if value else None

    return key


class RateLimiter:
    """Limits for a Flask app (see the module docstring); ``init_app`` for app factories.

    ``limiter``: the backend. ``key``: ``() -> str | None`` (default
    :func:`remote_address`). ``cost``: an ``int`` or ``() -> int``. ``on_error``:
    what a limiter or key error does: ``"allow"`` (default; the request passes
    without headers, logged), ``"deny"`` (503 ``{"error": "rate limiter
    unavailable"}``) or ``"raise"`` (Flask's error handling); ``"open"`` and
    ``"closed"`` are aliases. ``exempt_blueprints``: blueprint names never limited.
    """

    def __init__(
        self,
        app: flask.Flask | None = None,
        *,
        limiter: Any,
        key: KeyFunc = remote_address,
        cost: int | CostFunc = 1,
        on_error: str = "allow",
        exempt_blueprints: Iterable[str] = (),
    ) -> None:
        self.on_error = error_policy(on_error)
        if not callable(cost) and (type(cost) is not int or cost < 0):
            raise ValueError(f"cost must be a non-negative int or a callable, not {cost!r}")
        if not callable(key):
            raise TypeError(f"key must be a callable () -> str | None, not {key!r}")
        self.gate = Gate(limiter)
        self.gate.backend.require_sync("meshlimit.flask")
        self.limiter = limiter
        self.key = key
        self.cost = cost
        self.exempt_blueprints = frozenset(exempt_blueprints)
        if app is not None:
            self.init_app(app)

    def init_app(self, app: flask.Flask) -> None:
        """Install the hooks on ``app`` (``app.extensions["meshlimit"]`` is this limiter)."""
        app.extensions["meshlimit"] = self
        app.before_request(self._before_request)
        app.after_request(self._after_request)

    def limit(
        self,
        limits: str | Rule | Iterable[str | Rule],
        *,
        key: KeyFunc | None = None,
        cost: int | CostFunc | None = None,
    ) -> Callable[[F], F]:
        """Give a view its own limits per key: ``"5/minute"``, ``"10/second;1000/hour"``
        (each its own counter, all must allow), or a list. ``key``/``cost``: this
        limit's own. Stack it for limits with other keys. The view is returned as is."""
        self.gate.backend.require_rules("@limit")
        return limit_decorator(limits, key, cost)

    def exempt(self, view: F) -> F:
        """Never limit ``view``."""
        return mark_exempt(view)

    # --- hooks ------------------------------------------------------------------------

    def _before_request(self) -> flask.Response | None:
        request = flask.request
        if request.blueprint in self.exempt_blueprints:
            return None
        view = flask.current_app.view_functions.get(request.endpoint or "")
        marks = marks_of(view)
        if marks is not None and marks.exempt:
            return None
        try:
            checks = self._policies(marks)
            verdict = self.gate.decide(checks) if checks else None
        except Exception:
            if self.on_error == "raise":
                raise
            log.warning(
                "rate limiter error, failing %s: path=%s",
                "open" if self.on_error == "allow" else "closed",
                request.path,
                exc_info=True,
            )
            if self.on_error == "allow":
                return None
            return _json_response(503, UNAVAILABLE_BODY, {})
        if verdict is None or (verdict.fallback and verdict.allowed):
            return None
        if verdict.fallback:  # the backend could not decide, and its policy is to deny
            return _json_response(503, UNAVAILABLE_BODY, {})
        setattr(flask.g, _G_ATTRIBUTE, verdict)
        if verdict.allowed:
            return None
        return _json_response(429, verdict.refusal_body(), verdict.headers)

    def _after_request(self, response: flask.Response) -> flask.Response:
        verdict: Verdict | None = flask.g.pop(_G_ATTRIBUTE, None)
        if verdict is not None and verdict.allowed:
            response.headers.update(verdict.passing_headers())
        return response

    def _policies(self, marks: Any) -> list[PolicyCheck]:
        """The request's checks: the view's own limits when marked, else the default."""
        if marks is None or not marks.limits:
            key = _checked_key(self.key())
            return [] if key is None else [default_check(key, _cost(self.cost))]
        checks = []
        for route_limit in marks.route_limits(flask.request.endpoint or ""):
            key = _checked_key((route_limit.key or self.key)())
            if key is not None:
                cost = _cost(self.cost if route_limit.cost is None else route_limit.cost)
                checks.append(
                    PolicyCheck(
                        route_limit.name, route_limit.client_id(key), cost, route_limit.rule
                    )
                )
        return checks


def _checked_key(key: object) -> str | None:
    if key is not None and not isinstance(key, str):
        raise TypeError(f"key function returned {key!r}, not a str or None")
    return key


def _cost(cost: int | CostFunc) -> int:
    return cost() if callable(cost) else cost


def _json_response(status: int, body: bytes, headers: dict[str, str]) -> flask.Response:
    return flask.Response(body, status=status, headers=headers, mimetype="application/json")
