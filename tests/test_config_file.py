"""The daemon's config file (``cluster/daemon/config_file.py``, ``reload.py``): parsing, errors,
flags, reloads.

Parsing and diffing are pure and tested directly. Reloads are tested through a
recording sink, through real runtimes on loopback (a two-node cluster in one
asyncio loop: a reload at one node changes the rule at both, with counts kept),
through the file watcher (a short injected poll interval; waits poll with a
deadline), and through SIGHUP to a ``meshlimit node`` process.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from runtimes import captured

import meshlimit.cluster.daemon.main as daemon
from meshlimit.cluster.daemon.config_file import (
    MAX_CONFIG_BYTES,
    ClusterSettings,
    ConfigError,
    DaemonConfig,
    effective_config,
    load_config,
    parse_config,
)
from meshlimit.cluster.daemon.reload import (
    Reloader,
    apply_changes,
    diff_entries,
    restart_needed,
    start_changes,
)
from meshlimit.cluster.node.config import NodeConfig
from meshlimit.cluster.runtime import Runtime
from meshlimit.core.rules import parse_rule
from meshlimit.processes import NodeProcess, wait_for

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"

FULL = """
[cluster]
node_id = "n1"
bind = "127.0.0.1:7400"
seeds = ["127.0.0.1:7401", "[::1]:7402"]
mode = "local"
replicas = 2
degraded_fraction = 0.25
expected_members = 5
preset = "local"
http = "127.0.0.1:0"
resp = "127.0.0.1:6380"

[limits]
default = "10 per minute"

[limits.tiers]
gold = "1000/minute burst 200"
free = "60/m"

