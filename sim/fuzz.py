"""Swarm fuzzing: a random scenario derived from a seed alone.

The seed picks which kinds of fault are on (each with probability 1/2, as in
swarm testing), then a random schedule of them in a safety phase (the first
70% of the run), then heals everything for a liveness phase.

Two generators. ``generate_fuzz_scenario`` (the smoke fuzz of the default test
run) schedules point faults in a few simulated seconds. ``generate_long_fuzz_scenario``
(the slow lane) schedules *episodes* in 60-300 simulated seconds: each fault has a
start and an end, and its length is drawn to be short (under failure detection),
medium (detected, not reaped) or long (:func:`outlast_ns`: past detection plus
reaping), so that what happens after a member is reaped -- rejoining, restarting
with the same identity, joining inside a minority -- is fuzzed too. Episodes that
would overlap on one resource (the network's topology, a node, a link setting)
are dropped, so every end undoes its own start.
"""

from __future__ import annotations

from random import Random
from typing import Any

from meshlimit.cluster.membership import MembershipConfig, suspicion_timeout_ns
from meshlimit.core.rules import ALGORITHMS

from .events import NS_PER_MS, NS_PER_S, NS_PER_US, derive_rng
from .fuzz_extras import long_extras, merged, short_extras
from .network import JITTER_DISTRIBUTIONS
from .scenario import MODES, Action, LimitsSpec, NetworkSpec, Scenario, WorkloadSpec

# --- swarm fuzzing -----------------------------------------------------------------------

#: Fault kinds a fuzz seed switches on or off, each with probability 1/2. Why swarm
#: testing: a run with only a few kinds of faults drives each of them much deeper
#: than a run where every fault is always on (Groce et al., "Swarm Testing", 2012).
FUZZ_FAULTS = ("partition", "partition_oneway", "isolate", "flap", "crash", "pause", "leave",
               "skew", "drift", "jump", "loss", "duplicate", "reorder", "latency", "rules",
               "traffic")  # fmt: skip
#: Faults happen in the first 70% of a fuzz run; the rest is the liveness phase.
SAFETY_FRACTION = 0.7


