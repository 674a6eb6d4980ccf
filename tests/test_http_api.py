"""The HTTP API (``cluster/daemon/http_api.py``) over a real runtime on loopback.

Each test starts a :class:`Runtime` on a free UDP port of 127.0.0.1 with the
``local`` preset, mounts the app on aiohttp's test server and talks to it
with aiohttp's test client; everything started is stopped in ``finally``.
Rules use day-long windows so that no window rolls over while a test runs.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import given
from hypothesis import strategies as st
from runtimes import DAY_RULE, started_runtime
from test_http_check import CheckServer

from meshlimit.cluster.daemon.http_api import (
    decision_body,
    decision_json,
    make_app,
    ratelimit_headers,
)
from meshlimit.cluster.node.config import NodeConfig
from meshlimit.cluster.runtime import Runtime
from meshlimit.core.decision import PATHS, Decision
from meshlimit.core.headers import POLICY, policy_headers
from meshlimit.core.rules import Rule, parse_rule

pytestmark = pytest.mark.loopback


@asynccontextmanager
async def api_client(runtime: Runtime, **app_options: Any) -> AsyncIterator[TestClient]:
    # The daemon's runner: checks on the fast path (``http_check.py``), the rest by the app.
    client = TestClient(CheckServer(make_app(runtime, **app_options), host="127.0.0.1"))
    try:
        await client.start_server()
        yield client
    finally:
        await client.close()


def run(scenario: Callable[[TestClient, Runtime], Awaitable[None]], **app_options: Any) -> None:
    """Run ``scenario`` against a one-node cluster and its API."""

    async def main() -> None:
        async with started_runtime() as runtime, api_client(runtime, **app_options) as client:
            await scenario(client, runtime)

    asyncio.run(main())


async def post_check(client: TestClient, body: object) -> tuple[int, dict[str, Any], Any]:
    response = await client.post("/v1/check", json=body)
    return response.status, await response.json(), response.headers


def header_params(value: str) -> tuple[str, dict[str, int]]:
    """Parse one Structured-Field item ``"name";k=1;k2=2`` (integers only)."""
    name, *params = value.split(";")
    assert re.fullmatch(r'"[a-z]+"', name), value
    parsed = {}
    for param in params:
        key, _, number = param.partition("=")
        assert re.fullmatch(r"[a-z][a-z0-9-]*", key) and re.fullmatch(r"[0-9]+", number), value
        parsed[key] = int(number)
    return name.strip('"'), parsed


# --- POST /v1/check -------------------------------------------------------------------


def test_check_counts_then_refuses_with_ratelimit_headers():
    async def scenario(client: TestClient, runtime: Runtime) -> None:
        for expected_remaining in (2, 1, 0):
            status, body, headers = await post_check(client, {"client": "acme"})
            assert status == 200
            assert set(body) == {
                "allowed",
                "limit",
                "remaining",
                "reset_after",
                "retry_after",
                "path",
            }
            assert body["allowed"] is True and body["path"] == "owner"
            assert body["limit"] == 3 and body["remaining"] == expected_remaining
            assert body["retry_after"] == 0
            assert 0 < body["reset_after"] <= 86_400
            assert "Retry-After" not in headers
            assert header_params(headers["RateLimit-Policy"]) == ("default", {"q": 3, "w": 86_400})
            name, limit = header_params(headers["RateLimit"])
            assert name == "default" and limit["r"] == expected_remaining
            assert abs(limit["t"] - math.ceil(body["reset_after"])) <= 1
        status, body, headers = await post_check(client, {"client": "acme", "cost": 1})
        assert status == 200, "a refusal is a decision, not an HTTP error"
        assert body["allowed"] is False and body["remaining"] == 0
        assert body["retry_after"] > 0
        retry_after = int(headers["Retry-After"])
        assert retry_after == math.ceil(body["retry_after"])
        # draft-11 section 6: Retry-After not earlier than the end of the effective window.
        assert header_params(headers["RateLimit"]) == ("default", {"r": 0, "t": retry_after})

    run(scenario)


def test_check_cost_zero_peeks_and_cost_over_capacity_never_fits():
    async def scenario(client: TestClient, runtime: Runtime) -> None:
        status, body, _ = await post_check(client, {"client": "peek", "cost": 0})
        assert status == 200 and body["allowed"] is True and body["remaining"] == 3
        status, body, _ = await post_check(client, {"client": "peek", "cost": 2})
        assert body["allowed"] is True and body["remaining"] == 1, "the peek counted nothing"
        status, body, headers = await post_check(client, {"client": "peek", "cost": 4})
        assert status == 200 and body["allowed"] is False
        assert body["retry_after"] == -1, "cost 4 can never fit a limit of 3"
        assert "Retry-After" not in headers
        assert header_params(headers["RateLimit"])[1]["r"] == 1

    run(scenario)


def test_check_accepts_a_client_of_exactly_256_bytes():
    async def scenario(client: TestClient, runtime: Runtime) -> None:
        for name in ("x" * 256, "é" * 128, "tenant/acme/key-1"):
            status, body, _ = await post_check(client, {"client": name})
            assert status == 200 and body["allowed"] is True, name

    run(scenario)


BAD_CHECK_BODIES = [
    (b"", "empty"),
    (b"   ", "empty"),
    (b"not json", "not JSON"),
    (b'{"client": "acme",}', "not JSON"),
    (b'{"client": "\xff"}', "not UTF-8"),
    (b"[1, 2]", "must be a JSON object, not an array"),
    (b'"acme"', "must be a JSON object, not a string"),
    (b"null", "must be a JSON object, not null"),
    (b"{}", "missing 'client'"),
    (b'{"client": null}', "missing 'client'"),
    (b'{"client": ""}', "'client' must not be empty"),
    (b'{"client": 7}', "'client' must be a string, not an integer"),
    (b'{"client": ["a"]}', "'client' must be a string, not an array"),
    (json.dumps({"client": "x" * 257}).encode(), "257 bytes long; the limit is 256"),
    (json.dumps({"client": "é" * 129}).encode(), "258 bytes long; the limit is 256"),
    (b'{"client": "\\ud800"}', "not valid Unicode"),
    (b'{"client": "a", "cost": -1}', "non-negative integer, got -1"),
    (b'{"client": "a", "cost": 1.5}', "non-negative integer, not a decimal number (1.5)"),
    (b'{"client": "a", "cost": 1.0}', "non-negative integer, not a decimal number (1.0)"),
    (b'{"client": "a", "cost": true}', "non-negative integer, not a boolean (true)"),
    (b'{"client": "a", "cost": "1"}', 'non-negative integer, not a string ("1")'),
    (b'{"client": "a", "cost": null}', "non-negative integer, not null (null)"),
    (b'{"client": "a", "cost": NaN}', "not a decimal number (NaN)"),
    (
        b'{"client": "a", "cost": [' + b"1, " * 100 + b"1]}",
        "not an array ([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, ...)",
    ),
    (b'{"client": "a", "cost": 4294967296}', "at most 4294967295"),
    (b'{"client": "a", "cots": 1}', "unknown field 'cots'"),
    (b"[" * 50_000, "nested too deeply"),
]


@pytest.mark.parametrize(("raw", "fragment"), BAD_CHECK_BODIES, ids=range(len(BAD_CHECK_BODIES)))
def test_check_refuses_bad_bodies_with_a_clear_400(raw: bytes, fragment: str):
    async def scenario(client: TestClient, runtime: Runtime) -> None:
        response = await client.post(
            "/v1/check", data=raw, headers={"Content-Type": "application/json"}
        )
        assert response.status == 400
        assert response.content_type == "application/json"
        body = await response.json()
        assert set(body) == {"error"} and fragment in body["error"], body
        assert not list(runtime.node.counters.items()), "nothing was counted"

    run(scenario)


def test_body_over_the_bound_is_413_whether_sized_or_chunked():
    async def scenario(client: TestClient, runtime: Runtime) -> None:
        padding = "x" * 200
        response = await client.post("/v1/check", json={"client": "a", "pad": padding})
        assert response.status == 413
        assert (await response.json()) == {"error": "request body larger than 100 bytes"}

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b" " * 50

        response = await client.put("/v1/rules/acme", data=chunks())
        assert (
            response.status == 413 and "larger than 100 bytes" in (await response.json())["error"]
        )
        # Under the bound all is well.
        status, body, _ = await post_check(client, {"client": "a"})
        assert status == 200 and body["allowed"] is True

    run(scenario, max_body_bytes=100)


def test_default_body_bound_is_64_kib():
    async def scenario(client: TestClient, runtime: Runtime) -> None:
        response = await client.post("/v1/check", data=b" " * (64 * 1024 + 1))
        assert response.status == 413
        response = await client.post("/v1/check", data=b'{"client": "a"}' + b" " * (64 * 1024 - 15))
        assert response.status == 200

    run(scenario)


# --- /v1/rules/{client} ---------------------------------------------------------------


def test_rules_get_put_delete_and_sources():
    async def scenario(client: TestClient, runtime: Runtime) -> None:
        async def get(name: str) -> dict[str, Any]:
            response = await client.get(f"/v1/rules/{name}")
            assert response.status == 200
            return await response.json()

        assert await get("acme") == {"client": "acme", "rule": DAY_RULE, "source": "default"}
        response = await client.put("/v1/rules/acme", json={"rule": "50/second burst 5"})
        assert response.status == 200
        expected = {"client": "acme", "rule": "50/second burst 5", "source": "client"}
        assert await response.json() == expected
        assert await get("acme") == expected
        status, body, headers = await post_check(client, {"client": "acme"})
        assert body["limit"] == 50 and body["remaining"] == 50  # capped at the limit
        policy = header_params(headers["RateLimit-Policy"])
        assert policy == ("default", {"q": 50, "w": 1, "meshlimit-burst": 5})

        # A tier that does not exist is refused (a typo must not become the default).
        response = await client.put("/v1/rules/acme", json={"rule": "@gold"})
        assert response.status == 400 and "no tier 'gold'" in (await response.json())["error"]
        runtime.set_rule("tier:gold", "500/minute")
        response = await client.put("/v1/rules/acme", json={"rule": "@gold"})
        assert response.status == 200
        assert await get("acme") == {"client": "acme", "rule": "500/minute", "source": "tier:gold"}

        response = await client.delete("/v1/rules/acme")
        assert response.status == 200
        assert await response.json() == {"client": "acme", "rule": DAY_RULE, "source": "default"}
        assert await get("acme") == {"client": "acme", "rule": DAY_RULE, "source": "default"}
        response = await client.delete("/v1/rules/never-had-one")
        assert response.status == 200

    run(scenario)


def test_rule_client_ids_may_hold_slashes_raw_or_escaped():
    async def scenario(client: TestClient, runtime: Runtime) -> None:
        response = await client.put("/v1/rules/tenant%2Facme", json={"rule": "7/minute"})
        assert response.status == 200
        assert (await response.json())["client"] == "tenant/acme"
        response = await client.get("/v1/rules/tenant/acme")
        assert (await response.json())["rule"] == "7/minute"
        assert runtime.node.rule_for("tenant/acme") == parse_rule("7/minute")

    run(scenario)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"rule": "10/parsec"}, None),  # the parser's own message, checked below
        ({"rule": "0/minute"}, None),
        ({"rule": "10/minute burst -1"}, None),
        ({"rule": "@not a tier"}, "tier name"),
        ({"rule": 100}, "'rule' must be a string, not an integer"),
        ({}, "missing 'rule'"),
        ({"rule": "10/s", "burst": 2}, "unknown field 'burst'"),
        (["10/s"], "must be a JSON object"),
    ],
)
def test_put_rule_refuses_bad_notation_with_the_parsers_message(body: Any, fragment: str | None):
    async def scenario(client: TestClient, runtime: Runtime) -> None:
        response = await client.put("/v1/rules/acme", json=body)
        assert response.status == 400
        error = (await response.json())["error"]
        if fragment is None:
            with pytest.raises(ValueError) as parsed:
                parse_rule(body["rule"])
            assert error == str(parsed.value)
        else:
            assert fragment in error
        assert runtime.node.registry.client_value("acme") is None, "nothing changed"

    run(scenario)


def test_rules_refuse_a_bad_client_in_the_path():
    async def scenario(client: TestClient, runtime: Runtime) -> None:
        response = await client.get("/v1/rules/" + "x" * 257)
        assert response.status == 400 and "257 bytes" in (await response.json())["error"]
        response = await client.put("/v1/rules/" + "x" * 257, json={"rule": "1/s"})
        assert response.status == 400

    run(scenario)


# --- /v1/owner, /v1/cluster, /healthz, errors -----------------------------------------


def test_cluster_health_and_owner_of_a_single_node():
    async def scenario(client: TestClient, runtime: Runtime) -> None:
        runtime.set_rule("client:acme", "9/minute")
        await post_check(client, {"client": "acme"})
        response = await client.get("/v1/cluster")
        assert response.status == 200
        status = await response.json()
        host, port = runtime.node.config.addr
        assert status["node"] == "n1" and status["mode"] == "strict"
        assert status["addr"] == f"{host}:{port}"
        assert status["members"] == [
            {
                "node": "n1",
                "addr": f"{host}:{port}",
                "state": "alive",
                "incarnation": 0,
                "rtt_ms": None,
            }
        ]
        assert status["ring"] == {"n1": 1.0}
        assert status["clock_offsets_ms"] == {}
        assert status["rules"] == {"entries": 2, "clients": 1, "tiers": 0, "default": DAY_RULE}
        assert status["pending_forwards"] == 0
        assert status["stats"]["owner_allowed"] == 1
        assert isinstance(status["dropped"], dict)

        response = await client.get("/healthz")
        assert response.status == 200
        assert await response.json() == {"status": "ok", "node": "n1", "members": 1, "ready": True}
        response = await client.get("/readyz")  # no seeds: ready at once
        assert response.status == 200
        assert (await response.json())["status"] == "ready"
        response = await client.get("/v1/owner/acme")
        assert await response.json() == {"client": "acme", "owner": "n1"}

    run(scenario)


def test_unknown_paths_and_methods_answer_json():
    async def scenario(client: TestClient, runtime: Runtime) -> None:
        response = await client.get("/v1/nothing")
        assert response.status == 404 and "error" in await response.json()
        response = await client.get("/v1/check")
        assert response.status == 405 and "error" in await response.json()
        assert "POST" in response.headers["Allow"]
        response = await client.post("/metrics")
        assert response.status == 405 and "error" in await response.json()

    run(scenario)


def test_ratelimit_headers_for_sub_second_windows_leave_out_w():
    rule = parse_rule("20/250ms")
    headers = ratelimit_headers(Decision(True, 20, 19, 0.2, 0.0, "owner"), rule)
    assert headers == {"RateLimit-Policy": '"default";q=20', "RateLimit": '"default";r=19;t=1'}
    headers = ratelimit_headers(Decision(False, 20, 0, 0.2, 0.05, "owner"), rule)
    assert headers["Retry-After"] == "1" and headers["RateLimit"] == '"default";r=0;t=1'


# --- two nodes ------------------------------------------------------------------------


def test_two_nodes_forward_and_show_each_other():
    async def main() -> None:
        async with (
            started_runtime("n1") as first,
            started_runtime("n2", seeds=[first.node.config.addr]) as second,
        ):
            deadline = time.monotonic() + 5
            while any(len(r.node.membership.alive_nodes()) < 2 for r in (first, second)):
                assert time.monotonic() < deadline, "two nodes on loopback did not converge"
                await asyncio.sleep(0.02)
            async with api_client(first) as one, api_client(second) as two:
                client = next(f"c{i}" for i in range(1000) if first.node.owner(f"c{i}") == "n2")
                for api in (one, two):
                    response = await api.get(f"/v1/owner/{client}")
                    assert (await response.json())["owner"] == "n2"
                _, body, _ = await post_check(one, {"client": client, "cost": 2})
                assert body["path"] == "forwarded" and body["remaining"] == 1
                _, body, _ = await post_check(two, {"client": client})
                assert body["path"] == "owner" and body["remaining"] == 0
                status = await (await one.get("/v1/cluster")).json()
                assert [m["state"] for m in status["members"]] == ["alive", "alive"]
                assert set(status["ring"]) == {"n1", "n2"}
                assert abs(sum(status["ring"].values()) - 1) < 1e-3
                assert (await (await one.get("/healthz")).json())["members"] == 2

    asyncio.run(main())


def test_delete_counters_resets_a_client_cluster_wide() -> None:
    async def scenario() -> None:
        async with started_runtime() as runtime, api_client(runtime) as client:
            for _ in range(3):
                await client.post("/v1/check", json={"client": "acme"})
            refused = await (await client.post("/v1/check", json={"client": "acme"})).json()
            assert refused["allowed"] is False
            response = await client.delete("/v1/counters/acme")
            assert response.status == 200 and (await response.json())["reset"] is True
            again = await (await client.post("/v1/check", json={"client": "acme"})).json()
            assert again["allowed"] is True

    asyncio.run(scenario())


def test_readyz_is_503_with_a_reason_until_a_seed_answers_then_200() -> None:
    from runtimes import free_udp_port

    async def main() -> None:
        silent = ("127.0.0.1", free_udp_port())  # nobody listens there yet
        async with (
            started_runtime("n2", seeds=[silent], default_rule="1/day") as joining,
            api_client(joining) as api,
        ):
            response = await api.get("/readyz")
            body = await response.json()
            assert response.status == 503 and body["status"] == "not ready"
            assert "no seed has answered" in body["reason"], body
            assert (await api.get("/healthz")).status == 200, "live while joining"
            status = await (await api.get("/v1/cluster")).json()
            assert status["ready"] is False and status["readiness"] == body["reason"]
            # The degraded share of 1/day is nothing: refused, but not "retry never".
            _, decision, _ = await post_check(api, {"client": "acme"})
            assert decision["path"] == "degraded" and not decision["allowed"]
            assert 0 < decision["retry_after"] <= 1, decision
            seed = Runtime(NodeConfig.preset("local", "n1", silent, default_rule="1/day"))
            try:
                await seed.start([])  # the seed comes up where the joiner keeps knocking
                assert await joining.wait_ready(5), "joined once a seed answered"
                response = await api.get("/readyz")
                assert response.status == 200 and (await response.json())["status"] == "ready"
            finally:
                await seed.stop(leave=False)

    asyncio.run(main())


def test_a_seed_name_that_does_not_resolve_leaves_the_node_joining() -> None:
    async def main() -> None:
        async with (
            started_runtime("n2", seeds=[("no-such-host.invalid", 7400)]) as joining,
            api_client(joining) as api,
        ):
            response = await api.get("/readyz")
            body = await response.json()
            assert response.status == 503 and "no seed resolved" in body["reason"], body
            assert "no-such-host.invalid:7400" in body["reason"]

    asyncio.run(main())


#: Decisions of every shape (see ``test_resp.py``), and rules with and without a burst, of
#: whole and sub-second windows.
decisions = st.builds(
    Decision,
    st.booleans(),
    st.integers(0, 10**9),
    st.integers(-5, 2 * 10**9),
    st.integers(0, 10**15).map(lambda ns: ns / 1e9),
    st.one_of(st.just(math.inf), st.integers(0, 10**12).map(lambda ns: ns / 1e9)),
    st.sampled_from(PATHS),
)
rules = st.one_of(
    st.none(),
    st.builds(
        Rule,
        st.integers(1, 10**6),
        st.sampled_from([10**8, 10**9, 60 * 10**9, 1500 * 10**6]),
        st.integers(0, 100),
    ),
)


@given(decisions)
def test_the_check_body_is_the_json_of_the_decision(decision: Decision) -> None:
    """The check's one-format body is ``json.dumps`` of ``decision_json``, byte for byte."""
    assert decision_body(decision) == json.dumps(decision_json(decision)).encode()


@given(decisions, rules)
def test_the_ratelimit_headers_of_one_decision_are_its_policy_headers(
    decision: Decision, rule: Rule | None
) -> None:
    """``ratelimit_headers`` (unrolled for one policy) says what ``policy_headers`` says."""
    assert ratelimit_headers(decision, rule) == policy_headers([(POLICY, decision, rule)])
