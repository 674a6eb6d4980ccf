"""Scenario files: the cluster, limits, workload, network and fault timeline of one run.

A scenario is a TOML file; the smallest useful one::

    name = "minority partition"
    duration = "60s"
    nodes = 5
    timeline = ["at 10s partition [n1 n2] [n3 n4 n5]", "at 40s heal"]

The timeline may also be an array of tables, ``[[timeline]] at = "10s"
do = "partition [n1 n2] [n3 n4 n5]"``. Each entry is one :class:`Action`; the
grammar of every verb is the :data:`VERBS` table. Parsing is strict -- an
unknown key, verb or node, a duration without a unit, a rule that does not
parse -- and every problem is one :class:`ScenarioError` naming the file, the
place (``timeline[3] (line 17)``) and what is wrong, because a typo in a
scenario must not silently become a different experiment.

``generate_fuzz_scenario(seed)`` is swarm testing: the seed switches each kind
of fault on or off with probability 1/2, schedules the enabled ones in a safety
phase (the first 70% of the run), then heals everything for a liveness phase.
``Scenario.to_toml()`` writes any scenario back out, so a failing fuzz seed can
be kept as a file.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from meshlimit.core.rules import parse_rule
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

#: Verb -> its argument kinds in order; a trailing ``?`` marks an optional last argument
#: (``None`` when absent: "leave that setting as it is"). A ``duration`` is positive, a
#: ``delay`` may be zero, an ``instant`` is a time after the action's. ``groups`` takes all
#: the remaining bracketed groups; ``rule`` (a tier name or rule) takes the rest of the line.
VERBS: dict[str, tuple[str, ...]] = {
    "partition": ("groups",),
    "partition_oneway": ("group", "group"),
    "isolate": ("node",),
    "heal": (),
    "crash": ("node",),
    "restart": ("node",),
    "pause": ("node", "duration"),
    "resume": ("node",),
    "leave": ("node",),
    "join": ("node",),
    "skew": ("node", "signed_duration"),
    "drift": ("node", "ppm"),
    "jump": ("node", "signed_duration"),
    "loss": ("probability",),
    "duplicate": ("probability",),
    "reorder": ("probability", "delay?"),
    "latency": ("delay", "delay?"),
    "flap": ("node", "node", "duration", "instant"),
    "set_rule": ("client", "rule"),
    "remove_rule": ("client",),
    "hot": ("client", "rate"),
    "rate": ("rate",),
}
#: Filler words, allowed and ignored: ``pause n1 for 2s``, ``flap n1 n2 every 1s until 9s``.
_FILLERS: dict[str, frozenset[str]] = {
    "pause": frozenset({"for"}),
    "flap": frozenset({"every", "until"}),
}
_TOKEN = re.compile(r"\[[^\[\]]*\]|[^\s\[\]]+|[\[\]]")


class ScenarioError(ValueError):
    """A scenario that cannot be used: ``source: where: problem``."""

    def __init__(self, source: str, where: str, problem: str) -> None:
        self.source, self.where, self.problem = source, where, problem
        super().__init__(f"{source}: {where}: {problem}" if where else f"{source}: {problem}")


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

    def __str__(self) -> str:
        """The compact form, ``at 10s partition [n1 n2] [n3]``, which parses back equal."""
        words = ["at", format_duration(self.at_ns), self.verb]
        kinds = VERBS[self.verb]
        if kinds == ("groups",):
            kinds = ("group",) * len(self.args)
        for kind, arg in zip(kinds, self.args, strict=False):
            if arg is None:
                continue
            if kind == "group":
                words.append("[" + " ".join(arg) + "]")
            elif kind.rstrip("?") in ("duration", "delay", "signed_duration", "instant"):
                words.append(format_duration(arg))
            else:
                words.append(str(arg))
        return " ".join(words)


@dataclass(frozen=True, slots=True)
class LimitsSpec:
    """The rules: a default, named tiers, and per-client tier names or rules (as text)."""

    default: str = "100/s"
    tiers: tuple[tuple[str, str], ...] = ()
    clients: tuple[tuple[str, str], ...] = ()

    def resolve(self, rule_or_tier: str) -> str:
        """Rule text for a tier name or rule text."""
        return dict(self.tiers).get(rule_or_tier, rule_or_tier)

    def rule_for(self, client: str) -> str:
        """The rule text that applies to ``client`` at the start of the run."""
        return self.resolve(dict(self.clients).get(client, self.default))


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    """Traffic: ``rate`` requests/s over ``clients`` Zipf-popular ids, plus a hot client."""

    clients: int = 100
    rate: float = 1000.0
    zipf: float = 1.1
    """Zipf exponent of client popularity; 0 is uniform. Why 1.1: typical of API traffic."""
    hot_client: str | None = None
    hot_rate: float = 0.0
    cost: int = 1


@dataclass(frozen=True, slots=True)
class NetworkSpec:
    """The default link of the run (TOML ``[network]``)."""

    latency_ns: int = NS_PER_MS
    jitter_ns: int = 0
    jitter_dist: str = "lognormal"
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_ns: int = 10 * NS_PER_MS
    """Why 10 ms: several gossip rounds' worth of overtaking, when reordering is switched on."""
    bandwidth_bytes_per_s: int = 0

    def link_config(self) -> LinkConfig:
        """The :class:`LinkConfig` every link starts with."""
        return LinkConfig(
            latency_ns=self.latency_ns, jitter_ns=self.jitter_ns, jitter_dist=self.jitter_dist,
            loss=self.loss, duplicate=self.duplicate, reorder=self.reorder,
            reorder_ns=self.reorder_ns, bandwidth_bytes_per_s=self.bandwidth_bytes_per_s,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Scenario:
    """One simulation run's setup. ``seed`` is a default the command line may override."""

    name: str
    duration_ns: int
    nodes: int
    description: str = ""
    seed: int | None = None
    mode: str = "strict"
    limits: LimitsSpec = field(default_factory=LimitsSpec)
    workload: WorkloadSpec = field(default_factory=WorkloadSpec)
    network: NetworkSpec = field(default_factory=NetworkSpec)
    timeline: tuple[Action, ...] = ()
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
                  f"mode = {q(self.mode)}", "timeline = ["]  # fmt: skip
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
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(source, "", f"not valid TOML: {exc}") from exc
    return _Parser(source, text).scenario(data)


