"""What a client is told (``sim/answers.py``): ``remaining`` no more than the decider's own
admissions leave (``remaining_overstated``), and a refusal never saying "retry now", nor
"never" for a cost that fits (``retry_now``). Hand-made observations, fed in the world's
order (the answer, then the node's log entry of it), and one planted bug run for each
(``scripts/mutation/answers.py``)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from meshlimit.core.decision import make_decision
from meshlimit.core.rules import Rule, parse_rule
from meshlimit.sim.checkers import Checkers
from meshlimit.sim.events import NS_PER_MS, NS_PER_S, SIM_EPOCH_NS
from meshlimit.sim.runner import SCENARIO_DIR, run_scenario
from meshlimit.sim.scenario import load_scenario, parse_scenario

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from mutation.answers import ANSWERS_MUTANTS  # noqa: E402

S, MS = NS_PER_S, NS_PER_MS
FIXED = parse_rule("10/s algo fixed_window")
SLIDING = parse_rule("10/s burst 5")
BUCKET = parse_rule("10/s algo token_bucket")
VERDICTS = {"remaining_overstated", "retry_now"}


def checkers() -> Checkers:
    text = (
        'duration = "10s"\nnodes = 3\nmode = "strict"\ntimeline = []\n[limits]\ndefault = "10/s"\n'
    )
    return Checkers(parse_scenario(text))


def answer(
    c: Checkers, node: str, at: int, rule: Rule, remaining: int, *, allowed: bool = True,
    retry_ns: int = 0, path: str = "owner", client: str = "c", wall: int | None = None,
) -> None:  # fmt: skip
    """``node`` decides ``client``'s check at ``at`` (its wall clock reading ``wall``, else
    true time), tells the client ``remaining`` (and ``retry_ns`` when refused), then logs
    the decision."""
    decision = make_decision(allowed, rule.limit, remaining, MS, retry_ns, path)
    c.on_decision(node, client, decision, at, at)
    reading = SIM_EPOCH_NS + (at if wall is None else wall)
    c.on_admissions(node, [(reading, client, rule, 1, allowed, path)], at)


def found(c: Checkers) -> set[str]:
    c.finish(10 * S)
    return {v.kind for v in c.violations} & VERDICTS


@pytest.mark.parametrize("rule", [FIXED, SLIDING, BUCKET])
@pytest.mark.parametrize("over", [0, 1])
def test_remaining_is_held_to_what_the_deciders_own_admissions_leave(rule: Rule, over: int) -> None:
    c = checkers()
    capacity = rule.capacity
    for i in range(capacity):  # each says exactly what is left, or one more
        answer(c, "n1", S + i * MS, rule, capacity - 1 - i + (over if i == 3 else 0))
    answer(c, "n1", S + capacity * MS, rule, 0, allowed=False, retry_ns=MS)
    assert found(c) == ({"remaining_overstated"} if over else set())


def test_a_bucket_behind_its_clocks_latest_reading_replays_its_own_again() -> None:
    """Stepped back, the node's arrival time may have been swept (it was in the past): the
    bucket is full again (fuzz seed 5000109, a clock jumped back 2.3 s)."""
    c = checkers()
    for i in range(5):
        answer(c, "n1", S + i * MS, BUCKET, 9 - i, wall=10 * S)
    answer(c, "n1", 2 * S, BUCKET, 9, wall=8 * S)  # a fresh bucket
    answer(c, "n1", 5 * S, BUCKET, 9, wall=10 * S + 200 * MS)  # caught up: tat 8.1 s then
    assert found(c) == set()


def test_a_new_window_starts_the_own_count_again() -> None:
    c = checkers()
    for i in range(10):
        answer(c, "n1", S + i * MS, FIXED, 9 - i)
    answer(c, "n1", 2 * S, FIXED, 9)
    answer(c, "n1", 2 * S + MS, FIXED, 9)  # two admitted this window: at most 8 left
    assert found(c) == {"remaining_overstated"}


@pytest.mark.parametrize(("retry_ns", "cost_fits", "bad"),
                         [(MS, True, False), (0, True, True), (-1, True, True)])  # fmt: skip
def test_a_refusal_never_says_retry_now_nor_never_for_a_cost_that_fits(
    retry_ns: int, cost_fits: bool, bad: bool
) -> None:
    c = checkers()
    for i in range(10):
        answer(c, "n1", S + i * MS, FIXED, 9 - i)
    answer(c, "n1", S + 10 * MS, FIXED, 0, allowed=False, retry_ns=retry_ns)
    assert found(c) == ({"retry_now"} if bad else set())
    assert math.isinf(make_decision(False, 1, 0, 0, -1).retry_after)


def test_a_forwarded_answer_is_held_to_the_owners_decisions_since_it_was_sent() -> None:
    for told, bad in ((6, False), (8, True)):
        c = checkers()
        c.on_admissions("n2", [], 0)  # the requester's life
        for i in range(3):  # the owner's own checks
            answer(c, "n1", S + i * MS, FIXED, 9 - i)
        sent = S + 5 * MS
        log = [(SIM_EPOCH_NS + sent + MS, "c", FIXED, 1, True, "forwarded")]
        c.on_admissions("n1", log, sent + MS)  # 4 admitted by n1: at most 6 left
        decision = make_decision(True, 10, told, MS, 0, "forwarded")
        c.on_decision("n2", "c", decision, sent, sent + 2 * MS, asked="n1", replied_by="n1")
        assert found(c) == ({"remaining_overstated"} if bad else set())


def test_a_reset_client_is_not_judged() -> None:
    text = (
        'duration = "10s"\nnodes = 3\ntimeline = ["at 500ms reset c"]\n[limits]\ndefault = "10/s"\n'
    )
    c = Checkers(parse_scenario(text))
    c.on_action(c.scenario.timeline[0], S // 2)
    for i in range(10):
        answer(c, "n1", S + i * MS, FIXED, 10)  # a reset may have cleared the counter
    c.finish(10 * S)
    assert not {v.kind for v in c.violations} & VERDICTS


CASES = [("remaining_overstated", "healthy", "remaining_overstated"),
         ("refusal_retry_now", "hot_client", "retry_now")]  # fmt: skip


@pytest.mark.parametrize(("mutant", "scenario", "verdict"), CASES)
def test_the_planted_bug_fails_the_scenario_that_passes_without_it(
    mutant: str, scenario: str, verdict: str
) -> None:
    plant = {m.name: m.plant for m in ANSWERS_MUTANTS}[mutant]
    sc = load_scenario(SCENARIO_DIR / f"{scenario}.toml")
    assert run_scenario(sc, sc.seed).violations == []
    planted = run_scenario(sc, sc.seed, plant=plant).violations
    assert any(str(v).startswith(verdict) for v in planted), planted
