"""Rate limiting for Django: a middleware for every view, a decorator for a view's own limits.

```python
# settings.py
MIDDLEWARE = [..., "meshlimit.django.RateLimitMiddleware"]
MESHLIMIT = {
    "BACKEND": "daemon",                 # or "memory" (in process), "node" (a cluster member)
    "ADDRESSES": ["10.0.0.5:6380", "10.0.0.6:6380"],   # the daemons' --resp ports
    "KEY": "header:x-api-key",           # or "ip", "user", "user_or_ip", "pkg.mod.function"
}

# views.py
from meshlimit.django import exempt, ratelimit

@ratelimit("5/minute;50/day", key="ip")    # this view's own limits, per key
def login(request): ...
```

Settings (``MESHLIMIT``, a dict; unknown keys are refused with
``ImproperlyConfigured``):

- ``BACKEND``: ``"memory"`` (:class:`meshlimit.Limiter` in this process: each
  worker process counts alone), ``"daemon"`` (``meshlimit.client.Client`` to
  ``ADDRESSES``: one count for every worker and host), ``"node"``
  (:class:`meshlimit.sync.SyncNode` started with ``NODE``'s options: ``bind``,
  ``seeds``, ...), or a dotted path to a callable returning a backend
  (:mod:`meshlimit.backend`). Default ``"memory"``.
- ``DEFAULT``: the default rule of a ``memory`` or ``node`` backend (default
  ``"100/minute"``), ``RULES``: their per-client rules. A daemon has its own
  (its config file); giving them with ``daemon`` is refused.
- ``ADDRESSES``, ``CLIENT`` (more options of ``Client``), ``NODE``: as above.
- ``KEY``: ``"ip"`` (``REMOTE_ADDR``), ``"header:NAME"``, ``"user"`` (``user:PK``
  of an authenticated user, else not limited; needs ``AuthenticationMiddleware``
  before this one), ``"user_or_ip"``, or a dotted path to ``(request) -> str |
  None``. Default ``"ip"``. ``None`` leaves the request unlimited.
- ``ON_ERROR``: ``"allow"`` (default), ``"deny"`` (503) or ``"raise"``.
- ``EXEMPT``: paths never limited (each with everything below it).

Theory of operation: the middleware checks each request that resolves to a
view (in ``process_view``, so a request Django answers 404 costs nothing)
against the backend's own rule for its key, answers 429 when refused and adds
the ``RateLimit`` headers to the response. A view with :func:`ratelimit` has its
own limits instead (each its own counter per key, :mod:`meshlimit.routes`),
checked by the decorator, which works with or without the middleware; a view
with :func:`exempt` is skipped. One backend per process serves both, built on
first use from the settings (and again when a test changes them).

The middleware is synchronous: under ASGI, Django runs it in its thread for
sync code, one request at a time, so an async deployment is better served by
:mod:`meshlimit.asgi` around Django's ASGI app. An ``async def`` view keeps its
decorator's check off the event loop. Django is imported here only:
``import meshlimit`` never needs it.
"""

from __future__ import annotations

import atexit
import functools
import inspect
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings  # type: ignore[import-untyped]
from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]
from django.core.signals import setting_changed  # type: ignore[import-untyped]
from django.http import HttpRequest, HttpResponse  # type: ignore[import-untyped]
from django.utils.module_loading import import_string  # type: ignore[import-untyped]

from meshlimit.core.rules import Rule
from meshlimit.gate import (
    UNAVAILABLE_BODY,
    Gate,
    PolicyCheck,
    Verdict,
    default_check,
    error_policy,
)
from meshlimit.routes import RouteMarks, limit_decorator, marks_of, path_matcher
from meshlimit.routes import exempt as mark_exempt

__all__ = ["RateLimitMiddleware", "exempt", "key_function", "ratelimit"]

log = logging.getLogger("meshlimit.django")

