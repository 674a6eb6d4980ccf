"""The WSGI middleware (``meshlimit/wsgi.py``) around a plain WSGI app, driven by werkzeug's
test client, with a :class:`meshlimit.Limiter` on a fake clock so counts and times are exact."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

import pytest
from werkzeug.test import Client

from meshlimit import Limiter, Node
from meshlimit.core.decision import Decision
from meshlimit.wsgi import RateLimitMiddleware, key_from_client_address, key_from_header

S = 1_000_000_000
T0 = 1_700_000_040 * S  # the start of a minute


class FakeClock:
    def __init__(self) -> None:
        self.now_ns = T0

    def __call__(self) -> int:
        return self.now_ns

    def advance(self, seconds: float) -> None:
        self.now_ns += round(seconds * S)


class App:
    """A WSGI app answering JSON with a header of its own; ``/boom`` fails."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ["PATH_INFO"]
        self.calls.append(path)
        if path == "/boom":
            raise RuntimeError("the app's own bug")
        body = json.dumps({"path": path}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("X-App", "yes")])
        return [body]


def limited(rule: str = "3/minute", **options: Any) -> tuple[RateLimitMiddleware, App, FakeClock]:
    clock = FakeClock()
    app = App()
    options.setdefault("key", key_from_header("x-api-key"))
    return RateLimitMiddleware(app, Limiter(rule, clock=clock), **options), app, clock


def params(value: str) -> tuple[str, dict[str, int]]:
    name, *rest = value.split(";")
    return name.strip('"'), {k: int(v) for k, v in (p.split("=") for p in rest)}


KEY_A = {"X-Api-Key": "alice"}
KEY_B = {"X-Api-Key": "bob"}


def test_allowed_responses_carry_the_headers_and_keep_the_apps_own():
    middleware, app, _ = limited("3/minute")
    client = Client(middleware)
    for remaining in (2, 1, 0):
        response = client.get("/items", headers=KEY_A)
        assert response.status_code == 200
        assert response.json == {"path": "/items"}
        assert response.headers["X-App"] == "yes"
        assert params(response.headers["RateLimit-Policy"]) == ("default", {"q": 3, "w": 60})
        assert params(response.headers["RateLimit"]) == ("default", {"r": remaining, "t": 60})
        assert "Retry-After" not in response.headers
    assert middleware.stats["allowed"] == 3


def test_over_the_limit_is_429_with_retry_after_and_the_app_never_runs():
    middleware, app, clock = limited("3/minute")
    client = Client(middleware)
    for _ in range(3):
        assert client.get("/items", headers=KEY_A).status_code == 200
    twin = Limiter("3/minute", clock=clock)
    for _ in range(3):
        twin.check("alice")
    clock.advance(10.5)
    expected = math.ceil(twin.check("alice").retry_after)
    response = client.get("/items", headers=KEY_A)
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) == expected > 0
    assert response.json == {"error": "rate limited", "retry_after": expected}
    assert response.headers["Content-Type"] == "application/json"
    assert int(response.headers["Content-Length"]) == len(response.data)
    assert params(response.headers["RateLimit"]) == ("default", {"r": 0, "t": expected})
    assert app.calls == ["/items"] * 3
    assert middleware.stats["refused"] == 1
    assert client.get("/items", headers=KEY_B).status_code == 200  # per key


def test_a_key_of_none_is_not_limited_and_the_default_key_is_the_address():
    middleware, _, _ = limited("1/minute")
    client = Client(middleware)
    for _ in range(3):
        response = client.get("/items")  # no header: unlimited, unannotated
        assert response.status_code == 200 and "RateLimit" not in response.headers
    assert middleware.stats["skipped"] == 3
    by_address = RateLimitMiddleware(App(), Limiter("1/minute", clock=FakeClock()))
    client = Client(by_address)
    assert client.get("/", environ_base={"REMOTE_ADDR": "10.0.0.1"}).status_code == 200
    assert client.get("/", environ_base={"REMOTE_ADDR": "10.0.0.1"}).status_code == 429
    assert client.get("/", environ_base={"REMOTE_ADDR": "10.0.0.2"}).status_code == 200
    fallback = key_from_header("x-api-key", prefix="k:", fallback=key_from_client_address())
    assert fallback({"HTTP_X_API_KEY": "a"}) == "k:a"
    assert fallback({"REMOTE_ADDR": "10.0.0.3"}) == "10.0.0.3"


