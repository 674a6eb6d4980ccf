"""The daemon's configuration file (TOML): parse, validate, merge with flags, diff, reload.

Theory of operation. :func:`parse_config` turns a file's bytes into a frozen
:class:`DaemonConfig`, or raises one :class:`ConfigError` naming the file, the
key as a dotted path (``limits.tiers.gold``) and the problem. A key the file
leaves out stays ``None``, so that the effective value is decided in one place,
in this order: a command-line flag, then the file, then the preset
(:meth:`DaemonConfig.overridden_by`, :meth:`DaemonConfig.node_config`).

The ``[limits]`` table becomes rule-registry entries (``default``,
``tier:NAME``, ``client:ID``; :meth:`DaemonConfig.rule_entries`), and
:func:`diff_entries` compares two such maps. At run time a :class:`Reloader`
owns the file: on SIGHUP, and when a poll sees its mtime, size or content hash
change, it parses the file again. A bad file is logged at WARNING and the rules
in force stay. A good one has only its changed entries applied through the
runtime, as stamped rule writes that spread to every node with no restart; a
client's counts live in the counting series of its rule's window and
algorithm, so they survive any change that keeps those two. ``[cluster]`` is
read once, at start: a change there is logged as needing a restart.

Only the daemon reads files and the environment: this module is the daemon's.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import tomllib
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

from meshlimit.cluster.node.config import NodeConfig
from meshlimit.cluster.wire.addresses import Address, parse_address, parse_udp_address
from meshlimit.cluster.wire.auth import parse_key_file
from meshlimit.core.registry import (
    CLIENT_PREFIX,
    DEFAULT_KEY,
    TIER_PREFIX,
    check_client_id,
    check_tier_name,
)
from meshlimit.core.rules import Rule, parse_rule

log = logging.getLogger("meshlimit.config")

MODES = ("strict", "local")
PRESETS = ("lan", "local", "wan")
#: The codec carries node ids of at most 64 UTF-8 bytes.
MAX_NODE_ID_BYTES = 64
#: A config file larger than this is refused. Why 1 MiB: some ten thousand client
#: overrides; more belong in the rule API, not in a file re-read every second.
MAX_CONFIG_BYTES = 1 << 20
#: How often the file is polled for changes. Why 1 s: an edit applies within a second,
#: and reading and hashing a file of at most 1 MiB once a second costs nothing.
POLL_INTERVAL_S = 1.0
#: Reload log lines name at most this many changed keys, then ``+N more``.
MAX_KEYS_LOGGED = 20

Value = Rule | str | None  # a registry value: a rule, "@tier" for a client, None removes
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+\Z")
_NODE_DEFAULT_RULE = next(f.default for f in fields(NodeConfig) if f.name == "default_rule")


class ConfigError(ValueError):
    """A configuration that cannot be used: ``source: key: problem``."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source, self.key, self.problem = source, key, problem
        super().__init__(f"{source}: {key}: {problem}" if key else f"{source}: {problem}")


# --- the configuration ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """``[cluster]``: how this node runs. ``None`` everywhere means "not set here"."""

    node_id: str | None = None
    """Unique node id. None: the bind address, which is unique in a cluster."""
    bind: Address | None = None
    """UDP address to bind and advertise. None here and on the command line: refused."""
    seeds: tuple[Address, ...] | None = None
    """Members to join through. None: no seeds, a cluster of one until someone joins."""
    mode: str | None = None
    """``strict`` or ``local``. None: strict, which never over-admits while healthy."""
    replicas: int | None = None
    """Ring successors that receive the owner's counts. None: the node's default (1)."""
    degraded_fraction: float | None = None
    """Share of a client's capacity nodes cut off from its owner may admit. None: 0.5."""
    cluster_key_file: str | None = None
    """Shared-key file for cluster traffic; checked to exist. Authentication is not
    implemented yet: the daemon warns when this is set."""
    preset: str | None = None
    """Timings: ``lan``, ``local`` or ``wan``. None: lan, the common deployment."""
    http: Address | None = None
    """Where to serve the JSON HTTP API and ``/metrics``. None: no HTTP."""
    resp: Address | None = None
    """Where to serve the RESP (Redis protocol) front-end. None: no RESP."""


