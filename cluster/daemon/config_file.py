"""The daemon's configuration file (TOML): its settings, declared once, and how they merge.

Theory of operation. :func:`parse_config` reads a file's text into a frozen
:class:`DaemonConfig` through the one settings reader of the house
(:mod:`meshlimit.core.settings`): every key is declared once, on the field it
fills, with its type, bounds and check; an unknown key, a wrong type or a bad
value is one :class:`ConfigError` naming the file, the key as a dotted path
(``limits.tiers.gold``) and the problem. A key the file leaves out stays
``None``, so that the effective value is decided in one place, in this order:
a command-line flag, then the file, then the preset
(:meth:`DaemonConfig.overridden_by`, :meth:`DaemonConfig.node_config`).

The ``[limits]`` table becomes rule-registry entries (``default``,
``tier:NAME``, ``client:ID``; :meth:`DaemonConfig.rule_entries`).
``reload.py`` keeps a running node's rules in step with the file (SIGHUP and
change polling); ``[cluster]`` is read once, at start.

Only the daemon reads files and the environment: this module is the daemon's.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType

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
from meshlimit.core.settings import Reader, Setting, SettingsError, dotted, read_settings, toml

MODES = ("strict", "local")
PRESETS = ("lan", "local", "wan")
#: The codec carries node ids of at most 64 UTF-8 bytes.
MAX_NODE_ID_BYTES = 64
#: A config file larger than this is refused. Why 1 MiB: some ten thousand client
#: overrides; more belong in the rule API, not in a file re-read every second.
MAX_CONFIG_BYTES = 1 << 20


class ConfigError(SettingsError):
    """A configuration that cannot be used: ``source: key: problem``."""


# --- values shared with the command line ----------------------------------------------


def check_node_id(text: str) -> str:
    """A node id: 1 to 64 UTF-8 bytes, printable, no spaces."""
    size = len(text.encode("utf-8", "surrogateescape"))
    if not text or size > MAX_NODE_ID_BYTES:
        raise ValueError(f"node id must be 1 to {MAX_NODE_ID_BYTES} bytes")
    if not text.isprintable() or any(c.isspace() for c in text):
        raise ValueError(f"node id {text!r} must be printable, without spaces")
    return text


def parse_bind_address(text: str) -> Address:
    """A UDP address to bind: a real port, any host (``0.0.0.0`` needs an advertised
    address, checked by :meth:`DaemonConfig.node_config`; a name is resolved at start)."""
    host, port = parse_address(text)
    if port == 0:
        raise ValueError(f"{text!r}: name a port; peers are told this address, so it cannot be 0")
    return host, port


def check_key_file(path: str, base: Path | None = None) -> str:
    """The key file's path (relative ones resolved against ``base``); it must be a file."""
    resolved = Path(path) if base is None or os.path.isabs(path) else base / path
    if not resolved.is_file():
        raise ValueError(f"cluster key file {str(resolved)!r} does not exist or is not a file")
    return str(resolved)


# --- the configuration ----------------------------------------------------------------

_ADDRESS = Setting(kind=str, expected='a "HOST:PORT" string', check=parse_address)
_RULE = Setting(kind=str, expected="a rule string", check=parse_rule)


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """``[cluster]``: how this node runs. ``None`` everywhere means "not set here"."""

    node_id: str | None = field(default=None, metadata=toml(check=check_node_id))
    """Unique node id. None: the bind address, which is unique in a cluster."""
    bind: Address | None = field(default=None, metadata=toml(kind=str, check=parse_bind_address))
    """UDP address to bind (and advertise, without ``advertise``); a host name is resolved
    once, at start. None here and on the command line: refused."""
    advertise: Address | None = field(
        default=None, metadata=toml(kind=str, check=parse_udp_address)
    )
    """The address peers are told to reach this node at, when it is not ``bind`` (a bind
    to ``0.0.0.0`` in a container, say). None: the bind address."""
    seeds: tuple[Address, ...] | None = field(
        default=None,
        metadata=toml(kind=list, expected='an array of "HOST:PORT" strings', items=_ADDRESS),
    )
    """Members to join through. None: no seeds, a cluster of one until someone joins."""
    mode: str | None = field(default=None, metadata=toml(choices=MODES))
    """``strict`` or ``local``. None: strict, which never over-admits while healthy."""
    replicas: int | None = field(default=None, metadata=toml(low=0))
    """Ring successors that receive the owner's counts. None: the node's default (1)."""
    degraded_fraction: float | None = field(
        default=None, metadata=toml(low=0, high=1, expected="a number from 0 to 1")
    )
    """Share of a client's capacity nodes cut off from its owner may admit. None: 0.5."""
    expected_members: int | None = field(default=None, metadata=toml(low=0))
    """The cluster's size as deployed: the majority rule counts at least this many members,
    so a minority whose every node restarted without memory still knows it is one. None:
    unstated (the size learnt from peers, which outlives reaping until ``ctl forget``)."""
    cluster_key_file: str | None = field(default=None, metadata=toml())
    """Shared-key file for cluster traffic; checked to exist (a relative path is resolved
    against the config file's folder, by :func:`parse_config`)."""
    preset: str | None = field(default=None, metadata=toml(choices=PRESETS))
    """Timings: ``lan``, ``local`` or ``wan``. None: lan, the common deployment."""
    http: Address | None = field(default=None, metadata=toml(kind=str, check=parse_address))
    """Where to serve the JSON HTTP API and ``/metrics``. None: no HTTP."""
    resp: Address | None = field(default=None, metadata=toml(kind=str, check=parse_address))
    """Where to serve the RESP (Redis protocol) front-end. None: no RESP."""
    grpc: Address | None = field(default=None, metadata=toml(kind=str, check=parse_address))
    """Where to serve Envoy's rate limit service (gRPC, ``docs/envoy.md``). None: no gRPC."""
    ratelimit_config: tuple[str, ...] | None = field(
        default=None,
        metadata=toml(kind=list, expected="an array of paths", items=Setting(kind=str)),
    )
    """envoy ratelimit YAML files, or folders of them (relative paths resolve against the
    config file's folder); their content is reloaded on SIGHUP and on change. None: none."""
    merge_domain_config: bool | None = field(default=None, metadata=toml())
    """Merge several YAML files of one domain (envoy ratelimit's ``MERGE_DOMAIN_CONFIG``).
    None: false, a second file of a domain is an error, as in envoy ratelimit."""
    ratelimit_algorithm: str | None = field(
        default=None, metadata=toml(choices=("fixed_window", "sliding_window"))
    )
    """How Envoy descriptors' windows are kept. None: ``fixed_window``, envoy ratelimit's."""


