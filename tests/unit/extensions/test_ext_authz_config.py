"""The ext_authz filter's config through the translator: the filter becomes a Python filter spec of
meshpy.extensions.ext_authz with Envoy's config as JSON; fields meshpy does not act on are errors at
their path; per-route configs turn it off or merge; the control plane exports it back as Envoy's type."""

from __future__ import annotations

import json
from typing import Any

import pytest

from meshpy import extensions
from meshpy.errors import ConfigError
from meshpy.extensions.ext_authz import ExtAuthz, ExtAuthzNoBody
from meshpy.extensions.ext_authz_config import target
from meshpy.xds.translate import load_bootstrap

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
EXT_AUTHZ = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
FILTER0 = ("static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0]"
           ".typed_config")


def bootstrap(authz: dict[str, Any], per_route: dict[str, Any] | None = None) -> str:
    route: dict[str, Any] = {"match": {"prefix": "/"}, "route": {"cluster": "authz"}}
    if per_route is not None:
        route["typed_per_filter_config"] = {"envoy.filters.http.ext_authz": {"@type": PER_ROUTE, **per_route}}
    hcm = {"@type": HCM, "stat_prefix": "web",
           "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [route]}]},
           "http_filters": [{"name": "envoy.filters.http.ext_authz",
                             "typed_config": {"@type": EXT_AUTHZ, **authz}},
                            {"name": "router", "typed_config": {"@type": ROUTER}}]}
    return json.dumps({"static_resources": {
        "listeners": [{"name": "web",
                       "address": {"socket_address": {"address": "127.0.0.1", "port_value": 8000}},
                       "filter_chains": [{"filters": [{"name": "hcm", "typed_config": hcm}]}]}],
        "clusters": [{"name": "authz", "load_assignment": {"cluster_name": "authz", "endpoints": [
            {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": "127.0.0.1", "port_value": 9000}}}}]}]}}]}})


def load(text: str) -> Any:
    return load_bootstrap(json.loads(text))


GRPC = {"grpc_service": {"envoy_grpc": {"cluster_name": "authz"}, "timeout": "0.5s"}}


def test_the_filter_becomes_a_python_filter_with_envoys_config() -> None:
    cfg = load(bootstrap(GRPC))
    spec = cfg.listeners[0].http.filters[0]
    assert spec.kind == "python" and spec.name == "envoy.filters.http.ext_authz"
    assert spec.python_class == "meshpy.extensions.ext_authz:ExtAuthzNoBody"  # no body hook: keeps length
    assert json.loads(spec.config) == {"grpc_service": {"envoy_grpc": {"cluster_name": "authz"},
                                                        "timeout": "0.500s"}}
    with_body = load(bootstrap({**GRPC, "with_request_body": {"max_request_bytes": 10}}))
    assert with_body.listeners[0].http.filters[0].python_class == "meshpy.extensions.ext_authz:ExtAuthz"


@pytest.mark.parametrize(("extra", "path", "reason"), [
    ({"clear_route_cache": True}, f"{FILTER0}.clear_route_cache", "not supported"),
    ({"http_service": {"server_uri": {"uri": "x", "cluster": "authz", "timeout": "1s"}}}, FILTER0,
     "multiple \"services\" oneof fields"),
    ({"with_request_body": {"max_request_bytes": 0}}, f"{FILTER0}.with_request_body.max_request_bytes",
     "greater than 0"),
    ({"transport_api_version": "V2"}, f"{FILTER0}.transport_api_version", "only V3"),
    ({"allowed_headers": {"patterns": [{"safe_regex": {"regex": "(?=x)"}}]}},
     f"{FILTER0}.allowed_headers.patterns[0].safe_regex.regex", "RE2"),
])
def test_what_meshpy_does_not_do_is_an_error_at_its_path(extra: dict[str, Any], path: str,
                                                        reason: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(bootstrap({**GRPC, **extra}))
    assert any(i.path == path and reason in i.reason for i in err.value.issues), err.value.issues


def test_http_service_fields_are_checked() -> None:
    svc = {"http_service": {"server_uri": {"uri": "x", "cluster": "authz", "timeout": "1s"},
                            "authorization_request": {"headers_to_add": [{"key": "a", "value": "%REQ(x)%"}]},
                            "authorization_response": {"dynamic_metadata_from_headers": {
                                "patterns": [{"exact": "x"}]}}}}
    with pytest.raises(ConfigError) as err:
        load(bootstrap(svc))
    paths = {i.path for i in err.value.issues}
    assert f"{FILTER0}.http_service.authorization_request.headers_to_add[0].value" in paths
    assert f"{FILTER0}.http_service.authorization_response.dynamic_metadata_from_headers" in paths


def test_per_route_disabled_and_context_extensions() -> None:
    off = load(bootstrap(GRPC, {"disabled": True})).listeners[0].http.route_config.virtual_hosts[0].routes[0]
    assert [(o.name, o.disabled) for o in off.filters] == [("envoy.filters.http.ext_authz", True)]
    on = load(bootstrap(GRPC, {"check_settings": {"context_extensions": {"k": "v"}}}))
    override = on.listeners[0].http.route_config.virtual_hosts[0].routes[0].filters[0]
    assert json.loads(override.config or "{}") == {"check_settings": {"context_extensions": {"k": "v"}}}
    merged = ExtAuthz.route_config(json.loads(on.listeners[0].http.filters[0].config),
                                   json.loads(override.config or "{}"))
    assert ExtAuthzNoBody(merged).context == {"k": "v"}  # (made without a running loop: no I/O yet)


def test_meshpy_yaml_configs_are_held_to_the_same_rules() -> None:
    with pytest.raises(ValueError, match="clear_route_cache"):
        ExtAuthz({**GRPC, "clear_route_cache": True})
    with pytest.raises(ValueError, match="exactly one of grpc_service and http_service"):
        ExtAuthz({"failure_mode_allow": True})


def test_the_export_writes_envoys_type_back() -> None:
    entry = extensions.envoy_entry("authz", "meshpy.extensions.ext_authz:ExtAuthzNoBody", GRPC)
    assert entry == {"name": "authz", "typed_config": {"@type": EXT_AUTHZ, **GRPC}}
    assert extensions.envoy_route_entry("meshpy.extensions.ext_authz:ExtAuthz", {"disabled": True}) == \
        {"@type": PER_ROUTE, "disabled": True}
    assert extensions.envoy_entry("x", "config.filters.api_key:ApiKeyFilter", {}) is None


@pytest.mark.parametrize(("uri", "expected"), [
    ("unix:///run/opa.sock", "/run/opa.sock"), ("unix:/run/opa.sock", "/run/opa.sock"),
    ("127.0.0.1:9191", ("127.0.0.1", 9191)), ("dns:///authz:9000", ("authz", 9000)),
    ("[::1]:80", ("::1", 80)), ("authz", None)])
def test_google_grpc_targets(uri: str, expected: object) -> None:
    assert target(uri) == expected
