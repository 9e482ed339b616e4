"""What a listener does with a new connection: the protocol it gets, and for a sidecar's intercepting
listeners, the listener it belongs to by where it was going.

iptables REDIRECT rewrites a connection's destination to the proxy's port; the kernel keeps the
address the client dialled, and SO_ORIGINAL_DST gives it back (IPv4: a sockaddr_in from SOL_IP;
IPv6: a sockaddr_in6 from SOL_IPV6, option 80 in both). A listener with `original_destination` looks
it up once per connection and hands the connection to the listener bound to that address (Envoy's
use_original_dst); the protocol that serves it keeps the address for original_dst clusters.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from meshpy.transport.chain_dispatch import ChainDispatch, Downstream, plain_protocol

if TYPE_CHECKING:
    from meshpy.model.types import Address
    from meshpy.routing.compile import ListenerSlot

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h; IP6T_SO_ORIGINAL_DST (netfilter_ipv6) has the same value

# (the listener's slot, the original destination) -> the slot of the listener that serves it
Router = Callable[["ListenerSlot", "tuple[str, int]"], "ListenerSlot"]


def protocol_for(slot: ListenerSlot, loop: asyncio.AbstractEventLoop) -> Downstream | ChainDispatch:
    """The protocol a new connection of `slot` starts with, read at accept time: a reload may have
    given the socket to a listener of another kind."""
    if slot.current.dispatch is not None:
        return ChainDispatch(slot, loop)
    return plain_protocol(slot, loop)


def original_destination(sock: socket.socket) -> tuple[str, int] | None:
    """Where a redirected connection was going; None if the kernel has no record of a redirect."""
    if sock.family == socket.AF_INET6:
        try:
            raw = sock.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
            return socket.inet_ntop(socket.AF_INET6, raw[8:24]), int.from_bytes(raw[2:4], "big")
        except OSError:
            pass  # an IPv4 connection on a dual-stack socket: asked below as IPv4
    try:
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError:
        return None
    return socket.inet_ntoa(raw[4:8]), int.from_bytes(raw[2:4], "big")


def _plain(address: object) -> tuple[str, int] | None:
    """(host, port) of a socket address, with an IPv4-mapped IPv6 host written as IPv4."""
    if not isinstance(address, tuple) or len(address) < 2:
        return None
    host = str(address[0])
    return (host[7:] if host.startswith("::ffff:") and "." in host else host), int(address[1])


class OriginalDstDispatch(asyncio.Protocol):
    """The first protocol of an intercepting listener's connection: it finds where the connection was
    going, hands it to the protocol of the listener that serves that address, and is gone."""

    __slots__ = ("loop", "router", "slot")

    def __init__(self, slot: ListenerSlot, loop: asyncio.AbstractEventLoop, router: Router) -> None:
        self.slot = slot
        self.loop = loop
        self.router = router

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        dst = original_destination(sock) if sock is not None else None
        if dst is not None:
            dst = _plain(dst)
        # The address the client reached is this listener's own when nothing redirected it (a direct
        # connection, or one from the proxy itself): there is no other destination to go to, and
        # sending it "back where it was going" would loop into this proxy for ever.
        if dst is not None and dst == _plain(transport.get_extra_info("sockname")):
            dst = None
        slot = self.router(self.slot, dst) if dst is not None else self.slot
        proto = protocol_for(slot, self.loop)
        proto.original_dst = dst
        cast(asyncio.Transport, transport).set_protocol(proto)
        proto.connection_made(transport)


def dual_stack(address: Address) -> socket.socket:
    """A listening IPv6 socket that takes IPv4 connections too (as IPv4-mapped addresses): Envoy's
    ipv4_compat. asyncio's own sockets are IPv6-only, so this one is made here."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((address.host.strip("[]"), address.port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
