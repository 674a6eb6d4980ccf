"""Tests of the simulator's infrastructure: seeds, events, clocks, network, scenarios, workload.

Everything here is deterministic: statistical checks use fixed seeds, with
tolerances of several standard deviations so they state what is expected
rather than what one seed happened to give.
"""

from __future__ import annotations

import ast
import hashlib
import math
import random
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshlimit.sim.events import (
    NS_PER_MS,
    NS_PER_S,
    EventQueue,
    NodeClock,
    VirtualClock,
    derive_rng,
)
from meshlimit.sim.fuzz import (
    FUZZ_FAULTS,
    LONG_FUZZ_FAULTS,
    generate_fuzz_scenario,
    generate_long_fuzz_scenario,
    outlast_ns,
)
from meshlimit.sim.network import Delivery, LinkConfig, Network, transmit_ns
from meshlimit.sim.scenario import (
    VERBS,
    Action,
    Scenario,
    ScenarioError,
    WorkloadSpec,
    format_duration,
    load_scenario,
    parse_duration,
    parse_scenario,
)
from meshlimit.sim.workload import NEVER_NS, Workload

SIM_DIR = Path(__file__).resolve().parent.parent / "sim"

# --- seeds ---------------------------------------------------------------------------------


def test_derive_rng_is_deterministic_and_independent() -> None:
    draws = [derive_rng(7, "network").random() for _ in range(2)]
    assert draws[0] == draws[1]
    assert derive_rng(7, "network").random() != derive_rng(8, "network").random()
    assert derive_rng(7, "network").random() != derive_rng(7, "workload").random()
    assert derive_rng(7, "a", "bc").random() != derive_rng(7, "ab", "c").random()
    assert derive_rng(7).random() != derive_rng(7, "").random()