[limits.clients]
acme = "gold"
beta = "@free"
"tenant/42" = "5/s algo fixed_window"
"""


def rule(text: str) -> Any:
    return parse_rule(text)


# --- parsing --------------------------------------------------------------------------


def test_a_full_file_parses_into_frozen_settings() -> None:
    config = parse_config(FULL, source="node.toml")
    c = config.cluster
    assert c == ClusterSettings(
        node_id="n1",
        bind=(HOST, 7400),
        seeds=((HOST, 7401), ("::1", 7402)),
        mode="local",
        replicas=2,
        degraded_fraction=0.25,
        expected_members=5,
        preset="local",
        http=(HOST, 0),
        resp=(HOST, 6380),
    )
    assert config.limits.default == rule("10/minute")
    assert dict(config.limits.tiers) == {
        "gold": rule("1000/minute burst 200"),
        "free": rule("60/m"),
    }
    assert dict(config.limits.clients) == {
        "acme": "@gold",
        "beta": "@free",
        "tenant/42": rule("5/s algo fixed_window"),
    }
    with pytest.raises(AttributeError):
        config.cluster = ClusterSettings()  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.limits.tiers["x"] = rule("1/s")  # type: ignore[index]


def test_node_config_takes_the_file_values_over_the_preset() -> None:
    node = parse_config(FULL).node_config()
    local = NodeConfig.preset("local", "n1", (HOST, 7400))
    assert (node.node_id, node.addr, node.mode) == ("n1", (HOST, 7400), "local")
    assert (node.replicas, node.degraded_fraction) == (2, 0.25)
    assert node.expected_members == 5
    assert node.default_rule == "10/minute"
    assert node.forward_timeout_ns == local.forward_timeout_ns  # from the preset
    assert node.membership == local.membership


def test_unset_keys_fall_back_to_the_node_defaults() -> None:
    config = parse_config('[cluster]\nbind = "127.0.0.1:7400"\n')
    node = config.node_config()
    default = NodeConfig.preset("lan", "127.0.0.1:7400", (HOST, 7400))
    assert node == default
    assert config.default_rule == rule(default.default_rule)
    assert config.rule_entries() == {}  # the file sets no rule, so it writes none
    assert parse_config("").limits.default is None


def test_the_example_file_parses() -> None:
    config = load_config(REPO / "examples" / "meshlimit.toml")
    assert config.cluster.bind is not None and config.cluster.node_id
    assert config.limits.tiers and config.limits.clients
    config.node_config()


def _error(text: str | bytes, tmp_path: Path | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="conf/node.toml", base=tmp_path)
    return info.value


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("x = 1", "x", "unknown key; the keys known in the top level are cluster, limits"),
        ('[cluster]\nbnd = "a:1"', "cluster.bnd", "unknown key; the keys known in [cluster]"),
        ("[limits]\ntier = {}", "limits.tier", "known in [limits] are default, tiers, clients"),
        ("cluster = 5", "cluster", "expected a table, got an integer"),
        ('[cluster]\nreplicas = "2"', "cluster.replicas", "expected an integer, got a string"),
        ("[cluster]\nreplicas = true", "cluster.replicas", "expected an integer, got a boolean"),
        ("[cluster]\nreplicas = -1", "cluster.replicas", "must be 0 or more, got -1"),
        ("[cluster]\ndegraded_fraction = 1.5", "cluster.degraded_fraction", "from 0 to 1"),
        ('[cluster]\ndegraded_fraction = "x"', "cluster.degraded_fraction", "got a string"),
        ('[cluster]\nmode = "loose"', "cluster.mode", "'loose' is not one of strict, local"),
        ('[cluster]\npreset = "moon"', "cluster.preset", "'moon' is not one of lan, local, wan"),
        ('[cluster]\nbind = "0.0.0.0:7400"', "cluster.bind", "peers are told this address"),
        ('[cluster]\nbind = "127.0.0.1:0"', "cluster.bind", "cannot be 0"),
        ("[cluster]\nbind = 7400", "cluster.bind", "expected a string, got an integer"),
        ('[cluster]\nhttp = "nope"', "cluster.http", "'nope' is not HOST:PORT"),
        ('[cluster]\nresp = "a:99999"', "cluster.resp", "is not HOST:PORT"),
        ('[cluster]\nseeds = "a:1"', "cluster.seeds", "expected an array"),
        ('[cluster]\nseeds = ["a:1", "x:y"]', "cluster.seeds[1]", "'x:y' is not HOST:PORT"),
        ("[cluster]\nseeds = [1]", "cluster.seeds[0]", "got an integer"),
        ('[cluster]\nnode_id = "a b"', "cluster.node_id", "without spaces"),
        (f'[cluster]\nnode_id = "{"n" * 65}"', "cluster.node_id", "1 to 64 bytes"),
        ("[cluster]\ncluster_key_file = 3", "cluster.cluster_key_file", "expected a string"),
        ('[limits]\ndefault = "10/parsec"', "limits.default", "window unit 'parsec'"),
        ("[limits]\ndefault = 10", "limits.default", "expected a rule string, got an integer"),
        ('[limits]\ntiers = "gold"', "limits.tiers", "expected a table, got a string"),
        ('[limits.tiers]\ngold = "x/minute"', "limits.tiers.gold", "limit 'x' is not a positive"),
        ("[limits.tiers]\ngold = 5", "limits.tiers.gold", "expected a rule string, got an integer"),
        ('[limits.tiers]\n"a b" = "1/s"', 'limits.tiers."a b"', "tier name 'a b' must be"),
        ("[limits.tiers.gold]\nx = 1", "limits.tiers.gold", "expected a rule string, got a table"),
        ("[limits]\nclients = []", "limits.clients", "expected a table, got an array"),
        ('[limits.clients]\nacme = "10/fortnight"', "limits.clients.acme", "'fortnight'"),
        ('[limits.clients]\nacme = "@gold"', "limits.clients.acme", "tier 'gold' is not defined"),
        ('[limits.clients]\n"" = "1/s"', 'limits.clients.""', "client id must be a non-empty"),
        ("[limits.clients]\nacme = 1", "limits.clients.acme", "a rule string or a tier name"),
        (
            '[limits.tiers]\ngold = "1/s"\nfree = "1/m"\n[limits.clients]\nacme = "glod"',
            "limits.clients.acme",
            "'glod' is neither a tier in [limits.tiers] (tiers: free, gold) nor a rule",
        ),
    ],
)
def test_every_error_names_the_file_the_key_and_the_problem(
    text: str, key: str, problem: str
) -> None:
    error = _error(text)
    assert error.source == "conf/node.toml"
    assert error.key == key
    assert problem in error.problem, error.problem
    assert str(error) == f"conf/node.toml: {key}: {error.problem}"


def test_unknown_keys_list_the_known_ones() -> None:
    error = _error('[cluster]\nbnd = "127.0.0.1:1"')
    for name in ("node_id", "bind", "seeds", "mode", "replicas", "degraded_fraction"):
        assert name in error.problem
    assert "cluster_key_file" in error.problem and "preset" in error.problem


def test_syntax_and_encoding_errors_name_the_file_and_the_place() -> None:
    error = _error('[cluster]\nbind = "127.0.0.1:1\n')
    assert error.key == "" and "not valid TOML" in error.problem and "line 2" in error.problem
    assert str(error).startswith("conf/node.toml: not valid TOML")
    assert "not UTF-8 text" in _error(b"[limits]\ndefault = '\xff'").problem


def test_files_that_cannot_be_read_or_are_too_large(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError, match=r"missing.toml: cannot read: No such file"):
        load_config(missing)
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * (MAX_CONFIG_BYTES + 1))
    with pytest.raises(ConfigError, match=f"big.toml: larger than {MAX_CONFIG_BYTES} bytes"):
        load_config(big)


def test_the_cluster_key_file_must_exist_and_resolves_next_to_the_config(tmp_path: Path) -> None:
    error = _error('[cluster]\ncluster_key_file = "nope.key"', tmp_path)
    assert error.key == "cluster.cluster_key_file" and "does not exist" in error.problem
    (tmp_path / "cluster.key").write_text("secret\n")
    path = tmp_path / "node.toml"
    path.write_text('[cluster]\ncluster_key_file = "cluster.key"\n')
    assert load_config(path).cluster.cluster_key_file == str(tmp_path / "cluster.key")


# --- flags over the file --------------------------------------------------------------


def node_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    daemon.add_arguments(parser)
    return parser.parse_args(list(argv))


def write(path: Path, text: str) -> Path:
    """Replace the file atomically, as an editor or a deploy tool would."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
    return path


