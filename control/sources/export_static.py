"""Exported resources as one static Envoy bootstrap: what the control plane would send over ADS, for
an Envoy (or meshpy) that runs without a control plane, and for `envoy --mode validate`.

Routes that ADS would send by name (RDS) go inline into their listener's connection manager, and
the endpoints of EDS clusters into a load_assignment of a STATIC cluster.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from control.cache import CLUSTER, ENDPOINT, LISTENER, ROUTE


def _dict(msg: Message) -> dict[str, Any]:
    data: dict[str, Any] = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    return data


def static_bootstrap(resources: Mapping[str, Mapping[str, Message]],
                     admin: tuple[str, int] | None = None) -> dict[str, Any]:
    """`resources` (type URL -> name -> message, as `export` gives them) as a bootstrap dict."""
    listeners = []
    for listener in resources.get(LISTENER, {}).values():
        data = _dict(listener)
        chains = [*data.get("filter_chains", []), *([data["default_filter_chain"]]
                                                    if "default_filter_chain" in data else [])]
        for chain in chains:
            config = chain["filters"][0]["typed_config"]
            if "rds" in config:
                config["route_config"] = _dict(resources[ROUTE][config.pop("rds")["route_config_name"]])
        listeners.append(data)
    clusters = []
    for name, cluster in resources.get(CLUSTER, {}).items():
        data = _dict(cluster)
        if data.get("type") == "EDS":
            data.pop("eds_cluster_config")
            data["type"] = "STATIC"
            data["load_assignment"] = _dict(resources[ENDPOINT][name])
        clusters.append(data)
    out: dict[str, Any] = {"static_resources": {"listeners": listeners, "clusters": clusters}}
    if admin is not None:
        out["admin"] = {"address": {"socket_address": {"address": admin[0], "port_value": admin[1]}}}
    return out
