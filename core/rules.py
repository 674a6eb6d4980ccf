"""Rules: how many requests a client may make per window, and the notation for them.

A limit is ``LIMIT/WINDOW[ burst N][ algo NAME]`` (``100/minute``, ``10/s``,
``20/250ms``, ``5000/hour burst 500``, ``300/90s algo fixed_window``, ``1000/month``),
or the ``limits`` library's ``10 per minute`` form. A rule is one limit or several,
separated by ``;`` (or ``,`` or ``|``, as ``limits`` accepts), optionally followed by
``shadow``: ``10/second;1000/hour``. Every limit of a rule must hold: a request is
allowed only if each allows it, and counts against each (a second burst then also
spends the hour's quota). Parsing is strict: anything not understood raises
:class:`ValueError` naming the offending part, because a typo in a limit must never
silently become a different limit; a value of the wrong type raises :class:`TypeError`.

Several limits: the first is the rule's own fields (``limit``, ``window_ns``...), the
others are :attr:`Rule.also`; :attr:`Rule.limits` lists them all. Two limits of one
rule may not share a counting series (the same algorithm and window: they would count
every request twice in one count); ``shadow`` applies to the whole rule and is written
once, at the end (a rule whose limits disagree on it is refused).

``str(rule)`` gives the canonical notation and always parses back to an
equal rule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

NS_PER_MS = 1_000_000

#: Window units and their length in nanoseconds.
UNITS_NS: dict[str, int] = {
    "ms": NS_PER_MS,
    "millisecond": NS_PER_MS,
    "milliseconds": NS_PER_MS,
    "s": 1000 * NS_PER_MS,
    "sec": 1000 * NS_PER_MS,
    "second": 1000 * NS_PER_MS,
    "seconds": 1000 * NS_PER_MS,
    "m": 60_000 * NS_PER_MS,
    "min": 60_000 * NS_PER_MS,
    "minute": 60_000 * NS_PER_MS,
    "minutes": 60_000 * NS_PER_MS,
    "h": 3_600_000 * NS_PER_MS,
    "hour": 3_600_000 * NS_PER_MS,
    "hours": 3_600_000 * NS_PER_MS,
    "d": 86_400_000 * NS_PER_MS,
    "day": 86_400_000 * NS_PER_MS,
    "days": 86_400_000 * NS_PER_MS,
    # As the ``limits`` library counts them: a month is 30 days, a year 365.
    "month": 30 * 86_400_000 * NS_PER_MS,
    "months": 30 * 86_400_000 * NS_PER_MS,
    "year": 365 * 86_400_000 * NS_PER_MS,
    "years": 365 * 86_400_000 * NS_PER_MS,
}

#: Canonical spelling of a one-unit window, longest unit first.
_NAMED_WINDOWS: tuple[tuple[int, str], ...] = (
    (365 * 86_400_000 * NS_PER_MS, "year"),
    (30 * 86_400_000 * NS_PER_MS, "month"),
    (86_400_000 * NS_PER_MS, "day"),
    (3_600_000 * NS_PER_MS, "hour"),
    (60_000 * NS_PER_MS, "minute"),
    (1000 * NS_PER_MS, "second"),
)
_SHORT_UNITS: tuple[tuple[int, str], ...] = (
    (86_400_000 * NS_PER_MS, "d"),
    (3_600_000 * NS_PER_MS, "h"),
    (60_000 * NS_PER_MS, "m"),
    (1000 * NS_PER_MS, "s"),
    (NS_PER_MS, "ms"),
)

ALGORITHMS: tuple[str, ...] = ("sliding_window", "fixed_window", "token_bucket")
DEFAULT_ALGORITHM = "sliding_window"

#: Counts are stored in 32-bit fields; limit plus burst must fit.
MAX_COUNT = 2**32 - 1
#: The longest window accepted: one year. Longer windows are almost always a unit typo.
MAX_WINDOW_NS = 366 * 86_400_000 * NS_PER_MS
MAX_RULE_CHARS = 200
#: Most limits in one rule. Why 8: ``limits``' usual stacks have two or three (per
#: second, hour, day); each one more is one more count per check.
MAX_LIMITS = 8
_LIMIT_SEPARATORS = re.compile(r"[;,|]")
_SHARED_SERIES = (
    "two limits with the same window and algo would count every request twice in one "
    "count; keep the stricter one"
)

_RATE = re.compile(r"^\s*(?P<limit>\S+?)\s*(?:/|\s+per\s+)\s*(?P<window>.*?)\s*\Z", re.IGNORECASE)
_WINDOW = re.compile(
    r"^(?P<count>[0-9]{1,12}(?:\.[0-9]{1,9})?)?\s*(?P<unit>[a-z]+)\Z", re.IGNORECASE
)
_DIGITS = re.compile(r"^[0-9]{1,12}\Z")


@dataclass(frozen=True, slots=True)
class Rule:
    """A rate limit: ``limit`` requests per ``window_ns``, plus ``burst`` extra after idling.

    ``algo`` chooses how the window is enforced (see ``docs/design.md``):
    ``sliding_window`` (default), ``fixed_window`` or ``token_bucket``.
    """

    limit: int
    window_ns: int
    burst: int = 0
    algo: str = DEFAULT_ALGORITHM
    #: Shadow (dry run): decisions are computed, counted and reported, but every
    #: request is allowed. Lets an operator try a rule on live traffic.
    shadow: bool = False
    #: Further limits that must hold too (``10/second;1000/hour``: ``1000/hour``), each
    #: a single limit (no ``also`` of its own, not shadow: the rule's ``shadow`` rules).
    also: tuple[Rule, ...] = ()
    #: Counting series: rules that share it share counts (limit and burst may differ).
    series: str = field(init=False, repr=False, compare=False)
    #: Every limit of the rule, this one first, each a single-limit rule: ``(self,)``
    #: for a rule of one limit. What the engine and the cluster count against.
    limits: tuple[Rule, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _validate(self.limit, self.window_ns, self.burst, self.algo, repr(self))
        if type(self.shadow) is not bool:
            raise TypeError(f"bad rule {self!r}: shadow must be a bool, got {self.shadow!r}")
        object.__setattr__(self, "series", f"{self.algo}:{self.window_ns}")
        if not self.also:
            object.__setattr__(self, "limits", (self,))
            return
        first = Rule(self.limit, self.window_ns, self.burst, self.algo, self.shadow)
        limits = (first, *_check_also(self.also, self.shadow, repr(self)))
        if len({limit.series for limit in limits}) < len(limits):
            raise ValueError(f"bad rule {self!r}: {_SHARED_SERIES}")
        object.__setattr__(self, "limits", limits)
        if len(str(self)) > MAX_RULE_CHARS:  # it would not parse back, nor fit the wire
            raise ValueError(f"bad rule {self!r}: notation longer than {MAX_RULE_CHARS} characters")

    @classmethod
    def parse(cls, text: str) -> Rule:
        """Parse rule notation; raise ``ValueError`` naming the offending part."""
        return parse_rule(text)

    @property
    def capacity(self) -> int:
        """Most a client can spend at once after idling: the limit plus the burst."""
        return self.limit + self.burst

    def __str__(self) -> str:
        text = ";".join(_limit_text(limit) for limit in self.limits)
        if self.shadow:
            text += " shadow"
        return text


def _limit_text(rule: Rule) -> str:
    """One limit's canonical notation (``shadow`` left to the whole rule)."""
    text = f"{rule.limit}/{format_window(rule.window_ns)}"
    if rule.burst:
        text += f" burst {rule.burst}"
    if rule.algo != DEFAULT_ALGORITHM:
        text += f" algo {rule.algo}"
    return text


