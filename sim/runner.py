"""Running scenarios and fuzz batches, and summarising what happened.

Theory of operation. :func:`run_scenario` builds a :class:`~meshlimit.sim.world.World`,
attaches a :class:`_Recorder` that sees every observation the checkers see
(it wraps the checkers' observation methods on that one instance and passes
every call through unchanged, so the checkers' verdicts are not affected), runs
the world, and freezes the outcome into a :class:`RunResult`: the digest, the
violations, a summary, and one row per *phase*. Phases split the run at the
instants of its timeline actions ("0s-12s healthy", "12s-20s after crash n2"),
so a report shows what each fault did to the traffic.

:func:`run_fuzz` is swarm testing: run ``i`` of a batch with base seed ``S`` uses
the seed ``fuzz_seed(S, i) = S * 1_000_003 + i`` both to generate its scenario
and to drive its world, so ``meshlimit sim --fuzz --one SEED`` reproduces any
single run from the seed it printed. Fuzz scenarios are :data:`FUZZ_DURATION_NS`
long with the offered load capped at :data:`FUZZ_MAX_RATE` requests/s (see
:func:`fuzz_scenario`), which keeps a batch of 200 inside a minute of CI; long
ones (``long=True``, the slow lane) last 60-300 s at most :data:`LONG_FUZZ_MAX_RATE`.
A run the world's progress guard stopped reports the guard's message as its
first violation.
"""

from __future__ import annotations

import statistics
import traceback
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from meshlimit.cluster.node import Node
from meshlimit.core.decision import Decision

from .events import NS_PER_MS, NS_PER_S
from .fuzz import generate_fuzz_scenario, generate_long_fuzz_scenario
from .scenario import Action, Scenario
from .world import NodeCrashed, RunStalled, World

#: Where the shipped scenarios live (``meshlimit sim healthy`` finds ``healthy.toml`` here).
SCENARIO_DIR = Path(__file__).parent / "scenarios"
#: Length of one fuzz run. Why 6 s: the safety phase (70%) still holds several faults and
#: forward timeouts; 200 runs take well under a minute on a 2-core CI machine.
FUZZ_DURATION_NS = 6 * NS_PER_S
#: Most requests/s offered to a fuzz run (background plus hot client; ``rate``/``hot`` timeline
#: actions are scaled by the same factor). Why 300: run time is linear in events, and at 300/s
#: every tiny limit (5 per 250 ms) is still driven far over capacity by the Zipf head.
FUZZ_MAX_RATE = 200.0
#: Most requests/s offered to a long fuzz run (60-300 s, ``generate_long_fuzz_scenario``).
#: Why 100: the runs are 10-50 times longer; every limit of the fuzz mix is still driven
#: over capacity by the Zipf head, and a 300 s run stays near 10 wall seconds.
LONG_FUZZ_MAX_RATE = 100.0
#: The multiplier of the fuzz seed derivation ``base * FUZZ_SEED_STRIDE + i`` (a prime, so
#: batches with neighbouring base seeds share no runs for fewer than a million runs).
FUZZ_SEED_STRIDE = 1_000_003

#: ``progress(fraction_done, label)``; called often, so it must be cheap.
Progress = Callable[[float, str], None]
#: A wall clock in seconds, such as ``time.perf_counter``, given by the caller.
Stopwatch = Callable[[], float]


def _no_stopwatch() -> float:
    return 0.0


@dataclass(frozen=True, slots=True)
class Phase:
    """One stretch of a run between two timeline instants, and what the traffic did in it."""

    start_ns: int
    end_ns: int
    label: str
    answers: dict[str, int]
    """Answers clients got, by path (``owner``, ``forwarded``, ``local``, ``degraded``)."""
    admitted: int
    refused: int
    unavailable: int
    """Requests that reached a node that was down or paused."""
    peak_ratio: float
    """Highest admitted/capacity of any client window with an admission in this phase."""

    @property
    def title(self) -> str:
        """``0s-12s healthy``."""
        return f"{_seconds(self.start_ns)}-{_seconds(self.end_ns)} {self.label}"


