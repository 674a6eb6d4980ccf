"""The operator's side of the daemon: ``--log-level`` and ``--log-format json`` on
``meshlimit node`` (``cluster/daemon/logs.py``), and ``meshlimit ctl`` failing in one
line, never a traceback, whatever answers on the other end (``cluster/daemon/ctl.py``)."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from meshlimit.cluster.daemon.logs import JsonFormatter, KeyValueFormatter, setup_logging
from meshlimit.processes import HOST, free_port


def record(msg: str, **extra: object) -> logging.LogRecord:
    made = logging.makeLogRecord({"name": "meshlimit.test", "levelname": "INFO", "msg": msg})
    for key, value in extra.items():
        setattr(made, key, value)
    return made


def test_both_formats_carry_the_same_fields() -> None:
    line = record('node "ready"', node="n1", port=7400, rule=object.__new__(object))
    parsed = json.loads(JsonFormatter().format(line))
    assert list(parsed)[:4] == ["ts", "level", "logger", "msg"]
    assert parsed["msg"] == 'node "ready"' and parsed["node"] == "n1" and parsed["port"] == 7400
    assert parsed["rule"].startswith("<object object")  # not JSON: written as text
    kv = KeyValueFormatter().format(line)
    assert 'msg="node \\"ready\\""' in kv and " node=n1 port=7400 " in kv
    try:
        raise ValueError("boom")
    except ValueError:
        failed = record("failed")
        failed.exc_info = sys.exc_info()
    assert "ValueError: boom" in json.loads(JsonFormatter().format(failed))["exc"]


def run_node(*flags: str) -> tuple[str, list[str]]:
    """Start a daemon, stop it with SIGTERM once ready; its ready line and its stderr."""
    argv = [sys.executable, "-m", "meshlimit", "node", "--preset", "local"]
    argv += ["--bind", f"{HOST}:{free_port()}", *flags]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        ready = proc.stdout.readline()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
        return ready, err.splitlines()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.process
@pytest.mark.loopback
def test_json_logs_and_the_level_threshold() -> None:
    ready, lines = run_node("--log-format", "json", "--log-level", "debug")
    assert ready.startswith("meshlimit node ready")
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert {"draining", "node stopped"} <= {r["msg"] for r in records}
    assert all(r["logger"].startswith("meshlimit") and r["level"] for r in records)
    stopped = next(r for r in records if r["msg"] == "node stopped")
    assert stopped["node"] and stopped["level"] == "info"


def test_the_level_is_a_threshold(capsys: pytest.CaptureFixture[str]) -> None:
    logger = logging.getLogger("meshlimit.test")
    root = logging.getLogger("meshlimit")
    saved = (root.handlers[:], root.level, root.propagate)
    try:
        setup_logging("warning", "kv")
        logger.info("hidden")
        logger.warning("shown", extra={"why": "a test"})
        setup_logging("debug", "json")
        logger.debug("now shown")
    finally:  # as it was: other tests capture meshlimit's loggers their own way
        root.handlers[:], root.level, root.propagate = saved
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and "hidden" not in lines[0]
    assert lines[0].startswith("ts=") and 'msg=shown why="a test"' in lines[0]
    assert json.loads(lines[1])["msg"] == "now shown"


@pytest.mark.process
def test_bad_log_flags_are_refused() -> None:
    for flag, value in (("--log-level", "verbose"), ("--log-format", "xml")):
        done = subprocess.run(
            [sys.executable, "-m", "meshlimit", "node", flag, value],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 2 and f"invalid choice: '{value}'" in done.stderr


@contextmanager
def answering(*replies: bytes) -> Iterator[str]:
    """A TCP server answering each connection with the next of ``replies``, then closing."""
    server = socket.create_server((HOST, 0))
    address = f"{HOST}:{server.getsockname()[1]}"

    def serve() -> None:
        for reply in replies:
            connection, _ = server.accept()
            with connection:
                connection.recv(65536)
                connection.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield address
    finally:
        server.close()
        thread.join(5)


@pytest.mark.loopback
def test_ctl_fails_in_one_line_whatever_answers() -> None:
    replies = {
        b"-ERR unknown command\r\n": "did not answer in HTTP (BadStatusLine)",
        b"": "cannot reach the node",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]": "JSON that is not an object",
        b"HTTP/1.1 500 Oops\r\nContent-Length: 3\r\n\r\nbad": "failed",
    }
    with answering(*replies) as address:
        for expected in replies.values():
            done = subprocess.run(
                [sys.executable, "-m", "meshlimit", "ctl", "--http", address, "status"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert done.returncode in (1, 2), done
            assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1, done.stderr
            assert done.stderr.startswith("meshlimit ctl: ") and expected in done.stderr
