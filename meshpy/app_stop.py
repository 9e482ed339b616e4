"""How the proxy stops: drain (/ready 503, `Connection: close` and GOAWAY while the listeners still
accept), stop accepting, give requests in flight the grace time, close. A sidecar drains inbound before
outbound; an idle proxy does not wait out the drain time (Lifecycle.exit_when_idle). Part of App."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Literal

from meshpy.listener_pause import close_spares
from meshpy.model.types import Lifecycle

if TYPE_CHECKING:
    from meshpy.routing.compile import ListenerSlot, Snapshot
    from meshpy.tasks import TaskOwner

log = logging.getLogger("meshpy")

# Which listeners a drain step touches: a sidecar drains inbound before outbound (see _shutdown).
Which = Literal["all", "inbound", "not outbound"]


class Stopping:
    """The stop half of App (meshpy/app.py), which holds the state declared here."""

    if TYPE_CHECKING:
        from meshpy.app import BoundListener

        loop: asyncio.AbstractEventLoop
        tasks: TaskOwner
        snapshot: Snapshot | None
        listeners: dict[str, BoundListener]
        _old_slots: list[ListenerSlot]
        _state: str
        _drain_time: float | None
        _grace_time: float | None
        _stopped: asyncio.Event
        _hurry: asyncio.Event
        _shutdown_task: asyncio.Task[None] | None
        _drain_task: asyncio.Task[None] | None

        async def close(self) -> None: ...
        def _drain_slot(self, slot: ListenerSlot) -> None: ...

    def drain_listeners(self, inbound_only: bool = False, graceful: bool = True) -> None:
        """Envoy's /drain_listeners: every listener, or only those of inbound traffic; stop accepting at
        once, or (`graceful`) after the drain time. A sidecar's preStop hook drains inbound first, so
        callers move away while the app can still make its own calls outbound."""
        if self._drain_task is None:
            self._drain_task = self.tasks.spawn(self._drain(inbound_only, graceful), name="drain")

    def quit(self) -> None:
        self.shutdown(drain=False)

    @property
    def lifecycle(self) -> Lifecycle:
        base = self.snapshot.config.lifecycle if self.snapshot is not None else Lifecycle()
        return Lifecycle(
            drain_time=base.drain_time if self._drain_time is None else self._drain_time,
            grace_time=base.grace_time if self._grace_time is None else self._grace_time,
            exit_when_idle=base.exit_when_idle,
        )

    def shutdown(self, drain: bool = True) -> None:
        if self._shutdown_task is None:
            self._shutdown_task = self.tasks.spawn(self._shutdown(drain), name="shutdown")
        elif not self._hurry.is_set():
            # A second Ctrl-C or SIGTERM: whoever sends it does not want to wait.
            log.warning("second stop signal: stopping now (%s)", self._in_flight())
            self._hurry.set()

    def _in_flight(self) -> str:
        slots = self._slots()
        connections = sum(len(slot.connections) for slot in slots)
        requests = sum(slot.current.stats.rq_active for slot in slots)
        return f"{connections} connections open, {requests} requests in flight"

    async def _drain_wait(self, lc: Lifecycle) -> None:
        """drain_time, or less: once nothing is in flight there is nothing to drain, unless the config
        says to wait (exit_when_idle: false, for a gateway whose balancer needs the whole time to
        notice) or it is a sidecar, whose app may still make calls through it while it stops."""
        exit_when_idle = lc.exit_when_idle
        if exit_when_idle is None:
            exit_when_idle = not any(s.current.model.direction == "outbound" for s in self._slots())
        if not exit_when_idle:
            log.info("draining for %.1fs (%s)", lc.drain_time, "exit_when_idle is false"
                     if lc.exit_when_idle is False else "a sidecar: its app may still call out through it")
            await self._wait_or_hurry(lc.drain_time)
            return
        deadline = self.loop.time() + lc.drain_time
        while not self._idle():
            left = deadline - self.loop.time()
            if left <= 0 or self._hurry.is_set():
                return
            await self._wait_or_hurry(min(left, 0.05))
        log.info("nothing in flight: stopping now")

    def _idle(self) -> bool:
        return all(conn.idle() for slot in self._slots() for conn in slot.connections)

    async def _wait_or_hurry(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._hurry.wait(), seconds)

    def _slots(self, which: Which = "all") -> list[ListenerSlot]:
        slots = [b.slot for b in self.listeners.values()] + self._old_slots
        if which == "inbound":
            return [slot for slot in slots if slot.current.model.direction == "inbound"]
        if which == "not outbound":
            return [slot for slot in slots if slot.current.model.direction != "outbound"]
        return slots

    def _begin_drain(self, which: Which = "all") -> None:
        """/ready turns 503; every HTTP/1.1 answer from now on carries `Connection: close`, and every
        HTTP/2 connection gets a GOAWAY now (new ones after their first request): the same message,
        that the client should go elsewhere, while the listeners still accept for drain_time."""
        self._state = "DRAINING"
        for slot in self._slots(which):
            slot.set_draining()
            for conn in list(slot.connections):
                conn.begin_drain()

    def _stop_accepting(self, which: Which = "all") -> None:
        slots = self._slots(which)
        chosen = {id(slot) for slot in slots}
        for bound in self.listeners.values():
            if bound.server is not None and id(bound.slot) in chosen:
                bound.server.close()
                close_spares([bound])
        for slot in slots:
            self._drain_slot(slot)

    async def _drain(self, inbound_only: bool, graceful: bool) -> None:
        which: Which = "inbound" if inbound_only else "all"
        self._begin_drain(which)
        if graceful:
            await asyncio.sleep(self.lifecycle.drain_time)
        self._stop_accepting(which)

    async def _shutdown(self, drain: bool) -> None:
        lc = self.lifecycle
        log.info("shutting down: drain %.1fs, grace %.1fs (%s; a second signal stops at once)",
                 lc.drain_time if drain else 0.0, lc.grace_time, self._in_flight())
        # A sidecar's outbound listeners are its app's way out: they serve as usual through the drain
        # time, for the calls an app makes while it shuts down; everything else starts draining now.
        self._begin_drain("not outbound" if drain else "all")
        if drain:
            await self._drain_wait(lc)
        self._stop_accepting()
        if any(slot.connections for slot in self._slots()) and not self._hurry.is_set():
            log.info("listeners closed; waiting up to %.1fs for %s", lc.grace_time, self._in_flight())
        deadline = self.loop.time() + lc.grace_time
        while self.loop.time() < deadline and any(slot.connections for slot in self._slots()) and \
                not self._hurry.is_set():
            await asyncio.sleep(0.05)
        for slot in self._slots():
            for conn in list(slot.connections):
                conn.close()
        await self.close()
        self._stopped.set()
