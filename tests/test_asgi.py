"""The ASGI middleware (``meshlimit/asgi.py``) around a real Starlette app.

Most tests drive the app in process with Starlette's ``TestClient`` and a
:class:`meshlimit.Limiter` on a fake clock, so counts and times are exact.
The async-limiter tests use a small async fake and a real one-node cluster on
loopback; one test serves the app over real HTTP with uvicorn.
"""

from __future__ import annotations

import functools
import logging
import math
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio.from_thread
import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

from meshlimit import Limiter, Node
from meshlimit.asgi import (
    RateLimitMiddleware,
    Scope,
    exempt,
    key_from_client_address,
    key_from_header,
    limit,
)
from meshlimit.core.decision import Decision
from meshlimit.core.rules import Rule

S = 1_000_000_000
T0 = 1_700_000_040 * S  # the start of a minute


class FakeClock:
    """Wall time in nanoseconds, moved by hand."""

    def __init__(self, now_ns: int = T0) -> None:
        self.now_ns = now_ns

    def __call__(self) -> int:
        return self.now_ns

    def advance(self, seconds: float) -> None:
        self.now_ns += round(seconds * S)


class Calls:
    """How often each route of the app ran."""

    def __init__(self) -> None:
        self.count: dict[str, int] = {}

    def hit(self, name: str) -> None:
        self.count[name] = self.count.get(name, 0) + 1


def make_app(calls: Calls | None = None, **starlette_options: Any) -> Starlette:
    """A small JSON app: a few routes, one websocket, one route that fails."""
    calls = calls if calls is not None else Calls()

    async def items(request: Request) -> JSONResponse:
        calls.hit("items")
        return JSONResponse({"items": [1, 2, 3]}, headers={"X-App": "yes"})

    async def health(request: Request) -> JSONResponse:
        calls.hit("health")
        return JSONResponse({"status": "ok"})

    async def boom(request: Request) -> JSONResponse:
        calls.hit("boom")
        raise RuntimeError("the app's own bug")

    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(await websocket.receive_text())
        await websocket.close()

    routes = [
        Route("/items", items, methods=["GET", "POST"]),
        Route("/health", health),
        Route("/health/live", health),
        Route("/healthz", health),
        Route("/boom", boom),
        WebSocketRoute("/ws", echo),
    ]
    return Starlette(routes=routes, **starlette_options)


def limited(
    rule: str = "3/minute", calls: Calls | None = None, **options: Any
) -> tuple[RateLimitMiddleware, Limiter, FakeClock]:
    clock = FakeClock()
    limiter = Limiter(rule, clock=clock)
    options.setdefault("key", key_from_header("x-api-key"))
    return RateLimitMiddleware(make_app(calls), limiter, **options), limiter, clock


def params(value: str) -> tuple[str, dict[str, int]]:
    """``"default";q=3;w=60`` as ``("default", {"q": 3, "w": 60})``."""
    name, *rest = value.split(";")
    return name.strip('"'), {k: int(v) for k, v in (p.split("=") for p in rest)}


KEY_A = {"x-api-key": "alice"}
KEY_B = {"x-api-key": "bob"}


# --- allowed and refused --------------------------------------------------------------


def test_allowed_responses_carry_ratelimit_headers_and_keep_the_apps_own():
    app, _, _ = limited("3/minute")
    client = TestClient(app)
    for remaining in (2, 1, 0):
        response = client.get("/items", headers=KEY_A)
        assert response.status_code == 200
        assert response.json() == {"items": [1, 2, 3]}
        assert response.headers["x-app"] == "yes"
        assert params(response.headers["ratelimit-policy"]) == ("default", {"q": 3, "w": 60})
        assert params(response.headers["ratelimit"]) == ("default", {"r": remaining, "t": 60})
        assert "retry-after" not in response.headers
    assert app.stats["allowed"] == 3 and app.stats["refused"] == 0