@dataclass(frozen=True, slots=True)
class RunResult:
    """Everything a report needs from one run; plain data, JSON-friendly."""

    scenario: str
    seed: int
    digest: str
    violations: list[str]
    summary: dict[str, Any]
    phases: list[Phase]
    wall_s: float
    simulated_s: float
    events: int
    reproduce: str
    """The command that reproduces this run exactly."""
    series: dict[str, list[float]] = field(default_factory=dict)
    """Per simulated second: ``second``, ``admitted``, ``refused``, ``unavailable``,
    ``peak_ratio``."""
    faults: list[tuple[float, float, str]] = field(default_factory=list)
    """``(start_s, end_s, label)`` of each fault, for shading plots."""
    mode: str = "strict"

    @property
    def ok(self) -> bool:
        """True when no invariant was broken."""
        return not self.violations


# --- running ------------------------------------------------------------------------------


def run_scenario(
    scenario: Scenario,
    seed: int,
    *,
    progress: Progress | None = None,
    plant: Callable[[Node], None] | None = None,
    reproduce: str | None = None,
    stopwatch: Stopwatch | None = None,
) -> RunResult:
    """Run ``scenario`` with ``seed`` to its end; never raises for a failing run.

    An exception that escapes a node, or the simulator itself, ends the run early and
    becomes a violation, so a fuzz batch reports every failing seed instead of
    stopping at the first. ``plant`` receives every node the world creates (tests
    break nodes with it to prove the checkers notice). ``stopwatch`` (e.g.
    ``time.perf_counter``) measures wall time; without one the wall time is 0 --
    the runner, like all of ``sim/`` but its command line, reads no clock itself.
    """
    stopwatch = stopwatch or _no_stopwatch
    started = stopwatch()
    world = World(scenario, seed, plant=plant)
    recorder = _Recorder(world)
    duration = scenario.duration_ns
    tick = None
    if progress is not None:
        name = scenario.name

        def tick(at_ns: int) -> None:
            progress(at_ns / duration, name)

    crash: str | None = None
    try:
        world.run(progress=tick)
    except NodeCrashed:
        world.checkers.finish(world.now)  # adds the node's exception as a violation
    except RunStalled as error:
        crash = str(error)  # the progress guard: scenario, seed, instant, last events
        world.checkers.finish(world.now)
    except Exception as error:  # noqa: BLE001 - a simulator bug is a finding too
        crash = _describe(error, world.now)
        world.checkers.finish(world.now)
    wall_s = stopwatch() - started
    violations = [str(v) for v in world.checkers.violations]
    if crash is not None:
        violations.insert(0, crash)
    return RunResult(
        scenario=scenario.name,
        seed=seed,
        digest=world.trace_digest(),
        violations=violations,
        summary=_summary(world, recorder, wall_s),
        phases=recorder.phases(),
        wall_s=wall_s,
        simulated_s=world.now / NS_PER_S,
        events=world.events_run,
        reproduce=reproduce or reproduce_command(scenario, seed),
        series=recorder.series(),
        faults=[(s / NS_PER_S, e / NS_PER_S, label) for s, e, label in fault_spans(scenario)],
        mode=scenario.mode,
    )


def fuzz_seed(base_seed: int, index: int) -> int:
    """The seed of run ``index`` of the fuzz batch with ``base_seed``."""
    return base_seed * FUZZ_SEED_STRIDE + index


