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

The merge of news itself (a higher incarnation wins, then the more severe state; a member
refutes news of its own suspicion or death) is judged per datagram by
:mod:`~meshlimit.sim.news`.
"""

from __future__ import annotations

from meshlimit.cluster.membership import MembershipConfig
from meshlimit.cluster.wire.messages import MemberState

from .events import NS_PER_S
from .history import History, Life
from .verdicts import Violation
from .views import View

#: Findings kept.
MAX_FINDINGS = 20


def min_suspicion_ns(config: MembershipConfig) -> int:
    """The shortest any suspicion may run: the base timeout at its smallest (``n <= 10``),
    ``suspicion_mult x probe_interval``."""
    return config.suspicion_mult * config.probe_interval_ns


class Suspicions:
    """The verdict; fed every membership event before its view applies it."""

    def __init__(self, history: History, config: MembershipConfig) -> None:
        self._history = history
        self._min_ns = min_suspicion_ns(config)
        self._justified: dict[str, int] = {}  # subject -> first justified DEAD
        self.findings: list[Violation] = []

    def on_event(self, life: Life, view: View, subject: str, new_state: int, now: int) -> None:
        """``life`` reports ``subject`` now ``new_state``; ``view`` is its view before."""
        if new_state != MemberState.DEAD:
            return
        view.advance(now)
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