def test_over_the_limit_is_429_with_retry_after_and_headers_and_the_app_never_runs():
    calls = Calls()
    app, _, clock = limited("3/minute", calls)
    client = TestClient(app)
    for _ in range(3):
        assert client.get("/items", headers=KEY_A).status_code == 200
    twin = Limiter("3/minute", clock=clock)  # the same history: what the middleware sees
    for _ in range(3):
        twin.check("alice")
    clock.advance(10.5)
    expected = twin.check("alice")
    assert not expected.allowed
    response = client.get("/items", headers=KEY_A)
    assert response.status_code == 429
    retry = int(response.headers["retry-after"])
    assert retry == math.ceil(expected.retry_after) and retry > 0
    assert response.json() == {"error": "rate limited", "retry_after": retry}
    assert response.headers["content-type"] == "application/json"
    assert params(response.headers["ratelimit-policy"]) == ("default", {"q": 3, "w": 60})
    # Refused: t is the wait, equal to Retry-After (as the node's HTTP API sends it).
    assert params(response.headers["ratelimit"]) == ("default", {"r": 0, "t": retry})
    assert calls.count == {"items": 3}
    assert app.stats["refused"] == 1


def test_a_cost_that_can_never_fit_is_429_without_retry_after():
    app, _, _ = limited("3/minute", cost=5)
    response = TestClient(app).get("/items", headers=KEY_A)
    assert response.status_code == 429
    assert "retry-after" not in response.headers
    assert response.json() == {"error": "rate limited", "retry_after": -1}


def test_cost_may_depend_on_the_request():
    app, _, _ = limited("3/minute", cost=lambda scope: 2 if scope["method"] == "POST" else 1)
    client = TestClient(app)
    assert params(client.post("/items", headers=KEY_A).headers["ratelimit"])[1]["r"] == 1
    assert client.post("/items", headers=KEY_A).status_code == 429
    assert client.get("/items", headers=KEY_A).status_code == 200


def test_clients_are_isolated_by_api_key():
    app, _, _ = limited("2/minute")
    client = TestClient(app)
    assert [client.get("/items", headers=KEY_A).status_code for _ in range(3)] == [200, 200, 429]
    response = client.get("/items", headers=KEY_B)
    assert response.status_code == 200
    assert params(response.headers["ratelimit"])[1]["r"] == 1


def test_a_window_later_the_client_is_allowed_again():
    app, _, clock = limited("1/second")
    client = TestClient(app)
    assert client.get("/items", headers=KEY_A).status_code == 200
    assert client.get("/items", headers=KEY_A).status_code == 429
    clock.advance(2)
    assert client.get("/items", headers=KEY_A).status_code == 200


# --- keys -----------------------------------------------------------------------------


def test_a_key_of_none_leaves_the_request_unlimited_and_unannotated():
    app, _, _ = limited("1/minute")
    client = TestClient(app)
    for _ in range(3):  # no x-api-key header: the key function answers None
        response = client.get("/items")
        assert response.status_code == 200
        assert "ratelimit" not in response.headers
    assert app.stats["skipped"] == 3 and app.stats["allowed"] == 0


def test_key_from_header_falls_back_and_prefixes():
    key = key_from_header(
        "X-Api-Key", prefix="key:", fallback=key_from_client_address(prefix="ip:")
    )
    with_header: Scope = {"headers": [(b"x-api-key", b"k1")], "client": ("10.0.0.1", 5000)}
    empty_header: Scope = {"headers": [(b"x-api-key", b"")], "client": ("10.0.0.1", 5000)}
    assert key(with_header) == "key:k1"
    assert key(empty_header) == "ip:10.0.0.1"
    assert key({"headers": []}) is None  # no header, no client address


def test_the_default_key_is_the_client_address():
    app = RateLimitMiddleware(make_app(), Limiter("1/minute", clock=FakeClock()))
    client = TestClient(app)  # its requests come from the address "testclient"
    assert client.get("/items").status_code == 200
    assert client.get("/items", headers=KEY_B).status_code == 429


# --- dry run, exempt paths, pass-through ------------------------------------------------


def test_dry_run_never_refuses_but_reports(caplog: pytest.LogCaptureFixture):
    calls = Calls()
    app, _, _ = limited("2/minute", calls, dry_run=True)
    client = TestClient(app)
    with caplog.at_level(logging.INFO, logger="meshlimit.asgi"):
        responses = [client.get("/items", headers=KEY_A) for _ in range(5)]
    assert [r.status_code for r in responses] == [200] * 5
    assert calls.count == {"items": 5}
    assert [params(r.headers["ratelimit"])[1]["r"] for r in responses] == [1, 0, 0, 0, 0]
    assert all("retry-after" not in r.headers for r in responses)
    assert app.stats["dry_run_refused"] == 3 and app.stats["refused"] == 0
    assert app.stats["allowed"] == 2
    assert sum("would refuse client='alice'" in r.getMessage() for r in caplog.records) == 3


