"""XdsStore: what the xDS client accepts, what it NACKs (and with which words), what it subscribes to,
and how listeners warm while their routes are on the way."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format

from control.sources.export import export
from meshpy.errors import ConfigError
from meshpy.model.load import load_text
from meshpy.model.routes import DirectResponseAction, ForwardAction
from meshpy.model.types import Config
from meshpy.xds.store import CLUSTER, ENDPOINT, LISTENER, MESSAGES, ROUTE, XdsStore

MESHPY = """
listeners:
  - name: web
    address: 127.0.0.1:{port}
    routes:
      - match: /teapot
        direct: {{status: 418}}
      - match: /
        cluster: backend
clusters:
  - name: backend
    endpoints: [127.0.0.1:{upstream}]
"""


def resources(port: int = 10001, upstream: int = 8080) -> dict[str, dict[str, Any]]:
    return export(load_text(MESHPY.format(port=port, upstream=upstream)))


def loaded(res: dict[str, dict[str, Any]] | None = None, static: Config | None = None) -> XdsStore:
    res = res or resources()
    store = XdsStore(static=static or Config())
    for type_url in (CLUSTER, ENDPOINT, LISTENER, ROUTE):
        store = store.update(type_url, res[type_url].values(), replace=type_url in (CLUSTER, LISTENER))
    return store


def proto(type_url: str, data: dict[str, Any]) -> Any:
    return json_format.ParseDict(data, MESSAGES[type_url]())


def reasons(err: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return [str(i) for i in err.value.issues]


def test_dependencies_are_followed_by_name() -> None:
    store = XdsStore(static=Config())
    res = resources()
    store = store.update(CLUSTER, res[CLUSTER].values(), replace=True)
    assert store.wanted(ENDPOINT) == {"backend"}
    assert store.missing() == {"ClusterLoadAssignment backend"}
    store = store.update(LISTENER, res[LISTENER].values(), replace=True)
    assert store.wanted(ROUTE) == {"web"}
    assert store.missing() == {"ClusterLoadAssignment backend", "RouteConfiguration web"}
    store = store.update(ENDPOINT, res[ENDPOINT].values())
    store = store.update(ROUTE, res[ROUTE].values())
    assert store.missing() == frozenset()
    with pytest.raises(ValueError):
        store.wanted(LISTENER)


def test_assembled_config_is_the_model_again() -> None:
    config, store, warming = loaded().assemble(frozenset())
    assert warming == frozenset()
    [listener] = config.listeners
    assert listener.name == "web" and listener.address.port == 10001
    assert listener.http is not None
    routes = listener.http.route_config.virtual_hosts[0].routes
    assert isinstance(routes[0].action, DirectResponseAction) and routes[0].action.status == 418
    assert isinstance(routes[1].action, ForwardAction) and routes[1].action.cluster == "backend"
    [cluster] = config.clusters
    assert [e.address.port for e in cluster.endpoints] == [8080]
    assert store.served == {"web": listener}


def test_a_bad_resource_is_rejected_with_its_kind_name_path_and_reason() -> None:
    store = loaded()
    bad = proto(CLUSTER, {"name": "backend", "type": "EDS", "connect_timeout": "-1s",
                          "lb_policy": "CLUSTER_PROVIDED"})
    with pytest.raises(ConfigError) as err:
        store.update(CLUSTER, [bad], replace=True)
    assert "Cluster backend: connect_timeout: must be greater than 0" in reasons(err)
    assert "Cluster backend: lb_policy: CLUSTER_PROVIDED is not supported by meshpy" in reasons(err)
    # The store is immutable: nothing of the rejected update leaked into it.
    assert store.of(CLUSTER)["backend"].connect_timeout.seconds == 5


def test_every_bad_resource_of_a_response_is_named() -> None:
    routes = proto(ROUTE, {"name": "r1", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
        {"match": {"safe_regex": {"regex": "(?=x)"}}, "route": {"cluster": "c"}}]}]})
    cla = proto(ENDPOINT, {"cluster_name": "c", "endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 70000}}}}]}]})
    store = XdsStore(static=Config())
    with pytest.raises(ConfigError) as err:
        store.update(ROUTE, [routes])
    [reason] = reasons(err)
    assert reason.startswith("RouteConfiguration r1: virtual_hosts[0].routes[0].match.safe_regex.regex: ")
    with pytest.raises(ConfigError) as err:
        store.update(ENDPOINT, [cla])
    assert "port_value: must be at most 65535" in reasons(err)[0]
    twice = resources()[CLUSTER]["backend"]
    with pytest.raises(ConfigError) as err:
        store.update(CLUSTER, [twice, twice], replace=True)
    assert reasons(err) == ["Cluster backend: sent twice in one response"]


def test_state_of_the_world_replaces_and_delta_removes() -> None:
    store = loaded()
    assert set(store.of(CLUSTER)) == {"backend"}
    other = resources()[CLUSTER]["backend"]
    other.name = "other"
    replaced = store.update(CLUSTER, [other], replace=True)
    assert set(replaced.of(CLUSTER)) == {"other"}
    # The assignment of a cluster that is gone is dropped: nothing subscribes to it any more.
    assert "backend" not in replaced.endpoints
    added = store.update(CLUSTER, [other])
    assert set(added.of(CLUSTER)) == {"backend", "other"}
    removed = added.update(CLUSTER, [], removed=["backend"])
    assert set(removed.of(CLUSTER)) == {"other"}


def test_a_listener_warms_until_its_routes_arrive() -> None:
    store = loaded()
    config, store, _ = store.assemble(frozenset())
    # The listener now asks for routes that have not come: the old version serves meanwhile.
    lis = resources(port=10002)[LISTENER]["web"]
    moved = store.update(LISTENER, [_renamed_rds(lis, "new-routes")], replace=True)
    assert moved.missing() == {"RouteConfiguration new-routes"}
    config2, _, warming = moved.assemble(frozenset())
    assert warming == {"web"}
    assert config2.listeners == config.listeners  # still the old address and routes
    # A new listener with no previous version is not served at all while it warms...
    fresh = XdsStore(static=Config()).update(LISTENER, [lis], replace=True)
    assert fresh.assemble(frozenset())[0].listeners == ()
    # ...until its fetch time is over: then it serves with no routes (404), as Envoy does.
    [given_up] = fresh.assemble(frozenset({"web"}))[0].listeners
    assert given_up.http is not None and given_up.http.route_config.virtual_hosts == ()


def _renamed_rds(lis: Any, name: str) -> Any:
    from envoy.extensions.filters.network.http_connection_manager.v3 import (
        http_connection_manager_pb2 as hcm_pb2,
    )

    hcm = hcm_pb2.HttpConnectionManager()
    lis.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    hcm.rds.route_config_name = name
    lis.filter_chains[0].filters[0].typed_config.Pack(hcm)
    return lis


def test_two_listeners_on_one_address_are_rejected_by_name() -> None:
    store = loaded()
    second = resources()[LISTENER]["web"]
    second.name = "web2"
    store = store.update(LISTENER, [resources()[LISTENER]["web"], second], replace=True)
    with pytest.raises(ConfigError) as err:
        store.assemble(frozenset())
    assert reasons(err) == ["Listener web2: address: 127.0.0.1:10001 is already used by listeners[0] (web)"]


def test_a_route_to_a_cluster_not_yet_known_is_accepted() -> None:
    store = XdsStore(static=Config())
    res = resources()
    store = store.update(LISTENER, res[LISTENER].values(), replace=True).update(ROUTE, res[ROUTE].values())
    config, _, _ = store.assemble(frozenset())
    assert [x.name for x in config.listeners] == ["web"] and config.clusters == ()


def test_static_and_dynamic_names_must_differ() -> None:
    static = load_text(MESHPY.format(port=10005, upstream=9))
    store = XdsStore(static=static)
    with pytest.raises(ConfigError) as err:
        store.update(CLUSTER, resources()[CLUSTER].values(), replace=True)
    assert reasons(err) == ["Cluster backend: a static resource has this name"]
    dynamic = loaded()
    with pytest.raises(ConfigError) as err:
        dynamic.with_static(static)
    assert "Listener web: a dynamic resource has this name already" in reasons(err)
    assert dynamic.with_static(Config()).static == Config()
