"""Simulation runs: shipped scenarios, determinism, swarm fuzzing, timeline verbs, the
progress guard, planted bugs, the CLI.

The production node runs inside the simulator here, so a failure in this file
is either a bug in the node or in the simulator; each one names the seed and
the command that reproduces it. Known findings are marked ``xfail(strict=False)``
one case at a time (see ``KNOWN_FUZZ_FAILURES``, ``KNOWN_LONG_FUZZ_FAILURES``), so
that the rest still run and a fix shows up as XPASS. The long fuzz schedules are
marked ``long`` (and ``slow``): ``./scripts/test`` leaves them out, ``--slow`` runs them.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from functools import cache, partial
from pathlib import Path

import pytest

from meshlimit.cli import main
from meshlimit.cluster.node import Node
from meshlimit.core.ring import HashRing
from meshlimit.sim import cli as sim_cli
from meshlimit.sim.cli import shipped_scenarios
from meshlimit.sim.events import NS_PER_S
from meshlimit.sim.runner import (
    FUZZ_SEED_STRIDE,
    RunResult,
    fuzz_scenario,
    fuzz_seed,
    run_fuzz,
    run_scenario,
)
from meshlimit.sim.scenario import Scenario, load_scenario, parse_scenario
from meshlimit.sim.world import STALL_EVENTS, RunStalled, World, event_budget

#: The shipped scenarios that must pass; ``edge_*`` ones reproduce open bugs (issue 13)
#: and are judged in tests/test_sim_edges.py, expected to fail until each is fixed.
SHIPPED = {n: p for n, p in shipped_scenarios().items() if not n.startswith("edge_")}
FUZZ_BASE_SEED = 2026
FUZZ_RUNS = 200

#: Fuzz run index -> why it fails today (none at present; keep the mechanism for findings).
KNOWN_FUZZ_FAILURES: dict[int, str] = {}


@cache
def shipped_result(name: str) -> RunResult:
    """Each shipped scenario runs once per test session, with its own seed."""
    scenario = load_scenario(SHIPPED[name])
    assert scenario.seed is not None, f"{name}: shipped scenarios state their seed"
    return run_scenario(scenario, scenario.seed, stopwatch=time.perf_counter)


def _failure(result: RunResult) -> str:
    return "\n".join([f"seed={result.seed}", *result.violations, f"reproduce: {result.reproduce}"])


# --- shipped scenarios ------------------------------------------------------------------------


def test_the_shipped_scenarios_are_there() -> None:
    expected = {
        "healthy", "healthy_local", "owner_crash", "minority_partition", "even_split",
        "flapping_link", "loss_20pct", "duplication_reordering", "clock_skew",
        "rolling_restart", "rule_change_storm", "hot_client", "join_leave",
        "lossy_then_clean", "restart_before_reap", "operator_reset", "reset_during_partition",
        "token_bucket_hot", "concurrent_rule_writes", "join_under_load", "misdelivery",
        "rule_restart", "weighted_costs", "rule_races", "slow_links", "three_node_crash",
        "restart_replica_paused", "one_way_comeback",
    }  # fmt: skip
    assert expected <= set(SHIPPED)
    for name, path in SHIPPED.items():
        scenario = load_scenario(path)
        assert scenario.name == name
        assert "Bound" in scenario.description or "bound" in scenario.description, name
        assert 3 <= scenario.nodes <= 7, name
    assert any(load_scenario(p).mode == "local" for p in SHIPPED.values())


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_scenario_has_no_violations(name: str) -> None:
    result = shipped_result(name)
    assert result.ok, _failure(result)
    assert result.simulated_s == pytest.approx(load_scenario(SHIPPED[name]).duration_ns / NS_PER_S)
    assert result.summary["admitted"] > 0 and result.summary["refused"] > 0


def test_healthy_is_exact_and_decided_by_owners() -> None:
    summary = shipped_result("healthy").summary
    assert summary["peak_ratio"] <= 1.0
    paths = summary["answers_by_path"]
    # Degraded only at boot: nodes joining through a seed decide on a local quota for two
    # gossip rounds, until the cluster's counts have reached them.
    assert paths.get("degraded", 0) <= 0.01 * sum(paths.values())
    assert paths["owner"] > 0 and paths["forwarded"] > 0 and "local" not in paths
    assert summary["saturated_fill"]["median"] >= 0.8


def test_healthy_local_decides_locally() -> None:
    summary = shipped_result("healthy_local").summary
    paths = summary["answers_by_path"]
    assert set(paths) <= {"local", "degraded"}
    assert paths.get("degraded", 0) <= 0.01 * sum(paths.values())  # boot warm-up only
    assert summary["peak_ratio"] <= summary["nodes"]


def test_owner_crash_crashes_the_hot_clients_owner() -> None:
    scenario = load_scenario(SHIPPED["owner_crash"])
    assert scenario.workload.hot_client == "tenant-42"
    assert HashRing(scenario.node_names).owner("tenant-42") == "n2"
    world = World(scenario, scenario.seed or 1)
    world.run(until_ns=5 * NS_PER_S)
    for sim in world.nodes.values():
        assert sim.node is not None and sim.node.owner("tenant-42") == "n2", sim.name
    summary = shipped_result("owner_crash").summary
    assert summary["detection_s"]["count"] >= 1
    assert summary["answers_by_path"]["degraded"] > 0


@pytest.mark.parametrize("name", ["minority_partition", "even_split", "loss_20pct"])
def test_faults_push_checks_into_degraded_mode(name: str) -> None:
    assert shipped_result(name).summary["answers_by_path"].get("degraded", 0) > 100


def test_phases_split_the_run_at_timeline_actions() -> None:
    result = shipped_result("owner_crash")
    titles = [phase.title for phase in result.phases]
    assert titles == ["0s-10s healthy", "10s-48s after crash n2", "48s-55s after restart n2"]
    assert sum(p.admitted for p in result.phases) == result.summary["admitted"]
    assert result.phases[1].unavailable > 0 and result.phases[0].unavailable == 0


# --- determinism ------------------------------------------------------------------------------


def _short(name: str, seconds: int) -> Scenario:
    return replace(load_scenario(SHIPPED[name]), duration_ns=seconds * NS_PER_S)


def test_same_seed_same_digest_different_seed_different_digest() -> None:
    scenario = _short("minority_partition", 10)
    first, again = run_scenario(scenario, 7), run_scenario(scenario, 7)
    assert first.digest == again.digest
    assert first.summary == again.summary and first.phases == again.phases
    assert run_scenario(scenario, 8).digest != first.digest


def test_a_fuzz_run_is_reproduced_by_its_seed_and_by_its_toml() -> None:
    seed = fuzz_seed(FUZZ_BASE_SEED, 3)
    batch = run_fuzz(4, FUZZ_BASE_SEED)
    assert [r.seed for r in batch] == [FUZZ_BASE_SEED * FUZZ_SEED_STRIDE + i for i in range(4)]
    alone = run_scenario(fuzz_scenario(seed), seed)
    assert alone.digest == batch[3].digest
    kept = parse_scenario(fuzz_scenario(seed).to_toml())
    assert run_scenario(kept, seed).digest == batch[3].digest


# --- swarm fuzzing ----------------------------------------------------------------------------


def _fuzz_case(index: int) -> object:
    seed = fuzz_seed(FUZZ_BASE_SEED, index)
    marks = ()
    if index in KNOWN_FUZZ_FAILURES:
        marks = pytest.mark.xfail(strict=False, reason=KNOWN_FUZZ_FAILURES[index])
    return pytest.param(seed, id=f"seed={seed}", marks=marks)


@pytest.mark.parametrize("seed", [_fuzz_case(i) for i in range(FUZZ_RUNS)])
def test_fuzz_seed_has_no_violations(seed: int) -> None:
    result = run_scenario(fuzz_scenario(seed), seed)
    assert result.ok, _failure(result)


# --- the long lane: long schedules over many seeds (./scripts/test --slow) ------------------------

LONG_FUZZ_RUNS = 60

#: Long fuzz run index -> why it fails today (each a known bug; a fix shows as XPASS).
#: None at present. With the cluster of commit f9c91bb runs 2, 8, 16, 46, 48, 49 and 52
#: failed with ``uncounted_admission``: each restarts a node ``same_seed`` and its owners
#: answered the new life from their de-duplication cache of the old one (issue 13, bug 2;
#: each passed with that restart's seed changed); the boot identity per life fixed them.
KNOWN_LONG_FUZZ_FAILURES: dict[int, str] = {}


def _long_fuzz_case(index: int) -> object:
    seed = fuzz_seed(FUZZ_BASE_SEED, index)
    marks: list[pytest.MarkDecorator] = [pytest.mark.long, pytest.mark.slow]
    if index in KNOWN_LONG_FUZZ_FAILURES:
        marks.append(pytest.mark.xfail(strict=False, reason=KNOWN_LONG_FUZZ_FAILURES[index]))
    return pytest.param(seed, id=f"long-seed={seed}", marks=marks)


@pytest.mark.parametrize("seed", [_long_fuzz_case(i) for i in range(LONG_FUZZ_RUNS)])
def test_long_fuzz_seed_has_no_violations(seed: int) -> None:
    scenario = fuzz_scenario(seed, long=True)
    first = run_scenario(scenario, seed)
    assert first.reproduce == f"meshlimit sim --fuzz --long --one {seed}"
    assert first.ok, _failure(first)


@pytest.mark.long
@pytest.mark.slow
def test_cli_long_fuzz_batch_and_one_run_agree(capsys) -> None:  # noqa: ANN001
    main(["sim", "--fuzz", "--long", "--runs", "1", "--seed", "7"])
    assert capsys.readouterr().out.splitlines()[0] == "seed=7"
    one = fuzz_seed(7, 0)
    main(["sim", "--fuzz", "--long", "--one", str(one)])
    single = capsys.readouterr().out
    assert single.splitlines()[0] == f"seed={one}"
    digest = re.search(r"digest=([0-9a-f]{32})", single)
    assert digest and run_fuzz(1, 7, long=True)[0].digest == digest.group(1)
    assert "reproduce: meshlimit sim --fuzz --long --one" in single or "ok: no violations" in single


def test_cli_long_needs_fuzz(capsys) -> None:  # noqa: ANN001
    assert main(["sim", "healthy", "--long"]) == 2
    assert "--long needs --fuzz" in capsys.readouterr().err


def test_a_long_fuzz_run_is_reproduced_by_its_seed() -> None:
    """Deterministic per seed, like the short ones; cut to 10 s to stay in the default lane."""
    seed = fuzz_seed(FUZZ_BASE_SEED, 2)
    scenario = fuzz_scenario(seed, long=True)
    assert scenario == fuzz_scenario(seed, long=True) and scenario.source.startswith("<long")
    short = replace(scenario, duration_ns=10 * NS_PER_S,
                    timeline=tuple(a for a in scenario.timeline if a.at_ns <= 10 * NS_PER_S))  # fmt: skip
    first, again = run_scenario(short, seed), run_scenario(short, seed)
    assert first.digest == again.digest and first.summary["events"] == again.summary["events"]
    assert run_scenario(parse_scenario(short.to_toml()), seed).digest == first.digest


# --- planted bugs: the checkers must notice -----------------------------------------------------


def uncounted_forwards(node: Node) -> None:
    """Planted bug: the owner decides a forwarded check but does not count it."""
    original = node._decide_here

    def decide(client: str, cost: int, wall: int, path: str):  # noqa: ANN202 - a Decision
        if path != "forwarded":
            return original(client, cost, wall, path)
        decision = original(client, 0, wall, path)  # cost 0: decide, count nothing
        log = node.decision_log
        assert log is not None
        w, c, rule, _, allowed, p = log[-1]
        log[-1] = (w, c, rule, cost, allowed, p)  # but report the caller's cost
        return decision

    node._decide_here = decide  # type: ignore[method-assign]


def doubly_counted_forwards(node: Node) -> None:
    """Planted bug: the owner counts every forwarded check twice."""
    original = node._decide_here

    def decide(client: str, cost: int, wall: int, path: str):  # noqa: ANN202 - a Decision
        if path == "forwarded":
            original(client, cost, wall, path)  # counted once here, unreported ...
            log = node.decision_log
            assert log is not None
            log.pop()
        return original(client, cost, wall, path)  # ... and once more here

    node._decide_here = decide  # type: ignore[method-assign]


def test_planted_uncounted_forward_is_caught_as_over_admission() -> None:
    scenario = _short("healthy", 6)
    world = World(scenario, 1, plant=uncounted_forwards)
    world.run()
    found = [v for v in world.checkers.violations if v.kind == "over_admission"]
    hot = [v for v in found if v.client == "hot"]
    assert hot, [str(v) for v in found]
    window_ns = NS_PER_S  # "hot" is 50/s: one-second windows
    seconds = {v.window * window_ns // NS_PER_S for v in hot}
    assert all(v.window > 0 for v in hot)
    assert f"client=hot window={hot[0].window}" in str(hot[0])
    assert len(seconds) >= 3  # every second of the run, not one unlucky window
    result = run_scenario(scenario, 1, plant=uncounted_forwards)
    assert not result.ok and any("client=hot window=" in v for v in result.violations)


def test_planted_double_count_is_caught_as_under_admission() -> None:
    """The runner also measures it: in windows where a client was refused, how full
    did they get?"""
    scenario = _short("healthy", 6)
    healthy = run_scenario(scenario, 1).summary["saturated_fill"]
    planted = run_scenario(scenario, 1, plant=doubly_counted_forwards).summary["saturated_fill"]
    assert healthy["median"] >= 0.8
    assert planted["median"] <= 0.5, planted
    assert planted["median"] < healthy["median"] - 0.3


def test_checkers_report_under_admission_of_a_double_count() -> None:
    world = World(_short("healthy", 10), 1, plant=doubly_counted_forwards)
    world.run()
    assert any("under" in v.kind for v in world.checkers.violations)


# --- timeline verbs in the world ----------------------------------------------------------------

_VERBS = """
name = "verbs"
description = "verbs of the world"
duration = "{duration}"
nodes = 4
absent = {absent}
timeline = {timeline}
[limits]
default = "20/s"
[workload]
clients = 20
rate = 200.0
"""


def _verbs(timeline: list[str], *, duration: str = "8s", absent: tuple[str, ...] = ()) -> Scenario:
    return parse_scenario(
        _VERBS.format(duration=duration, absent=json.dumps(list(absent)), timeline=timeline)
    )


def test_restart_same_seed_reuses_the_last_lifes_stream_and_default_draws_a_new_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import meshlimit.sim.world as world_module

    streams: list[tuple[str, ...]] = []
    derive = world_module.derive_rng

    def recording(seed: int, *names: str):  # noqa: ANN202 - a Random
        streams.append(names)
        return derive(seed, *names)

    monkeypatch.setattr(world_module, "derive_rng", recording)
    timeline = ["at 1s crash n2", "at 2s restart n2 same_seed", "at 3s restart n2",
                "at 4s restart n2 same_seed", "at 5s restart n2 new_seed"]  # fmt: skip
    world = World(_verbs(timeline), 1)
    world.run()
    lives = [names[2] for names in streams if names[:2] == ("node", "n2")]
    # Life 1 boots; 2 reuses life 1's stream; 3 (a kill-and-boot of a running node) draws
    # its own; 4 reuses life 3's; 5 draws its own again.
    assert lives == ["1", "1", "3", "3", "5"]
    assert world.nodes["n2"].generation == 5 and world.nodes["n2"].node is not None
    rows = [row for _, row in world.checkers.timeline_rows if "n2" in row]
    assert rows[:4] == ["at 1s crash n2", "at 2s restart n2 same_seed", "at 3s crash n2",
                        "at 3s restart n2"]  # fmt: skip
    assert not world.checkers.violations or all(
        v.kind == "uncounted_admission" for v in world.checkers.violations
    )  # a same-seed restart may be answered from the old life's cache: issue 13, bug 2


def test_a_node_joins_late_into_the_side_of_the_partition_that_names_it() -> None:
    timeline = ["at 1s partition [n1 n4] [n2 n3]", "at 2s join n4", "at 3s join n4"]
    world = World(_verbs(timeline, absent=("n4",)), 1)
    world.run(until_ns=NS_PER_S + NS_PER_S // 2)
    assert world.nodes["n4"].node is None and world.nodes["n4"].generation == 0
    world.run(until_ns=4 * NS_PER_S)
    n4 = world.nodes["n4"]
    assert n4.node is not None and n4.generation == 1  # the second join found it running
    assert world.network.reachable("n4", "n1", now_ns=world.now)
    assert not world.network.reachable("n4", "n2", now_ns=world.now)
    assert n4.node.membership.joined and "n1" in {m[0] for m in n4.node.members()}


def test_join_via_names_the_seeds_and_serve_before_join_opens_the_cluster_side_late() -> None:
    timeline = ["at 1s restart n3 via [n1] serve_before_join 2s"]
    world = World(_verbs(timeline), 1)
    sent: Counter[str] = Counter()
    send = world.network.send

    def counting(src: str, dst: str, payload: bytes, *, now_ns: int):  # noqa: ANN202
        sent[f"{src}@{now_ns // NS_PER_S}s"] += 1
        return send(src, dst, payload, now_ns=now_ns)

    world.network.send = counting  # type: ignore[method-assign]
    decided: Counter[str] = Counter()
    on_admissions = world.checkers.on_admissions

    def spy(node: str, log: list, now: int, *received: object) -> None:  # type: ignore[type-arg]
        decided[f"{node}@{now // NS_PER_S}s"] += len(log)
        on_admissions(node, log, now, *received)

    world.checkers.on_admissions = spy  # type: ignore[method-assign]
    world.run(until_ns=2 * NS_PER_S)
    n3 = world.nodes["n3"]
    assert n3.generation == 2 and n3.node is not None and not n3.runtime_up
    assert n3.timer_at == -1  # no runtime, no timer
    world.run(until_ns=3 * NS_PER_S + NS_PER_S // 2)
    assert n3.runtime_up
    assert decided["n3@1s"] > 0 and decided["n3@2s"] > 0  # it takes checks meanwhile ...
    assert sent["n3@1s"] == sent["n3@2s"] == 0 and sent["n3@3s"] > 0  # ... but sends nothing


def test_reset_is_an_operator_reset_at_a_live_node() -> None:
    world = World(_verbs(["at 2s reset c0"]), 1)
    changes: list[tuple[str, object]] = []
    on_rule_change = world.checkers.on_rule_change

    def record(key: str, value: object, now: int, *stamp: object) -> None:
        changes.append((key, value))
        on_rule_change(key, value, now, *stamp)

    world.checkers.on_rule_change = record  # type: ignore[method-assign]
    world.run(until_ns=5 * NS_PER_S)
    assert ("reset:c0", None) in changes
    assert [row for _, row in world.checkers.timeline_rows] == ["at 2s reset c0"]
    applied = [sim.name for sim in world.nodes.values() if sim.node and sim.node.stats["resets"]]
    assert applied == ["n1", "n2", "n3", "n4"]  # set at one node, spread to every one


# --- the progress guard ---------------------------------------------------------------------------


def rearm_at_now(node: Node) -> None:
    """Planted bug: n2's timer asks for a tick at the instant of its last tick, forever."""
    if node.node_id != "n2":
        return
    last = [0]
    tick = node.tick

    def stuck_tick(*, now_ns: int, wall_ns: int | None = None) -> None:
        last[0] = now_ns
        tick(now_ns=now_ns, wall_ns=wall_ns)

    node.tick = stuck_tick  # type: ignore[method-assign]
    node.next_deadline = lambda: last[0]  # type: ignore[method-assign]


