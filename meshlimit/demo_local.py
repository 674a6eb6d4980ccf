"""The in-process demo: one :class:`~meshlimit.Limiter` driven on virtual time.

A :class:`VirtualClock` stands in for the wall clock, so the demo runs at once
and prints the same numbers on every run. Each phase sends scripted traffic
from a few clients through the public API only (``Limiter``, ``check``,
``set_rule``, ``set_tier``, ``remove_rule``, ``get_rule``), tallies the
decisions, and prints a table and one sentence saying what the phase shows.

Phases start on minute boundaries and are separated by two idle minutes, so
a phase never sees the previous phase's counts (a sliding window weighs only
the window before the current one).
"""

from __future__ import annotations

import sys
import textwrap
from dataclasses import dataclass, field
from typing import TextIO

from meshlimit import Decision, Limiter

NS_PER_S = 1_000_000_000
#: Virtual start: 2023-11-15 00:00:00 UTC, a whole day in ns, so every minute window
#: begins exactly on a phase boundary.
EPOCH_NS = 1_700_006_400 * NS_PER_S

DEFAULT_RULE = "100/minute"
TIERS = {"gold": "500/minute"}
RULES = {"acme": "1000/minute burst 200", "legacy": "100/minute algo fixed_window"}
TIER_CLIENTS = {"globex": "gold"}


class VirtualClock:
    """A clock the demo moves by hand: ``now_ns`` is what the limiter reads."""

    def __init__(self, now_ns: int) -> None:
        self.now_ns = now_ns

    def __call__(self) -> int:
        return self.now_ns


@dataclass
class Tally:
    """What one client sent in one phase and what the limiter decided."""

    client: str
    rule: str
    sent: int = 0
    admitted: int = 0
    refused: int = 0
    first_refusal: Decision | None = None

    def record(self, decision: Decision) -> None:
        self.sent += 1
        if decision.allowed:
            self.admitted += 1
        else:
            self.refused += 1
            if self.first_refusal is None:
                self.first_refusal = decision


@dataclass
class Phase:
    """One phase's outcome, as printed."""

    number: int
    title: str
    start_s: int
    end_s: int
    tallies: list[Tally] = field(default_factory=list)
    explanation: str = ""


class Demo:
    """The limiter, its clock, and helpers that send traffic and tally decisions."""

    def __init__(self) -> None:
        self.clock = VirtualClock(EPOCH_NS)
        self.limiter = Limiter(default=DEFAULT_RULE, rules=RULES, tiers=TIERS, clock=self.clock)
        for client, tier in TIER_CLIENTS.items():
            self.limiter.set_rule(client, f"@{tier}")

    def rule_text(self, client: str) -> str:
        return str(self.limiter.get_rule(client))

    def label(self, client: str) -> str:
        tier = TIER_CLIENTS.get(client)
        return f"{client} @{tier}" if tier else client

    def begin(self, clients: list[str]) -> dict[str, Tally]:
        return {c: Tally(self.label(c), self.rule_text(c)) for c in clients}

    def end(self, tallies: dict[str, Tally]) -> list[Tally]:
        """Note rule changes made during the phase as ``old -> new``."""
        for client, tally in tallies.items():
            now = self.rule_text(client)
            if now != tally.rule:
                tally.rule = f"{tally.rule} -> {now}"
        return list(tallies.values())

    def steady(
        self, tallies: dict[str, Tally], per_s: dict[str, int], at_s: int, for_s: int
    ) -> None:
        """Each client sends ``per_s`` requests a second, evenly spaced, for ``for_s`` seconds."""
        sends: list[tuple[int, int, str]] = []
        for order, (client, rate) in enumerate(per_s.items()):
            step_ns = NS_PER_S // rate
            start_ns = EPOCH_NS + at_s * NS_PER_S
            sends.extend((start_ns + k * step_ns, order, client) for k in range(rate * for_s))
        for at_ns, _, client in sorted(sends):
            self.send(tallies, client, at_ns)

    def at_once(self, tallies: dict[str, Tally], counts: dict[str, int], at_s: int) -> None:
        """Each client sends ``counts`` requests in the same nanosecond."""
        at_ns = EPOCH_NS + at_s * NS_PER_S
        for client, count in counts.items():
            for _ in range(count):
                self.send(tallies, client, at_ns)

    def send(self, tallies: dict[str, Tally], client: str, at_ns: int) -> None:
        assert at_ns >= self.clock.now_ns, "virtual time only moves forward"
        self.clock.now_ns = at_ns
        tallies[client].record(self.limiter.check(client, cost=1))


def steady_traffic(demo: Demo) -> Phase:
    rates = {"anon-1": 1, "globex": 5, "acme": 10, "mallory": 50}
    tallies = demo.begin(list(rates))
    demo.steady(tallies, rates, at_s=0, for_s=60)
    rows = demo.end(tallies)
    mallory = tallies["mallory"]
    quiet = [t for t in rows if t is not mallory]
    retry = mallory.first_refusal.retry_after if mallory.first_refusal else 0.0
    if all(t.refused == 0 for t in quiet):
        others = "every client inside its rule had every request admitted"
    else:
        others = "clients inside their rule were refused too (unexpected)"
    text = (
        f"Steady load: {others}; mallory sent {mallory.sent} at {rates['mallory']}/s against the "
        f"default {mallory.rule}, was admitted {mallory.admitted} and refused the rest, "
        f"its first refusal saying retry after {retry:.1f} s."
    )
    return Phase(1, "steady traffic", 0, 60, rows, text)


