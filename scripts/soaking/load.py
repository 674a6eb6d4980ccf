"""The soak's load and its memory sampler, each run in its own thread until
``Shared.stop`` is set.

A :class:`Client` checks on a fixed schedule, over keep-alive HTTP connections, against a
random node among those up, and records each answer with the window it was decided in
(see ``soak.py``'s docstring, "Accounting"); the sampler reads every node's resident set
once a second.
"""

from __future__ import annotations

import http.client
import json
import math
import random
import time

from harness.proc import status_kib
from harness.processes import HOST, NodeProcess

from meshlimit.core.rules import Rule
from soaking.state import HTTP_TIMEOUT_S, MAX_LAG_S, RSS_EVERY_S, Answer, Shared


class Client:
    """One load thread: keep-alive connections to the nodes, a fixed schedule."""

    def __init__(
        self,
        index: int,
        shared: Shared,
        nodes: dict[str, NodeProcess],
        rules: dict[str, Rule],
        rate: float,
        seed: int,
    ) -> None:
        self.shared = shared
        self.nodes = nodes
        self.rules = rules
        self.interval_s = 1.0 / rate
        self.rng = random.Random(seed * 1000 + index)
        self.cycle = list(rules)
        self.rng.shuffle(self.cycle)
        self.offset_s = self.interval_s * self.rng.random()
        self.conns: dict[str, tuple[int, http.client.HTTPConnection]] = {}
        self.answers: list[Answer] = []

    def run(self) -> None:
        """Check on schedule until the shared stop event is set."""
        next_t = time.perf_counter() + self.offset_s
        k = 0
        while not self.shared.stop.is_set():
            now = time.perf_counter()
            if next_t > now:
                self.shared.stop.wait(next_t - now)
                continue
            if now - next_t > MAX_LAG_S:
                missed = int((now - next_t) / self.interval_s)
                with self.shared.lock:
                    self.shared.skipped += missed
                next_t += missed * self.interval_s
            next_t += self.interval_s
            with self.shared.lock:
                up = sorted(self.shared.up.items())
            if not up:
                continue
            name, life = self.rng.choice(up)
            client = self.cycle[k % len(self.cycle)]
            k += 1
            self.check(name, life, client)
        for _, conn in self.conns.values():
            conn.close()
        with self.shared.lock:
            self.shared.answers.extend(self.answers)

    def _conn(self, name: str, life: int) -> tuple[http.client.HTTPConnection, bool]:
        """A connection to the node's current life; True if it was used before."""
        held = self.conns.get(name)
        if held is not None and held[0] == life:
            return held[1], True
        if held is not None:
            held[1].close()
        conn = http.client.HTTPConnection(HOST, self.nodes[name].http_port, timeout=HTTP_TIMEOUT_S)
        self.conns[name] = (life, conn)
        return conn, False

    def check(self, name: str, life: int, client: str) -> None:
        body = json.dumps({"client": client})
        headers = {"Content-Type": "application/json"}
        for attempt in (0, 1):
            conn, reused = self._conn(name, life)
            send_wall = time.time()
            start = time.perf_counter_ns()
            try:
                conn.request("POST", "/v1/check", body=body, headers=headers)
                response = conn.getresponse()
                payload = response.read()
            except (OSError, http.client.HTTPException) as error:
                conn.close()
                self.conns.pop(name, None)
                if reused and attempt == 0:
                    continue  # a keep-alive connection the server closed: retry once, fresh
                with self.shared.lock:
                    self.shared.unavailable[f"{name}: {type(error).__name__}"] += 1
                return
            latency = time.perf_counter_ns() - start
            recv_wall = time.time()
            if response.status != 200:
                with self.shared.lock:
                    self.shared.http_errors.append(
                        f"{name} HTTP {response.status} for {client}: {payload[:200]!r}"
                    )
                return
            decision = json.loads(payload)
            rule = self.rules[client]
            window_s = rule.window_ns / 1e9
            if rule.algo == "token_bucket":
                window = math.floor((send_wall + recv_wall) / 2 / window_s)
            else:
                window = round((recv_wall + decision["reset_after"]) / window_s) - 1
            self.answers.append(
                Answer(client, name, decision["path"], decision["allowed"], window, latency)
            )
            return


def sample_rss(shared: Shared, nodes: list[NodeProcess], lives: dict[str, int]) -> None:
    """Every node process's VmRSS (kB), once a second, until stop."""
    while True:
        sample_rss_once(shared, nodes, lives)
        if shared.stop.wait(RSS_EVERY_S):
            return


def sample_rss_once(shared: Shared, nodes: list[NodeProcess], lives: dict[str, int]) -> None:
    """One VmRSS sample of every running node. A node the fault loop has taken out of
    ``shared.up`` (it is about to be, or has been, killed) is skipped, and so is a sample
    read while that happened: a dying process's shrinking RSS is not its footprint."""
    now = time.time()
    for node in nodes:
        proc = node.proc
        with shared.lock:
            life = shared.up.get(node.name)
        if proc is None or proc.poll() is not None or life is None:
            continue
        rss = read_rss_kb(proc.pid)
        with shared.lock:
            if rss is not None and shared.up.get(node.name) == life == lives[node.name]:
                shared.rss[(node.name, life)].append((now, rss))


def read_rss_kb(pid: int) -> int | None:
    """``VmRSS`` of a live process in kB; None if it is gone, dying or a zombie."""
    return status_kib(pid).get("VmRSS")