def test_cost_exempt_paths_and_dry_run():
    middleware, app, _ = limited(
        "3/minute", cost=lambda environ: 2 if environ["REQUEST_METHOD"] == "POST" else 1
    )
    client = Client(middleware)
    assert params(client.post("/items", headers=KEY_A).headers["RateLimit"])[1]["r"] == 1
    assert client.post("/items", headers=KEY_A).status_code == 429
    exempting, _, _ = limited("1/minute", exempt=["/health"])
    client = Client(exempting)
    assert [client.get("/health/live", headers=KEY_A).status_code for _ in range(3)] == [200] * 3
    assert exempting.stats["exempt"] == 3
    dry, app, _ = limited("1/minute", dry_run=True)
    client = Client(dry)
    responses = [client.get("/items", headers=KEY_A) for _ in range(3)]
    assert [r.status_code for r in responses] == [200] * 3
    assert all("Retry-After" not in r.headers for r in responses)
    assert dry.stats["dry_run_refused"] == 2 and len(app.calls) == 3


def test_a_route_table_gives_paths_their_own_limits():
    middleware, _, _ = limited("5/minute", routes={"POST /login": "1/minute;3/hour"})
    client = Client(middleware)
    first = client.post("/login", headers=KEY_A)
    assert first.status_code == 200
    policies = dict(params(p.strip()) for p in first.headers["RateLimit-Policy"].split(","))
    assert policies == {"1/minute": {"q": 1, "w": 60}, "3/hour": {"q": 3, "w": 3600}}
    assert client.post("/login", headers=KEY_A).status_code == 429
    assert client.get("/login", headers=KEY_A).status_code == 200  # GET: the key's own rule
    assert middleware.limiter.check("alice", 0).remaining == 4


TOO_LONG = {"X-Api-Key": "k" * 300}  # longer than a client id may be: the limiter raises


def test_errors_allow_deny_or_raise():
    allowing, app, _ = limited("1/minute")
    response = Client(allowing).get("/items", headers=TOO_LONG)
    assert response.status_code == 200 and "RateLimit" not in response.headers
    assert allowing.stats["errors"] == 1 and app.calls == ["/items"]
    for spelling in ("deny", "closed"):
        denying, app, _ = limited("1/minute", on_error=spelling)
        response = Client(denying).get("/items", headers=TOO_LONG)
        assert response.status_code == 503
        assert response.json == {"error": "rate limiter unavailable"}
        assert app.calls == []
    raising, _, _ = limited("1/minute", on_error="raise")
    with pytest.raises(ValueError, match="client id"):
        Client(raising).get("/items", headers=TOO_LONG)
    with pytest.raises(RuntimeError, match="the app's own bug"):  # never the limiter's
        Client(allowing).get("/boom", headers=KEY_A)
    with pytest.raises(ValueError, match="on_error"):
        limited(on_error="ajar")


def test_a_fallback_decision_passes_or_is_503():
    class Unreachable:
        def __init__(self, allowed: bool) -> None:
            self.allowed = allowed

        def check(self, key: str, cost: int = 1) -> Decision:
            return Decision(self.allowed, 0, 0, 0.0, 0.0, "fallback")

    allowing = RateLimitMiddleware(App(), Unreachable(True), key=lambda environ: "a")
    response = Client(allowing).get("/")
    assert response.status_code == 200 and "RateLimit" not in response.headers
    denying = RateLimitMiddleware(App(), Unreachable(False), key=lambda environ: "a")
    assert Client(denying).get("/").status_code == 503
    assert allowing.stats["errors"] == denying.stats["errors"] == 1


def test_an_async_backend_is_refused_at_construction():
    with pytest.raises(TypeError, match="SyncNode"):
        RateLimitMiddleware(App(), Node.__new__(Node))
    with pytest.raises(TypeError, match="check"):
        RateLimitMiddleware(App(), object())
