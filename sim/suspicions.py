"""Deaths against SWIM's timers: no member declared dead before a suspicion could run out.

Theory of operation. The checkers replay every membership event into each life's view
(:mod:`~meshlimit.sim.views`); this verdict holds those views to the protocol's suspicion
timer (``cluster/membership/suspicion.py``, ``docs/design.md``).

**No death too soon** (``dead_too_soon``). A member is declared dead only when a suspicion
of it runs out, and no suspicion runs shorter than the base timeout
``suspicion_mult x max(1, log10 n) x probe_interval``: Lifeguard shortens an unconfirmed
suspicion *towards* it, never below, and local health only lengthens it. So no suspicion
runs under :func:`min_suspicion_ns`, ``suspicion_mult x probe_interval``, and a DEAD event
at a life ``O`` about ``S`` at ``t`` is justified by ``O``'s own view having held ``S``
SUSPECT, without a break, since ``t - min_suspicion`` or earlier -- or by news: an earlier
justified DEAD of ``S`` at some life. An observer whose clock drifts by up to ``p`` ppm
runs its timers that much faster: it is held to ``min_suspicion x (1 - p / 10^6)``.

**No suspicion too long** (``slow_suspicion``). Where Lifeguard expects no confirmations
(``K = min(suspicion_confirmations, n - 3) = 0``: at most three live members, self and the
suspect included, when the suspicion began) a suspicion runs exactly its shortest timeout,
the base ``suspicion_mult x max(1, log10 n) x probe_interval`` widened by the observer's
local health (``awareness.py``: ``score + 1`` times). An observer whose score never rose --
no view ever held it suspect or dead, it never paused -- therefore ends a suspicion (a DEAD
at the deadline, or the suspect's refutation before it) within the base timeout, stretched
by its timers' slack (:func:`~meshlimit.sim.bounds.with_timer_slack`); a suspicion of such an
observer that outlived it ran a longer timer than the protocol's. Judged when the suspicion
ends, for lives that ran unpaused through it.

The merge of news itself (a higher incarnation wins, then the more severe state; a member
refutes news of its own suspicion or death) is judged per datagram by
:mod:`~meshlimit.sim.news`.
"""

from __future__ import annotations

from meshlimit.cluster.membership import MembershipConfig
from meshlimit.cluster.membership.timing import expected_confirmations, suspicion_timeout_ns
from meshlimit.cluster.wire.messages import MemberState

from .bounds import with_timer_slack
from .events import NS_PER_S
from .history import History, Life
from .verdicts import Violation
from .views import View

#: Findings kept.
MAX_FINDINGS = 20
_LIVE = (MemberState.ALIVE, MemberState.SUSPECT)


def min_suspicion_ns(config: MembershipConfig) -> int:
    """The shortest any suspicion may run: the base timeout at its smallest (``n <= 10``),
    ``suspicion_mult x probe_interval``."""
    return config.suspicion_mult * config.probe_interval_ns