def _validate(limit: int, window_ns: int, burst: int, algo: str, text: str) -> None:
    for name, value in (("limit", limit), ("window_ns", window_ns), ("burst", burst)):
        if type(value) is not int:
            raise TypeError(f"bad rule {text}: {name} must be an int, got {value!r}")
    if type(algo) is not str:
        raise TypeError(f"bad rule {text}: algo must be a str, got {algo!r}")
    if not 1 <= limit <= MAX_COUNT:
        raise ValueError(
            f"bad rule {text}: limit {limit!r} must be an integer from 1 to {MAX_COUNT}"
        )
    if not NS_PER_MS <= window_ns <= MAX_WINDOW_NS:
        raise ValueError(f"bad rule {text}: window must be from 1ms to 366 days")
    if window_ns % NS_PER_MS:
        raise ValueError(f"bad rule {text}: window must be a whole number of milliseconds")
    if burst < 0 or limit + burst > MAX_COUNT:
        raise ValueError(
            f"bad rule {text}: burst {burst!r} must be >= 0 with limit+burst <= {MAX_COUNT}"
        )
    if algo not in ALGORITHMS:
        raise ValueError(f"bad rule {text}: algo {algo!r} is not one of {', '.join(ALGORITHMS)}")


def _check_also(also: object, shadow: bool, text: str) -> tuple[Rule, ...]:
    """A rule's further limits, checked: single limits, not shadow on their own, few."""
    if type(also) is not tuple or not all(isinstance(limit, Rule) for limit in also):
        raise TypeError(f"bad rule {text}: also must be a tuple of Rule, got {also!r}")
    if len(also) + 1 > MAX_LIMITS:
        raise ValueError(f"bad rule {text}: more than {MAX_LIMITS} limits")
    for limit in also:
        if limit.also:
            raise ValueError(f"bad rule {text}: a further limit has further limits of its own")
        if limit.shadow:
            raise ValueError(
                f"bad rule {text}: shadow applies to the whole rule: write it once, at the end"
            )
    return also