def _frozen_map() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class LimitsSettings:
    """``[limits]``: the rules this node writes into the cluster's rule registry."""

    default: Rule | None = None
    """Rule for clients with no override. None: the node's default (100/minute)."""
    tiers: Mapping[str, Rule] = field(default_factory=_frozen_map)
    """Named rules that clients can be mapped to (read-only view)."""
    clients: Mapping[str, Rule | str] = field(default_factory=_frozen_map)
    """Per-client overrides: a rule, or ``"@NAME"`` for a tier (read-only view)."""


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    """Everything the daemon was told, by its config file and its flags."""

    source: str | None = None
    """The file this came from, for messages; None for flags alone."""
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    """``[cluster]``: settings read once, at start."""
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    """``[limits]``: rules, applied at start and again at every reload."""

    def overridden_by(self, flags: DaemonConfig) -> DaemonConfig:
        """This config with every setting that ``flags`` sets taking precedence."""
        cluster = replace(
            self.cluster,
            **{
                f.name: getattr(flags.cluster, f.name)
                for f in fields(ClusterSettings)
                if getattr(flags.cluster, f.name) is not None
            },
        )
        limits = self.limits
        if flags.limits.default is not None:
            limits = replace(limits, default=flags.limits.default)
        return DaemonConfig(self.source, cluster, limits)

    @property
    def default_rule(self) -> Rule:
        """The effective default rule."""
        return self.limits.default or parse_rule(_NODE_DEFAULT_RULE)

    def node_config(self) -> NodeConfig:
        """The node's configuration; ``ConfigError`` if no bind address was given."""
        c = self.cluster
        if c.bind is None:
            raise ConfigError(
                self.source or "meshlimit node",
                "cluster.bind" if self.source else "",
                "no UDP address to bind: give --bind HOST:PORT or set bind in [cluster]",
            )
        host, port = c.bind
        settings = {
            "mode": c.mode,
            "replicas": c.replicas,
            "degraded_fraction": c.degraded_fraction,
        }
        overrides = {name: value for name, value in settings.items() if value is not None}
        if c.cluster_key_file:
            overrides["cluster_keys"] = self._read_keys(c.cluster_key_file)
        return NodeConfig.preset(
            c.preset or "lan",
            c.node_id or f"{host}:{port}",
            c.bind,
            default_rule=str(self.default_rule),
            **overrides,
        )

    def _read_keys(self, path: str) -> tuple[bytes, ...]:
        """The cluster keys in ``path`` (primary first); ``ConfigError`` naming the problem."""
        where = "cluster.cluster_key_file" if self.source else "--cluster-key-file"
        try:
            with open(path, encoding="utf-8") as file:
                text = file.read(64 * 1024)
            return parse_key_file(text, source=path)
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise ConfigError(self.source or "meshlimit node", where, str(error)) from None

    def rule_entries(self) -> dict[str, Rule | str]:
        """``[limits]`` as registry entries: ``default``, ``tier:NAME``, ``client:ID``."""
        entries: dict[str, Rule | str] = {DEFAULT_KEY: self.default_rule}
        entries.update((TIER_PREFIX + name, rule) for name, rule in self.limits.tiers.items())
        entries.update((CLIENT_PREFIX + c, value) for c, value in self.limits.clients.items())
        return entries


def flags_config(args: Any) -> DaemonConfig:
    """What the command line of ``meshlimit node`` set (flags left out are None), as a
    config that overrides the file's. Flag values were validated by argparse."""
    cluster = ClusterSettings(
        node_id=args.node_id,
        bind=args.bind,
        seeds=tuple(args.seed) or None,
        mode=args.mode,
        cluster_key_file=getattr(args, "cluster_key_file", None),
        preset=args.preset,
        http=args.http,
        resp=getattr(args, "resp", None),
    )
    default = None if args.default is None else parse_rule(args.default)
    return DaemonConfig(None, cluster, LimitsSettings(default=default))


def effective_config(args: Any) -> tuple[DaemonConfig, DaemonConfig]:
    """``(config, flags)``: the file named by ``--config`` (if any) overridden by the flags,
    and the flags alone (a reload merges them over the new file again)."""
    flags = flags_config(args)
    base = load_config(args.config) if getattr(args, "config", None) else DaemonConfig()
    return base.overridden_by(flags), flags


