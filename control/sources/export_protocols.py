"""meshpy's wire-protocol settings in Envoy's words: HTTP/2 options (listeners and clusters) and the
protocol a cluster speaks (upstreams.http.v3.HttpProtocolOptions: explicit_http_config, or auto_config
where TLS's ALPN chooses)."""

from __future__ import annotations

from typing import Any

from control.sources.export_policies import duration
from meshpy.model.types import Cluster, Http2Options


def http2_options(o: Http2Options, downstream: bool = False) -> dict[str, Any]:
    """Always stated in full: Envoy's defaults differ from meshpy's (see Http2Options). allow_connect
    is a listener's (extended CONNECT offered to clients)."""
    out: dict[str, Any] = {"max_concurrent_streams": o.max_concurrent_streams,
                           "initial_stream_window_size": o.initial_stream_window_size,
                           "initial_connection_window_size": o.initial_connection_window_size}
    if downstream and o.allow_connect:
        out["allow_connect"] = True
    if o.keepalive_interval is not None:
        out["connection_keepalive"] = {"interval": duration(o.keepalive_interval),
                                       "timeout": duration(o.keepalive_timeout)}
    return out


def cluster_protocol(c: Cluster, errors: list[str], where: str) -> dict[str, Any]:
    """HttpProtocolOptions' protocol: explicit, or auto_config (HTTP/2 or HTTP/1.1 by ALPN)."""
    if c.protocol == "auto":
        if c.tls is None or not c.tls.alpn:
            # Without TLS Envoy refuses auto_config; with TLS but no ALPN it would offer h2 and
            # http/1.1, where meshpy offers nothing (the loaders never make either).
            errors.append(f"{where}.protocol: auto needs TLS with ALPN to carry it to Envoy")
        auto = {"http_protocol_options": {}, "http2_protocol_options": http2_options(c.http2)}
        return {"auto_config": auto}
    if c.protocol == "http2":
        return {"explicit_http_config": {"http2_protocol_options": http2_options(c.http2)}}
    return {"explicit_http_config": {"http_protocol_options": {}}}