def test_sim_modules_never_use_global_random_or_real_time() -> None:
    """Habit 1: randomness only from derived ``Random`` instances, time only virtual."""
    for name in ("events.py", "network.py", "scenario.py", "workload.py"):
        tree = ast.parse((SIM_DIR / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                modules = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not {"time", "datetime", "socket", "asyncio"} & set(modules), name
            if isinstance(node, ast.Attribute) and getattr(node.value, "id", "") == "random":
                assert node.attr == "Random", f"{name} uses random.{node.attr}"


# --- event queue and clocks ----------------------------------------------------------------


def test_event_queue_orders_by_time_then_fifo() -> None:
    queue: EventQueue[str] = EventQueue()
    assert queue.peek_time() is None and len(queue) == 0 and not queue
    for at_ns, event in ((5, "c"), (1, "a"), (5, "d"), (1, "b"), (3, "x")):
        queue.push(at_ns, event)
    queue._check()
    assert queue.peek_time() == 1 and len(queue) == 5
    assert [queue.pop() for _ in range(5)] == [(1, "a"), (1, "b"), (3, "x"), (5, "c"), (5, "d")]
    with pytest.raises(IndexError):
        queue.pop()


def test_event_queue_pops_only_what_is_due() -> None:
    queue: EventQueue[str] = EventQueue()
    assert queue.pop_due(100) is None
    for at_ns, event in ((5, "b"), (1, "a"), (9, "c")):
        queue.push(at_ns, event)
    assert queue.pop_due(0) is None and len(queue) == 3
    assert queue.pop_due(5) == (1, "a") and queue.pop_due(5) == (5, "b")
    assert queue.pop_due(8) is None and queue.pop_due(9) == (9, "c") and not queue
    with pytest.raises(AssertionError):
        queue.push(4, "before the last pop_due")


def test_event_queue_refuses_the_past() -> None:
    queue: EventQueue[str] = EventQueue()
    queue.push(10, "a")
    queue.pop()
    queue.push(10, "same instant is fine")
    with pytest.raises(AssertionError):
        queue.push(9, "the past")


@given(st.lists(st.tuples(st.integers(0, 50), st.integers()), max_size=200))
def test_event_queue_is_a_stable_sort(items: list[tuple[int, int]]) -> None:
    queue: EventQueue[int] = EventQueue()
    for at_ns, event in items:
        queue.push(at_ns, event)
    queue._check()
    popped = [queue.pop() for _ in range(len(items))]
    assert popped == sorted(items, key=lambda item: item[0])


def test_virtual_clock_only_moves_forward() -> None:
    clock = VirtualClock()
    clock.advance_to(5)
    clock.advance_to(5)
    assert clock.now_ns == 5
    with pytest.raises(AssertionError):
        clock.advance_to(4)


def test_node_clock_offset_and_drift() -> None:
    clock = NodeClock(offset_ns=5 * NS_PER_MS, drift_ppm=100)
    assert clock.wall_ns(0) == 5 * NS_PER_MS
    # 100 ppm over 10 s is 1 ms fast.
    assert clock.wall_ns(10 * NS_PER_S) == 10 * NS_PER_S + 5 * NS_PER_MS + NS_PER_MS
    assert clock.mono_ns(10 * NS_PER_S) == 10 * NS_PER_S + NS_PER_MS
    assert clock.skew_ns(10 * NS_PER_S) == 6 * NS_PER_MS
    slow = NodeClock(drift_ppm=-0.5)  # fractional ppm, kept exactly in ppb
    assert slow.wall_ns(2 * NS_PER_S) == 2 * NS_PER_S - 1000
    assert NodeClock(epoch_ns=1000).wall_ns(1) == 1001


def test_node_clock_readings_are_both_readings_at_once() -> None:
    clock = NodeClock(offset_ns=7, drift_ppm=250.0, epoch_ns=1_000)
    clock.jump(-3)
    for true_ns in (0, 12_345, 10**12):
        assert clock.readings(true_ns) == (clock.mono_ns(true_ns), clock.wall_ns(true_ns))


def test_node_clock_jump_steps_wall_but_not_monotonic() -> None:
    clock = NodeClock()
    clock.jump(-2 * NS_PER_S)
    assert clock.wall_ns(NS_PER_S) == -NS_PER_S
    assert clock.mono_ns(NS_PER_S) == NS_PER_S
    clock.set_skew(3 * NS_PER_MS, at_true_ns=NS_PER_S)
    assert clock.skew_ns(NS_PER_S) == 3 * NS_PER_MS
    assert clock.skew_ns(7 * NS_PER_S) == 3 * NS_PER_MS  # no drift: skew holds


def test_node_clock_drift_change_is_continuous() -> None:
    clock = NodeClock(drift_ppm=1000)
    at_ns = 4 * NS_PER_S
    before = clock.wall_ns(at_ns)
    clock.set_drift(-1000, at_true_ns=at_ns)
    assert clock.wall_ns(at_ns) == before
    assert clock.drift_ppm == -1000
    # 4 ms ahead at 4 s, then 1000 ppm slow for 4 s: back to true time.
    assert clock.wall_ns(2 * at_ns) == 2 * at_ns
    with pytest.raises(AssertionError):
        clock.set_drift(-1e6, at_true_ns=at_ns)


# --- network -------------------------------------------------------------------------------


def _schedule(seed: int, config: LinkConfig, sends: int = 500) -> list[tuple[int, Delivery]]:
    net = Network(derive_rng(seed, "network"), config)
    out: list[tuple[int, Delivery]] = []
    for i in range(sends):
        out += net.send(i % 3, (i + 1) % 3, b"x" * (i % 50), now_ns=i * 1000)
    return out


def test_network_is_deterministic_per_seed() -> None:
    config = LinkConfig(
        jitter_ns=200_000, loss=0.1, duplicate=0.1, reorder=0.1, reorder_ns=NS_PER_MS
    )
    assert _schedule(1, config) == _schedule(1, config)
    assert _schedule(1, config) != _schedule(2, config)


def test_fixed_latency_without_faults_is_fifo() -> None:
    net = Network(random.Random(0), LinkConfig(latency_ns=NS_PER_MS))
    times = [net.send("a", "b", b"p", now_ns=t)[0][0] for t in range(0, 100, 10)]
    assert times == [t + NS_PER_MS for t in range(0, 100, 10)]


def test_loss_rate_is_near_configured() -> None:
    net = Network(derive_rng(3, "network"), LinkConfig(loss=0.1))
    for i in range(20_000):
        net.send("a", "b", b"p", now_ns=i)
    # Binomial sd is sqrt(0.1*0.9/20000) ~ 0.0021; allow 5 sd.
    assert abs(net.stats.dropped_loss / net.stats.sent - 0.1) < 0.011
    net._check()


def test_duplicates() -> None:
    net = Network(
        random.Random(0), LinkConfig(duplicate=1.0, jitter_ns=1000, jitter_dist="uniform")
    )
    deliveries = net.send("a", "b", b"p", now_ns=0)
    assert [d.copy for _, d in deliveries] == [0, 1] and net.stats.duplicated == 1
    assert all(d.payload == b"p" and d.sent_at_ns == 0 for _, d in deliveries)
    net.set_default(LinkConfig(duplicate=0.3))
    for i in range(10_000):
        net.send("a", "b", b"p", now_ns=i)
    assert abs((net.stats.duplicated - 1) / 10_000 - 0.3) < 0.025
    net._check()


def test_partition_cuts_and_heal_restores() -> None:
    net = Network(random.Random(0))
    net.partition([{"n1", "n2"}, {"n3", "n4", "n5"}])
    assert net.reachable("n1", "n2", now_ns=0) and net.reachable("n3", "n5", now_ns=0)
    assert not net.reachable("n1", "n3", now_ns=0) and not net.reachable("n4", "n2", now_ns=0)
    assert net.send("n1", "n3", b"p", now_ns=0) == []
    assert net.stats.dropped_partition == 1
    # Unnamed nodes form one remainder group together.
    net.partition([{"n1"}])
    assert not net.reachable("n1", "n2", now_ns=0) and net.reachable("n2", "n9", now_ns=0)
    assert net.reachable("n1", "n1", now_ns=0)
    net.heal()
    assert net.reachable("n1", "n3", now_ns=0) and len(net.send("n1", "n3", b"p", now_ns=0)) == 1


def test_in_flight_datagram_is_dropped_if_the_link_is_cut_on_arrival() -> None:
    net = Network(random.Random(0))
    [(at_ns, delivery)] = net.send("n1", "n2", b"p", now_ns=0)
    net.partition([{"n1"}, {"n2"}])
    assert not net.deliver(delivery, now_ns=at_ns)
    net.heal()
    [(at_ns, delivery)] = net.send("n1", "n2", b"p", now_ns=at_ns)
    assert net.deliver(delivery, now_ns=at_ns)
    assert (net.stats.delivered, net.stats.dropped_partition, net.stats.in_flight) == (1, 1, 0)
    net._check()


def test_one_way_partition_cuts_one_direction() -> None:
    net = Network(random.Random(0))
    net.partition_one_way({"n1"}, {"n2", "n3"})
    assert not net.reachable("n1", "n2", now_ns=0) and not net.reachable("n1", "n3", now_ns=0)
    assert net.reachable("n2", "n1", now_ns=0) and net.reachable("n2", "n3", now_ns=0)
    net.heal()
    assert net.reachable("n1", "n2", now_ns=0)


def test_isolate_cut_and_flap() -> None:
    net = Network(random.Random(0))
    net.isolate("n2")
    assert not net.reachable("n1", "n2", now_ns=0) and not net.reachable("n2", "n3", now_ns=0)
    net.heal()
    net.cut("n1", "n2", both_ways=False)
    assert not net.reachable("n1", "n2", now_ns=0) and net.reachable("n2", "n1", now_ns=0)
    net.heal()
    net.flap("n1", "n2", start_ns=100, period_ns=10, until_ns=140)
    down = [t for t in range(90, 160) if not net.reachable("n2", "n1", now_ns=t)]
    assert down == list(range(100, 110)) + list(range(120, 130))
    assert net.reachable("n1", "n3", now_ns=105)


def test_bandwidth_clog_queues_datagrams() -> None:
    latency_ns = NS_PER_MS
    net = Network(random.Random(0), LinkConfig(latency_ns=latency_ns, bandwidth_bytes_per_s=1000))
    arrivals = [net.send("a", "b", b"x" * 100, now_ns=0)[0][0] for _ in range(3)]
    tx_ns = 100 * NS_PER_MS  # 100 bytes at 1000 B/s
    assert arrivals == [latency_ns + tx_ns, latency_ns + 2 * tx_ns, latency_ns + 3 * tx_ns]
    assert net.send("b", "a", b"x" * 100, now_ns=0)[0][0] == latency_ns + tx_ns  # per link
    assert transmit_ns(1, 3) == 333_333_334  # rounded up


def test_node_clog_limits_both_directions_and_unclogs() -> None:
    net = Network(random.Random(0), LinkConfig(latency_ns=0))
    net.clog("a", 1000)
    sent = [net.send("a", "b", b"x" * 10, now_ns=0)[0][0] for _ in range(2)]
    assert sent == [10 * NS_PER_MS, 20 * NS_PER_MS]
    received = [net.send(c, "a", b"x" * 10, now_ns=0)[0][0] for c in ("b", "c")]
    assert received == [10 * NS_PER_MS, 20 * NS_PER_MS]
    net.clog("a", 0)
    assert net.send("a", "b", b"x" * 10, now_ns=0)[0][0] == 0


def test_jitter_distributions_and_reordering() -> None:
    base, jitter = NS_PER_MS, 100_000
    uniform = _schedule(5, LinkConfig(latency_ns=base, jitter_ns=jitter, jitter_dist="uniform"))
    delays = [at - d.sent_at_ns for at, d in uniform]
    assert min(delays) >= base and max(delays) <= base + jitter
    lognormal = _schedule(5, LinkConfig(latency_ns=base, jitter_ns=jitter), sends=4000)
    delays = sorted(at - d.sent_at_ns - base for at, d in lognormal)
    assert 0.85 * jitter < delays[len(delays) // 2] < 1.15 * jitter  # median is jitter_ns
    assert delays[-1] <= 20 * jitter
    net = Network(random.Random(0), LinkConfig(reorder=0.5, reorder_ns=10 * NS_PER_MS))
    arrivals = [net.send("a", "b", b"p", now_ns=t * 1000)[0][0] for t in range(200)]
    assert arrivals != sorted(arrivals)


def _mini_run(seed: int) -> tuple[str, list[tuple[int, Delivery]]]:
    """Queue plus network under random faults; returns a trace digest and the arrivals."""
    rng = derive_rng(seed, "ops")
    config = LinkConfig(
        jitter_ns=50_000, loss=0.05, duplicate=0.05, reorder=0.1, reorder_ns=NS_PER_MS
    )
    net = Network(derive_rng(seed, "network"), config)
    queue: EventQueue[Delivery | str] = EventQueue()
    clock = VirtualClock()
    nodes = ["n1", "n2", "n3", "n4"]
    for i in range(2000):
        queue.push(i * 20_000, "tick")
    digest = hashlib.blake2b(digest_size=16)
    arrivals: list[tuple[int, Delivery]] = []
    while queue:
        at_ns, event = queue.pop()
        clock.advance_to(at_ns)
        if isinstance(event, Delivery):
            if net.deliver(event, now_ns=at_ns):
                arrivals.append((at_ns, event))
                digest.update(repr((at_ns, event)).encode())
            continue
        roll = rng.random()
        if roll < 0.01:
            net.partition([set(rng.sample(nodes, 2))])
        elif roll < 0.02:
            net.heal()
        elif roll < 0.03:
            net.clog(rng.choice(nodes), rng.choice((0, 100_000)))
        src, dst = rng.sample(nodes, 2)
        for deliver_at_ns, delivery in net.send(src, dst, b"%d" % at_ns, now_ns=at_ns):
            queue.push(deliver_at_ns, delivery)
    net._check()
    assert net.stats.in_flight == 0 and net.stats.delivered == len(arrivals)
    assert all(at >= d.sent_at_ns + config.latency_ns for at, d in arrivals)
    return digest.hexdigest(), arrivals


def test_queue_and_network_run_is_reproduced_by_its_seed() -> None:
    digest, arrivals = _mini_run(11)
    assert _mini_run(11)[0] == digest
    assert _mini_run(12)[0] != digest
    assert 500 < len(arrivals) < 2000  # faults dropped some, most got through


def test_link_override_and_validation() -> None:
    net = Network(random.Random(0), LinkConfig(latency_ns=1))
    net.set_link("a", "b", LinkConfig(latency_ns=7))
    assert net.send("a", "b", b"", now_ns=0)[0][0] == 7
    assert net.send("b", "a", b"", now_ns=0)[0][0] == 1
    net.set_link("a", "b", None)
    assert net.link("a", "b") == net.default
    with pytest.raises(ValueError, match="loss"):
        LinkConfig(loss=1.5)
    with pytest.raises(ValueError, match="latency_ns"):
        LinkConfig(latency_ns=-1)


# --- scenarios -----------------------------------------------------------------------------

TABLE_FORM = """
name = "minority partition"
description = "two nodes split off, then heal"
seed = 7
duration = "60s"
nodes = 5
mode = "strict"
[limits]
default = "100/10s"
[limits.tiers]
gold = "1000/10s burst 100"
[limits.clients]
"client-1" = "gold"
[workload]
clients = 1000
rate = 2000
zipf = 1.1
hot_client = "client-0"
hot_rate = 200
[network]
latency = "1ms"
jitter = "200us"
loss = 0.0
[[timeline]]
at = "10s"
do = "partition [n1 n2] [n3 n4 n5]"
[[timeline]]
at = "40s"
do = "heal"
"""


def test_parse_table_form() -> None:
    scenario = parse_scenario(TABLE_FORM, source="minority.toml")
    assert scenario.name == "minority partition" and scenario.seed == 7
    assert scenario.duration_ns == 60 * NS_PER_S and scenario.nodes == 5
    assert scenario.node_names == ("n1", "n2", "n3", "n4", "n5")
    assert scenario.limits.rule_for("client-1") == "1000/10s burst 100"
    assert scenario.limits.rule_for("anyone") == "100/10s"
    assert scenario.workload == WorkloadSpec(1000, 2000.0, 1.1, "client-0", 200.0)
    assert scenario.network.latency_ns == NS_PER_MS and scenario.network.jitter_ns == 200_000
    assert scenario.timeline == (
        Action(10 * NS_PER_S, "partition", (("n1", "n2"), ("n3", "n4", "n5"))),
        Action(40 * NS_PER_S, "heal"),
    )
    assert scenario.network.link_config().jitter_ns == 200_000


def test_compact_form_equals_table_form_and_round_trips() -> None:
    compact = TABLE_FORM.split("[limits]")[0] + (
        'timeline = ["at 40s heal", "at 10s partition [n1,n2] [n3 n4 n5]"]\n'
        + "[limits]"
        + TABLE_FORM.split("[limits]")[1].split("[[timeline]]")[0]
    )
    assert parse_scenario(compact) == parse_scenario(TABLE_FORM)  # sorted by time
    scenario = parse_scenario(TABLE_FORM)
    assert parse_scenario(scenario.to_toml()) == scenario


def test_every_verb_parses_and_prints_back() -> None:
    lines = [
        "at 1s partition [n1] [n2 n3]", "at 1s partition_oneway [n1] [n2 n3]",
        "at 1s isolate n2", "at 1s heal", "at 1s crash n1", "at 2s restart n1",
        "at 1s pause n2 for 1.5s", "at 2s resume n2", "at 1s leave n3", "at 2s join n3",
        "at 1s skew n1 -250ms", "at 1s drift n1 -20.5", "at 1s jump n2 +3s",
        "at 1s loss 0.1", "at 1s duplicate 0.05", "at 1s reorder 0.2 5ms", "at 1s reorder 0.2",
        "at 1s misdeliver 0.1",
        "at 1s latency 10ms 1ms", "at 1s latency 0s", "at 1s flap n1 n2 every 200ms until 9s",
        "at 1s set_rule c1 50/s burst 5", "at 1s set_rule c2 gold", "at 1s remove_rule c1",
        "at 1s hot c9 300", "at 1s rate 4000", "at 1s reset c1", "at 3s restart n1 same_seed",
        "at 4s restart n2 via [n1 n3]", "at 5s restart n1 new_seed via [n2] serve_before_join 1s",
        "at 3s join n3 via [n1] serve_before_join 500ms", "at 6s restart n2 serve_before_join 2s",
    ]  # fmt: skip
    text = (
        'duration = "10s"\nnodes = 3\ntimeline = ['
        + ", ".join(f'"{line}"' for line in lines)
        + ']\n[limits.tiers]\ngold = "10/s"\n'
    )
    scenario = parse_scenario(text)
    assert {action.verb for action in scenario.timeline} == set(VERBS)
    pause = next(a for a in scenario.timeline if a.verb == "pause")
    assert pause.args == ("n2", 1500 * NS_PER_MS) and str(pause) == "at 1s pause n2 1500ms"
    flap = next(a for a in scenario.timeline if a.verb == "flap")
    assert flap.args == ("n1", "n2", 200 * NS_PER_MS, 9 * NS_PER_S)
    assert next(a for a in scenario.timeline if a.verb == "jump").args == ("n2", 3 * NS_PER_S)
    assert ("c1", "50/s burst 5") in [a.args for a in scenario.timeline]
    assert parse_scenario(scenario.to_toml()) == scenario
    restarts = [(str(a), a.args) for a in scenario.timeline if a.verb in ("restart", "join")]
    assert restarts == [
        ("at 2s restart n1", ("n1", None, None, None)),
        ("at 2s join n3", ("n3", None, None)),
        ("at 3s restart n1 same_seed", ("n1", "same_seed", None, None)),
        ("at 3s join n3 via [n1] serve_before_join 500ms", ("n3", ("n1",), 500 * NS_PER_MS)),
        ("at 4s restart n2 via [n1 n3]", ("n2", None, ("n1", "n3"), None)),
        ("at 5s restart n1 new_seed via [n2] serve_before_join 1s",
         ("n1", "new_seed", ("n2",), NS_PER_S)),
        ("at 6s restart n2 serve_before_join 2s", ("n2", None, None, 2 * NS_PER_S)),
    ]  # fmt: skip
    assert next(a for a in scenario.timeline if a.verb == "reset").args == ("c1",)


def test_an_action_built_in_code_equals_the_same_action_parsed() -> None:
    """Optional arguments left out are None however the action was made (fuzz builds them)."""
    built = Action(2 * NS_PER_S, "restart", ("n1",))
    assert built.args == ("n1", None, None, None) and str(built) == "at 2s restart n1"
    parsed = parse_scenario('duration = "5s"\nnodes = 2\ntimeline = ["at 2s restart n1"]')
    assert parsed.timeline == (built,)
    assert Action(0, "partition", (("n1",), ("n2",))).args == (("n1",), ("n2",))


def test_absent_nodes_are_read_checked_and_written_back() -> None:
    text = HEAD + 'absent = ["n5", "n4"]\ntimeline = ["at 3s join n5 via [n1]"]\n'
    scenario = parse_scenario(text)
    assert scenario.absent == ("n5", "n4")
    assert parse_scenario(scenario.to_toml()) == scenario
    assert parse_scenario(HEAD).absent == ()
    assert "unknown node 'n6'" in _error(HEAD + 'absent = ["n6"]').problem
    assert _error(HEAD + 'absent = ["n1", "n1"]').where == "absent[1]"
    every = '", "'.join(f"n{i}" for i in range(1, 6))
    assert "at least one node" in _error(HEAD + f'absent = ["{every}"]').problem
    assert parse_scenario(HEAD + "authenticated = true\n").authenticated
    assert "authenticated = true" in parse_scenario(HEAD + "authenticated = true\n").to_toml()


@pytest.mark.parametrize(
    ("text", "ns"),
    [("250ms", 250 * NS_PER_MS), ("1.5s", 1500 * NS_PER_MS), ("2m", 120 * NS_PER_S),
     ("200us", 200_000), ("7ns", 7), ("1h", 3600 * NS_PER_S), ("0s", 0)],
)  # fmt: skip
def test_parse_duration(text: str, ns: int) -> None:
    assert parse_duration(text) == ns
    assert parse_duration(format_duration(ns)) == ns


@pytest.mark.parametrize("text", ["10", "1.5ns", "3 parsecs", "-1s", "s", "", "1e3s"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)
    assert parse_duration("-1s", signed=True) == -NS_PER_S


def _error(text: str) -> ScenarioError:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, source="bad.toml")
    assert isinstance(info.value, ValueError) and str(info.value).startswith("bad.toml: ")
    return info.value


HEAD = 'duration = "60s"\nnodes = 5\n'


def test_errors_name_file_entry_and_problem() -> None:
    err = _error(HEAD + 'timeline = [\n  "at 1s heal",\n  "at 10 heal",\n]\n')
    assert err.where == "timeline[1] (line 5)" and "10" in err.problem and "duration" in err.problem
    err = _error(HEAD + '[[timeline]]\nat = "1s"\ndo = "partiton [n1] [n2]"\n')
    assert err.where == "timeline[0] (line 5)" and "did you mean 'partition'" in err.problem
    err = _error(HEAD + 'timeline = ["at 1s frobnicate"]')
    assert "unknown verb 'frobnicate'" in err.problem
    err = _error(HEAD + 'timeline = ["at 1s crash n9"]')
    assert "unknown node 'n9' (nodes are n1..n5)" in err.problem
    err = _error(HEAD + 'timeline = ["at 1s partition [n1 n2] [n2 n3]"]')
    assert "more than one group" in err.problem
    err = _error(HEAD + 'timeline = ["at 61s heal"]')
    assert "after the end" in err.problem
    err = _error(HEAD + 'timeline = ["at 1s set_rule c1 10/fortnight"]')
    assert "fortnight" in str(err)
    err = _error(HEAD + 'timeline = ["at 1s loss 1.5"]')
    assert "probability" in err.problem
    err = _error(HEAD + 'timeline = ["at 1s pause n1"]')
    assert "NODE DURATION" in err.problem
    err = _error(HEAD + 'timeline = ["at 5s flap n1 n2 1s 2s"]')
    assert "after the action's time" in err.problem
    err = _error(HEAD + 'timeline = ["at 1s restart n1 sam_seed"]')
    assert "expected new_seed or same_seed, got 'sam_seed'" in err.problem
    err = _error(HEAD + 'timeline = ["at 1s join n1 same_seed"]')
    assert "expected NODE [via [NODES]] [serve_before_join DELAY]" in err.problem
    err = _error(HEAD + 'timeline = ["at 1s restart n1 via [n9]"]')
    assert "unknown node 'n9'" in err.problem


def test_errors_outside_the_timeline() -> None:
    """Places are dotted keys, as in the daemon's config file (``core/settings.py``)."""
    missing = _error('duration = "60s"\n')
    assert (missing.where, missing.problem) == ("nodes", "missing; this key is required")
    assert _error("duration = 60\nnodes = 3\n").where == "duration"
    unknown = _error(HEAD + "colour = 1\n")
    assert unknown.where == "colour"
    assert unknown.problem.startswith("unknown key; the keys known in the top level are name, ")
    assert _error(HEAD + "[workload]\nrate = -1\n").where == "workload.rate"
    assert "tier" in _error(HEAD + '[limits.clients]\nc1 = "platinum"\n').problem
    assert _error(HEAD + "[network]\nloss = 2.0\n").where == "network.loss"
    err = _error(HEAD + 'timeline = [\n"at 1s heal",\n"at 2s heal",\n"at 3s heal x",\n]\n')
    assert err.where == "timeline[2] (line 6)"
    assert "not valid TOML" in _error("= nonsense").problem
    assert _error(HEAD + 'mode = "eventual"\n').where == "mode"


def test_load_scenario_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "minority.toml"
    path.write_text(TABLE_FORM)
    assert load_scenario(path).source == str(path)
    with pytest.raises(ScenarioError, match="missing.toml"):
        load_scenario(tmp_path / "missing.toml")


def test_fuzz_scenarios_are_valid_and_deterministic() -> None:
    verbs_seen: set[str] = set()
    timelines: set[tuple[Action, ...]] = set()
    for seed in range(100):
        scenario = generate_fuzz_scenario(seed)
        assert scenario == generate_fuzz_scenario(seed)
        assert parse_scenario(scenario.to_toml()) == scenario  # passes every parser check
        assert 3 <= scenario.nodes <= 7 and scenario.seed == seed
        _check_fuzz_phases(scenario)
        verbs_seen.update(a.verb for a in scenario.timeline)
        timelines.add(scenario.timeline)
    assert verbs_seen == set(VERBS)  # resets and misdelivery are extras (sim/fuzz_extras.py)
    assert len(timelines) > 90  # seeds with every fault off share the bare liveness timeline


def test_long_fuzz_scenarios_are_valid_deterministic_and_long() -> None:
    verbs_seen: set[str] = set()
    outlasting = Counter[str]()
    for seed in range(100):
        scenario = generate_long_fuzz_scenario(seed)
        assert scenario == generate_long_fuzz_scenario(seed)
        assert parse_scenario(scenario.to_toml()) == scenario
        assert 60 * NS_PER_S <= scenario.duration_ns <= 300 * NS_PER_S
        assert 3 <= scenario.nodes <= 7 and scenario.seed == seed
        _check_long_fuzz_phases(scenario)
        verbs_seen.update(a.verb for a in scenario.timeline)
        for verb, length in _fault_lengths(scenario):
            if length >= outlast_ns(scenario.nodes):
                outlasting[verb] += 1
        if scenario.absent:
            assert all(any(a.verb == "join" and a.args[0] == n for a in scenario.timeline)
                       for n in scenario.absent)  # fmt: skip
    assert verbs_seen == set(VERBS)
    # Faults that outlast detection plus reaping, of every kind that takes something away.
    assert {"partition", "crash", "pause", "leave", "isolate"} <= set(outlasting), outlasting
    restarts = [a for s in range(100) for a in generate_long_fuzz_scenario(s).timeline
                if a.verb == "restart"]  # fmt: skip
    assert {a.args[1] for a in restarts} == {None, "same_seed"}
    inside = [s for s in range(100) if _restarts_inside_a_minority(generate_long_fuzz_scenario(s))]
    assert len(inside) >= 5, inside


def test_outlast_is_detection_plus_reaping() -> None:
    """Pinned: 5 probe intervals, the probe timeout, 6 base suspicion timeouts (2 s each
    below ten members), 30 s of reaping and 1 s of margin."""
    assert outlast_ns(5) == 48_500 * NS_PER_MS
    assert outlast_ns(3) == 46_500 * NS_PER_MS
    assert outlast_ns(7) == 50_500 * NS_PER_MS


def _fault_lengths(scenario: Scenario) -> list[tuple[str, int]]:
    """(verb, length) of each fault that something later ends (heal, restart, join, resume)."""
    lengths = []
    timeline = scenario.timeline
    for i, action in enumerate(timeline):
        if action.verb == "pause":
            lengths.append(("pause", action.args[1]))
            continue
        ends = {"partition": "heal", "isolate": "heal", "crash": "restart", "leave": "join"}
        if action.verb not in ends:
            continue
        for later in timeline[i + 1 :]:
            same_node = later.verb == "heal" or later.args[0] == action.args[0]
            if later.verb == ends[action.verb] and same_node:
                lengths.append((action.verb, later.at_ns - action.at_ns))
                break
    return lengths


def _restarts_inside_a_minority(scenario: Scenario) -> bool:
    """Whether a node restarts or joins inside the smaller side of an open partition."""
    groups: tuple[tuple[str, ...], ...] = ()
    for action in scenario.timeline:
        if action.verb == "partition":
            groups = action.args
        elif action.verb == "heal":
            groups = ()
        elif action.verb in ("restart", "join") and groups:
            side = next((g for g in groups if action.args[0] in g), ())
            if 2 * len(side) < scenario.nodes:
                return True
    return False


def _check_long_fuzz_phases(scenario: Scenario) -> None:
    """Every fault ends in the safety phase; at least one node is up at every action."""
    safety_end = int(scenario.duration_ns * 0.7) // NS_PER_MS * NS_PER_MS
    down = set(scenario.absent)
    paused_until: dict[str, int] = {}
    for action in scenario.timeline:
        assert action.at_ns <= safety_end, action
        node = action.args[0] if action.args else None
        if action.verb in ("crash", "leave"):
            assert node not in down, action
            down.add(node)
        elif action.verb in ("restart", "join"):
            down.discard(node)
        elif action.verb == "pause":
            paused_until[node] = action.at_ns + action.args[1]
            assert paused_until[node] <= safety_end
        up = [n for n in scenario.node_names
              if n not in down and paused_until.get(n, 0) <= action.at_ns]  # fmt: skip
        assert up, f"{scenario.name}: every node down at {action}"
    assert not down, f"{scenario.name}: {down} still down after the safety phase"
    assert scenario.timeline[-1].at_ns == safety_end and scenario.timeline[-1].verb in (
        "heal", "join",
    )  # fmt: skip


def _check_fuzz_phases(scenario: Scenario) -> None:
    """Faults only in the safety phase; after it, every node is back and the net healed."""
    timeline = scenario.timeline
    safety_end = int(scenario.duration_ns * 0.7) // NS_PER_MS * NS_PER_MS
    down: set[str] = set()
    paused_until: dict[str, int] = {}
    for action in timeline:
        if action.at_ns >= safety_end:
            assert action.at_ns == safety_end
            assert action.verb in {"heal", "restart", "join", "resume", "loss", "duplicate",
                                   "reorder", "latency", "misdeliver"}  # fmt: skip
        node = action.args[0] if action.args else None
        if action.verb in ("crash", "leave"):
            assert node not in down
            down.add(node)
        elif action.verb in ("restart", "join"):
            down.remove(node)
        elif action.verb == "pause":
            paused_until[node] = action.at_ns + action.args[1]
        elif action.verb == "resume":
            paused_until[node] = action.at_ns
        up = [n for n in scenario.node_names
              if n not in down and paused_until.get(n, 0) <= action.at_ns]  # fmt: skip
        assert up, f"{scenario}: every node down at {action}"
    assert not down and all(until <= safety_end for until in paused_until.values())
    assert timeline[-1].at_ns == safety_end and any(a.verb == "heal" for a in timeline)


def test_fuzz_swarm_enables_about_half_the_faults() -> None:
    counts = Counter(
        kind
        for seed in range(200)
        for kind in generate_fuzz_scenario(seed).description.split(": ")[1].split(", ")
    )
    assert all(60 < counts[kind] < 140 for kind in FUZZ_FAULTS), counts
    counts = Counter(
        kind
        for seed in range(200)
        for kind in generate_long_fuzz_scenario(seed).description.split(": ")[1].split(", ")
    )
    assert all(60 < counts[kind] < 140 for kind in LONG_FUZZ_FAULTS), counts


# --- workload ------------------------------------------------------------------------------

NODES = ("n1", "n2", "n3", "n4", "n5")


def _requests(seed: int, count: int, **kwargs: object) -> list[tuple[int, str, str, int]]:
    options: dict[str, object] = {"clients": 1000, "rate": 2000.0} | kwargs
    workload = Workload(derive_rng(seed, "workload"), NODES, **options)  # type: ignore[arg-type]
    return [tuple(workload.next_request()) for _ in range(count)]  # type: ignore[misc,arg-type]


def test_workload_is_deterministic_per_seed() -> None:
    first = _requests(1, 5000, hot_client="client-0", hot_rate=200.0)
    assert first == _requests(1, 5000, hot_client="client-0", hot_rate=200.0)
    assert first != _requests(2, 5000, hot_client="client-0", hot_rate=200.0)
    times = [r[0] for r in first]
    assert times == sorted(times)


def test_workload_rates_nodes_and_hot_client() -> None:
    workload = Workload(derive_rng(4, "w"), NODES, clients=100, rate=2000.0,
                        hot_client="hot", hot_rate=500.0)  # fmt: skip
    requests = list(workload.requests_until(100 * NS_PER_S))
    hot = sum(r.client == "hot" for r in requests)
    # Poisson counts: sd = sqrt(mean); allow 5 sd.
    assert abs(hot - 50_000) < 5 * math.sqrt(50_000)
    assert abs(len(requests) - hot - 200_000) < 5 * math.sqrt(200_000)
    per_node = Counter(r.entry_node for r in requests)
    assert set(per_node) == set(NODES) and min(per_node.values()) > 0.19 * len(requests)
    assert all(r.cost == 1 for r in requests)


def test_zipf_top_client_frequency() -> None:
    workload = Workload(derive_rng(5, "w"), NODES, clients=1000, rate=1000.0, zipf=1.1)
    expected = workload.share(0)
    harmonic = sum(1 / k**1.1 for k in range(1, 1001))
    assert expected == pytest.approx(1 / harmonic)
    counts = Counter(workload.next_request().client for _ in range(50_000))  # type: ignore[union-attr]
    sd = math.sqrt(expected * (1 - expected) / 50_000)
    assert abs(counts["c0"] / 50_000 - expected) < 5 * sd
    assert counts["c0"] > counts["c1"] > counts["c9"]
    assert counts["c1"] / counts["c0"] == pytest.approx(2**-1.1, rel=0.1)
    uniform = Workload(derive_rng(5, "w"), NODES, clients=4, rate=1000.0, zipf=0)
    assert uniform.share(3) == 0.25
    assert {r.client for r in uniform.requests_until(NS_PER_S)} == {"c0", "c1", "c2", "c3"}


def test_workload_rate_changes_and_silence() -> None:
    workload = Workload(derive_rng(6, "w"), NODES, clients=10, rate=1000.0)
    list(workload.requests_until(10 * NS_PER_S))
    workload.set_rate(0.0, now_ns=10 * NS_PER_S)
    assert workload.peek_ns() == NEVER_NS and workload.next_request() is None
    workload.set_hot("h", 100.0, now_ns=10 * NS_PER_S)
    assert workload.peek_ns() > 10 * NS_PER_S
    workload.set_rate(4000.0, now_ns=10 * NS_PER_S)
    later = list(workload.requests_until(20 * NS_PER_S))
    assert abs(len(later) - 41_000) < 5 * math.sqrt(41_000)
    assert all(r.at_ns >= 10 * NS_PER_S for r in later)
    workload.set_nodes(["n9"])
    assert workload.next_request(20 * NS_PER_S).entry_node == "n9"  # type: ignore[union-attr]


def test_workload_from_scenario_spec() -> None:
    spec = parse_scenario(TABLE_FORM).workload
    one = Workload.from_spec(spec, NODES, derive_rng(7, "workload"))
    two = Workload.from_spec(replace(spec), NODES, derive_rng(7, "workload"))
    assert [one.next_request() for _ in range(100)] == [two.next_request() for _ in range(100)]
    assert one.hot_client == "client-0" and one.rate == 2000.0
