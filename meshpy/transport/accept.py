"""What every accepted downstream connection does first, whatever it speaks."""

from __future__ import annotations

from typing import TYPE_CHECKING

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
