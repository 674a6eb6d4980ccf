"""Scenario files: the cluster, limits, workload, network and fault timeline of one run.

A scenario is a TOML file; the smallest useful one::

    name = "minority partition"
    duration = "60s"
    nodes = 5
    timeline = ["at 10s partition [n1 n2] [n3 n4 n5]", "at 40s heal"]

The timeline may also be an array of tables, ``[[timeline]] at = "10s"
do = "partition [n1 n2] [n3 n4 n5]"``. Each entry is one :class:`Action`; the
grammar of every verb is the :data:`VERBS` table. Every other key is declared
once, on the field it fills (``metadata=toml(...)``), and read by the house's
settings reader (:mod:`meshlimit.core.settings`), as the daemon's config file
is. Parsing is strict -- an unknown key, verb or node, a duration without a
unit, a rule that does not parse -- and every problem is one
:class:`ScenarioError` naming the file, the place (a dotted key such as
``workload.rate``, or ``timeline[3] (line 17)``) and what is wrong, because a
typo in a scenario must not silently become a different experiment.

``generate_fuzz_scenario(seed)`` (``sim/fuzz.py``) is swarm testing: the seed
switches each kind of fault on or off with probability 1/2, schedules the
enabled ones in a safety phase (the first 70% of the run), then heals
everything for a liveness phase. ``Scenario.to_toml()`` writes any scenario
back out, so a failing fuzz seed can be kept as a file.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from functools import partial
from pathlib import Path
from typing import Any

from meshlimit.core.rules import parse_rule
from meshlimit.core.settings import (
    Reader,
    Setting,
    SettingsError,
    dotted,
    read_settings,
    toml,
)
from meshlimit.sim.events import NS_PER_MS, NS_PER_S, NS_PER_US
from meshlimit.sim.network import JITTER_DISTRIBUTIONS, LinkConfig

MAX_NODES = 64
#: Bound on distinct workload clients: the workload keeps one float per client.
MAX_CLIENTS = 10_000_000
MODES = ("strict", "local")

DURATION_UNITS_NS: dict[str, int] = {
    "ns": 1, "us": NS_PER_US, "µs": NS_PER_US, "ms": NS_PER_MS,
    "s": NS_PER_S, "m": 60 * NS_PER_S, "h": 3600 * NS_PER_S,
}  # fmt: skip
_DURATION = re.compile(r"([+-]?)([0-9]{1,15}(?:\.[0-9]{1,9})?)\s*(ns|us|µs|ms|s|m|h)")
_FORMAT_UNITS = ((3600 * NS_PER_S, "h"), (60 * NS_PER_S, "m"), (NS_PER_S, "s"),
                 (NS_PER_MS, "ms"), (NS_PER_US, "us"), (1, "ns"))  # fmt: skip

#: Verb -> its argument kinds in order; ``?`` marks an optional one (``None`` when left out:
#: "as it is", "the default"; skipped when the token has not its shape, see ``_has_shape``).
#: A ``duration`` is positive, a ``delay`` may be zero, an ``instant`` is after the action;
#: ``groups`` takes every bracketed group left; ``rule`` (a tier or rule) the rest of the
#: line; an ``identity`` is one of :data:`IDENTITIES`; ``seeds`` a group written ``via
#: [..]``; ``early`` a delay written ``serve_before_join 500ms``.
VERBS: dict[str, tuple[str, ...]] = {
    "partition": ("groups",),
    "partition_oneway": ("group", "group"),
    "isolate": ("node",),
    "heal": (),
    "crash": ("node",),
    "restart": ("node", "identity?", "seeds?", "early?"),
    "pause": ("node", "duration"),
    "resume": ("node",),
    "leave": ("node",),
    "join": ("node", "seeds?", "early?"),
    "skew": ("node", "signed_duration"),
    "drift": ("node", "ppm"),
    "jump": ("node", "signed_duration"),
    "loss": ("probability",),
    "duplicate": ("probability",),
    "misdeliver": ("probability",),
    "reorder": ("probability", "delay?"),
    "latency": ("delay", "delay?"),
    "flap": ("node", "node", "duration", "instant"),
    "set_rule": ("client", "rule"),
    "remove_rule": ("client",),
    "reset": ("client",),
    "hot": ("client", "rate"),
    "rate": ("rate",),
}
#: Filler words, allowed and ignored: ``pause n1 for 2s``, ``flap n1 n2 every 1s until 9s``.
_FILLERS: dict[str, frozenset[str]] = {
    "pause": frozenset({"for"}),
    "flap": frozenset({"every", "until"}),
    "restart": frozenset({"via", "serve_before_join"}),
    "join": frozenset({"via", "serve_before_join"}),
}
#: How a restarted node's new life relates to its old one (the node id is always kept):
#: ``new_seed`` (the default) seeds its RNG afresh, as a new process would; ``same_seed``
#: seeds it exactly as the life before (a daemon restarted with the same ``--seed-rng``).
IDENTITIES = ("new_seed", "same_seed")
_TOKEN = re.compile(r"\[[^\[\]]*\]|[^\s\[\]]+|[\[\]]")


class ScenarioError(SettingsError):
    """A scenario that cannot be used: ``source: where: problem``."""

    @property
    def where(self) -> str:
        """The place: a dotted key (``workload.rate``), a timeline entry (``timeline[3]
        (line 17)``), or empty for the whole file."""
        return self.key


def parse_duration(text: str, *, signed: bool = False) -> int:
    """``"250ms"``, ``"1.5s"``, ``"2m"``, ``"200us"`` (and ``"-3s"`` if ``signed``) to ns."""
    match = _DURATION.fullmatch(text.strip()) if isinstance(text, str) else None
    if not match:
        raise ValueError(
            f"bad duration {text!r}: expected NUMBER UNIT with unit ns, us, ms, s, m, h"
        )
    sign, number, unit = match.groups()
    if sign and not signed:
        raise ValueError(f"bad duration {text!r}: must not be signed")
    value = Fraction(number) * DURATION_UNITS_NS[unit]
    if value.denominator != 1:
        raise ValueError(f"bad duration {text!r}: not a whole number of nanoseconds")
    return -int(value) if sign == "-" else int(value)


def format_duration(ns: int) -> str:
    """The shortest exact text for ``ns`` that :func:`parse_duration` reads back."""
    if ns == 0:
        return "0s"
    for unit_ns, unit in _FORMAT_UNITS:
        if ns % unit_ns == 0:
            return f"{ns // unit_ns}{unit}"
    raise AssertionError("unreachable: every int is a whole number of ns")


@dataclass(frozen=True, slots=True)
class Action:
    """One timeline entry: at ``at_ns``, do ``verb`` with ``args`` (typed per :data:`VERBS`)."""

    at_ns: int
    verb: str
    args: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        # Optional arguments left out are None however it was built: code equals parsed text.
        kinds = VERBS[self.verb]
        if kinds != ("groups",) and len(self.args) < len(kinds):
            missing = len(kinds) - len(self.args)
            object.__setattr__(self, "args", (*self.args, *(None,) * missing))

    def __str__(self) -> str:
        """The compact form, ``at 10s partition [n1 n2] [n3]``, which parses back equal."""
        words = ["at", format_duration(self.at_ns), self.verb]
        kinds = VERBS[self.verb]
        if kinds == ("groups",):
            kinds = ("group",) * len(self.args)
        for kind, arg in zip(kinds, self.args, strict=False):
            if arg is None:
                continue
            if kind.rstrip("?") == "seeds":
                words += ["via", "[" + " ".join(arg) + "]"]
            elif kind.rstrip("?") == "early":
                words += ["serve_before_join", format_duration(arg)]
            elif kind == "group":
                words.append("[" + " ".join(arg) + "]")
            elif kind.rstrip("?") in ("duration", "delay", "signed_duration", "instant"):
                words.append(format_duration(arg))
            else:
                words.append(str(arg))
        return " ".join(words)


# --- how the settings are read (used by the declarations below) -------------------------

_DURATION_TEXT = 'a duration as text with a unit, e.g. "60s"'
_RULE_OR_TIER_TEXT = "a rule or a tier name as text"


def _duration(key: str, check: Callable[[str], int] = parse_duration) -> Mapping[str, Setting]:
    """Field metadata: a duration written as text at ``key``, stored in nanoseconds."""
    return toml(key=key, kind=str, expected=_DURATION_TEXT, check=check)


def _positive_duration(text: str) -> int:
    ns = parse_duration(text)
    if ns <= 0:
        raise ValueError("must be positive")
    return ns


def _rule_only(text: str) -> str:
    """Rule notation, returned as written (the simulator keeps rules as text)."""
    parse_rule(text)
    return text


def _rule_or_tier(text: str, tiers: Mapping[str, str]) -> str:
    """A tier name of ``[limits.tiers]`` or rule notation, returned as written."""
    if text in tiers:
        return text
    try:
        parse_rule(text)
    except ValueError as exc:
        names = ", ".join(tiers)
        hint = f" (nor a tier: {names})" if names else " (and no tiers are defined)"
        raise ValueError(f"{exc}{hint}") from None
    return text


def _tiers(earlier: Mapping[str, object]) -> dict[str, str]:
    """The tiers read before a hook, as ``{name: rule text}``."""
    tiers = earlier["tiers"]
    assert isinstance(tiers, tuple)
    return dict(tiers)


def _read_default(reader: Reader, key: str, raw: object, earlier: Mapping[str, object]) -> str:
    """``[limits] default``: a rule, or a tier of ``[limits.tiers]``."""
    text = reader.typed(key, raw, str, _RULE_OR_TIER_TEXT)
    return reader.checked(key, text, partial(_rule_or_tier, tiers=_tiers(earlier)))


def _read_clients(
    reader: Reader, key: str, raw: object, earlier: Mapping[str, object]
) -> tuple[tuple[str, str], ...]:
    """``[limits.clients]``: each client's rule, or tier of ``[limits.tiers]``."""
    check = partial(_rule_or_tier, tiers=_tiers(earlier))
    clients = []
    for client, value in reader.typed(key, raw, dict).items():
        entry = dotted(key, client)
        text = reader.typed(entry, value, str, _RULE_OR_TIER_TEXT)
        clients.append((client, reader.checked(entry, text, check)))
    return tuple(clients)


