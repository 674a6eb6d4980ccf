"""A cluster node for threaded code (WSGI apps, scripts, worker pools).

```python
from meshlimit.sync import SyncNode

with SyncNode.start(bind="127.0.0.1:7400", seeds=["127.0.0.1:7401"], default="100/minute") as node:
    decision = node.check("acme")          # from any thread
    node.set_rule("acme", "500/minute")
```

Theory of operation: :class:`SyncNode` owns one daemon thread that runs an
asyncio loop (uvloop when installed) with a :class:`meshlimit.Node` on it.
Every method hands a coroutine to that loop with
:func:`asyncio.run_coroutine_threadsafe` and waits for its result, so the
node itself is only ever touched from its own thread and needs no lock. A
check costs one hop to the loop thread and back (tens of microseconds) on
top of the node's own work; a forwarded check waits for the owner too.

Fork. A forked child has a copy of the node's memory but not its thread: nothing
would ever run its loop (a pre-fork server such as ``gunicorn --preload`` starts
the node in the master, then forks the workers). A node cannot follow its
process into the child either: the parent still holds its address and members.
So the fork is detected (``os.register_at_fork``) and in the child every call
raises :class:`NodeForkedError` at once, saying what to do instead: start a node
in each worker after the fork (gunicorn's ``post_fork`` hook, or no
``--preload``), each on its own address, or share one daemon through
:class:`meshlimit.client.Client`. The parent's node carries on unharmed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import weakref
from collections.abc import Callable, Coroutine, Sequence
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from meshlimit.cluster.wire.messages import Address
from meshlimit.core.decision import Decision
from meshlimit.core.rules import Rule
from meshlimit.node import JOIN_TIMEOUT_S, JoinTimeoutError, Node

__all__ = ["JoinTimeoutError", "NodeForkedError", "NodeStoppedError", "SyncNode", "new_event_loop"]

log = logging.getLogger("meshlimit.sync")

T = TypeVar("T")
P = ParamSpec("P")

#: How long :meth:`SyncNode.start` waits for the socket to bind and the join to begin,
#: on top of the join itself (``join_timeout``).
START_TIMEOUT_S = 10.0
#: How long :meth:`SyncNode.stop` waits for the graceful leave before closing anyway.
STOP_TIMEOUT_S = 5.0
#: How long a rule or membership call waits for the loop thread.
CALL_TIMEOUT_S = 5.0


class NodeStoppedError(RuntimeError):
    """The :class:`SyncNode` was stopped (or never started); start a new one."""


class NodeForkedError(NodeStoppedError):
    """The :class:`SyncNode` was started in a parent process; this forked child has no
    node thread. Start a node after the fork, or use :class:`meshlimit.client.Client`."""


#: Every SyncNode running in this process, for the fork hook (weak: a dropped node goes).
_RUNNING: weakref.WeakSet[SyncNode] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """In a forked child: every node inherited from the parent is dead here."""
    pid = os.getpid()
    for node in list(_RUNNING):
        node._forked_into(pid)
    _RUNNING.clear()


if hasattr(os, "register_at_fork"):  # pragma: no branch - absent on Windows only
    os.register_at_fork(after_in_child=_after_fork_in_child)


def new_event_loop(*, use_uvloop: bool = True) -> asyncio.AbstractEventLoop:
    """A fresh event loop: uvloop's when installed and wanted, else asyncio's."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:  # pragma: no cover - platforms without uvloop
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


