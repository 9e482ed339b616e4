"""Envoy's leniencies in reading a bootstrap (meshpy.xds.envoy_json): each shape Envoy takes reads as
the canonical one does, and a value of the wrong kind is named at its path in meshpy's words.
(tests/integration/test_envoy_leniency.py holds real Envoy to the same verdicts.)"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from meshpy.errors import ConfigError
from meshpy.xds.translate import parse_bootstrap

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def canonical() -> dict[str, Any]:
    return {"static_resources": {
        "listeners": [{
            "name": "web",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": HCM, "stat_prefix": "web", "codec_type": "AUTO", "stream_idle_timeout": "60s",
                    "max_request_headers_kb": 60, "use_remote_address": True,
                    "route_config": {"virtual_hosts": [{
                        "name": "all", "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "origin"}}]}]},
                    "http_filters": [{"name": "envoy.filters.http.router",
                                      "typed_config": {"@type": ROUTER}}],
                }}]}]}],
        "clusters": [{
            "name": "origin", "type": "STATIC", "lb_policy": "ROUND_ROBIN", "connect_timeout": "1.500s",
            "load_assignment": {"cluster_name": "origin", "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 8080}}}}]}]}}]}}


def hcm(b: dict[str, Any]) -> dict[str, Any]:
    return b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]  # type: ignore[no-any-return]


def cluster(b: dict[str, Any]) -> dict[str, Any]:
    return b["static_resources"]["clusters"][0]  # type: ignore[no-any-return]


def lenient_variants() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}

    def variant(name: str) -> dict[str, Any]:
        out[name] = copy.deepcopy(canonical())
        return out[name]

    b = variant("enums in lower and mixed case")
    hcm(b)["codec_type"] = "auto"
    cluster(b).update(type="Static", lb_policy="round_robin")
    b = variant("enums by number")
    cluster(b).update(type=0, lb_policy=0)
    hcm(b)["codec_type"] = 0
    b = variant("one value for a list")
    hcm(b)["route_config"]["virtual_hosts"][0]["domains"] = "*"
    listener = b["static_resources"]["listeners"][0]
    listener["filter_chains"] = {"filters": listener["filter_chains"][0]["filters"][0]}
    b["static_resources"]["clusters"] = cluster(b)
    b = variant("durations as seconds and nanos")
    hcm(b)["stream_idle_timeout"] = {"seconds": 60}
    cluster(b)["connect_timeout"] = {"seconds": "1", "nanos": 500000000}
    b = variant("a wrapper as {value}")
    hcm(b).update(max_request_headers_kb={"value": 60}, use_remote_address={"value": True})
    b = variant("numbers and bools as strings")
    hcm(b).update(max_request_headers_kb="60", use_remote_address="true")
    cluster(b)["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
        "socket_address"]["port_value"] = "8080"
    return out


@pytest.mark.parametrize("name", sorted(lenient_variants()))
def test_what_envoy_takes_reads_as_the_canonical_form_does(name: str) -> None:
    assert parse_bootstrap(lenient_variants()[name]) == parse_bootstrap(canonical())


def test_a_bool_as_a_string_is_read() -> None:
    b = canonical()
    cluster(b)["respect_dns_ttl"] = "true"
    assert parse_bootstrap(b).static_resources.clusters[0].respect_dns_ttl is True


def test_the_input_is_not_changed() -> None:
    b = lenient_variants()["enums in lower and mixed case"]
    before = copy.deepcopy(b)
    parse_bootstrap(b)
    assert b == before


_TYPES = "STATIC, STRICT_DNS, LOGICAL_DNS, EDS, ORIGINAL_DST"
# A cluster field, a value of the wrong kind for it, and what meshpy says after the field's path.
WRONG: dict[str, tuple[str, Any, str]] = {
    "enum unknown": ("type", "statik", f"unknown value 'statik' (one of {_TYPES}, in any case)"),
    "enum as a list": ("type", ["STATIC"], f"must be one of {_TYPES} (in any case), got a list"),
    "duration as a number": ("connect_timeout", 1.5, "must be a duration such as 5s or 0.25s, got 1.5"),
    "integer as a word": ("max_requests_per_connection", "seven", "must be an integer, got 'seven'"),
    "negative unsigned": ("max_requests_per_connection", -1, "must not be negative, got -1"),
    "bool as a word": ("respect_dns_ttl", "maybe", "must be true or false, got 'maybe'"),
    "string as a list": ("name", ["origin"], "must be a string, got a list"),
    "message as a string": ("load_assignment", "origin",
                            "must be a mapping (of envoy.config.endpoint.v3.ClusterLoadAssignment's fields), "
                            "got 'origin'"),
}


@pytest.mark.parametrize("case", sorted(WRONG))
def test_a_value_of_the_wrong_kind_is_named_at_its_path(case: str) -> None:
    field, value, said = WRONG[case]
    b = canonical()
    cluster(b)[field] = value
    with pytest.raises(ConfigError) as err:
        parse_bootstrap(b)
    assert str(err.value.issues[0]) == f"static_resources.clusters[0].{field}: {said}"


def test_inside_typed_config_the_path_goes_on() -> None:
    b = canonical()
    hcm(b)["codec_type"] = "http5"
    with pytest.raises(ConfigError) as err:
        parse_bootstrap(b)
    where = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.codec_type"
    assert str(err.value.issues[0]).startswith(f"{where}: unknown value 'http5'")
