"""Coarse deadlines for exchanges: a set swept a few times a second instead of a loop timer each.

A loop timer per request costs an allocation, a heap push and a cancel (about 1.5 µs with uvloop,
measured with benchmarks/micro_stack.py); adding to and removing from a set costs about 0.1 µs. The
price is resolution: a deadline fires up to one tick late. Deadlines closer than PRECISE_BELOW seconds
use a real loop timer instead, so a short route timeout stays accurate.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

TICK = 0.1
PRECISE_BELOW = 2.0


class Timed(Protocol):
    next_check: float

    def on_deadline(self) -> None: ...


class Deadlines:
    __slots__ = ("_handle", "_loop", "active")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.active: set[Timed] = set()
        self._handle: asyncio.Handle | None = None

    def add(self, item: Timed) -> None:
        self.active.add(item)
        if self._handle is None:
            self._handle = self._loop.call_later(TICK, self._tick)

    def discard(self, item: Timed) -> None:
        self.active.discard(item)

    def _tick(self) -> None:
        self._handle = None
        now = self._loop.time()
        due = [item for item in self.active if item.next_check <= now]
        for item in due:
            self.active.discard(item)
            item.on_deadline()  # may add the item again with a later next_check
        if self.active:
            self._handle = self._loop.call_later(TICK, self._tick)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.active.clear()
