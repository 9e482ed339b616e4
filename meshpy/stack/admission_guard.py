"""The per-request side of limits and overload, asked before routing on listeners that need it
(HttpListenerConfig.guarded): shedding under memory pressure (Envoy's stop_accepting_requests: 503
with flag OM), the HCM's headers_with_underscores_action (reject: 400; drop: the field goes), and the
headers its add_user_agent sets (before routing and filters, as Envoy's mutateRequestHeaders)."""

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
    if cfg.user_agent is not None:
        ex.headers = with_user_agent(ex.headers, *cfg.user_agent)
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


_CLUSTER = b"x-envoy-downstream-service-cluster"
_NODE = b"x-envoy-downstream-service-node"


def with_user_agent(headers: list[tuple[bytes, bytes]], cluster: bytes,
                    node: bytes) -> list[tuple[bytes, bytes]]:
    """Envoy's add_user_agent: x-envoy-downstream-service-cluster is the service cluster (empty when
    none is set), user-agent too where the request has none or an empty one, and
    x-envoy-downstream-service-node is the service node when one is set (else the client's stays)."""
    agents = [v for n, v in headers if n == b"user-agent"]
    replaced = {_CLUSTER, _NODE} if node else {_CLUSTER}
    if not any(agents):
        replaced.add(b"user-agent")
    out = [h for h in headers if h[0] not in replaced]
    out.append((_CLUSTER, cluster))
    if not any(agents):
        out.append((b"user-agent", cluster))
    if node:
        out.append((_NODE, node))
    return out