def test_flags_override_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "node.toml", FULL)
    argv = ["--config", str(path), "--bind", "127.0.0.1:9000", "--mode", "strict"]
    config, flags = effective_config(node_args(*argv, "--default", "5/s"))
    assert config.cluster.bind == (HOST, 9000) and config.cluster.mode == "strict"
    assert config.cluster.node_id == "n1" and config.cluster.replicas == 2  # from the file
    assert config.cluster.seeds == ((HOST, 7401), ("::1", 7402))
    assert config.default_rule == rule("5/s")
    assert config.source == str(path)
    assert flags.cluster.bind == (HOST, 9000) and flags.cluster.replicas is None
    config, _ = effective_config(node_args("--config", str(path), "--seed", "127.0.0.1:1"))
    assert config.cluster.seeds == ((HOST, 1),) and config.default_rule == rule("10/minute")
    assert config.cluster.expected_members == 5  # from the file
    config, _ = effective_config(node_args("--config", str(path), "--expected-members", "7"))
    assert config.cluster.expected_members == 7


def test_flags_alone_and_the_missing_bind(tmp_path: Path) -> None:
    config, _ = effective_config(node_args("--bind", "127.0.0.1:7400"))
    assert config.node_config() == NodeConfig.preset("lan", "127.0.0.1:7400", (HOST, 7400))
    with pytest.raises(ConfigError, match="give --bind HOST:PORT or set bind in"):
        effective_config(node_args())[0].node_config()
    path = write(tmp_path / "node.toml", "[limits]\n")
    with pytest.raises(ConfigError, match=r"node.toml: cluster.bind: no UDP address"):
        effective_config(node_args("--config", str(path)))[0].node_config()


# --- diffing --------------------------------------------------------------------------


