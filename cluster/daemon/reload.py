"""Writing the config file's rules into a running node: at start, on reload, on change.

Theory of operation. A config file's ``[limits]`` are rule writes made when the file
was last modified: every entry it sets is stamped with the file's *version*, its
modification time (:func:`file_stamp`: the HLC wall part in ms, the sub-millisecond
nanoseconds as the counter, a fixed node part), not with the time the node happens
to read it. Last writer wins, so:

- restarting with an unchanged file writes exactly what it wrote before, and a rule
  changed at run time after the file was last modified stays in force, cluster-wide,
  across any number of restarts;
- editing the file (anything that changes its modification time, a ``touch`` too)
  re-asserts every rule in it at the new time: they win over runtime changes made
  before the edit, and lose to changes made after it;
- the same file on several nodes gives identical entries (same values, same stamps),
  so nodes agree and nothing flip-flops; of copies modified at other times, the
  newest wins;
- a version ahead of the node's clock (a skewed clock where the file was written) is
  taken as now, so that a file cannot win over changes made after it is read.

A :class:`Reloader` owns the file named by ``--config``: on SIGHUP
(:meth:`Reloader.reload`, called by the daemon), and when a poll sees the file's
mtime, size or content hash change (:meth:`Reloader.watch`), it parses the file
again (``config_file.py``). A bad file is logged at WARNING and the rules in force
stay. A good one is merged under the flags again (a flag keeps its precedence over
every reloaded file) and written whole at its new version (:func:`file_writes`,
:func:`apply_changes`), with a removal for each entry the previous file had and this
one lacks; a content change whose modification time is not newer than the last
version (a file replaced by an older copy) is stamped now. A client's counts live in
the counting series of its rule's window and algorithm, so they survive any change
that keeps those two. ``[cluster]`` is read once, at start: a change there is logged
as needing a restart (:func:`restart_needed`).

A removal happens only while the node runs: a node started with a file that lacks a
rule the cluster holds does not know the rule came from its file, and leaves it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol, runtime_checkable

from meshlimit.cluster.daemon.config_file import (
    ClusterSettings,
    ConfigError,
    DaemonConfig,
    parse_config,
    read_config,
)
from meshlimit.core.hlc import NS_PER_MS, Stamp
from meshlimit.core.registry import DEFAULT_KEY, TIER_PREFIX
from meshlimit.core.rules import Rule

if TYPE_CHECKING:
    from meshlimit.cluster.runtime import Runtime

log = logging.getLogger("meshlimit.config")

#: How often the file is polled for changes. Why 1 s: an edit applies within a second,
#: and reading and hashing a file of at most 1 MiB once a second costs nothing.
POLL_INTERVAL_S = 1.0
#: Reload log lines name at most this many changed keys, then ``+N more``.
MAX_KEYS_LOGGED = 20
#: The node part of a file rule's stamp: not this node's id, so that the same file on
#: several nodes gives identical entries (two files of one version but other rules
#: break the tie on the rule text, as the registry does).
FILE_STAMP_NODE = "config-file"

Value = Rule | str | None  # a registry value: a rule, "@tier" for a client, None removes


async def watch_polling(
    poll: Callable[[], object], interval_s: float, failed: str, what: str
) -> None:
    """Call ``poll`` every ``interval_s`` until cancelled; an exception is logged as
    ``failed`` (naming ``what``) and never ends the watching. Shared by the config file's
    reloader and the Envoy rate limit YAML's loader."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            poll()
        except Exception:  # never let a surprise end the watching
            log.exception(failed, extra={"file": what})


class FileWrite(NamedTuple):
    """One rule write from a config file: a registry key, its value (None removes it)
    and the file's version (modification time, ns) it is stamped with."""

    key: str
    value: Value
    version_ns: int


@runtime_checkable
class RuleSink(Protocol):
    """Where a file's rules are written, stamped with its version (a test records them)."""

    def put_rule(self, key: str, value: Value, version_ns: int) -> bool: ...


class RuntimeRules:
    """Writes a file's rules into a runtime's node with :func:`file_stamp` stamps, at
    the wall clock ``wall_ns()`` reads. They spread with the node's next datagrams
    (within a gossip interval)."""

    def __init__(self, runtime: Runtime, *, wall_ns: Callable[[], int] = time.time_ns) -> None:
        self.runtime = runtime
        self.wall_ns = wall_ns

    def put_rule(self, key: str, value: Value, version_ns: int) -> bool:
        now_ns = self.wall_ns()
        stamp = file_stamp(version_ns, now_ns=now_ns)
        return self.runtime.node.rules.put(key, value, stamp, now_ns)


