"""The per-request side of limits and overload, asked before routing on listeners that need it
(HttpListenerConfig.guarded): shedding under memory pressure (Envoy's stop_accepting_requests: 503
with flag OM) and the HCM's headers_with_underscores_action (reject: 400; drop: the field goes)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshpy.stack.exchange import Exchange

OVERLOADED = b"overloaded"
UNDERSCORE = b"header name with an underscore"


def guard(ex: Exchange) -> bool:
    """True when the request is answered here."""
    cfg = ex.cfg
    overload = cfg.overload
    if overload is not None and overload.shed_requests:
        overload.shed += 1
        cfg.stats.rq_overload += 1
        ex._local_reply(503, OVERLOADED, "OM")
        return True
    limits = cfg.http_limits
    if limits is None or limits.headers_with_underscores == "allow":
        return False
    headers = ex.headers
    if not any(0x5F in name for name, _ in headers):  # b"_"
        return False
    if limits.headers_with_underscores == "reject":
        cfg.stats.rq_rejected_headers += 1
        ex._local_reply(400, UNDERSCORE, "", close=True)
        return True
    kept = [h for h in headers if 0x5F not in h[0]]
    cfg.stats.headers_dropped += len(headers) - len(kept)
    ex.headers = kept
    return False