class Suspicions:
    """The verdict; fed every membership event before its view applies it."""

    def __init__(self, history: History, config: MembershipConfig) -> None:
        self._history = history
        self._config = config
        self._min_ns = min_suspicion_ns(config)
        self._justified: dict[str, int] = {}  # subject -> first justified DEAD
        self._accused: dict[str, int] = {}  # node -> first instant some view held it down
        #: (observer life, subject) -> live members in the observer's view when it began
        #: suspecting the subject (``n`` of the suspicion's timeout).
        self._began_with: dict[tuple[tuple[str, int], str], int] = {}
        self.findings: list[Violation] = []

    def on_event(self, life: Life, view: View, subject: str, new_state: int, now: int) -> None:
        """``life`` reports ``subject`` now ``new_state``; ``view`` is its view before."""
        if new_state in (MemberState.SUSPECT, MemberState.DEAD):
            self._accused.setdefault(subject, now)
        view.advance(now)
        was = view.states.get(subject)
        if new_state == MemberState.SUSPECT and was != MemberState.SUSPECT:
            others = (m for m, st in view.states.items() if st in _LIVE)
            live = sum(1 for m in others if m not in (life.node, subject))
            self._began_with[(life.key, subject)] = live + 2  # self and the suspect
        elif was == MemberState.SUSPECT and new_state != MemberState.SUSPECT:
            self._suspicion_ended(life, view, subject, now)
        if new_state != MemberState.DEAD:
            return
        suspected = view.changed_at.get(subject, now)
        suspect = view.states.get(subject) == MemberState.SUSPECT
        drift_ppm = self._history.max_drift_ppm.get(life.node, 0.0)
        shortest = self._min_ns - int(self._min_ns * drift_ppm / 1_000_000)
        if (suspect and now - suspected >= shortest) or subject in self._justified:
            self._justified.setdefault(subject, now)
            return
        if drift_ppm >= 1_000_000:  # a clock that may stand still or race: not judged
            self._justified.setdefault(subject, now)
            return
        if len(self.findings) >= MAX_FINDINGS:
            return
        if suspect:
            held = f"after a suspicion of {(now - suspected) / NS_PER_S:.3f} s"
        else:
            held = f"held {MemberState.NAMES.get(view.states.get(subject, -1), 'unknown')}"
        self.findings.append(Violation(
            "dead_too_soon",
            f"{life.node} (life {life.number}) declared {subject} dead at {now / NS_PER_S:.6f} s"
            f" {held}, with no earlier death of it declared anywhere (no suspicion runs under"
            f" {self._min_ns / NS_PER_S:g} s)", nodes=(life.node, subject),
        ))  # fmt: skip

    def _suspicion_ended(self, life: Life, view: View, subject: str, now: int) -> None:
        """``life``'s suspicion of ``subject`` ends now: the slow_suspicion verdict."""
        began = view.changed_at.get(subject, now)
        n = self._began_with.pop((life.key, subject), 0)
        config = self._config
        if n <= 0 or expected_confirmations(config, n) or life.paused_during(began, now):
            return
        accused = self._accused.get(life.node)
        if (accused is not None and accused <= began) or any(p <= began for p, _ in life.pauses):
            return  # its local health may have risen: a longer timer is allowed
        if self._history.max_drift_ppm.get(life.node, 0.0) >= 1_000_000:
            return
        longest = with_timer_slack(suspicion_timeout_ns(config, n))
        if now - began <= longest or len(self.findings) >= MAX_FINDINGS:
            return
        self.findings.append(Violation(
            "slow_suspicion",
            f"{life.node} (life {life.number}) held {subject} suspect from {began / NS_PER_S:.6f}"
            f" s to {now / NS_PER_S:.6f} s, longer than the {longest / NS_PER_S:.3f} s a"
            f" suspicion runs with {n} live members (no confirmations expected) at a healthy"
            f" observer", nodes=(life.node, subject),
        ))  # fmt: skip


def slow_detections(
    history: History, expect_dead: list[tuple[str, int, tuple[str, int], int]], end_ns: int
) -> list[Violation]:
    """``slow_detection``: crashed nodes declared dead by every observer that kept running,
    in time. ``expect_dead``: ``(subject, crashed at, observer life, by)`` not yet met."""
    found = []
    for subject, at, observer, by in expect_dead:
        lives = history.lives.get(observer[0], [])
        life = lives[observer[1] - 1] if observer[1] <= len(lives) else None
        if by > end_ns or life is None or not life.running_through(at, by):
            continue
        if any(at < s.started_at <= by for s in history.lives.get(subject, [])):
            continue
        found.append(Violation(
            "slow_detection",
            f"{observer[0]} had not declared {subject} dead {(by - at) / NS_PER_S:.1f} s"
            f" after its crash at {at / NS_PER_S:.3f} s (the detection bound)",
            nodes=(observer[0], subject),
        ))  # fmt: skip
    return found
