"""What truly happened in a run, as the checkers reconstruct it from the timeline.

Theory of operation. The checkers judge each node by what it could have known, and that
depends on what truly happened: which life of which node was running and when, which
links were cut or lossy, how long a datagram could take, whose clock was stepped or
skewed, and which nodes made up the cluster. :class:`History` rebuilds all of it from the
timeline actions the world reports (``apply``, in time order) and answers the checkers'
questions about it: ``link_clean(a, b, start, end)``, ``delay_bound(start, end)``,
``clock_touched(node, before)``, the cluster's ``members`` and, online, how long each node
has been cut off in a minority (``minority_since``).

It mirrors the world's rules for its verbs (``sim/world.py``): every node not ``absent``
boots at 0 s; ``restart`` starts a new life (the world reports a ``crash`` first when the
node was running); ``join`` starts one only if the node is down; ``leave`` stops a node that
runs and is not paused; a pause ends by itself after its duration or at ``resume``. A
partition's unnamed nodes form one more group; ``heal`` ends partitions, one-way cuts,
isolations and flaps. For a minority, a flapping link counts as up (the node may still hear
through it) and loss as a working link; for what a node *must* have heard
(``link_clean``), both count as cut. The cluster's members are the nodes some other
member has reported alive (``heard``, from the membership events the checkers see), and the
first node, which needs no one; a graceful leave takes one out until it is heard of again.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from .bounds import delay_bound_ns
from .network import LinkConfig
from .scenario import Action, Scenario

NEVER = 2**62
#: Verbs that change a link setting of every link (they restore it, too).
LINK_SETTINGS = ("loss", "duplicate", "reorder", "latency")
#: Verbs that step or skew a node's clock.
CLOCK_VERBS = ("skew", "jump", "drift")
#: Verbs that are not faults: a run with only these (and no lossy network) is fault-free.
QUIET_VERBS = ("set_rule", "remove_rule", "reset", "hot", "rate")


@dataclass(slots=True)
class Life:
    """One run of a node's process, from its start to its crash or departure."""

    node: str
    number: int
    """1 for the boot, then one more per restart or join."""
    started_at: int
    seeded: bool
    """Whether it started with seeds to join through (else it is a cluster of its own)."""
    stopped_at: int = NEVER
    reachable_at: int = 0
    """When its cluster runtime started (later than ``started_at`` when it served before
    joining): from then on it sends, receives and ticks."""
    left: bool = False
    """Stopped by a graceful leave (it handed its counts over first)."""
    pauses: list[tuple[int, int]] = field(default_factory=list)
    """``[start, end)`` of each pause (``end`` NEVER while it lasts)."""

    @property
    def key(self) -> tuple[str, int]:
        return (self.node, self.number)

    def paused_during(self, start: int, end: int) -> bool:
        """Whether the process stood still at some instant of ``[start, end]``."""
        return any(p < end + 1 and start < q for p, q in self.pauses)

    def running_through(self, start: int, end: int) -> bool:
        """Up and never paused over ``[start, end]``."""
        return (
            self.started_at <= start
            and end < self.stopped_at
            and not self.paused_during(start, end)
        )


@dataclass(frozen=True, slots=True)
class _Cut:
    """A network fault over ``[start, end)``: which directed links it may cut."""

    start: int
    end: int
    verb: str
    args: tuple[Any, ...]
    lossy: bool = False  # loss only: counts as a cut for link_clean, never for minorities

    def cuts(self, src: str, dst: str, *, for_minority: bool) -> bool:
        verb, args = self.verb, self.args
        if verb == "loss":
            return not for_minority
        if verb == "flap":
            return not for_minority and {src, dst} == {args[0], args[1]}
        if verb == "isolate":
            return args[0] in (src, dst)
        if verb == "partition_oneway":
            return src in args[0] and dst in args[1]
        # partition: nodes of different groups; unnamed nodes form one more group
        return _group(args, src) != _group(args, dst)


def _group(groups: tuple[Any, ...], node: str) -> int:
    for index, group in enumerate(groups):
        if node in group:
            return index
    return -1