F = TypeVar("F", bound=Callable[..., Any])
KeyFunc = Callable[[HttpRequest], str | None]
#: The settings this module reads, under ``MESHLIMIT``.
SETTINGS = (
    "BACKEND",
    "DEFAULT",
    "RULES",
    "ADDRESSES",
    "CLIENT",
    "NODE",
    "KEY",
    "ON_ERROR",
    "EXEMPT",
)
#: Where the verdict waits for the response.
_REQUEST_ATTRIBUTE = "_meshlimit_verdict"
#: Marks a view wrapped by :func:`ratelimit` (the middleware leaves it to the wrapper).
_GUARDED = "_meshlimit_guarded"


# --- keys -----------------------------------------------------------------------------


def key_function(spec: str | KeyFunc) -> KeyFunc:
    """A key function from its setting: ``ip``, ``header:NAME``, ``user``,
    ``user_or_ip``, a dotted path, or a callable (returned as is)."""
    if callable(spec):
        return spec
    if not isinstance(spec, str) or not spec:
        raise ImproperlyConfigured(f"MESHLIMIT KEY must be a string or a callable, not {spec!r}")
    if spec == "ip":
        return _ip
    if spec == "user":
        return _user
    if spec == "user_or_ip":
        return lambda request: _user(request) or _ip(request)
    if spec.startswith("header:"):
        name = spec[len("header:") :]
        if not name:
            raise ImproperlyConfigured("MESHLIMIT KEY 'header:' needs a header name")
        return lambda request: request.headers.get(name) or None
    if "." in spec:
        try:
            found = import_string(spec)
        except ImportError as error:
            raise ImproperlyConfigured(f"MESHLIMIT KEY {spec!r}: {error}") from None
        if not callable(found):
            raise ImproperlyConfigured(f"MESHLIMIT KEY {spec!r} is not callable")
        return found  # type: ignore[no-any-return]
    raise ImproperlyConfigured(
        f"MESHLIMIT KEY {spec!r} is not 'ip', 'header:NAME', 'user', 'user_or_ip' or a dotted path"
    )


def _ip(request: HttpRequest) -> str | None:
    return request.META.get("REMOTE_ADDR") or None


def _user(request: HttpRequest) -> str | None:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return None
    return f"user:{user.pk}"


# --- the configured backend -----------------------------------------------------------


class Configured:
    """What the settings describe, built once: the gate over the backend, the key, the
    error policy and the exempt paths."""

    def __init__(self, options: dict[str, Any]) -> None:
        unknown = sorted(set(options) - set(SETTINGS))
        if unknown:
            raise ImproperlyConfigured(
                f"MESHLIMIT has unknown settings {unknown}; known: {', '.join(SETTINGS)}"
            )
        try:
            self.on_error = error_policy(options.get("ON_ERROR", "allow"))
        except ValueError as error:
            raise ImproperlyConfigured(f"MESHLIMIT ON_ERROR: {error}") from None
        self.key = key_function(options.get("KEY", "ip"))
        self.is_exempt = path_matcher(options.get("EXEMPT", ()))
        self.backend, self._close = _build_backend(options)
        self.gate = Gate(self.backend, what="MESHLIMIT backend")
        self.gate.backend.require_sync("meshlimit.django")

    def close(self) -> None:
        """Stop what the settings started (a node, a client's connections)."""
        if self._close is not None:
            self._close()


