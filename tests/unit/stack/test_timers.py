"""The exchange's one timer (meshpy.stack.timers) on both loops: a deadline already due when it is set
makes uvloop's call_at return a plain Handle (no `when()`), and setting another deadline after that
must not fail (it once raised AttributeError out of data_received and killed the connection)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
import uvloop

from meshpy.stack.timers import TimersMixin


class _Deadlines:
    def __init__(self) -> None:
        self.members: set[object] = set()

    def add(self, ex: object) -> None:
        self.members.add(ex)

    def discard(self, ex: object) -> None:
        self.members.discard(ex)


class _Timed(TimersMixin):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.down = SimpleNamespace(loop=loop, slot=SimpleNamespace(deadlines=_Deadlines()))
        self._timer = None
        self.next_check = 0.0
        self.fired = 0

    def on_deadline(self) -> None:
        self._timer = None
        self.fired += 1


@pytest.mark.parametrize("new_loop", [uvloop.new_event_loop, asyncio.new_event_loop])
def test_a_deadline_already_due_then_another(new_loop: type[asyncio.AbstractEventLoop]) -> None:
    loop = new_loop()
    try:
        t = _Timed(loop)
        now = loop.time()
        t._schedule(now + 0.0001, now)  # under uvloop's millisecond: a plain Handle
        t._schedule(now + 0.00005, now)  # earlier still: replaces it
        t._schedule(now + 0.5, now)  # later: the earlier one stays
        loop.run_until_complete(asyncio.sleep(0.01))
        assert t.fired == 1 and t._timer is None
    finally:
        loop.close()