def rearm_every_microsecond(node: Node) -> None:
    """Planted bug: n2 wants a tick every microsecond; time advances, events pile up."""
    if node.node_id != "n2":
        return
    last = [0]
    tick = node.tick

    def busy_tick(*, now_ns: int, wall_ns: int | None = None) -> None:
        last[0] = now_ns
        tick(now_ns=now_ns, wall_ns=wall_ns)

    node.tick = busy_tick  # type: ignore[method-assign]
    node.next_deadline = lambda: last[0] + 1_000  # type: ignore[method-assign]


def test_a_run_whose_time_stops_advancing_fails_at_once_naming_scenario_seed_and_events() -> None:
    scenario = _verbs([], duration="60s")
    with pytest.raises(RunStalled, match=r"progress: scenario=verbs seed=5 at \d+ ns"):
        World(scenario, 5, plant=rearm_at_now).run()
    result = run_scenario(scenario, 5, plant=rearm_at_now)
    assert not result.ok and result.violations[0].startswith("progress: scenario=verbs seed=5")
    assert f"{STALL_EVENTS} events within" in result.violations[0]
    assert "last events:" in result.violations[0] and " tick n2" in result.violations[0]
    assert result.events < 2 * STALL_EVENTS  # stopped at once, not at the end of 60 s
    assert result.simulated_s < 1