def test_diff_writes_only_what_changed_in_a_safe_order() -> None:
    old = {
        "default": rule("100/minute"),
        "tier:gold": rule("10/s"),
        "tier:old": rule("1/s"),
        "client:a": "@gold",
        "client:b": rule("5/s"),
        "client:c": rule("1/s"),
    }
    new = {
        "default": rule("100 per minute"),  # same rule, other notation: no write
        "tier:gold": rule("20/s"),
        "tier:new": rule("2/s"),
        "client:a": "@gold",
        "client:b": "@new",
        "client:d": rule("3/s"),
    }
    assert diff_entries(old, new) == [
        ("tier:gold", rule("20/s")),
        ("tier:new", rule("2/s")),
        ("client:b", "@new"),
        ("client:c", None),
        ("client:d", rule("3/s")),
        ("tier:old", None),
    ]
    assert diff_entries(new, new) == []
    assert diff_entries({"default": rule("1/s")}, {"default": rule("2/s")}) == [
        ("default", rule("2/s"))
    ]


def test_start_changes_and_restart_needed() -> None:
    config = parse_config(FULL, version_ns=1_700_000_000_123_456_789)
    writes = start_changes(config)
    assert [key for key, _, _ in writes] == [
        "default",
        "tier:free",
        "tier:gold",
        "client:acme",
        "client:beta",
        "client:tenant/42",
    ]
    assert {version for _, _, version in writes} == {1_700_000_000_123_456_789}
    moved = ClusterSettings(**{**_fields(config.cluster), "bind": (HOST, 1), "mode": "strict"})
    assert restart_needed(config.cluster, moved) == ["cluster.bind", "cluster.mode"]
    assert restart_needed(config.cluster, config.cluster) == []
    # Flags alone write nothing: their default is the node's own, in its config.
    flags_only, _ = effective_config(node_args("--bind", "127.0.0.1:1", "--default", "1/s"))
    assert start_changes(flags_only) == []


def _fields(settings: ClusterSettings) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in ClusterSettings.__dataclass_fields__}


# --- reloading through a recording sink -----------------------------------------------


