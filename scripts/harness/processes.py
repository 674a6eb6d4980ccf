"""Starting and stopping the processes a benchmark needs; none is ever left behind.

Theory of operation: a script opens one :class:`Cleanup` around everything it starts and
registers each process as it starts it (a ``subprocess.Popen``, a
:class:`meshlimit.processes.NodeProcess`, a :class:`Worker`, anything with ``stop()``).
Leaving the ``with`` block, normally or by an exception, ``KeyboardInterrupt`` included,
stops them all, newest first; an error while stopping one is printed and the rest are still
stopped. :func:`interrupt_on_signals` turns SIGTERM (and SIGINT, even where a shell started
the script with it ignored) into ``KeyboardInterrupt``, so a script told to stop also
unwinds through its ``with`` and ``finally`` blocks.

Free ports, readiness waits and the ``meshlimit node`` child process come from
:mod:`meshlimit.processes`, which the demo and the tests use too; they are re-exported here
so a script imports its process helpers from one place.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from multiprocessing.context import SpawnContext
from types import FrameType, TracebackType
from typing import IO, Any, TypeVar

from meshlimit.processes import HOST, NodeProcess, free_port, wait_for

__all__ = [
    "HOST",
    "Cleanup",
    "NodeProcess",
    "Worker",
    "free_port",
    "interrupt_on_signals",
    "pinned",
    "run_json_child",
    "start_redis",
    "start_server",
    "stop_process",
    "wait_for",
]

T = TypeVar("T")


def pinned(cpu: int | None) -> list[str]:
    """The ``taskset`` prefix that runs a command on ``cpu`` (nothing when ``cpu`` is None)."""
    return ["taskset", "-c", str(cpu)] if cpu is not None else []


def stop_process(proc: subprocess.Popen[Any] | None, timeout_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if the process lingers past ``timeout_s``; None or exited is fine."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout_s)


def start_server(
    argv: list[str],
    port: int,
    what: str,
    *,
    timeout_s: float = 10.0,
    probe: Callable[[socket.socket], bool] | None = None,
    stderr: int | IO[Any] | None = subprocess.DEVNULL,
) -> subprocess.Popen[bytes]:
    """Start a TCP server and wait until it accepts a connection on ``port`` on loopback
    (and ``probe``, given the connected socket, says it answers). A server that exits or
    never answers is stopped and ``RuntimeError`` names ``what``."""
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=stderr, stdin=subprocess.DEVNULL
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection((HOST, port), timeout=0.5) as sock:
                if probe is None or probe(sock):
                    return proc
        except OSError:
            time.sleep(0.05)
    stop_process(proc)
    raise RuntimeError(f"{what} did not start on port {port}")


def _redis_pong(sock: socket.socket) -> bool:
    sock.sendall(b"PING\r\n")
    return sock.recv(16).startswith(b"+PONG")


def start_redis(port: int, cpu: int | None = None) -> subprocess.Popen[bytes]:
    """A throw-away ``redis-server`` on loopback (no snapshots, no append-only file), ready
    for commands; pinned to ``cpu`` when one is given."""
    argv = ["redis-server", "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
    return start_server(pinned(cpu) + argv, port, "redis-server", probe=_redis_pong)


def run_json_child(
    argv: list[str], what: str, *, capture_stderr: bool, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run a child to completion and decode the JSON object on its last stdout line.

    ``capture_stderr`` keeps the child's stderr quiet unless it fails (then it is shown);
    otherwise the child's progress lines go straight to ours. ``env``: the child's
    environment (default: ours). A failed child ends the script with a message naming
    ``what``."""
    proc = subprocess.run(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE if capture_stderr else None,
        text=True,
        check=False,
        env=env,
    )
    if proc.returncode != 0:
        if capture_stderr:
            sys.stderr.write(proc.stderr)
        raise SystemExit(f"child {what} failed with exit code {proc.returncode}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


class Worker:
    """One spawned worker process and its command pipe.

    The protocol: the worker runs ``target(conn, *args)``; it sends ``("ok", None)`` once it
    is ready, then answers each ``(command, argument)`` with ``("ok", value)`` or
    ``("error", text)``, and leaves on ``("stop", None)`` (answering ``("ok", ...)``)."""

    def __init__(self, ctx: SpawnContext, target: Callable[..., None], *args: Any) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=target, args=(child, *args), daemon=True)
        self.proc.start()
        child.close()
        self.reply(timeout_s=60)

    @property
    def pid(self) -> int:
        return int(self.proc.pid or 0)

    def reply(self, timeout_s: float = 120) -> Any:
        """The worker's next answer; ``RuntimeError`` if it reports an error."""
        if not self.conn.poll(timeout_s):
            raise TimeoutError(f"worker {self.pid} did not answer in {timeout_s:.0f} s")
        status, value = self.conn.recv()
        if status != "ok":
            raise RuntimeError(f"worker {self.pid}: {value}")
        return value

    def call(self, cmd: str, arg: Any = None, timeout_s: float = 120) -> Any:
        """Send one command and wait for its answer."""
        self.conn.send((cmd, arg))
        return self.reply(timeout_s)

    def stop(self) -> None:
        """Ask politely, then terminate, then kill: never leaves the process behind."""
        if self.proc.is_alive():
            try:
                self.conn.send(("stop", None))
                if self.conn.poll(5):
                    self.conn.recv()
            except (OSError, EOFError):
                pass
            self.proc.join(5)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)


class Cleanup:
    """Every process a script started, stopped on leaving the ``with`` block, newest first."""

    def __init__(self) -> None:
        self._things: list[tuple[object, Callable[[], None]]] = []

    def add(self, thing: T, stop: Callable[[], None] | None = None) -> T:
        """Register ``thing`` (returned as is); ``stop`` overrides how it is stopped."""
        if stop is None:
            stop = _stopper(thing)
        self._things.append((thing, stop))
        return thing

    def stop(self, thing: object) -> None:
        """Stop ``thing`` now and forget it (a no-op for a thing never registered)."""
        for i, (held, stop) in enumerate(self._things):
            if held is thing:
                del self._things[i]
                stop()
                return

    def stop_all(self) -> None:
        """Stop everything, newest first; an error stopping one does not spare the rest."""
        while self._things:
            _, stop = self._things.pop()
            try:
                stop()
            except Exception as error:  # keep stopping the rest
                print(f"  (while stopping: {error})", file=sys.stderr)

    def __enter__(self) -> Cleanup:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()


def _stopper(thing: object) -> Callable[[], None]:
    if isinstance(thing, subprocess.Popen):
        return lambda: stop_process(thing)
    stop = getattr(thing, "stop", None)
    if not callable(stop):
        raise TypeError(f"cannot stop a {type(thing).__name__}: no stop()")
    return stop


def _raise_interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def interrupt_on_signals() -> None:
    """Make SIGTERM and SIGINT raise ``KeyboardInterrupt`` in the main thread, so that
    ``finally`` blocks and :class:`Cleanup` stop the processes a killed script started."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _raise_interrupt)