def _frozen_map() -> Mapping[str, Rule]:
    return MappingProxyType({})


def _read_clients(
    reader: Reader, key: str, raw: object, earlier: Mapping[str, object]
) -> Mapping[str, Rule | str]:
    """``[limits.clients]``: ids checked by the registry, values a tier of
    ``[limits.tiers]`` (read before) or a rule."""
    tiers = earlier["tiers"]
    assert isinstance(tiers, Mapping)
    clients: dict[str, Rule | str] = {}
    for client, value in reader.typed(key, raw, dict).items():
        entry = dotted(key, client)
        reader.checked(entry, client, check_client_id)
        text = reader.typed(entry, value, str, "a rule string or a tier name")
        try:
            clients[client] = _client_value(text, tiers)
        except ValueError as error:
            raise reader.error(entry, str(error)) from None
    return MappingProxyType(clients)


def _client_value(text: str, tiers: Mapping[str, Rule]) -> Rule | str:
    """A tier name (``gold`` or ``@gold``) defined in ``[limits.tiers]``, or a rule."""
    name = text[1:] if text.startswith("@") else text
    if name in tiers:
        return "@" + name
    known = ", ".join(sorted(tiers)) or "none defined"
    if text.startswith("@"):
        raise ValueError(f"tier {name!r} is not defined in [limits.tiers] (tiers: {known})")
    try:
        return parse_rule(text)
    except ValueError as error:
        if "/" in text or " per " in text.lower():
            raise
        raise ValueError(
            f"{text!r} is neither a tier in [limits.tiers] (tiers: {known}) nor a rule: {error}"
        ) from None