def format_window(window_ns: int) -> str:
    """Canonical window text: ``minute`` for one minute, ``90s``, ``250ms``."""
    for length, name in _NAMED_WINDOWS:
        if window_ns == length:
            return name
    for length, unit in _SHORT_UNITS:
        if window_ns % length == 0:
            return f"{window_ns // length}{unit}"
    raise AssertionError(f"window {window_ns} ns is not a whole number of ms")


def parse_window(text: str, *, rule_text: str = "") -> int:
    """Parse ``minute``, ``90s``, ``250 ms``, ``2 hours``, ``1.5s`` into nanoseconds."""
    where = f"bad rule {rule_text!r}: " if rule_text else ""
    match = _WINDOW.match(text.strip())
    if not match:
        raise ValueError(
            f"{where}window {text!r} is not COUNT UNIT (e.g. 'minute', '90s', '250ms')"
        )
    unit = match["unit"].lower()
    if unit not in UNITS_NS:
        raise ValueError(
            f"{where}window unit {match['unit']!r} is not one of ms, s, m, h, d, month, year"
        )
    count_text = match["count"] or "1"
    if "." in count_text:
        # Fractions are accepted only when they land on a whole millisecond.
        whole, frac = count_text.split(".")
        scale: int = 10 ** len(frac)  # (int ** int is typed Any: a negative power is a float)
        numerator = (int(whole) * scale + int(frac)) * UNITS_NS[unit]
        if numerator % (scale * NS_PER_MS):
            raise ValueError(f"{where}window {text!r} is not a whole number of milliseconds")
        window_ns = numerator // scale
    else:
        window_ns = int(count_text) * UNITS_NS[unit]
    if not NS_PER_MS <= window_ns <= MAX_WINDOW_NS:
        raise ValueError(f"{where}window {text!r} must be from 1ms to 366 days")
    return window_ns


