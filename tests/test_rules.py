"""Tests for meshlimit.core.rules: the notation, its canonical form, and its errors."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from meshlimit.core.rules import (
    ALGORITHMS,
    DEFAULT_ALGORITHM,
    MAX_COUNT,
    MAX_RULE_CHARS,
    MAX_WINDOW_NS,
    NS_PER_MS,
    UNITS_NS,
    Rule,
    as_rule,
    format_window,
    parse_rule,
    parse_window,
)

MS = NS_PER_MS
S = 1000 * MS
MINUTE = 60 * S
HOUR = 60 * MINUTE
DAY = 24 * HOUR

# -- the brief's examples ----------------------------------------------------------------

EXAMPLES = [
    # (notation, expected rule, canonical text)
    ("100/minute", Rule(100, MINUTE), "100/minute"),
    ("10/s", Rule(10, S), "10/second"),
    ("20/250ms", Rule(20, 250 * MS), "20/250ms"),
    ("5000/hour burst 500", Rule(5000, HOUR, 500), "5000/hour burst 500"),
    (
        "300/90s algo fixed_window",
        Rule(300, 90 * S, 0, "fixed_window"),
        "300/90s algo fixed_window",
    ),
    ("10 per minute", Rule(10, MINUTE), "10/minute"),
    ("10/2 minutes", Rule(10, 2 * MINUTE), "10/2m"),
    ("10 per 2 minutes", Rule(10, 2 * MINUTE), "10/2m"),
    ("1000/minute burst 200", Rule(1000, MINUTE, 200), "1000/minute burst 200"),
    ("50/second", Rule(50, S), "50/second"),
    ("5000/90s", Rule(5000, 90 * S), "5000/90s"),
    ("10/250ms", Rule(10, 250 * MS), "10/250ms"),
    ("7/day", Rule(7, DAY), "7/day"),
    ("7/24h", Rule(7, DAY), "7/day"),
    ("7/48h", Rule(7, 2 * DAY), "7/2d"),
    ("7/60s", Rule(7, MINUTE), "7/minute"),
    ("7/1000ms", Rule(7, S), "7/second"),
    ("7/1.5s", Rule(7, 1500 * MS), "7/1500ms"),
    ("7/1.5m", Rule(7, 90 * S), "7/90s"),
    ("7/0.5 hours", Rule(7, 30 * MINUTE), "7/30m"),
    ("7/0.001s", Rule(7, MS), "7/1ms"),
    ("7/366d", Rule(7, MAX_WINDOW_NS), "7/366d"),
    ("7/h", Rule(7, HOUR), "7/hour"),
    ("7/d", Rule(7, DAY), "7/day"),
    ("7/m", Rule(7, MINUTE), "7/minute"),
    ("7/min", Rule(7, MINUTE), "7/minute"),
    ("7/sec", Rule(7, S), "7/second"),
    ("7/3 milliseconds", Rule(7, 3 * MS), "7/3ms"),
    ("  7 / minute  ", Rule(7, MINUTE), "7/minute"),
    ("7/MINUTE BURST 3 ALGO Token_Bucket", Rule(7, MINUTE, 3, "token_bucket"), None),
    ("7/minute algo token_bucket burst 3", Rule(7, MINUTE, 3, "token_bucket"), None),
    ("7 PER Minute", Rule(7, MINUTE), "7/minute"),
    ("7/minute burst 0", Rule(7, MINUTE), "7/minute"),
    ("7/minute algo sliding_window", Rule(7, MINUTE), "7/minute"),
    ("4294967295/second", Rule(MAX_COUNT, S), "4294967295/second"),
    ("4294967294/second burst 1", Rule(MAX_COUNT - 1, S, 1), "4294967294/second burst 1"),
]


@pytest.mark.parametrize(("text", "rule", "canonical"), EXAMPLES)
def test_examples_parse(text, rule, canonical):
    parsed = parse_rule(text)
    assert parsed == rule
    assert Rule.parse(text) == rule
    assert parse_rule(str(parsed)) == rule
    if canonical is not None:
        assert str(parsed) == canonical


def test_canonical_text_orders_options_burst_then_algo():
    assert str(Rule(7, MINUTE, 3, "token_bucket")) == "7/minute burst 3 algo token_bucket"
    assert str(Rule(7, MINUTE, 0, "fixed_window")) == "7/minute algo fixed_window"


def test_defaults_and_capacity():
    rule = Rule(100, MINUTE)
    assert rule.burst == 0
    assert rule.algo == DEFAULT_ALGORITHM == "sliding_window"
    assert rule.capacity == 100
    assert Rule(100, MINUTE, 20).capacity == 120


def test_series_is_shared_by_limit_and_burst_but_not_by_window_or_algo():
    base = Rule(100, MINUTE)
    assert Rule(5, MINUTE, 50).series == base.series == "sliding_window:60000000000"
    assert Rule(100, HOUR).series != base.series
    assert Rule(100, MINUTE, 0, "fixed_window").series != base.series
    # The series is derived, not part of equality or the constructor.
    assert Rule(5, MINUTE) != base


def test_rules_are_frozen_and_hashable():
    rule = Rule(1, S)
    with pytest.raises(AttributeError):
        rule.limit = 2  # type: ignore[misc]
    assert len({Rule(1, S), Rule(1, S), parse_rule("1/s")}) == 1


def test_as_rule_accepts_a_rule_or_its_notation():
    rule = Rule(3, S)
    assert as_rule(rule) is rule
    assert as_rule("3/s") == rule
    with pytest.raises(TypeError, match="rule must be a Rule"):
        as_rule(3)  # type: ignore[arg-type]


def test_format_and_parse_window():
    assert format_window(MINUTE) == "minute"
    assert format_window(2 * MINUTE) == "2m"
    assert format_window(1500 * MS) == "1500ms"
    assert format_window(DAY + HOUR) == "25h"
    assert parse_window("250 ms") == 250 * MS
    assert parse_window("2 hours") == 2 * HOUR
    assert parse_window("1.5s") == 1500 * MS
    assert parse_window("second") == S


# -- errors name the offending part ------------------------------------------------------

BAD = [
    # (notation, a part of the message that names what is wrong)
    ("10/fortnight", "'fortnight'"),
    ("10/2 fortnights", "'fortnights'"),
    ("abc/minute", "'abc'"),
    ("0/minute", "limit 0"),
    ("-1/minute", "'-1'"),
    ("1.5/minute", "'1.5'"),
    ("10/minute burst -1", "'-1'"),
    ("10/minute burst x", "'x'"),
    ("10/minute burst 1.5", "'1.5'"),
    ("10/minute algo leaky_bucket", "'leaky_bucket'"),
    ("", "LIMIT/WINDOW"),
    ("   ", "LIMIT/WINDOW"),
    ("10/0ms", "'0ms'"),
    ("10/0s", "'0s'"),
    ("10/0.0001s", "whole number of milliseconds"),
    ("10/1.5ms", "whole number of milliseconds"),
    ("10/367d", "366 days"),
    ("1.5s", "'1.5s'"),
    ("10", "LIMIT/WINDOW"),
    ("10/", "LIMIT/WINDOW"),
    ("/minute", "LIMIT/WINDOW"),
    ("10/5", "'5'"),
    ("10/.5s", "'.5s'"),
    ("10/minute burst 1 burst 2", "'burst' given twice"),
    ("10/minute algo fixed_window burst 1 algo token_bucket", "'algo' given twice"),
    ("10/minute burst", "'burst' needs a value"),
    ("10/minute algo", "'algo' needs a value"),
    ("10/minute burst 5 burst", "'burst' needs a value"),
    ("10/minute extra", "'minute extra'"),
    ("10/minute burst5", "'minute burst5'"),
    ("4294967296/second", "limit 4294967296"),
    ("4294967295/second burst 1", "burst 1"),
    ("10/s/s", "'s/s'"),
    ("10 per", "LIMIT/WINDOW"),
    ("10/\u017f", "'\u017f'"),  # the long s case-folds to "s" but is not a unit
    ("\uff11\uff10/minute", "'\uff11\uff10'"),  # full-width digits are not digits here
    ("x" * (MAX_RULE_CHARS + 1), f"{MAX_RULE_CHARS} characters"),
]


@pytest.mark.parametrize(("text", "part"), BAD)
def test_bad_notation_names_the_offending_part(text, part):
    with pytest.raises(ValueError) as info:
        parse_rule(text)
    assert part in str(info.value)
    assert "bad rule" in str(info.value)


def test_long_but_valid_text_is_refused_only_past_the_bound():
    padded = "10/minute" + " " * (MAX_RULE_CHARS - len("10/minute"))
    assert parse_rule(padded) == Rule(10, MINUTE)
    with pytest.raises(ValueError, match="longer than 200"):
        parse_rule(padded + " ")


@pytest.mark.parametrize("value", [None, 10, 10.0, b"10/minute", ["10/minute"], Rule])
def test_non_text_is_refused_with_type_error(value):
    with pytest.raises(TypeError, match="expected a string"):
        parse_rule(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "part"),
    [
        ((0, S), "limit 0"),
        ((MAX_COUNT + 1, S), "limit"),
        ((1, MS - 1), "window"),
        ((1, MAX_WINDOW_NS + MS), "window"),
        ((1, 1500 * 1000), "whole number of milliseconds"),
        ((1, S, -1), "burst -1"),
        ((MAX_COUNT, S, 1), "burst 1"),
        ((1, S, 0, "leaky"), "'leaky'"),
        ((1, S, 0, "sliding_window", False, (Rule(1, S),)), "same window and algo"),
        ((1, S, 0, "sliding_window", False, (Rule(1, MINUTE, shadow=True),)), "whole rule"),
        ((1, S, 0, "sliding_window", False, (Rule(1, MINUTE, also=(Rule(1, HOUR),)),)), "own"),
        ((1, S, 0, "sliding_window", False, tuple(Rule(1, n * MINUTE) for n in range(1, 9))), "8"),
        (
            (
                1,
                S,
                0,
                "sliding_window",
                False,
                tuple(Rule(MAX_COUNT - 9, n * DAY + MS, 9, "fixed_window") for n in range(1, 6)),
            ),
            "200 characters",
        ),
    ],
)
def test_rule_constructor_validates(args, part):
    with pytest.raises(ValueError) as info:
        Rule(*args)
    assert part in str(info.value)


@pytest.mark.parametrize(
    ("args", "part"),
    [
        ((True, S), "limit must be an int"),
        ((1.0, S), "limit must be an int"),
        (("10", S), "limit must be an int"),
        ((1, float(S)), "window_ns must be an int"),
        ((1, S, None), "burst must be an int"),
        ((1, S, 0, None), "algo must be a str"),
        ((1, S, 0, "sliding_window", 1), "shadow must be a bool"),
        ((1, S, 0, "sliding_window", False, [Rule(1, MINUTE)]), "also must be a tuple of Rule"),
        ((1, S, 0, "sliding_window", False, ("1/minute",)), "also must be a tuple of Rule"),
    ],
)
def test_rule_constructor_refuses_wrong_types_naming_the_argument(args, part):
    with pytest.raises(TypeError, match=part):
        Rule(*args)


# -- several limits in one rule, months and years ------------------------------------------


def test_several_limits_parse_into_one_rule_in_the_order_given():
    rule = parse_rule("10/second;1000/hour")
    assert rule == Rule(10, S, also=(Rule(1000, HOUR),))
    assert rule.limits == (Rule(10, S), Rule(1000, HOUR))
    assert str(rule) == "10/second;1000/hour"
    # limits' separators, spaces, per-limit options and one shadow for the whole rule
    spelled = parse_rule(" 10 per second , 1000/hour burst 50 | 5/day algo fixed_window shadow")
    assert spelled.shadow and spelled.limits[1] == Rule(1000, HOUR, 50)
    assert str(spelled) == "10/second;1000/hour burst 50;5/day algo fixed_window shadow"
    assert parse_rule(str(spelled)) == spelled
    # A single limit is its own only limit.
    assert parse_rule("10/s").limits == (Rule(10, S),)


@pytest.mark.parametrize(
    ("text", "part"),
    [
        ("10/second;20/second", "same window and algo"),
        ("10/second;", "limit 2 of 2 is empty"),
        (";10/second", "limit 1 of 2 is empty"),
        ("10/second shadow;1000/hour", "shadow applies to the whole rule"),
        ("10/second;1000/fortnight", "'fortnight'"),
        (";".join(f"{n}/{n}s" for n in range(1, 10)), "more than 8 limits"),
    ],
)
def test_bad_multi_limit_notation_names_the_problem(text, part):
    with pytest.raises(ValueError, match="bad rule") as info:
        parse_rule(text)
    assert part in str(info.value)


def test_months_and_years_are_thirty_and_365_days():
    assert parse_rule("1000/month") == Rule(1000, 30 * DAY)
    assert parse_rule("2 per year") == Rule(2, 365 * DAY)
    assert parse_rule("5/2 months") == Rule(5, 60 * DAY)
    assert str(Rule(1, 30 * DAY)) == "1/month" and str(Rule(1, 365 * DAY)) == "1/year"
    assert str(Rule(1, 60 * DAY)) == "1/60d"
    with pytest.raises(ValueError, match="366 days"):
        parse_rule("1/2 years")


# -- round trips -------------------------------------------------------------------------

window_ms = st.one_of(
    st.sampled_from([1, 999, 1000, 1001, 60_000, 90_000, 3_600_000, 86_400_000]),
    st.integers(1, 366).map(lambda d: d * 86_400_000),
    st.integers(1, 366 * 24).map(lambda h: h * 3_600_000),
    st.integers(1, 10_000).map(lambda m: m * 60_000),
    st.integers(1, 100_000).map(lambda s: s * 1000),
    st.integers(1, MAX_WINDOW_NS // MS),
)


@st.composite
def rules(draw):
    burst = draw(st.one_of(st.just(0), st.integers(0, 1000), st.integers(0, MAX_COUNT - 1)))
    limit = draw(st.one_of(st.integers(1, 1000), st.integers(1, MAX_COUNT - burst)))
    assume(limit + burst <= MAX_COUNT)
    return Rule(limit, draw(window_ms) * MS, burst, draw(st.sampled_from(ALGORITHMS)))


@st.composite
def multi_rules(draw):
    """A rule of 1 to 4 limits on distinct series, shadow or not."""
    limits = draw(st.lists(rules(), min_size=1, max_size=4, unique_by=lambda r: r.series))
    first, *also = limits
    return Rule(
        first.limit, first.window_ns, first.burst, first.algo, draw(st.booleans()), tuple(also)
    )


@settings(max_examples=300)
@given(st.one_of(rules(), multi_rules()))
def test_canonical_text_round_trips(rule):
    text = str(rule)
    assert parse_rule(text) == rule
    assert str(parse_rule(text)) == text
    assert len(text) <= MAX_RULE_CHARS


def _cases(draw, text):
    return "".join(c.upper() if draw(st.booleans()) else c for c in text)


@st.composite
def notations(draw):
    """A notation string in any accepted spelling, with the rule it must parse to."""
    rule = draw(rules())
    units = [u for u, ns in UNITS_NS.items() if rule.window_ns % ns == 0]
    unit = draw(st.sampled_from(units))
    count = rule.window_ns // UNITS_NS[unit]
    if count == 1 and draw(st.booleans()):
        window = unit
    elif UNITS_NS[unit] >= S and draw(st.booleans()):
        # The same window as a decimal of a larger unit, e.g. 1500ms as "1.5s".
        window = f"{count}.{'0' * draw(st.integers(1, 3))}"
        window += draw(st.sampled_from(["", " "])) + unit
    else:
        window = f"{count}{draw(st.sampled_from(['', ' ', '  ']))}{unit}"
    if rule.window_ns % S and rule.window_ns < 1000 * S and draw(st.booleans()):
        ms = rule.window_ns // MS
        window = f"{ms // 1000}.{ms % 1000:03d}s"
    separator = draw(st.sampled_from(["/", " / ", "/ ", " per ", "  PER  ", "\tper\t"]))
    options = []
    if rule.burst or draw(st.booleans()):
        options.append(f"burst {rule.burst}")
    if rule.algo != DEFAULT_ALGORITHM or draw(st.booleans()):
        options.append(f"algo {rule.algo}")
    options = draw(st.permutations(options))
    text = f"{rule.limit}{separator}{_cases(draw, window)}"
    for option in options:
        text += draw(st.sampled_from([" ", "  ", "\t"])) + _cases(draw, option)
    text = draw(st.sampled_from(["", " "])) + text + draw(st.sampled_from(["", " \n"]))
    assume(len(text) <= MAX_RULE_CHARS)
    return text, rule


@settings(max_examples=200)
@given(notations())
def test_generated_notation_parses_to_its_rule(case):
    text, rule = case
    assert parse_rule(text) == rule
    assert parse_rule(str(parse_rule(text))) == rule


@settings(max_examples=150)
@given(st.lists(notations(), min_size=2, max_size=4), st.sampled_from([";", ",", "|", " ; "]))
def test_generated_multi_limit_notation_parses_to_its_limits(cases, separator):
    assume(len({rule.series for _, rule in cases}) == len(cases))
    text = separator.join(t.strip() for t, _ in cases)
    assume(len(text) <= MAX_RULE_CHARS)
    rule = parse_rule(text)
    assert rule.limits == tuple(r for _, r in cases)
    assert parse_rule(str(rule)) == rule


# -- fuzzing -----------------------------------------------------------------------------

RULE_ALPHABET = "0123456789/ .\t-+_msdhMSDHinuteocrpbalgfxwkn\u017f\u212a\u00a0\uff11"
fragments = st.sampled_from(
    ["burst", "algo", "per", "fixed_window", "token_bucket", "sliding_window", "ms", "/"]
)
rule_like = st.lists(
    st.one_of(st.text(RULE_ALPHABET, max_size=6), fragments, st.integers(-5, 2**40).map(str)),
    max_size=8,
).map(" ".join)


def _parses_or_value_error(text):
    try:
        rule = parse_rule(text)
    except ValueError as exc:
        assert str(exc)
        return
    assert isinstance(rule, Rule)
    assert parse_rule(str(rule)) == rule
    assert rule.limit >= 1 and rule.capacity <= MAX_COUNT
    assert MS <= rule.window_ns <= MAX_WINDOW_NS and rule.window_ns % MS == 0


@settings(max_examples=300)
@given(st.text(max_size=60))
def test_arbitrary_text_only_ever_raises_value_error(text):
    _parses_or_value_error(text)


@settings(max_examples=200)
@given(rule_like)
def test_rule_like_text_only_ever_raises_value_error(text):
    _parses_or_value_error(text)


@settings(max_examples=200)
@given(st.text(max_size=20), st.text(max_size=20))
def test_arbitrary_window_text_only_ever_raises_value_error(count, unit):
    try:
        window_ns = parse_window(count + unit)
    except ValueError:
        return
    assert MS <= window_ns <= MAX_WINDOW_NS
