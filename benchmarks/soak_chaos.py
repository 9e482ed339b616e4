"""The soak's chaos, each kind on its own period, all through the run:

- xDS push (every `push_s`): the control plane's directory is rewritten with the next version (a new
  `x-soak-xds` response header value in the RouteConfiguration, rotated endpoint weights in the
  ClusterLoadAssignments); the control plane polls it and pushes over ADS;
- file reload (every `reload_s`): the static file is rewritten (`x-soak-file`, weights), then SIGHUP,
  `meshpy reload --pid-file`, or nothing (the proxy's own file watch notices), in turn;
- origin restart (every `origin_s`): the next origin in turn is stopped by SIGKILL or SIGTERM (in turn),
  stays down `origin_down_s`, and is started again on the same ports; one origin at most is down;
- control-plane restart (every `control_s`): SIGKILL or SIGTERM in turn, down `control_down_s`, then
  started again on the same port (the directory may have changed meanwhile: pushes go on).

No new chaos starts in the last `quiet_s` seconds, so that the run ends with every process up and the
last versions of both configs written.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from soak_tally import Stats
from soak_world import World


@dataclass(frozen=True)
class Schedule:
    push_s: float = 4.0
    reload_s: float = 6.0
    origin_s: float = 10.0
    origin_down_s: float = 1.5
    control_s: float = 40.0
    control_down_s: float = 2.0
    quiet_s: float = 8.0

    def describe(self) -> dict[str, float]:
        return dict(self.__dict__)


KINDS = ("push", "reload", "origins", "control")
RELOADS = ("sighup", "command", "watch")
SIGNALS = (signal.SIGKILL, signal.SIGTERM)


class Chaos:
    def __init__(self, world: World, stats: Stats, schedule: Schedule,
                 kinds: tuple[str, ...] = KINDS) -> None:
        self.kinds = kinds  # which of KINDS run (all but for finding out which one a problem needs)
        self.world = world
        self.stats = stats
        self.schedule = schedule
        self.lock = asyncio.Lock()  # one process operation at a time (they share the Procs list)

    async def run(self, until: float) -> None:
        s = self.schedule
        stop = until - s.quiet_s
        loops = {"push": self._every(s.push_s, stop, self.push, 1.0),
                 "reload": self._every(s.reload_s, stop, self.reload, 2.0),
                 "origins": self._every(s.origin_s, stop, self.restart_origin, 3.0),
                 "control": self._every(s.control_s, stop, self.restart_control, min(s.control_s, 15.0))}
        for kind, loop in loops.items():
            if kind not in self.kinds:
                loop.close()  # never started
        await asyncio.gather(*(loop for kind, loop in loops.items() if kind in self.kinds))

    async def _every(self, period: float, stop: float, action: Callable[[int], Awaitable[None]],
                     offset: float) -> None:
        clock = self.stats.clock
        n = 0
        nxt = clock.now() + offset
        while nxt < stop:
            await asyncio.sleep(max(0.0, nxt - clock.now()))
            try:
                await action(n)
            except Exception as exc:  # the soak goes on; the report lists what the chaos could not do
                self.stats.chaos_errors.append(f"{clock.now():.1f}s {action.__name__}: {exc!r}"[:500])
            n += 1
            nxt += period

    async def push(self, n: int) -> None:
        self.world.xds_version += 1
        self.world.write_control_config()
        self.stats.event("xds-push", version=self.world.xds_version)

    async def reload(self, n: int) -> None:
        how = RELOADS[n % len(RELOADS)]
        self.world.file_version += 1
        self.world.write_file_config()
        await asyncio.to_thread(self.world.reload_proxy, how)
        self.stats.event("file-reload", version=self.world.file_version, how=how)

    async def restart_origin(self, n: int) -> None:
        origin = self.world.origins[n % len(self.world.origins)]
        sig = SIGNALS[(n // len(self.world.origins)) % len(SIGNALS)]
        async with self.lock:
            down = self.stats.origin_down(origin.name)
            await asyncio.to_thread(self.world.stop_origin, origin, sig)
        self.stats.event("origin-restart", origin=origin.name, signal=signal.Signals(sig).name)
        await asyncio.sleep(self.schedule.origin_down_s)
        async with self.lock:
            await asyncio.to_thread(self.world.start_origin, origin)
        down.up = self.stats.clock.now()

    async def restart_control(self, n: int) -> None:
        sig = SIGNALS[n % len(SIGNALS)]
        async with self.lock:
            await asyncio.to_thread(self.world.stop_control, sig)
        self.stats.event("control-restart", signal=signal.Signals(sig).name)
        await asyncio.sleep(self.schedule.control_down_s)
        async with self.lock:
            await asyncio.to_thread(self.world.start_control)