def test_a_shadow_rule_is_counted_as_shadowed(caplog: pytest.LogCaptureFixture):
    if "shadow" not in Rule.__dataclass_fields__:
        pytest.skip("rules have no shadow mode in this tree")
    app, _, _ = limited("1/minute shadow")
    client = TestClient(app)
    assert [client.get("/items", headers=KEY_A).status_code for _ in range(3)] == [200] * 3
    assert app.stats["shadowed"] == 2 and app.stats["allowed"] == 3


def test_exempt_paths_and_what_lies_below_them_are_not_limited():
    calls = Calls()
    app, _, _ = limited("1/minute", calls, exempt=["/health/"])
    client = TestClient(app)
    for path in ("/health", "/health/live", "/health", "/health/live"):
        response = client.get(path, headers=KEY_A)
        assert response.status_code == 200 and "ratelimit" not in response.headers
    assert client.get("/healthz", headers=KEY_A).status_code == 200  # not below /health
    assert client.get("/healthz", headers=KEY_A).status_code == 429
    assert app.stats["exempt"] == 4


def test_exempt_may_be_a_predicate():
    app, _, _ = limited("1/minute", exempt=lambda scope: scope["method"] == "POST")
    client = TestClient(app)
    assert [client.post("/items", headers=KEY_A).status_code for _ in range(3)] == [200] * 3
    assert [client.get("/items", headers=KEY_A).status_code for _ in range(2)] == [200, 429]


def test_websocket_and_lifespan_pass_through():
    started: list[bool] = []

    @asynccontextmanager
    async def lifespan(app: Starlette):  # type: ignore[no-untyped-def]
        started.append(True)
        yield

    limiter = Limiter("1/minute", clock=FakeClock())
    app = RateLimitMiddleware(make_app(lifespan=lifespan), limiter, key=lambda scope: "everyone")
    with TestClient(app) as client:
        assert started == [True]
        assert client.get("/items").status_code == 200
        assert client.get("/items").status_code == 429
        for _ in range(2):
            with client.websocket_connect("/ws") as websocket:
                websocket.send_text("hi")
                assert websocket.receive_text() == "hi"


def test_starlette_add_middleware_builds_it():
    limiter = Limiter("1/minute", clock=FakeClock())
    middleware = [
        Middleware(RateLimitMiddleware, limiter=limiter, key=key_from_header("x-api-key"))
    ]
    client = TestClient(make_app(middleware=middleware))
    assert client.get("/items", headers=KEY_A).status_code == 200
    assert client.get("/items", headers=KEY_A).status_code == 429


# --- errors ---------------------------------------------------------------------------

TOO_LONG = {"x-api-key": "k" * 300}  # client ids are at most 256 bytes: the limiter refuses


def test_limiter_errors_fail_open_by_default(caplog: pytest.LogCaptureFixture):
    calls = Calls()
    app, _, _ = limited("1/minute", calls)
    client = TestClient(app)
    with caplog.at_level(logging.WARNING, logger="meshlimit.asgi"):
        responses = [client.get("/items", headers=TOO_LONG) for _ in range(2)]
    assert [r.status_code for r in responses] == [200, 200]
    assert all("ratelimit" not in r.headers for r in responses)
    assert calls.count == {"items": 2}
    assert app.stats["errors"] == 2
    assert any("failing open" in r.getMessage() and r.exc_info for r in caplog.records)


@pytest.mark.parametrize("spelling", ["deny", "closed"])
def test_limiter_errors_fail_closed_when_asked(spelling: str):
    calls = Calls()
    app, _, _ = limited("1/minute", calls, on_error=spelling)
    assert app.on_error == "deny"
    response = TestClient(app).get("/items", headers=TOO_LONG)
    assert response.status_code == 503
    assert response.json() == {"error": "rate limiter unavailable"}
    assert calls.count == {}
    assert app.stats["errors"] == 1


def test_limiter_errors_propagate_when_asked():
    calls = Calls()
    app, _, _ = limited("1/minute", calls, on_error="raise")
    with pytest.raises(ValueError, match="client id longer"):
        TestClient(app).get("/items", headers=TOO_LONG)
    assert calls.count == {}
    assert limited("1/minute", on_error="open")[0].on_error == "allow"


def test_the_apps_own_errors_are_not_the_limiters():
    calls = Calls()
    app, _, _ = limited("5/minute", calls)
    with pytest.raises(RuntimeError, match="the app's own bug"):
        TestClient(app).get("/boom", headers=KEY_A)
    assert calls.count == {"boom": 1}  # run once, not again as a "fail open"
    assert app.stats["errors"] == 0


