"""Unix domain sockets (Envoy's pipe addresses): listening on one, connecting to one.

Listening does what Envoy does (its SocketImpl::bind): whatever is at the path is removed first, a
stale socket file left by a process that died as much as anything else (errors ignored: bind then says
why it cannot), the socket is bound, and its file gets the address's mode when one is given. The file
stays when the listener closes, as with Envoy; an abstract name (@name) has no file at all.

Connecting makes the socket here and hands it to the loop: uvloop's create_unix_connection refuses an
abstract name (libuv's pipe connect takes a file path only), while a connected socket is fine on both
loops.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from meshpy.model.unix_address import os_path

if TYPE_CHECKING:
    from meshpy.model.types import Address

P = TypeVar("P", bound=asyncio.BaseProtocol)


def bound_socket(address: Address) -> socket.socket:
    """A stream socket bound at `address.path` (not yet listening), its file with `address.mode`."""
    name = os_path(address.path)
    abstract = name.startswith("\0")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if not abstract:
            with contextlib.suppress(OSError):
                os.unlink(name)
        sock.bind(name)
        if address.mode and not abstract:
            os.chmod(name, address.mode)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve(loop: asyncio.AbstractEventLoop, factory: Callable[[], asyncio.BaseProtocol],
                address: Address, backlog: int = 100) -> asyncio.Server:
    """A server on the Unix socket `address` (OSError when it cannot be made)."""
    sock = bound_socket(address)
    try:
        return await loop.create_unix_server(factory, sock=sock, backlog=backlog)
    except BaseException:
        sock.close()
        raise


async def connect(loop: asyncio.AbstractEventLoop, factory: Callable[[], P], path: str,
                  **tls: Any) -> tuple[asyncio.Transport, P]:
    """A connection to the Unix socket `path` (Envoy's spelling: @name for an abstract one) speaking
    `factory`'s protocol; `tls` are create_unix_connection's ssl and server_hostname."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await loop.sock_connect(sock, os_path(path))
        transport, protocol = await loop.create_unix_connection(factory, sock=sock, **tls)
    except BaseException:
        sock.close()
        raise
    return transport, protocol
