"""Metrics (``cluster/daemon/metrics.py``) and ``GET /metrics`` (``cluster/daemon/http_api.py``).

The families are read from a sans-IO node directly, then scraped over HTTP
from runtimes on loopback and parsed with ``prometheus_client``'s own parser,
so the exposition is checked as Prometheus reads it. Rules use day-long
windows so that no window rolls over while a test runs; waits poll with a
deadline.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from runtimes import captured

from meshlimit.cluster.daemon.http_api import make_app, metrics_registry
from meshlimit.cluster.daemon.metrics import (
    DegradedReporter,
    Family,
    Histogram,
    LatencyHistogram,
    node_families,
)
from meshlimit.cluster.node import Node
from meshlimit.cluster.node.config import NodeConfig
from meshlimit.cluster.runtime import Runtime
from meshlimit.core.decision import Decision

HOST = "127.0.0.1"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples_of(text: str) -> tuple[dict[str, str], Samples]:
    """Family types by name, and every sample by (name, sorted labels)."""
    types: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return types, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def by_family(families: list[Family]) -> dict[str, Family]:
    return {f.name: f for f in families}


# --- families from a sans-IO node -----------------------------------------------------


def sans_io_node() -> Node:
    config = NodeConfig.preset("local", "n1", (HOST, 7400), default_rule="2/day")
    return Node(config, random.Random(1), now_ns=0, wall_ns=1_000_000_000)


def test_families_read_the_node_counters() -> None:
    node = sans_io_node()
    node.start([], now_ns=0)
    decisions = [node.check("acme", now_ns=i, wall_ns=1_000_000_000 + i) for i in range(3)]
    assert [d.allowed for d in decisions if isinstance(d, Decision)] == [True, True, False]
    node.stats["degraded_allowed"] += 5
    node.stats["forward_timeouts"] += 2
    node.overloaded("acme", "slow_owner")
    node.overloaded("acme", "waiting_full")
    node.dropped["decode_truncated"] += 1
    node.membership.dropped["bad_sender"] += 4
    families = by_family(node_families(node, reloads={"ok": 3, "error": 1}))
    checks = dict(families["meshlimit_checks"].samples)
    assert checks[("owner", "allowed")] == 2 and checks[("owner", "refused")] == 1
    assert checks[("degraded", "allowed")] == 5 and checks[("forwarded", "refused")] == 0
    assert len(checks) == 9  # every path and result, zeros included, and overloaded
    assert checks[("overloaded", "refused")] == 2
    overloaded = dict(families["meshlimit_overloaded"].samples)
    assert overloaded == {
        ("owner_backlog",): 0,
        ("slow_owner",): 1,
        ("stalled_owner",): 0,
        ("waiting_full",): 1,
        ("waited_too_long",): 0,
    }
    assert families["meshlimit_forward_timeouts"].samples == (((), 2),)
    events = dict(families["meshlimit_node_events"].samples)
    assert not any(e.startswith("overloaded") for (e,) in events), "overloaded twice"
    assert dict(families["meshlimit_dropped"].samples) == {
        ("node", "decode_truncated"): 1,
        ("membership", "bad_sender"): 4,
    }
    assert dict(families["meshlimit_members"].samples)[("alive",)] == 1
    assert families["meshlimit_client_counters"].samples == (((), 1),)
    assert families["meshlimit_rule_entries"].samples == (((), 1),)
    assert dict(families["meshlimit_config_reloads"].samples) == {("ok",): 3, ("error",): 1}
    assert families["meshlimit_node_info"].samples == ((("n1", "strict"), 1),)
    assert "meshlimit_forward_latency_seconds" not in families
    events = dict(families["meshlimit_node_events"].samples)
    assert ("owner_allowed",) not in events and ("forward_timeouts",) not in events
    assert {f.kind for f in families.values()} == {"counter", "gauge"}


def test_registry_families_count_what_left_the_registry_and_why() -> None:
    node = sans_io_node()
    node.registry.max_calls = 2
    wall = 1_000_000_000
    for n in range(3):  # the third per-call entry evicts one
        node.set_rule(f"client:cl.throttle:k{n}", "1/2s burst 15 algo token_bucket", now_ns=0)
    node.set_rule("client:acme", "5/day", now_ns=0)
    node.set_rule("client:acme", None, now_ns=0)
    node.registry.collect(now_ms=wall // 10**6 + 25 * 3600 * 1000)  # a day and an hour later
    families = by_family(node_families(node))
    assert families["meshlimit_rule_entries"].samples == (((), 1),)  # only the default left
    assert families["meshlimit_rule_graves"].samples == (((), 0),)
    assert families["meshlimit_rule_call_entries"].samples == (((), 0),)
    assert families["meshlimit_rule_call_entries_max"].samples == (((), 2),)
    collected = dict(families["meshlimit_rule_entries_collected"].samples)
    assert collected == {
        ("calls_expired",): 2,
        ("calls_evicted",): 1,
        ("calls_refused_expired",): 0,
        ("graves_purged",): 1,
        ("graves_refused_old",): 0,
    }


def test_latency_histogram_buckets_are_upper_bounds_and_bounded() -> None:
    histogram = LatencyHistogram((0.001, 0.01))
    for elapsed_ns in (500_000, 1_000_000, 1_000_001, 20_000_000):
        histogram.observe(elapsed_ns, "forwarded")
    histogram.observe(200_000_000, "degraded")
    family = histogram.family()
    assert family.name == "meshlimit_forward_latency_seconds" and family.labels == ("path",)
    series = dict(family.samples)
    forwarded = series[("forwarded",)]
    assert isinstance(forwarded, Histogram)
    assert forwarded.buckets == (("0.001", 2), ("0.01", 3), ("+Inf", 4))
    assert forwarded.sum == pytest.approx(0.022500001)
    assert series[("degraded",)] == Histogram((("0.001", 0), ("0.01", 0), ("+Inf", 1)), 0.2)
    for path in ("a", "b", "c", "d"):
        histogram.observe(1, path)
    assert len(histogram.counts) == 4  # forwarded, degraded, a, b: the rest are not kept


def test_degraded_reporter_logs_only_intervals_with_degraded_decisions() -> None:
    node = sans_io_node()
    reporter = DegradedReporter(node, interval_s=10.0)
    with captured("meshlimit.metrics") as records:
        assert reporter.step() is None
        node.stats["degraded_allowed"] += 3
        node.stats["degraded_refused"] += 1
        node.stats["forward_timeouts"] += 2
        assert reporter.step() == {
            "degraded_allowed": 3,
            "degraded_refused": 1,
            "forward_timeouts": 2,
        }
        assert reporter.step() is None
    (record,) = records
    assert record.levelno == logging.INFO and record.getMessage() == "degraded decisions"
    fields = vars(record)
    assert (fields["allowed"], fields["refused"], fields["forward_timeouts"]) == (3, 1, 2)
    assert fields["interval_s"] == 10.0 and fields["members_down"] == "-"


# --- /metrics over HTTP on loopback ----------------------------------------------------


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def started(
    node_id: str, seeds: list[tuple[str, int]] | None = None, *, kind: type[Runtime] = Runtime
) -> AsyncIterator[Runtime]:
    config = NodeConfig.preset("local", node_id, (HOST, free_udp_port()), default_rule="3/day")
    runtime = kind(config, seed=1)
    try:
        await runtime.start(seeds or [])
        yield runtime
    finally:
        await runtime.stop(leave=False)


@asynccontextmanager
async def api(runtime: Runtime, **options: Any) -> AsyncIterator[TestClient]:
    client = TestClient(TestServer(make_app(runtime, **options), host=HOST))
    try:
        await client.start_server()
        yield client
    finally:
        await client.close()


async def scrape(client: TestClient) -> tuple[dict[str, str], Samples]:
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    return samples_of(await response.text())


async def until(what: str, predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


@pytest.mark.loopback
def test_a_scrape_after_some_checks() -> None:
    async def main() -> None:
        async with started("n1") as runtime, api(runtime) as client:
            for _ in range(4):
                await client.post("/v1/check", json={"client": "acme"})
            await client.put("/v1/rules/bob", json={"rule": "5/day"})
            types, samples = await scrape(client)
            assert value(samples, "meshlimit_checks_total", path="owner", result="allowed") == 3
            assert value(samples, "meshlimit_checks_total", path="owner", result="refused") == 1
            assert value(samples, "meshlimit_checks_total", path="degraded", result="allowed") == 0
            assert value(samples, "meshlimit_members", state="alive") == 1
            assert value(samples, "meshlimit_members", state="dead") == 0
            assert value(samples, "meshlimit_client_counters") == 1
            assert value(samples, "meshlimit_rule_entries") == 2
            assert value(samples, "meshlimit_forward_pending") == 0
            assert value(samples, "meshlimit_config_reloads_total", result="ok") == 0
            assert value(samples, "meshlimit_node_info", node="n1", mode="strict") == 1
            assert types["meshlimit_checks"] == "counter" and types["meshlimit_members"] == "gauge"
            for family in (
                "meshlimit_forward_batches",
                "meshlimit_forward_batched_checks",
                "meshlimit_forward_timeouts",
                "meshlimit_client_counters_expired",
                "meshlimit_client_counters_refused",
                "meshlimit_dropped",
                "meshlimit_swim_events",
                "meshlimit_clock_offset_seconds",
                "meshlimit_rtt_seconds",
                "process_cpu_seconds",
            ):
                assert family in types, family
            # The histogram is there exactly when the runtime has the on_forwarded hook.
            hook = hasattr(runtime, "on_forwarded")
            assert ("meshlimit_forward_latency_seconds" in types) == hook

    asyncio.run(main())


@pytest.mark.loopback
def test_openmetrics_when_asked_and_reload_counts_from_the_daemon() -> None:
    async def main() -> None:
        async with started("n1") as runtime:
            reloads = {"ok": 2, "error": 1}
            registry = metrics_registry(runtime, reloads=reloads, process=False)
            async with api(runtime, metrics=registry) as client:
                response = await client.get(
                    "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
                )
                assert response.headers["Content-Type"].startswith("application/openmetrics-text")
                assert (await response.text()).endswith("# EOF\n")
                reloads["error"] += 1  # read at scrape time
                types, samples = await scrape(client)
                assert value(samples, "meshlimit_config_reloads_total", result="error") == 2
                assert value(samples, "meshlimit_config_reloads_total", result="ok") == 2
                assert not any(name.startswith("process_") for name in types)

    asyncio.run(main())


@pytest.mark.loopback
def test_two_nodes_forwarding_peers_and_degraded_decisions() -> None:
    async def main() -> None:
        async with (
            started("n1", kind=Runtime) as first,
            started("n2", [first.node.config.addr]) as second,
            api(first) as client,
        ):
            nodes = (first, second)
            await until("two members", lambda: all(len(r.node.ring.shares()) == 2 for r in nodes))
            await until("probe round trips", lambda: "n2" in first.node.membership.rtts())
            remote = next(f"c{i}" for i in range(1000) if first.node.owner(f"c{i}") == "n2")
            deadline = time.monotonic() + 5
            while (await first.check(remote, 0)).path != "forwarded":  # n2 warms up on joining
                assert time.monotonic() < deadline, "n2 never answered"
                await asyncio.sleep(0.01)
            decisions = await asyncio.gather(*(first.check(remote) for _ in range(4)))
            assert [d.path for d in decisions] == ["forwarded"] * 4
            _, samples = await scrape(client)
            forwarded = value(samples, "meshlimit_checks_total", path="forwarded", result="allowed")
            refused = value(samples, "meshlimit_checks_total", path="forwarded", result="refused")
            assert forwarded >= 3 and refused >= 1
            batches = value(samples, "meshlimit_forward_batches_total")
            batched = value(samples, "meshlimit_forward_batched_checks_total")
            assert 1 <= batches < batched  # the four concurrent checks shared a batch
            assert value(samples, "meshlimit_rtt_seconds", peer="n2") > 0
            assert abs(value(samples, "meshlimit_clock_offset_seconds", peer="n2")) < 1.0
            assert value(samples, "meshlimit_members", state="alive") == 2
            count = value(samples, "meshlimit_forward_latency_seconds_count", path="forwarded")
            assert count >= 4
            inf = value(
                samples, "meshlimit_forward_latency_seconds_bucket", path="forwarded", le="+Inf"
            )
            assert inf == count
            await second.stop(leave=False)  # the owner is gone without a word
            # Silent just after answering: stalled, or crashed; overloaded until a probe
            # interval of silence or SWIM's suspicion says crashed, then degraded.
            decision = await first.check(remote)
            assert decision.path == "overloaded"
            deadline = time.monotonic() + 5
            while (await first.check(remote)).path != "degraded":
                assert time.monotonic() < deadline, "never decided degraded"
                await asyncio.sleep(0.05)
            _, samples = await scrape(client)
            assert value(samples, "meshlimit_forward_timeouts_total") >= 1
            assert value(samples, "meshlimit_overloaded_total", reason="stalled_owner") >= 1
            degraded = value(samples, "meshlimit_checks_total", path="degraded", result="allowed")
            degraded += value(samples, "meshlimit_checks_total", path="degraded", result="refused")
            assert degraded >= 1
            overloaded = "meshlimit_forward_latency_seconds_count"
            assert value(samples, overloaded, path="overloaded") >= 1

    asyncio.run(main())


def test_the_exposition_parses_back() -> None:
    """Every family of a busy sans-IO node survives the text format and its parser."""
    node = sans_io_node()
    node.start([], now_ns=0)
    node.check("acme", now_ns=1)

    class Holder:
        pass

    holder = Holder()
    holder.node = node  # type: ignore[attr-defined]
    holder.on_forwarded = None  # type: ignore[attr-defined]
    registry = metrics_registry(holder, reloads={"ok": 1}, process=False)  # type: ignore[arg-type]
    holder.on_forwarded(1_500_000, "forwarded")  # type: ignore[attr-defined]
    types, samples = samples_of(generate_latest(registry).decode())
    assert types["meshlimit_forward_latency_seconds"] == "histogram"
    assert (
        value(samples, "meshlimit_forward_latency_seconds_bucket", path="forwarded", le="0.001")
        == 0
    )
    assert (
        value(samples, "meshlimit_forward_latency_seconds_bucket", path="forwarded", le="0.0025")
        == 1
    )
    assert value(samples, "meshlimit_forward_latency_seconds_sum", path="forwarded") == 0.0015
    assert value(samples, "meshlimit_checks_total", path="owner", result="allowed") == 1
    names = {name for name, _ in samples}
    assert all(name.startswith("meshlimit_") for name in names)