def _pairs(table: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(table.items())


_RULE = Setting(kind=str, expected="a rule as text", check=_rule_only)


# --- the scenario ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LimitsSpec:
    """The rules: a default, named tiers, and per-client tier names or rules (as text)."""

    default: str = field(default="100/s", metadata=toml(read=_read_default))
    tiers: tuple[tuple[str, str], ...] = field(
        default=(), metadata=toml(kind=dict, values=_RULE, check=_pairs)
    )
    clients: tuple[tuple[str, str], ...] = field(default=(), metadata=toml(read=_read_clients))

    def resolve(self, rule_or_tier: str) -> str:
        """Rule text for a tier name or rule text."""
        return dict(self.tiers).get(rule_or_tier, rule_or_tier)

    def rule_for(self, client: str) -> str:
        """The rule text that applies to ``client`` at the start of the run."""
        return self.resolve(dict(self.clients).get(client, self.default))


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    """Traffic: ``rate`` requests/s over ``clients`` Zipf-popular ids, plus a hot client."""

    clients: int = field(default=100, metadata=toml(low=1, high=MAX_CLIENTS))
    rate: float = field(default=1000.0, metadata=toml(low=0))
    zipf: float = field(default=1.1, metadata=toml(low=0))
    """Zipf exponent of client popularity; 0 is uniform. Why 1.1: typical of API traffic."""
    hot_client: str | None = field(default=None, metadata=toml())
    hot_rate: float = field(default=0.0, metadata=toml(low=0))
    cost: int = field(default=1, metadata=toml(low=1))


@dataclass(frozen=True, slots=True)
class NetworkSpec:
    """The default link of the run (TOML ``[network]``)."""

    latency_ns: int = field(default=NS_PER_MS, metadata=_duration("latency"))
    jitter_ns: int = field(default=0, metadata=_duration("jitter"))
    jitter_dist: str = field(default="lognormal", metadata=toml(choices=JITTER_DISTRIBUTIONS))
    loss: float = field(default=0.0, metadata=toml(low=0, high=1))
    duplicate: float = field(default=0.0, metadata=toml(low=0, high=1))
    reorder: float = field(default=0.0, metadata=toml(low=0, high=1))
    reorder_ns: int = field(default=10 * NS_PER_MS, metadata=_duration("reorder_delay"))
    """Why 10 ms: several gossip rounds' worth of overtaking, when reordering is switched on."""
    bandwidth_bytes_per_s: int = field(default=0, metadata=toml(key="bandwidth", low=0))
    """Bytes per second on each link; 0 is unlimited."""

    def link_config(self) -> LinkConfig:
        """The :class:`LinkConfig` every link starts with."""
        return LinkConfig(
            latency_ns=self.latency_ns, jitter_ns=self.jitter_ns, jitter_dist=self.jitter_dist,
            loss=self.loss, duplicate=self.duplicate, reorder=self.reorder,
            reorder_ns=self.reorder_ns, bandwidth_bytes_per_s=self.bandwidth_bytes_per_s,
        )  # fmt: skip


def _read_timeline(
    reader: Reader, key: str, raw: object, earlier: Mapping[str, object]
) -> tuple[Action, ...]:
    """``timeline``: its entries checked against the nodes, the run's end and the tiers."""
    nodes, duration_ns, limits = earlier["nodes"], earlier["duration_ns"], earlier["limits"]
    assert isinstance(nodes, int) and isinstance(duration_ns, int)
    assert isinstance(limits, LimitsSpec)
    return _Timeline(reader, nodes, duration_ns, dict(limits.tiers)).actions(key, raw)


def _read_absent(
    reader: Reader, key: str, raw: object, earlier: Mapping[str, object]
) -> tuple[str, ...]:
    """``absent``: nodes of the scenario that do not boot at 0 s (each distinct, not all)."""
    nodes = earlier["nodes"]
    assert isinstance(nodes, int)
    absent: list[str] = []
    for index, name in enumerate(reader.typed(key, raw, list, "an array of node names")):
        where = f"{key}[{index}]"
        text = reader.checked(where, reader.typed(where, name, str), partial(_node, nodes=nodes))
        if text in absent:
            raise reader.error(where, f"{text} is named twice")
        absent.append(text)
    if len(absent) >= nodes:
        raise reader.error(key, "at least one node must boot at 0 s")
    return tuple(absent)


@dataclass(frozen=True, slots=True)
class Scenario:
    """One simulation run's setup. ``seed`` is a default the command line may override."""

    name: str = field(metadata=toml())
    """Default: the file's name without its extension."""
    duration_ns: int = field(metadata=_duration("duration", _positive_duration))
    nodes: int = field(metadata=toml(low=1, high=MAX_NODES))
    description: str = field(default="", metadata=toml())
    seed: int | None = field(default=None, metadata=toml())
    mode: str = field(default="strict", metadata=toml(choices=MODES))
    authenticated: bool = field(default=False, metadata=toml())
    """Cluster datagrams sealed with a shared key (``cluster_keys``): MACs, boot ids and
    replay windows in play, as in a keyed production cluster. Why off: it costs an HMAC
    per datagram, and only scenarios about authentication need it."""
    limits: LimitsSpec = field(default_factory=LimitsSpec, metadata=toml())
    workload: WorkloadSpec = field(default_factory=WorkloadSpec, metadata=toml())
    network: NetworkSpec = field(default_factory=NetworkSpec, metadata=toml())
    absent: tuple[str, ...] = field(default=(), metadata=toml(read=_read_absent))
    """Nodes that do not boot at 0 s: each stays down until a ``join`` or ``restart``
    starts it (a node that joins later, for instance into one side of a partition)."""
    timeline: tuple[Action, ...] = field(default=(), metadata=toml(read=_read_timeline))
    source: str = field(default="<string>", compare=False)

    @property
    def node_names(self) -> tuple[str, ...]:
        """``("n1", ..., "nN")``."""
        return tuple(f"n{i}" for i in range(1, self.nodes + 1))

    def to_toml(self) -> str:
        """This scenario as a TOML file that :func:`parse_scenario` reads back equal."""
        q = json.dumps  # a JSON string is a valid TOML basic string
        w, n = self.workload, self.network
        lines = [f"name = {q(self.name)}", f"description = {q(self.description)}"]
        if self.seed is not None:
            lines.append(f"seed = {self.seed}")
        lines += [f'duration = "{format_duration(self.duration_ns)}"', f"nodes = {self.nodes}",
                  f"mode = {q(self.mode)}"]  # fmt: skip
        if self.authenticated:
            lines.append("authenticated = true")
        if self.absent:
            lines.append(f"absent = {json.dumps(list(self.absent))}")
        lines.append("timeline = [")
        lines += [f"  {q(str(action))}," for action in self.timeline]
        lines += ["]", "", "[limits]", f"default = {q(self.limits.default)}", "[limits.tiers]"]
        lines += [f"{q(k)} = {q(v)}" for k, v in self.limits.tiers]
        lines += ["[limits.clients]"] + [f"{q(k)} = {q(v)}" for k, v in self.limits.clients]
        lines += ["", "[workload]", f"clients = {w.clients}", f"rate = {w.rate!r}",
                  f"zipf = {w.zipf!r}", f"cost = {w.cost}"]  # fmt: skip
        if w.hot_client is not None:
            lines += [f"hot_client = {q(w.hot_client)}", f"hot_rate = {w.hot_rate!r}"]
        lines += ["", "[network]", f'latency = "{format_duration(n.latency_ns)}"',
                  f'jitter = "{format_duration(n.jitter_ns)}"', f"jitter_dist = {q(n.jitter_dist)}",
                  f"loss = {n.loss!r}", f"duplicate = {n.duplicate!r}", f"reorder = {n.reorder!r}",
                  f'reorder_delay = "{format_duration(n.reorder_ns)}"',
                  f"bandwidth = {n.bandwidth_bytes_per_s}", ""]  # fmt: skip
        return "\n".join(lines)


# --- parsing -----------------------------------------------------------------------------


def load_scenario(path: str | Path) -> Scenario:
    """Read and parse a scenario file; errors name the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(str(path), "", f"cannot read: {exc}") from exc
    return parse_scenario(text, source=str(path))


def parse_scenario(text: str, *, source: str = "<string>") -> Scenario:
    """Parse scenario TOML text; ``source`` names it in errors."""
    defaults = {"name": Path(source).stem, "source": source}
    return read_settings(Scenario, text, source=source, defaults=defaults, error=ScenarioError)


class _Timeline:
    """Reads the timeline's entries, failing with the entry and its line on the first problem."""

    def __init__(self, reader: Reader, nodes: int, duration_ns: int, tiers: dict[str, str]) -> None:
        self.reader = reader
        self.lines = reader.text.splitlines()
        self.nodes = nodes
        self.duration_ns = duration_ns
        self.tiers = tiers
        self.found_line = 0  # where the search for the next timeline entry's line starts

    def fail(self, where: str, problem: str) -> SettingsError:
        return self.reader.error(where, problem)

    def actions(self, key: str, raw: object) -> tuple[Action, ...]:
        entries = self.reader.typed(key, raw, list, "an array of strings or of [[timeline]] tables")
        actions = []
        for index, entry in enumerate(entries):
            if isinstance(entry, str):
                where = self.where(key, index, entry)
                match = re.fullmatch(r"\s*at\s+(\S+)\s+(.*)", entry, re.DOTALL)
                if not match:
                    raise self.fail(where, f"expected 'at TIME VERB ARGS...', got {entry!r}")
                at_text, body = match.groups()
            elif isinstance(entry, dict):
                where = self.where(key, index, entry.get("do"))
                unknown = sorted(set(entry) - {"at", "do"})
                if unknown:
                    raise self.fail(
                        where,
                        f"unknown key {unknown[0]!r}; the keys known in [[timeline]] are at, do",
                    )
                if not isinstance(entry.get("at"), str) or not isinstance(entry.get("do"), str):
                    raise self.fail(where, 'needs at = "TIME" and do = "VERB ARGS..." as strings')
                at_text, body = entry["at"], entry["do"]
            else:
                raise self.fail(f"{key}[{index}]", f"expected a string or a table, got {entry!r}")
            actions.append(self.action(at_text, body, where))
        return tuple(sorted(actions, key=lambda action: action.at_ns))  # stable: file order in ties

    def where(self, key: str, index: int, needle: object) -> str:
        """``timeline[i]``, plus the line number when the entry's text can be found.

        Entries are searched for in order, each after the previous one's line, so
        two identical entries are told apart.
        """
        if isinstance(needle, str) and needle.strip():
            start = self.found_line
            for number in [*range(start, len(self.lines)), *range(start)]:
                if needle.strip() in self.lines[number]:
                    self.found_line = number + 1
                    return f"{key}[{index}] (line {number + 1})"
        return f"{key}[{index}]"

    def action(self, at_text: str, body: str, where: str) -> Action:
        try:
            at_ns = parse_duration(at_text)
        except ValueError as exc:
            raise self.fail(where, f"time: {exc}") from None
        if at_ns > self.duration_ns:
            raise self.fail(
                where,
                f"at {at_text} is after the end of the run ({format_duration(self.duration_ns)})",
            )
        verb, rest = (body.split(None, 1) + ["", ""])[:2]
        if verb not in VERBS:
            close = difflib.get_close_matches(verb, VERBS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(VERBS)})"
            raise self.fail(where, f"unknown verb {verb!r}{hint}")
        try:
            args = self.arguments(verb, rest.strip(), at_ns)
        except ValueError as exc:
            raise self.fail(where, f"{verb}: {exc}") from None
        return Action(at_ns, verb, args)

    def arguments(self, verb: str, rest: str, at_ns: int) -> tuple[Any, ...]:
        kinds = VERBS[verb]
        if "rule" in kinds:
            client, rule = (rest.split(None, 1) + ["", ""])[:2]
            if not rule.strip():
                raise ValueError("expected CLIENT RULE, e.g. 'set_rule c1 100/s burst 10'")
            return (client, _rule_or_tier(rule.strip(), self.tiers))
        tokens = [t for t in _TOKEN.findall(rest) if t not in _FILLERS.get(verb, ())]
        if any(t in ("[", "]") for t in tokens):
            raise ValueError(f"unbalanced brackets in {rest!r}")
        if kinds == ("groups",):
            kinds = ("group",) * max(1, len(tokens))
        required = sum(1 for kind in kinds if not kind.endswith("?"))
        if not required <= len(tokens) <= len(kinds):
            raise ValueError(f"expected {_usage(kinds)}, got {rest!r}")
        args: list[Any] = []
        left = list(tokens)
        for kind in kinds:
            bare = kind.rstrip("?")
            if kind.endswith("?") and not (left and _has_shape(bare, left[0])):
                args.append(None)  # an optional argument left out
            else:
                args.append(self.argument(bare, left.pop(0), at_ns))
        if left:
            raise ValueError(f"expected {_usage(kinds)}, got {rest!r}")
        if verb.startswith("partition"):
            seen = [node for group in args for node in group]
            if len(seen) != len(set(seen)):
                raise ValueError("a node appears in more than one group")
        if verb == "flap" and args[0] == args[1]:
            raise ValueError("needs two different nodes")
        return tuple(args)

    def argument(self, kind: str, token: str, at_ns: int) -> Any:
        if kind == "identity":
            if token not in IDENTITIES:
                raise ValueError(f"expected {' or '.join(IDENTITIES)}, got {token!r}")
            return token
        if kind in ("group", "seeds"):
            if not token.startswith("["):
                raise ValueError(f"expected a [group of nodes], got {token!r}")
            names = token[1:-1].replace(",", " ").split()
            if not names:
                raise ValueError("empty group []")
            return tuple(self.argument("node", name, at_ns) for name in names)
        if kind == "node":
            return _node(token, self.nodes)
        if kind == "early":
            kind = "delay"
        if kind in ("duration", "delay", "signed_duration", "instant"):
            value = parse_duration(token, signed=kind == "signed_duration")
            if kind == "duration" and value <= 0:
                raise ValueError(f"duration {token!r} must be positive")
            if kind == "instant" and value <= at_ns:
                raise ValueError(f"until {token!r} must be after the action's time")
            return value
        if kind == "client":
            return token
        number = _number(token)
        if kind == "probability" and not 0.0 <= number <= 1.0:
            raise ValueError(f"probability {token!r} must be from 0 to 1")
        if kind == "rate" and number < 0:
            raise ValueError(f"rate {token!r} must be >= 0 (requests per second)")
        if kind == "ppm" and not -1e6 < number < 1e6:
            raise ValueError(f"drift {token!r} ppm is not a clock rate")
        return number


def _node(token: str, nodes: int) -> str:
    if not re.fullmatch(r"n[1-9][0-9]*", token) or int(token[1:]) > nodes:
        raise ValueError(f"unknown node {token!r} (nodes are n1..n{nodes})")
    return token


def _has_shape(kind: str, token: str) -> bool:
    """Whether ``token`` may be an argument of ``kind`` (so that optional ones may be left
    out): a group is bracketed, an identity a word, an early start a duration."""
    if kind in ("group", "seeds"):
        return token.startswith("[")
    if kind == "identity":
        return token.isidentifier()
    if kind == "early":
        try:
            parse_duration(token)
        except ValueError:
            return False
    return True


def _usage(kinds: tuple[str, ...]) -> str:
    words = {"identity?": f"[{'|'.join(IDENTITIES)}]", "seeds?": "[via [NODES]]",
             "early?": "[serve_before_join DELAY]"}  # fmt: skip
    return " ".join(words.get(kind, kind.upper()) for kind in kinds) or "no arguments"


def _number(token: str) -> float:
    try:
        number = float(token)
    except ValueError:
        raise ValueError(f"expected a number, got {token!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"expected a finite number, got {token!r}")
    return number