def diff_entries(old: Mapping[str, Value], new: Mapping[str, Value]) -> list[tuple[str, Value]]:
    """The writes that turn ``old`` into ``new``: changed and added entries with their new
    value, removed ones with None. Ordered so that no client is ever mapped to a tier
    that does not exist yet: the default, new tiers, clients, then removed tiers."""
    changes = [(key, value) for key, value in new.items() if old.get(key) != value]
    changes += [(key, None) for key in old if key not in new]

    def rank(change: tuple[str, Value]) -> tuple[int, str]:
        key, value = change
        if key == DEFAULT_KEY:
            return 0, key
        if key.startswith(TIER_PREFIX):
            return (1 if value is not None else 3), key
        return 2, key

    return sorted(changes, key=rank)


def start_changes(config: DaemonConfig) -> list[tuple[str, Value]]:
    """The writes that put ``config``'s tiers and clients in place at start; the default
    rule needs none, it is in the node's own config."""
    return diff_entries({DEFAULT_KEY: config.default_rule}, config.rule_entries())


def restart_needed(old: ClusterSettings, new: ClusterSettings) -> list[str]:
    """``[cluster]`` keys whose value differs: they apply only at the next start."""
    return [
        f"cluster.{f.name}"
        for f in fields(ClusterSettings)
        if getattr(old, f.name) != getattr(new, f.name)
    ]


# --- values shared with the command line ----------------------------------------------


def check_node_id(text: str) -> str:
    """A node id: 1 to 64 UTF-8 bytes, printable, no spaces."""
    size = len(text.encode("utf-8", "surrogateescape"))
    if not text or size > MAX_NODE_ID_BYTES:
        raise ValueError(f"node id must be 1 to {MAX_NODE_ID_BYTES} bytes")
    if not text.isprintable() or any(c.isspace() for c in text):
        raise ValueError(f"node id {text!r} must be printable, without spaces")
    return text


def check_key_file(path: str, base: Path | None = None) -> str:
    """The key file's path (relative ones resolved against ``base``); it must be a file."""
    resolved = Path(path) if base is None or os.path.isabs(path) else base / path
    if not resolved.is_file():
        raise ValueError(f"cluster key file {str(resolved)!r} does not exist or is not a file")
    return str(resolved)


# --- parsing --------------------------------------------------------------------------