def test_a_run_over_its_event_budget_fails_at_once() -> None:
    scenario = _verbs([], duration="3s")
    scenario = replace(scenario, workload=replace(scenario.workload, rate=10.0))
    assert event_budget(scenario) == 20 * 3 * 4 * (10 + 50) + 10_000  # the stated formula
    result = run_scenario(scenario, 5, plant=rearm_every_microsecond)
    assert not result.ok and "over the event budget of 24400 events" in result.violations[0]
    assert result.events == event_budget(scenario) + 1
    assert result.simulated_s < 1  # 1 us a tick: the budget runs out in well under a second
    healthy = run_scenario(scenario, 5)
    assert healthy.ok and healthy.events < event_budget(scenario) / 10


def test_the_event_budget_follows_the_peak_offered_rate() -> None:
    scenario = _verbs(["at 1s rate 1000", "at 2s rate 10"])
    assert event_budget(scenario) == int(20 * 8 * 4 * (1000 + 50)) + 10_000


# --- the command line ---------------------------------------------------------------------------

_TINY = """
name = "tiny"
description = "three nodes for three seconds; bound: capacity"
seed = 4
duration = "3s"
nodes = 3
timeline = ["at 1s crash n3", "at 2s restart n3"]
[limits]
default = "5/s"
[workload]
clients = 50
rate = 200.0
"""


