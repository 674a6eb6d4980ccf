"""Checkers: they observe a simulated run and state its invariants in the mission's terms.

They never change what they observe, nor reach into the world: the world hands them every
fact they judge by -- each decision (with the decider's wall clock: its windows), answer,
membership change (with the :class:`Liveness` of its subject), join, timeline action and
escaped exception, the datagrams taken while membership news matters
(``wants_datagrams``), the checks left unanswered, and at the end the running nodes.
From the timeline they rebuild what truly happened (:mod:`~meshlimit.sim.history`), from
each life's events what it believed (:mod:`~meshlimit.sim.views`), and hold the run to the
design (``docs/design.md``; ``docs/simulator.md`` states every bound with its formula).
Each of these is a verdict that fails the run:

- ``over_admission``: a client window admitted more than the bound its actual deciders
  and faults allow (:mod:`~meshlimit.sim.windows`), or one full-capacity decider alone
  more than the capacity; ``counts_lost``: more than the bound with the counts a later
  decider must have received by hand-over or gossip (:mod:`~meshlimit.sim.knowledge`);
  ``over_share``: a degraded decider more than its share;
- ``degraded_without_cause``: a degraded decision in a run without faults (graceful leaves
  and joins are none), by a node whose view has held every member alive for longer than a
  forward takes to time out;
- ``not_owner``: a strict-mode decision at full capacity by a node that did not own the
  client in its own view (its own checks) nor in any live node's when the check was sent
  (forwarded ones); ``minority_decided_at_full``: one by a node whose own view held a
  minority, or that had been cut off in a minority longer than detection takes
  (:mod:`~meshlimit.sim.deciders`);
- accounting (:mod:`~meshlimit.sim.accounting`): ``answered_twice``, a check answered after
  it was answered (or never asked); ``decided_twice``, a datagram's forwarded checks decided
  again from a second copy, or more forwarded checks decided than forwarded;
  ``foreign_answer``, a forwarded check answered by a reply from another node than the owner
  asked; ``uncounted_admission``, more "allowed" answers than admissions counted;
  ``unanswered``, a check left waiting past its forward deadline;
- each decider against its own algorithm (:mod:`~meshlimit.sim.algorithm`):
  ``sliding_window_broken`` (the previous window's weight) and ``sustained_rate_exceeded``
  (``k`` consecutive windows over ``k x limit + burst``); ``sliding_overweight``: the weight
  over what it must have counted of other lives too (:mod:`~meshlimit.sim.sliding`);
- ``under_admission``: in windows judged at the exact bound, refusals that the cluster-wide
  count would have admitted, beyond 1% (floor 3); ``reset_not_kept``: a refusal, after an
  operator reset surely reached the refusing node, that the admissions since it would not
  explain;
- ``slow_detection``: a crashed node not declared dead by a live observer within the
  detection bound; ``false_suspicion``: a running node suspected in a run without faults;
  ``dead_too_soon``: a death no suspicion of the base timeout justifies
  (:mod:`~meshlimit.sim.suspicions`), or one its own timer declared before Lifeguard's
  timeout for its suspicion; ``health_not_recovered``, ``health_not_raised``: a local
  health score not back to 0 after a quiet span, or not up after a refutation
  (:mod:`~meshlimit.sim.lifeguard`); ``stale_member_state``: a node that kept a member's
  record older than the news a datagram just brought it (:mod:`~meshlimit.sim.news`), or
  whose record went back, reaping or not;
- at the end (:mod:`~meshlimit.sim.endstate`): rules, membership, replicated counts and
  clock-offset estimates each within their stated bound; ``stale_rule``, a decision under
  a rule its registry no longer held (:mod:`~meshlimit.sim.rules_in_force`);
- what a client is told (:mod:`~meshlimit.sim.answers`): ``remaining_overstated``, more
  ``remaining`` than the decider's own admissions leave; ``retry_now``, a refusal saying
  ``retry_after`` 0 (or "never" for a cost that fits);
- ``stranded_wait``, ``own_write_lost``, ``holder_behind`` (:mod:`~meshlimit.sim.stranded`,
  ``own_writes``, ``promoted``); ``exception``: an exception escaped a node. Measured, not judged: detection times,
  false suspicions in faulty runs, under-admission outside exact windows, windows by bound.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter
from typing import TYPE_CHECKING, Any

from meshlimit.cluster.node.config import NodeConfig
from meshlimit.cluster.node.forwarding import MAX_TIMEOUT_MULT
from meshlimit.cluster.wire.messages import MemberState
from meshlimit.core.decision import Decision
from meshlimit.core.registry import RESET_PREFIX
from meshlimit.core.rules import Rule

from . import endstate
from .accounting import Accounting
from .algorithm import OwnCounts, Quiet, sustained
from .answers import Answers
from .bounds import UNBOUNDED, detection_bound_ns
from .deciders import Deciders
from .events import NS_PER_S
from .history import History, Life
from .knowledge import Knowledge, counter_bytes
from .lifeguard import Lifeguard
from .liveness import Liveness
from .news import News
from .own_writes import own_write_kept
from .refusals import Refusals
from .rules_in_force import RulesInForce
from .scenario import Action, Scenario
from .sliding import judge_sliding
from .stranded import judge_stranded
from .suspicions import Suspicions, slow_detections
from .verdicts import Findings, Violation
from .views import Rings, View
from .windows import AT_MOST_CAPACITY, EXACT, LifeKey, WindowKey, WindowTally, judge

if TYPE_CHECKING:  # pragma: no cover
    from meshlimit.cluster.membership import MemberEvent, Membership
    from meshlimit.cluster.node import Node

    from .network import Delivery

#: Healthy strict windows may refuse what one perfect node would admit only this rarely
#: (a forwarded check decided a moment before one counted earlier reaches the tally).
UNDER_ADMISSION_RATE = 0.01
UNDER_ADMISSION_FLOOR = 3
#: A clock stepped back makes at most this many of a client's windows uncertain.
_MAX_UNCERTAIN_WINDOWS = 100


class Checkers:
    """Every invariant of a run; ``violations`` is empty when the run is correct."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.config = NodeConfig.preset("sim", "x", ("x", 0), mode=scenario.mode)
        self.local = scenario.mode == "local"
        self.history = History(scenario)
        self.views: dict[LifeKey, View] = {}
        self.rings = Rings()
        self.windows: dict[WindowKey, WindowTally] = {}
        self.violations: list[Violation] = []
        self.judged: Counter[str] = Counter()
        """Client windows by the bound they were judged at (``windows.BOUNDS``)."""
        self.decisions: Counter[str] = Counter()  # path -> count
        self.allowed: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.unavailable = 0
        self.forward_latencies_ns: list[int] = []
        self.under_admissions = 0
        self.under_admissions_healthy = 0
        self.detection_ns: list[int] = []
        self.false_suspicions = 0
        self.last_heal_at = 0
        self.timeline_rows: list[tuple[int, str]] = []
        self.admitted_series: dict[int, int] = Counter()  # second -> admitted (for reports)
        self.refused_series: dict[int, int] = Counter()
        self.rule_changes = 0
        self.last_rule_at = 0
        self._window_ns: dict[str, int] = {}
        self._high_water: dict[LifeKey, int] = {}  # each life's latest wall reading
        self._findings = Findings()
        self._crashed_at: dict[str, int] = {}
        self._dead_seen: set[tuple[str, str]] = set()
        self._expect_dead: list[tuple[str, int, LifeKey, int]] = []  # subject, at, observer, by
        self._rule_writes: dict[str, list[endstate.RuleWrite]] = {}  # by registry key
        self._final: dict[str, tuple[Node, int]] | None = None
        self._final_at = 0
        self.accounting = Accounting(scenario.workload.cost)
        self._first_seen: dict[tuple[str, str], int] = {}  # (client, series) -> first decided
        self._exceptions: list[str] = []  # escaped a node; each one is a violation
        self._labels: dict[WindowKey, str] = {}
        detect_ns = detection_bound_ns(self.config.membership, scenario.nodes)
        self.deciders = Deciders(
            self.history, self.views, self.rings, self.config, local=self.local,
            detect_ns=detect_ns, finding=self._findings.add,
        )  # fmt: skip
        self.refusals = Refusals(self.history, self.windows, self._findings.add)
        self.own = OwnCounts()
        self.rules_used = RulesInForce()
        self.suspicions = Suspicions(self.history, self.config.membership)
        self.news = News(sealed=scenario.authenticated)
        self.lifeguard = Lifeguard(self.history, self.config.membership, sealed=self.news.sealed)
        self.news.heard = self.lifeguard.on_news
        self.answers = Answers(self._findings.add, self.history.life)
        self._event_times: list[int] = []  # every membership event, in time order

    # --- observations: decisions ------------------------------------------------------

    def on_admissions(
        self,
        node: str,
        log: list[tuple[int, str, Rule, int, bool, str]],
        now: int,
        delivery: Delivery | None = None,
        rules_digest: int = 0,
    ) -> None:
        """Decisions made at ``node``, each with the wall time it decided at; ``delivery``:
        the datagram that made them, if one did; ``rules_digest``: its registry's before."""
        self.history.advance(now)
        life = self._life(node)
        self.accounting.from_datagram(life, delivery, log, now)
        view = self._view(life)
        decisions, decided, tally = self.decisions, self.accounting.decided, self._tally
        deciders = self.deciders
        note_rule = self.rules_used.note
        for wall, client, rule, cost, allowed, path in log:
            note_rule(life.key, client, rule, rules_digest)
            decisions[path] += 1
            decided(node, client, path, cost, allowed)
            full = path != "degraded"
            if not full and not self.history.faults_but_graceful:
                deciders.judge_degraded(life, view, client, now)
            single = not rule.also  # each limit tallied apart; such a refusal not judged
            for limit in rule.limits:
                tally(life, view, wall, client, limit, cost, allowed, full, now, single)
            high = self._high_water[life.key]
            self.answers.logged(life, wall, client, rule, cost, allowed, path, high, now)
            if allowed and cost and full:
                deciders.judge_full(life, view, client, path, now)

    def _tally(
        self,
        life: Life,
        view: View,
        wall: int,
        client: str,
        rule: Rule,
        cost: int,
        allowed: bool,
        full: bool,
        now: int,
        single: bool,
    ) -> None:
        """One limit's part of a decision: its window tally, or the judgement of a refusal."""
        key, series, window_ns = life.key, rule.series, rule.window_ns
        if cost and (client, series) not in self._first_seen:
            self._first_seen[(client, series)] = now
        # _charged_window's common case inlined: the life's clock never read a later window.
        index = wall // window_ns
        high = self._high_water.get(key)
        if high is None or wall > high:
            self._high_water[key] = high = wall
        relived = index < high // window_ns
        if relived:
            index, relived = self._charged_window(key, wall, client, rule)
            self.own.stepped_back.add(key)
        if not allowed:
            if cost and full and not relived and single:
                self.refusals.judge(life, wall, client, rule, cost, now)
            return
        if not cost:
            return
        wkey = (client, series, index)
        window = self.windows.get(wkey)
        if window is None:
            window = self.windows[wkey] = WindowTally()
            self._window_ns[series] = window_ns
            self.refusals.carry.counted(client, series, index)
        capacity, limit = rule.capacity, rule.limit
        if window.capacity and (window.capacity != capacity or window.limit != limit):
            window.changed = True
        window.capacity, window.limit = max(window.capacity, capacity), max(window.limit, limit)
        tally = window.add(key, now, cost, full=full)
        self.own.admit(
            key, wall, client, rule, cost, full=full, relived=relived,
            reset=client in self.refusals.resets,
        )  # fmt: skip
        tally.relived |= relived
        if not full:
            share = self.deciders.share(view, client, rule, wall // window_ns, now)
            tally.share = max(tally.share, share)

    def on_clock_step(self, node: str, wall_before: int) -> None:
        """A skew or jump is about to set ``node``'s wall clock: its reading before counts."""
        if (life := self.history.life(node)) is not None:
            self._high_water[life.key] = max(wall_before, self._high_water.get(life.key, -1))

    def _charged_window(
        self, life: LifeKey, wall: int, client: str, rule: Rule
    ) -> tuple[int, bool]:
        """The window a decision is tallied in (its wall clock's), and whether that clock
        had read a later window before (it stepped back). A window algorithm never rolls
        back: the node then charges the newer window its counter reached, which depends on
        merges and sweeps unseen here. So the bound of the wall clock's window grows by a
        capacity (or share) for that life (``windows.CLOCK_STEPPED_BACK``), and windows up
        to its latest reading are uncertain for under-admission."""
        window_ns = rule.window_ns
        index = wall // window_ns
        high = self._high_water.get(life)
        if high is None or wall > high:
            self._high_water[life] = high = wall
        reached = high // window_ns
        if index >= reached:
            return index, False
        for k in range(index, min(reached, index + _MAX_UNCERTAIN_WINDOWS) + 1):
            self.refusals.uncertain.add((client, rule.series, k))
        return index, True

    def on_decision(
        self,
        node: str,
        client: str,
        decision: Decision,
        started: int,
        now: int,
        *,
        asked: str | None = None,
        replied_by: str | None = None,
    ) -> None:
        """The answer a client got (the check's own path; forwarded ones arrive late). A
        forwarded one names the owner it was ``asked`` of and the node whose reply gave it
        (``replied_by``): the two must be one (``foreign_answer``)."""
        path = decision.path
        admitted = decision.allowed and not decision.shadowed  # a shadow refusal counts not
        self.accounting.answered(
            node, client, path, admitted, started, now, asked=asked, replied_by=replied_by
        )
        self.answers.answered(node, client, decision, started, now, replied_by)
        if asked is not None and (life := self.history.life(node)) is not None:
            judge_stranded(self._findings.add, life, self._view(life), client, asked, started, now)
        (self.allowed if decision.allowed else self.refused)[path] += 1
        (self.admitted_series if decision.allowed else self.refused_series)[now // NS_PER_S] += 1
        if path == "overloaded" and not self.history.faults_but_graceful:
            life = self._life(node)
            self.deciders.judge_degraded(life, self._view(life), client, now, "overloaded")
        if path == "forwarded":
            self.forward_latencies_ns.append(now - started)

    def on_ticket(self, node: str, client: str, now: int) -> None:
        """A check ``node`` forwarded to the client's owner (its answer comes later)."""
        self.accounting.forwarded(client)

    def on_unanswered(self, left: list[tuple[str, int, int]], end: int) -> None:
        """The checks still awaiting an answer at ``end``: ``(node, life number, asked at)``."""
        self.history.advance(end)
        timeout = MAX_TIMEOUT_MULT * self.config.forward_timeout_ns  # the adaptive one's most
        self.accounting.unanswered(left, self.history.lives, end, timeout)

    def on_stray_answer(self, node: str, ticket: int, now: int) -> None:
        """A node answered a check that was not waiting for an answer (already answered,
        never asked, or asked of an earlier life): one check, two decisions."""
        self.accounting.stray(node, ticket, now)

    def on_unavailable(self, node: str, client: str, now: int) -> None:
        """A request reached a node that is down (the client would retry elsewhere)."""
        self.unavailable += 1

    # --- observations: rules, actions, membership -------------------------------------

    def on_rule_change(
        self, key: str, value: Any, now: int, stamp: Any = None, by: str = ""
    ) -> None:
        """A registry entry written at ``by``; ``stamp``: of the entry it holds right after."""
        self.rule_changes += 1
        self.last_rule_at = now
        if by and stamp is not None:
            own_write_kept(self._findings.add, self.history.life(by), key, stamp, now)
        if stamp is not None:
            writer = self.history.life(str(stamp[2]))
            write = endstate.RuleWrite(tuple(stamp), value, now, writer.key if writer else None)
            self._rule_writes.setdefault(key, []).append(write)
            if key.startswith(RESET_PREFIX) and writer is not None:
                view = self._view(writer)
                alive = frozenset(m for m, st in view.states.items() if st == MemberState.ALIVE)
                self.refusals.on_written(key[len(RESET_PREFIX) :], writer.key, alive, now, stamp[0])

    def on_action(self, action: Action, now: int) -> None:
        """A timeline action, before the world carries it out."""
        verb, args = action.verb, action.args
        self.timeline_rows.append((now, str(action)))
        if verb == "crash" and self.history.life(args[0]) is not None:
            self._crashed(args[0], now)
        self.history.apply(action, now)
        if verb in ("restart", "join"):
            self._expect_dead = [e for e in self._expect_dead if e[0] != args[0] or e[3] < now]
        if verb in ("heal", "restart", "join", "resume"):
            self.last_heal_at = now
        if verb == "reset":
            agreed = all(
                self._view(life).live(other)
                for name in self.history.running_nodes()
                if (life := self.history.life(name)) is not None
                for other in self.history.running_nodes()
            )
            self.refusals.on_reset(args[0], now, views_agreed=agreed)
            self.answers.reset(args[0])

    def _crashed(self, name: str, now: int) -> None:
        """Every running observer that holds ``name`` live must declare it dead in time."""
        self._crashed_at[name] = now
        by = now + detection_bound_ns(self.config.membership, len(self.history.members))
        for other in self.history.running_nodes():
            life = self.history.life(other)
            if other != name and life is not None and self._view(life).live(name):
                self._expect_dead.append((name, now, life.key, by))

    def on_membership(
        self, observer: str, event: MemberEvent, now: int, *, subject_liveness: Liveness,
        membership: Membership | None = None, by_datagram: bool = True,
    ) -> None:  # fmt: skip
        """A membership change at ``observer``; ``subject_liveness`` is the state of the node
        the event is about, as the world knows it now (``observer`` can only guess it);
        ``membership``: the observer's, read only, after the input (``by_datagram``) that
        caused the change."""
        self.history.advance(now)
        self._event_times.append(now)
        life = self._life(observer)
        view = self._view(life)
        self.suspicions.on_event(life, view, event.node, event.new_state, now)
        if membership is not None:
            self.lifeguard.on_event(life, view, event.node, event.new_state, now, membership,
                                    by_datagram=by_datagram)  # fmt: skip
        view.apply(event.node, event.new_state, now)
        self.news.wanted = any(
            state in (MemberState.SUSPECT, MemberState.DEAD)
            for lives in self.history.lives.values()
            if lives and (latest := self.views.get(lives[-1].key)) is not None
            for state in latest.states.values()
        )
        subject = event.node
        if event.new_state in (MemberState.ALIVE, MemberState.SUSPECT):
            self.history.heard(subject, now, observer)
        if event.new_state in (MemberState.DEAD, MemberState.LEFT):
            self._expect_dead = [  # met in time; a late verdict stays, to be judged
                e
                for e in self._expect_dead
                if not (e[0] == subject and e[2] == life.key and now <= e[3])
            ]
        if event.new_state == MemberState.DEAD and subject in self._crashed_at:
            key = (observer, subject)
            if key not in self._dead_seen and subject_liveness is Liveness.DOWN:
                self._dead_seen.add(key)
                self.detection_ns.append(now - self._crashed_at[subject])
        if event.new_state == MemberState.SUSPECT and subject_liveness is Liveness.RUNNING:
            if not self.history.faults_seen:
                self._findings.add(
                    "false_suspicion", life, "", now, f"suspected {subject} in a run without faults"
                )
            if self._quiet(now):
                self.false_suspicions += 1

    def _quiet(self, now: int) -> bool:
        """No fault open: every member running and no partition, loss or clock fault."""
        history = self.history
        running = set(history.running_nodes())
        return (
            running == history.members
            and all(not changes for changes in history.clock_changes.values())
            and all(history.link_clean(a, b, now, now) for a in running for b in running if a != b)
        )

    @property
    def wants_datagrams(self) -> bool:
        """Whether the world should hand over each datagram a node takes (``on_datagram``):
        while some node holds some member down (see :mod:`~meshlimit.sim.news`)."""
        return self.news.wanted

    def on_datagram(
        self, node: str, payload: bytes, members: list[tuple[str, Any, str, int]], now: int,
        health: int | None = None,
    ) -> None:  # fmt: skip
        """``node`` took ``payload``; ``members`` is its member list right after, ``health``
        its local health score."""
        self.lifeguard.health_after = health
        self.news.on_datagram(node, payload, members, now, self.history.life(node))

    def on_exception(self, message: str) -> None:
        """An exception escaped a node (``message`` names the node, instant and error)."""
        self._exceptions.append(message)

    def on_final_state(self, nodes: dict[str, tuple[Node, int]], now: int) -> None:
        """The running nodes at the end, each with its wall clock's offset from true time:
        for the end-state verdicts (read only)."""
        self._final, self._final_at = nodes, now

    @property
    def reset_clients(self) -> set[str]:
        """Clients an operator reset during the run."""
        return set(self.refusals.resets)

    # --- lives and views ----------------------------------------------------------------

    def _life(self, node: str) -> Life:
        """The node's latest life (a node that just left still drains its last decisions)."""
        lives = self.history.lives.setdefault(node, [])
        if not lives:  # a node the timeline never started: take it as started now
            lives.append(Life(node, 1, self.history.now, seeded=True))
        return lives[-1]

    def on_joined(self, node: str, now: int) -> None:
        """``node``'s life knows the ring from ``now`` (a seed's join reply, or no seed)."""
        self._view(self._life(node)).joined(now)

    def _view(self, life: Life) -> View:
        view = self.views.get(life.key)
        if view is None:
            view = self.views[life.key] = View(
                life.node, life.started_at, knows_ring=not life.seeded,
                config=self.config.membership,
            )  # fmt: skip
        return view

    # --- verdicts ---------------------------------------------------------------------

    def finish(self, end_ns: int) -> None:
        """Judge every window, the accounting and the end state; fills ``violations``."""
        self.history.advance(end_ns)
        for view in self.views.values():
            view.advance(end_ns)  # the reaping since each life's last event
        for message in self._exceptions:
            self.violations.append(Violation("exception", message))
        self.violations.extend(self.accounting.violations())
        self._judge_windows()
        self.violations.extend(self.own.findings)
        if not self.local:
            quiet = Quiet(self._event_times, sorted(self.history.disturbances), self.views,
                          self.history)  # fmt: skip
            self.violations += sustained(self.windows, self._labels, quiet, self.own.stepped_back,
                                         self.window_ns, self.refusals.resets)  # fmt: skip
        self._check_under_admission()
        self.violations += slow_detections(self.history, self._expect_dead, end_ns)
        if self._final is not None:  # after the last fault and membership change, health is 0
            since = max([self.history.last_disturbance, *self._event_times[-1:]])
            self.lifeguard.judge_health(self._final, self.views, since, end_ns)
        self.violations += self.suspicions.findings + self.news.findings + self.lifeguard.findings
        self.deciders.check_forwarded()
        self.violations.extend(self._findings.violations())
        if self._final is not None:
            self.violations += endstate.judge(self, self._final, self._final_at, self._rule_writes)

    def _judge_windows(self) -> None:
        firsts = sorted(self._first_seen.values())
        self.knowledge = knowledge = Knowledge(
            self.history, self.views, self.rings, local=self.local,
            gossip_interval_ns=self.config.gossip_interval_ns, membership=self.config.membership,
            counters=lambda at: bisect_right(firsts, at),
            round_bytes=getattr(self.config, "handover_bytes_per_round", UNBOUNDED),
            counter_bytes=counter_bytes(self._first_seen, self.history.lives),
            replicas=getattr(self.config, "replicas", 0),
            resync_wait_ns=getattr(self.config, "resync_wait_ns", 0),
        )  # fmt: skip
        end, verdicts = self.history.now, {}
        for key, window in self.windows.items():
            client, series, index = key
            first = window.first_at

            def known(a: LifeKey, b: LifeKey, c: str, until: int, first: int = first) -> int:
                return knowledge.known_before(a, b, c, until, first)

            verdict = judge(
                key, window, token_bucket=series.startswith("token_bucket"), local=self.local,
                resets=self.refusals.touches(client, window, end, index, self._window_ns[series]),
                known=known,
                resend_ns=self.config.gossip_interval_ns)  # fmt: skip
            self.judged[verdict.label] += 1
            verdicts[key] = verdict
            self._labels[key] = verdict.label
            nodes = tuple(sorted({life[0] for life in window.lives}))
            if window.admitted > verdict.bound:
                kind = "over_admission"
                if window.admitted <= verdict.without_knowledge:
                    kind = "counts_lost"  # held to what hand-over or gossip must have carried
                self.violations.append(Violation(
                    kind, f"admitted {window.admitted} > bound {verdict.bound} ({verdict.label};"
                    f" capacity {window.capacity}, {window.paths()})", client, index, nodes,
                ))  # fmt: skip
            for (node, number), admitted, allowed in verdict.over_one:
                full = window.lives[(node, number)].full
                self.violations.append(Violation(
                    "over_admission" if full else "over_share",
                    f"{node} (life {number}) alone admitted {admitted} >"
                    f" {'capacity' if full else 'its share'} {allowed}", client, index, (node,),
                ))  # fmt: skip
        self.violations += judge_sliding(self.windows, verdicts, self._window_ns, self.history
                                         .clock_touched, knowledge.known_before, self.refusals)  # fmt: skip

    def _check_under_admission(self) -> None:
        """Measure under-admission; in windows judged exact (strict) it must stay rare."""
        under, judged = self.refusals.under, self.refusals.judged
        self.under_admissions = len(under)
        healthy = [key for key in under if self._labels.get(key) == EXACT]
        self.under_admissions_healthy = len(healthy)
        allowance = max(UNDER_ADMISSION_FLOOR, UNDER_ADMISSION_RATE * judged)
        if not self.local and len(healthy) > allowance:
            client, _, window = healthy[0]
            self.violations.append(Violation(
                "under_admission", f"{len(healthy)} refusals in exact windows that the"
                f" cluster-wide count would have admitted (allowance {allowance:.0f} of {judged}"
                " judged)", client, window,
            ))  # fmt: skip

    def window_ns(self, series: str) -> int:
        """The window length of a counting series seen in the run."""
        return self._window_ns.get(series) or int(series.split(":")[1])

    # --- measures for reports -----------------------------------------------------------

    @property
    def refusals_judged(self) -> int:
        """Refusals judged against the cluster-wide count (for reports)."""
        return self.refusals.judged

    def summary(self) -> dict[str, Any]:
        """How many windows were judged at which bound, and the share held to at most the
        capacity (the exact bound, or the tighter degraded-only one)."""
        total = sum(self.judged.values())
        at_most = sum(self.judged[label] for label in AT_MOST_CAPACITY)
        return {
            "windows_by_bound": dict(sorted(self.judged.items())),
            "windows_at_most_capacity": round(at_most / total, 4) if total else None,
        }

    def peak_ratio(self) -> float:
        """The highest admitted/capacity over all client windows."""
        return max(
            (w.admitted / w.capacity for w in self.windows.values() if w.capacity), default=0.0
        )

    def windows_checked(self) -> int:
        return len(self.windows)