def read_config(path: str | Path) -> tuple[bytes, tuple[int, int, str]]:
    """The file's bytes and fingerprint ``(mtime_ns, size, sha256)``, bounded in size."""
    source = str(path)
    try:
        with open(path, "rb") as file:
            stat = os.fstat(file.fileno())
            data = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as error:
        raise ConfigError(source, "", f"cannot read: {error.strerror or error}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(source, "", f"larger than {MAX_CONFIG_BYTES} bytes")
    return data, (stat.st_mtime_ns, len(data), hashlib.sha256(data).hexdigest())


def load_config(path: str | Path) -> DaemonConfig:
    """Read and parse a config file; ``ConfigError`` naming file, key and problem."""
    data, _ = read_config(path)
    return parse_config(data, source=str(path), base=Path(path).parent)


def parse_config(
    data: bytes | str, *, source: str = "<string>", base: Path | None = None
) -> DaemonConfig:
    """Parse the text of a config file; relative paths in it resolve against ``base``."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ConfigError(source, "", f"not UTF-8 text (byte {error.start})") from None
    try:
        document = tomllib.loads(data)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(source, "", f"not valid TOML: {error}") from None
    p = _Parser(source, base)
    p.known(document, "", ("cluster", "limits"))
    cluster = p.cluster(p.table(document, "cluster"))
    limits = p.limits(p.table(document, "limits"))
    return DaemonConfig(source, cluster, limits)


class _Parser:
    """Typed access to a parsed TOML document; every refusal is a ConfigError."""

    def __init__(self, source: str, base: Path | None) -> None:
        self.source = source
        self.base = base

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.source, key, problem)

    def known(self, table: dict[str, Any], prefix: str, names: tuple[str, ...]) -> None:
        for name in table:
            if name not in names:
                where = f"[{prefix}]" if prefix else "the top level"
                raise self.error(
                    _join(prefix, name),
                    f"unknown key; the keys known in {where} are {', '.join(names)}",
                )

    def table(self, parent: dict[str, Any], name: str, prefix: str = "") -> dict[str, Any]:
        value = parent.get(name, {})
        if not isinstance(value, dict):
            raise self.error(_join(prefix, name), f"expected a table, got {_kind(value)}")
        return value

    def typed(self, key: str, value: Any, kind: type | tuple[type, ...], wanted: str) -> Any:
        # bool is an int subclass: ``replicas = true`` must not pass as 1.
        if isinstance(value, bool) or not isinstance(value, kind):
            raise self.error(key, f"expected {wanted}, got {_kind(value)} ({_shown(value)})")
        return value

    def checked(self, key: str, value: Any, check: Callable[[Any], Any]) -> Any:
        """``check(value)`` with its ValueError turned into a ConfigError for ``key``."""
        try:
            return check(value)
        except ValueError as error:
            raise self.error(key, str(error)) from None

    def cluster(self, table: dict[str, Any]) -> ClusterSettings:
        """``[cluster]``: every key checked for its type and value."""
        self.known(table, "cluster", tuple(f.name for f in fields(ClusterSettings)))
        values: dict[str, Any] = {}
        for name, value in table.items():
            key = f"cluster.{name}"
            if name == "seeds":
                self.typed(key, value, list, 'an array of "HOST:PORT" strings')
                values[name] = tuple(
                    self.checked(
                        f"{key}[{i}]",
                        self.typed(f"{key}[{i}]", v, str, 'a "HOST:PORT" string'),
                        parse_address,
                    )
                    for i, v in enumerate(value)
                )
            elif name == "replicas":
                values[name] = self.typed(key, value, int, "an integer")
                if value < 0:
                    raise self.error(key, f"must be 0 or more, got {value}")
            elif name == "degraded_fraction":
                number = self.typed(key, value, (int, float), "a number from 0 to 1")
                if not 0.0 <= number <= 1.0:
                    raise self.error(key, f"must be from 0 to 1, got {number}")
                values[name] = float(number)
            else:
                values[name] = self.checked(
                    key, self.typed(key, value, str, "a string"), self._string_check(name)
                )
        return ClusterSettings(**values)

    def _string_check(self, name: str) -> Callable[[str], Any]:
        """The validator of a string-valued ``[cluster]`` key."""

        def choice(options: tuple[str, ...]) -> Callable[[str], str]:
            def check(value: str) -> str:
                if value not in options:
                    raise ValueError(f"{value!r} is not one of {', '.join(options)}")
                return value

            return check

        return {
            "node_id": check_node_id,
            "bind": parse_udp_address,
            "http": parse_address,
            "resp": parse_address,
            "mode": choice(MODES),
            "preset": choice(PRESETS),
            "cluster_key_file": lambda path: check_key_file(path, self.base),
        }[name]

    def limits(self, table: dict[str, Any]) -> LimitsSettings:
        """``[limits]``: rules through the rule parser, names through the registry's checks."""
        self.known(table, "limits", ("default", "tiers", "clients"))
        default = None
        if "default" in table:
            text = self.typed("limits.default", table["default"], str, "a rule string")
            default = self.checked("limits.default", text, parse_rule)
        tiers: dict[str, Rule] = {}
        for name, value in self.table(table, "tiers", "limits").items():
            key = _join("limits.tiers", name)
            self.checked(key, name, check_tier_name)
            tiers[name] = self.checked(
                key, self.typed(key, value, str, "a rule string"), parse_rule
            )
        clients: dict[str, Rule | str] = {}
        for client, value in self.table(table, "clients", "limits").items():
            key = _join("limits.clients", client)
            self.checked(key, client, check_client_id)
            text = self.typed(key, value, str, "a rule string or a tier name")
            clients[client] = self.client_value(key, text, tiers)
        return LimitsSettings(default, MappingProxyType(tiers), MappingProxyType(clients))

    def client_value(self, key: str, text: str, tiers: dict[str, Rule]) -> Rule | str:
        """A tier name (``gold`` or ``@gold``) defined in ``[limits.tiers]``, or a rule."""
        name = text[1:] if text.startswith("@") else text
        if name in tiers:
            return "@" + name
        known = ", ".join(sorted(tiers)) or "none defined"
        if text.startswith("@"):
            raise self.error(
                key, f"tier {name!r} is not defined in [limits.tiers] (tiers: {known})"
            )
        try:
            return parse_rule(text)
        except ValueError as error:
            if "/" in text or " per " in text.lower():
                raise self.error(key, str(error)) from None
            raise self.error(
                key,
                f"{text!r} is neither a tier in [limits.tiers] (tiers: {known}) nor a rule: {error}",
            ) from None


def _join(prefix: str, name: str) -> str:
    part = name if _BARE_KEY.match(name) else json.dumps(name)
    return f"{prefix}.{part}" if prefix else part


def _kind(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string"}
    names |= {list: "an array", dict: "a table"}
    return names.get(type(value), "a date/time")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# --- reloading ------------------------------------------------------------------------


class RuleSink(Protocol):
    """What rules are written through: the runtime (``Runtime.set_rule``)."""

    def set_rule(self, key: str, value: object) -> bool: ...


def apply_changes(sink: RuleSink, changes: list[tuple[str, Value]]) -> dict[str, str]:
    """Write each change; returns the keys that failed with their errors."""
    failed: dict[str, str] = {}
    for key, value in changes:
        try:
            sink.set_rule(key, value)
        except ValueError as error:  # e.g. the rule registry is full
            failed[key] = str(error)
    return failed


class Reloader:
    """Keeps a running node's rules in step with its config file.

    ``config`` is the effective configuration the node started with (file and
    flags merged) and whose rules are already applied; ``flags`` holds what the
    command line set, which keeps precedence over every reloaded file.
    """

    def __init__(
        self,
        path: str | Path,
        config: DaemonConfig,
        flags: DaemonConfig,
        sink: RuleSink,
        *,
        poll_interval_s: float = POLL_INTERVAL_S,
    ) -> None:
        self.path = Path(path)
        self.config = config
        self.flags = flags
        self.sink = sink
        self.poll_interval_s = poll_interval_s
        self.results: Counter[str] = Counter({"ok": 0, "error": 0})
        """Reloads by result, for metrics: ``ok`` or ``error``."""
        self._entries: dict[str, Value] = dict(config.rule_entries())
        self._fingerprint = self._current_fingerprint()

    def entries(self) -> dict[str, Value]:
        """The rule entries applied from the file (and flags), by registry key."""
        return dict(self._entries)

    def reload(self, reason: str = "sighup") -> bool:
        """Read, parse and apply the file now; False (and the old rules kept) if bad."""
        try:
            data, self._fingerprint = read_config(self.path)
        except ConfigError as error:
            self._fingerprint = self._current_fingerprint()
            return self._failed(reason, str(error))
        return self._apply(data, reason)

    def poll(self) -> bool | None:
        """Reload if the file changed since it was last read; None if it did not."""
        fingerprint = self._current_fingerprint()
        if fingerprint == self._fingerprint:
            return None
        return self.reload("file changed")

    async def watch(self) -> None:
        """Poll the file every ``poll_interval_s`` until cancelled."""
        while True:
            await asyncio.sleep(self.poll_interval_s)
            try:
                self.poll()
            except Exception:  # never let a surprise end the watching
                log.exception("config watch failed", extra={"file": str(self.path)})

    # --- helpers ----------------------------------------------------------------------

    def _current_fingerprint(self) -> tuple[int, int, str] | str:
        try:
            return read_config(self.path)[1]
        except ConfigError as error:
            return error.problem

    def _apply(self, data: bytes, reason: str) -> bool:
        source = str(self.path)
        try:
            parsed = parse_config(data, source=source, base=self.path.parent)
        except ConfigError as error:
            return self._failed(reason, str(error))
        new = parsed.overridden_by(self.flags)
        changes = diff_entries(self._entries, new.rule_entries())
        failed = apply_changes(self.sink, changes)
        for key, value in changes:
            if key in failed:
                continue
            if value is None:
                self._entries.pop(key, None)
            else:
                self._entries[key] = value
        restart = restart_needed(self.config.cluster, new.cluster)
        self.config = replace(new, cluster=self.config.cluster)
        if restart:
            log.warning(
                "config changes that need a restart were ignored",
                extra={"file": source, "keys": ",".join(restart)},
            )
        applied = [key for key, _ in changes if key not in failed]
        if failed:
            details = "; ".join(f"{key}: {error}" for key, error in failed.items())
            return self._failed(reason, f"{source}: some rules were not applied: {details}")
        self.results["ok"] += 1
        log.info(
            "config reloaded",
            extra={
                "file": source,
                "reason": reason,
                "changed": len(applied),
                "keys": _keys(applied),
            },
        )
        return True

    def _failed(self, reason: str, error: str) -> bool:
        self.results["error"] += 1
        log.warning(
            "config reload failed; the rules in force stay",
            extra={"file": str(self.path), "reason": reason, "error": error},
        )
        return False


def _keys(keys: list[str]) -> str:
    if not keys:
        return "-"
    shown = ",".join(keys[:MAX_KEYS_LOGGED])
    more = len(keys) - MAX_KEYS_LOGGED
    return f"{shown},+{more} more" if more > 0 else shown