class _Parser:
    """Reads the decoded TOML tables, failing with the file and place on the first problem."""

    def __init__(self, source: str, text: str) -> None:
        self.source = source
        self.lines = text.splitlines()
        self.nodes = 0
        self.duration_ns = 0
        self.tiers: dict[str, str] = {}
        self.found_line = 0  # where the search for the next timeline entry's line starts

    def fail(self, where: str, problem: str) -> ScenarioError:
        return ScenarioError(self.source, where, problem)

    def table(self, data: dict[str, Any], where: str, keys: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise self.fail(where, "must be a table")
        unknown = sorted(set(data) - set(keys))
        if unknown:
            raise self.fail(where, f"unknown key {unknown[0]!r} (known: {', '.join(keys)})")
        return data

    def value(self, data: dict[str, Any], key: str, kind: type, default: Any, where: str) -> Any:
        if key not in data:
            return default
        value = data[key]
        if kind is float and type(value) is int:
            value = float(value)
        if type(value) is not kind or (kind is float and not math.isfinite(value)):
            raise self.fail(f"{where}{key}", f"expected {kind.__name__}, got {value!r}")
        return value

    def duration(self, data: dict[str, Any], key: str, default: int, where: str) -> int:
        if key not in data:
            return default
        value = data[key]
        if not isinstance(value, str):
            raise self.fail(
                f"{where}{key}", f"write durations as text with a unit, e.g. '60s', not {value!r}"
            )
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise self.fail(f"{where}{key}", str(exc)) from None

    def rule_text(self, text: Any, *, tier_ok: bool = True) -> str:
        """A tier name or rule notation, returned as given; ``ValueError`` otherwise."""
        if not isinstance(text, str):
            raise ValueError(f"expected a rule or tier name as text, got {text!r}")
        if tier_ok and text in self.tiers:
            return text
        try:
            parse_rule(text)
        except ValueError as exc:
            tiers = ", ".join(self.tiers)
            hint = f" (nor a tier: {tiers})" if tiers else " (and no tiers are defined)"
            raise ValueError(f"{exc}{hint if tier_ok else ''}") from None
        return text

    def rule(self, text: Any, where: str, *, tier_ok: bool = True) -> str:
        try:
            return self.rule_text(text, tier_ok=tier_ok)
        except ValueError as exc:
            raise self.fail(where, str(exc)) from None

    def scenario(self, data: dict[str, Any]) -> Scenario:
        keys = ("name", "description", "seed", "duration", "nodes", "mode", "limits",
                "workload", "network", "timeline")  # fmt: skip
        self.table(data, "top level", keys)
        if "duration" not in data or "nodes" not in data:
            raise self.fail("top level", "'duration' and 'nodes' are required")
        nodes = self.value(data, "nodes", int, 0, "")
        if not 1 <= nodes <= MAX_NODES:
            raise self.fail("nodes", f"must be from 1 to {MAX_NODES}, got {nodes}")
        self.nodes = nodes
        self.duration_ns = self.duration(data, "duration", 0, "")
        if self.duration_ns <= 0:
            raise self.fail("duration", "must be positive")
        mode = self.value(data, "mode", str, "strict", "")
        if mode not in MODES:
            raise self.fail("mode", f"must be one of {', '.join(MODES)}, got {mode!r}")
        limits = self.limits(data.get("limits", {}))
        return Scenario(
            name=self.value(data, "name", str, Path(self.source).stem, ""),
            description=self.value(data, "description", str, "", ""),
            seed=self.value(data, "seed", int, None, ""),
            duration_ns=self.duration_ns, nodes=nodes, mode=mode, limits=limits,
            workload=self.workload(data.get("workload", {})),
            network=self.network(data.get("network", {})),
            timeline=self.timeline(data.get("timeline", [])), source=self.source,
        )  # fmt: skip

    def limits(self, data: dict[str, Any]) -> LimitsSpec:
        self.table(data, "[limits]", ("default", "tiers", "clients"))
        tiers = data.get("tiers", {})
        self.table(tiers, "[limits.tiers]", tuple(tiers) if isinstance(tiers, dict) else ())
        for name, rule in tiers.items():
            self.rule(rule, f"[limits.tiers] {name}", tier_ok=False)
        self.tiers = dict(tiers)
        clients = data.get("clients", {})
        self.table(clients, "[limits.clients]", tuple(clients) if isinstance(clients, dict) else ())
        for client, rule in clients.items():
            self.rule(rule, f"[limits.clients] {client}")
        default = self.rule(data.get("default", "100/s"), "[limits] default")
        return LimitsSpec(default, tuple(tiers.items()), tuple(clients.items()))

    def workload(self, data: dict[str, Any]) -> WorkloadSpec:
        where = "[workload] "
        self.table(
            data, "[workload]", ("clients", "rate", "zipf", "hot_client", "hot_rate", "cost")
        )
        spec = WorkloadSpec(
            clients=self.value(data, "clients", int, 100, where),
            rate=self.value(data, "rate", float, 1000.0, where),
            zipf=self.value(data, "zipf", float, 1.1, where),
            hot_client=self.value(data, "hot_client", str, None, where),
            hot_rate=self.value(data, "hot_rate", float, 0.0, where),
            cost=self.value(data, "cost", int, 1, where),
        )
        checks = (("clients", 1 <= spec.clients <= MAX_CLIENTS), ("rate", spec.rate >= 0),
                  ("cost", spec.cost >= 1), ("zipf", spec.zipf >= 0),
                  ("hot_rate", spec.hot_rate >= 0))  # fmt: skip
        for key, ok in checks:
            if not ok:
                raise self.fail(where + key, f"out of range: {getattr(spec, key)!r}")
        return spec

    def network(self, data: dict[str, Any]) -> NetworkSpec:
        where = "[network] "
        keys = ("latency", "jitter", "jitter_dist", "loss", "duplicate", "reorder",
                "reorder_delay", "bandwidth")  # fmt: skip
        self.table(data, "[network]", keys)
        default = NetworkSpec()
        spec = NetworkSpec(
            latency_ns=self.duration(data, "latency", default.latency_ns, where),
            jitter_ns=self.duration(data, "jitter", default.jitter_ns, where),
            jitter_dist=self.value(data, "jitter_dist", str, default.jitter_dist, where),
            loss=self.value(data, "loss", float, 0.0, where),
            duplicate=self.value(data, "duplicate", float, 0.0, where),
            reorder=self.value(data, "reorder", float, 0.0, where),
            reorder_ns=self.duration(data, "reorder_delay", default.reorder_ns, where),
            bandwidth_bytes_per_s=self.value(data, "bandwidth", int, 0, where),
        )
        for key in ("loss", "duplicate", "reorder"):
            if not 0.0 <= getattr(spec, key) <= 1.0:
                raise self.fail(
                    where + key, f"must be a probability from 0 to 1, not {data[key]!r}"
                )
        if spec.jitter_dist not in JITTER_DISTRIBUTIONS:
            raise self.fail(
                where + "jitter_dist", f"must be one of {', '.join(JITTER_DISTRIBUTIONS)}"
            )
        if spec.bandwidth_bytes_per_s < 0:
            raise self.fail(where + "bandwidth", "must be >= 0 bytes/s (0 is unlimited)")
        return spec

    def timeline(self, entries: Any) -> tuple[Action, ...]:
        if not isinstance(entries, list):
            raise self.fail("timeline", "must be an array of strings or of [[timeline]] tables")
        actions = []
        for index, entry in enumerate(entries):
            if isinstance(entry, str):
                where = self.where(index, entry)
                match = re.fullmatch(r"\s*at\s+(\S+)\s+(.*)", entry, re.DOTALL)
                if not match:
                    raise self.fail(where, f"expected 'at TIME VERB ARGS...', got {entry!r}")
                at_text, body = match.groups()
            elif isinstance(entry, dict):
                where = self.where(index, entry.get("do"))
                self.table(entry, where, ("at", "do"))
                if not isinstance(entry.get("at"), str) or not isinstance(entry.get("do"), str):
                    raise self.fail(where, 'needs at = "TIME" and do = "VERB ARGS..." as strings')
                at_text, body = entry["at"], entry["do"]
            else:
                raise self.fail(
                    f"timeline[{index}]", f"expected a string or a table, got {entry!r}"
                )
            actions.append(self.action(at_text, body, where))
        return tuple(sorted(actions, key=lambda action: action.at_ns))  # stable: file order in ties

    def where(self, index: int, needle: Any) -> str:
        """``timeline[i]``, plus the line number when the entry's text can be found.

        Entries are searched for in order, each after the previous one's line, so
        two identical entries are told apart.
        """
        if isinstance(needle, str) and needle.strip():
            start = self.found_line
            for number in [*range(start, len(self.lines)), *range(start)]:
                if needle.strip() in self.lines[number]:
                    self.found_line = number + 1
                    return f"timeline[{index}] (line {number + 1})"
        return f"timeline[{index}]"

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
            return (client, self.rule_text(rule.strip()))
        tokens = [t for t in _TOKEN.findall(rest) if t not in _FILLERS.get(verb, ())]
        if any(t in ("[", "]") for t in tokens):
            raise ValueError(f"unbalanced brackets in {rest!r}")
        if kinds == ("groups",):
            kinds = ("group",) * max(1, len(tokens))
        required = sum(1 for kind in kinds if not kind.endswith("?"))
        if not required <= len(tokens) <= len(kinds):
            usage = " ".join(k.upper() for k in kinds)
            raise ValueError(f"expected {usage or 'no arguments'}, got {rest!r}")
        args = [
            self.argument(kind.rstrip("?"), token, at_ns)
            for kind, token in zip(kinds, tokens, strict=False)
        ]
        args += [None] * (len(kinds) - len(tokens))
        if verb.startswith("partition"):
            seen = [node for group in args for node in group]
            if len(seen) != len(set(seen)):
                raise ValueError("a node appears in more than one group")
        if verb == "flap" and args[0] == args[1]:
            raise ValueError("needs two different nodes")
        return tuple(args)

    def argument(self, kind: str, token: str, at_ns: int) -> Any:
        if kind == "group":
            if not token.startswith("["):
                raise ValueError(f"expected a [group of nodes], got {token!r}")
            names = token[1:-1].replace(",", " ").split()
            if not names:
                raise ValueError("empty group []")
            return tuple(self.argument("node", name, at_ns) for name in names)
        if kind == "node":
            if not re.fullmatch(r"n[1-9][0-9]*", token) or int(token[1:]) > self.nodes:
                raise ValueError(f"unknown node {token!r} (nodes are n1..n{self.nodes})")
            return token
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


def _number(token: str) -> float:
    try:
        number = float(token)
    except ValueError:
        raise ValueError(f"expected a number, got {token!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"expected a finite number, got {token!r}")
    return number
