"""An HttpConnectionManager's forward_client_cert_details and set_current_client_cert_details into the
model, and back out through the control plane's export (the round trip the control plane relies on)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from control.cache import LISTENER, ROUTE
from control.sources.export import export
from meshpy.errors import ConfigError
from meshpy.model.load import load_text
from meshpy.model.types import HttpOptions
from meshpy.xds.translate import listener_from_proto, load_bootstrap, route_config_from_proto

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
BOOTSTRAP: dict[str, Any] = {"static_resources": {"listeners": [{
    "name": "web",
    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10001}},
    "filter_chains": [{"filters": [{"name": "hcm", "typed_config": {
        "@type": HCM,
        "stat_prefix": "web",
        "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "direct_response": {"status": 200}}]}]},
        "http_filters": [{"name": "router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    }}]}],
}]}}


def http_of(**hcm: Any) -> HttpOptions:
    data = copy.deepcopy(BOOTSTRAP)
    data["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"].update(hcm)
    found = load_bootstrap(data).listeners[0].http
    assert found is not None
    return found


def test_envoys_default_is_sanitize() -> None:
    h = http_of()
    assert (h.forward_client_cert, h.client_cert_details) == ("sanitize", ())


@pytest.mark.parametrize("mode", ["SANITIZE", "FORWARD_ONLY", "APPEND_FORWARD", "SANITIZE_SET",
                                  "ALWAYS_FORWARD_ONLY"])
def test_each_mode(mode: str) -> None:
    assert http_of(forward_client_cert_details=mode).forward_client_cert == mode.lower()


def test_details_come_in_envoys_order() -> None:
    h = http_of(forward_client_cert_details="SANITIZE_SET",
                set_current_client_cert_details={"dns": True, "uri": True, "subject": True, "cert": True,
                                                 "chain": True})
    assert h.client_cert_details == ("cert", "chain", "subject", "uri", "dns")
    assert http_of(set_current_client_cert_details={"subject": False, "uri": True}).client_cert_details == (
        "uri",)


def test_the_matcher_form_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="forward_client_cert_matcher"):
        http_of(forward_client_cert_matcher={})


def test_export_round_trips() -> None:
    config = load_text("""
listeners:
  - name: web
    address: 127.0.0.1:18500
    forward_client_cert: append_forward
    client_cert_details: [subject, uri, dns]
    routes: [{match: /, cluster: app}]
  - name: plain
    address: 127.0.0.1:18501
    routes: [{match: /, cluster: app}]
clusters: {app: 127.0.0.1:9000}
""")
    res = export(config)
    routes = {name: route_config_from_proto(msg) for name, msg in res[ROUTE].items()}
    for lis in config.listeners:
        back = listener_from_proto(res[LISTENER][lis.name], "", routes).http
        assert back is not None and lis.http is not None
        assert (back.forward_client_cert, back.client_cert_details) == (
            lis.http.forward_client_cert, lis.http.client_cert_details)
