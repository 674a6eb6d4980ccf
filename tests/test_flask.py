"""The Flask integration (``meshlimit/flask.py``) with Flask's test client and a
:class:`meshlimit.Limiter` on a fake clock."""

from __future__ import annotations

import math
from typing import Any

import flask
import pytest

from meshlimit import Limiter, Node
from meshlimit.core.decision import Decision
from meshlimit.flask import RateLimiter, header, remote_address

S = 1_000_000_000
T0 = 1_700_000_040 * S  # the start of a minute


class FakeClock:
    def __init__(self) -> None:
        self.now_ns = T0

    def __call__(self) -> int:
        return self.now_ns

    def advance(self, seconds: float) -> None:
        self.now_ns += round(seconds * S)


def params(value: str) -> tuple[str, dict[str, int]]:
    name, *rest = value.split(";")
    return name.strip('"'), {k: int(v) for k, v in (p.split("=") for p in rest)}


def policies(value: str) -> dict[str, dict[str, int]]:
    """A Structured-Field list of policies, by name."""
    return dict(params(item.strip()) for item in value.split(","))


def make_app(rule: str = "3/minute", **options: Any) -> tuple[flask.Flask, RateLimiter, Limiter]:
    """An app with a plain route, limited routes, an exempt one; keyed by X-Api-Key."""
    app = flask.Flask(__name__)
    limiter = Limiter(rule, clock=options.pop("clock", FakeClock()))
    options.setdefault("key", header("X-Api-Key"))
    rl = RateLimiter(app, limiter=limiter, **options)
    app.config["calls"] = calls = []

    @app.get("/items")
    def items() -> Any:
        calls.append("items")
        return {"items": [1, 2, 3]}

    @app.post("/login")
    @rl.limit("2/minute")
    def login() -> Any:
        calls.append("login")
        return {"ok": True}

    @app.get("/search")
    @rl.limit("1/second;3/minute")
    def search() -> Any:
        calls.append("search")
        return {"ok": True}

    @app.get("/upload")
    @rl.limit("2/minute")
    @rl.limit("3/hour", key=header("X-User"), cost=lambda: 2)
    def upload() -> Any:
        calls.append("upload")
        return {"ok": True}

    @app.get("/health")
    @rl.exempt
    def health() -> Any:
        calls.append("health")
        return {"ok": True}

    return app, rl, limiter


A = {"X-Api-Key": "alice"}
B = {"X-Api-Key": "bob"}


def test_an_undecorated_route_uses_the_backends_rule_for_the_key():
    app, _, limiter = make_app("3/minute")
    limiter.set_rule("bob", "1/minute burst 1")
    client = app.test_client()
    responses = [client.get("/items", headers=A) for _ in range(4)]
    assert [r.status_code for r in responses] == [200, 200, 200, 429]
    assert responses[0].json == {"items": [1, 2, 3]}
    assert params(responses[0].headers["RateLimit-Policy"]) == ("default", {"q": 3, "w": 60})
    assert params(responses[2].headers["RateLimit"]) == ("default", {"r": 0, "t": 60})
    refused = responses[3]
    assert refused.json == {
        "error": "rate limited",
        "retry_after": int(refused.headers["Retry-After"]),
    }
    assert refused.headers["Content-Type"] == "application/json"
    bob = client.get("/items", headers=B)  # bob's own rule, burst shown
    assert params(bob.headers["RateLimit-Policy"]) == (
        "default",
        {"q": 1, "w": 60, "meshlimit-burst": 1},
    )
    assert app.config["calls"] == ["items"] * 4


def test_a_decorated_route_has_its_own_counter_per_key():
    app, _, limiter = make_app("3/minute")
    client = app.test_client()
    logins = [client.post("/login", headers=A) for _ in range(3)]
    assert [r.status_code for r in logins] == [200, 200, 429]
    assert params(logins[0].headers["RateLimit-Policy"]) == ("2/minute", {"q": 2, "w": 60})
    assert params(logins[1].headers["RateLimit"]) == ("2/minute", {"r": 0, "t": 60})
    assert client.post("/login", headers=B).status_code == 200
    # alice's own rule was not charged by the route, and still applies elsewhere.
    assert limiter.check("alice", 0).remaining == 3
    assert params(client.get("/items", headers=A).headers["RateLimit"])[1]["r"] == 2
    assert app.config["calls"] == ["login", "login", "login", "items"]


def test_several_limits_in_one_notation_each_count_and_report():
    clock = FakeClock()
    app, _, _ = make_app("100/minute", clock=clock)
    client = app.test_client()
    first = client.get("/search", headers=A)
    assert policies(first.headers["RateLimit-Policy"]) == {
        "1/second": {"q": 1, "w": 1},
        "3/minute": {"q": 3, "w": 60},
    }
    assert policies(first.headers["RateLimit"])["3/minute"]["r"] == 2
    twin = Limiter("1/second", clock=clock)
    twin.check("x")
    refused = client.get("/search", headers=A)
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) == math.ceil(twin.check("x").retry_after)
    for _ in range(2):
        clock.advance(2)
        assert client.get("/search", headers=A).status_code == 200
    clock.advance(2)
    last = client.get("/search", headers=A)  # the minute's three are spent, not four
    assert last.status_code == 429
    assert policies(last.headers["RateLimit"])["3/minute"]["r"] == 0


