"""Per-route limits for the web integrations: notation, counters, marks and path tables.

A route limit gives one route its own limit per key, apart from the backend's
rule for that key (which undecorated routes use). Theory of operation:

- ``"10/second;1000/hour"`` is several limits at once, split here on ``;``
  (:func:`parse_limits`), each its own counter and its own ``RateLimit``
  policy; a request passes when every one allows it. Split rather than written
  as one rule of several limits: every backend counts single limits, the
  headers can report each, and it is what ``limits``-based libraries do (the
  price: a request refused by a later limit has spent its cost under the
  earlier ones, so the shortest window is checked first, where spent quota
  returns soonest).
- Each limit counts under its own client id, derived from the route, the rule
  and the key (:meth:`RouteLimit.client_id`), so it never shares a count with the
  key's own rule or another route. The backend is made to enforce the rule for
  that id with ``set_rule`` (:mod:`meshlimit.gate` does the writing). The ids live
  under the registry's per-call prefix (``cl.throttle:``, as RESP ``CL.THROTTLE``
  keys do): one entry per route, rule and active key is soft state, bounded (the
  entries closest to expiry are evicted past ``MAX_CALLS``) and gone ten minutes
  after its last renewal, where a durable per-client rule would fill the
  registry with one entry per visitor for ever.
- The rule is part of the id, so a deploy that changes a route's limit starts a
  fresh counter rather than fighting the old version's writes during a rolling
  restart.

Marks (:class:`RouteMarks`) are what the decorators leave on a view function:
its limits, or that it is exempt. They are an attribute of the function, which
``functools.wraps`` copies to wrappers stacked above.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from meshlimit.core.registry import MAX_CLIENT_BYTES, PER_CALL_PREFIX, check_client_id
from meshlimit.core.rules import Rule, as_rule

F = TypeVar("F", bound=Callable[..., Any])

#: Where route counters live among client ids (see the module docstring).
ROUTE_PREFIX = PER_CALL_PREFIX + "route:"
#: The attribute holding a view function's :class:`RouteMarks`.
MARKS_ATTRIBUTE = "__meshlimit__"
#: Most limits one notation string may hold. Why 8: a route with more is a config mistake.
MAX_LIMITS = 8
#: What separates limits in notation (as in :mod:`meshlimit.core.rules`).
_SEPARATORS = re.compile(r"[;,|]")


def parse_limits(limits: str | Rule | Iterable[str | Rule]) -> tuple[Rule, ...]:
    """Single-limit rules from ``"10/second;1000/hour"``, a :class:`Rule`, or a list of either.

    The notation splits on ``;`` (or ``,`` or ``|``, as rules do); each part is one
    limit (``burst``/``algo`` allowed), a rule of several limits counts as its limits.
    A repeated limit counts once. Ordered by window, shortest first: the order the
    gate checks them in. ``ValueError`` names a bad part; empty notation is refused.
    """
    if isinstance(limits, Rule | str):
        limits = [limits]
    singles: list[Rule] = []
    for item in limits:
        if isinstance(item, str):
            parts = [p.strip() for p in _SEPARATORS.split(item)]
            singles.extend(as_rule(p) for p in parts if p)
        elif isinstance(item, Rule):
            singles.extend(replace(r, shadow=item.shadow) for r in getattr(item, "limits", (item,)))
        else:
            raise TypeError(f"limits must be rule notation or Rule objects, not {item!r}")
    if not singles:
        raise ValueError(f"no limit in {limits!r}: expected e.g. '10/second;1000/hour'")
    if len(singles) > MAX_LIMITS:
        raise ValueError(f"{len(singles)} limits in {limits!r}; at most {MAX_LIMITS}")
    return tuple(sorted(dict.fromkeys(singles), key=lambda rule: rule.window_ns))


@dataclass(frozen=True, slots=True)
class RouteLimit:
    """One limit of one route: a rule counted per key under ids of its own.

    ``route`` names the route (a Flask endpoint, a Django view's dotted name, a
    Starlette path pattern, a route table's key); ``key``/``cost``: this limit's own
    key function and cost, when not the integration's (their signature is the
    integration's: a Flask key takes no argument, a Django one the request).
    """

    route: str
    rule: Rule
    key: Callable[..., Any] | None = None
    cost: int | Callable[..., int] | None = None

    @property
    def name(self) -> str:
        """The policy name in the ``RateLimit`` headers: the rule's notation."""
        return str(self.rule)

    def client_id(self, key: str) -> str:
        """The client id this limit counts ``key`` under (at most 256 bytes: a long
        route or key is replaced by its hash)."""
        check_client_id(key)
        client = f"{ROUTE_PREFIX}{self.route}|{self.rule}|{key}"
        if len(client.encode()) <= MAX_CLIENT_BYTES:
            return client
        digest = hashlib.blake2b(client.encode(), digest_size=20).hexdigest()
        return f"{ROUTE_PREFIX}#{digest}"


@dataclass(slots=True)
class RouteMarks:
    """What decorators said about one view: its limits (in order), or exempt."""

    limits: list[tuple[Rule, Callable[..., Any] | None, Any]] = field(default_factory=list)
    exempt: bool = False

    def route_limits(self, route: str) -> tuple[RouteLimit, ...]:
        """The marks as limits of ``route``."""
        return tuple(RouteLimit(route, rule, key, cost) for rule, key, cost in self.limits)


def marks_of(view: object) -> RouteMarks | None:
    """The marks on ``view`` (or on the function a bound method wraps), if any."""
    marks = getattr(view, MARKS_ATTRIBUTE, None)
    return marks if isinstance(marks, RouteMarks) else None


def mark(view: F) -> RouteMarks:
    """The marks of ``view``, created on it when missing."""
    marks = marks_of(view)
    if marks is None:
        marks = RouteMarks()
        setattr(view, MARKS_ATTRIBUTE, marks)
    return marks


def limit_decorator(
    limits: str | Rule | Iterable[str | Rule],
    key: Callable[..., Any] | None = None,
    cost: int | Callable[..., int] | None = None,
) -> Callable[[F], F]:
    """A decorator adding ``limits`` to a view's marks; the view itself is returned as is.

    The notation is parsed here, so a typo fails at import, not at the first request.
    """
    rules = parse_limits(limits)
    if cost is not None and not callable(cost) and (type(cost) is not int or cost < 0):
        raise ValueError(f"cost must be a non-negative int or a callable, not {cost!r}")

    def decorate(view: F) -> F:
        marks = mark(view)
        known = {(rule, key) for rule, key, _ in marks.limits}
        marks.limits.extend((rule, key, cost) for rule in rules if (rule, key) not in known)
        return view

    return decorate


def exempt(view: F) -> F:
    """Mark ``view`` as never limited."""
    mark(view).exempt = True
    return view


# --- paths ----------------------------------------------------------------------------


def path_matcher(paths: Iterable[str]) -> Callable[[str], bool]:
    """A predicate true for each path in ``paths`` and anything below it."""
    exact = frozenset(p.rstrip("/") or "/" for p in paths)
    prefixes = tuple(p + "/" for p in exact if p != "/")

    def matches(path: str) -> bool:
        return path in exact or path.startswith(prefixes)

    return matches


_PARAM = re.compile(r"\{[^/{}]+\}")
_METHOD = re.compile(r"^[A-Za-z]+\Z")


class RouteTable:
    """Limits by path, for apps whose routes the middleware cannot see (any ASGI or WSGI app).

    ``{"/login": "5/minute", "POST /search": "10/second;100/hour",
    "/users/{id}/posts": "20/minute"}``: a pattern covers its path and everything
    below it (``/login`` covers ``/login/sso``); ``{name}`` matches one path segment;
    a leading method limits the entry to that method. The most specific pattern
    wins (the longest, then one with a method). Each entry's limits count apart,
    named by the pattern as written.
    """

    def __init__(self, routes: Mapping[str, str | Rule | Iterable[str | Rule]]) -> None:
        entries = []
        for pattern, limits in routes.items():
            method, _, path = pattern.strip().rpartition(" ")
            if method and not _METHOD.match(method):
                raise ValueError(f"route {pattern!r} is not '[METHOD ]/path'")
            if not path.startswith("/"):
                raise ValueError(f"route {pattern!r}: the path must start with '/'")
            body = path.rstrip("/")
            regex = "".join(
                "[^/]+" if _PARAM.fullmatch(part) else re.escape(part)
                for part in re.split(r"(\{[^/{}]+\})", body)
            )
            compiled = re.compile(f"{regex}(?:/.*)?\\Z" if body else "/.*\\Z", re.DOTALL)
            rules = parse_limits(limits)
            specificity = (len(_PARAM.sub("", body)), body.count("/"), bool(method))
            route_limits = tuple(RouteLimit(pattern.strip(), rule) for rule in rules)
            entries.append((specificity, method.upper() or None, compiled, route_limits))
        entries.sort(key=lambda entry: entry[0], reverse=True)
        self._entries = [(method, regex, limits) for _, method, regex, limits in entries]

    def __bool__(self) -> bool:
        return bool(self._entries)

    def match(self, method: str, path: str) -> tuple[RouteLimit, ...] | None:
        """The limits of the most specific entry covering ``method path``, or None."""
        for entry_method, regex, limits in self._entries:
            if (entry_method is None or entry_method == method) and regex.match(path):
                return limits
        return None
