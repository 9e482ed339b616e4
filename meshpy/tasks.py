"""The owner of a process's background tasks: DNS refresh, health checks, the pool sweeper, upstream
connects, the xDS client, config watching, drain and shutdown.

asyncio keeps only weak references to tasks, logs a failed one only when it is collected, and has no
notion of who should stop what: a task started with a bare `create_task` can be lost, fail unseen, or
outlive the proxy. Every task here is started through one TaskOwner, which holds it, logs its failure
at once, and at shutdown cancels what is left and waits for it, so nothing runs after `stop`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class TaskOwner:
    __slots__ = ("_loop", "_tasks")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, T], name: str | None = None) -> asyncio.Task[T]:
        task = self._loop.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def spawn_connect(self, coro: Coroutine[Any, Any, T], name: str | None = None) -> asyncio.Task[T]:
        """An upstream connect, whose caller handles a refused or timed-out connect itself (counted,
        answered 503 UF, retried): only an unexpected error is logged here, not every refused port."""
        task = self._loop.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._connect_done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    def _connect_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or isinstance(task.exception(), OSError | TimeoutError):
            self._tasks.discard(task)
        else:
            self._done(task)

    def __len__(self) -> int:
        return len(self._tasks)

    async def stop(self, timeout: float = 5.0) -> None:
        """Cancel every task still running (but the caller's own) and wait for them, `timeout` at most."""
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for t in tasks:
            t.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for t in pending:
                log.warning("background task %s did not stop in %.1fs", t.get_name(), timeout)
