"""The Django integration (``meshlimit/django.py``) with Django's test clients.

Django is configured here, once per process: this module is the URL conf, the
middleware is ``meshlimit.django.RateLimitMiddleware`` behind a stand-in for
authentication, and each test sets ``MESHLIMIT`` with ``override_settings`` (which
rebuilds the backend). The ``memory`` backend is a Limiter on the wall clock, so
tests use limits per minute or longer and never wait.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import django
import pytest
from django.conf import settings

if not settings.configured:
    settings.configure(
        DEBUG=False,
        ALLOWED_HOSTS=["testserver"],
        ROOT_URLCONF=__name__,
        SECRET_KEY="test-only",
        USE_TZ=True,
        MIDDLEWARE=[
            f"{__name__}.FakeAuthentication",
            "meshlimit.django.RateLimitMiddleware",
        ],
    )
    django.setup()

from django.core.exceptions import ImproperlyConfigured  # noqa: E402
from django.http import HttpRequest, HttpResponse, JsonResponse  # noqa: E402
from django.test import AsyncClient, Client, override_settings  # noqa: E402
from django.urls import path  # noqa: E402

import meshlimit.django as ml  # noqa: E402
from meshlimit.django import exempt, ratelimit  # noqa: E402

CALLS: list[str] = []


class FakeUser:
    """What ``AuthenticationMiddleware`` would put on the request."""

    def __init__(self, pk: int | None) -> None:
        self.pk = pk
        self.is_authenticated = pk is not None


class FakeAuthentication:
    """Logs in the user named by ``X-User`` (a number), as authentication would."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = request.headers.get("X-User")
        request.user = FakeUser(int(user) if user else None)  # type: ignore[attr-defined]
        return self.get_response(request)


def items(request: HttpRequest) -> HttpResponse:
    CALLS.append("items")
    return JsonResponse({"items": [1, 2, 3]})


@ratelimit("2/minute", key="ip")
def login(request: HttpRequest) -> HttpResponse:
    CALLS.append("login")
    return JsonResponse({"ok": True})


@ratelimit("1/minute;3/hour")
@ratelimit("2/minute", key="user", cost=2)
def upload(request: HttpRequest) -> HttpResponse:
    CALLS.append("upload")
    return JsonResponse({"ok": True})


@exempt
def status(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"ok": True})


@ratelimit("1/minute")
async def feed(request: HttpRequest) -> HttpResponse:
    CALLS.append("feed")
    return JsonResponse({"ok": True})


def key_from_query(request: HttpRequest) -> str | None:
    """A key function named by dotted path in the settings."""
    return request.GET.get("who")


urlpatterns = [
    path("items", items),
    path("login", login),
    path("upload", upload),
    path("status", status),
    path("health/live", items),
    path("feed", feed),
]


def params(value: str) -> tuple[str, dict[str, int]]:
    name, *rest = value.split(";")
    return name.strip('"'), {k: int(v) for k, v in (p.split("=") for p in rest)}


def policies(value: str) -> dict[str, dict[str, int]]:
    return dict(params(item.strip()) for item in value.split(","))


A = {"HTTP_X_API_KEY": "alice"}
B = {"HTTP_X_API_KEY": "bob"}


@pytest.fixture(autouse=True)
def fresh() -> Any:
    CALLS.clear()
    ml.reset()
    yield
    ml.reset()


def memory(**options: Any) -> Any:
    return override_settings(MESHLIMIT={"BACKEND": "memory", "KEY": "header:x-api-key", **options})


def test_the_middleware_limits_every_view_by_the_backends_rule():
    with memory(DEFAULT="3/minute", RULES={"bob": "1/minute"}):
        client = Client()
        responses = [client.get("/items", **A) for _ in range(4)]
        assert [r.status_code for r in responses] == [200, 200, 200, 429]
        assert responses[0].json() == {"items": [1, 2, 3]}
        assert params(responses[0]["RateLimit-Policy"]) == ("default", {"q": 3, "w": 60})
        assert params(responses[1]["RateLimit"])[1]["r"] == 1
        refused = responses[3]
        assert refused["Content-Type"] == "application/json"
        assert refused.json() == {
            "error": "rate limited",
            "retry_after": int(refused["Retry-After"]),
        }
        assert [client.get("/items", **B).status_code for _ in range(2)] == [200, 429]
        for _ in range(3):  # no key: unlimited, unannotated
            response = client.get("/items")
            assert response.status_code == 200 and not response.has_header("RateLimit")
        assert client.get("/nowhere", **A).status_code == 404
    assert CALLS == ["items"] * 3 + ["items"] + ["items"] * 3


def test_a_decorated_view_has_its_own_limit_and_the_middleware_leaves_it():
    with memory(DEFAULT="3/minute"):
        client = Client()
        logins = [client.get("/login", REMOTE_ADDR="10.0.0.1", **A) for _ in range(3)]
        assert [r.status_code for r in logins] == [200, 200, 429]
        assert params(logins[0]["RateLimit-Policy"]) == ("2/minute", {"q": 2, "w": 60})
        assert "default" not in logins[0]["RateLimit-Policy"]  # not charged twice
        assert client.get("/login", REMOTE_ADDR="10.0.0.2").status_code == 200  # key: ip
        # The api key's own count is untouched by the login route.
        assert params(client.get("/items", **A)["RateLimit"])[1]["r"] == 2
    assert CALLS == ["login", "login", "login", "items"]


