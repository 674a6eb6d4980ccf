"""Two ``meshlimit node`` processes sharing one config file: a rule changed at run time
survives a restart of a node with the unchanged file, and an edit of the file still wins.

The file was last modified an hour ago. Both daemons start with it; a rule the file sets
is changed over HTTP on the second node; the first node is killed (SIGKILL) and started
again with the same file, and must end up with the runtime rule, as must the second.
Then the file is edited and the first node restarted once more: the edit wins. Waits
poll with deadlines; both processes are stopped in ``finally``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from meshlimit.processes import NodeProcess, wait_for

pytestmark = [pytest.mark.process, pytest.mark.loopback, pytest.mark.slow]

FILE = """
[limits.clients]
acme = "5/day"
"""


def rule_at(node: NodeProcess, client: str) -> str:
    return str(node.call("GET", f"/v1/rules/{client}")["rule"])


def joined(*nodes: NodeProcess) -> bool:
    return all(
        len(node.members()) == len(nodes) and set(node.members().values()) == {"alive"}
        for node in nodes
    )


def test_a_runtime_rule_change_survives_a_restart_with_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(FILE)
    an_hour_ago = time.time_ns() - 3600 * 10**9
    os.utime(path, ns=(an_hour_ago, an_hour_ago))
    extra = ["--config", str(path), "--config-poll-s", "0"]
    a = NodeProcess("a", default="100/day", log_dir=tmp_path, extra=extra)
    b = NodeProcess("b", seeds=[a.udp_port], default="100/day", log_dir=tmp_path, extra=extra)
    try:
        a.start()
        b.start()
        wait_for("two members", lambda: joined(a, b), 20)
        assert rule_at(a, "acme") == rule_at(b, "acme") == "5/day"
        b.call("PUT", "/v1/rules/acme", {"rule": "50/day"})
        wait_for("the change at a", lambda: rule_at(a, "acme") == "50/day", 10)
        a.kill()
        a.start()  # same node id, ports and file
        wait_for("a back in the cluster", lambda: joined(a, b), 20)
        wait_for("the runtime rule at the restarted a", lambda: rule_at(a, "acme") == "50/day", 10)
        assert rule_at(b, "acme") == "50/day"  # not reverted cluster-wide
        # An edit of the file is newer than the runtime change: it wins, cluster-wide.
        path.write_text(FILE.replace("5/day", "7/day"))
        a.kill()
        a.start()
        wait_for("the edit at b", lambda: rule_at(b, "acme") == "7/day", 20)
        assert rule_at(a, "acme") == "7/day"
    finally:
        a.stop()
        b.stop()
