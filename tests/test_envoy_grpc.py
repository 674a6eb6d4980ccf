"""Envoy's rate limit service over gRPC, against two real ``meshlimit node`` processes.

Two daemons (``--grpc 127.0.0.1:0``, the port read from their ready lines) load the
same envoy ratelimit YAML; a gRPC client calls ``ShouldRateLimit`` on either:

- one descriptor's count is shared through both nodes (strict mode: its owner decides);
- statuses come in request order, complete: ``current_limit``, ``limit_remaining``,
  ``duration_until_reset``; unknown descriptors and domains are OK without a limit,
  unlimited ones OK with 4294967295; shadow mode answers OK but counts;
- ``hits_addend`` counts (per request, per descriptor, 0 as a check that still sees an
  exhausted window); a descriptor's ``limit`` override replaces the configured limit;
- bad requests are ``INVALID_ARGUMENT``; health is SERVING;
- a YAML edit applies without restart: on change (node ``b`` polls) and on SIGHUP
  (node ``a`` does not poll); a bad edit keeps the rules in force.

Counting descriptors use ``day`` windows (aligned to UTC midnight), so no test straddles
a window's end; each test counts under keys of its own.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from functools import partial

import pytest

pytest.importorskip("grpc", reason="the envoy extra (grpcio) is not installed")
pytest.importorskip("envoy.service.ratelimit.v3.rls_pb2", reason="xds-protos is not installed")

import grpc  # noqa: E402
from envoy_nodes import (  # noqa: E402
    OK,
    OVER_LIMIT,
    UNITS,
    descriptor,
    metric,
    node_pair,
    request,
    sighup,
    stub,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from meshlimit.processes import HOST, wait_for  # noqa: E402

pytestmark = [pytest.mark.process, pytest.mark.loopback]

CONFIG = """
domain: api
descriptors:
  - key: user
    rate_limit: {unit: day, requests_per_unit: 5}
  - key: tier
    value: internal
    rate_limit: {unlimited: true}
  - key: probe
    shadow_mode: true
    rate_limit: {unit: day, requests_per_unit: 2}
  - key: clock
    rate_limit: {unit: minute, requests_per_unit: 100}
  - key: path
    descriptors:
      - key: method
        value: POST
        rate_limit: {unit: day, requests_per_unit: 3, name: writes}
  - key: reload
    rate_limit: {unit: day, requests_per_unit: 10}