def fuzz_scenario(
    seed: int, *, duration_ns: int = FUZZ_DURATION_NS, long: bool = False
) -> Scenario:
    """The swarm scenario of one fuzz run: ``generate_fuzz_scenario`` (or, ``long``,
    ``generate_long_fuzz_scenario``, whose length the seed draws) with the load capped.

    Every offered rate (workload, hot client, ``rate``/``hot`` actions) is scaled by one
    factor so the total starts at most :data:`FUZZ_MAX_RATE` (:data:`LONG_FUZZ_MAX_RATE`);
    relative load changes keep their shape. The result is a plain scenario (``to_toml``
    can keep it as a file).
    """
    if long:
        scenario, cap = generate_long_fuzz_scenario(seed), LONG_FUZZ_MAX_RATE
    else:
        scenario, cap = generate_fuzz_scenario(seed, duration_ns=duration_ns), FUZZ_MAX_RATE
    spec = scenario.workload
    factor = min(1.0, cap / max(1.0, spec.rate + spec.hot_rate))
    if factor == 1.0:
        return scenario
    timeline = tuple(_scale_action(action, factor) for action in scenario.timeline)
    workload = replace(spec, rate=spec.rate * factor, hot_rate=spec.hot_rate * factor)
    description = f"{scenario.description}; load scaled by {factor:.4g}"
    return replace(scenario, workload=workload, timeline=timeline, description=description)


def _scale_action(action: Action, factor: float) -> Action:
    if action.verb == "rate":
        return replace(action, args=(action.args[0] * factor,))
    if action.verb == "hot":
        return replace(action, args=(action.args[0], action.args[1] * factor))
    return action


def run_fuzz(
    runs: int,
    seed: int,
    *,
    progress: Progress | None = None,
    duration_ns: int = FUZZ_DURATION_NS,
    stopwatch: Stopwatch | None = None,
    long: bool = False,
    on_result: Callable[[RunResult], None] | None = None,
) -> list[RunResult]:
    """Run ``runs`` swarm scenarios derived from the base ``seed`` (see :func:`fuzz_seed`);
    ``long``: the long schedules of ``generate_long_fuzz_scenario``. ``on_result`` sees each
    run's result as soon as it is done (a progress display counts the failing ones)."""
    results = []
    for index in range(runs):
        run_seed = fuzz_seed(seed, index)
        scenario = fuzz_scenario(run_seed, duration_ns=duration_ns, long=long)
        command = fuzz_command(run_seed, long=long)
        label = f"fuzz {index + 1}/{runs} seed={run_seed}"
        within = None if progress is None else _within_batch(progress, index, runs, label)
        results.append(
            run_scenario(
                scenario, run_seed, progress=within, reproduce=command, stopwatch=stopwatch
            )
        )
        if on_result is not None:
            on_result(results[-1])
        if progress is not None:
            progress((index + 1) / runs, label)
    return results


def _within_batch(progress: Progress, index: int, runs: int, label: str) -> Progress:
    """Progress of run ``index`` of a batch as a fraction of the whole batch, so the bar
    moves during long runs too."""

    def report(fraction: float, _name: str) -> None:
        progress((index + fraction) / runs, label)

    return report


def fuzz_command(seed: int, *, long: bool = False) -> str:
    """The command that reruns exactly the fuzz run with ``seed``."""
    return f"meshlimit sim --fuzz {'--long ' if long else ''}--one {seed}"


def reproduce_command(scenario: Scenario, seed: int) -> str:
    """``meshlimit sim NAME_OR_PATH --seed N`` (shipped scenarios by name)."""
    if scenario.source.startswith(("<fuzz", "<long-fuzz")):
        return fuzz_command(seed, long=scenario.source.startswith("<long-fuzz"))
    path = Path(scenario.source)
    if path.parent == SCENARIO_DIR and path.suffix == ".toml":
        return f"meshlimit sim {path.stem} --seed {seed}"
    return f"meshlimit sim {scenario.source} --seed {seed}"


def _describe(error: Exception, now_ns: int) -> str:
    frame = traceback.extract_tb(error.__traceback__)[-1]
    where = f"{Path(frame.filename).name}:{frame.lineno}"
    return f"simulator: at {now_ns} ns {type(error).__name__} in {where}: {error}".rstrip(": ")


# --- observing ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Window:
    """One client window as the decider saw it."""

    first_ns: int
    last_ns: int = 0
    admitted: int = 0
    refused: int = 0
    capacity: int = 0

    def __post_init__(self) -> None:
        self.last_ns = self.first_ns


