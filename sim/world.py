"""The simulated world: N production nodes, one virtual network, one timeline.

Theory of operation. Every node is the real sans-IO
:class:`~meshlimit.cluster.node.Node`. The world owns a single event queue
in virtual time; each event is a datagram delivery, a node's timer, a client
request or a timeline action. After anything touches a node the world
drains it — datagrams go into the simulated network, decisions and
membership events go to the checkers — and re-arms its timer at the node's
next deadline. The checkers never look into the world: whatever they judge
by (a node's liveness, an escaped exception) the world hands them, so the
import goes one way, world to checkers. Each node has its own :class:`~meshlimit.sim.events.NodeClock`
(skew, drift, jumps): nodes get their monotonic and wall readings from it.

Every random choice derives from the run's seed, so a run is reproduced by
its seed alone; ``trace_digest`` hashes every event in order to prove it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from meshlimit.cluster.node import Decided, MembershipChanged, Node
from meshlimit.cluster.node.config import NodeConfig
from meshlimit.cluster.wire.messages import Address
from meshlimit.core.decision import Decision

from .checkers import Checkers, Liveness
from .events import NS_PER_MS, SIM_EPOCH_NS, EventQueue, NodeClock, derive_rng
from .network import Delivery, Network
from .scenario import Action, Scenario
from .workload import Request, Workload

PORT = 7400
#: A paused node's socket buffer: datagrams beyond it are dropped, as a kernel would.
PAUSE_BACKLOG = 10_000


@dataclass(slots=True)
class SimNode:
    """One simulated machine: its clock, its node (None while down) and its timer."""

    name: str
    addr: Address
    clock: NodeClock
    node: Node | None = None
    generation: int = 0
    paused_until: int | None = None
    backlog: list[Delivery] = field(default_factory=list)
    timer_at: int = -1


class NodeCrashed(Exception):
    """An exception escaped a node: always a bug, reported with the seed."""


class World:
    """Runs one scenario with one seed; see the module docstring."""

    def __init__(
        self,
        scenario: Scenario,
        seed: int,
        *,
        plant: Callable[[Node], None] | None = None,
    ) -> None:
        self.scenario = scenario
        self.seed = seed
        self.now = 0
        self._plant = plant
        self.queue: EventQueue[tuple[Any, ...]] = EventQueue()
        self.network = Network(derive_rng(seed, "network"), scenario.network.link_config())
        self.nodes: dict[str, SimNode] = {}
        for name in scenario.node_names:
            clock = NodeClock(epoch_ns=SIM_EPOCH_NS)
            self.nodes[name] = SimNode(name, (name, PORT), clock)
        self._by_addr = {sim.addr: sim for sim in self.nodes.values()}
        self.checkers = Checkers(scenario)
        self.workload = Workload.from_spec(
            scenario.workload, list(self.nodes), derive_rng(seed, "workload")
        )
        self._digest = hashlib.blake2b(digest_size=16)
        self._tickets: dict[tuple[str, int], tuple[int, str]] = {}
        self.errors: list[str] = []
        self._request_generation = 0
        self.events_run = 0

    # --- running ----------------------------------------------------------------------

    def run(
        self, *, until_ns: int | None = None, progress: Callable[[int], None] | None = None
    ) -> None:
        """Run the scenario to its end (or ``until_ns``)."""
        end = self.scenario.duration_ns if until_ns is None else until_ns
        if self.now == 0:
            self._boot()
        next_progress = 0
        while True:
            at = self.queue.peek_time()
            if at is None or at > end:
                break
            at, event = self.queue.pop()
            self.now = at
            self.events_run += 1
            self._digest.update(repr((at, event[0], event[1] if len(event) > 1 else "")).encode())
            self._handle(event)
            if progress is not None and at >= next_progress:
                progress(at)
                next_progress = at + end // 100
        self.now = end
        self.checkers.finish(end)

    def trace_digest(self) -> str:
        """A hash of every event run so far, in order: equal runs give equal digests."""
        return self._digest.hexdigest()

    def _boot(self) -> None:
        first = next(iter(self.nodes))
        for name in self.nodes:
            self._start_node(name, seeds=[] if name == first else [self.nodes[first].addr])
        limits = self.scenario.limits
        starter = self.nodes[first]
        for tier, rule in limits.tiers:
            self._set_rule(starter, f"tier:{tier}", rule)
        for client, value in limits.clients:
            self._set_rule(starter, f"client:{client}", value if "/" in value else f"@{value}")
        for action in self.scenario.timeline:
            self.queue.push(action.at_ns, ("action", action))
        self._schedule_request()

    def _handle(self, event: tuple[Any, ...]) -> None:
        kind = event[0]
        if kind == "deliver":
            self._deliver(event[1])
        elif kind == "tick":
            self._tick(event[1], event[2])
        elif kind == "request":
            self._next_request(event[1])
        elif kind == "action":
            self._act(event[1])
        elif kind == "resume":
            self._resume(event[1])

    # --- nodes ------------------------------------------------------------------------

    def _config(self, sim: SimNode) -> NodeConfig:
        return NodeConfig.preset(
            "sim",
            sim.name,
            sim.addr,
            mode=self.scenario.mode,
            default_rule=self.scenario.limits.default,
        )

    def _start_node(self, name: str, *, seeds: list[Address]) -> None:
        sim = self.nodes[name]
        sim.generation += 1
        rng = derive_rng(self.seed, "node", name, str(sim.generation))
        mono, wall = sim.clock.mono_ns(self.now), sim.clock.wall_ns(self.now)
        node = Node(self._config(sim), rng, now_ns=mono, wall_ns=wall)
        node.decision_log = []
        if self._plant is not None:
            self._plant(node)
        sim.node = node
        sim.paused_until = None
        sim.backlog.clear()
        self._guard(sim, lambda: node.start(seeds, now_ns=mono))
        self._drain(sim)

    def liveness(self, name: str) -> Liveness:
        """Whether the node called ``name`` runs, is paused, or is down (or unknown)."""
        sim = self.nodes.get(name)
        if sim is None or sim.node is None:
            return Liveness.DOWN
        return Liveness.RUNNING if sim.paused_until is None else Liveness.PAUSED

    def _live(self, sim: SimNode) -> Node | None:
        """The node if it is up and not paused."""
        return sim.node if sim.paused_until is None else None

    def _guard(self, sim: SimNode, action: Callable[[], Any]) -> Any:
        try:
            return action()
        except Exception as error:  # noqa: BLE001 - any escape is a finding
            message = f"{sim.name} at {self.now} ns: {type(error).__name__}: {error}"
            self.errors.append(message)
            self.checkers.on_exception(message)
            raise NodeCrashed(message) from error

    def _drain(self, sim: SimNode) -> None:
        """Collect everything a node produced and re-arm its timer."""
        node = sim.node
        if node is None:
            return
        for datagram, addr in node.datagrams_to_send():
            dst = self._by_addr.get(addr)
            if dst is None:
                continue
            for at, delivery in self.network.send(sim.name, dst.name, datagram, now_ns=self.now):
                self.queue.push(at, ("deliver", delivery))
        for event in node.events():
            if isinstance(event, Decided):
                started = self._tickets.pop((sim.name, event.ticket), None)
                if started is not None:
                    self.checkers.on_decision(
                        sim.name, started[1], event.decision, started[0], self.now
                    )
            elif isinstance(event, MembershipChanged):
                self.checkers.on_membership(
                    sim.name,
                    event.event,
                    self.now,
                    subject_liveness=self.liveness(event.event.node),
                )
        if node.decision_log:
            self.checkers.on_admissions(sim.name, node.decision_log, self.now)
            node.decision_log.clear()
        deadline_mono = node.next_deadline()
        mono = sim.clock.mono_ns(self.now)
        at = self.now + max(1, deadline_mono - mono)
        if sim.timer_at <= self.now or at < sim.timer_at:
            sim.timer_at = at
            self.queue.push(at, ("tick", sim.name, sim.generation))

    def _tick(self, name: str, generation: int) -> None:
        sim = self.nodes[name]
        node = self._live(sim)
        if node is None or generation != sim.generation or self.now != sim.timer_at:
            return
        mono, wall = sim.clock.mono_ns(self.now), sim.clock.wall_ns(self.now)
        self._guard(sim, lambda: node.tick(now_ns=mono, wall_ns=wall))
        self._drain(sim)

    def _deliver(self, delivery: Delivery) -> None:
        if not self.network.deliver(delivery, now_ns=self.now):
            return
        sim = self.nodes[str(delivery.dst)]  # the network carries any hashable name
        if sim.node is None:
            return
        if sim.paused_until is not None:
            if len(sim.backlog) < PAUSE_BACKLOG:
                sim.backlog.append(delivery)
            return
        self._receive(sim, delivery)

    def _receive(self, sim: SimNode, delivery: Delivery) -> None:
        node = sim.node
        assert node is not None
        mono, wall = sim.clock.mono_ns(self.now), sim.clock.wall_ns(self.now)
        src_addr = self.nodes[str(delivery.src)].addr
        self._guard(
            sim, lambda: node.receive(delivery.payload, src_addr, now_ns=mono, wall_ns=wall)
        )
        self._drain(sim)

    def _resume(self, name: str) -> None:
        sim = self.nodes[name]
        if sim.node is None or sim.paused_until is None:
            return
        sim.paused_until = None
        backlog, sim.backlog = sim.backlog, []
        for delivery in backlog:
            self._receive(sim, delivery)
        sim.timer_at = -1
        self._drain(sim)

    # --- requests ---------------------------------------------------------------------

    def _schedule_request(self) -> None:
        # The queue holds a marker for the workload's next arrival; a rate change
        # redraws that arrival, so markers carry a generation and stale ones are skipped.
        self._request_generation += 1
        at = self.workload.peek_ns()
        if at <= self.scenario.duration_ns:
            self.queue.push(at, ("request", self._request_generation))

    def _next_request(self, generation: int) -> None:
        if generation != self._request_generation:
            return
        request = self.workload.next_request(self.now)
        self._schedule_request()
        if request is not None:
            self._request(request)

    def _request(self, request: Request) -> None:
        sim = self.nodes[str(request.entry_node)]
        node = self._live(sim)
        if node is None:
            self.checkers.on_unavailable(sim.name, request.client, self.now)
            return
        mono, wall = sim.clock.mono_ns(self.now), sim.clock.wall_ns(self.now)
        result = self._guard(
            sim, lambda: node.check(request.client, request.cost, now_ns=mono, wall_ns=wall)
        )
        if isinstance(result, Decision):
            self.checkers.on_decision(sim.name, request.client, result, self.now, self.now)
        else:
            self._tickets[(sim.name, result)] = (self.now, request.client)
        self._drain(sim)

    # --- the timeline -----------------------------------------------------------------

    def _act(self, action: Action) -> None:
        self.checkers.on_action(action, self.now)
        verb, args = action.verb, action.args
        network = self.network
        if verb == "partition":
            network.partition([set(group) for group in args])
        elif verb == "partition_oneway":
            network.partition_one_way(set(args[0]), set(args[1]))
        elif verb == "isolate":
            network.isolate(args[0])
        elif verb == "heal":
            network.heal()
        elif verb == "flap":
            network.flap(args[0], args[1], start_ns=self.now, period_ns=args[2], until_ns=args[3])
        elif verb in ("loss", "duplicate"):
            network.set_default(replace(network.default, **{verb: args[0]}))
        elif verb == "reorder":
            changes = {"reorder": args[0]}
            if args[1] is not None:
                changes["reorder_ns"] = args[1]
            network.set_default(replace(network.default, **changes))
        elif verb == "latency":
            changes = {"latency_ns": args[0]}
            if args[1] is not None:
                changes["jitter_ns"] = args[1]
            network.set_default(replace(network.default, **changes))
        else:
            self._act_on_node(verb, args)

    def _act_on_node(self, verb: str, args: tuple[Any, ...]) -> None:
        if verb in ("crash", "restart", "pause", "resume", "leave", "join"):
            sim = self.nodes[args[0]]
            if verb == "crash":
                sim.node = None
                sim.backlog.clear()
                sim.paused_until = None
            elif verb in ("restart", "join"):
                if sim.node is None:
                    seeds = [s.addr for s in self.nodes.values() if s.node is not None]
                    self._start_node(sim.name, seeds=seeds)
            elif verb == "pause":
                if sim.node is not None and sim.paused_until is None:
                    sim.paused_until = self.now + args[1]
                    self.queue.push(self.now + args[1], ("resume", sim.name))
            elif verb == "resume":
                self._resume(sim.name)
            elif verb == "leave":
                node = self._live(sim)
                if node is not None:
                    self._guard(sim, lambda: node.leave(now_ns=sim.clock.mono_ns(self.now)))
                    self._drain(sim)
                    sim.node = None
        elif verb in ("skew", "jump"):
            clock = self.nodes[args[0]].clock
            if verb == "skew":
                clock.set_skew(args[1], at_true_ns=self.now)
            else:
                clock.jump(args[1])
        elif verb == "drift":
            self.nodes[args[0]].clock.set_drift(args[1], at_true_ns=self.now)
        elif verb in ("set_rule", "remove_rule"):
            live = [s for s in self.nodes.values() if self._live(s) is not None]
            if live:
                sim = live[int(self.now // NS_PER_MS) % len(live)]
                value = None if verb == "remove_rule" else args[1]
                if isinstance(value, str) and "/" not in value:
                    value = "@" + value
                self._set_rule(sim, f"client:{args[0]}", value)
        elif verb == "hot":
            self.workload.set_hot(args[0], args[1], now_ns=self.now)
            self._reschedule_requests()
        elif verb == "rate":
            self.workload.set_rate(args[0], now_ns=self.now)
            self._reschedule_requests()

    def _reschedule_requests(self) -> None:
        self._schedule_request()  # the marker already queued is now stale

    def _set_rule(self, sim: SimNode, key: str, value: str | None) -> None:
        node = self._live(sim)
        if node is None:
            return
        mono, wall = sim.clock.mono_ns(self.now), sim.clock.wall_ns(self.now)
        self._guard(sim, lambda: node.set_rule(key, value, now_ns=mono, wall_ns=wall))
        self.checkers.on_rule_change(key, value, self.now)
        self._drain(sim)
