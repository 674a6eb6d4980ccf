"""Run a coroutine eagerly: its result at once if it never waits, else a task that resumes it.

What Python 3.12's eager task factory does, for one coroutine. The RESP
front-end steps every check this way, so that a check the node decides at
once costs no task and no loop iteration, and a pipelined burst of owner-local
checks is answered with one write; a check that has to wait (forwarded to its
owner) becomes a task without holding back the commands after it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def start_eagerly(coro: Coroutine[Any, Any, T]) -> T | asyncio.Future[T]:
    """Run ``coro`` up to its first suspension: its result if it finished, else a task.

    The task, when needed, resumes the very coroutine at the future it is waiting on.
    """
    try:
        waiting_on = coro.send(None)
    except StopIteration as stop:
        result: T = stop.value
        return result
    return asyncio.ensure_future(_resume(coro, waiting_on))


async def _resume(coro: Coroutine[Any, Any, T], waiting_on: object) -> T:
    return await _Resumed(coro, waiting_on)


class _Resumed(Generic[T]):
    """An awaitable that continues a coroutine suspended on ``waiting_on`` (``yield from``
    entered half-way): futures go up to the task unchanged, results and throws go down."""

    __slots__ = ("coro", "waiting_on")

    def __init__(self, coro: Coroutine[Any, Any, T], waiting_on: object) -> None:
        self.coro = coro
        self.waiting_on = waiting_on

    def __await__(self) -> Generator[Any, Any, T]:
        waiting_on = self.waiting_on
        while True:
            try:
                sent = yield waiting_on
            except BaseException as error:  # the task was cancelled: pass it down
                try:
                    waiting_on = self.coro.throw(error)
                except StopIteration as stop:
                    result: T = stop.value
                    return result
            else:
                try:
                    waiting_on = self.coro.send(sent)
                except StopIteration as stop:
                    result = stop.value
                    return result