def _build_backend(options: dict[str, Any]) -> tuple[Any, Callable[[], None] | None]:
    kind = options.get("BACKEND", "memory")
    rules = options.get("RULES") or {}
    default = options.get("DEFAULT", "100/minute")
    if kind == "memory":
        from meshlimit.limiter import Limiter

        return Limiter(default, rules=rules), None
    if kind == "node":
        from meshlimit.sync import SyncNode

        node_options = dict(options.get("NODE") or {})
        if "bind" not in node_options:
            raise ImproperlyConfigured("MESHLIMIT BACKEND 'node' needs NODE={'bind': 'HOST:PORT'}")
        node = SyncNode.start(default=default, rules=rules, **node_options)
        return node, node.stop
    if kind == "daemon":
        if "DEFAULT" in options or "RULES" in options:
            raise ImproperlyConfigured(
                "MESHLIMIT DEFAULT and RULES are the daemon's own (its config file or "
                "`meshlimit ctl set-rule`), not settings of BACKEND 'daemon'"
            )
        addresses = options.get("ADDRESSES")
        if isinstance(addresses, str):
            addresses = [addresses]
        if not addresses:
            raise ImproperlyConfigured("MESHLIMIT BACKEND 'daemon' needs ADDRESSES=['HOST:PORT']")
        from meshlimit.client import Client

        client = Client(list(addresses), **dict(options.get("CLIENT") or {}))
        return client, getattr(client, "close", None)
    if isinstance(kind, str) and "." in kind:
        factory = import_string(kind)
        backend = factory()
        return backend, getattr(backend, "close", None)
    raise ImproperlyConfigured(
        f"MESHLIMIT BACKEND {kind!r} is not 'memory', 'daemon', 'node' or a dotted path"
    )


_lock = threading.Lock()
_configured: Configured | None = None


def configured() -> Configured:
    """The process's backend and options, built from ``settings.MESHLIMIT`` on first use."""
    global _configured
    current = _configured
    if current is not None:
        return current
    with _lock:
        if _configured is None:
            _configured = Configured(dict(getattr(settings, "MESHLIMIT", None) or {}))
        return _configured


def reset() -> None:
    """Forget (and close) the configured backend; the next request builds it again."""
    global _configured
    with _lock:
        old, _configured = _configured, None
    if old is not None:
        old.close()


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == "MESHLIMIT":
        reset()


setting_changed.connect(_on_setting_changed, dispatch_uid="meshlimit.django")
atexit.register(reset)


# --- responses ------------------------------------------------------------------------


def _refusal(verdict: Verdict) -> HttpResponse:
    if verdict.fallback:  # nobody decided and the backend's policy is to deny
        return HttpResponse(UNAVAILABLE_BODY, status=503, content_type="application/json")
    return HttpResponse(
        verdict.refusal_body(),
        status=429,
        content_type="application/json",
        headers=verdict.headers,
    )


def _annotate(response: HttpResponse, verdict: Verdict | None) -> HttpResponse:
    if verdict is not None and verdict.allowed:
        for name, value in verdict.passing_headers().items():
            response[name] = value
    return response


def _decide(
    setup: Configured, request: HttpRequest, checks: list[PolicyCheck]
) -> Verdict | HttpResponse | None:
    """The verdict, or the response ``on_error`` gives when the limiter failed (None:
    let the request through unannotated)."""
    try:
        return setup.gate.decide(checks) if checks else None
    except Exception:
        return _on_error(setup, request)


def _on_error(setup: Configured, request: HttpRequest) -> HttpResponse | None:
    if setup.on_error == "raise":
        raise
    log.warning(
        "rate limiter error, failing %s: path=%s",
        "open" if setup.on_error == "allow" else "closed",
        request.path,
        exc_info=True,
    )
    if setup.on_error == "allow":
        return None
    return HttpResponse(UNAVAILABLE_BODY, status=503, content_type="application/json")


def _gate_request(
    setup: Configured, request: HttpRequest, checks_of: Callable[[], list[PolicyCheck]]
) -> HttpResponse | None:
    """Check a request: the refusal to send, or None (the verdict waits on the request)."""
    try:
        checks = checks_of()
    except Exception:
        return _on_error(setup, request)
    outcome = _decide(setup, request, checks)
    if outcome is None or isinstance(outcome, HttpResponse):
        return outcome
    if outcome.fallback and outcome.allowed:
        return None
    setattr(request, _REQUEST_ATTRIBUTE, outcome)
    return None if outcome.allowed else _refusal(outcome)


# --- the middleware -------------------------------------------------------------------