def parse_rule(text: str) -> Rule:
    """Parse rule notation into a :class:`Rule`; see the module docstring for the grammar.

    Raises ``TypeError`` for anything but a ``str``, ``ValueError`` for bad notation."""
    if not isinstance(text, str):
        raise TypeError(f"bad rule {text!r}: expected a string like '100/minute'")
    if len(text) > MAX_RULE_CHARS:
        raise ValueError(f"bad rule: longer than {MAX_RULE_CHARS} characters")
    parts = _LIMIT_SEPARATORS.split(text)
    if len(parts) == 1:
        return _parse_limit(text, text)
    if len(parts) > MAX_LIMITS:
        raise ValueError(f"bad rule {text!r}: more than {MAX_LIMITS} limits")
    limits = []
    for number, part in enumerate(parts, 1):
        if not part.strip():
            raise ValueError(f"bad rule {text!r}: limit {number} of {len(parts)} is empty")
        limit = _parse_limit(part, text)
        if limit.shadow and number < len(parts):
            raise ValueError(
                f"bad rule {text!r}: shadow applies to the whole rule: write it once, at the end"
            )
        limits.append(limit)
    if len({limit.series for limit in limits}) < len(limits):
        raise ValueError(f"bad rule {text!r}: {_SHARED_SERIES}")
    first, shadow = limits[0], limits[-1].shadow
    also = tuple(replace(limit, shadow=False) for limit in limits[1:])
    return Rule(first.limit, first.window_ns, first.burst, first.algo, shadow, also)


def _parse_limit(part: str, text: str) -> Rule:
    """One limit's notation (``text`` is the whole rule, quoted in errors)."""
    words = part.split()
    options: dict[str, str] = {}
    # Trailing "burst N" / "algo NAME" pairs and a "shadow" flag, in any order, once each.
    shadow = False
    while len(words) >= 2:
        if words[-1].lower() == "shadow":
            if shadow:
                raise ValueError(f"bad rule {text!r}: 'shadow' given twice")
            shadow, words = True, words[:-1]
            continue
        if len(words) < 3 or words[-2].lower() not in ("burst", "algo"):
            break
        key = words[-2].lower()
        if key in options:
            raise ValueError(f"bad rule {text!r}: {key!r} given twice")
        options[key] = words[-1]
        words = words[:-2]
    if words and words[-1].lower() in ("burst", "algo"):
        raise ValueError(f"bad rule {text!r}: {words[-1]!r} needs a value")
    match = _RATE.match(" ".join(words))
    if not match or not match["window"]:
        raise ValueError(f"bad rule {text!r}: expected LIMIT/WINDOW, e.g. '100/minute'")
    limit_text = match["limit"]
    if not _DIGITS.match(limit_text):
        raise ValueError(f"bad rule {text!r}: limit {limit_text!r} is not a positive integer")
    window_ns = parse_window(match["window"], rule_text=text)
    burst_text = options.get("burst", "0")
    if not _DIGITS.match(burst_text):
        raise ValueError(f"bad rule {text!r}: burst {burst_text!r} is not a non-negative integer")
    algo = options.get("algo", DEFAULT_ALGORITHM).lower()
    if algo not in ALGORITHMS:
        raise ValueError(f"bad rule {text!r}: algo {algo!r} is not one of {', '.join(ALGORITHMS)}")
    limit, burst = int(limit_text), int(burst_text)
    if not 1 <= limit <= MAX_COUNT:
        raise ValueError(f"bad rule {text!r}: limit {limit} must be from 1 to {MAX_COUNT}")
    if limit + burst > MAX_COUNT:
        raise ValueError(f"bad rule {text!r}: burst {burst} makes limit+burst exceed {MAX_COUNT}")
    return Rule(limit, window_ns, burst, algo, shadow)


def as_rule(value: Rule | str, what: str = "rule") -> Rule:
    """Accept a :class:`Rule` or its notation; ``TypeError`` naming ``what`` for anything else."""
    if isinstance(value, Rule):
        return value
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a Rule or rule notation (str), got {value!r}")
    return parse_rule(value)