def burst_after_idle(demo: Demo) -> Phase:
    counts = {"anon-1": 150, "globex": 600, "acme": 1500}
    tallies = demo.begin(list(counts))
    demo.at_once(tallies, counts, at_s=180)
    rows = demo.end(tallies)
    rule = demo.limiter.get_rule("acme")
    text = (
        f"After two idle minutes each client fires at once: acme may spend its limit plus "
        f"its burst ({rule.limit} + {rule.burst} = {rule.limit + rule.burst}) and was "
        f"admitted {tallies['acme'].admitted}; anon-1 and globex have no burst and were "
        f"admitted {tallies['anon-1'].admitted} and {tallies['globex'].admitted}."
    )
    return Phase(2, "a burst after idle", 180, 181, rows, text)


def rule_change(demo: Demo) -> Phase:
    rates = {"globex": 20, "acme": 10}
    tallies = demo.begin(list(rates))
    demo.steady(tallies, rates, at_s=360, for_s=30)
    before = {c: t.admitted for c, t in tallies.items()}
    old_tier = demo.rule_text("globex")
    demo.clock.now_ns = EPOCH_NS + 390 * NS_PER_S
    demo.limiter.set_tier("gold", "600/minute")
    demo.limiter.remove_rule("acme")
    demo.steady(tallies, rates, at_s=390, for_s=30)
    rows = demo.end(tallies)
    globex_more = tallies["globex"].admitted - before["globex"]
    acme_more = tallies["acme"].admitted - before["acme"]
    text = (
        f"Half-way through the minute the gold tier goes from {old_tier} to "
        f"{demo.rule_text('globex')} and acme's override is removed. Counts survive: "
        f"globex, {before['globex']} used, got {globex_more} more (not a fresh 600); acme, "
        f"{before['acme']} used, fell back to the default {demo.rule_text('acme')} and got "
        f"{acme_more} more."
    )
    return Phase(3, "rule changes mid-window", 360, 420, rows, text)


def window_boundary(demo: Demo) -> Phase:
    clients = ["anon-2", "legacy"]
    tallies = demo.begin(clients)
    demo.at_once(tallies, dict.fromkeys(clients, 100), at_s=595)
    first = {c: t.admitted for c, t in tallies.items()}
    demo.at_once(tallies, dict.fromkeys(clients, 100), at_s=605)
    rows = demo.end(tallies)
    fixed = tallies["legacy"].admitted
    sliding_second = tallies["anon-2"].admitted - first["anon-2"]
    text = (
        f"Both send 100 at 55 s into a minute and 100 more 10 s later, across the boundary. "
        f"The fixed window resets there and admitted {fixed} in ten seconds against a limit "
        f"of 100; the sliding window still weighs 55/60 of the previous minute and admitted "
        f"only {sliding_second} of the second 100."
    )
    return Phase(4, "a sliding-window boundary", 595, 606, rows, text)


PHASES = (steady_traffic, burst_after_idle, rule_change, window_boundary)


def _clock_text(seconds: int) -> str:
    return f"{seconds // 60}:{seconds % 60:02d}"


def format_table(tallies: list[Tally]) -> list[str]:
    """Fixed-width rows: client, rule, sent, admitted, refused."""
    header = ("client", "rule", "sent", "admitted", "refused")
    cells = [(t.client, t.rule, str(t.sent), str(t.admitted), str(t.refused)) for t in tallies]
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        left = [row[i].ljust(widths[i]) for i in range(2)]
        right = [row[i].rjust(widths[i]) for i in range(2, len(row))]
        return "  " + "  ".join(left + right)

    rule = tuple("-" * w for w in widths)
    return [line(header), line(rule)] + [line(row) for row in cells]


def format_phase(phase: Phase) -> str:
    span = f"{_clock_text(phase.start_s)}-{_clock_text(phase.end_s)}"
    lines = [f"Phase {phase.number}: {phase.title}  (virtual time {span})", ""]
    lines += format_table(phase.tallies)
    lines.append("")
    lines += textwrap.wrap(phase.explanation, width=78, initial_indent="  ", subsequent_indent="  ")
    return "\n".join(lines)


def format_setup() -> str:
    lines = [
        "meshlimit demo: one in-process Limiter on a virtual clock (no network, no waiting)",
        "",
        f"  default rule     {DEFAULT_RULE}",
    ]
    lines += [f"  tier {name:<11} {rule}" for name, rule in TIERS.items()]
    lines += [f"  client {name:<9} {rule}" for name, rule in RULES.items()]
    lines += [f"  client {name:<9} @{tier}" for name, tier in TIER_CLIENTS.items()]
    lines.append("  other clients    the default rule")
    return "\n".join(lines)


def run(out: TextIO | None = None) -> list[Phase]:
    """Run every phase, print each as it completes, and return them."""
    out = out if out is not None else sys.stdout
    demo = Demo()
    print(format_setup(), file=out)
    phases = []
    for make_phase in PHASES:
        phase = make_phase(demo)
        phases.append(phase)
        print("", file=out)
        print(format_phase(phase), file=out)
    print("", file=out)
    print(
        "Every number above came from Limiter.check(); virtual time makes reruns identical.",
        file=out,
    )
    return phases
