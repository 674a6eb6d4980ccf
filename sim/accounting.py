"""Accounting: one decision per request, every admission counted, every answer the owner's.

Theory of operation. A check is answered once, by the node it entered, either at once
(decided there) or when the owner it was forwarded to replies. The world tells the
checkers every answer (with, for a forwarded one, the owner asked and the node whose reply
gave the answer), every forwarded check (a ticket), every answer to a check that was not
waiting, and every decision a node logged (with the datagram that caused it, if one did).
:class:`Accounting` holds them to four verdicts (``docs/simulator.md``):

- ``answered_twice``: a node answered a check that was not waiting for an answer;
- ``decided_twice``: one life decided the forwarded checks of one datagram twice (a second
  copy of it must be answered from the owner's cache: per request, whatever the client's
  other traffic), or, per client, owners decided more forwarded checks than were forwarded;
- ``foreign_answer``: a forwarded check was answered from the reply of a node other than the
  owner it was forwarded to (a reply that does not belong to the request: a misdelivered
  datagram's, a late or foreign one);
- ``uncounted_admission``: clients heard "allowed" more often than admissions were logged,
  per node and path for the checks a node decided itself, per client for all answers;
- ``unanswered``: a forwarded check still unanswered at the end by a life that ran, unpaused,
  from its asking to past its forward deadline (``forward_timeout``, stretched by
  :data:`~meshlimit.sim.bounds.TIMER_SLACK_PPM` and a late tick; twice that, as a check
  may be sent once more under the same ticket): at the deadline a node answers it itself,
  from its degraded quota.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from .bounds import with_timer_slack
from .events import NS_PER_S
from .history import Life
from .verdicts import Violation

if TYPE_CHECKING:  # pragma: no cover
    from .network import Delivery

#: Examples kept per verdict kind (the first is reported, with how many more there were).
MAX_EXAMPLES = 10


class Accounting:
    """See the module docstring; ``cost`` is the workload's cost per request."""

    def __init__(self, cost: int) -> None:
        self._cost = cost
        self._logged: Counter[tuple[str, str, str]] = Counter()  # (node, client, path) cost
        self._answered: Counter[tuple[str, str, str]] = Counter()  # (node, client, path)
        self._forwarded: Counter[str] = Counter()  # client -> checks forwarded
        self._owner_decided: Counter[str] = Counter()  # client -> forwarded checks decided
        #: Whether the decisions being logged came of a datagram meant for another node.
        self._misdelivered = False
        self._decided_datagrams: set[tuple[Any, ...]] = set()  # (life, src, sent, payload)
        self._examples: dict[str, list[str]] = {}
        self._more: Counter[str] = Counter()

    def _note(self, kind: str, example: str) -> None:
        examples = self._examples.setdefault(kind, [])
        if len(examples) < MAX_EXAMPLES:
            examples.append(example)
        else:
            self._more[kind] += 1

    # --- observations -----------------------------------------------------------------

    def decided(self, node: str, client: str, path: str, cost: int, allowed: bool) -> None:
        """A decision logged at ``node``."""
        if path == "forwarded" and not self._misdelivered:
            self._owner_decided[client] += 1
        if allowed and cost:
            self._logged[(node, client, path)] += cost
            self._logged[("", client, "")] += cost

    def from_datagram(
        self, life: Life, delivery: Delivery | None, log: list[tuple[Any, ...]], now: int
    ) -> None:
        """The decisions ``life`` logged on receiving ``delivery`` (None: of no datagram): a
        second copy of one datagram must decide none of its forwarded checks again. One
        the world misdelivered (``misdeliver``: an address reused) may be decided by its
        receiver as their owner while the sender's retry reaches the owner asked (fuzz
        seed 7373022125: a paused node took one 29 s later): a count more, not a lapse of
        de-duplication, so not held against the owners' forwarded decisions."""
        self._misdelivered = delivery is not None and str(delivery.dst) != life.node
        if delivery is None:
            return
        decided = sum(1 for entry in log if entry[5] == "forwarded")
        if not decided:
            return
        key = (life.key, delivery.src, delivery.sent_at_ns, hash(delivery.payload))
        if key not in self._decided_datagrams:
            self._decided_datagrams.add(key)
            return
        self._note(
            "decided_twice",
            f"{life.node} (life {life.number}) decided {decided} forwarded checks again at"
            f" {now / NS_PER_S:.6f} s from a second copy of a datagram {delivery.src} sent at"
            f" {delivery.sent_at_ns / NS_PER_S:.6f} s",
        )

    def answered(
        self,
        node: str,
        client: str,
        path: str,
        allowed: bool,
        started: int,
        now: int,
        *,
        asked: str | None,
        replied_by: str | None,
    ) -> None:
        """The answer a client got at ``node``."""
        if path == "forwarded" and asked is not None and replied_by not in (None, asked):
            self._note(
                "foreign_answer",
                f"{node} answered a check of {client} forwarded to {asked} at"
                f" {started / NS_PER_S:.6f} s from a reply of {replied_by} at"
                f" {now / NS_PER_S:.6f} s",
            )
        if allowed:
            if path != "forwarded":  # decided here; forwarded ones were counted elsewhere
                self._answered[(node, client, path)] += 1
            self._answered[("", client, "")] += 1

    def forwarded(self, client: str) -> None:
        """A check forwarded to the client's owner."""
        self._forwarded[client] += 1

    def unanswered(
        self, left: list[tuple[str, int, int]], lives: dict[str, list[Life]], end: int, timeout: int
    ) -> None:
        """The checks still waiting at ``end``: ``(node, life number, asked at)``. A check
        may time out once and go out again under the same ticket (``Forwarding.retry``,
        when its owner answered later checks promptly), waiting a second timeout."""
        bound = 2 * with_timer_slack(timeout)
        for node, number, asked in sorted(left, key=lambda item: item[2]):
            life = lives[node][number - 1] if 0 < number <= len(lives.get(node, ())) else None
            due = asked + bound
            if life is None or due > end or not life.running_through(asked, due):
                continue
            self._note(
                "unanswered",
                f"{node} (life {number}) never answered a check forwarded at"
                f" {asked / NS_PER_S:.6f} s (its forward deadline passed at {due / NS_PER_S:.6f} s)",
            )

    def stray(self, node: str, ticket: int, now: int) -> None:
        """``node`` answered a check that was not waiting for an answer."""
        self._note("answered_twice", f"{node} answered ticket {ticket} at {now / NS_PER_S:.6f} s")

    # --- verdicts ---------------------------------------------------------------------

    def violations(self) -> list[Violation]:
        """Every accounting verdict the run broke."""
        out = []
        for kind in ("answered_twice", "decided_twice", "foreign_answer", "unanswered"):
            examples = self._examples.get(kind)
            if examples:
                extra = len(examples) - 1 + self._more[kind]
                out.append(Violation(kind, examples[0] + (f" (and {extra} more)" if extra else "")))
        twice = sorted(
            (client, decided)
            for client, decided in self._owner_decided.items()
            if self._forwarded and decided > self._forwarded[client]  # the world tells tickets
        )
        if twice:
            first, decided = twice[0]
            more = f" (and {len(twice) - 1} more clients)" if len(twice) > 1 else ""
            out.append(Violation(
                "decided_twice",
                f"owners decided {decided} forwarded checks of {first} but only"
                f" {self._forwarded[first]} were forwarded{more}", first,
            ))  # fmt: skip
        for (node, client, path), answered in sorted(self._answered.items()):
            counted = self._logged[(node, client, path)]
            if answered * self._cost > counted:
                where = f" by {node} ({path})" if node else ""
                out.append(Violation(
                    "uncounted_admission",
                    f"clients were told 'allowed' {answered} times{where} but"
                    f" {counted // max(1, self._cost)} were counted", client,
                ))  # fmt: skip
        return out