class History:
    """The run as it truly happened (see the module docstring); fed in time order."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.lives: dict[str, list[Life]] = {name: [] for name in scenario.node_names}
        self._cuts: list[_Cut] = []
        self._open: dict[str, _Cut] = {}  # open faults ended by heal, by a key per fault
        self._links: list[tuple[int, LinkConfig]] = [(0, scenario.network.link_config())]
        self.clock_changes: dict[str, list[int]] = {name: [] for name in scenario.node_names}
        self.drifted: set[str] = set()
        """Nodes whose clocks were ever set drifting (by a nonzero ``drift``)."""
        self.max_drift_ppm: dict[str, float] = {}
        """The fastest or slowest each drifted node's clocks ever ran, in ppm (absolute)."""
        self.offsets: dict[str, list[tuple[int, int]]] = {n: [(0, 0)] for n in scenario.node_names}
        """Each node's wall clock minus true time, from each instant on (skews and steps;
        drift not included)."""
        #: The cluster as it truly is: every node some other member has heard of (or the
        #: first node, which needs no one), not gone gracefully since. A crashed node still
        #: counts (the others cannot tell); a node that has not joined yet does not (no one
        #: counts it), nor one that left until it is heard of again.
        self.members: set[str] = set()
        self.faults_seen = scenario.network.loss > 0 or scenario.network.bandwidth_bytes_per_s > 0
        self.faults_but_graceful = self.faults_seen
        """Like ``faults_seen``, but graceful leaves and joins are not faults."""
        self.last_disturbance = 0
        """The last instant a fault started or ended (or a node started or stopped)."""
        self.disturbances: list[int] = []
        """Every such instant, in time order."""
        self._minority_since: dict[str, int | None] = {}
        #: Members first heard of (joined, or rejoined after leaving) while a cut was open,
        #: and who has heard of them since: a node cut off from every such hearer cannot
        #: know of them (``_update_minorities``).
        self._heard_behind: dict[str, set[str]] = {}
        self.resync_begun: dict[tuple[str, int], int] = {}
        """When each life that resynced began (``resync_began``; ``sim/resync_wait.py``)."""
        self._auto_resume: list[tuple[int, str]] = []
        self.now = 0
        absent = getattr(scenario, "absent", ())  # nodes that join later, if any
        for name in scenario.node_names:
            if name not in absent:
                self._start(name, 0, seeded=any(self.lives.values()))

    # --- feeding ----------------------------------------------------------------------

    def advance(self, now: int) -> None:
        """Let time pass to ``now``: pauses that end by themselves end."""
        while self._auto_resume and self._auto_resume[0][0] <= now:
            at, name = self._auto_resume.pop(0)
            self.now = max(self.now, at)
            self._resume(name, at)
        self.now = max(self.now, now)

    def apply(self, action: Action, now: int) -> None:
        """One timeline action, at ``now``."""
        self.advance(now)
        verb, args = action.verb, action.args
        if verb not in QUIET_VERBS:
            self.faults_seen = self.faults_seen or verb != "heal"
            self.faults_but_graceful |= verb not in ("heal", "leave", "join")
            self._disturbed(now)
        if verb in ("partition", "partition_oneway", "isolate", "flap"):
            self._open_cut(verb, args, now)
        elif verb == "heal":
            for key in [k for k in self._open if k not in ("loss", "misdeliver")]:
                self._close(key, now)
        elif verb == "misdeliver":  # a datagram that reaches another node is lost to its own
            self._close("misdeliver", now)
            if args[0] > 0:
                self._open["misdeliver"] = _Cut(now, NEVER, "loss", ())
                self._cuts.append(self._open["misdeliver"])
        elif verb in LINK_SETTINGS:
            self._set_link(verb, args, now)
        elif verb in CLOCK_VERBS:
            self.clock_changes[args[0]].append(now)
            offsets = self.offsets[args[0]]
            if verb == "drift" and args[1]:
                self.drifted.add(args[0])
                drift = abs(args[1])
                self.max_drift_ppm[args[0]] = max(self.max_drift_ppm.get(args[0], 0.0), drift)
            elif verb == "skew":
                offsets.append((now, args[1]))
            elif verb == "jump":
                offsets.append((now, offsets[-1][1] + args[1]))
        else:
            self._node_action(verb, args, now)
        self._update_minorities(now)

    def _node_action(self, verb: str, args: tuple[Any, ...], now: int) -> None:
        name = args[0] if args else ""
        life = self.life(name)
        if verb == "crash" and life is not None:
            life.stopped_at = now
        elif verb == "leave" and life is not None and not life.paused_during(now, now):
            life.stopped_at, life.left = now, True
            self.members.discard(name)
        elif verb in ("restart", "join") and life is None:
            seeds = next((a for a in args[1:] if isinstance(a, tuple)), None)
            if seeds is None:
                seeded = any(n != name for n in self.running_nodes())
            else:
                seeded = any(n != name for n in seeds)
            self._start(name, now, seeded=seeded)
        elif verb == "pause" and life is not None and not life.paused_during(now, now):
            life.pauses.append((now, NEVER))
            self._auto_resume.append((now + args[1], name))
            self._auto_resume.sort()
        elif verb == "resume":
            self._resume(name, now)

    def _start(self, name: str, now: int, *, seeded: bool) -> None:
        lives = self.lives[name]
        lives.append(Life(name, len(lives) + 1, now, seeded))
        if not seeded:
            self.members.add(name)  # a cluster of its own: it needs no one to hear of it

    def resync_began(self, name: str, now: int) -> None:
        """``name``'s current life began its resync at ``now`` (the world saw it)."""
        life = self.life(name)
        if life is not None:
            self.resync_begun.setdefault(life.key, now)

    def heard(self, name: str, now: int, hearer: str = "") -> None:
        """``hearer`` reported ``name`` alive at ``now``: if its current life is up, the
        cluster now counts it (for nodes cut off from ``hearer``, only once they can know)."""
        self.advance(now)
        behind = self._heard_behind.get(name)
        if behind is not None and hearer not in behind:
            behind.add(hearer)  # more nodes know of it now
            self._update_minorities(now)
        elif name not in self.members and self.life(name) is not None:
            self.members.add(name)
            if hearer and any(c.start <= now < c.end for c in self._cuts):
                self._heard_behind[name] = {hearer}
            self._update_minorities(now)

    def _disturbed(self, now: int) -> None:
        self.last_disturbance = now
        if not self.disturbances or self.disturbances[-1] != now:
            self.disturbances.append(now)

    def _resume(self, name: str, now: int) -> None:
        life = self.life(name)
        if life is not None and life.pauses and life.pauses[-1][1] == NEVER:
            life.pauses[-1] = (life.pauses[-1][0], now)
            self._disturbed(now)
            self._update_minorities(now)

    def _open_cut(self, verb: str, args: tuple[Any, ...], now: int) -> None:
        if verb == "partition":
            self._close("partition", now)  # a new partition replaces the last one
            key = "partition"
        else:
            key = f"{verb}:{len(self._cuts)}"
        end = min(args[3], NEVER) if verb == "flap" else NEVER
        cut = _Cut(now, end, verb, args)
        self._cuts.append(cut)
        self._open[key] = cut

    def _close(self, key: str, now: int) -> None:
        cut = self._open.pop(key, None)
        if cut is not None:
            index = self._cuts.index(cut)
            self._cuts[index] = replace(cut, end=min(cut.end, now))

    def _set_link(self, verb: str, args: tuple[Any, ...], now: int) -> None:
        link = self._links[-1][1]
        if verb == "loss":
            link = replace(link, loss=args[0])
        elif verb == "duplicate":
            link = replace(link, duplicate=args[0])
        elif verb == "reorder":
            link = replace(link, reorder=args[0], reorder_ns=args[1] or link.reorder_ns)
        else:
            jitter = link.jitter_ns if args[1] is None else args[1]
            link = replace(link, latency_ns=args[0], jitter_ns=jitter)
        self._links.append((now, link))
        self._close("loss", now)
        if link.loss > 0:
            self._open["loss"] = _Cut(now, NEVER, "loss", ())
            self._cuts.append(self._open["loss"])

    # --- lives ------------------------------------------------------------------------

    def left_by(self, now: int) -> set[str]:
        """The nodes some life of which left gracefully at or before ``now``."""
        return {
            name
            for name, lives in self.lives.items()
            if any(life.left and life.stopped_at <= now for life in lives)
        }

    def life(self, name: str) -> Life | None:
        """The node's current life, if it is up (running or paused)."""
        lives = self.lives.get(name)
        if not lives or lives[-1].stopped_at != NEVER:
            return None
        return lives[-1]

    def running_nodes(self, at: int | None = None) -> list[str]:
        """Nodes up and not paused now (or at ``at``, no later than now)."""
        at = self.now if at is None else at
        return [
            name
            for name in self.lives
            if (life := self.life(name)) is not None and not life.paused_during(at, at)
        ]

    # --- questions --------------------------------------------------------------------

    def link_clean(self, src: str, dst: str, start: int, end: int) -> bool:
        """Whether every datagram ``src`` sent to ``dst`` in ``[start, end]`` arrived: no cut,
        flap, isolation or loss on that link at any instant of it."""
        for cut in self._cuts:
            if cut.start <= end and start < cut.end and cut.cuts(src, dst, for_minority=False):
                return False
        return True

    def delay_bound(self, start: int, end: int) -> int:
        """The longest a datagram sent in ``[start, end]`` could take (the worst setting)."""
        worst = 0
        for index, (at, link) in enumerate(self._links):
            until = self._links[index + 1][0] if index + 1 < len(self._links) else NEVER
            if at <= end and start <= until:
                worst = max(worst, delay_bound_ns(link))
        return worst

    def clock_touched(self, name: str, before: int) -> bool:
        """Whether ``name``'s clock was skewed, stepped or set drifting before ``before``."""
        changes = self.clock_changes.get(name)
        return changes is not None and bool(changes) and changes[0] <= before

    # --- minorities -------------------------------------------------------------------

    def connected(self, name: str, now: int) -> set[str]:
        """Running nodes that ``name`` can reach and hear from at ``now`` (itself included)."""
        cuts = [c for c in self._cuts if c.start <= now < c.end]
        out = {name}
        for other in self.running_nodes(now):
            if other == name:
                continue
            if any(
                c.cuts(name, other, for_minority=True) or c.cuts(other, name, for_minority=True)
                for c in cuts
            ):
                continue
            out.add(other)
        return out

    def _update_minorities(self, now: int) -> None:
        """Who is cut off from a majority of the cluster as it can know it: a member that
        joined, or rejoined after a graceful leave, on the far side of a cut is news that
        cannot reach a node cut off from the member that heard it, so it does not count for
        that node until they are connected (the near side takes itself for a majority of
        the cluster it knows: ``docs/design.md``, what remains)."""
        behind = self._heard_behind
        if behind and not any(c.start <= now < c.end for c in self._cuts):
            behind.clear()
        for name in self.lives:
            life = self.life(name)
            if life is None or life.paused_during(now, now):
                self._minority_since.pop(name, None)
                continue
            if name not in self.members:
                self._minority_since.pop(name, None)  # not joined: it decides degraded
                continue
            connected = self.connected(name, now)
            members = self.members
            if behind:
                members = {m for m in members if not connected.isdisjoint(behind.get(m, connected))}
            minority = 2 * len(connected & members) <= len(members)
            if not minority:
                self._minority_since[name] = None
            elif self._minority_since.get(name) is None:
                self._minority_since[name] = now

    def minority_since(self, name: str) -> int | None:
        """Since when ``name`` has been running cut off from a majority of the cluster
        (continuously, and unpaused), or None if it is not now."""
        return self._minority_since.get(name)