def test_stacked_limits_with_their_own_keys_and_costs():
    app, _, _ = make_app("100/minute")
    client = app.test_client()
    carol = {**A, "X-User": "carol"}
    first = client.get("/upload", headers=carol)
    assert policies(first.headers["RateLimit"]) == {
        "2/minute": {"r": 1, "t": 60},
        "3/hour": {"r": 1, "t": 3600 - T0 // S % 3600},  # cost 2 of 3
    }
    # The hour's limit is carol's: another api key does not help her.
    refused = client.get("/upload", headers={"X-Api-Key": "bob", "X-User": "carol"})
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) > 60  # the hour's wait, not the minute's
    assert policies(refused.headers["RateLimit"])["3/hour"]["r"] == 1
    # Without an X-User the hour's limit does not apply; the minute's still does.
    assert client.get("/upload", headers=A).status_code == 200
    assert client.get("/upload", headers=A).status_code == 429


def test_exempt_routes_keyless_requests_and_unknown_paths():
    app, _, limiter = make_app("1/minute")
    client = app.test_client()
    for _ in range(3):
        response = client.get("/health", headers=A)
        assert response.status_code == 200 and "RateLimit" not in response.headers
        assert "RateLimit" not in client.get("/items").headers  # no key: not limited
    assert client.get("/nowhere", headers=A).status_code == 404  # counted as the default
    assert client.get("/items", headers=A).status_code == 429
    assert limiter.check("alice", 0).remaining == 0


def test_init_app_for_app_factories_and_the_default_key():
    limiter = Limiter("1/minute", clock=FakeClock())
    rl = RateLimiter(limiter=limiter)

    def create_app() -> flask.Flask:
        app = flask.Flask(__name__)
        rl.init_app(app)

        @app.get("/")
        def index() -> Any:
            return "hi"

        return app

    app = create_app()
    assert app.extensions["meshlimit"] is rl and rl.key is remote_address
    client = app.test_client()
    assert client.get("/", environ_base={"REMOTE_ADDR": "10.0.0.1"}).status_code == 200
    assert client.get("/", environ_base={"REMOTE_ADDR": "10.0.0.1"}).status_code == 429
    assert client.get("/", environ_base={"REMOTE_ADDR": "10.0.0.2"}).status_code == 200


def test_errors_allow_deny_or_raise():
    too_long = {"X-Api-Key": "k" * 300}  # longer than a client id may be
    app, _, _ = make_app()
    response = app.test_client().get("/items", headers=too_long)
    assert response.status_code == 200 and "RateLimit" not in response.headers
    app, _, _ = make_app(on_error="deny")
    response = app.test_client().get("/items", headers=too_long)
    assert response.status_code == 503
    assert response.json == {"error": "rate limiter unavailable"}
    assert app.config["calls"] == []
    app, _, _ = make_app(on_error="raise")
    app.testing = True  # let the error out of the test client
    with pytest.raises(ValueError, match="client id"):
        app.test_client().get("/items", headers=too_long)
    with pytest.raises(ValueError, match="on_error"):
        make_app(on_error="ajar")


def test_a_fallback_decision_passes_unannotated_or_is_503():
    class Unreachable:
        def __init__(self, allowed: bool) -> None:
            self.allowed = allowed

        def check(self, key: str, cost: int = 1) -> Decision:
            return Decision(self.allowed, 0, 0, 0.0, 0.0, "fallback")

    for allowed, status in ((True, 200), (False, 503)):
        app = flask.Flask(__name__)
        RateLimiter(app, limiter=Unreachable(allowed), key=lambda: "alice")
        app.add_url_rule("/", "index", lambda: "hi")
        response = app.test_client().get("/")
        assert response.status_code == status and "RateLimit" not in response.headers


def test_bad_backends_and_notation_are_refused_early():
    app = flask.Flask(__name__)
    with pytest.raises(TypeError, match="Client"):
        RateLimiter(app, limiter=Node.__new__(Node))

    class CheckOnly:
        def check(self, key: str, cost: int = 1) -> Decision:
            raise AssertionError("never called")

    rl = RateLimiter(app, limiter=CheckOnly())
    with pytest.raises(TypeError, match="set_rule"):
        rl.limit("1/minute")
    rl = RateLimiter(app, limiter=Limiter())
    with pytest.raises(ValueError, match="fortnight"):
        rl.limit("5/fortnight")


@pytest.mark.process
def test_a_decorated_route_over_a_daemon_counts_once_per_key():
    import socket

    from meshlimit.client import Client
    from meshlimit.processes import HOST, NodeProcess, free_port

    resp = f"{HOST}:{free_port(socket.SOCK_STREAM)}"
    node = NodeProcess("flask", default="100/hour", extra=["--resp", resp])
    node.start()
    try:
        app = flask.Flask(__name__)
        rl = RateLimiter(app, limiter=Client(resp), key=header("X-Api-Key"), on_error="raise")
        app.testing = True

        @app.get("/login")
        @rl.limit("2/hour")
        def login() -> Any:
            return "ok"

        client = app.test_client()
        responses = [client.get("/login", headers=A) for _ in range(3)]
        assert [r.status_code for r in responses] == [200, 200, 429]
        assert params(responses[0].headers["RateLimit-Policy"]) == ("2/hour", {"q": 2, "w": 3600})
        assert node.check("alice", 0)["remaining"] == 100  # the key's own count: untouched
    finally:
        node.stop()
