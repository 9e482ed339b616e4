"""What every accepted downstream connection does first, whatever it speaks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshpy.ports import ConnectionInfo

if TYPE_CHECKING:
    import asyncio

    from meshpy.routing.compile import Drainable, ListenerSlot
    from meshpy.telemetry.metrics import ListenerStats


def accepted(conn: Drainable, slot: ListenerSlot,
             transport: asyncio.BaseTransport) -> tuple[str, ListenerStats]:
    """(the peer's address, the listener's stats): `conn` joins the listener's connections (for
    draining) and is counted. The stats are bound here, at accept time: a reload may rename the
    listener later, and the gauge must go down where it went up."""
    slot.connections.add(conn)
    stats = slot.current.stats
    stats.cx_total += 1
    stats.cx_active += 1
    peer = transport.get_extra_info("peername")
    return (str(peer[0]) if isinstance(peer, tuple) else ""), stats


def _address(value: object) -> tuple[str, int]:
    return (str(value[0]), int(value[1])) if isinstance(value, tuple) and len(value) >= 2 else ("", 0)


def connection_info(transport: asyncio.BaseTransport | None, slot: ListenerSlot,
                    original_dst: tuple[str, int] | None) -> ConnectionInfo:
    """A connection's description, from its socket's addresses and the listener serving it."""
    peer = _address(transport.get_extra_info("peername") if transport is not None else None)
    local = _address(transport.get_extra_info("sockname") if transport is not None else None)
    listener = slot.current
    return ConnectionInfo(peer=peer[0], peer_port=peer[1], local=local[0], local_port=local[1],
                          original_destination=original_dst, listener=listener.name,
                          direction=listener.model.direction)
