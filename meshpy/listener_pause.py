"""Envoy's stop_accepting_connections overload action: listeners stop taking connections, and new
clients wait in the kernel's backlog instead of being refused, until memory is back under the line.

An asyncio server cannot stop accepting without closing its socket, so each socket is duplicated
first: the kernel keeps the listening socket (and its backlog) alive through the copy, and a new
server made on the copy later picks up the connections that queued meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Iterable
from typing import Protocol

log = logging.getLogger(__name__)


class Pausable(Protocol):
    server: asyncio.Server | None
    spare: list[socket.socket]
    factory: Callable[[], asyncio.BaseProtocol] | None
    extra_servers: list[asyncio.Server]


def pause(listeners: Iterable[Pausable]) -> int:
    """Stop accepting on every listener with a server; the number paused."""
    paused = 0
    for b in listeners:
        if b.server is None or b.spare or b.factory is None:
            continue
        b.spare = [socket.socket(fileno=socket.dup(s.fileno())) for s in b.server.sockets]
        b.server.close()
        paused += 1
    return paused


async def resume(loop: asyncio.AbstractEventLoop, listeners: Iterable[Pausable]) -> None:
    """Serve the kept sockets again: what queued in their backlogs is accepted now."""
    for b in listeners:
        spare, b.spare = b.spare, []
        if not spare or b.factory is None:
            continue
        servers = [await loop.create_server(b.factory, sock=s, backlog=1024) for s in spare]
        b.server, b.extra_servers = servers[0], servers[1:]


def close_spares(listeners: Iterable[Pausable]) -> None:
    for b in listeners:
        for s in b.spare:
            s.close()
        b.spare = []
        for server in b.extra_servers:
            server.close()
        b.extra_servers = []
