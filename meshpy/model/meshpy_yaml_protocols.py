"""Wire-protocol options in meshpy YAML: a listener's codec, HTTP/2 settings, and how it takes part in
interception (its traffic direction, the TCP fallback of a sniffing listener).

    listeners:
      - address: 0.0.0.0:8080
        protocol: auto            # http (= auto), http1, http2 or tcp
        upgrades: [websocket]     # HTTP/1.1 Upgrade types tunnelled after a 101 (the default)
        http2: {max_concurrent_streams: 100, initial_stream_window_size: 256KiB,
                initial_connection_window_size: 2MiB}
    clusters:
      - name: grpc-backend
        protocol: http2           # http1 (the default), http2 or auto (below)
        http2: {max_concurrent_streams: 100, connection_keepalive: {interval: 30s, timeout: 5s}}
        tcp_keepalive: {probes: 3, time: 30s, interval: 5s}   # SO_KEEPALIVE on upstream connections

A cluster's `protocol:`, and what its connections speak:

    | protocol | connections speak                                 | needs TLS | ALPN offered by default |
    |----------|---------------------------------------------------|-----------|-------------------------|
    | http1    | HTTP/1.1                                          | no        | http/1.1 (with tls:)    |
    | http2    | HTTP/2 (prior knowledge without TLS)              | no        | h2 (with tls:)          |
    | auto     | what ALPN agrees on: h2 is HTTP/2, else HTTP/1.1  | yes       | h2, http/1.1            |

(auto is Envoy's auto_config; `http2:` configures its HTTP/2 connections. Its TLS may list its own
`alpn:`, as Envoy's transport socket may.)
"""

from __future__ import annotations

from typing import cast, get_args

from meshpy.model.types import (
    DEFAULT_HTTP2,
    DEFAULT_TCP_IDLE_TIMEOUT,
    H2_MAX_WINDOW,
    H2_MIN_WINDOW,
    KEEPALIVE_MAX_PROBES,
    KEEPALIVE_MAX_SECONDS,
    AccessLog,
    Direction,
    DnsLookupFamily,
    H2CodecName,
    Http2Options,
    TcpKeepalive,
    TcpOptions,
    UpstreamProtocol,
)
from meshpy.model.yaml_reader import (
    Reader,
    as_name,
    as_optional_timeout,
    as_positive_duration,
    as_positive_int,
    as_str,
)
from meshpy.model.yaml_values import parse_size

_HTTP2_KEYS = ("max_concurrent_streams", "initial_stream_window_size", "initial_connection_window_size",
               "connection_keepalive", "codec")
_KEEPALIVE_KEYS = ("interval", "timeout")
_TCP_KEEPALIVE_KEYS = ("probes", "time", "interval")


def _window(value: object) -> int:
    size = parse_size(value)
    if not H2_MIN_WINDOW <= size <= H2_MAX_WINDOW:
        raise ValueError(f"must be from {H2_MIN_WINDOW} to {H2_MAX_WINDOW} bytes (RFC 9113 6.9.2)")
    return size


def upgrade_types(value: object) -> tuple[str, ...]:
    """`upgrades: [websocket]` (the default), `[]` or `off` for none: HTTP/1.1 Upgrade types tunnelled."""
    if value is None or value is False or value == "off":
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError("must be a list of upgrade types, e.g. [websocket]")
    return tuple(dict.fromkeys(v.strip().lower() for v in value))


def dns_family(value: object) -> DnsLookupFamily:
    """A DNS cluster's `dns_lookup_family` (Envoy's names in lower case; `all` is meshpy's default)."""
    for family in get_args(DnsLookupFamily):
        if value == family:
            return cast(DnsLookupFamily, family)
    raise ValueError(f"must be one of {', '.join(get_args(DnsLookupFamily))}, got {value!r}")


def upstream_protocol(value: object) -> UpstreamProtocol:
    """A cluster's `protocol: http1 | http2 | auto` (http2: prior knowledge, as gRPC servers expect;
    auto: ALPN decides, which the cluster's loader checks has TLS to decide it)."""
    if value == "http1":
        return "http1"
    if value == "http2":
        return "http2"
    if value == "auto":
        return "auto"
    raise ValueError(f"must be http1, http2 or auto, got {value!r}")