def test_bad_arguments_are_refused_at_construction():
    limiter = Limiter("1/minute")
    with pytest.raises(ValueError, match="on_error"):
        RateLimitMiddleware(make_app(), limiter, on_error="ajar")
    with pytest.raises(ValueError, match="cost"):
        RateLimitMiddleware(make_app(), limiter, cost=-1)
    with pytest.raises(TypeError, match="check"):
        RateLimitMiddleware(make_app(), object())
    with pytest.raises(TypeError, match="set_rule"):  # a route table needs rules written
        RateLimitMiddleware(make_app(), CheckOnly(), routes={"/items": "1/minute"})


# --- async limiters -------------------------------------------------------------------


class AsyncLimiter:
    """An async limiter: a :class:`Limiter` behind ``async`` methods, recording calls."""

    def __init__(self, rule: str) -> None:
        self.inner = Limiter(rule, clock=FakeClock())
        self.checks: list[tuple[str, int]] = []

    async def check(self, client: str, cost: int = 1) -> Decision:
        self.checks.append((client, cost))
        return self.inner.check(client, cost)

    async def get_rule(self, client: str) -> Rule:
        return self.inner.get_rule(client)


def test_an_async_limiter_is_awaited():
    limiter = AsyncLimiter("2/minute")
    app = RateLimitMiddleware(make_app(), limiter, key=key_from_header("x-api-key"))
    client = TestClient(app)
    codes = [client.get("/items", headers=KEY_A).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    assert limiter.checks == [("alice", 1)] * 3


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.loopback
def test_a_cluster_node_limits_the_app():
    # A Node lives on the loop it was started on, so start it on a portal and let the
    # TestClient run the app on that same portal.
    with anyio.from_thread.start_blocking_portal() as portal:
        start = functools.partial(
            Node.start, f"127.0.0.1:{free_udp_port()}", default="2/day", preset="local"
        )
        node = portal.call(start)
        try:
            app = RateLimitMiddleware(make_app(), node, key=key_from_header("x-api-key"))
            client = TestClient(app)
            client.portal = portal
            responses = [client.get("/items", headers=KEY_A) for _ in range(3)]
            assert [r.status_code for r in responses] == [200, 200, 429]
            assert params(responses[0].headers["ratelimit-policy"]) == (
                "default",
                {"q": 2, "w": 86_400},
            )
            assert params(responses[1].headers["ratelimit"])[1]["r"] == 0
            assert int(responses[2].headers["retry-after"]) > 0
            assert client.get("/items", headers=KEY_B).status_code == 200
        finally:
            portal.call(node.stop)


# --- over real HTTP -------------------------------------------------------------------


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def served(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a loopback port in a thread; yield its base URL."""
    port = free_tcp_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive(), "uvicorn exited during startup"
            assert time.monotonic() < deadline, "uvicorn did not start within 10 s"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        assert not thread.is_alive(), "uvicorn did not stop"


@pytest.mark.loopback
def test_headers_survive_a_real_http_server():
    app, _, _ = limited("1/minute")
    with served(app) as base, httpx.Client(base_url=base, timeout=5) as http:
        ok = http.get("/items", headers=KEY_A)
        refused = http.get("/items", headers=KEY_A)
    assert ok.status_code == 200 and ok.json() == {"items": [1, 2, 3]}
    assert params(ok.headers["RateLimit"]) == ("default", {"r": 0, "t": 60})
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) > 0
    assert refused.json()["error"] == "rate limited"
    assert int(refused.headers["content-length"]) == len(refused.content)


# --- async keys, minimal and blocking backends ------------------------------------------


def test_an_async_key_function_is_awaited():
    # Before: the coroutine itself became the client id, the check raised, and the
    # request went through with no headers (failing open, silently).
    async def api_key(scope: Scope) -> str | None:
        return dict(scope["headers"]).get(b"x-api-key", b"").decode() or None

    calls = Calls()
    limiter = Limiter("2/minute", clock=FakeClock())
    app = RateLimitMiddleware(make_app(calls), limiter, key=api_key)
    client = TestClient(app)
    responses = [client.get("/items", headers=KEY_A) for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 429]
    assert params(responses[1].headers["ratelimit"])[1]["r"] == 0
    assert client.get("/items", headers=KEY_B).status_code == 200
    assert client.get("/items").status_code == 200  # the async key answered None
    assert app.stats == {**app.stats, "allowed": 3, "refused": 1, "skipped": 1, "errors": 0}
    assert limiter.check("alice", 0).remaining == 0  # counted under the key's value


class CheckOnly:
    """A backend with nothing but a plain ``check``: blocking, as far as anyone knows."""

    def __init__(self, rule: str = "2/minute") -> None:
        self.inner = Limiter(rule, clock=FakeClock())
        self.threads: list[str] = []

    def check(self, key: str, cost: int = 1) -> Decision:
        self.threads.append(threading.current_thread().name)
        return self.inner.check(key, cost)._replace(window_ns=0)


def test_a_backend_with_only_check_fits_and_runs_off_the_event_loop():
    loop_threads: list[str] = []

    async def where(request: Request) -> JSONResponse:
        loop_threads.append(threading.current_thread().name)
        return JSONResponse({})

    backend = CheckOnly("2/minute")
    app = RateLimitMiddleware(
        Starlette(routes=[Route("/where", where)]), backend, key=lambda scope: "alice"
    )
    assert app.gate.backend.blocking
    client = TestClient(app)
    responses = [client.get("/where") for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 429]
    # No rule to ask for and none in the decision: the policy has its quota but no window.
    assert params(responses[0].headers["ratelimit-policy"]) == ("default", {"q": 2})
    assert len(backend.threads) == 3 and not set(backend.threads) & set(loop_threads)


def test_a_declared_non_blocking_backend_runs_on_the_loop():
    backend = CheckOnly("2/minute")
    backend.blocking = False  # type: ignore[attr-defined]
    app = RateLimitMiddleware(make_app(), backend, key=lambda scope: "alice")
    assert not app.gate.backend.blocking
    assert TestClient(app).get("/items").status_code == 200


@pytest.mark.loopback
def test_a_sync_node_runs_off_the_loop():
    from meshlimit.sync import SyncNode

    node = SyncNode.start(f"127.0.0.1:{free_udp_port()}", default="2/day", preset="local")
    try:
        app = RateLimitMiddleware(make_app(), node, key=key_from_header("x-api-key"))
        assert app.gate.backend.blocking
        client = TestClient(app)
        responses = [client.get("/items", headers=KEY_A) for _ in range(3)]
        assert [r.status_code for r in responses] == [200, 200, 429]
        assert params(responses[0].headers["ratelimit-policy"]) == (
            "default",
            {"q": 2, "w": 86_400},
        )
    finally:
        node.stop()


def test_a_fallback_decision_passes_unannotated_or_is_refused_503():
    # A daemon client that reached no daemon answers from its own error policy.
    class Unreachable:
        blocking = False

        def __init__(self, allowed: bool) -> None:
            self.allowed = allowed

        def check(self, key: str, cost: int = 1) -> Decision:
            return Decision(self.allowed, 0, 0, 0.0, 0.0, "fallback")

    allow = RateLimitMiddleware(make_app(), Unreachable(True), key=lambda scope: "alice")
    response = TestClient(allow).get("/items")
    assert response.status_code == 200 and "ratelimit" not in response.headers
    deny = RateLimitMiddleware(make_app(), Unreachable(False), key=lambda scope: "alice")
    assert TestClient(deny).get("/items").status_code == 503
    assert allow.stats["errors"] == deny.stats["errors"] == 1


# --- per-route limits -----------------------------------------------------------------


def route_app(calls: Calls) -> Starlette:
    """Routes with limits of their own (the decorator), one exempt, one plain."""

    @limit("2/minute")
    async def login(request: Request) -> JSONResponse:
        calls.hit("login")
        return JSONResponse({})

    @limit("1/second;3/minute")
    async def search(request: Request) -> JSONResponse:
        calls.hit("search")
        return JSONResponse({})

    @exempt
    async def status(request: Request) -> JSONResponse:
        return JSONResponse({})

    async def items(request: Request) -> JSONResponse:
        calls.hit("items")
        return JSONResponse({})

    api = [Route("/search/{term}", search)]
    return Starlette(
        routes=[
            Route("/login", login, methods=["POST"]),
            Route("/status", status),
            Route("/items", items),
            Mount("/api", routes=api),
        ]
    )


def test_a_decorated_route_counts_under_its_own_limit_per_key():
    calls = Calls()
    limiter = Limiter("5/minute", clock=FakeClock())
    middleware = [
        Middleware(RateLimitMiddleware, limiter=limiter, key=key_from_header("x-api-key"))
    ]
    client = TestClient(Starlette(routes=route_app(calls).routes, middleware=middleware))
    logins = [client.post("/login", headers=KEY_A) for _ in range(3)]
    assert [r.status_code for r in logins] == [200, 200, 429]
    assert params(logins[0].headers["ratelimit-policy"]) == ("2/minute", {"q": 2, "w": 60})
    assert params(logins[1].headers["ratelimit"]) == ("2/minute", {"r": 0, "t": 60})
    assert client.post("/login", headers=KEY_B).status_code == 200  # per key
    # The key's own rule is untouched by the route's counter, and applies elsewhere.
    items = client.get("/items", headers=KEY_A)
    assert params(items.headers["ratelimit-policy"]) == ("default", {"q": 5, "w": 60})
    assert params(items.headers["ratelimit"])[1]["r"] == 4
    for _ in range(4):
        response = client.get("/status", headers=KEY_A)
        assert response.status_code == 200 and "ratelimit" not in response.headers
    assert calls.count == {"login": 3, "items": 1}


def split(value: str) -> dict[str, dict[str, int]]:
    """A Structured-Field list of policies, by name."""
    return dict(params(item.strip()) for item in value.split(","))


def test_several_limits_at_once_are_distinct_policies_in_the_headers():
    calls = Calls()
    limiter = Limiter("100/minute", clock=(clock := FakeClock()))
    app = RateLimitMiddleware(route_app(calls), limiter, key=key_from_header("x-api-key"))
    client = TestClient(app)
    first = client.get("/api/search/x", headers=KEY_A)
    assert first.status_code == 200
    assert split(first.headers["ratelimit-policy"]) == {
        "1/second": {"q": 1, "w": 1},
        "3/minute": {"q": 3, "w": 60},
    }
    assert split(first.headers["ratelimit"]) == {
        "1/second": {"r": 0, "t": 1},
        "3/minute": {"r": 2, "t": 60},
    }
    refused = client.get("/api/search/y", headers=KEY_A)  # the same route: one counter
    assert refused.status_code == 429
    twin = Limiter("1/second", clock=clock)  # the per-second counter's history
    twin.check("alice")
    assert int(refused.headers["retry-after"]) == math.ceil(twin.check("alice").retry_after)
    # Refused by the second's limit (checked first): the minute's was not charged.
    assert "3/minute" not in refused.headers["ratelimit"]
    for _ in range(2):
        clock.advance(2)
        assert client.get("/api/search/x", headers=KEY_A).status_code == 200
    clock.advance(2)
    last = client.get("/api/search/x", headers=KEY_A)  # the minute's 3 are spent
    assert last.status_code == 429
    assert split(last.headers["ratelimit"])["3/minute"]["r"] == 0
    assert calls.count == {"search": 3}


def test_a_route_table_limits_paths_of_any_app():
    calls = Calls()
    app, limiter, _ = limited(
        "5/minute", calls, routes={"POST /items": "1/minute", "/health": "2/minute"}
    )
    client = TestClient(app)
    assert [client.post("/items", headers=KEY_A).status_code for _ in range(2)] == [200, 429]
    got = client.get("/items", headers=KEY_A)  # GET is not the entry's method
    assert params(got.headers["ratelimit-policy"]) == ("default", {"q": 5, "w": 60})
    codes = [client.get("/health/live", headers=KEY_A).status_code for _ in range(3)]
    assert codes == [200, 200, 429]  # /health covers what lies below it
    assert limiter.check("alice", 0).remaining == 4  # only the GET counted as the key's own


def test_route_limits_over_an_async_backend():
    backend = AsyncRuleLimiter("100/minute")
    app = RateLimitMiddleware(
        make_app(), backend, key=key_from_header("x-api-key"), routes={"/items": "2/minute"}
    )
    client = TestClient(app)
    assert [client.get("/items", headers=KEY_A).status_code for _ in range(3)] == [200, 200, 429]
    (route_id,) = backend.rules
    assert route_id.startswith("cl.throttle:route:/items|2/minute|alice")
    assert backend.rules[route_id] == Rule.parse("2/minute")


class AsyncRuleLimiter(AsyncLimiter):
    """An async backend that takes rules too."""

    def __init__(self, rule: str) -> None:
        super().__init__(rule)
        self.rules: dict[str, Rule] = {}

    async def set_rule(self, client: str, rule: Rule) -> None:
        self.rules[client] = rule
        self.inner.set_rule(client, rule)
