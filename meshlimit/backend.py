"""One backend protocol for every web integration: anything with ``check(key, cost=1)``.

The ASGI, WSGI, Flask and Django integrations take any of

- :class:`meshlimit.Limiter` (in process: a check is about a microsecond under a
  lock and never waits on IO),
- :class:`meshlimit.Node` (a cluster member on the caller's event loop: ``async``),
- :class:`meshlimit.sync.SyncNode` (a cluster member on its own thread: blocks
  the caller for a hop to that thread, and for the owner when forwarded),
- ``meshlimit.client.Client`` (blocks on a daemon round trip) and
  ``meshlimit.client.AsyncClient`` (``async``),

or any object of the same shape: :class:`SyncBackend` or :class:`AsyncBackend`.
Only ``check`` is required. Two methods are used when present:
``set_rule(key, rule)`` (per-route limits write their rules with it) and
``get_rule(key) -> Rule`` (the window of the ``RateLimit-Policy`` header, when
the :class:`~meshlimit.core.decision.Decision` does not carry it).

How a backend is called (:class:`BoundBackend`, decided once per backend):

- ``async def check`` (or a ``check`` that returns an awaitable) is awaited.
  Threaded code (WSGI, Flask, sync Django) cannot await: such a backend is
  refused there with ``TypeError`` at construction, naming the blocking twin to
  use instead.
- A plain ``check`` is *blocking* unless the backend says otherwise: the one
  known not to block is :class:`~meshlimit.Limiter`, and a class may declare
  ``blocking = False`` (or ``True``) itself. On an event loop (ASGI, async Django
  views) a blocking backend runs off the loop, in the loop's default executor
  (``asyncio.to_thread``: at most ``min(32, CPUs + 4)`` threads; checks beyond
  wait in its queue), so a ``SyncNode`` or a ``Client`` slows only its own
  requests, never the loop. Chosen over refusing them: a threaded backend is
  what a mixed app (a WSGI half and an ASGI half) shares, and the hop costs tens
  of microseconds against a check that already waits on a thread or a socket.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from meshlimit.core.decision import NS_PER_S, Decision
from meshlimit.core.rules import Rule

T = TypeVar("T")


class SyncBackend(Protocol):
    """A backend whose check answers in the calling thread (``Limiter``, ``SyncNode``, ``Client``)."""

    def check(self, key: str, cost: int = 1, /) -> Decision:
        """Count ``cost`` against ``key`` if it fits; ``cost=0`` only looks."""
        ...


class AsyncBackend(Protocol):
    """A backend whose check is awaited (``Node``, ``AsyncClient``)."""

    async def check(self, key: str, cost: int = 1, /) -> Decision:
        """Count ``cost`` against ``key`` if it fits; ``cost=0`` only looks."""
        ...


#: What every integration accepts.
Backend = SyncBackend | AsyncBackend


def is_async(backend: object) -> bool:
    """Whether ``backend.check`` is a coroutine function (awaited, never called bare)."""
    return inspect.iscoroutinefunction(getattr(backend, "check", None))


def is_blocking(backend: object) -> bool:
    """Whether a plain ``check`` of ``backend`` may block its thread (see the module docstring)."""
    declared = getattr(backend, "blocking", None)
    if isinstance(declared, bool):
        return declared
    from meshlimit.limiter import Limiter  # here: keeps this module's import light

    return not isinstance(backend, Limiter)


def rule_in(decision: Decision) -> Rule | None:
    """The rule a decision says it was made under, when it says so.

    A decision may carry its rule (``decision.rule``) or its window
    (``decision.window_ns``, or ``decision.window_s`` in seconds); a window with the
    decision's limit makes the rule the ``RateLimit-Policy`` header needs (the burst
    is then unknown and left out). ``None`` when it carries neither.
    """
    rule = getattr(decision, "rule", None)
    if isinstance(rule, Rule):
        return rule
    window_ns = getattr(decision, "window_ns", None)
    if window_ns is None:
        window_s = getattr(decision, "window_s", None)
        if isinstance(window_s, int | float) and window_s > 0:
            window_ns = round(window_s * NS_PER_S)
    if type(window_ns) is not int or window_ns <= 0 or decision.limit < 1:
        return None
    try:
        return Rule(decision.limit, window_ns)
    except ValueError:  # a window this build cannot express: leave ``w`` out
        return None


class BoundBackend:
    """A backend with its calling convention decided once: the integrations' one way in.

    ``check``/``set_rule``/``rule_for`` call it from threaded code; ``acheck``/
    ``aset_rule``/``arule_for`` from a coroutine (awaiting an async backend, running
    a blocking one off the loop, calling :class:`~meshlimit.Limiter` inline).
    ``what`` names the argument in errors (``limiter``).
    """

    def __init__(self, backend: object, *, what: str = "limiter") -> None:
        if not callable(getattr(backend, "check", None)):
            raise TypeError(f"{what} {backend!r} has no check(key, cost) method")
        self.backend = backend
        self.what = what
        #: ``check`` is awaited.
        self.is_async = is_async(backend)
        #: ``check`` is plain and may block: run off the event loop.
        self.blocking = not self.is_async and is_blocking(backend)
        #: ``set_rule(key, rule)`` is there: per-route limits can be enforced.
        self.can_set_rules = callable(getattr(backend, "set_rule", None))
        self._get_rule: Callable[[str], Any] | None = getattr(backend, "get_rule", None)
        if not callable(self._get_rule):
            self._get_rule = None
        self._get_rule_is_async = inspect.iscoroutinefunction(self._get_rule)

    def __repr__(self) -> str:
        mode = "async" if self.is_async else "blocking" if self.blocking else "inline"
        return f"<BoundBackend {mode} {self.backend!r}>"

    # --- threaded code ----------------------------------------------------------------

    def require_sync(self, integration: str) -> None:
        """Refuse an async backend where nothing can await it."""
        if self.is_async:
            raise TypeError(
                f"{integration} runs in threads and cannot await {self.what} "
                f"{self.backend!r}: use its blocking twin (meshlimit.client.Client for "
                "AsyncClient, meshlimit.sync.SyncNode for Node) or meshlimit.Limiter"
            )

    def require_rules(self, why: str) -> None:
        """Refuse a backend without ``set_rule`` where rules must be written."""
        if not self.can_set_rules:
            raise TypeError(f"{why} needs a {self.what} with set_rule(key, rule): {self.backend!r}")

    def check(self, key: str, cost: int) -> Decision:
        """``backend.check(key, cost)`` in this thread."""
        return _sync_result(self.backend.check(key, cost), "check")  # type: ignore[attr-defined]

    def set_rule(self, key: str, rule: Rule) -> None:
        """``backend.set_rule(key, rule)`` in this thread."""
        _sync_result(self.backend.set_rule(key, rule), "set_rule")  # type: ignore[attr-defined]

    def rule_for(self, key: str, decision: Decision) -> Rule | None:
        """The rule behind ``decision`` (see :meth:`_wants_get_rule`), or None if unknown."""
        carried = rule_in(decision)
        if not self._wants_get_rule(carried):
            return carried
        assert self._get_rule is not None
        return reported_limit(_sync_result(self._get_rule(key), "get_rule"), decision) or carried

    def _wants_get_rule(self, carried: Rule | None) -> bool:
        """Whether to ask ``get_rule``: it exists, and either the decision carries no
        window or asking is cheap (in process, or a plain method of an async node),
        which also gives the burst. A daemon client is not asked twice a request."""
        if self._get_rule is None:
            return False
        return carried is None or not (self.blocking or self._get_rule_is_async)

    # --- coroutines -------------------------------------------------------------------

    async def acheck(self, key: str, cost: int) -> Decision:
        """``backend.check(key, cost)`` from a coroutine."""
        result: Decision = await self._call(self.backend.check, key, cost)  # type: ignore[attr-defined]
        return result

    async def aset_rule(self, key: str, rule: Rule) -> None:
        """``backend.set_rule(key, rule)`` from a coroutine."""
        await self._call(self.backend.set_rule, key, rule)  # type: ignore[attr-defined]

    async def arule_for(self, key: str, decision: Decision) -> Rule | None:
        """As :meth:`rule_for`, from a coroutine."""
        carried = rule_in(decision)
        if not self._wants_get_rule(carried):
            return carried
        assert self._get_rule is not None
        return reported_limit(await self._call(self._get_rule, key), decision) or carried

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self.blocking:
            result = await asyncio.to_thread(fn, *args)
        else:
            result = fn(*args)
        if inspect.isawaitable(result):
            result = await result
        return result


def _sync_result(result: T | Awaitable[T], what: str) -> T:
    """``result``, refusing an awaitable (an async method called from threaded code)."""
    if inspect.isawaitable(result):
        close = getattr(result, "close", None)
        if callable(close):
            close()  # never awaited: close it, so no "never awaited" warning
        raise TypeError(f"backend {what}() returned an awaitable in threaded code")
    return result


def reported_limit(value: object, decision: Decision) -> Rule | None:
    """The limit of rule ``value`` (a :class:`Rule` or notation, from ``get_rule``) that
    ``decision`` reports: under a rule of several limits a decision reports one (its
    ``limit`` and ``window_ns``). None when none matches (the rule changed meanwhile)."""
    if isinstance(value, str):
        try:
            value = Rule.parse(value)
        except ValueError:  # notation this build does not know: the decision has to do
            return None
    if not isinstance(value, Rule):
        return None
    window_ns = getattr(decision, "window_ns", 0)
    for limit in getattr(value, "limits", (value,)):
        if limit.limit == decision.limit and window_ns in (0, limit.window_ns):
            return limit
    return None
