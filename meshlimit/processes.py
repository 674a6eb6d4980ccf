"""Running ``meshlimit node`` daemons as child processes on loopback.

Used by ``meshlimit demo`` and by the multi-process tests: start a node on
free ports, wait for its readiness line, talk to its HTTP API, kill it with
SIGKILL or stop it with SIGTERM. Standard library only.
"""

from __future__ import annotations

import http.client
import json
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

HOST = "127.0.0.1"


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A port on loopback that is free now (UDP by default)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_for(
    what: str, predicate: Callable[[], bool], timeout_s: float, poll_s: float = 0.05
) -> None:
    """Poll ``predicate`` until it holds; ``TimeoutError`` naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(poll_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


class NodeProcess:
    """One ``meshlimit node`` child process with fixed ports (kept across restarts)."""

    def __init__(
        self,
        name: str,
        *,
        seeds: Sequence[int] = (),
        default: str = "100/minute",
        log_dir: Path | None = None,
        extra: list[str] | None = None,
    ) -> None:
        self.name = name
        self.udp_port = free_port(socket.SOCK_DGRAM)
        self.http_port = free_port(socket.SOCK_STREAM)
        self.seeds = list(seeds)
        self.default = default
        self.log_dir = log_dir
        self.extra = list(extra or [])
        self.proc: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.ready_line = ""
        """The readiness line of the last start (``meshlimit node ready id=... grpc=...``)."""

    @property
    def argv(self) -> list[str]:
        """The command line that starts this node."""
        argv = [sys.executable, "-m", "meshlimit", "node", "--node-id", self.name]
        argv += ["--bind", f"{HOST}:{self.udp_port}", "--http", f"{HOST}:{self.http_port}"]
        argv += ["--preset", "local", "--default", self.default, *self.extra]
        for port in self.seeds:
            argv += ["--seed", f"{HOST}:{port}"]
        return argv

    def start(self, timeout_s: float = 20.0) -> None:
        """Start the process and wait for its readiness line."""
        stderr: int | TextIO = subprocess.DEVNULL
        if self.log_dir is not None:
            stderr = open(self.log_dir / f"{self.name}.log", "a")  # noqa: SIM115 - child owns it
        self._lines = queue.Queue()
        self.proc = subprocess.Popen(
            self.argv, stdout=subprocess.PIPE, stderr=stderr, text=True, stdin=subprocess.DEVNULL
        )
        threading.Thread(target=self._read, args=(self.proc, self._lines), daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=0.1)
            except queue.Empty:
                continue
            if line is None:
                break
            if line.startswith("meshlimit node ready"):
                self.ready_line = line
                return
        raise RuntimeError(f"node {self.name} did not become ready (exit {self.proc.poll()})")

    @staticmethod
    def _read(proc: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.strip())
        lines.put(None)

    def ready_port(self, name: str) -> int:
        """The port the readiness line shows for ``name`` (``http``, ``resp``, ``grpc``):
        how a caller learns a port the node picked itself (``--grpc 127.0.0.1:0``)."""
        match = re.search(rf"\b{re.escape(name)}=\S*:(\d+)", self.ready_line)
        if match is None:
            raise LookupError(f"node {self.name}'s ready line has no {name}= address")
        return int(match.group(1))

    def kill(self) -> None:
        """SIGKILL: the node loses all its state, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM (graceful leave), then SIGKILL if it lingers."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def call(self, method: str, path: str, body: object = None, timeout_s: float = 5.0) -> Any:
        """One HTTP request to the node's API; the decoded JSON answer."""
        conn = http.client.HTTPConnection(HOST, self.http_port, timeout=timeout_s)
        try:
            payload = None if body is None else json.dumps(body)
            conn.request(method, path, body=payload, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            return json.loads(response.read() or b"null")
        finally:
            conn.close()

    def check(self, client: str, cost: int = 1) -> dict[str, Any]:
        """``POST /v1/check``."""
        return self.call("POST", "/v1/check", {"client": client, "cost": cost})

    def members(self) -> dict[str, str]:
        """Member id -> state, as this node sees them."""
        return {m["node"]: m["state"] for m in self.call("GET", "/v1/cluster")["members"]}

    def owner_of(self, client: str) -> str:
        """The owner of ``client`` in this node's view."""
        return str(self.call("GET", f"/v1/owner/{client}")["owner"])
