"""Swarm fuzzing: a random scenario derived from a seed alone.

The seed picks which kinds of fault are on (each with probability 1/2, as in
swarm testing), then a random schedule of them in a safety phase (the first
70% of the run), then heals everything for a liveness phase.
"""

from __future__ import annotations

from random import Random
from typing import Any

from meshlimit.core.rules import ALGORITHMS

from .events import NS_PER_MS, NS_PER_S, NS_PER_US, derive_rng
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
    return Scenario(
        name=f"fuzz-{seed}", description=f"swarm faults: {', '.join(enabled) or 'none'}",
        seed=seed, duration_ns=duration_ns, nodes=nodes, mode=rng.choice(MODES), limits=limits,
        workload=workload, network=network, timeline=tuple(swarm.actions), source=f"<fuzz {seed}>",
    )  # fmt: skip


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