def file_stamp(version_ns: int, *, now_ns: int) -> Stamp:
    """The stamp of a file's rules: its version (at most ``now_ns``) in ms as the wall
    part, the sub-millisecond nanoseconds as the counter, and :data:`FILE_STAMP_NODE`.
    The same file read again (a restart), or on another node, gives the same stamp."""
    version = max(0, min(version_ns, now_ns))
    return Stamp(version // NS_PER_MS, version % NS_PER_MS, FILE_STAMP_NODE)


def diff_entries(old: Mapping[str, Value], new: Mapping[str, Value]) -> list[tuple[str, Value]]:
    """The entries whose value differs between ``old`` and ``new``: changed and added
    ones with their new value, removed ones with None, in :func:`write_order`."""
    changes = [(key, value) for key, value in new.items() if old.get(key) != value]
    changes += [(key, None) for key in old if key not in new]
    return sorted(changes, key=write_order)


def write_order(change: tuple[str, Value]) -> tuple[int, str]:
    """Sort key of writes, so that no client is ever mapped to a tier that does not
    exist yet: the default, new tiers, clients, then removed tiers."""
    key, value = change
    if key == DEFAULT_KEY:
        return 0, key
    if key.startswith(TIER_PREFIX):
        return (1 if value is not None else 3), key
    return 2, key


def file_writes(
    old: Mapping[str, Value], new: Mapping[str, Value], version_ns: int
) -> list[FileWrite]:
    """The writes of a file at ``version_ns``: every entry of ``new`` (the file re-asserts
    them all) and a removal for each entry of ``old`` that ``new`` lacks."""
    changes = list(new.items()) + [(key, None) for key in old if key not in new]
    return [FileWrite(key, value, version_ns) for key, value in sorted(changes, key=write_order)]


def start_changes(config: DaemonConfig) -> list[FileWrite]:
    """The writes that put ``config``'s file rules in place at start, at the file's
    version (none without a file: the flags' default is in the node's own config)."""
    if config.source is None:
        return []
    return file_writes({}, config.rule_entries(), config.version_ns or 0)


def restart_needed(old: ClusterSettings, new: ClusterSettings) -> list[str]:
    """``[cluster]`` keys whose value differs: they apply only at the next start."""
    return [
        f"cluster.{f.name}"
        for f in fields(ClusterSettings)
        if getattr(old, f.name) != getattr(new, f.name)
    ]


def apply_changes(target: Runtime | RuleSink, writes: list[FileWrite]) -> dict[str, str]:
    """Write each change (into a runtime's node, or a sink); the keys that failed with
    their errors."""
    sink = as_sink(target)
    if writes and writes[0].version_ns > time.time_ns():
        log.warning(
            "the config file was modified in the future (a skewed clock?): its rules are "
            "stamped with the time they are written instead",
            extra={"version_ns": writes[0].version_ns},
        )
    failed: dict[str, str] = {}
    for key, value, version_ns in writes:
        try:
            sink.put_rule(key, value, version_ns)
        except ValueError as error:  # e.g. the rule registry is full
            failed[key] = str(error)
    return failed


def as_sink(target: Runtime | RuleSink) -> RuleSink:
    """A sink for ``target``: a runtime is wrapped in :class:`RuntimeRules`."""
    return target if isinstance(target, RuleSink) else RuntimeRules(target)


class Reloader:
    """Keeps a running node's rules in step with its config file.

    ``config`` is the effective configuration the node started with (file and
    flags merged) and whose rules are already applied; ``flags`` holds what the
    command line set, which keeps precedence over every reloaded file. ``sink`` is
    the runtime (or a test's :class:`RuleSink`).
    """

    def __init__(
        self,
        path: str | Path,
        config: DaemonConfig,
        flags: DaemonConfig,
        sink: Runtime | RuleSink,
        *,
        poll_interval_s: float = POLL_INTERVAL_S,
    ) -> None:
        self.path = Path(path)
        self.config = config
        self.flags = flags
        self.sink = as_sink(sink)
        self.poll_interval_s = poll_interval_s
        self.results: Counter[str] = Counter({"ok": 0, "error": 0})
        """Reloads by result, for metrics: ``ok`` or ``error``."""
        self._entries: dict[str, Value] = dict(config.rule_entries())
        self._version_ns = config.version_ns or 0
        self._fingerprint = self._current_fingerprint()
        if isinstance(self._fingerprint, tuple) and self._fingerprint[0] != config.version_ns:
            self._fingerprint = "changed since it was read"  # the next poll reloads it

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
        return self._apply(data, self._fingerprint[0], reason)

    def poll(self) -> bool | None:
        """Reload if the file changed since it was last read; None if it did not."""
        fingerprint = self._current_fingerprint()
        if fingerprint == self._fingerprint:
            return None
        return self.reload("file changed")

    async def watch(self) -> None:
        """Poll the file every ``poll_interval_s`` until cancelled."""
        await watch_polling(self.poll, self.poll_interval_s, "config watch failed", str(self.path))

    # --- helpers ----------------------------------------------------------------------

    def _current_fingerprint(self) -> tuple[int, int, str] | str:
        try:
            return read_config(self.path)[1]
        except ConfigError as error:
            return error.problem

    def _apply(self, data: bytes, mtime_ns: int, reason: str) -> bool:
        source = str(self.path)
        try:
            parsed = parse_config(data, source=source, base=self.path.parent, version_ns=mtime_ns)
        except ConfigError as error:
            return self._failed(reason, str(error))
        new = parsed.overridden_by(self.flags)
        entries = new.rule_entries()
        if mtime_ns <= self._version_ns:
            # Not newer than the last version: the same rules keep their version (a
            # SIGHUP changes nothing); other rules (an older copy put in place) are
            # stamped now, to win over what the last version wrote.
            same = entries == self._entries
            mtime_ns = self._version_ns if same else max(time.time_ns(), self._version_ns + 1)
        self._version_ns = mtime_ns
        changed = [key for key, _ in diff_entries(self._entries, entries)]
        writes = file_writes(self._entries, entries, mtime_ns)
        failed = apply_changes(self.sink, writes)
        for key, value, _ in writes:
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
        if failed:
            details = "; ".join(f"{key}: {error}" for key, error in failed.items())
            return self._failed(reason, f"{source}: some rules were not applied: {details}")
        self.results["ok"] += 1
        log.info(
            "config reloaded",
            extra={
                "file": source,
                "reason": reason,
                "version_ns": mtime_ns,
                "written": len(writes),
                "changed": len(changed),
                "keys": _keys(changed),
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
