"""The simulated world: N production nodes, one virtual network, one timeline.

Theory of operation. Every node is the real sans-IO :class:`~meshlimit.cluster.node.Node`.
The world owns a single event queue in virtual time; each event is a datagram delivery, a
node's timer, a client request or a timeline action. After anything touches a node the
world drains it — datagrams go into the simulated network, decisions and membership events
go to the checkers — and re-arms its timer at the node's next deadline. The checkers never
look into the world: whatever they judge by (a node's liveness, an escaped exception, the
nodes left at the end) the world hands them, so the import goes one way, world to checkers.
Each node has its own :class:`~meshlimit.sim.events.NodeClock` (skew, drift, jumps): nodes
get their monotonic and wall readings from it.

A simulated machine lives one life per boot: a restart kills the node and boots a new
one under the same name, with its own timers, tickets and RNG stream (or, restarted
``same_seed``, the last life's stream again). A node may also boot late (``absent``), join
through named seeds, or take checks before joining (``serve_before_join``: no datagrams
in or out, no timer, until then).

Every random choice derives from the run's seed, so a run is reproduced by its seed
alone; ``trace_digest`` hashes every event in order to prove it. A progress guard
(``guard.py``) fails a run at once, naming its scenario, seed and last events, when virtual
time stops advancing or the events outrun the schedule.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from meshlimit.cluster.node import Decided, MembershipChanged, Node
from meshlimit.cluster.node.config import NodeConfig
from meshlimit.cluster.node.events import Event
from meshlimit.cluster.wire.messages import Address
from meshlimit.core.decision import Decision

from .checkers import Checkers, Liveness
from .events import NS_PER_MS, SIM_EPOCH_NS, EventQueue, NodeClock, derive_rng
from .guard import LAST_EVENTS, STALL_EVENTS, STALL_SPAN_NS, RunStalled, event_budget
from .network import Delivery, Network
from .news import carries_join_reply
from .scenario import Action, Scenario
from .workload import Request, Workload

__all__ = ["STALL_EVENTS", "NodeCrashed", "RunStalled", "World", "event_budget"]

PORT = 7400
#: A paused node's socket buffer: datagrams beyond it are dropped, as a kernel would.
PAUSE_BACKLOG = 10_000
#: The shared key of an ``authenticated`` scenario's cluster.
CLUSTER_KEY = b"meshlimit-simulated-cluster-key"


@dataclass(slots=True)
class SimNode:
    """One simulated machine: its clock, its node (None while down) and its timer."""

    name: str
    addr: Address
    clock: NodeClock
    node: Node | None = None
    generation: int = 0
    """Lives so far: each start makes a new one (its timers and tickets are its own)."""
    rng_generation: int = 0
    """The life whose RNG stream the current life uses: its own, unless restarted
    ``same_seed`` (then the previous life's, so both draw the same numbers)."""
    paused_until: int | None = None
    backlog: list[Delivery] = field(default_factory=list)
    timer_at: int = -1
    runtime_up: bool = True
    """False while a node booted ``serve_before_join`` has no cluster runtime yet: it
    decides checks, but neither sends, receives nor ticks (its socket is not open)."""
    resync_seen: int = 0
    """The last life whose resync the checkers were told of (``History.resync_begun``)."""
    joined_seen: int = 0
    """The last life the checkers were told knows the ring (``Checkers.on_joined``)."""
    rules_digest: int = 0
    """The node's registry digest when its output was last collected (before its next input)."""


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
        #: Checks awaiting their node's answer: (node, life, ticket) -> (asked at, client,
        #: the owner it was forwarded to). A ticket of a life that ended is never answered.
        self._tickets: dict[tuple[str, int, int], tuple[int, str, str]] = {}
        #: ``misdeliver``: the chance a datagram reaches another node than its destination.
        self._misdeliver = 0.0
        self._misdeliver_rng = derive_rng(seed, "misdeliver")
        self.errors: list[str] = []
        self._request_generation = 0
        self.events_run = 0
        self.event_budget = event_budget(scenario)
        self.last_events: deque[str] = deque(maxlen=LAST_EVENTS)

    # --- running ----------------------------------------------------------------------

    def run(
        self, *, until_ns: int | None = None, progress: Callable[[int], None] | None = None
    ) -> None:
        """Run the scenario to its end (or ``until_ns``)."""
        end = self.scenario.duration_ns if until_ns is None else until_ns
        if self.now == 0:
            self._boot()
        next_progress = 0 if progress is not None else end + 1
        pop_due, digest, last_events = self.queue.pop_due, self._digest, self.last_events
        hash_text, remember, nodes = digest.update, last_events.append, self.nodes
        deliver, tick, next_request = self._deliver, self._tick, self._next_request
        handle = self._handle
        budget = self.event_budget
        stall_from, stall_events = -STALL_SPAN_NS, 0
        while True:
            due = pop_due(end)
            if due is None:
                break
            at, event = due
            self.now = at
            self.events_run = events_run = self.events_run + 1
            kind = event[0]
            if kind == "deliver":  # the digest takes the datagram's bytes as they are
                d = event[1]
                text = f"{at} deliver {d.src}>{d.dst} #{d.copy} sent {d.sent_at_ns}"
                hash_text(text.encode())
                hash_text(d.payload)
            else:
                text = f"{at} {kind} {event[1]}"
                hash_text(text.encode())
            remember(text)
            if at - stall_from < STALL_SPAN_NS:
                stall_events += 1
                if stall_events >= STALL_EVENTS:
                    raise self._stalled(f"{STALL_EVENTS} events within {STALL_SPAN_NS} ns")
            else:
                stall_from, stall_events = at, 0
            if events_run > budget:
                raise self._stalled(f"over the event budget of {budget} events")
            if kind == "deliver":
                deliver(event[1])
            elif kind == "tick":
                # A tick is stale (its timer re-armed, its life over) far more often than not.
                sim = nodes[event[1]]
                if sim.timer_at == at and event[2] == sim.generation:
                    tick(sim)
            elif kind == "request":
                next_request(event[1])
            else:
                handle(event)
            if at >= next_progress:
                assert progress is not None
                progress(at)
                next_progress = at + end // 100
        self.now = end
        running = {
            sim.name: (sim.node, sim.clock.skew_ns(end))
            for sim in self.nodes.values()
            if sim.node is not None
        }
        waiting = [(n, life, at) for (n, life, _), (at, *_) in self._tickets.items()]
        self.checkers.on_unanswered(waiting, end)
        self.checkers.on_final_state(running, end)
        self.checkers.finish(end)

    def _stalled(self, why: str) -> RunStalled:
        """The guard's verdict: scenario, seed, instant, why, and the last events."""
        last = "\n  ".join(text[:200] for text in self.last_events)
        return RunStalled(
            f"progress: scenario={self.scenario.name} seed={self.seed} at {self.now} ns:"
            f" {why} (virtual time stopped advancing or the run spins);"
            f" last events:\n  {last}"
        )

    def trace_digest(self) -> str:
        """A hash of every event run so far, in order: equal runs give equal digests."""
        return self._digest.hexdigest()

    def _boot(self) -> None:
        booting = [name for name in self.nodes if name not in self.scenario.absent]
        first = booting[0]
        for name in booting:
            self._start_node(name, seeds=[] if name == first else [self.nodes[first].addr])
        limits = self.scenario.limits
        starter, self._tier_names = self.nodes[first], {tier for tier, _ in limits.tiers}
        for tier, rule in limits.tiers:
            self._set_rule(starter, f"tier:{tier}", rule)
        for client, value in limits.clients:
            named = value in self._tier_names  # else rule notation (``10/s``, ``10 per second``)
            self._set_rule(starter, f"client:{client}", f"@{value}" if named else value)
        for action in self.scenario.timeline:
            self.queue.push(action.at_ns, ("action", action))
        self._schedule_request()

    def _handle(self, event: tuple[Any, ...]) -> None:
        """The rarer events (``run`` handles deliveries, ticks and requests itself)."""
        kind = event[0]
        if kind == "action":
            self._act(event[1])
        elif kind == "resume":
            self._resume(event[1])
        elif kind == "start":
            self._join_late(event[1], event[2], event[3])

    # --- nodes ------------------------------------------------------------------------

    def _config(self, sim: SimNode) -> NodeConfig:
        return NodeConfig.preset(
            "sim",
            sim.name,
            sim.addr,
            mode=self.scenario.mode,
            default_rule=self.scenario.limits.default,
            cluster_keys=(CLUSTER_KEY,) if self.scenario.authenticated else (),
            share_decoded=True,  # one process: receivers take the senders' messages
        )

    def _start_node(
        self,
        name: str,
        *,
        seeds: list[Address],
        same_seed: bool = False,
        join_after_ns: int | None = None,
    ) -> None:
        """Boot a new life of ``name`` joining through ``seeds``; its RNG is its own stream,
        or with ``same_seed`` the previous life's stream again (seeded the same). With
        ``join_after_ns`` the node takes checks that long before it starts to join (a
        daemon whose front-ends open before its cluster runtime starts)."""
        sim = self.nodes[name]
        sim.generation += 1
        sim.joined_seen = -1 if seeds else sim.generation  # a node with no seed knows the ring
        if not same_seed or sim.rng_generation == 0:
            sim.rng_generation = sim.generation
        rng = derive_rng(self.seed, "node", name, str(sim.rng_generation))
        mono, wall = sim.clock.readings(self.now)
        # The boot id is per life even with ``same_seed``: drawn from its own stream.
        boot_id = derive_rng(self.seed, "boot", name, str(sim.generation)).getrandbits(64)
        node = Node(self._config(sim), rng, now_ns=mono, wall_ns=wall, boot_id=boot_id)
        node.decision_log = []
        if self._plant is not None:
            self._plant(node)
        sim.node, sim.rules_digest = node, node.registry.digest
        sim.paused_until = None
        sim.backlog.clear()
        sim.timer_at = -1  # the last life's timer is stale: arm this life's own
        sim.runtime_up = join_after_ns is None
        if join_after_ns is None:
            self._guard(sim, lambda: node.start(seeds, now_ns=mono))
        else:
            self.queue.push(self.now + join_after_ns, ("start", name, sim.generation, seeds))
        self._drain(sim)

    def _join_late(self, name: str, generation: int, seeds: list[Address]) -> None:
        """A node booted with ``join_after_ns`` starts joining now (if that life still runs)."""
        sim = self.nodes[name]
        node = sim.node
        if node is None or generation != sim.generation:
            return
        sim.runtime_up = True
        self._guard(sim, lambda: node.start(seeds, now_ns=sim.clock.mono_ns(self.now)))
        self._drain(sim)

    def _stop_node(self, sim: SimNode) -> None:
        """The node's process dies at once (kill -9): its state, queue and timer are gone."""
        sim.node = None
        sim.runtime_up = True
        sim.backlog.clear()
        sim.paused_until = None
        sim.timer_at = -1

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
            raise self._escaped(sim, error) from error

    def _escaped(self, sim: SimNode, error: Exception) -> NodeCrashed:
        """An exception escaped ``sim``'s node: recorded, and the run ends with it."""
        message = f"{sim.name} at {self.now} ns: {type(error).__name__}: {error}"
        self.errors.append(message)
        self.checkers.on_exception(message)
        return NodeCrashed(message)

    def _drain(
        self, sim: SimNode, received: Delivery | None = None, mono: int | None = None
    ) -> None:
        """Collect everything a node produced and re-arm its timer (``received``: the
        datagram it just took, which any forwarded answer or decision came from; ``mono``:
        the node's monotonic reading now, if the caller has it)."""
        node = sim.node
        if node is None:
            return
        now = self.now
        datagrams = node.datagrams_to_send()
        if datagrams and sim.runtime_up:  # without a runtime they are dropped unsent
            send, push, by_addr, name = self.network.send, self.queue.push, self._by_addr, sim.name
            for datagram, addr in datagrams:
                dst = by_addr.get(addr)
                if dst is not None:
                    for at, delivery in send(name, dst.name, datagram, now_ns=now):
                        push(at, ("deliver", delivery))
        events = node.events()
        if events:
            self._report(sim, events, received)
        joined = sim.joined_seen != sim.generation and node.joining.knows_ring  # its word, and
        if joined and (self.scenario.authenticated or carries_join_reply(received)):  # the bytes
            sim.joined_seen = sim.generation  # the instant this life learnt the ring
            self.checkers.on_joined(sim.name, now)
        if sim.resync_seen != sim.generation and node.resync.begun:
            sim.resync_seen = sim.generation  # the instant a restarted life began waiting
            self.checkers.history.resync_began(sim.name, now)
        log = node.decision_log
        rules_before, sim.rules_digest = sim.rules_digest, node.registry.digest
        if log:
            self.checkers.on_admissions(sim.name, log, now, received, rules_before)
            log.clear()
        if not sim.runtime_up:
            return  # no runtime, no timer: it is armed when the node starts to join
        if mono is None:
            mono = sim.clock.mono_ns(now)
        wait = node.next_deadline() - mono
        at = now + wait if wait > 1 else now + 1
        if sim.timer_at <= now or at < sim.timer_at:
            sim.timer_at = at
            self.queue.push(at, ("tick", sim.name, sim.generation))

    def _report(self, sim: SimNode, events: list[Event], received: Delivery | None) -> None:
        """Hand a node's events to the checkers: answers to tickets, membership changes."""
        checkers, now = self.checkers, self.now
        for event in events:
            if isinstance(event, Decided):
                started = self._tickets.pop((sim.name, sim.generation, event.ticket), None)
                if started is not None:
                    checkers.on_decision(
                        sim.name, started[1], event.decision, started[0], now,
                        asked=started[2], replied_by=None if received is None else str(received.src),
                    )  # fmt: skip
                else:  # answered twice, never asked, or asked of an earlier life
                    checkers.on_stray_answer(sim.name, event.ticket, now)
            elif isinstance(event, MembershipChanged) and sim.node is not None:
                checkers.on_membership(  # the membership read only: health, incarnations
                    sim.name, event.event, now, subject_liveness=self.liveness(event.event.node),
                    membership=sim.node.membership, by_datagram=received is not None,
                )  # fmt: skip

    def _tick(self, sim: SimNode) -> None:
        """A node's timer fired (``run`` checked that it is this life's, and due now)."""
        node = sim.node
        if node is None or sim.paused_until is not None:
            return
        mono, wall = sim.clock.readings(self.now)
        try:
            node.tick(now_ns=mono, wall_ns=wall)
        except Exception as error:  # noqa: BLE001 - any escape is a finding
            raise self._escaped(sim, error) from error
        self._drain(sim, None, mono)

    def _deliver(self, delivery: Delivery) -> None:
        if not self.network.deliver(delivery, now_ns=self.now):
            return
        sim = self.nodes[str(delivery.dst)]  # the network carries any hashable name
        if self._misdeliver and self._misdeliver_rng.random() < self._misdeliver:
            others = [n for n in self.nodes if n not in (delivery.src, delivery.dst)]
            if others:  # an address reused by another node: it gets the datagram instead
                target = self._misdeliver_rng.choice(others)
                if not self.network.reachable(delivery.src, target, now_ns=self.now):
                    self.network.stats.delivered -= 1  # a partition is between hosts
                    self.network.stats.dropped_partition += 1
                    return
                sim = self.nodes[target]
        if sim.node is None or not sim.runtime_up:
            return
        if sim.paused_until is not None:
            if len(sim.backlog) < PAUSE_BACKLOG:
                sim.backlog.append(delivery)
            return
        self._receive(sim, delivery)

    def _receive(self, sim: SimNode, delivery: Delivery) -> None:
        node = sim.node
        assert node is not None
        mono, wall = sim.clock.readings(self.now)
        src_addr = self.nodes[str(delivery.src)].addr
        judged = self.checkers.wants_datagrams
        try:
            node.receive(delivery.payload, src_addr, now_ns=mono, wall_ns=wall)
        except Exception as error:  # noqa: BLE001 - any escape is a finding
            raise self._escaped(sim, error) from error
        if judged:  # the membership news it carried, against the node's table after it
            health = node.membership.local_health
            self.checkers.on_datagram(sim.name, delivery.payload, node.members(), self.now, health)
        self._drain(sim, delivery, mono)

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
        mono, wall = sim.clock.readings(self.now)
        try:
            result = node.check(request.client, request.cost, now_ns=mono, wall_ns=wall)
        except Exception as error:  # noqa: BLE001 - any escape is a finding
            raise self._escaped(sim, error) from error
        if isinstance(result, Decision):
            self.checkers.on_decision(sim.name, request.client, result, self.now, self.now)
        else:
            owner = node.owner(request.client)  # the ring the check was forwarded by
            self._tickets[(sim.name, sim.generation, result)] = (self.now, request.client, owner)
            self.checkers.on_ticket(sim.name, request.client, self.now)
        self._drain(sim, None, mono)

    # --- the timeline -----------------------------------------------------------------

    def _act(self, action: Action) -> None:
        if action.verb == "restart" and self.nodes[action.args[0]].node is not None:
            # Restarting a running node kills it first: the checkers see both halves.
            self.checkers.on_action(Action(action.at_ns, "crash", action.args[:1]), self.now)
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
        elif verb == "misdeliver":
            self._misdeliver = args[0]
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
                self._stop_node(sim)
            elif verb in ("restart", "join"):
                self._restart_or_join(sim, verb, args)
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
            self.checkers.on_clock_step(args[0], clock.wall_ns(self.now))
            if verb == "skew":
                clock.set_skew(args[1], at_true_ns=self.now)
            else:
                clock.jump(args[1])
        elif verb == "drift":
            self.nodes[args[0]].clock.set_drift(args[1], at_true_ns=self.now)
        elif verb in ("set_rule", "remove_rule", "reset"):
            live = [s for s in self.nodes.values() if self._live(s) is not None]
            if live:
                sim = live[int(self.now // NS_PER_MS) % len(live)]
                if verb == "reset":  # an operator reset: the node's ``reset:ID`` entry
                    self._set_rule(sim, f"reset:{args[0]}", None)
                    return
                value = None if verb == "remove_rule" else args[1]
                if value in self._tier_names:
                    value = f"@{value}"
                self._set_rule(sim, f"client:{args[0]}", value)
        elif verb == "hot":
            self.workload.set_hot(args[0], args[1], now_ns=self.now)
            self._reschedule_requests()
        elif verb == "rate":
            self.workload.set_rate(args[0], now_ns=self.now)
            self._reschedule_requests()

    def _restart_or_join(self, sim: SimNode, verb: str, args: tuple[Any, ...]) -> None:
        """``restart`` kills a running node first (kill -9, then boot); ``join`` starts a
        node that is down and leaves a running one alone. The new life joins through the
        ``via`` nodes if named (up or not: a seed that is down never answers), else
        through every node that is up -- or, with none up, through every other node (a
        daemon restarted with the flags that seed it with its peers: it stays joining, on
        its degraded quota, until one is back; never a cluster of one that takes itself for
        all of it) -- at once or ``serve_before_join`` later; the network
        puts it on the side of a partition that names it (or, unnamed, in the remainder),
        as it does any node."""
        same_seed = verb == "restart" and args[1] == "same_seed"
        via, join_after_ns = args[-2], args[-1]
        if verb == "restart" and sim.node is not None:
            self._stop_node(sim)
        if sim.node is not None:
            return
        if via is not None:
            seeds = [self.nodes[name].addr for name in via if name != sim.name]
        else:  # with none up, every other node: its flags name them, up or not
            seeds = [s.addr for s in self.nodes.values() if s.node is not None] or [
                s.addr for s in self.nodes.values() if s is not sim
            ]
        self._start_node(sim.name, seeds=seeds, same_seed=same_seed, join_after_ns=join_after_ns)

    def _reschedule_requests(self) -> None:
        self._schedule_request()  # the marker already queued is now stale

    def _set_rule(self, sim: SimNode, key: str, value: str | None) -> None:
        node = self._live(sim)
        if node is None:
            return
        mono, wall = sim.clock.readings(self.now)
        self._guard(sim, lambda: node.set_rule(key, value, now_ns=mono, wall_ns=wall))
        entry = node.registry.entry(key)
        stamp = None if entry is None else entry.stamp
        self.checkers.on_rule_change(key, value, self.now, stamp, sim.name)
        self._drain(sim)