def test_cli_healthy_prints_the_seed_first_and_the_digest() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "meshlimit", "sim", "healthy", "--seed", "3"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "seed=3"
    assert any(re.fullmatch(r"digest=[0-9a-f]{32}", line) for line in lines)
    assert lines[-1] == "ok: no violations"


def test_cli_bad_scenario_exits_2_with_the_message(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    bad = tmp_path / "bad.toml"
    bad.write_text('duration = "5s"\nnodes = 3\ntimeline = ["at 1s crsh n1"]\n')
    assert main(["sim", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: timeline[0] (line 3): unknown verb 'crsh'; did you mean 'crash'?" in err
    assert main(["sim", "no_such_scenario"]) == 2
    assert "no shipped scenario of that name" in capsys.readouterr().err


def test_cli_list_names_every_shipped_scenario(capsys) -> None:  # noqa: ANN001
    assert main(["sim", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(re.search(rf"^{name}\s", out, re.M) for name in SHIPPED)


def test_cli_report_json(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(_TINY)
    out_file = tmp_path / "x.json"
    assert main(["sim", str(scenario), "--report", str(out_file)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "seed=4"
    data = json.loads(out_file.read_text())
    assert data["seed"] == 4 and data["ok"] is True and data["scenario"] == "tiny"
    assert re.search(rf"digest={data['digest']}", out)
    assert [p["title"] for p in data["phases"]] == [
        "0s-1s healthy", "1s-2s after crash n3", "2s-3s after restart n3",
    ]  # fmt: skip
    assert data["reproduce"] == f"meshlimit sim {scenario} --seed 4"


def test_cli_report_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(_TINY)
    picture = tmp_path / "x.png"
    assert main(["sim", str(scenario), "--report", str(picture)]) == 0
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "x.json").read_text())["seed"] == 4


def test_cli_violation_exits_1_with_the_reproduce_command(
    tmp_path: Path,
    capsys,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(_TINY.replace('duration = "3s"', 'duration = "8s"'))
    planted = partial(run_scenario, plant=uncounted_forwards)
    monkeypatch.setattr(sim_cli, "run_scenario", planted)
    assert main(["sim", str(scenario), "--seed", "9"]) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "seed=9"
    assert "over_admission: client=" in out
    assert f"reproduce: meshlimit sim {scenario} --seed 9" in out


def test_cli_fuzz_batch_and_one_run_agree(capsys) -> None:  # noqa: ANN001
    assert main(["sim", "--fuzz", "--runs", "2", "--seed", "11"]) == 0
    batch = capsys.readouterr().out
    assert batch.splitlines()[0] == "seed=11"
    one = fuzz_seed(11, 1)
    assert main(["sim", "--fuzz", "--one", str(one)]) == 0
    single = capsys.readouterr().out
    assert single.splitlines()[0] == f"seed={one}"
    digest = re.search(r"digest=([0-9a-f]{32})", single)
    assert digest and run_fuzz(2, 11)[1].digest == digest.group(1)