class Sink:
    """Records rule writes as ``(key, value)`` and their versions; refuses the keys in
    ``refuse``."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, object]] = []
        self.versions: list[int] = []
        self.refuse: set[str] = set()

    def put_rule(self, key: str, value: object, version_ns: int) -> bool:
        if key in self.refuse:
            raise ValueError("rule registry is full (1 entries)")
        self.writes.append((key, value))
        self.versions.append(version_ns)
        return True


def reloader_for(path: Path, sink: Any, *argv: str, poll_interval_s: float = 1.0) -> Reloader:
    config, flags = effective_config(node_args("--config", str(path), *argv))
    apply_changes(sink, start_changes(config))
    return Reloader(path, config, flags, sink, poll_interval_s=poll_interval_s)


BASE = """
[cluster]
bind = "127.0.0.1:7400"
[limits]
default = "100/day"
[limits.tiers]
gold = "5/day"
[limits.clients]
acme = "gold"
bob = "7/day"
"""


def test_a_reload_writes_the_whole_file_at_its_version_and_logs_the_changes(
    tmp_path: Path,
) -> None:
    path = write(tmp_path / "node.toml", BASE)
    sink = Sink()
    reloader = reloader_for(path, sink)
    assert sink.writes == [
        ("default", rule("100/day")),
        ("tier:gold", rule("5/day")),
        ("client:acme", "@gold"),
        ("client:bob", rule("7/day")),
    ]
    assert set(sink.versions) == {path.stat().st_mtime_ns}  # the file's version, not now
    sink.writes.clear()
    sink.versions.clear()
    write(path, BASE.replace('"5/day"', '"10/day"').replace('bob = "7/day"', 'carol = "@gold"'))
    edited_ns = time.time_ns() - 1000
    os.utime(path, ns=(edited_ns, edited_ns))  # newer than the first, however coarse the fs
    with captured("meshlimit.config") as records:
        assert reloader.reload("sighup") is True
    assert sink.writes == [  # every rule re-asserted at the new version, and one removal
        ("default", rule("100/day")),
        ("tier:gold", rule("10/day")),
        ("client:acme", "@gold"),
        ("client:bob", None),
        ("client:carol", "@gold"),
    ]
    assert set(sink.versions) == {path.stat().st_mtime_ns}
    assert dict(reloader.results) == {"ok": 1, "error": 0}
    (record,) = records
    assert record.levelno == logging.INFO and record.getMessage() == "config reloaded"
    assert vars(record)["reason"] == "sighup" and vars(record)["changed"] == 3
    assert vars(record)["keys"] == "tier:gold,client:bob,client:carol"
    assert reloader.entries()["client:carol"] == "@gold" and "client:bob" not in reloader.entries()
    # A SIGHUP with the file unchanged writes the same rules at the same version: a no-op
    # for the registry, which keeps any newer change.
    version = path.stat().st_mtime_ns
    sink.writes.clear()
    sink.versions.clear()
    assert reloader.reload() is True and set(sink.versions) == {version}
    # An older copy put in place (its mtime not newer) is stamped later than the last
    # version, so that it wins over what that version wrote.
    write(path, BASE)
    os.utime(path, ns=(version - 10**9, version - 10**9))
    sink.versions.clear()
    assert reloader.reload() is True and min(sink.versions) > version


def test_a_bad_reload_keeps_the_rules_and_warns(tmp_path: Path) -> None:
    path = write(tmp_path / "node.toml", BASE)
    sink = Sink()
    reloader = reloader_for(path, sink)
    before = reloader.entries()
    sink.writes.clear()
    write(path, BASE.replace('"5/day"', '"5/parsec"'))
    with captured("meshlimit.config") as records:
        assert reloader.reload("sighup") is False
    assert sink.writes == [] and reloader.entries() == before
    assert dict(reloader.results) == {"ok": 0, "error": 1}
    (record,) = records
    assert record.levelno == logging.WARNING
    error = vars(record)["error"]
    assert error.startswith(f"{path}: limits.tiers.gold: ") and "window unit 'parsec'" in error
    path.unlink()
    assert reloader.reload() is False and dict(reloader.results)["error"] == 2


def test_flags_keep_precedence_and_cluster_changes_need_a_restart(tmp_path: Path) -> None:
    path = write(tmp_path / "node.toml", BASE)
    sink = Sink()
    reloader = reloader_for(path, sink, "--default", "50/day")
    sink.writes.clear()
    changed = BASE.replace('default = "100/day"', 'default = "1/day"')
    write(
        path, changed.replace('bind = "127.0.0.1:7400"', 'bind = "127.0.0.1:7500"\nmode = "local"')
    )
    with captured("meshlimit.config") as records:
        assert reloader.reload() is True
    assert "default" not in dict(sink.writes)  # --default wins over the file's, as at start
    warning = next(r for r in records if r.levelno == logging.WARNING)
    assert "need a restart" in warning.getMessage()
    assert vars(warning)["keys"] == "cluster.bind,cluster.mode"
    assert reloader.config.cluster.bind == (HOST, 7400)  # still the one in force


def test_rules_a_node_refuses_count_as_an_error_and_are_retried(tmp_path: Path) -> None:
    path = write(tmp_path / "node.toml", BASE)
    sink = Sink()
    reloader = reloader_for(path, sink)
    sink.writes.clear()
    sink.refuse = {"client:carol"}
    write(path, BASE + 'carol = "1/day"\ndave = "2/day"\n')
    assert reloader.reload() is False
    assert ("client:dave", rule("2/day")) in sink.writes
    assert "client:carol" not in dict(sink.writes) and "client:carol" not in reloader.entries()
    assert dict(reloader.results) == {"ok": 0, "error": 1}
    sink.refuse = set()
    assert reloader.reload() is True
    assert ("client:carol", rule("1/day")) in sink.writes


def test_poll_reloads_only_when_the_file_changed(tmp_path: Path) -> None:
    path = write(tmp_path / "node.toml", BASE)
    sink = Sink()
    reloader = reloader_for(path, sink)
    assert reloader.poll() is None
    write(path, BASE.replace('"7/day"', '"8/day"'))
    assert reloader.poll() is True and reloader.poll() is None
    write(path, BASE.replace('"7/day"', '"8/day"') + "\n# same rules, other bytes\n")
    assert reloader.poll() is True
    write(path, "not toml [")
    assert reloader.poll() is False and reloader.poll() is None  # one warning, not one a second
    assert dict(reloader.results) == {"ok": 2, "error": 1}


# --- reloading a real cluster on loopback ---------------------------------------------


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def runtime_on_loopback(
    node_id: str, seeds: list[tuple[str, int]] | None = None, *, default: str = "100/day"
) -> AsyncIterator[Runtime]:
    config = NodeConfig.preset("local", node_id, (HOST, free_udp_port()), default_rule=default)
    runtime = Runtime(config, seed=1)
    try:
        await runtime.start(seeds or [])
        yield runtime
    finally:
        await runtime.stop(leave=False)


async def until(what: str, predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def settled(runtimes: tuple[Runtime, ...], client: str, timeout_s: float = 5.0) -> None:
    """Until a free (cost 0) check of ``client`` is decided by its owner at every node, not
    degraded (a node that just joined decides degraded until the counts are in)."""
    deadline = time.monotonic() + timeout_s
    for runtime in runtimes:
        while (await runtime.check(client, 0)).path not in ("owner", "forwarded"):
            assert time.monotonic() < deadline, f"{runtime.node.node_id} still degraded"
            await asyncio.sleep(0.01)


@pytest.mark.loopback
def test_a_reload_changes_the_rule_at_every_node_and_keeps_the_counts(tmp_path: Path) -> None:
    path = write(tmp_path / "node.toml", BASE)

    async def main() -> None:
        async with runtime_on_loopback("n1") as first:
            reloader = reloader_for(path, first)
            async with runtime_on_loopback("n2", [first.node.config.addr]) as second:
                nodes = (first, second)
                await until(
                    "two members", lambda: all(len(r.node.ring.shares()) == 2 for r in nodes)
                )
                await until(
                    "the file's rules at n2",
                    lambda: second.node.rule_for("acme") == rule("5/day"),
                )
                await settled(nodes, "acme")
                remaining = [(await r.check("acme")).remaining for r in (first, second, first)]
                assert remaining == [4, 3, 2]
                write(
                    path,
                    BASE.replace('"5/day"', '"10/day"').replace('bob = "7/day"', 'carol = "2/day"'),
                )
                assert reloader.reload("sighup") is True
                await until(
                    "the new rules at both nodes",
                    lambda: all(
                        (r.node.rule_for("acme"), r.node.rule_for("bob"), r.node.rule_for("carol"))
                        == (rule("10/day"), rule("100/day"), rule("2/day"))
                        for r in nodes
                    ),
                )
                decision = await second.check("acme")
                assert decision.allowed and decision.remaining == 10 - 4  # three counted before
                write(path, BASE.replace('"5/day"', '"5/fortnight"'))
                assert reloader.reload("sighup") is False
                assert all(r.node.rule_for("acme") == rule("10/day") for r in nodes)
                assert dict(reloader.results) == {"ok": 1, "error": 1}

    asyncio.run(main())


@pytest.mark.loopback
def test_the_watcher_applies_an_edit_without_a_signal(tmp_path: Path) -> None:
    path = write(tmp_path / "node.toml", BASE)

    async def main() -> None:
        async with runtime_on_loopback("n1") as runtime:
            reloader = reloader_for(path, runtime, poll_interval_s=0.01)
            assert runtime.node.rule_for("bob") == rule("7/day")
            watch = asyncio.create_task(reloader.watch())
            try:
                write(path, BASE.replace('"7/day"', '"70/day"'))
                await until(
                    "the edit applied", lambda: runtime.node.rule_for("bob") == rule("70/day")
                )
                write(path, BASE.replace('"7/day"', '"70/parsec"'))
                await until("the bad edit seen", lambda: reloader.results["error"] == 1)
                assert runtime.node.rule_for("bob") == rule("70/day")
                assert dict(reloader.results) == {"ok": 1, "error": 1}
            finally:
                watch.cancel()

    asyncio.run(main())


# --- the daemon -----------------------------------------------------------------------


@pytest.mark.process
@pytest.mark.loopback
def test_sighup_reloads_a_running_node(tmp_path: Path) -> None:
    path = write(tmp_path / "node.toml", BASE.replace('bind = "127.0.0.1:7400"\n', ""))
    node = NodeProcess(
        "solo", log_dir=tmp_path, extra=["--config", str(path), "--config-poll-s", "0"]
    )
    try:
        node.start()
        assert node.call("GET", "/v1/rules/acme") == {
            "client": "acme",
            "rule": "5/day",
            "source": "tier:gold",
        }
        assert node.check("acme")["remaining"] == 4
        write(path, BASE.replace('"5/day"', '"9/day"'))
        assert node.proc is not None
        node.proc.send_signal(signal.SIGHUP)
        wait_for("the reload", lambda: node.call("GET", "/v1/rules/acme")["rule"] == "9/day", 10)
        assert node.check("acme")["remaining"] == 7  # the count survived the change
        write(path, "[limits\n")
        node.proc.send_signal(signal.SIGHUP)
        log_path = tmp_path / "solo.log"
        wait_for("the warning", lambda: "config reload failed" in log_path.read_text(), 10)
        assert node.call("GET", "/v1/rules/acme")["rule"] == "9/day" and node.running
        line = next(x for x in log_path.read_text().splitlines() if "reload failed" in x)
        assert line.startswith("ts=") and "level=warning" in line and "reason=sighup" in line
        assert "not valid TOML" in line
    finally:
        node.stop()
    assert node.proc is not None and node.proc.returncode == 0


@pytest.mark.process
def test_a_bad_file_at_start_exits_2_naming_file_key_and_problem(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = write(tmp_path / "node.toml", '[limits.tiers]\ngold = "10/parsec"\n')
    result = subprocess.run(
        [sys.executable, "-m", "meshlimit", "node", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 2, result
    assert f"{path}: limits.tiers.gold: " in result.stderr and "parsec" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_key_file_flag_is_checked() -> None:
    with pytest.raises(SystemExit) as info:
        node_args("--bind", "127.0.0.1:1", "--cluster-key-file", "/nonexistent/key")
    assert info.value.code == 2
    config, _ = effective_config(node_args("--bind", "127.0.0.1:1", "--cluster-key-file", __file__))
    assert config.cluster.cluster_key_file == __file__


def test_a_key_file_authenticates_the_node_and_its_absence_is_warned_about(
    tmp_path: Path,
) -> None:
    (tmp_path / "cluster.key").write_text("# primary first\n" + "ab" * 16 + "\n")
    text = BASE.replace("[cluster]\n", '[cluster]\ncluster_key_file = "cluster.key"\n')
    path = write(tmp_path / "node.toml", text)
    config, flags = effective_config(node_args("--config", str(path)))
    runtime = Runtime(config.node_config(), seed=1)
    assert runtime.node.config.cluster_keys == (bytes.fromhex("ab" * 16),)
    with captured("meshlimit.daemon") as records:
        operator = daemon._Operator(runtime, config, flags)
    assert records == []  # authenticated: nothing to warn about
    assert runtime.node.rule_for("acme") == rule("5/day")  # the file's rules, before joining
    assert operator.reloader is not None and operator.reloader.path == path
    # Without a key the node says loudly that its cluster port is open.
    bare, bare_flags = effective_config(
        node_args("--config", str(write(tmp_path / "b.toml", BASE)))
    )
    with captured("meshlimit.daemon") as records:
        daemon._Operator(Runtime(bare.node_config(), seed=2), bare, bare_flags)
    assert any("NOT authenticated" in r.getMessage() for r in records)


def test_a_bad_key_file_is_refused_naming_the_key(tmp_path: Path) -> None:
    (tmp_path / "cluster.key").write_text("short\n")
    text = BASE.replace("[cluster]\n", '[cluster]\ncluster_key_file = "cluster.key"\n')
    config, _ = effective_config(node_args("--config", str(write(tmp_path / "n.toml", text))))
    with pytest.raises(ConfigError, match="cluster_key_file.*at least 16 bytes"):
        config.node_config()


def test_daemon_config_defaults_are_empty() -> None:
    assert DaemonConfig() == DaemonConfig(None, ClusterSettings())
