"""A Flask app under a real gunicorn with four workers shares one limit through the daemon.

The test writes a small Flask app into ``tmp_path`` whose :class:`meshlimit.flask.
RateLimiter` checks through ``meshlimit.client.Client``, starts real ``meshlimit
node`` daemons (``meshlimit/processes.py``) and a real gunicorn, and fires requests
concurrently so that every worker serves some. Across the workers exactly the limit
per key is admitted, each admission with its own ``remaining``, and every refusal
says when to retry: first against one daemon, then against a two-node cluster (the
client spreads keys over both; a key's owner may be the other node, which the check
is forwarded to). Processes are always stopped.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from meshlimit.processes import HOST, NodeProcess, free_port, wait_for

pytestmark = [pytest.mark.process, pytest.mark.loopback]

WORKERS = 4
LIMIT = 10
#: The daemons' default rule: an hour, so no window ends during the test.
RULE = f"{LIMIT}/hour"
KEYS = ("alice", "bob", "carol", "dave")
#: Requests per key, several times the limit.
REQUESTS = 3 * LIMIT

APP = """
import os
import time

import flask

from meshlimit.client import Client
from meshlimit.flask import RateLimiter, header

app = flask.Flask(__name__)
limiter = Client(os.environ["MESHLIMIT_DAEMONS"].split(","), timeout_ms=2000)
rl = RateLimiter(app, limiter=limiter, key=header("X-Api-Key"))


@app.get("/items")
def items():
    time.sleep(0.01)  # hold the worker a moment: concurrent requests spread over workers
    return {"pid": os.getpid()}


@app.get("/health")
@rl.exempt
def health():
    time.sleep(0.05)
    return {"pid": os.getpid()}
"""


def daemon(name: str, seeds: tuple[int, ...] = ()) -> tuple[NodeProcess, str]:
    """A daemon with a RESP port (not started) and that port's address."""
    resp = f"{HOST}:{free_port(socket.SOCK_STREAM)}"
    node = NodeProcess(name, seeds=seeds, default=RULE, extra=["--resp", resp])
    return node, resp


def get(port: int, path: str, key: str | None = None) -> tuple[int, dict[str, str], Any]:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", path, headers={"X-Api-Key": key} if key else {})
        response = conn.getresponse()
        headers = {k.lower(): v for k, v in response.getheaders()}
        return response.status, headers, json.loads(response.read())
    finally:
        conn.close()


@contextmanager
def gunicorn(tmp_path: Path, daemons: list[str]) -> Iterator[int]:
    """gunicorn serving the app with WORKERS workers; yields its port once every worker
    has answered."""
    (tmp_path / "limited_app.py").write_text(textwrap.dedent(APP))
    port = free_port(socket.SOCK_STREAM)
    log = open(tmp_path / "gunicorn.log", "a")  # noqa: SIM115 - closed below
    argv = [sys.executable, "-m", "gunicorn", "--workers", str(WORKERS)]
    argv += ["--bind", f"{HOST}:{port}", "--chdir", str(tmp_path), "limited_app:app"]
    env = {**os.environ, "MESHLIMIT_DAEMONS": ",".join(daemons)}
    proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env)
    try:
        seen: set[int] = set()

        def every_worker_answers() -> bool:
            assert proc.poll() is None, (tmp_path / "gunicorn.log").read_text()
            with ThreadPoolExecutor(2 * WORKERS) as pool:
                answers = pool.map(lambda _: get(port, "/health"), range(2 * WORKERS))
                seen.update(body["pid"] for _, _, body in answers)
            return len(seen) == WORKERS

        wait_for("every gunicorn worker to answer", every_worker_answers, timeout_s=20)
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def hammer(port: int) -> list[tuple[str, int, dict[str, str], Any]]:
    """REQUESTS requests per key, all keys interleaved, eight at a time."""
    order = [key for _ in range(REQUESTS) for key in KEYS]
    with ThreadPoolExecutor(8) as pool:
        answers = pool.map(lambda key: (key, *get(port, "/items", key)), order)
        return list(answers)


def assert_exactly_the_limit(answers: list[tuple[str, int, dict[str, str], Any]]) -> None:
    pids = {body["pid"] for _, status, _, body in answers if status == 200}
    assert len(pids) > 1, f"one worker served every admission: {pids}"
    for key in KEYS:
        mine = [(status, headers, body) for k, status, headers, body in answers if k == key]
        admitted = [headers for status, headers, _ in mine if status == 200]
        refused = [(headers, body) for status, headers, body in mine if status == 429]
        assert len(admitted) == LIMIT, (key, [status for status, _, _ in mine])
        assert len(refused) == REQUESTS - LIMIT
        for headers in admitted:
            assert headers["ratelimit-policy"] == f'"default";q={LIMIT};w=3600'
            assert "retry-after" not in headers
        # Every admission saw its own count: remaining LIMIT-1 down to 0, once each.
        remaining = sorted(int(h["ratelimit"].split(";r=")[1].split(";")[0]) for h in admitted)
        assert remaining == list(range(LIMIT)), (key, remaining)
        for headers, body in refused:
            retry = int(headers["retry-after"])
            assert 0 < retry <= 2 * 3600  # a sliding window may wait into the next one
            assert body == {"error": "rate limited", "retry_after": retry}
            assert headers["ratelimit"] == f'"default";r=0;t={retry}'


def test_four_workers_share_one_daemons_limit(tmp_path: Path):
    node, resp = daemon("solo")
    node.start()
    try:
        with gunicorn(tmp_path, [resp]) as port:
            assert_exactly_the_limit(hammer(port))
    finally:
        node.stop()


def test_four_workers_share_a_two_node_clusters_limit(tmp_path: Path):
    first, first_resp = daemon("n1")
    second, second_resp = daemon("n2", seeds=(first.udp_port,))
    try:
        first.start()
        second.start()
        for node in (first, second):
            wait_for(
                f"{node.name} to see both members alive",
                lambda node=node: list(node.members().values()) == ["alive", "alive"],
                timeout_s=10,
            )
        owners = {first.owner_of(key) for key in KEYS}
        assert owners == {"n1", "n2"}, owners  # both nodes own some: some checks forward
        with gunicorn(tmp_path, [first_resp, second_resp]) as port:
            assert_exactly_the_limit(hammer(port))
    finally:
        second.stop()
        first.stop()
