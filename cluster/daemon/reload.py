"""Reloading the config file's rules into a running node: diff, apply, watch.

Theory of operation. A :class:`Reloader` owns the file named by ``--config``:
on SIGHUP (:meth:`Reloader.reload`, called by the daemon), and when a poll
sees the file's mtime, size or content hash change (:meth:`Reloader.watch`),
it parses the file again (``config_file.py``). A bad file is logged at
WARNING and the rules in force stay. A good one is merged under the flags
again (a flag keeps its precedence over every reloaded file) and only its
changed entries are applied through the runtime (:func:`diff_entries`,
:func:`apply_changes`), as stamped rule writes that spread to every node with
no restart; a client's counts live in the counting series of its rule's
window and algorithm, so they survive any change that keeps those two.
``[cluster]`` is read once, at start: a change there is logged as needing a
restart (:func:`restart_needed`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import fields, replace
from pathlib import Path
from typing import Protocol

from meshlimit.cluster.daemon.config_file import (
    ClusterSettings,
    ConfigError,
    DaemonConfig,
    parse_config,
    read_config,
)
from meshlimit.core.registry import DEFAULT_KEY, TIER_PREFIX
from meshlimit.core.rules import Rule

log = logging.getLogger("meshlimit.config")

#: How often the file is polled for changes. Why 1 s: an edit applies within a second,
#: and reading and hashing a file of at most 1 MiB once a second costs nothing.
POLL_INTERVAL_S = 1.0
#: Reload log lines name at most this many changed keys, then ``+N more``.
MAX_KEYS_LOGGED = 20

Value = Rule | str | None  # a registry value: a rule, "@tier" for a client, None removes


class RuleSink(Protocol):
    """What rules are written through: the runtime (``Runtime.set_rule``)."""

    def set_rule(self, key: str, value: object) -> bool: ...


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