class _Recorder:
    """Sees what the checkers see, tallied by phase and by simulated second.

    It replaces ``on_decision``, ``on_admissions`` and ``on_unavailable`` on the one
    ``Checkers`` instance with wrappers that record and then call the original.
    """

    def __init__(self, world: World) -> None:
        scenario = world.scenario
        self.duration_ns = scenario.duration_ns
        self.starts, self.labels = _phase_bounds(scenario.timeline)
        count = len(self.starts)
        self.answers: list[Counter[str]] = [Counter() for _ in range(count)]
        self.admitted = [0] * count
        self.refused = [0] * count
        self.unavailable = [0] * count
        self.windows: dict[tuple[str, str, int], _Window] = {}  # (client, series, index)
        self.admitted_s: Counter[int] = Counter()
        self.refused_s: Counter[int] = Counter()
        self.unavailable_s: Counter[int] = Counter()
        self.last_degraded_ns: int | None = None
        checkers = world.checkers
        on_decision, on_admissions = checkers.on_decision, checkers.on_admissions
        on_unavailable = checkers.on_unavailable

        def record_decision(
            node: str, client: str, decision: Decision, started: int, now: int, **kw: Any
        ) -> None:
            self._decision(decision.allowed, decision.path, now)
            on_decision(node, client, decision, started, now, **kw)

        def admissions(node: str, log: list[Any], now: int, *rest: Any) -> None:
            self._admissions(log, now)
            on_admissions(node, log, now, *rest)

        def unavailable(node: str, client: str, now: int) -> None:
            self.unavailable[self._phase(now)] += 1
            self.unavailable_s[now // NS_PER_S] += 1
            on_unavailable(node, client, now)

        checkers.on_decision = record_decision  # type: ignore[method-assign]
        checkers.on_admissions = admissions  # type: ignore[method-assign,assignment]
        checkers.on_unavailable = unavailable  # type: ignore[method-assign]

    def _phase(self, now: int) -> int:
        return bisect_right(self.starts, now) - 1

    def _decision(self, allowed: bool, path: str, now: int) -> None:
        phase = self._phase(now)
        if path == "degraded":
            self.last_degraded_ns = now
        self.answers[phase][path] += 1
        if allowed:
            self.admitted[phase] += 1
            self.admitted_s[now // NS_PER_S] += 1
        else:
            self.refused[phase] += 1
            self.refused_s[now // NS_PER_S] += 1

    def _admissions(self, log: list[Any], now: int) -> None:
        # The checkers' tally (decider's wall window), plus refusals and when it happened.
        for wall, client, rule, cost, allowed, _path in log:
            if not cost:
                continue
            key = (client, rule.series, wall // rule.window_ns)
            tally = self.windows.get(key)
            if tally is None:
                tally = self.windows[key] = _Window(first_ns=now)
            tally.capacity = max(tally.capacity, rule.capacity)
            if allowed:
                tally.admitted += cost
                tally.last_ns = now
            else:
                tally.refused += cost

    def phases(self) -> list[Phase]:
        """The phase rows, with each phase's peak window ratio."""
        ends = [*self.starts[1:], self.duration_ns]
        peaks = [0.0] * len(self.starts)
        for window in self.windows.values():
            if not window.admitted:
                continue
            ratio = window.admitted / window.capacity
            for phase in range(self._phase(window.first_ns), self._phase(window.last_ns) + 1):
                peaks[phase] = max(peaks[phase], ratio)
        return [
            Phase(start, end, label, dict(sorted(answers.items())), admitted, refused,
                  unavailable, round(peak, 4))
            for start, end, label, answers, admitted, refused, unavailable, peak in zip(
                self.starts, ends, self.labels, self.answers, self.admitted, self.refused,
                self.unavailable, peaks, strict=True,
            )
        ]  # fmt: skip

    def saturation(self) -> dict[str, Any]:
        """Under-admission, measured: how full were the windows in which a client was refused?

        A refusal says "this window is full"; in a healthy strict run the windows of a
        client driven over its limit fill to about its capacity (fill ~1.0). A node
        that over-counts refuses early, and the fill drops. The checkers give no
        verdict on this; it is reported (``saturated_fill``) and tests bound it.
        """
        fills = sorted(
            w.admitted / w.capacity for w in self.windows.values() if w.refused and w.capacity
        )
        if not fills:
            return {"windows": 0, "p10": None, "median": None}
        return {
            "windows": len(fills),
            "p10": round(fills[len(fills) // 10], 4),
            "median": round(statistics.median(fills), 4),
        }

    def series(self) -> dict[str, list[float]]:
        """Per second: admitted, refused, unavailable, and the peak ratio of active windows."""
        seconds = range(max(1, -(-self.duration_ns // NS_PER_S)))
        peak: dict[int, float] = {}  # a second without an active window reads 0
        for window in self.windows.values():
            if window.admitted:
                ratio = window.admitted / window.capacity
                for second in range(window.first_ns // NS_PER_S, window.last_ns // NS_PER_S + 1):
                    peak[second] = max(peak.get(second, 0), ratio)
        return {
            "second": [float(s) for s in seconds],
            "admitted": [float(self.admitted_s[s]) for s in seconds],
            "refused": [float(self.refused_s[s]) for s in seconds],
            "unavailable": [float(self.unavailable_s[s]) for s in seconds],
            "peak_ratio": [round(peak.get(s, 0), 4) for s in seconds],
        }


def _phase_bounds(timeline: tuple[Action, ...]) -> tuple[list[int], list[str]]:
    """Phase start instants and labels: one phase per distinct action instant."""
    starts, labels = [0], ["healthy"]
    for action in timeline:
        text = str(action).split(" ", 2)[2]  # drop "at 12s"
        if action.at_ns != starts[-1]:
            starts.append(action.at_ns)
            labels.append(f"after {text}")
        elif labels[-1] == "healthy":  # an action at 0 s: the first phase is not healthy
            labels[-1] = f"after {text}"
        else:
            labels[-1] += f"; {text}"
    return starts, labels


# --- summarising ----------------------------------------------------------------------------


def _summary(world: World, recorder: _Recorder, wall_s: float) -> dict[str, Any]:
    checkers = world.checkers
    answers = checkers.allowed + checkers.refused
    detection = sorted(checkers.detection_ns)
    latencies = sorted(checkers.forward_latencies_ns)
    simulated_s = world.now / NS_PER_S
    scenario = world.scenario
    return {
        "scenario": scenario.name,
        "seed": world.seed,
        "mode": scenario.mode,
        "nodes": scenario.nodes,
        "duration_s": scenario.duration_ns / NS_PER_S,
        "answers_by_path": dict(sorted(answers.items())),
        "decisions_by_path": dict(sorted(checkers.decisions.items())),
        "admitted": sum(checkers.allowed.values()),
        "refused": sum(checkers.refused.values()),
        "unavailable": checkers.unavailable,
        "windows_checked": checkers.windows_checked(),
        **checkers.summary(),  # windows_by_bound, windows_at_most_capacity
        "peak_ratio": round(checkers.peak_ratio(), 4),
        "saturated_fill": recorder.saturation(),
        "detection_s": _spread(detection, NS_PER_S),
        "recovery": _recovery(world, recorder),
        "false_suspicions": checkers.false_suspicions,
        "under_admissions": checkers.under_admissions,
        "under_admissions_healthy": checkers.under_admissions_healthy,
        "refusals_judged": checkers.refusals_judged,
        "forward_latency_ms": {
            "count": len(latencies),
            "p50": _percentile(latencies, 0.50, NS_PER_MS),
            "p99": _percentile(latencies, 0.99, NS_PER_MS),
        },
        "rule_changes": checkers.rule_changes,
        "network": world.network.stats.as_dict(),
        "events": world.events_run,
        "wall_s": round(wall_s, 3),
        "sim_s_per_wall_s": round(simulated_s / wall_s, 2) if wall_s > 0 else None,
    }


def _recovery(world: World, recorder: _Recorder) -> dict[str, Any]:
    """Liveness, measured: how long after the last heal (or restart, join, resume) did
    clients still get degraded answers? ``None`` when the run had no such action."""
    healed = world.checkers.last_heal_at if world.scenario.timeline else 0
    last = recorder.last_degraded_ns
    after = None
    if healed:
        after = 0.0 if last is None or last < healed else round((last - healed) / NS_PER_S, 3)
    return {
        "last_heal_s": healed / NS_PER_S if healed else None,
        "last_degraded_s": None if last is None else round(last / NS_PER_S, 3),
        "degraded_for_s_after_heal": after,
    }


def _spread(values_ns: list[int], unit_ns: int) -> dict[str, Any]:
    if not values_ns:
        return {"count": 0, "min": None, "median": None, "max": None}
    return {
        "count": len(values_ns),
        "min": round(values_ns[0] / unit_ns, 3),
        "median": round(statistics.median(values_ns) / unit_ns, 3),
        "max": round(values_ns[-1] / unit_ns, 3),
    }


def _percentile(sorted_ns: list[int], q: float, unit_ns: int) -> float | None:
    """Nearest-rank percentile of sorted values, in ``unit_ns`` units."""
    if not sorted_ns:
        return None
    rank = min(len(sorted_ns) - 1, max(0, -(-int(q * len(sorted_ns) * 1000) // 1000) - 1))
    return round(sorted_ns[rank] / unit_ns, 3)


def _seconds(ns: int) -> str:
    text = f"{ns / NS_PER_S:.3f}".rstrip("0").rstrip(".")
    return f"{text}s"


# --- faults, for plots ----------------------------------------------------------------------

_UNTIL_HEAL = {"partition", "partition_oneway", "isolate"}
_DOWN = {"crash": ("restart",), "leave": ("join",), "pause": ("resume",)}
_SETTINGS = {"loss", "duplicate", "misdeliver", "reorder", "latency", "skew", "drift"}


def fault_spans(scenario: Scenario) -> list[tuple[int, int, str]]:
    """``(start_ns, end_ns, label)`` of every fault in the timeline.

    A partition, one-way partition or isolation lasts until the next ``heal``; a flap
    until its end or a heal; a crash, leave or pause until that node's restart, join or
    resume (a pause also ends by itself); a changed setting (loss, duplication,
    reordering, latency, a node's skew or drift) until the same setting is changed
    again, and only while it differs from the scenario's starting value; a clock jump
    lasts to the end (the clock stays stepped). Unended faults run to the end.
    """
    end = scenario.duration_ns
    timeline = scenario.timeline
    spans = []
    for index, action in enumerate(timeline):
        later = timeline[index + 1 :]
        verb, args, at = action.verb, action.args, action.at_ns
        stop = end
        if verb in _UNTIL_HEAL or verb == "flap":
            stop = next((a.at_ns for a in later if a.verb == "heal"), end)
            if verb == "flap":
                stop = min(stop, args[3])
        elif verb in _DOWN:
            ends = _DOWN[verb]
            stop = next((a.at_ns for a in later if a.verb in ends and a.args[0] == args[0]), end)
            if verb == "pause":
                stop = min(stop, at + args[1])
        elif verb in _SETTINGS:
            if _is_baseline(scenario, action):
                continue
            same = [a for a in later if a.verb == verb]
            if verb in ("skew", "drift"):
                same = [a for a in same if a.args[0] == args[0]]
            stop = same[0].at_ns if same else end
        elif verb != "jump":
            continue  # heal, restart, rules, traffic: not faults
        spans.append((at, min(max(stop, at), end), str(action).split(" ", 2)[2]))
    return spans


def _is_baseline(scenario: Scenario, action: Action) -> bool:
    net, verb, args = scenario.network, action.verb, action.args
    if verb == "misdeliver":
        return args[0] <= 0
    if verb in ("loss", "duplicate", "reorder"):
        return args[0] <= getattr(net, verb)
    if verb == "latency":
        return args[0] == net.latency_ns and args[1] in (None, net.jitter_ns)
    return args[1] == 0  # skew 0 s or drift 0 ppm