"""


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    folder = tmp_path_factory.mktemp("envoy_grpc")
    config = folder / "ratelimit.yaml"
    config.write_text(CONFIG)
    # a polls never (reloads on SIGHUP only), b polls its file every 0.1 s.
    with node_pair(
        folder,
        config,
        extra_a=["--config-poll-s", "0"],
        extra_b=["--config-poll-s", "0.1"],
    ) as (a, b):
        yield a, b, stub(a), stub(b), config


def statuses(response):
    return [
        (s.code, s.current_limit.requests_per_unit, s.limit_remaining) for s in response.statuses
    ]


def test_one_count_is_shared_through_both_nodes(nodes):
    _, _, via_a, via_b, _ = nodes
    answers = []
    for i in range(8):
        client = via_a if i % 2 == 0 else via_b
        response = client.ShouldRateLimit(request("api", descriptor(("user", "shared"))))
        answers.append((response.overall_code, response.statuses[0].limit_remaining))
    assert answers == [(OK, 4), (OK, 3), (OK, 2), (OK, 1), (OK, 0)] + [(OVER_LIMIT, 0)] * 3


def test_statuses_are_complete_and_in_request_order(nodes):
    _, _, via_a, _, _ = nodes
    response = via_a.ShouldRateLimit(
        request(
            "api",
            descriptor(("nothing", "matches")),
            descriptor(("tier", "internal")),
            descriptor(("user", "order")),
            descriptor(("path", "/x"), ("method", "POST")),
            descriptor(("clock", "c")),
        )
    )
    assert response.overall_code == OK
    assert statuses(response) == [
        (OK, 0, 0),
        (OK, 0, 4294967295),
        (OK, 5, 4),
        (OK, 3, 2),
        (OK, 100, 99),
    ]
    assert not response.statuses[0].HasField("current_limit")
    assert not response.statuses[1].HasField("current_limit")
    user, nested, clock = response.statuses[2], response.statuses[3], response.statuses[4]
    assert user.current_limit.unit == UNITS.Value("DAY")
    assert nested.current_limit.name == "writes"
    now = int(time.time())
    expected = 86_400 - now % 86_400
    assert abs(user.duration_until_reset.seconds - expected) <= 1, "the time to UTC midnight"
    assert 1 <= clock.duration_until_reset.seconds <= 60
    unknown = via_a.ShouldRateLimit(request("nowhere", descriptor(("user", "x"))))
    assert statuses(unknown) == [(OK, 0, 0)]
    empty = via_a.ShouldRateLimit(request("api", descriptor()))
    assert statuses(empty) == [(OK, 0, 0)], "a descriptor without entries matches no rule"


def test_shadow_mode_answers_ok_but_counts(nodes):
    a, _, via_a, via_b, _ = nodes
    before = metric(a, "meshlimit_envoy_rate_limit_shadow_mode_total", domain="api", key="probe")
    answers = [
        (client.ShouldRateLimit(request("api", descriptor(("probe", "p")))).statuses[0])
        for client in (via_a, via_b, via_a, via_b)
    ]
    assert [(s.code, s.limit_remaining) for s in answers] == [(OK, 1), (OK, 0), (OK, 0), (OK, 0)]
    after = metric(a, "meshlimit_envoy_rate_limit_shadow_mode_total", domain="api", key="probe")
    assert after - before == 1, "node a answered one of the two over-limit hits"


def test_hits_addend_counts_and_zero_hits_sees_an_exhausted_window(nodes):
    _, _, via_a, via_b, _ = nodes
    first = via_a.ShouldRateLimit(request("api", descriptor(("user", "hits")), hits=3))
    assert statuses(first) == [(OK, 5, 2)]
    peek = via_b.ShouldRateLimit(request("api", descriptor(("user", "hits"), hits=0)))
    assert statuses(peek) == [(OK, 5, 2)], "0 hits of the descriptor's own: a check only"
    over = via_b.ShouldRateLimit(request("api", descriptor(("user", "hits"), hits=4)))
    assert over.overall_code == OVER_LIMIT, "2 left: 4 is over, and still counted"
    small = via_a.ShouldRateLimit(request("api", descriptor(("user", "hits"))))
    assert small.overall_code == OVER_LIMIT, "the window went over: 1 more is over too"
    peek = via_a.ShouldRateLimit(request("api", descriptor(("user", "hits"), hits=0)))
    assert peek.overall_code == OVER_LIMIT, "a check sees the window over"


def test_a_limit_override_replaces_the_configured_limit(nodes):
    _, _, via_a, via_b, _ = nodes
    override = (2, UNITS.Value("HOUR"))
    answers = [
        client.ShouldRateLimit(request("api", descriptor(("user", "vip"), override=override)))
        for client in (via_a, via_b, via_a)
    ]
    assert [statuses(r)[0] for r in answers] == [(OK, 2, 1), (OK, 2, 0), (OVER_LIMIT, 2, 0)]
    assert answers[0].statuses[0].current_limit.unit == UNITS.Value("HOUR")


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (request("", descriptor(("user", "x"))), "domain must not be empty"),
        (request("api"), "descriptor list must not be empty"),
        (request("api", descriptor(("user", "x"), override=(5, 0))), "override's unit"),
    ],
)
def test_bad_requests_are_invalid_argument(nodes, bad, words):
    _, _, via_a, _, _ = nodes
    with pytest.raises(grpc.RpcError) as info:
        via_a.ShouldRateLimit(bad)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in info.value.details()


def test_health_is_serving(nodes):
    a, b, _, _, _ = nodes
    for node in (a, b):
        channel = grpc.insecure_channel(f"{HOST}:{node.ready_port('grpc')}")
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "envoy.service.ratelimit.v3.RateLimitService"):
            wait_for("SERVING", partial(serving, health, service), timeout_s=5)


def serving(health: health_pb2_grpc.HealthStub, service: str) -> bool:
    answer = health.Check(health_pb2.HealthCheckRequest(service=service))
    return answer.status == health_pb2.HealthCheckResponse.SERVING


def test_yaml_edits_apply_without_restart_and_bad_ones_keep_the_rules(nodes):
    a, b, via_a, via_b, config = nodes

    def limit(client, value: str) -> int:
        response = client.ShouldRateLimit(request("api", descriptor(("reload", value))))
        return response.statuses[0].current_limit.requests_per_unit

    assert limit(via_a, "a1") == limit(via_b, "b1") == 10
    config.write_text(CONFIG.replace("requests_per_unit: 10", "requests_per_unit: 7"))
    wait_for("node b to see the edit", lambda: limit(via_b, "b2") == 7, timeout_s=10)
    assert limit(via_a, "a2") == 10, "node a does not poll: only SIGHUP reloads it"
    sighup(a)
    wait_for("node a to reload on SIGHUP", lambda: limit(via_a, "a3") == 7, timeout_s=10)
    config.write_text(CONFIG.replace("unit: day, requests_per_unit: 10", "unit: fortnight"))
    wait_for(
        "node b to count the bad load",
        lambda: metric(b, "meshlimit_envoy_events_total", event="config_load_error") >= 1,
        timeout_s=10,
    )
    assert limit(via_b, "b3") == 7, "a bad file keeps the rules in force"
    log = (config.parent / "b.log").read_text()
    assert "ratelimit config reload failed" in log
    assert "descriptors[5].rate_limit.unit" in log and "fortnight" in log


def test_statistics_are_on_metrics(nodes):
    a, _, via_a, _, _ = nodes
    names = ("total_hits", "over_limit", "near_limit", "within_limit")

    def counts() -> list[float]:
        return [
            metric(a, f"meshlimit_envoy_rate_limit_{name}_total", domain="api", key="user")
            for name in names
        ]

    before = counts()
    for _ in range(7):
        via_a.ShouldRateLimit(request("api", descriptor(("user", "stats"))))
    delta = [now - then for now, then in zip(counts(), before, strict=True)]
    # 5 per day: hits 1-5 within, hit 5 near (over floor(5 * 0.8) = 4), hits 6-7 over.
    assert delta == [7, 2, 1, 5]


def test_a_bad_yaml_or_a_busy_port_stops_the_daemon_at_start(tmp_path):
    import socket
    import subprocess
    import sys

    from meshlimit.processes import free_port

    bad = tmp_path / "bad.yaml"
    bad.write_text("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: fortnight}\n")
    argv = [sys.executable, "-m", "meshlimit", "node", "--preset", "local"]
    argv += ["--bind", f"{HOST}:{free_port()}"]
    run = subprocess.run(
        [*argv, "--grpc", f"{HOST}:0", "--ratelimit-config", str(bad)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 2
    assert f"{bad}:4: descriptors[0].rate_limit.unit: invalid rate limit unit" in run.stderr
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        port = busy.getsockname()[1]
        run = subprocess.run(
            [*argv, "--grpc", f"{HOST}:{port}"], capture_output=True, text=True, timeout=30
        )
    assert run.returncode == 1 and f"cannot bind gRPC {HOST}:{port}" in run.stderr


# --- the servicer in process: options and failure paths -----------------------------------


def run_servicer(yaml_text: str, body, *, algorithm: str = "fixed_window") -> None:
    """Run ``body(servicer, runtime)`` against a one-node runtime on loopback."""
    import asyncio

    from meshlimit.cluster.daemon.rls.loader import ConfigLoader
    from meshlimit.cluster.daemon.rls.service import RateLimitServicer, RlsConfig
    from meshlimit.cluster.daemon.rls.stats import DescriptorStats
    from meshlimit.cluster.daemon.rls.yaml_config import load_config
    from meshlimit.cluster.node.config import NodeConfig
    from meshlimit.cluster.runtime import Runtime
    from meshlimit.processes import free_port

    async def main() -> None:
        runtime = Runtime(NodeConfig.preset("local", "solo", (HOST, free_port())))
        await runtime.start([])
        try:
            loader = ConfigLoader([])
            loader.config = load_config([("t.yaml", yaml_text)])
            config = RlsConfig(algorithm=algorithm, rule_spread_wait_s=0.001)
            await body(RateLimitServicer(runtime, loader, DescriptorStats(), config), runtime)
        finally:
            await runtime.stop(leave=False)

    asyncio.run(main())


SOLO = "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 3}\n"


def test_the_sliding_window_is_an_opt_in():
    async def body(servicer, runtime):
        answers = [
            await servicer.should_rate_limit(request("d", descriptor(("k", "v")))) for _ in range(4)
        ]
        assert [statuses(r)[0] for r in answers] == [
            (OK, 3, 2),
            (OK, 3, 1),
            (OK, 3, 0),
            (OVER_LIMIT, 3, 0),
        ]
        assert 1 <= answers[0].statuses[0].duration_until_reset.seconds <= 60
        rule = runtime.node.registry.client_value("cl.throttle:envoy:d_k_v_")
        assert str(rule) == "4/minute", "N+1 per unit, meshlimit's sliding window"

    run_servicer(SOLO, body, algorithm="sliding_window")


def test_an_owner_that_keeps_another_rule_is_unavailable_and_a_shadow_node_lets_through():
    from meshlimit.core.decision import Decision

    async def body(servicer, runtime):
        calls = []

        async def other_rule(client, cost):
            calls.append(client)
            return Decision(True, 99, 98, 1.0, 0.0, "forwarded")

        runtime.check = other_rule
        with pytest.raises(Exception) as info:
            await servicer.should_rate_limit(request("d", descriptor(("k", "v"))))
        assert getattr(info.value, "code", None) == grpc.StatusCode.UNAVAILABLE
        assert len(calls) == 2 and servicer.stats.service["rule_mismatch"] == 1

        async def shadowed(client, cost):  # a node in shadow mode: refusals allowed, reported
            return Decision(True, 4, 0, 1.0, 0.0, "owner", True)

        runtime.check = shadowed
        answer = await servicer.should_rate_limit(request("d", descriptor(("k", "w"))))
        assert answer.overall_code == OK and answer.statuses[0].code == OVER_LIMIT
        assert servicer.stats.service["global_shadow_mode"] == 1

    run_servicer(SOLO, body)