@dataclass(frozen=True, slots=True)
class LimitsSettings:
    """``[limits]``: the rules this node writes into the cluster's rule registry."""

    default: Rule | None = field(
        default=None, metadata=toml(kind=str, expected=_RULE.expected, check=parse_rule)
    )
    """Rule for clients with no override. None: the node's default (100/minute)."""
    tiers: Mapping[str, Rule] = field(
        default_factory=_frozen_map,
        metadata=toml(kind=dict, names=check_tier_name, values=_RULE, check=MappingProxyType),
    )
    """Named rules that clients can be mapped to (read-only view)."""
    clients: Mapping[str, Rule | str] = field(
        default_factory=_frozen_map, metadata=toml(read=_read_clients)
    )
    """Per-client overrides: a rule, or ``"@NAME"`` for a tier (read-only view)."""


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    """Everything the daemon was told, by its config file and its flags."""

    source: str | None = None
    """The file this came from, for messages; None for flags alone."""
    cluster: ClusterSettings = field(default_factory=ClusterSettings, metadata=toml())
    """``[cluster]``: settings read once, at start."""
    limits: LimitsSettings = field(default_factory=LimitsSettings, metadata=toml())
    """``[limits]``: rules, applied at start and again at every reload."""
    version_ns: int | None = None
    """The file's version: its modification time (ns) when it was read. Its rules are
    writes made at that time (``reload.py``), so that restarting with an unchanged file
    never undoes a newer change. None: not read from a file."""
    default_from_flags: bool = False
    """``--default`` set the default rule: the file's ``default`` is not written."""

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
        limits, pinned = self.limits, flags.limits.default is not None
        if pinned:
            limits = replace(limits, default=flags.limits.default)
        return DaemonConfig(self.source, cluster, limits, self.version_ns, pinned)

    @property
    def default_rule(self) -> Rule:
        """The effective default rule."""
        return self.limits.default or parse_rule(_node_default_rule())

    def node_config(self) -> NodeConfig:
        """The node's configuration; ``ConfigError`` if no bind address was given."""
        c = self.cluster
        if c.bind is None:
            raise ConfigError(
                self.source or "meshlimit node",
                "cluster.bind" if self.source else "",
                "no UDP address to bind: give --bind HOST:PORT or set bind in [cluster]",
            )
        _check_reachable(c, self.source)
        host, port = c.advertise or c.bind
        settings = {
            "mode": c.mode,
            "replicas": c.replicas,
            "degraded_fraction": c.degraded_fraction,
            "expected_members": c.expected_members,
        }
        overrides: dict[str, object] = {
            name: value for name, value in settings.items() if value is not None
        }
        if c.cluster_key_file:
            overrides["cluster_keys"] = self._read_keys(c.cluster_key_file)
        return NodeConfig.preset(
            c.preset or "lan",
            c.node_id or f"{host}:{port}",
            c.advertise or c.bind,
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
        """``[limits]`` as the registry entries the file writes: ``tier:NAME``,
        ``client:ID``, and ``default`` when the file sets it and ``--default`` does not
        (otherwise the default is the node's own, in its config)."""
        entries: dict[str, Rule | str] = {}
        if self.limits.default is not None and not self.default_from_flags:
            entries[DEFAULT_KEY] = self.limits.default
        entries.update((TIER_PREFIX + name, rule) for name, rule in self.limits.tiers.items())
        entries.update((CLIENT_PREFIX + c, value) for c, value in self.limits.clients.items())
        return entries


def _check_reachable(cluster: ClusterSettings, source: str | None) -> None:
    """Without ``advertise``, peers are told the bind address: one they can reach."""
    if cluster.bind is None or cluster.advertise is not None:
        return
    try:
        parse_udp_address("{}:{}".format(*cluster.bind))
    except ValueError as error:
        hint = "; or tell peers another address with advertise (--advertise HOST:PORT)"
        where = "cluster.bind" if source else ""
        raise ConfigError(source or "meshlimit node", where, f"{error}{hint}") from None


def _node_default_rule() -> str:
    """The node's own default rule (``NodeConfig.default_rule``'s default)."""
    default = next(f.default for f in fields(NodeConfig) if f.name == "default_rule")
    assert isinstance(default, str)
    return default


# --- flags over the file --------------------------------------------------------------


def flags_config(args: argparse.Namespace) -> DaemonConfig:
    """What the command line of ``meshlimit node`` set (flags left out are None), as a
    config that overrides the file's. Flag values were validated by argparse."""
    cluster = ClusterSettings(
        node_id=args.node_id,
        bind=args.bind,
        advertise=getattr(args, "advertise", None),
        seeds=tuple(args.seed) or None,
        mode=args.mode,
        cluster_key_file=getattr(args, "cluster_key_file", None),
        preset=args.preset,
        http=args.http,
        resp=getattr(args, "resp", None),
        expected_members=getattr(args, "expected_members", None),
        grpc=getattr(args, "grpc", None),
        ratelimit_config=tuple(getattr(args, "ratelimit_config", None) or ()) or None,
        merge_domain_config=True if getattr(args, "merge_domain_config", False) else None,
        ratelimit_algorithm=getattr(args, "ratelimit_algorithm", None),
    )
    default = None if args.default is None else parse_rule(args.default)
    return DaemonConfig(None, cluster, LimitsSettings(default=default))


def effective_config(args: argparse.Namespace) -> tuple[DaemonConfig, DaemonConfig]:
    """``(config, flags)``: the file named by ``--config`` (if any) overridden by the flags,
    and the flags alone (a reload merges them over the new file again)."""
    flags = flags_config(args)
    base = load_config(args.config) if getattr(args, "config", None) else DaemonConfig()
    return base.overridden_by(flags), flags


# --- reading and parsing --------------------------------------------------------------


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
    data, (mtime_ns, _, _) = read_config(path)
    return parse_config(data, source=str(path), base=Path(path).parent, version_ns=mtime_ns)


def parse_config(
    data: bytes | str,
    *,
    source: str = "<string>",
    base: Path | None = None,
    version_ns: int | None = None,
) -> DaemonConfig:
    """Parse the text of a config file; relative paths in it resolve against ``base``;
    ``version_ns`` is the file's modification time (None: not from a file)."""
    defaults = {"source": source, "version_ns": version_ns}
    config = read_settings(DaemonConfig, data, source=source, defaults=defaults, error=ConfigError)
    _check_reachable(config.cluster, source)  # a file binding 0.0.0.0 names advertise too
    if config.cluster.ratelimit_config and base is not None:
        paths = tuple(str(base / path) for path in config.cluster.ratelimit_config)
        config = replace(config, cluster=replace(config.cluster, ratelimit_config=paths))
    key_file = config.cluster.cluster_key_file
    if key_file is None:
        return config
    # Resolved here, not by the field's check: a relative path depends on the file's folder.
    try:
        resolved = check_key_file(key_file, base)
    except ValueError as error:
        raise ConfigError(source, "cluster.cluster_key_file", str(error)) from None
    return replace(config, cluster=replace(config.cluster, cluster_key_file=resolved))