class RateLimitMiddleware:
    """Limits every view by the backend's own rule for the request's key (see above)."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        return _annotate(response, getattr(request, _REQUEST_ATTRIBUTE, None))

    def process_view(
        self,
        request: HttpRequest,
        view: Callable[..., Any],
        view_args: Any,
        view_kwargs: Any,
    ) -> HttpResponse | None:
        setup = configured()
        marks = marks_of(view)
        if getattr(view, _GUARDED, False) or (marks is not None and marks.exempt):
            return None
        if setup.is_exempt(request.path_info):
            return None

        def checks() -> list[PolicyCheck]:
            key = _checked_key(setup.key(request))
            return [] if key is None else [default_check(key, 1)]

        return _gate_request(setup, request, checks)


# --- decorators -----------------------------------------------------------------------


def exempt(view: F) -> F:
    """Never limit ``view`` (the middleware skips it)."""
    return mark_exempt(view)


def ratelimit(
    limits: str | Rule | Iterable[str | Rule],
    *,
    key: str | KeyFunc | None = None,
    cost: int | Callable[[HttpRequest], int] = 1,
) -> Callable[[F], F]:
    """Give a view its own limits per key: ``"5/minute"``, ``"10/second;1000/hour"``
    (each its own counter, all must allow). ``key``: a ``KEY`` setting's spelling or a
    callable (default: the ``KEY`` setting); ``cost``: an int or ``(request) -> int``.
    Stack it for limits with other keys. A refused request gets 429; an allowed one
    the ``RateLimit`` headers. Works on ``async def`` views too."""
    key_func = None if key is None else key_function(key)
    add_limits = limit_decorator(limits, key_func, cost)

    def decorate(view: F) -> F:
        if getattr(view, _GUARDED, False):  # stacked: one wrapper checks every limit
            return add_limits(view)
        add_limits(view)
        marks = marks_of(view)
        assert marks is not None
        route = f"{view.__module__}.{view.__qualname__}"
        if inspect.iscoroutinefunction(view):
            wrapper: Any = _async_wrapper(view, route, marks)
        else:
            wrapper = _sync_wrapper(view, route, marks)
        setattr(wrapper, _GUARDED, True)
        return wrapper  # type: ignore[no-any-return]

    return decorate


def _view_checks(
    setup: Configured, request: HttpRequest, route: str, marks: RouteMarks
) -> list[PolicyCheck]:
    checks = []
    for route_limit in marks.route_limits(route):
        key = _checked_key((route_limit.key or setup.key)(request))
        if key is None:
            continue
        cost = route_limit.cost if route_limit.cost is not None else 1
        if callable(cost):
            cost = cost(request)
        checks.append(
            PolicyCheck(route_limit.name, route_limit.client_id(key), cost, route_limit.rule)
        )
    return checks


def _sync_wrapper(view: Callable[..., Any], route: str, marks: RouteMarks) -> Callable[..., Any]:
    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        setup = configured()
        checks = functools.partial(_view_checks, setup, request, route, marks)
        refusal = _gate_request(setup, request, checks)
        if refusal is not None:
            return refusal
        return _annotate(view(request, *args, **kwargs), getattr(request, _REQUEST_ATTRIBUTE, None))

    return wrapper


def _async_wrapper(view: Callable[..., Any], route: str, marks: RouteMarks) -> Callable[..., Any]:
    @functools.wraps(view)
    async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        setup = configured()
        checks = functools.partial(_view_checks, setup, request, route, marks)
        # Keys may touch the session or the user (the database): a thread, as Django wants.
        refusal = await sync_to_async(_gate_request)(setup, request, checks)
        if refusal is not None:
            return refusal
        response = await view(request, *args, **kwargs)
        return _annotate(response, getattr(request, _REQUEST_ATTRIBUTE, None))

    return wrapper


def _checked_key(key: object) -> str | None:
    if key is not None and not isinstance(key, str):
        raise TypeError(f"key function returned {key!r}, not a str or None")
    return key