class SyncNode:
    """A :class:`meshlimit.Node` on a background thread, with a blocking, thread-safe API.

    Build it with :meth:`start`; every method may be called from any thread but
    the node's own. After :meth:`stop` every method raises
    :class:`NodeStoppedError`. Use it as a context manager to stop on exit.
    """

    def __init__(
        self, node: Node, loop: asyncio.AbstractEventLoop, thread: threading.Thread
    ) -> None:
        """Internal: use :meth:`start`."""
        self._node = node
        self._loop = loop
        self._thread = thread
        self._lock = threading.Lock()  # guards _stopped against a concurrent stop()
        self._stopped = False
        self._started_in = os.getpid()
        self._forked: str | None = None  # why calls fail in a forked child
        _RUNNING.add(self)

    @classmethod
    def start(
        cls,
        bind: str,
        seeds: Sequence[str] = (),
        default: Rule | str = "100/minute",
        *,
        use_uvloop: bool = True,
        start_timeout_s: float = START_TIMEOUT_S,
        join_timeout: float | None = JOIN_TIMEOUT_S,
        **options: Any,
    ) -> SyncNode:
        """Start the loop thread, then the node on it; return once the node has joined.

        ``bind``, ``seeds``, ``default``, ``join_timeout`` and ``options``
        (``node_id``, ``mode``, ``preset``, ``rules``, ``tiers``, ``seed``,
        ``advertise``, and :class:`~meshlimit.cluster.config.NodeConfig` fields) are
        those of :meth:`meshlimit.Node.start`. Its errors (a bad address, a port in
        use, :class:`~meshlimit.node.JoinTimeoutError` when no seed answered within
        ``join_timeout``) are raised here, and the thread is gone by then.
        """
        loop = new_event_loop(use_uvloop=use_uvloop)
        thread = threading.Thread(
            target=_run_loop, args=(loop,), name=f"meshlimit-node-{bind}", daemon=True
        )
        thread.start()
        start = Node.start(bind, seeds, default, join_timeout=join_timeout, **options)
        future = asyncio.run_coroutine_threadsafe(start, loop)
        wait_s = None if join_timeout is None else start_timeout_s + join_timeout
        try:
            node = future.result(wait_s)
        except BaseException:
            future.cancel()
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            raise
        return cls(node, loop, thread)

    # --- the node's API ---------------------------------------------------------------

    @property
    def node_id(self) -> str:
        """This node's id."""
        return self._node.node_id

    @property
    def ready(self) -> bool:
        """Joined (or started without seeds): checks here know the ring."""
        return self._node.ready

    def wait_ready(self, timeout: float) -> bool:
        """Wait until the node has joined; False if ``timeout`` seconds passed first."""
        return self._call(self._node.wait_ready(timeout), timeout + CALL_TIMEOUT_S)

    @property
    def running(self) -> bool:
        """True until :meth:`stop` is called."""
        return not self._stopped

    def check(self, client: str, cost: int = 1, timeout: float = 1.0) -> Decision:
        """Decide a request, waiting at most ``timeout`` seconds.

        A forwarded check that the owner does not answer in time is decided in
        degraded mode by the node itself (``forward_timeout_ns``), so ``timeout``
        is only a backstop: past it the check is cancelled and ``TimeoutError``
        raised. Bad input raises the node's ``ValueError``.
        """
        return self._call(self._node.check(client, cost), timeout)

    def set_rule(self, client: str, rule: Rule | str) -> None:
        """Give ``client`` a rule (or ``"@tier"``, a known tier); spreads to every node."""
        self._call(self._node.set_rule(client, rule), CALL_TIMEOUT_S)

    def assign_tier(self, client: str, tier: str) -> None:
        """Put ``client`` on a tier this node knows (``ValueError`` otherwise)."""
        self._call(self._node.assign_tier(client, tier), CALL_TIMEOUT_S)

    def remove_rule(self, client: str) -> None:
        """Drop ``client``'s own rule; the default applies again."""
        self._call(self._node.remove_rule(client), CALL_TIMEOUT_S)

    def reset(self, client: str) -> None:
        """Forget ``client``'s counts cluster-wide."""
        self._call(self._node.reset(client), CALL_TIMEOUT_S)

    def set_tier(self, name: str, rule: Rule | str) -> None:
        """Define or change a tier everywhere."""
        self._call(self._node.set_tier(name, rule), CALL_TIMEOUT_S)

    def remove_tier(self, name: str) -> None:
        """Remove a tier everywhere; its clients fall back to the default."""
        self._call(self._node.remove_tier(name), CALL_TIMEOUT_S)

    def set_default(self, rule: Rule | str) -> None:
        """Change the default rule everywhere."""
        self._call(self._node.set_default(rule), CALL_TIMEOUT_S)

    def get_rule(self, client: str) -> Rule:
        """The rule in force for ``client`` on this node."""
        return self._call(_value(self._node.get_rule, client), CALL_TIMEOUT_S)

    @property
    def default(self) -> Rule:
        """The default rule, as this node knows it."""
        return self._call(_value(lambda: self._node.default), CALL_TIMEOUT_S)

    def tiers(self) -> dict[str, Rule]:
        """Tiers by name, as this node knows them."""
        return self._call(_value(self._node.tiers), CALL_TIMEOUT_S)

    def owner(self, client: str) -> str:
        """The member that owns ``client`` in this node's view of the ring."""
        return self._call(_value(self._node.owner, client), CALL_TIMEOUT_S)

    def stats(self) -> dict[str, int]:
        """Counters of this node's work, for monitoring."""
        return self._call(_value(self._node.stats), CALL_TIMEOUT_S)

    def members(self) -> list[tuple[str, Address, str, int]]:
        """``(node, addr, state, incarnation)`` of every known member."""
        return self._call(_value(self._node.members), CALL_TIMEOUT_S)

    # --- lifecycle --------------------------------------------------------------------

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Leave the cluster gracefully, close the socket, end and join the thread.

        Calling it again does nothing. Checks still waiting (a forward in flight)
        are cancelled and raise ``concurrent.futures.CancelledError`` in their caller.
        """
        if threading.current_thread() is self._thread:
            raise RuntimeError("SyncNode.stop() called from the node's own thread")
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        _RUNNING.discard(self)
        if self._forked is not None:
            return  # the node is the parent's to stop: this child has no thread to join
        future = asyncio.run_coroutine_threadsafe(self._node.stop(), self._loop)
        try:
            future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            log.warning("node %s: graceful leave took over %.1fs", self.node_id, timeout)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()

    def __enter__(self) -> SyncNode:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "forked" if self._forked else "stopped" if self._stopped else "running"
        return f"<SyncNode {self.node_id} {state}>"

    # --- plumbing ---------------------------------------------------------------------

    def _forked_into(self, pid: int) -> None:
        """This process is a fork of the one the node runs in: refuse every call here."""
        self._lock = threading.Lock()  # the parent's may have been held at the fork
        self._forked = (
            f"SyncNode {self.node_id} was started in process {self._started_in} before "
            f"it forked; this process ({pid}) has no node thread. Start a node after the "
            "fork (in each worker, on its own address: gunicorn's post_fork hook, or no "
            "--preload), or share one daemon with meshlimit.client.Client"
        )

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coro`` on the node's loop and wait for it; refuse after stop."""
        if self._forked is not None:
            coro.close()
            raise NodeForkedError(self._forked)
        with self._lock:
            if self._stopped:
                coro.close()  # never scheduled: close it, so no "never awaited" warning
                raise NodeStoppedError(f"SyncNode {self.node_id} is stopped")
            if threading.current_thread() is self._thread:
                coro.close()
                raise RuntimeError("SyncNode called from its own loop thread; use its Node")
            # Scheduled under the lock, so stop() queues the leave behind it.
            future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"no answer from the node within {timeout}s") from None


async def _value(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Call a plain function on the loop thread (the node is not thread-safe)."""
    return fn(*args, **kwargs)


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    """The node thread: run the loop until stopped, then finish its tasks and close it."""
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        try:
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