def generate_fuzz_scenario(seed: int, *, duration_ns: int = 60 * NS_PER_S) -> Scenario:
    """A random scenario derived from ``seed`` alone: safety phase with faults, then liveness.

    Every random choice comes from ``derive_rng(seed, "fuzz-scenario")``, so the same
    seed always gives an equal scenario. At the start of the liveness phase the
    network is healed and restored, and every crashed, paused or departed node
    comes back, so a checker may demand convergence by the end.
    """
    assert duration_ns >= NS_PER_S, "a fuzz run needs at least a second"
    rng = derive_rng(seed, "fuzz-scenario")
    nodes = rng.randint(3, 7)
    enabled = tuple(kind for kind in FUZZ_FAULTS if rng.random() < 0.5)
    limits, workload, network = _fuzz_setup(rng)
    safety_end_ns = int(duration_ns * SAFETY_FRACTION) // NS_PER_MS * NS_PER_MS
    swarm = _Swarm(rng, nodes, limits, workload, network)
    warmup_ns = max(NS_PER_MS, duration_ns // 20 // NS_PER_MS * NS_PER_MS)
    if enabled and safety_end_ns > warmup_ns:
        times = sorted(
            rng.randrange(warmup_ns, safety_end_ns, NS_PER_MS) for _ in range(rng.randint(2, 30))
        )
        for at_ns in times:
            getattr(swarm, rng.choice(enabled))(at_ns, safety_end_ns)
    swarm.liveness(safety_end_ns)
    timeline = merged(tuple(swarm.actions), short_extras(seed, workload, warmup_ns, safety_end_ns))
    return Scenario(
        name=f"fuzz-{seed}", description=f"swarm faults: {', '.join(enabled) or 'none'}",
        seed=seed, duration_ns=duration_ns, nodes=nodes, mode=rng.choice(MODES), limits=limits,
        workload=workload, network=network, timeline=timeline, source=f"<fuzz {seed}>",
    )  # fmt: skip


def _fuzz_setup(rng: Random) -> tuple[LimitsSpec, WorkloadSpec, NetworkSpec]:
    """The limits, the workload and the network of a fuzz scenario."""
    tiers = tuple(
        (name, _fuzz_rule(rng)) for name in ("gold", "silver", "bronze")[: rng.randint(0, 3)]
    )
    clients = tuple(
        (f"c{i}", rng.choice(tiers)[0] if tiers and rng.random() < 0.5 else _fuzz_rule(rng))
        for i in range(rng.randint(0, 5))
    )
    limits = LimitsSpec(_fuzz_rule(rng), tiers, clients)
    hot = rng.random() < 0.5
    workload = WorkloadSpec(
        clients=rng.choice((10, 100, 1000, 5000)), rate=float(rng.choice((200, 500, 1000, 2000))),
        zipf=rng.choice((0.0, 0.8, 1.1, 1.4)),
        hot_client=rng.choice(("c0", "hot-1")) if hot else None,
        hot_rate=float(rng.choice((50, 200, 1000))) if hot else 0.0,
    )  # fmt: skip
    network = NetworkSpec(
        latency_ns=rng.choice((100 * NS_PER_US, NS_PER_MS, 5 * NS_PER_MS)),
        jitter_ns=rng.choice((0, 100 * NS_PER_US, NS_PER_MS)),
        jitter_dist=rng.choice(JITTER_DISTRIBUTIONS),
    )
    return limits, workload, network


def _fuzz_rule(rng: Random) -> str:
    text = f"{rng.choice((5, 20, 100, 500, 2000))}/{rng.choice(('250ms', '1s', '10s', '1m'))}"
    if rng.random() < 0.3:
        text += f" burst {rng.choice((1, 10, 100))}"
    if rng.random() < 0.2:
        text += f" algo {rng.choice(ALGORITHMS)}"
    return text


class _Swarm:
    """Builds a fault schedule in time order, tracking which nodes are down so the
    schedule stays meaningful: at least one node is always up, only down nodes come back."""

    def __init__(self, rng: Random, nodes: int, limits: LimitsSpec, workload: WorkloadSpec,
                 network: NetworkSpec) -> None:  # fmt: skip
        self.rng = rng
        self.names = [f"n{i}" for i in range(1, nodes + 1)]
        self.limits, self.workload, self.network = limits, workload, network
        self.crashed: list[str] = []
        self.left: list[str] = []
        self.paused_until: dict[str, int] = {}
        self.touched: set[str] = set()
        self.actions: list[Action] = []

    def add(self, at_ns: int, verb: str, *args: Any) -> None:
        self.actions.append(Action(at_ns, verb, args))

    def up(self, at_ns: int) -> list[str]:
        down = set(self.crashed) | set(self.left)
        return [n for n in self.names if n not in down and self.paused_until.get(n, 0) <= at_ns]

    def split(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        shuffled = self.rng.sample(self.names, len(self.names))
        cut = self.rng.randint(1, len(shuffled) - 1)
        return _group(shuffled[:cut]), _group(shuffled[cut:])

    def partition(self, at_ns: int, end_ns: int) -> None:
        if self.rng.random() < 0.3:
            self.add(at_ns, "heal")
        else:
            self.add(at_ns, "partition", *self.split())

    def partition_oneway(self, at_ns: int, end_ns: int) -> None:
        src, dst = self.split()
        self.add(at_ns, "partition_oneway", src, dst[: self.rng.randint(1, len(dst))])

    def isolate(self, at_ns: int, end_ns: int) -> None:
        if self.rng.random() < 0.3:
            self.add(at_ns, "heal")
        else:
            self.add(at_ns, "isolate", self.rng.choice(self.names))

    def flap(self, at_ns: int, end_ns: int) -> None:
        a, b = self.rng.sample(self.names, 2)
        period_ns = self.rng.randrange(10 * NS_PER_MS, NS_PER_S, NS_PER_MS)
        until_ns = min(end_ns, at_ns + period_ns * self.rng.randint(2, 20))
        self.add(at_ns, "flap", a, b, period_ns, until_ns)

    def _down_or_up(self, at_ns: int, down: list[str], verb_down: str, verb_up: str) -> None:
        up = self.up(at_ns)
        if down and (self.rng.random() < 0.5 or len(up) < 2):
            node = down.pop(self.rng.randrange(len(down)))
            self.add(at_ns, verb_up, node)
        elif len(up) >= 2:
            node = self.rng.choice(up)
            down.append(node)
            self.add(at_ns, verb_down, node)

    def crash(self, at_ns: int, end_ns: int) -> None:
        self._down_or_up(at_ns, self.crashed, "crash", "restart")

    def leave(self, at_ns: int, end_ns: int) -> None:
        self._down_or_up(at_ns, self.left, "leave", "join")

    def pause(self, at_ns: int, end_ns: int) -> None:
        paused = sorted(n for n, until in self.paused_until.items() if until > at_ns)
        up = self.up(at_ns)
        if paused and (self.rng.random() < 0.3 or len(up) < 2):
            node = self.rng.choice(paused)
            del self.paused_until[node]
            self.add(at_ns, "resume", node)
        elif len(up) >= 2:
            node = self.rng.choice(up)
            for_ns = self.rng.randrange(50 * NS_PER_MS, 5 * NS_PER_S, NS_PER_MS)
            self.paused_until[node] = at_ns + for_ns
            self.add(at_ns, "pause", node, for_ns)

    def skew(self, at_ns: int, end_ns: int) -> None:
        skew_ns = self.rng.choice((-1, 1)) * self.rng.randrange(0, 2 * NS_PER_S, NS_PER_MS)
        self.add(at_ns, "skew", self.rng.choice(self.names), skew_ns)

    def drift(self, at_ns: int, end_ns: int) -> None:
        ppm = float(self.rng.choice((-500, -100, -10, 0, 10, 100, 500)))
        self.add(at_ns, "drift", self.rng.choice(self.names), ppm)

    def jump(self, at_ns: int, end_ns: int) -> None:
        delta_ns = self.rng.choice((-1, 1)) * self.rng.randrange(NS_PER_MS, 5 * NS_PER_S, NS_PER_MS)
        self.add(at_ns, "jump", self.rng.choice(self.names), delta_ns)

    def loss(self, at_ns: int, end_ns: int) -> None:
        self.touched.add("loss")
        self.add(at_ns, "loss", self.rng.choice((0.0, 0.01, 0.05, 0.2, 0.5)))

    def duplicate(self, at_ns: int, end_ns: int) -> None:
        self.touched.add("duplicate")
        self.add(at_ns, "duplicate", self.rng.choice((0.0, 0.01, 0.1, 0.3)))

    def reorder(self, at_ns: int, end_ns: int) -> None:
        self.touched.add("reorder")
        size_ns = self.rng.randrange(NS_PER_MS, 50 * NS_PER_MS, NS_PER_MS)
        self.add(at_ns, "reorder", self.rng.choice((0.01, 0.1, 0.3)), size_ns)

    def latency(self, at_ns: int, end_ns: int) -> None:
        self.touched.add("latency")
        latency_ns = self.rng.choice((100 * NS_PER_US, NS_PER_MS, 10 * NS_PER_MS, 50 * NS_PER_MS))
        self.add(at_ns, "latency", latency_ns, self.rng.choice((None, NS_PER_MS, 5 * NS_PER_MS)))

    def rules(self, at_ns: int, end_ns: int) -> None:
        client = self.workload.hot_client if self.workload.hot_client else "c0"
        if self.rng.random() < 0.7:
            client = f"c{self.rng.randrange(min(self.workload.clients, 20))}"
        if self.rng.random() < 0.25:
            self.add(at_ns, "remove_rule", client)
        else:
            tiers = [name for name, _ in self.limits.tiers]
            rule = (
                self.rng.choice(tiers)
                if tiers and self.rng.random() < 0.4
                else _fuzz_rule(self.rng)
            )
            self.add(at_ns, "set_rule", client, rule)

    def traffic(self, at_ns: int, end_ns: int) -> None:
        if self.rng.random() < 0.5:
            factor = self.rng.choice((0.25, 0.5, 2.0, 4.0))
            self.add(at_ns, "rate", self.workload.rate * factor)
        else:
            client = self.workload.hot_client or "c0"
            self.add(at_ns, "hot", client, float(self.rng.choice((0, 50, 500))))

    def liveness(self, at_ns: int) -> None:
        """Heal the network, restore its settings, and bring every node back."""
        net = self.network
        self.add(at_ns, "heal")
        restore: dict[str, tuple[float | int | None, ...]] = {
            "loss": (net.loss,),
            "duplicate": (net.duplicate,),
            "reorder": (net.reorder, net.reorder_ns),
            "latency": (net.latency_ns, net.jitter_ns),
        }  # the verb that set each network fault, and the scenario's own values for it
        for kind in sorted(self.touched):
            self.add(at_ns, kind, *restore[kind])
        for node in sorted(self.crashed):
            self.add(at_ns, "restart", node)
        for node in sorted(self.left):
            self.add(at_ns, "join", node)
        for node in sorted(n for n, until in self.paused_until.items() if until > at_ns):
            self.add(at_ns, "resume", node)


def _group(nodes: list[str]) -> tuple[str, ...]:
    return tuple(sorted(nodes, key=lambda name: int(name[1:])))


# --- long schedules ----------------------------------------------------------------------

#: Fault kinds a long fuzz seed switches on or off, each with probability 1/2.
LONG_FUZZ_FAULTS = ("partition", "minority_restart", "partition_oneway", "isolate", "flap",
                    "crash", "restart", "pause", "leave", "late_join", "skew", "drift", "jump",
                    "loss", "duplicate", "reorder", "latency", "rules", "resets",
                    "traffic")  # fmt: skip
#: A long fuzz run lasts this many whole seconds, drawn per seed. Why 60-300 s: room for
#: several faults that outlast detection and reaping (about 50 s, :func:`outlast_ns`).
LONG_FUZZ_MIN_S, LONG_FUZZ_MAX_S = 60, 300
#: Faults start after this warm-up (the cluster forms and spreads its rules first).
LONG_WARMUP_NS = 2 * NS_PER_S
_NEVER = 2**63 - 1


def outlast_ns(nodes: int, config: MembershipConfig | None = None) -> int:
    """How long a fault must last to outlive failure detection and then the reaping of
    the dead in a cluster of ``nodes`` (the ``sim`` preset's timings, as the world runs).

    Detection, at worst: the member comes up in the probe order within ``nodes``
    probe intervals, the probe times out, and an unconfirmed suspicion waits the
    longest Lifeguard timeout, ``suspicion_max_mult`` base timeouts. The dead member
    is reaped ``dead_reap_ns`` later. One more probe interval of margin: 48.5 s for
    five nodes.
    """
    config = config or MembershipConfig.sim()
    detection_ns = (
        nodes * config.probe_interval_ns
        + config.probe_timeout_ns
        + config.suspicion_max_mult * suspicion_timeout_ns(config, nodes)
    )
    return detection_ns + config.dead_reap_ns + config.probe_interval_ns


def generate_long_fuzz_scenario(seed: int) -> Scenario:
    """A long random scenario derived from ``seed`` alone (see the module docstring).

    Every random choice comes from ``derive_rng(seed, "long-fuzz-scenario")``. The
    safety phase is the first 70% of the run; every episode ends inside it, and at its
    end the network is healed and a node that never joined joins, so the liveness
    phase runs on a whole cluster.
    """
    rng = derive_rng(seed, "long-fuzz-scenario")
    duration_ns = rng.randint(LONG_FUZZ_MIN_S, LONG_FUZZ_MAX_S) * NS_PER_S
    nodes = rng.randint(3, 7)
    enabled = tuple(kind for kind in LONG_FUZZ_FAULTS if rng.random() < 0.5)
    limits, workload, network = _fuzz_setup(rng)
    absent = (f"n{nodes}",) if "late_join" in enabled else ()
    safety_end_ns = int(duration_ns * SAFETY_FRACTION) // NS_PER_MS * NS_PER_MS
    episodes = _Episodes(rng, nodes, absent, workload, network, safety_end_ns)
    if enabled:
        count = rng.randint(3, 6 + duration_ns // (15 * NS_PER_S))
        starts = sorted(
            rng.randrange(LONG_WARMUP_NS, safety_end_ns, NS_PER_MS) for _ in range(count)
        )
        for at_ns in starts:
            getattr(episodes, rng.choice(enabled))(at_ns)
    episodes.liveness()
    extras = long_extras(seed, LONG_WARMUP_NS, safety_end_ns)
    timeline = merged(tuple(sorted(episodes.actions, key=lambda a: a.at_ns)), extras)  # stable
    return Scenario(
        name=f"long-fuzz-{seed}", description=f"long swarm faults: {', '.join(enabled) or 'none'}",
        seed=seed, duration_ns=duration_ns, nodes=nodes, mode=rng.choice(MODES), limits=limits,
        workload=workload, network=network, absent=absent, timeline=timeline,
        source=f"<long-fuzz {seed}>",
    )  # fmt: skip


class _Episodes:
    """Builds a long fault schedule from episodes, each a start action and an end action
    that undoes it, in order of their starts.

    Resources keep it meaningful: the network's topology (one partition, one-way cut,
    isolation or flap at a time, since ``heal`` ends them all), each node (one of
    crash, pause, leave, restart at a time), each node's clock, each link setting. An
    episode whose resource is busy at its start is dropped. At least one node is up at
    every instant: nodes go down only at episode starts, and only while two are up.
    """

    def __init__(self, rng: Random, nodes: int, absent: tuple[str, ...], workload: WorkloadSpec,
                 network: NetworkSpec, end_ns: int) -> None:  # fmt: skip
        self.rng = rng
        self.names = [f"n{i}" for i in range(1, nodes + 1)]
        #: Nodes not booted at 0 s -> when they join (``_NEVER`` until it is scheduled).
        self.joins_at = dict.fromkeys(absent, _NEVER)
        self.workload, self.network = workload, network
        self.end_ns = end_ns
        self.outlast_ns = outlast_ns(nodes)
        self.busy: dict[str, int] = {}  # resource -> busy until (ns)
        self.down: dict[str, int] = {}  # node -> down until (crashed, paused, left)
        self.actions: list[Action] = []

    # --- bookkeeping ----------------------------------------------------------------------

    def add(self, at_ns: int, verb: str, *args: Any) -> None:
        self.actions.append(Action(at_ns, verb, args))

    def take(self, resource: str, at_ns: int, until_ns: int) -> bool:
        """Claim ``resource`` from ``at_ns`` to ``until_ns``; False if it is busy then."""
        if self.busy.get(resource, 0) > at_ns or until_ns <= at_ns:
            return False
        self.busy[resource] = until_ns
        return True

    def length_ns(self, at_ns: int) -> int:
        """A fault's length: short (under detection), medium (detected, not reaped) or
        long (past detection and reaping), cut at the end of the safety phase."""
        draw = self.rng.random()
        if draw < 0.4:
            length = self.rng.randrange(200 * NS_PER_MS, 5 * NS_PER_S, NS_PER_MS)
        elif draw < 0.7:
            length = self.rng.randrange(5 * NS_PER_S, 25 * NS_PER_S, NS_PER_MS)
        else:
            length = self.outlast_ns + self.rng.randrange(0, 40 * NS_PER_S, NS_PER_MS)
        return min(length, self.end_ns - at_ns)

    def up(self, at_ns: int) -> list[str]:
        joined = [n for n in self.names if self.joins_at.get(n, 0) <= at_ns]
        return [n for n in joined if self.down.get(n, 0) <= at_ns]

    def late(self) -> list[str]:
        """Nodes not booted at 0 s whose join is not scheduled yet."""
        return [n for n, when in sorted(self.joins_at.items()) if when == _NEVER]

    def free_node(self, at_ns: int, until_ns: int, *, going_down: bool) -> str | None:
        """An up node with no episode of its own from ``at_ns`` to ``until_ns``, claimed."""
        up = self.up(at_ns)
        if going_down and len(up) < 2:
            return None
        free = [n for n in up if self.busy.get(n, 0) <= at_ns]
        if not free:
            return None
        node = self.rng.choice(free)
        self.take(node, at_ns, until_ns)
        if going_down:
            self.down[node] = until_ns
        return node

    def identity(self) -> str | None:
        """How a restarted node's new life is seeded: mostly afresh, sometimes the same."""
        return "same_seed" if self.rng.random() < 0.3 else None

    def split(self, shape: str) -> list[tuple[str, ...]]:
        """Partition groups naming every node (absent ones too, so a node that joins
        later lands on a side the schedule chose): a minority and a majority, two
        halves, three groups, or one node alone."""
        names = self.rng.sample(self.names, len(self.names))
        n = len(names)
        if shape == "three" and n >= 3:
            a, b = sorted(self.rng.sample(range(1, n), 2))
            groups = [names[:a], names[a:b], names[b:]]
        elif shape == "halves":
            groups = [names[: n // 2], names[n // 2 :]]
        elif shape == "alone":
            groups = [names[:1], names[1:]]
        else:  # a minority
            cut = self.rng.randint(1, (n - 1) // 2)
            groups = [names[:cut], names[cut:]]
        return [_group(g) for g in groups]

    # --- the network's topology -------------------------------------------------------------

    def partition(self, at_ns: int) -> None:
        until = at_ns + self.length_ns(at_ns)
        if self.take("topology", at_ns, until):
            shape = self.rng.choice(("minority", "halves", "three", "alone"))
            self.add(at_ns, "partition", *self.split(shape))
            self.add(until, "heal")

    def minority_restart(self, at_ns: int) -> None:
        """A partition that outlasts detection and reaping, then a node (re)starting inside
        its minority: a late node joining through a minority node, or a minority node
        restarted (kill and boot at once)."""
        length = self.outlast_ns + self.rng.randrange(5 * NS_PER_S, 30 * NS_PER_S, NS_PER_MS)
        at_ns = max(LONG_WARMUP_NS, min(at_ns, self.end_ns - length))
        until = at_ns + length
        if until > self.end_ns or not self.take("topology", at_ns, until):
            return
        minority, *rest = self.split("minority")
        self.add(at_ns, "partition", minority, *rest)
        self.add(until, "heal")
        inside = at_ns + self.outlast_ns
        late = [n for n in self.late() if n in minority]
        hosts = [n for n in minority if n in self.up(inside)]
        if late and hosts and self.take(late[0], inside, inside + NS_PER_S):
            self.joins_at[late[0]] = inside
            self.add(inside, "join", late[0], (self.rng.choice(hosts),))
            return
        free = [n for n in hosts if self.busy.get(n, 0) <= inside]
        if free:
            node = self.rng.choice(free)
            self.take(node, inside, inside + NS_PER_S)
            self.add(inside, "restart", node, self.identity())

    def partition_oneway(self, at_ns: int) -> None:
        until = at_ns + self.length_ns(at_ns)
        if self.take("topology", at_ns, until):
            src, dst = self.split("minority")
            if self.rng.random() < 0.5:
                src, dst = dst, src
            self.add(at_ns, "partition_oneway", src, dst)
            self.add(until, "heal")

    def isolate(self, at_ns: int) -> None:
        until = at_ns + self.length_ns(at_ns)
        if self.take("topology", at_ns, until):
            self.add(at_ns, "isolate", self.rng.choice(self.names))
            self.add(until, "heal")

    def flap(self, at_ns: int) -> None:
        until = at_ns + self.length_ns(at_ns)
        period_ns = self.rng.randrange(10 * NS_PER_MS, 3 * NS_PER_S, NS_PER_MS)
        if until - at_ns > period_ns and self.take("topology", at_ns, until):
            a, b = self.rng.sample(self.names, 2)
            self.add(at_ns, "flap", a, b, period_ns, until)

    # --- nodes ----------------------------------------------------------------------------

    def crash(self, at_ns: int) -> None:
        until = at_ns + self.length_ns(at_ns)
        node = self.free_node(at_ns, until, going_down=True)
        if node is not None:
            self.add(at_ns, "crash", node)
            up = [n for n in self.up(until) if n != node]
            via = (self.rng.choice(up),) if up and self.rng.random() < 0.2 else None
            self.add(until, "restart", node, self.identity(), via)

    def restart(self, at_ns: int) -> None:
        """Kill and boot at once, faster than anyone can notice."""
        node = self.free_node(at_ns, at_ns + NS_PER_S, going_down=False)
        if node is not None:
            self.add(at_ns, "restart", node, self.identity())

    def pause(self, at_ns: int) -> None:
        length = self.length_ns(at_ns)
        node = self.free_node(at_ns, at_ns + length, going_down=True)
        if node is not None:
            self.add(at_ns, "pause", node, length)
            if length > 2 * NS_PER_MS and self.rng.random() < 0.3:  # resumed early
                self.add(at_ns + self.rng.randrange(NS_PER_MS, length, NS_PER_MS), "resume", node)

    def leave(self, at_ns: int) -> None:
        until = at_ns + self.length_ns(at_ns)
        node = self.free_node(at_ns, until, going_down=True)
        if node is not None:
            self.add(at_ns, "leave", node)
            self.add(until, "join", node)

    def late_join(self, at_ns: int) -> None:
        late = self.late()
        if late and self.take(late[0], at_ns, at_ns + NS_PER_S):
            self.joins_at[late[0]] = at_ns
            self.add(at_ns, "join", late[0])

    # --- clocks, one node at a time ---------------------------------------------------------

    def skew(self, at_ns: int) -> None:
        until = at_ns + self.length_ns(at_ns)
        node = self.rng.choice(self.names)
        if self.take(f"clock:{node}", at_ns, until):
            skew_ns = self.rng.choice((-1, 1)) * self.rng.randrange(NS_PER_MS, 2 * NS_PER_S)
            self.add(at_ns, "skew", node, skew_ns // NS_PER_MS * NS_PER_MS)
            self.add(until, "skew", node, 0)

    def drift(self, at_ns: int) -> None:
        until = at_ns + self.length_ns(at_ns)
        node = self.rng.choice(self.names)
        if self.take(f"clock:{node}", at_ns, until):
            self.add(at_ns, "drift", node, float(self.rng.choice((-500, -100, 100, 500))))
            self.add(until, "drift", node, 0.0)

    def jump(self, at_ns: int) -> None:
        node = self.rng.choice(self.names)
        if self.take(f"clock:{node}", at_ns, at_ns + NS_PER_MS):
            delta_ns = self.rng.choice((-1, 1)) * self.rng.randrange(NS_PER_MS, 3 * NS_PER_S)
            self.add(at_ns, "jump", node, delta_ns // NS_PER_MS * NS_PER_MS)

    # --- link settings ----------------------------------------------------------------------

    def _setting(self, at_ns: int, verb: str, fault: tuple[Any, ...]) -> None:
        net = self.network
        restore: dict[str, tuple[Any, ...]] = {
            "loss": (net.loss,),
            "duplicate": (net.duplicate,),
            "reorder": (net.reorder, net.reorder_ns),
            "latency": (net.latency_ns, net.jitter_ns),
        }
        until = at_ns + self.length_ns(at_ns)
        if self.take(verb, at_ns, until):
            self.add(at_ns, verb, *fault)
            self.add(until, verb, *restore[verb])

    def loss(self, at_ns: int) -> None:
        self._setting(at_ns, "loss", (self.rng.choice((0.01, 0.05, 0.2, 0.5)),))

    def duplicate(self, at_ns: int) -> None:
        self._setting(at_ns, "duplicate", (self.rng.choice((0.01, 0.1, 0.3)),))

    def reorder(self, at_ns: int) -> None:
        size_ns = self.rng.randrange(NS_PER_MS, 50 * NS_PER_MS, NS_PER_MS)
        self._setting(at_ns, "reorder", (self.rng.choice((0.01, 0.1, 0.3)), size_ns))

    def latency(self, at_ns: int) -> None:
        latency_ns = self.rng.choice((100 * NS_PER_US, 10 * NS_PER_MS, 50 * NS_PER_MS))
        jitter = self.rng.choice((None, NS_PER_MS, 5 * NS_PER_MS))
        self._setting(at_ns, "latency", (latency_ns, jitter))

    # --- rules, resets and traffic, at any time (during faults too) ----------------------------

    def client(self) -> str:
        if self.workload.hot_client and self.rng.random() < 0.5:
            return self.workload.hot_client
        return f"c{self.rng.randrange(min(self.workload.clients, 20))}"

    def rules(self, at_ns: int) -> None:
        for offset in range(self.rng.randint(1, 3)):
            when = min(self.end_ns, at_ns + offset * self.rng.randrange(NS_PER_MS, NS_PER_S))
            if self.rng.random() < 0.25:
                self.add(when, "remove_rule", self.client())
            else:
                self.add(when, "set_rule", self.client(), _fuzz_rule(self.rng))

    def resets(self, at_ns: int) -> None:
        self.add(at_ns, "reset", self.client())

    def traffic(self, at_ns: int) -> None:
        if self.rng.random() < 0.5:
            factor = self.rng.choice((0.25, 0.5, 2.0, 4.0))
            self.add(at_ns, "rate", self.workload.rate * factor)
        else:
            hot = self.workload.hot_client or "c0"
            self.add(at_ns, "hot", hot, float(self.rng.choice((0, 50, 500))))

    def liveness(self) -> None:
        """Heal the network and let a node that never joined join (all else has ended)."""
        self.add(self.end_ns, "heal")
        for node in self.late():
            self.add(self.end_ns, "join", node)
