"""L4 proxying: bytes both ways between a client and one upstream host of a cluster.

Half-close is honoured (EOF from one side becomes write_eof on the other; the pair closes when both
sides are done), backpressure pauses the reader whose peer's write buffer is full, and a lazy idle timer
closes a pair that moved no byte for the configured time.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, cast

from meshpy.transport.accept import accepted, connection_info, released

if TYPE_CHECKING:
    from meshpy.ports import ConnectionInfo
    from meshpy.routing.compile import ListenerSlot, TcpListenerConfig
    from meshpy.transport.connector import Connector
    from meshpy.upstream.cluster import Host


class TcpDownstream(asyncio.Protocol):
    __slots__ = ("_buf", "_eof_down", "_eof_up", "_info", "_timer", "activity", "bytes_in", "bytes_out",
                 "cfg", "closed", "flag", "host", "loop", "original_dst", "peer", "slot", "stats", "t0",
                 "transport", "up", "wall0")

    def __init__(self, slot: ListenerSlot, loop: asyncio.AbstractEventLoop,
                 cfg: TcpListenerConfig | None = None) -> None:
        """`cfg`: an http listener's fallback for a connection that did not speak HTTP."""
        self.slot = slot
        self.loop = loop
        if cfg is None:
            cfg = slot.current.tcp
            assert cfg is not None
        self.cfg: TcpListenerConfig = cfg
        # Where the client was connecting before iptables redirected it (set by the listener that
        # looked it up; None when not intercepted): an original_dst cluster connects there.
        self.original_dst: tuple[str, int] | None = None
        self.transport: asyncio.Transport | None = None
        self._info: ConnectionInfo | None = None
        self.up: TcpUpstream | None = None
        self.host: Host | None = None
        self._buf: list[bytes] = []
        self._eof_down = False
        self._eof_up = False
        self._timer: asyncio.Handle | None = None
        self.activity = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.closed = False
        self.flag = ""
        self.peer = ""
        self.t0 = loop.time()
        self.wall0 = time.time()

    def connection_info(self) -> ConnectionInfo:
        info = self._info
        if info is None:
            info = self._info = connection_info(self.transport, self.slot, self.original_dst)
        return info

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.peer, self.stats = accepted(self, self.slot, transport)
        if self.transport.is_closing():
            return  # over a limit (transport/admission.py)
        cluster = self.slot.current.clusters.get(self.cfg.cluster)
        if cluster is None:
            host = None
        elif cluster.by_destination:
            host = cluster.host_for(self.original_dst)
        else:
            host = cluster.pick()
        if host is None or cluster is None:
            self.flag = "UH" if cluster is not None else "NC"
            transport.close()
            return
        self.host = host
        host.active_requests += 1
        # Nothing is read until the upstream side is there. (uvloop starts reading after
        # connection_made returns, whatever it said: data_received pauses again, see there.)
        self.transport.pause_reading()
        task = cluster.tasks.spawn_connect(self._connect(cluster.connector, host))
        task.add_done_callback(self._connected)
        if self.cfg.idle_timeout is not None:
            self._timer = self.loop.call_later(self.cfg.idle_timeout, self._on_timer, 0)

    async def _connect(self, connector: Connector, host: Host) -> TcpUpstream:
        return await connector.open(host.pool.address, lambda: TcpUpstream(self))

    def _connected(self, task: asyncio.Task[TcpUpstream]) -> None:
        if task.cancelled() or task.exception() is not None:
            if self.host is not None:
                self.host.pool.stats.cx_connect_fail += 1
            self.flag = "UF"
            self.close()
            return
        up = task.result()
        if self.closed:
            up.close()
            return
        self.up = up
        if self._buf:
            up.write(b"".join(self._buf))
            self._buf = []
        if self._eof_down:
            up.write_eof()
        elif self.transport is not None and not up.write_paused:
            # Not while the bytes held so far fill the upstream's buffer: its pause_writing came and
            # went in the write above, and only its resume_writing may start the reading again.
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        self.activity += 1
        if self.up is not None:
            self.up.write(data)
        else:
            self._buf.append(data)
            if self.transport is not None:  # hold what came early, no more (see connection_made)
                self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        self._eof_down = True
        if self.up is not None:
            self.up.write_eof()
            if self._eof_up:
                self.close()
        return True  # keep our write side open for the upstream's remaining bytes

    def upstream_data(self, data: bytes) -> None:
        self.bytes_out += len(data)
        self.activity += 1
        if self.transport is not None:
            self.transport.write(data)

    def upstream_eof(self) -> None:
        self._eof_up = True
        if self.transport is not None and self.transport.can_write_eof():
            self.transport.write_eof()
        if self._eof_down:
            self.close()

    def pause_writing(self) -> None:
        if self.up is not None:
            self.up.pause_reading()

    def resume_writing(self) -> None:
        if self.up is not None:
            self.up.resume_reading()

    def _on_timer(self, seen: int) -> None:
        self._timer = None
        if self.closed:
            return
        if self.activity == seen:
            self.flag = self.flag or "SI"
            self.close()
            return
        # Re-armed by activity count, not by timestamp, so no clock read happens per read.
        assert self.cfg.idle_timeout is not None
        self._timer = self.loop.call_later(self.cfg.idle_timeout, self._on_timer, self.activity)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if self.up is not None:
            self.up.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        released(self, self.slot, self.stats, self.peer)
        if self._timer is not None:
            self._timer.cancel()
        if self.up is not None:
            self.up.close()
        if self.host is not None:
            self.host.active_requests -= 1
        seconds = self.loop.time() - self.t0
        loggers = self.cfg.loggers
        if loggers:
            for logger in loggers:
                logger.log_tcp(self, seconds)  # read at the logger's flush (meshpy.telemetry.accesslog)

    def begin_drain(self) -> None:
        """TCP has no in-band way to ask a client to leave."""

    def idle(self) -> bool:
        return False  # a pair is open: bytes may be on their way either way

    def start_drain(self) -> None:
        """TCP has no in-band way to ask a client to leave: pairs run on until the grace time ends."""


class TcpUpstream(asyncio.Protocol):
    __slots__ = ("closed", "down", "stats", "transport", "write_paused")

    def __init__(self, down: TcpDownstream) -> None:
        self.down = down
        assert down.host is not None
        self.stats = down.host.pool.stats
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.write_paused = False  # between pause_writing and resume_writing

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        # Counted here, where connection_lost uncounts it: the downstream may be gone by the time the
        # connect completes, and this connection is then closed without ever being used.
        self.stats.cx_total += 1
        self.stats.cx_active += 1

    def data_received(self, data: bytes) -> None:
        self.down.upstream_data(data)

    def eof_received(self) -> bool | None:
        self.down.upstream_eof()
        return True

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.down.transport is not None:
            self.down.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.down.transport is not None and not self.down._eof_down:
            self.down.transport.resume_reading()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def write_eof(self) -> None:
        if self.transport is not None and self.transport.can_write_eof():
            self.transport.write_eof()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        self.stats.cx_active -= 1
        self.down.close()