def test_stacked_decorators_several_limits_and_the_user_key():
    with memory(DEFAULT="100/minute"):
        client = Client()
        first = client.get("/upload", HTTP_X_USER="7", **A)
        assert policies(first["RateLimit-Policy"]) == {
            "1/minute": {"q": 1, "w": 60},
            "2/minute": {"q": 2, "w": 60},
            "3/hour": {"q": 3, "w": 3600},
        }
        assert policies(first["RateLimit"])["2/minute"]["r"] == 0  # cost 2, per user
        # Another api key, the same user: the user's limit refuses.
        assert client.get("/upload", HTTP_X_USER="7", **B).status_code == 429
        # No user (the key answers None): only the api key's limits apply, and the
        # minute's one is spent.
        assert client.get("/upload", **A).status_code == 429
        assert client.get("/upload", **B).status_code == 200
    assert CALLS == ["upload", "upload"]


def test_exempt_views_and_paths():
    with memory(DEFAULT="1/minute", EXEMPT=["/health"]):
        client = Client()
        for _ in range(3):
            assert not client.get("/status", **A).has_header("RateLimit")
            assert not client.get("/health/live", **A).has_header("RateLimit")
        assert [client.get("/items", **A).status_code for _ in range(2)] == [200, 429]


def test_keys_by_dotted_path_and_user_or_ip():
    with memory(DEFAULT="1/minute", KEY=f"{__name__}.key_from_query"):
        client = Client()
        assert [client.get("/items?who=x").status_code for _ in range(2)] == [200, 429]
        assert client.get("/items?who=y").status_code == 200
        assert not client.get("/items").has_header("RateLimit")
    with memory(DEFAULT="1/minute", KEY="user_or_ip"):
        client = Client()
        assert client.get("/items", HTTP_X_USER="3").status_code == 200
        assert client.get("/items", HTTP_X_USER="3").status_code == 429
        assert client.get("/items", REMOTE_ADDR="10.0.0.9").status_code == 200
        assert client.get("/items", REMOTE_ADDR="10.0.0.9").status_code == 429


def test_an_async_view_is_limited_by_its_decorator():
    async def run() -> list[int]:
        client = AsyncClient()
        key = {"X-Api-Key": "alice"}
        return [(await client.get("/feed", headers=key)).status_code for _ in range(2)]

    with memory(DEFAULT="100/minute"):
        assert asyncio.run(run()) == [200, 429]
    assert CALLS == ["feed"]


def test_errors_allow_deny_or_raise():
    too_long = {"HTTP_X_API_KEY": "k" * 300}  # longer than a client id may be
    with memory(DEFAULT="1/minute"):
        response = Client().get("/items", **too_long)
        assert response.status_code == 200 and not response.has_header("RateLimit")
    with memory(DEFAULT="1/minute", ON_ERROR="deny"):
        response = Client().get("/items", **too_long)
        assert response.status_code == 503
        assert response.json() == {"error": "rate limiter unavailable"}
        assert Client().get("/login", **too_long).status_code == 200  # its key is the ip
    with memory(DEFAULT="1/minute", ON_ERROR="raise"), pytest.raises(ValueError, match="client id"):
        Client().get("/items", **too_long)
    assert CALLS == ["items", "login"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"BACKND": "memory"}, "unknown settings"),
        ({"BACKEND": "redis"}, "not 'memory', 'daemon', 'node'"),
        ({"BACKEND": "daemon"}, "ADDRESSES"),
        ({"BACKEND": "daemon", "ADDRESSES": ["h:1"], "DEFAULT": "1/s"}, "daemon's own"),
        ({"BACKEND": "node"}, "bind"),
        ({"KEY": "cookie"}, "KEY 'cookie'"),
        ({"KEY": "nowhere.key"}, "nowhere"),
        ({"ON_ERROR": "ajar"}, "ON_ERROR"),
    ],
)
def test_bad_settings_are_refused_clearly(options: dict[str, Any], message: str):
    with override_settings(MESHLIMIT=options), pytest.raises(ImproperlyConfigured, match=message):
        ml.configured()


@pytest.mark.loopback
def test_a_node_backend_is_started_from_the_settings_and_stopped_on_change():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    node_settings = {
        "BACKEND": "node",
        "NODE": {"bind": f"127.0.0.1:{port}", "preset": "local"},
        "DEFAULT": "2/day",
        "KEY": "header:x-api-key",
    }
    with override_settings(MESHLIMIT=node_settings):
        client = Client()
        responses = [client.get("/items", **A) for _ in range(3)]
        assert [r.status_code for r in responses] == [200, 200, 429]
        assert params(responses[0]["RateLimit-Policy"]) == ("default", {"q": 2, "w": 86_400})
        node = ml.configured().backend
        assert node.running
    assert not node.running  # the settings changed back: the node was stopped


@pytest.mark.process
def test_a_daemon_backend_shares_its_count_and_fails_open_when_it_is_gone():
    from meshlimit.processes import HOST, NodeProcess, free_port

    resp = f"{HOST}:{free_port(socket.SOCK_STREAM)}"
    node = NodeProcess("django", default="2/hour", extra=["--resp", resp])
    node.start()
    try:
        daemon = {
            "BACKEND": "daemon",
            "ADDRESSES": [resp],
            "CLIENT": {"timeout_ms": 500},
            "KEY": "header:x-api-key",
        }
        with override_settings(MESHLIMIT=daemon):
            client = Client()
            responses = [client.get("/items", **A) for _ in range(3)]
            assert [r.status_code for r in responses] == [200, 200, 429]
            assert params(responses[0]["RateLimit-Policy"]) == ("default", {"q": 2, "w": 3600})
            assert node.check("alice", 0)["remaining"] == 0  # counted by the daemon
            node.stop()
            response = client.get("/items", **B)  # no daemon: the client's fallback, allow
            assert response.status_code == 200 and not response.has_header("RateLimit")
    finally:
        node.stop()
