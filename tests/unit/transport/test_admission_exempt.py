"""Listeners out of the proxy-wide limits (Envoy's ignore_global_conn_limit and bypass_overload_manager,
which Istio sets on its admin-side listeners): read from a bootstrap, and acted on at accept."""

from __future__ import annotations

from meshpy.model.limits import ConnectionLimits
from meshpy.model.limits import Overload as OverloadModel
from meshpy.transport.admission import Gate, Overload
from meshpy.xds.translate import load_bootstrap


def gate(overload: Overload, **flags: bool) -> Gate:
    g = Gate(overload)
    g.configure(ConnectionLimits(**flags), "web")
    return g


def test_the_global_limit_passes_over_exempt_listeners() -> None:
    overload = Overload()
    overload.configure(OverloadModel(max_connections=1))
    plain, exempt = gate(overload), gate(overload, global_exempt=True)
    assert plain.admit(0, "a") == ""
    assert plain.admit(1, "b") == "cx_overload_rejected"  # the proxy is full
    assert exempt.admit(0, "c") == "" and exempt.admit(1, "d") == ""  # not limited, not counted
    assert overload.connections == 1
    exempt.release("c")
    assert overload.connections == 1
    plain.release("a")
    assert overload.connections == 0


def test_reject_connections_spares_only_bypassing_listeners() -> None:
    overload = Overload()
    overload.active["reject_connections"] = True
    assert gate(overload, global_exempt=True).admit(0, "a") == "cx_overload_rejected"
    assert gate(overload, global_exempt=True, overload_exempt=True).admit(0, "a") == ""


def test_read_from_a_bootstrap() -> None:
    def listener(port: int, **flags: bool) -> dict[str, object]:
        hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                        "HttpConnectionManager", "stat_prefix": "s",
               "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
                   {"match": {"prefix": "/"}, "direct_response": {"status": 200}}]}]},
               "http_filters": [{"name": "router", "typed_config": {
                   "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}
        address = {"socket_address": {"address": "127.0.0.1", "port_value": port}}
        return {"name": f"l{port}", "address": address,
                "filter_chains": [{"filters": [{"name": "hcm", "typed_config": hcm}]}], **flags}
    config = load_bootstrap({"static_resources": {"listeners": [
        listener(15090, ignore_global_conn_limit=True, bypass_overload_manager=True),
        listener(15021, ignore_global_conn_limit=True), listener(8080)]}})
    assert [(x.limits.global_exempt, x.limits.overload_exempt) for x in config.listeners] == [
        (True, True), (True, False), (False, False)]