def http2_options(r: Reader, node: object, path: str) -> Http2Options:
    """A key left out keeps meshpy's default (see Http2Options)."""
    f = r.mapping(node, path, _HTTP2_KEYS)
    if f is None:
        return DEFAULT_HTTP2
    d = DEFAULT_HTTP2
    interval, ka_timeout = d.keepalive_interval, d.keepalive_timeout
    if "connection_keepalive" in f:
        ka = r.mapping(f.raw("connection_keepalive"), f.at("connection_keepalive"), _KEEPALIVE_KEYS)
        if ka is not None:
            interval = ka.require("interval", as_positive_duration, 30.0)
            ka_timeout = ka.get("timeout", as_positive_duration, d.keepalive_timeout)
    return Http2Options(
        keepalive_interval=interval,
        keepalive_timeout=ka_timeout,
        max_concurrent_streams=f.get("max_concurrent_streams", as_positive_int, d.max_concurrent_streams),
        initial_stream_window_size=f.get("initial_stream_window_size", _window, d.initial_stream_window_size),
        initial_connection_window_size=f.get(
            "initial_connection_window_size", _window, d.initial_connection_window_size),
        codec=f.get("codec", _h2_codec, d.codec),
    )


def _h2_codec(value: object) -> H2CodecName:
    """auto, nghttp2 or h2 (whether nghttp2 loads is checked when the proxy starts: meshpy.app)."""
    if value not in ("auto", "nghttp2", "h2"):
        raise ValueError(f"must be auto, nghttp2 or h2, got {value!r}")
    return value


def tcp_keepalive(r: Reader, node: object, path: str) -> TcpKeepalive | None:
    """A cluster's `tcp_keepalive: {probes: 3, time: 30s, interval: 5s}`: a key left out keeps the
    kernel's default, so `tcp_keepalive: {}` only turns keepalive on."""
    f = r.mapping(node, path, _TCP_KEEPALIVE_KEYS)
    if f is None:
        return None
    return TcpKeepalive(probes=f.get("probes", _probes, None), time=f.get("time", _keepalive_seconds, None),
                        interval=f.get("interval", _keepalive_seconds, None))


def _probes(value: object) -> int:
    count = as_positive_int(value)
    if count > KEEPALIVE_MAX_PROBES:
        raise ValueError(f"must be at most {KEEPALIVE_MAX_PROBES}, got {count}")
    return count


def _keepalive_seconds(value: object) -> float:
    seconds = as_positive_duration(value)
    if seconds != int(seconds):
        raise ValueError(f"must be a whole number of seconds (as TCP keepalive counts), got {seconds}")
    if seconds > KEEPALIVE_MAX_SECONDS:
        raise ValueError(f"must be at most {KEEPALIVE_MAX_SECONDS}s, got {seconds:.0f}s")
    return seconds


def direction(value: object) -> Direction:
    text = as_str(value).lower()
    if text not in ("inbound", "outbound", "unspecified"):
        raise ValueError(f"must be inbound, outbound or unspecified, got {text!r}")
    return cast(Direction, text)


def tcp_fallback(r: Reader, node: object, path: str, logs: tuple[AccessLog, ...]) -> TcpOptions | None:
    """`tcp_fallback: cluster` or `{cluster, idle_timeout, detect_timeout}`: where bytes that are not
    HTTP go (and, with `detect_timeout`, connections that stay silent that long)."""
    if isinstance(node, str):
        node = {"cluster": node}
    f = r.mapping(node, path, ("cluster", "idle_timeout", "detect_timeout"))
    if f is None:
        return None
    return TcpOptions(cluster=f.require("cluster", as_name, ""), access_logs=logs,
                      idle_timeout=f.get("idle_timeout", as_optional_timeout, DEFAULT_TCP_IDLE_TIMEOUT),
                      detect_timeout=f.get("detect_timeout", as_optional_timeout, None))
