"""What every accepted downstream connection does first, whatever it speaks."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from meshpy.model.unix_address import from_os_name
from meshpy.ports import ConnectionInfo

if TYPE_CHECKING:
    import asyncio

    from meshpy.ports import TlsInfo
    from meshpy.routing.compile import Drainable, ListenerSlot
    from meshpy.telemetry.metrics import ListenerStats


def accepted(conn: Drainable, slot: ListenerSlot, transport: asyncio.BaseTransport,
             authorize: bool = True) -> tuple[str, ListenerStats]:
    """(the peer's address, the listener's stats): `conn` joins the listener's connections (for
    draining) and is counted. The stats are bound here, at accept time: a reload may rename the
    listener later, and the gauge must go down where it went up. A connection over a limit, or one
    the chain's network RBAC denies (`authorize`: its TLS identity is known by now), is counted,
    closed, and does not join: its protocol sees `transport.is_closing()` and stops there."""
    stats = slot.current.stats
    stats.cx_total += 1
    address = transport.get_extra_info("peername")
    peer = str(address[0]) if isinstance(address, tuple) else ""
    gate = slot.gate
    if gate is not None:
        refused = gate.admit(len(slot.connections), peer)
        if refused:
            setattr(stats, refused, getattr(stats, refused) + 1)
            transport.close()
            return peer, stats
        limit = gate.limits.buffer_limit
        if limit is not None:
            cast("asyncio.Transport", transport).set_write_buffer_limits(high=limit)
    authz = slot.current.conn_authz
    if authz is not None and authorize:
        decision = authz.check(connection_info(transport, slot, getattr(conn, "original_dst", None)))
        if not decision.allowed:
            transport.close()
            return peer, stats
    slot.connections.add(conn)
    stats.cx_active += 1
    return peer, stats


def released(conn: Drainable, slot: ListenerSlot, stats: ListenerStats, peer: str) -> None:
    """The other end of `accepted`, from the protocol's connection_lost (once, whatever calls it)."""
    if conn in slot.connections:
        slot.connections.discard(conn)
        stats.cx_active -= 1
        if slot.gate is not None:
            slot.gate.release(peer)


def _address(value: object) -> tuple[str, int]:
    return (str(value[0]), int(value[1])) if isinstance(value, tuple) and len(value) >= 2 else ("", 0)


def _extra(transport: asyncio.BaseTransport | None, name: str) -> object:
    if transport is None:
        return None
    try:
        return transport.get_extra_info(name)
    except (OSError, ValueError):  # uvloop, once the connection is closed, has no socket left to ask
        return None


def connection_info(transport: asyncio.BaseTransport | None, slot: ListenerSlot,
                    original_dst: tuple[str, int] | None) -> ConnectionInfo:
    """A connection's description, from its socket's addresses and the listener serving it. On a Unix
    socket the local address is the listener's path (port 0), and so is the peer's when the client's
    socket has no name of its own (the usual case): what Envoy reads (it falls back to getsockname).
    The listener knows its path, so a connection described after it closed still has it."""
    listener = slot.current
    path = listener.model.address.path
    if path:
        local = (path, 0)
        peer = (from_os_name(_extra(transport, "peername")) or path, 0)
    else:
        peer = _address(_extra(transport, "peername"))
        local = _address(_extra(transport, "sockname"))
    tls = cast("TlsInfo | None", _extra(transport, "tls"))
    return ConnectionInfo(peer=peer[0], peer_port=peer[1], local=local[0], local_port=local[1],
                          original_destination=original_dst, listener=listener.name,
                          direction=listener.model.direction, tls=tls)
