"""A config file's rules across restarts (``cluster/daemon/reload.py``): they are writes made
at the file's modification time, so a restart with an unchanged file never undoes a newer
runtime change, and an edit still wins.

Process-free: real sans-IO :class:`~meshlimit.cluster.node.Node` state machines (one per
life of a node), the file's rules written into them through the daemon's own path
(:func:`start_changes`, :func:`apply_changes`, :class:`RuntimeRules`), and anti-entropy
played by merging registries. ``test_rule_restarts.py`` does the same with processes.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from types import SimpleNamespace

from meshlimit.cluster.daemon.config_file import DaemonConfig, load_config
from meshlimit.cluster.daemon.reload import (
    FILE_STAMP_NODE,
    Reloader,
    RuntimeRules,
    apply_changes,
    file_stamp,
    start_changes,
)
from meshlimit.cluster.node import Node
from meshlimit.cluster.node.config import NodeConfig
from meshlimit.core.hlc import Stamp
from meshlimit.core.rules import parse_rule

S = 1_000_000_000
FILE = """
[limits]
default = "100/day"
[limits.clients]
acme = "5/day"
"""


class Clock:
    """The wall clock every node and the daemon's rule writes read (a fake)."""

    def __init__(self) -> None:
        self.now_ns = 1_700_000_000 * S

    def __call__(self) -> int:
        return self.now_ns


def life(name: str, port: int, clock: Clock) -> Node:
    """A new life of node ``name``: nothing remembered."""
    config = NodeConfig.preset("sim", name, ("127.0.0.1", port), default_rule="100/day")
    return Node(config, random.Random(port), now_ns=0, wall_ns=clock())


def started(name: str, port: int, path: Path, clock: Clock) -> Node:
    """A node started with the config file at ``path``, as the daemon starts one."""
    node = life(name, port, clock)
    sink = RuntimeRules(SimpleNamespace(node=node), wall_ns=clock)  # type: ignore[arg-type]
    assert apply_changes(sink, start_changes(load_config(path))) == {}
    return node


def set_rule(node: Node, client: str, rule: str, clock: Clock) -> None:
    """An operator's change at run time (``PUT /v1/rules/CLIENT``)."""
    assert node.set_rule("client:" + client, rule, now_ns=0, wall_ns=clock())


def anti_entropy(*nodes: Node) -> None:
    """What anti-entropy converges to: every node merges every other's entries."""
    for _ in range(2):
        for one in nodes:
            for other in nodes:
                if other is not one:
                    one.registry.merge(other.registry)


def file_at(path: Path, text: str, modified_ns: int) -> Path:
    path.write_text(text)
    os.utime(path, ns=(modified_ns, modified_ns))
    return path


def test_a_restart_with_the_unchanged_file_keeps_a_newer_runtime_change(tmp_path: Path) -> None:
    clock = Clock()
    path = file_at(tmp_path / "node.toml", FILE, clock() - 3600 * S)  # edited an hour ago
    a, b = started("a", 7401, path, clock), started("b", 7402, path, clock)
    anti_entropy(a, b)
    assert a.rule_for("acme") == b.rule_for("acme") == parse_rule("5/day")
    clock.now_ns += 60 * S
    set_rule(b, "acme", "50/day", clock)  # after the file was last modified
    anti_entropy(a, b)
    for _ in range(3):  # a restarts, again and again, with its unchanged file
        clock.now_ns += 60 * S
        a = started("a", 7401, path, clock)
        anti_entropy(a, b)
        assert a.rule_for("acme") == b.rule_for("acme") == parse_rule("50/day")
    # Both nodes restart: no node remembers the change, and the file's rules are in
    # force again.
    a, b = started("a", 7401, path, clock), started("b", 7402, path, clock)
    anti_entropy(a, b)
    assert a.rule_for("acme") == parse_rule("5/day")


def test_an_edit_of_the_file_wins_over_older_runtime_changes(tmp_path: Path) -> None:
    clock = Clock()
    path = file_at(tmp_path / "node.toml", FILE, clock() - 3600 * S)
    a, b = started("a", 7401, path, clock), started("b", 7402, path, clock)
    clock.now_ns += 60 * S
    set_rule(b, "acme", "50/day", clock)
    set_rule(b, "zed", "9/day", clock)
    anti_entropy(a, b)
    # The file is edited after the runtime change (to another rule for acme), and a
    # restarts with it: the edit wins, cluster-wide. zed, which the file does not name,
    # keeps its runtime rule.
    clock.now_ns += 60 * S
    file_at(path, FILE.replace("5/day", "7/day"), clock())
    clock.now_ns += 60 * S
    a = started("a", 7401, path, clock)
    anti_entropy(a, b)
    assert a.rule_for("acme") == b.rule_for("acme") == parse_rule("7/day")
    assert a.rule_for("zed") == b.rule_for("zed") == parse_rule("9/day")
    # A touch is an edit too: it re-asserts the file's rules over changes made before it.
    set_rule(b, "acme", "70/day", clock)
    anti_entropy(a, b)
    clock.now_ns += 60 * S
    file_at(path, FILE.replace("5/day", "7/day"), clock())
    a = started("a", 7401, path, clock)
    anti_entropy(a, b)
    assert b.rule_for("acme") == parse_rule("7/day")


def test_the_same_file_on_two_nodes_gives_identical_entries(tmp_path: Path) -> None:
    clock = Clock()
    path = file_at(tmp_path / "node.toml", FILE, clock() - 3600 * S)
    a, b = started("a", 7401, path, clock), started("b", 7402, path, clock)
    assert a.registry.digest == b.registry.digest  # nothing to repair, nothing flip-flops
    assert a.registry.merge(b.registry) == 0 and b.registry.merge(a.registry) == 0
    entry = a.registry.entry("client:acme")
    assert entry is not None and entry.stamp.node == FILE_STAMP_NODE


def test_file_stamps_follow_the_version_and_never_run_ahead_of_the_clock() -> None:
    version = 1_700_000_000_123_456_789
    stamp = file_stamp(version, now_ns=version + S)
    assert stamp == Stamp(1_700_000_000_123, 456_789, "config-file")
    assert file_stamp(version, now_ns=version + 2 * S) == stamp  # whenever it is read
    # A file modified "in the future" (a skewed clock) is taken as modified now.
    assert file_stamp(version + 3600 * S, now_ns=version) == file_stamp(version, now_ns=version)


def test_a_reload_stamps_with_the_new_version_and_a_restart_after_it_changes_nothing(
    tmp_path: Path,
) -> None:
    clock = Clock()
    path = file_at(tmp_path / "node.toml", FILE, clock() - 3600 * S)
    a, b = started("a", 7401, path, clock), started("b", 7402, path, clock)
    sink = RuntimeRules(SimpleNamespace(node=a), wall_ns=clock)  # type: ignore[arg-type]
    reloader = Reloader(path, load_config(path), DaemonConfig(), sink)
    clock.now_ns += 60 * S
    set_rule(b, "acme", "50/day", clock)
    anti_entropy(a, b)
    clock.now_ns += 60 * S
    file_at(path, FILE.replace("5/day", "6/day"), clock())
    assert reloader.poll() is True
    anti_entropy(a, b)
    assert b.rule_for("acme") == parse_rule("6/day")
    before = b.registry.digest
    clock.now_ns += 60 * S
    a = started("a", 7401, path, clock)  # a restart with the file the reload applied
    anti_entropy(a, b)
    assert b.registry.digest == before and a.registry.digest == before
