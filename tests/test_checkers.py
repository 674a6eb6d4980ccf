"""The checkers, fed hand-made observations (no world): each verdict fires, and stays quiet.

Every test builds a :class:`Checkers` for a small scenario, tells it what happened -- the
timeline actions, the membership events each node reported, the decisions each node logged
and the answers clients got -- and asks for its verdicts. Each invariant has a test that
breaks it and one that keeps it; the bounds' formulas are pinned to the node's own copies
and to worked values.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from meshlimit.cluster.membership import MemberEvent, MembershipConfig
from meshlimit.cluster.node import config as node_config
from meshlimit.cluster.wire.messages import MemberState
from meshlimit.core.counters import CounterStore
from meshlimit.core.decision import make_decision
from meshlimit.core.hlc import Stamp
from meshlimit.core.registry import RuleRegistry
from meshlimit.core.ring import HashRing
from meshlimit.core.rules import Rule, parse_rule
from meshlimit.sim import bounds
from meshlimit.sim.checkers import Checkers, Liveness
from meshlimit.sim.events import NS_PER_MS, NS_PER_S, SIM_EPOCH_NS
from meshlimit.sim.network import LinkConfig
from meshlimit.sim.scenario import Scenario, parse_scenario
from meshlimit.sim.windows import DEGRADED, EXACT

S, MS = NS_PER_S, NS_PER_MS
ALIVE, SUSPECT, DEAD = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD


# --- building runs by hand ---------------------------------------------------------------


def scenario(
    nodes: int = 3,
    *,
    mode: str = "strict",
    timeline: tuple[str, ...] = (),
    absent: tuple[str, ...] = (),
    duration: str = "60s",
) -> Scenario:
    lines = [f'duration = "{duration}"', f"nodes = {nodes}", f'mode = "{mode}"']
    if absent:
        lines.append(f"absent = {json.dumps(list(absent))}")
    lines += [f"timeline = {json.dumps(list(timeline))}", "[limits]", 'default = "10/s"']
    return parse_scenario("\n".join(lines) + "\n")


def start(sc: Scenario) -> Checkers:
    """Checkers for ``sc``, fed its timeline actions as a world would, when their time comes."""
    checkers = Checkers(sc)
    checkers.pending = list(sc.timeline)  # type: ignore[attr-defined]
    return checkers


def until(checkers: Checkers, at: int) -> None:
    """Report the timeline actions due by ``at``."""
    pending = checkers.pending  # type: ignore[attr-defined]
    while pending and pending[0].at_ns <= at:
        action = pending.pop(0)
        checkers.on_action(action, action.at_ns)


def tell(checkers: Checkers, observer: str, member: str, state: int, at: int) -> None:
    until(checkers, at)
    event = MemberEvent(member, (member, 7400), None, state)
    checkers.on_membership(observer, event, at, subject_liveness=Liveness.RUNNING)


def dies(checkers: Checkers, observer: str, member: str, at: int) -> None:
    """``observer`` suspects ``member`` and declares it dead ``min_suspicion`` later, at ``at``
    (no suspicion runs shorter: ``dead_too_soon``)."""
    tell(checkers, observer, member, SUSPECT, at - 2 * S)
    tell(checkers, observer, member, DEAD, at)


def everyone_knows(checkers: Checkers, names: list[str], at: int = 0) -> None:
    """Every node joined (a join reply reached it) and holds every other alive."""
    for observer in names:
        checkers.on_joined(observer, at)
        for member in names:
            if member != observer:
                tell(checkers, observer, member, ALIVE, at)


def decide(
    checkers: Checkers,
    node: str,
    at: int,
    client: str,
    rule: Rule,
    *,
    n: int = 1,
    allowed: bool = True,
    path: str = "owner",
    wall: int | None = None,
) -> None:
    """``n`` decisions by ``node`` at ``at`` (1 ms apart), logged and answered."""
    for i in range(n):
        now = at + i * MS
        until(checkers, now)
        reading = (SIM_EPOCH_NS + now) if wall is None else wall + i * MS
        checkers.on_admissions(node, [(reading, client, rule, 1, allowed, path)], now)
        decision = make_decision(allowed, rule.limit, 0, 0, 0 if allowed else MS, path)
        if path != "forwarded":
            checkers.on_decision(node, client, decision, now, now)


def finish(checkers: Checkers, end: int) -> list[str]:
    until(checkers, end)
    checkers.finish(end)
    return [str(v) for v in checkers.violations]


def kinds(violations: list[str]) -> set[str]:
    return {v.split(":")[0] for v in violations}


def owned_by(
    node: str, members: list[str], *, before: tuple[list[str], str] | None = None, nth: int = 0
) -> str:
    """The ``nth`` client id ``node`` owns in the ring of ``members`` (and, with ``before``,
    that ``before[1]`` owned in the ring of ``before[0]``)."""
    ring = HashRing(members)
    earlier = HashRing(before[0]) if before else None
    found = 0
    for i in range(100_000):
        client = f"k{i}"
        if ring.owner(client) != node:
            continue
        if before and earlier is not None and earlier.owner(client) != before[1]:
            continue
        if found == nth:
            return client
        found += 1
    raise AssertionError("no such client")


RULE = parse_rule("10/s")
SLOW = parse_rule("10/10s")  # one window spans a whole test
FIXED = parse_rule("10/s algo fixed_window")


# --- the bounds' formulas --------------------------------------------------------------


def test_degraded_shares_are_the_nodes_own_and_sum_to_the_units() -> None:
    for capacity in (1, 4, 5, 10, 13, 100):
        for members in range(1, 8):
            for window in range(20):
                shares = [
                    bounds.degraded_share(
                        capacity, 0.5, members=members, position=p, client="c7", window=window
                    )
                    for p in range(members)
                ]
                assert sum(shares) == bounds.degraded_units(capacity, 0.5) == capacity // 2
                assert max(shares) <= bounds.max_share(capacity, 0.5, members)
                node_shares = [
                    node_config.degraded_share(
                        capacity, 0.5, members=members, position=p, client="c7", window=window
                    )
                    for p in range(members)
                ]
                assert shares == node_shares
    assert bounds.max_share(4, 0.5, 5) == 1 and bounds.max_share(10, 0.5, 1) == 5
    assert bounds.degraded_units(10, 0.0) == 0


def test_detection_bound_is_rounds_and_the_longest_suspicion() -> None:
    lan = MembershipConfig.lan()
    # 5 members: (2*4 + 1) probe intervals, then 6 x 2 s of unconfirmed suspicion.
    assert bounds.detection_bound_ns(lan, 5) == bounds.with_timer_slack(21 * S)
    assert bounds.detection_bound_ns(lan, 3) == bounds.with_timer_slack(17 * S)
    assert bounds.with_timer_slack(S) == S + S // 1000 + MS


def test_delay_bound_takes_the_capped_jitter_and_reordering() -> None:
    assert bounds.delay_bound_ns(LinkConfig(latency_ns=MS)) == MS
    lognormal = LinkConfig(latency_ns=MS, jitter_ns=MS)
    assert bounds.delay_bound_ns(lognormal) == 21 * MS
    uniform = LinkConfig(latency_ns=MS, jitter_ns=MS, jitter_dist="uniform")
    assert bounds.delay_bound_ns(uniform) == 2 * MS
    assert bounds.delay_bound_ns(LinkConfig(reorder=0.1, reorder_ns=5 * MS)) == 6 * MS
    assert bounds.delay_bound_ns(LinkConfig(bandwidth_bytes_per_s=1000)) == bounds.UNBOUNDED


# --- over-admission: the exact bound and its relaxations ---------------------------------


def test_one_owner_is_held_to_the_exact_capacity() -> None:
    client = owned_by("n1", ["n1", "n2", "n3"])
    quiet = start(scenario())
    everyone_knows(quiet, ["n1", "n2", "n3"])
    decide(quiet, "n1", S, client, RULE, n=10)
    assert finish(quiet, 5 * S) == []
    assert quiet.judged == {EXACT: 1}
    assert quiet.summary()["windows_at_most_capacity"] == 1.0

    over = start(scenario())
    everyone_knows(over, ["n1", "n2", "n3"])
    decide(over, "n1", S, client, RULE, n=11)
    found = finish(over, 5 * S)
    assert any(v.startswith(f"over_admission: client={client}") for v in found), found
    assert any("admitted 11 > bound 10 (exact" in v for v in found)


def test_degraded_deciders_each_spend_their_exact_share() -> None:
    names = ["n1", "n2", "n3", "n4", "n5"]
    client = owned_by("n1", names)
    index = (SIM_EPOCH_NS + S) // S
    positions = {n: i for i, n in enumerate(names)}
    share = {
        n: bounds.degraded_share(10, 0.5, members=5, position=positions[n], client=client,
                                 window=index)
        for n in names
    }  # fmt: skip
    faulty = scenario(5, timeline=("at 100ms pause n5 for 1ms",))  # a cause to be degraded
    quiet = start(faulty)
    everyone_knows(quiet, names)
    decide(quiet, "n1", S, client, RULE, n=10)
    for node in ("n2", "n3", "n4"):
        if share[node]:
            decide(quiet, node, S + 50 * MS, client, RULE, n=share[node], path="degraded")
    assert finish(quiet, 5 * S) == []
    assert set(quiet.judged) <= {DEGRADED, EXACT}

    greedy = next(n for n in ("n2", "n3", "n4", "n5") if share[n] >= 1)
    over = start(faulty)
    everyone_knows(over, names)
    decide(over, greedy, S, client, RULE, n=share[greedy] + 1, path="degraded")
    found = finish(over, 5 * S)
    assert any(v.startswith("over_share") and f"its share {share[greedy]}" in v for v in found)


def test_a_restarted_owner_continues_from_its_earlier_lifes_counts() -> None:
    """A restarted owner gets its earlier life's counts back from the client's replica
    before it decides at full capacity (``cluster/node/resync.py``): the window is judged
    at what the replica handed back (``resync``), not each life alone, so a new life that
    started from zero is ``counts_lost``; and no life alone goes beyond the capacity."""
    names = ["n1", "n2", "n3"]
    client = owned_by("n1", names)
    sc = scenario(timeline=("at 1s crash n1", "at 2s restart n1"))

    def run(second_life_admits: int) -> list[str]:
        checkers = start(sc)
        everyone_knows(checkers, names)
        decide(checkers, "n1", 100 * MS, client, SLOW, n=8)
        until(checkers, 2 * S)
        checkers.on_joined("n1", 2 * S + MS)  # the new life's join reply
        tell(checkers, "n1", "n2", ALIVE, 2 * S + MS)
        tell(checkers, "n1", "n3", ALIVE, 2 * S + MS)
        decide(checkers, "n1", 3 * S, client, SLOW, n=second_life_admits)
        return finish(checkers, 5 * S)

    assert run(2) == []  # 8 + 2: the earlier life's 8 came back to the new one
    found = run(8)
    assert any(v.startswith("counts_lost: client=") for v in found), found
    found = run(11)
    assert any("n1 (life 2) alone admitted 11 > capacity 10" in v for v in found), found


def test_a_window_restarted_from_zero_after_a_hand_over_is_counts_lost() -> None:
    members, joined = ["n1", "n2"], ["n1", "n2", "n3"]
    client = owned_by("n3", joined, before=(members, "n1"))

    def run(new_owner_admits: int) -> list[str]:
        checkers = start(scenario(3, absent=("n3",), timeline=("at 1s join n3",)))
        everyone_knows(checkers, members)
        decide(checkers, "n1", 100 * MS, client, SLOW, n=6)
        until(checkers, S)
        checkers.on_joined("n3", S + MS)  # its join reply
        tell(checkers, "n3", "n1", ALIVE, S + MS)
        tell(checkers, "n3", "n2", ALIVE, S + MS)
        tell(checkers, "n1", "n3", ALIVE, S + 2 * MS)  # n1 hands its counts to n3 now
        tell(checkers, "n2", "n3", ALIVE, S + 2 * MS)
        decide(checkers, "n3", 2 * S, client, SLOW, n=new_owner_admits)
        return finish(checkers, 5 * S)

    assert run(4) == []
    found = run(10)
    assert any(v.startswith("counts_lost") and "admitted 16 > bound 10" in v for v in found)


def test_local_mode_holds_a_node_to_what_gossip_told_it() -> None:
    def run(second_admits: int) -> list[str]:
        checkers = start(scenario(2, mode="local"))
        everyone_knows(checkers, ["n1", "n2"])
        decide(checkers, "n1", 100 * MS, "c", SLOW, n=6, path="local")
        decide(checkers, "n2", 2 * S, "c", SLOW, n=second_admits, path="local")
        return finish(checkers, 5 * S)

    assert run(4) == []
    assert any(v.startswith("counts_lost") for v in run(10))


def test_a_clock_stepped_back_is_held_to_one_more_capacity() -> None:
    client = owned_by("n1", ["n1", "n2", "n3"])
    window_6 = SIM_EPOCH_NS // S * S + 6 * S  # fixed windows: the first check of window 6
    # sees nothing of window 5 (a sliding one would weigh it, sliding_window_broken)

    def run(after_the_step: int) -> list[str]:
        checkers = start(scenario())
        everyone_knows(checkers, ["n1", "n2", "n3"])
        decide(checkers, "n1", S, client, FIXED, n=10, wall=window_6 - S + 100 * MS)
        decide(checkers, "n1", S + 900 * MS, client, FIXED, n=1, wall=window_6)  # reads 6
        # The clock steps back into window 5: the node charges whichever newer window the
        # counter reached (unseen here), so window 5 may hold one capacity more.
        decide(checkers, "n1", 2 * S, client, FIXED, n=after_the_step, wall=window_6 - S + 500 * MS)
        return finish(checkers, 5 * S)

    assert run(10) == []
    found = run(11)
    assert any("admitted 21 > bound 20 (clock_stepped_back" in v for v in found), found


def test_a_reset_lets_a_window_count_from_zero_once() -> None:
    client = owned_by("n1", ["n1", "n2", "n3"])
    checkers = start(scenario(timeline=(f"at 1500ms reset {client}",)))
    everyone_knows(checkers, ["n1", "n2", "n3"])
    decide(checkers, "n1", S + 100 * MS, client, SLOW, n=10)
    decide(checkers, "n1", 2 * S, client, SLOW, n=10)
    assert finish(checkers, 5 * S) == []
    assert checkers.judged["reset"] == 1


# --- who may decide at full capacity --------------------------------------------------------


def test_a_node_deciding_a_client_it_does_not_own_is_not_owner() -> None:
    names = ["n1", "n2", "n3"]
    client = owned_by("n1", names)
    wrong = start(scenario())
    everyone_knows(wrong, names)
    decide(wrong, "n2", S, client, RULE)
    assert "not_owner" in kinds(finish(wrong, 5 * S))
    right = start(scenario())
    everyone_knows(right, names)
    decide(right, "n1", S, client, RULE)
    assert finish(right, 5 * S) == []


def test_a_forwarded_check_may_come_from_a_sender_whose_view_lags() -> None:
    names = ["n1", "n2", "n3"]
    client = owned_by("n3", names, before=(["n1", "n2"], "n1"))
    lagging = start(scenario())
    everyone_knows(lagging, ["n1", "n3"])
    tell(lagging, "n1", "n2", ALIVE, 0)
    tell(lagging, "n2", "n1", ALIVE, 0)  # n2 does not know n3 yet: it forwards to n1
    decide(lagging, "n1", S, client, RULE, path="forwarded")
    tell(lagging, "n2", "n3", ALIVE, 2 * S)
    assert finish(lagging, 5 * S) == []

    misrouted = start(scenario())
    everyone_knows(misrouted, names)
    decide(misrouted, "n2", S, owned_by("n1", names), RULE, path="forwarded")
    found = finish(misrouted, 5 * S)
    assert any(v.startswith("not_owner") and "no other node's ring" in v for v in found), found


def test_a_node_whose_view_holds_a_minority_never_decides_at_full() -> None:
    names = ["n1", "n2", "n3"]
    client = owned_by("n1", names)
    share = bounds.degraded_share(
        10, 0.5, members=3, position=0, client=client, window=(SIM_EPOCH_NS + 4 * S) // S
    )
    checkers = start(scenario(timeline=("at 500ms isolate n1",)))
    everyone_knows(checkers, names)
    dies(checkers, "n1", "n2", 3 * S)
    dies(checkers, "n1", "n3", 3 * S)
    decide(checkers, "n1", 4 * S, client, RULE, n=share + 1, allowed=False, path="degraded")
    decide(checkers, "n1", 4 * S, client, RULE, n=share, path="degraded")
    assert finish(checkers, 7 * S) == []
    again = start(scenario(timeline=("at 500ms isolate n1",)))
    everyone_knows(again, names)
    dies(again, "n1", "n2", 3 * S)
    dies(again, "n1", "n3", 3 * S)
    decide(again, "n1", 4 * S, client, RULE)
    found = finish(again, 7 * S)
    assert any("minority_decided_at_full" in v and "own view" in v for v in found), found


def test_a_node_cut_off_in_a_minority_decides_at_full_only_until_detection() -> None:
    names = ["n1", "n2", "n3", "n4", "n5"]
    client = owned_by("n1", names)
    bound = bounds.detection_bound_ns(MembershipConfig.lan(), 5)
    sc = scenario(5, timeline=("at 1s partition [n1 n2] [n3 n4 n5]",))
    early = start(sc)
    everyone_knows(early, names)
    decide(early, "n1", 5 * S, client, RULE)
    assert finish(early, 30 * S) == []
    late = start(sc)
    everyone_knows(late, names)
    decide(late, "n1", S + bound + S, client, RULE)
    found = finish(late, 30 * S)
    assert any("minority_decided_at_full" in v and "cut off" in v for v in found), found


# --- one decision per request, every admission counted -------------------------------------


def test_a_check_answered_twice_fails_the_run() -> None:
    checkers = start(scenario())
    checkers.on_stray_answer("n2", 77, S)
    assert any(v.startswith("answered_twice") and "ticket 77" in v for v in finish(checkers, S))
    assert finish(start(scenario()), S) == []


def test_an_allowed_answer_nobody_counted_is_uncounted_admission() -> None:
    checkers = start(scenario())
    everyone_knows(checkers, ["n1", "n2", "n3"])
    allowed = make_decision(True, 10, 9, 0, 0, "owner")
    checkers.on_decision("n1", "c", allowed, S, S)
    found = finish(checkers, 2 * S)
    assert any(v.startswith("uncounted_admission") and "by n1 (owner)" in v for v in found)
    counted = start(scenario())
    everyone_knows(counted, ["n1", "n2", "n3"])
    decide(counted, "n1", S, owned_by("n1", ["n1", "n2", "n3"]), RULE)
    assert finish(counted, 2 * S) == []


# --- under-admission and resets --------------------------------------------------------------


def test_refusals_an_exact_window_could_have_admitted_are_under_admission() -> None:
    client = owned_by("n1", ["n1", "n2", "n3"])
    checkers = start(scenario())
    everyone_knows(checkers, ["n1", "n2", "n3"])
    decide(checkers, "n1", S, client, RULE, n=2)
    decide(checkers, "n1", S + 10 * MS, client, RULE, n=5, allowed=False)
    assert "under_admission" in kinds(finish(checkers, 2 * S))
    full = start(scenario())
    everyone_knows(full, ["n1", "n2", "n3"])
    decide(full, "n1", S, client, RULE, n=10)
    decide(full, "n1", S + 20 * MS, client, RULE, n=5, allowed=False)
    assert finish(full, 2 * S) == []


def reset_written(checkers: Checkers, client: str, writer: str, at: int) -> None:
    """The operator reset of ``client`` timed at ``at``, written at ``writer`` (as the world
    reports it: the action, then the registry entry with its HLC stamp)."""
    until(checkers, at)
    stamp = Stamp((SIM_EPOCH_NS + at) // MS, 0, writer)
    checkers.on_rule_change(f"reset:{client}", None, at, stamp)


def test_a_reset_that_reached_the_refusing_node_stays_reset() -> None:
    client = owned_by("n1", ["n1", "n2", "n3"])
    sc = scenario(timeline=(f"at 1500ms reset {client}",))
    for writer in ("n1", "n2"):  # written at the refusing node, or sent to it by a peer
        resurrected = start(sc)
        everyone_knows(resurrected, ["n1", "n2", "n3"])
        decide(resurrected, "n1", S + 100 * MS, client, SLOW, n=10)
        reset_written(resurrected, client, writer, 1500 * MS)
        decide(resurrected, "n1", 2 * S, client, SLOW, n=1, allowed=False)  # the old counts won
        found = finish(resurrected, 5 * S)
        assert any(v.startswith("reset_not_kept") for v in found), (writer, found)
        kept = start(sc)
        everyone_knows(kept, ["n1", "n2", "n3"])
        decide(kept, "n1", S + 100 * MS, client, SLOW, n=10)
        reset_written(kept, client, writer, 1500 * MS)
        decide(kept, "n1", 2 * S, client, SLOW, n=10)
        decide(kept, "n1", 3 * S, client, SLOW, n=1, allowed=False)
        assert finish(kept, 5 * S) == [], writer


def test_a_reset_not_sure_to_have_arrived_judges_nothing() -> None:
    client = owned_by("n1", ["n1", "n2", "n3"])
    # The writer holds n1 suspect (it sends the reset only to members it holds alive): n1
    # may refuse on its old counts until anti-entropy brings the reset.
    sc = scenario(timeline=(f"at 1500ms reset {client}",))
    unsent = start(sc)
    everyone_knows(unsent, ["n1", "n2", "n3"])
    tell(unsent, "n2", "n1", SUSPECT, S)
    decide(unsent, "n1", S + 100 * MS, client, SLOW, n=10)
    reset_written(unsent, client, "n2", 1500 * MS)
    decide(unsent, "n1", 2 * S, client, SLOW, n=1, allowed=False)
    assert "reset_not_kept" not in kinds(finish(unsent, 5 * S))
    # Or the link to it was cut when it was sent.
    cut = start(scenario(timeline=("at 1s isolate n1", f"at 1500ms reset {client}")))
    everyone_knows(cut, ["n1", "n2", "n3"])
    decide(cut, "n1", S + 100 * MS, client, SLOW, n=10)
    reset_written(cut, client, "n2", 1500 * MS)
    decide(cut, "n1", 2 * S, client, SLOW, n=1, allowed=False)
    assert "reset_not_kept" not in kinds(finish(cut, 5 * S))


# --- membership -----------------------------------------------------------------------------


def test_a_crash_must_be_detected_within_the_bound() -> None:
    sc = scenario(timeline=("at 1s crash n3",))
    slow = start(sc)
    everyone_knows(slow, ["n1", "n2", "n3"])
    found = finish(slow, 30 * S)
    assert sum(v.startswith("slow_detection") for v in found) == 2, found
    quick = start(sc)
    everyone_knows(quick, ["n1", "n2", "n3"])
    until(quick, S)
    for observer in ("n1", "n2"):
        quick.on_membership(
            observer, MemberEvent("n3", ("n3", 7400), ALIVE, SUSPECT), 3 * S,
            subject_liveness=Liveness.DOWN,
        )  # fmt: skip
    for observer in ("n1", "n2"):  # the base timeout later: three members expect no confirmations
        quick.on_membership(
            observer, MemberEvent("n3", ("n3", 7400), SUSPECT, DEAD), 5 * S,
            subject_liveness=Liveness.DOWN,
        )  # fmt: skip
    assert finish(quick, 30 * S) == []
    assert len(quick.detection_ns) == 2
    late = start(sc)
    everyone_knows(late, ["n1", "n2", "n3"])
    until(late, S)
    late.on_membership(
        "n1", MemberEvent("n3", ("n3", 7400), SUSPECT, DEAD), 25 * S, subject_liveness=Liveness.DOWN
    )
    found = finish(late, 30 * S)
    assert sum(v.startswith("slow_detection") for v in found) == 2, found


def test_suspecting_a_running_member_in_a_fault_free_run_is_a_false_suspicion() -> None:
    quiet = start(scenario())
    everyone_knows(quiet, ["n1", "n2", "n3"])
    tell(quiet, "n1", "n2", SUSPECT, 3 * S)
    assert "false_suspicion" in kinds(finish(quiet, 5 * S))
    lossy = start(scenario(timeline=("at 1s loss 0.2",)))
    everyone_knows(lossy, ["n1", "n2", "n3"])
    tell(lossy, "n1", "n2", SUSPECT, 3 * S)
    assert finish(lossy, 5 * S) == []


# --- the end state ----------------------------------------------------------------------------


def fake_node(
    name: str,
    members: list[str],
    *,
    registry: RuleRegistry | None = None,
    offsets: dict[str, int] | None = None,
) -> SimpleNamespace:
    states = [(m, (m, 7400), "alive", 0) for m in members]
    return SimpleNamespace(
        registry=registry or RuleRegistry("10/s"),
        members=lambda: states,
        counters=CounterStore(name),
        ring=HashRing(members),
        membership=SimpleNamespace(clock_offsets=lambda: dict(offsets or {}), local_health=0),
    )


def test_rules_must_converge_on_the_newest_write_by_stamp() -> None:
    names = ["n1", "n2", "n3"]
    newest, older = Stamp(2_000, 0, "n2"), Stamp(1_000, 0, "n1")

    def run(n3_holds: Stamp) -> list[str]:
        checkers = start(scenario())
        everyone_knows(checkers, names)
        checkers.on_rule_change("client:c", "5/s", S, older)
        checkers.on_rule_change("client:c", "7/s", S, newest)
        nodes = {}
        for name in names:
            registry = RuleRegistry("10/s")
            held = n3_holds if name == "n3" else newest
            registry.apply("client:c", "7/s" if held == newest else "5/s", held)
            nodes[name] = (fake_node(name, names, registry=registry), 0)
        checkers.on_final_state(nodes, 40 * S)  # type: ignore[arg-type]
        return finish(checkers, 40 * S)

    assert run(newest) == []
    found = run(older)  # n3 kept the write that arrived last, not the newest
    assert any(v.startswith("rules_diverged") and "n3 holds client:c" in v for v in found)
    assert any(v.startswith("rules_diverged") and "registries differ" in v for v in found)


def test_membership_must_converge_after_the_last_heal() -> None:
    names = ["n1", "n2", "n3"]
    checkers = start(scenario(timeline=("at 1s partition [n1] [n2 n3]", "at 2s heal")))
    everyone_knows(checkers, names)
    nodes = {n: (fake_node(n, names if n != "n1" else ["n1"]), 0) for n in names}
    checkers.on_final_state(nodes, 100 * S)  # type: ignore[arg-type]
    found = finish(checkers, 100 * S)
    assert any(v.startswith("membership_diverged") and "n1 holds n2 unknown" in v for v in found)
    agreed = start(scenario(timeline=("at 1s partition [n1] [n2 n3]", "at 2s heal")))
    everyone_knows(agreed, names)
    agreed.on_final_state({n: (fake_node(n, names), 0) for n in names}, 100 * S)  # type: ignore[arg-type]
    assert finish(agreed, 100 * S) == []


def test_replicas_hold_the_owners_counts_a_gossip_round_later() -> None:
    names = ["n1", "n2", "n3"]
    client = owned_by("n1", names)
    replica = HashRing(names).preference_list(client, 2)[1]
    end = 10 * S

    def run(replicated: int) -> list[str]:
        checkers = start(scenario())
        everyone_knows(checkers, names)
        decide(checkers, "n1", 9 * S + 200 * MS, client, RULE, n=5)
        nodes = {n: fake_node(n, names) for n in names}
        index = (SIM_EPOCH_NS + end) // S - 1
        owner = nodes["n1"].counters
        owner.merge(client, RULE.series, index, (("n1", 5),), index)
        nodes[replica].counters.merge(client, RULE.series, index, (("n1", replicated),), index)
        checkers.on_final_state({n: (node, 0) for n, node in nodes.items()}, end)  # type: ignore[arg-type]
        return finish(checkers, end)

    assert run(5) == []
    found = run(2)
    assert any(
        v.startswith("replica_behind") and f"{replica} holds 2 of n1's 5" in v for v in found
    )


def test_clock_offset_estimates_stay_within_half_the_longest_delay() -> None:
    names = ["n1", "n2", "n3"]

    def run(estimate: int) -> list[str]:
        checkers = start(scenario())
        everyone_knows(checkers, names)
        nodes = {n: (fake_node(n, names, offsets={"n2": estimate} if n == "n1" else {}), 0)
                 for n in names}  # fmt: skip
        checkers.on_final_state(nodes, 5 * S)  # type: ignore[arg-type]
        return finish(checkers, 5 * S)

    assert run(400_000) == []  # within 0.5 ms (1 ms delays) plus a tick
    found = run(5 * MS)
    assert any(v.startswith("clock_offset_wrong") and "n1 estimates n2" in v for v in found)


@pytest.mark.parametrize("verb", ["hot c0 5", "rate 10", "set_rule c0 5/s", "reset c0"])
def test_rule_and_traffic_changes_keep_a_run_fault_free(verb: str) -> None:
    checkers = start(scenario(timeline=(f"at 1s {verb}",)))
    until(checkers, 2 * S)
    assert not checkers.history.faults_seen
    broken = start(scenario(timeline=("at 1s pause n2 for 100ms",)))
    until(broken, 2 * S)
    assert broken.history.faults_seen


def test_a_skewed_peers_offset_estimate_converges_on_the_truth() -> None:
    names = ["n1", "n2", "n3"]
    half_second = 500 * MS

    def run(estimate: int) -> list[str]:
        checkers = start(scenario(timeline=("at 1s skew n2 +500ms",), duration="200s"))
        everyone_knows(checkers, names)
        offsets = {"n2": estimate}
        nodes = {
            n: (
                fake_node(n, names, offsets=offsets if n == "n1" else {}),
                half_second * (n == "n2"),
            )
            for n in names
        }
        checkers.on_final_state(nodes, 200 * S)  # type: ignore[arg-type]
        return finish(checkers, 200 * S)

    assert run(half_second - 300_000) == []
    found = run(-half_second)  # the sign of the estimate flipped
    assert any(v.startswith("clock_offset_wrong") and "truly +500.000 ms" in v for v in found)


def test_the_owner_holds_a_nodes_degraded_admissions_once_reported() -> None:
    names = ["n1", "n2", "n3"]
    end = 10 * S
    index = (SIM_EPOCH_NS + end) // S - 1

    def share(client: str) -> int:
        return bounds.degraded_share(10, 0.5, members=3, position=1, client=client, window=index)

    client = next(c for i in range(50) if share(c := owned_by("n1", names, nth=i)) >= 1)

    def run(reported: int) -> list[str]:
        checkers = start(scenario(timeline=("at 100ms pause n3 for 1ms",)))
        everyone_knows(checkers, names)
        decide(checkers, "n2", 9 * S + 200 * MS, client, RULE, n=share(client), path="degraded")
        nodes = {n: fake_node(n, names) for n in names}
        if reported:
            nodes["n1"].counters.merge(client, RULE.series, index, (("n2", reported),), index)
        checkers.on_final_state({n: (node, 0) for n, node in nodes.items()}, end)  # type: ignore[arg-type]
        return finish(checkers, end)

    assert run(share(client)) == []
    found = run(0)
    assert any("n1 holds 0 of n2's" in v and "(degraded report)" in v for v in found), found


def test_a_forwarded_check_decided_twice_by_owners_is_decided_twice() -> None:
    client = owned_by("n1", ["n1", "n2", "n3"])

    def run(decisions: int) -> list[str]:
        checkers = start(scenario())
        everyone_knows(checkers, ["n1", "n2", "n3"])
        checkers.on_ticket("n2", client, S)
        decide(checkers, "n1", S + MS, client, RULE, n=decisions, path="forwarded")
        checkers.on_decision("n2", client, make_decision(True, 10, 9, 0, 0, "forwarded"), S, S)
        return finish(checkers, 2 * S)

    assert run(1) == []
    found = run(2)  # a duplicated datagram decided again, not answered from the cache
    assert any(v.startswith("decided_twice") and "decided 2 forwarded" in v for v in found)


def test_a_degraded_decision_in_a_healthy_run_needs_a_cause() -> None:
    names = ["n1", "n2", "n3"]
    client = owned_by("n1", names)
    early = start(scenario())
    everyone_knows(early, names, at=S)
    decide(early, "n2", S + 50 * MS, client, RULE, allowed=False, path="degraded")  # joining
    assert finish(early, 5 * S) == []
    late = start(scenario())
    everyone_knows(late, names, at=S)
    decide(late, "n2", 3 * S, client, RULE, allowed=False, path="degraded")
    assert "degraded_without_cause" in kinds(finish(late, 5 * S))
    faulty = start(scenario(timeline=("at 2s pause n1 for 2s",)))
    everyone_knows(faulty, names, at=S)
    decide(faulty, "n2", 3 * S, client, RULE, allowed=False, path="degraded")
    assert finish(faulty, 5 * S) == []


def test_a_pause_ends_by_itself_and_with_it_the_minority() -> None:
    names = ["n1", "n2"]
    client = owned_by("n2", names)
    bound = bounds.detection_bound_ns(MembershipConfig.lan(), 2)

    def run(pause: str) -> list[str]:
        checkers = start(scenario(2, timeline=(f"at 10s pause n1 for {pause}",), duration="90s"))
        everyone_knows(checkers, names)
        decide(checkers, "n2", 10 * S + bound + S, client, RULE)
        return finish(checkers, 60 * S)

    assert run("1s") == []  # n1 is back: n2 sees the whole cluster again
    found = run("40s")
    assert any("minority_decided_at_full" in v and "cut off" in v for v in found), found


def test_a_reaped_member_leaves_the_quorum_floor_only_if_it_may_have_left() -> None:
    """The node's quorum keeps a reaped dead member (its roster) until news of the member's
    departure, which comes without an event: the view's floor drops it only then."""
    from meshlimit.cluster.membership import MembershipConfig
    from meshlimit.cluster.wire.messages import MemberState
    from meshlimit.sim.views import View

    config = MembershipConfig()
    view = View("n1", 0, knows_ring=True, config=config)
    for member in ("n2", "n3"):
        view.apply(member, MemberState.ALIVE, 1)
    view.apply("n3", MemberState.DEAD, NS_PER_S)
    before_reap = NS_PER_S + config.dead_reap_ns // 2
    after_reap = NS_PER_S + 2 * config.dead_reap_ns
    assert view.quorum_floor(before_reap, {"n3"}) == 3  # not reaped yet: the table holds it
    assert view.quorum_floor(after_reap, set()) == 3  # reaped, but still in the roster
    assert view.quorum_floor(after_reap, {"n3"}) == 2  # reaped and gone: may be out
    assert view.quorum_floor(after_reap + config.forget_after_ns, set()) == 2  # forgotten
