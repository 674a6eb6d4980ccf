"""Three ``meshlimit node`` processes in network namespaces: a real partition, bounded.

The network. The test makes four network namespaces of its own, named
``ml-<random>-br`` and ``ml-<random>-n1..n3``. The ``br`` namespace holds a
Linux bridge; each node namespace gets one end of a veth pair (``eth0``,
address ``10.213.0.<i>/24``) whose other end (``vb<i>``) is a port of the
bridge. Every link and address is created inside those namespaces (``ip -n``
and ``ip link add ... netns``), so nothing touches the host's network; ``lo``
is brought up in each. Deleting the namespaces removes all of it.

Talking to the nodes. Node *i* runs as ``ip netns exec ml-...-n<i> python -m
meshlimit node --bind 10.213.0.<i>:7400 --http 127.0.0.1:8080 --preset
local``: cluster traffic crosses the bridge, the HTTP API listens on the
namespace's own loopback. The test reaches that API through one long-lived
helper per namespace (``ip netns exec NS python -c HTTP_HELPER``) which reads
one JSON request per line on stdin, makes the HTTP request to
``127.0.0.1:8080`` inside the namespace and writes one JSON line back
(status, body, wall time of the answer). One helper per namespace rather
than one process per request (about 50 ms of interpreter start each) keeps a
check at a few milliseconds, and because the helper lives in the node's own
namespace it still reaches a node that has been cut off from the others.
Ports can be fixed (7400, 8080): every namespace has its own.

The scenario (``--preset local``, rule ``20/2s algo fixed_window``, two
clients: one owned by the node that will be cut off, one owned by another):

1. healthy: checks for both clients go round-robin to all three nodes; per
   client and window the cluster admits exactly the limit (in windows the
   phase covers whole; never more in any);
2. partition: ``ip link set vb3 down`` on the bridge side cuts ``n3`` off for
   real; checks keep going to all three. ``n3`` is in a minority and decides
   in degraded mode; the majority goes degraded for the client ``n3`` owns.
   Per window the cluster admits at most ``capacity * (1 + f)`` -- the bound
   of ``docs/design.md`` ("Degraded mode and the majority rule") -- plus one
   capacity in a window where some node's view of a client's owner moved
   (sampled every half second);
3. heal: ``ip link set vb3 up``; once every node sees three alive members
   (and a settling second), windows are healthy again: at most the limit,
   exactly the limit when the phase covers them whole, decided by owners.

Answers are placed in windows by ``reset_after`` (the window's end, as the
deciding node saw it) and the wall time the helper got the answer, as in
``tests/test_daemon_processes.py``. The test skips, naming the reason, when
the namespaces cannot be built (not root, no ``ip``, no netns, bridge or veth
support). Teardown kills every process and deletes every namespace, also on
failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from meshlimit.cluster.node.config import NodeConfig, local_quota
from meshlimit.processes import NodeProcess, wait_for

pytestmark = [pytest.mark.process, pytest.mark.slow]

LIMIT = 20
WINDOW_S = 2
RULE = f"{LIMIT}/{WINDOW_S}s algo fixed_window"
UDP_PORT = 7400
HTTP_PORT = 8080
SUBNET = "10.213.0"
NODES = 3
FRACTION = NodeConfig.preset("local", "x", ("127.0.0.1", 1)).degraded_fraction
#: The documented bound per window while a node is cut off (cluster.config.local_quota).
BOUND = int(LIMIT * (1 + FRACTION))
HEALTHY_S = 3 * WINDOW_S
#: The cut node declares both peers dead within ~6 s (``local``: a probe a second, each
#: peer's failed probe judged a second later, then the 3 s suspicion), and the last 3 s
#: of the partition are judged: all degraded there.
PARTITION_S = 10.0
#: Windows this long after every node sees three alive members still count as faulty.
SETTLE_S = 1.0
#: Long enough that two windows after the settling second lie wholly inside the phase.
AFTER_HEAL_S = SETTLE_S + 3 * WINDOW_S
OWNER_SAMPLE_S = 0.5

#: Runs inside a node's namespace: one JSON request per stdin line -> one JSON answer line.
HTTP_HELPER = r"""
import http.client, json, sys, time
port = int(sys.argv[1])
for line in sys.stdin:
    req = json.loads(line)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        body = None if req.get("body") is None else json.dumps(req["body"])
        conn.request(req["method"], req["path"], body=body,
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        out = {"status": resp.status, "data": json.loads(resp.read() or b"null")}
    except (OSError, ValueError) as error:
        out = {"status": 0, "error": f"{type(error).__name__}: {error}"}
    finally:
        conn.close()
    out["wall"] = time.time()
    print(json.dumps(out), flush=True)
"""


# --- the namespaces -------------------------------------------------------------------


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    """``ip ARGS``; raises ``RuntimeError`` with ip's message when it fails."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip() or result.returncode}")
    return result


def netns_unavailable() -> str | None:
    """Why network namespaces cannot be used here, or None when they can.

    Builds a namespace with a bridge and a veth pair and deletes it again."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root (run as root or in a privileged container)"
    if shutil.which("ip") is None:
        return "no `ip` binary (install iproute2)"
    probe = f"ml-{secrets.token_hex(3)}-probe"
    try:
        ip("netns", "add", probe)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
        return f"cannot create a network namespace: {error}"
    try:
        ip("-n", probe, "link", "add", "br0", "type", "bridge")
        ip("-n", probe, "link", "add", "va", "type", "veth", "peer", "name", "vb")
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
        return f"cannot create a bridge and a veth pair in a namespace: {error}"
    finally:
        with contextlib.suppress(RuntimeError, OSError, subprocess.TimeoutExpired):
            ip("netns", "del", probe)
    return None


class NsHttp:
    """The HTTP API of a node in namespace ``ns``, through a helper living there."""

    def __init__(self, ns: str, port: int) -> None:
        self.ns = ns
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-u", "-c", HTTP_HELPER, str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def request(self, method: str, path: str, body: object = None) -> tuple[int, Any, float]:
        """``(status, decoded body, wall time of the answer)``; status 0: no connection."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with self._lock:
            self.proc.stdin.write(json.dumps({"method": method, "path": path, "body": body}))
            self.proc.stdin.write("\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"HTTP helper in {self.ns} exited ({self.proc.poll()})")
        answer = json.loads(line)
        return answer["status"], answer.get("data", answer.get("error")), answer["wall"]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class NetnsNode(NodeProcess):
    """A ``meshlimit node`` run with ``ip netns exec`` in its own namespace."""

    def __init__(self, index: int, ns: str, log_dir: Path, seeds: list[str]) -> None:
        super().__init__(f"n{index}", default=RULE, log_dir=log_dir)
        self.index = index
        self.ns = ns
        self.ip = f"{SUBNET}.{index}"
        self.seed_addrs = seeds
        self.http = NsHttp(ns, HTTP_PORT)

    @property
    def argv(self) -> list[str]:
        argv = ["ip", "netns", "exec", self.ns, sys.executable, "-m", "meshlimit", "node"]
        argv += ["--node-id", self.name, "--bind", f"{self.ip}:{UDP_PORT}"]
        argv += ["--http", f"127.0.0.1:{HTTP_PORT}", "--preset", "local"]
        argv += ["--default", self.default, "--seed-rng", str(self.index)]
        for seed in self.seed_addrs:
            argv += ["--seed", seed]
        return argv

    def call(self, method: str, path: str, body: object = None, timeout_s: float = 5.0) -> Any:
        status, data, _ = self.http.request(method, path, body)
        assert status == 200, (self.name, method, path, status, data)
        return data

    def timed_check(self, client: str) -> tuple[dict[str, Any], float]:
        """A check's answer and the wall time it came back."""
        status, data, wall = self.http.request("POST", "/v1/check", {"client": client})
        assert status == 200, (self.name, client, status, data)
        return data, wall

    def log_tail(self, lines: int = 25) -> str:
        assert self.log_dir is not None
        with contextlib.suppress(OSError):
            text = (self.log_dir / f"{self.name}.log").read_text()
            return "\n".join(text.splitlines()[-lines:])
        return ""


@dataclass
class Net:
    """The namespaces, the nodes in them, and their helpers."""

    prefix: str
    namespaces: list[str] = field(default_factory=list)
    nodes: list[NetnsNode] = field(default_factory=list)

    @property
    def bridge_ns(self) -> str:
        return f"{self.prefix}-br"

    def cut(self, node: NetnsNode) -> None:
        """A real partition: the node's bridge port goes down (no carrier on its eth0)."""
        ip("-n", self.bridge_ns, "link", "set", f"vb{node.index}", "down")

    def heal(self, node: NetnsNode) -> None:
        ip("-n", self.bridge_ns, "link", "set", f"vb{node.index}", "up")


def build_network(net: Net) -> None:
    """A bridge in its own namespace and one namespace per node, joined by veth pairs."""
    br = net.bridge_ns
    ip("netns", "add", br)
    net.namespaces.append(br)
    ip("-n", br, "link", "set", "lo", "up")
    ip("-n", br, "link", "add", "br0", "type", "bridge")
    ip("-n", br, "link", "set", "br0", "up")
    for i in range(1, NODES + 1):
        ns = f"{net.prefix}-n{i}"
        ip("netns", "add", ns)
        net.namespaces.append(ns)
        ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", br, "link", "add", f"vb{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
        ip("-n", br, "link", "set", f"vb{i}", "master", "br0", "up")
        ip("-n", ns, "addr", "add", f"{SUBNET}.{i}/24", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(reason)
    net = Net(prefix=f"ml-{secrets.token_hex(3)}")
    try:
        build_network(net)
        seed = f"{SUBNET}.1:{UDP_PORT}"
        for i in range(1, NODES + 1):
            ns = f"{net.prefix}-n{i}"
            net.nodes.append(NetnsNode(i, ns, tmp_path, [] if i == 1 else [seed]))
        for node in net.nodes:  # n1 first: the others join through it
            node.start()
        yield net
    finally:
        for node in net.nodes:
            with contextlib.suppress(Exception):
                node.kill()
            with contextlib.suppress(Exception):
                node.http.close()
        for ns in reversed(net.namespaces):
            with contextlib.suppress(Exception):
                ip("netns", "del", ns)
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert net.prefix not in left, f"namespaces left behind: {left}"


# --- load and bookkeeping -------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    client: str
    node: str
    path: str
    allowed: bool
    window: int
    wall: float


@dataclass
class Run:
    """Every answer, the phases' wall-clock spans, and owner views that moved."""

    answers: list[Answer] = field(default_factory=list)
    spans: dict[str, tuple[float, float]] = field(default_factory=dict)
    moved_at: list[float] = field(default_factory=list)


def all_alive(nodes: list[NetnsNode]) -> Callable[[], bool]:
    names = {node.name for node in nodes}

    def check() -> bool:
        return all(
            {n for n, state in node.members().items() if state == "alive"} >= names
            for node in nodes
        )

    return check


def drive(
    run: Run,
    nodes: list[NetnsNode],
    clients: list[str],
    owners: dict[str, str],
    phase: str,
    seconds: float,
) -> None:
    """Checks for every client, round-robin over the nodes, for ``seconds``."""
    start = time.time()
    deadline = time.monotonic() + seconds
    next_sample = 0.0
    k = 0
    while time.monotonic() < deadline:
        for j, client in enumerate(clients):
            node = nodes[(k + j) % len(nodes)]
            decision, wall = node.timed_check(client)
            window = round((wall + decision["reset_after"]) / WINDOW_S) - 1
            answer = Answer(client, node.name, decision["path"], decision["allowed"], window, wall)
            run.answers.append(answer)
        k += 1
        if time.monotonic() >= next_sample:
            next_sample = time.monotonic() + OWNER_SAMPLE_S
            for node in nodes:
                for client in clients:
                    if node.owner_of(client) != owners[client]:
                        run.moved_at.append(time.time())
    run.spans[phase] = (start, time.time())


def window_span(window: int) -> tuple[float, float]:
    return window * WINDOW_S, (window + 1) * WINDOW_S


def overlaps(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def inside(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Window span ``a`` lies wholly inside span ``b``."""
    return b[0] <= a[0] and a[1] <= b[1]


# --- the test -------------------------------------------------------------------------


def test_real_partition_in_namespaces_stays_within_the_bound(net: Net) -> None:
    started = time.monotonic()
    nodes = net.nodes
    try:
        wait_for("three alive members in every view", all_alive(nodes), 15)
        run_scenario(net)
    except (AssertionError, TimeoutError) as error:
        logs = "\n".join(f"--- {n.name} ---\n{n.log_tail()}" for n in nodes)
        raise AssertionError(f"{error}\n{logs}") from error
    assert time.monotonic() - started < 60, "the netns test must stay under ~60 s"


def run_scenario(net: Net) -> None:
    nodes = net.nodes
    cut = nodes[2]
    # One client the cut node owns, one it does not: both sides of the partition matter.
    owners = {c: nodes[0].owner_of(c) for c in (f"client-{i}" for i in range(60))}
    owned = next(c for c, o in owners.items() if o == cut.name)
    other = next(c for c, o in owners.items() if o != cut.name)
    clients = [owned, other]
    for client in clients:
        assert {node.owner_of(client) for node in nodes} == {owners[client]}, "views differ"

    run = Run()
    drive(run, nodes, clients, owners, "healthy", HEALTHY_S)

    net.cut(cut)
    cut_at = time.time()
    drive(run, nodes, clients, owners, "partition", PARTITION_S)

    net.heal(cut)
    wait_for("three alive members again after the heal", all_alive(nodes), 20)
    settled_at = time.time() + SETTLE_S
    drive(run, nodes, clients, owners, "after_heal", AFTER_HEAL_S)

    judge(run, clients, (cut_at, settled_at), cut.name)


def judge(run: Run, clients: list[str], fault: tuple[float, float], cut: str) -> None:
    """Assert the per-window bounds; print a per-window table for the log."""
    admitted: Counter[tuple[str, int]] = Counter()
    paths: dict[tuple[str, int], Counter[str]] = defaultdict(Counter)
    for a in run.answers:
        paths[(a.client, a.window)][a.path] += 1
        if a.allowed:
            admitted[(a.client, a.window)] += 1

    moved = {round(t // WINDOW_S) for t in run.moved_at}
    healthy_full = after_heal_full = 0
    for (client, window), counted in sorted(paths.items()):
        span = window_span(window)
        got = admitted[(client, window)]
        faulty = overlaps(span, fault)
        bound = BOUND + (LIMIT if window in moved else 0) if faulty else LIMIT
        print(f"{client} window {window}: admitted {got} bound {bound} {dict(counted)}")
        assert got <= bound, (client, window, got, bound, dict(counted))
        if faulty:
            continue
        # Decided by the owner only; an ``overloaded`` refusal (a forward that timed out
        # on a busy host, counted nowhere) is no decision on the counts.
        assert set(counted) - {"overloaded"} <= {"owner", "forwarded"}, (
            client,
            window,
            dict(counted),
        )
        if inside(span, run.spans["healthy"]):
            assert got == LIMIT, ("healthy window not filled", client, window, got)
            healthy_full += 1
        if inside(span, run.spans["after_heal"]):
            assert got == LIMIT, ("window after the heal not filled", client, window, got)
            after_heal_full += 1
    assert healthy_full >= 2 * len(clients), "the healthy phase covers two windows whole"
    assert after_heal_full >= 2 * len(clients), "the phase after the heal covers two whole"

    # The cut node went degraded (a minority of one) and stayed fail-open, boundedly.
    partition = run.spans["partition"]
    late = (partition[1] - 3.0, partition[1])
    at_cut = [a for a in run.answers if a.node == cut and late[0] <= a.wall <= late[1]]
    assert at_cut and {a.path for a in at_cut} == {"degraded"}, Counter(a.path for a in at_cut)
    quota = local_quota(LIMIT, NODES, FRACTION)
    for client in clients:
        by_window = Counter(a.window for a in at_cut if a.client == client and a.allowed)
        assert by_window, f"{cut} admitted nothing for {client}: degraded mode fails open"
        assert max(by_window.values()) <= quota, (client, by_window, quota)
    print(f"owner views moved at {len(run.moved_at)} samples; quota {quota}, bound {BOUND}")
