"""Envoy v3 bootstraps, in process: `load_text` detects the format and hands the document to
meshpy.xds.translate (json_format into the Bootstrap proto, extension types imported on demand, then
config_from_bootstrap), and the loaded config is compiled as in config_checks.

Property: as for meshpy's YAML, a bootstrap loads or ConfigError says why, with a path; no other
exception and no hang. The mutator is meshpy_yaml's tree mutator over the bootstrap seeds, plus `@type`
URLs swapped between the extension types meshpy knows and some it does not.
"""

from __future__ import annotations

import random

from fuzz_meshpy_yaml import DICTIONARY, mutator, run
from fuzzkit import Target

TYPE_URLS = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
    "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
    "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
    "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
    "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst",
    "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
    "type.googleapis.com/xds.type.v3.TypedStruct",
    "type.googleapis.com/google.protobuf.Struct",
    "type.googleapis.com/google.protobuf.Duration",
    "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    "type.googleapis.com/not.a.Type",
    "type.googleapis.com/",
    "envoy.extensions.filters.http.router.v3.Router",
)
_tree_mutate = mutator("bootstrap")


def mutate(data: bytes, rng: random.Random) -> bytes:
    if rng.random() < 0.2:
        text = data.decode("utf-8", "replace")
        found = [u for u in TYPE_URLS if u in text]
        if found:
            return text.replace(rng.choice(found), rng.choice(TYPE_URLS), 1).encode()
    return _tree_mutate(data, rng)


TARGET = Target(name="bootstrap", run=run, mutate=mutate,
                dictionary=(*DICTIONARY, b"static_resources:\n", b"socket_address:", b"typed_config:",
                            b'"@type": ', b"port_value: ", b"filter_chains:"),
                max_len=32768, time_limit=5.0)
