"""The gRPC-Web and gRPC HTTP/1.1 bridge filters' parts that need no socket: Envoy's strict base64
decoder, grpc-message's percent-encoding, the trailer frame, the text answer's per-frame encoding,
grpc-status as the bridge reads it; their configs through the translator (accepted, or an issue at its
path); and the HCM's add_user_agent (translated with the node, and the headers it sets)."""

from __future__ import annotations

import base64
import struct
from typing import Any

import pytest

from meshpy.errors import ConfigError
from meshpy.extensions.grpc_bridge import GrpcHttp1Bridge, grpc_status_ok
from meshpy.extensions.grpc_web import (
    GrpcWeb,
    _Call,
    decode_base64,
    grpc_content_type,
    percent_encoded,
    trailer_frame,
)
from meshpy.model.load import load_data, set_node_overrides
from meshpy.stack.admission_guard import with_user_agent

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
GRPC_WEB = "type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb"
BRIDGE = "type.googleapis.com/envoy.extensions.filters.http.grpc_http1_bridge.v3.Config"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HCM_PATH = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"


# -- base64 as Envoy's Base64::decode takes it ---------------------------------------------------------
@pytest.mark.parametrize("text", [b"AAAAAAJoaQ==", b"aGk=", b"aGkh", b"+/+/", b"AA==", b"AAA="])
def test_valid_base64_decodes_as_the_standard_decoder(text: bytes) -> None:
    assert decode_base64(text) == base64.b64decode(text, validate=True)


@pytest.mark.parametrize("text", [
    b"AAAAAAJoaQ=!",  # a character outside the alphabet
    b"AAAAAAJoaR==",  # bits the padding leaves unused are not zero (Python's decoder takes it)
    b"AAB=",  # the same with one '='
    b"AA==AA==",  # padding inside: only the end may have it
    b"A===",  # three '='
    b"====",
    b"AA A",  # whitespace
    b"-_-_",  # the URL alphabet
    b"",
])
def test_invalid_base64_is_refused(text: bytes) -> None:
    assert decode_base64(text) is None


def test_bits_check_is_what_python_misses() -> None:
    assert base64.b64decode(b"AAB=", validate=True) == b"\x00\x00"  # Python: fine; Envoy: refused
    assert decode_base64(b"AAB=") is None


# -- grpc-message, the trailer frame, the text answer ---------------------------------------------------
def test_percent_encoding_is_envoys() -> None:
    # Controls, '%' and everything from '~' up are escaped; the rest (spaces, quotes, braces) is not.
    assert percent_encoded(b'{"a": 1}\n') == '{"a": 1}%0A'
    assert percent_encoded(b"100% ~done\x7f\xc3\xa9") == "100%25 %7Edone%7F%C3%A9"
    assert percent_encoded(b"") == ""


def test_trailer_frame_has_flag_length_and_lines() -> None:
    frame = trailer_frame([("grpc-status", "0"), ("grpc-message", ""), ("x-a", "b c")])
    block = b"grpc-status:0\r\ngrpc-message:\r\nx-a:b c\r\n"
    assert frame == b"\x80" + struct.pack(">I", len(block)) + block


def frame(payload: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(payload)) + payload


def test_text_answer_encodes_each_whole_frame_and_waits_for_partial_ones() -> None:
    call = _Call(False, True)
    data = frame(b"part-0") + frame(b"part-1")
    assert GrpcWeb._text_frames(call, data[:3]) == b""  # not even a frame header yet
    out = GrpcWeb._text_frames(call, data[3:14])  # the first frame whole, the second begun
    assert out == base64.b64encode(frame(b"part-0"))
    assert GrpcWeb._text_frames(call, data[14:]) == base64.b64encode(frame(b"part-1"))
    assert not call.frames


def test_text_answer_stops_at_a_frame_that_is_not_a_message() -> None:
    call = _Call(False, True)
    assert GrpcWeb._text_frames(call, frame(b"a") + frame(b"x", 0x80) + frame(b"b")) == \
        base64.b64encode(frame(b"a"))
    assert GrpcWeb._text_frames(call, frame(b"c", 1)) == base64.b64encode(frame(b"c", 1))  # compressed: fine


@pytest.mark.parametrize(("value", "grpc"), [
    ("application/grpc", True), ("application/grpc+proto", True), ("application/grpc-web", False),
    ("application/grpcx", False), ("application/grpc;charset=utf-8", False), (None, False)])
def test_grpc_content_type_is_envoys(value: str | None, grpc: bool) -> None:
    assert grpc_content_type(value) is grpc


@pytest.mark.parametrize(("value", "ok"), [("0", True), (" 0 ", True), ("+0", True), ("00", True),
                                           ("5", False), ("-0", False), ("x", False), ("", False),
                                           ("\u0660", False)])
def test_bridge_reads_grpc_status_as_envoy(value: str, ok: bool) -> None:
    assert grpc_status_ok(value) is ok


# -- configs --------------------------------------------------------------------------------------------
def bootstrap(filters: list[dict[str, Any]], **hcm: Any) -> dict[str, Any]:
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "up"}}]
    config = {"@type": HCM, "stat_prefix": "web", **hcm,
              "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
              "http_filters": [*filters, {"name": "router", "typed_config": {"@type": ROUTER}}]}
    endpoint = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9000}}}
    return {"static_resources": {
        "listeners": [{"name": "web",
                       "address": {"socket_address": {"address": "127.0.0.1", "port_value": 8000}},
                       "filter_chains": [{"filters": [{"name": "hcm", "typed_config": config}]}]}],
        "clusters": [{"name": "up", "load_assignment": {
            "cluster_name": "up", "endpoints": [{"lb_endpoints": [{"endpoint": endpoint}]}]}}]}}


def test_filters_become_python_filters_of_their_classes() -> None:
    cfg = load_data(bootstrap([
        {"name": "envoy.filters.http.grpc_web", "typed_config": {"@type": GRPC_WEB}},
        {"name": "envoy.filters.http.grpc_http1_bridge",
         "typed_config": {"@type": BRIDGE, "upgrade_protobuf_to_grpc": True}}]))
    http = cfg.listeners[0].http
    assert http is not None
    specs = [(f.python_class, f.config) for f in http.filters if f.kind == "python"]
    assert specs == [("meshpy.extensions.grpc_web:GrpcWeb", "{}"),
                     ("meshpy.extensions.grpc_bridge:GrpcHttp1Bridge", '{"upgrade_protobuf_to_grpc":true}')]
    assert GrpcHttp1Bridge({"upgrade_protobuf_to_grpc": True}).upgrade
    GrpcWeb({})


def test_ignore_query_parameters_is_refused_at_its_path() -> None:
    with pytest.raises(ConfigError) as err:
        load_data(bootstrap([{"name": "bridge",
                              "typed_config": {"@type": BRIDGE, "ignore_query_parameters": True}}]))
    assert f"{HCM_PATH}.http_filters[0].typed_config.ignore_query_parameters" in str(err.value)
    assert "cannot change the request's path" in str(err.value)
    with pytest.raises(ValueError, match="ignore_query_parameters"):
        GrpcHttp1Bridge({"ignore_query_parameters": True})  # (meshpy YAML's class: the same check)


def test_unknown_config_of_the_class_is_refused() -> None:
    with pytest.raises(ValueError):
        GrpcWeb({"no_such_field": 1})


# -- add_user_agent --------------------------------------------------------------------------------------
def test_add_user_agent_translates_with_the_node() -> None:
    data = {**bootstrap([], add_user_agent=True), "node": {"id": "node-1", "cluster": "front"}}
    cfg = load_data(data)
    assert cfg.listeners[0].http is not None and cfg.listeners[0].http.add_user_agent
    assert (cfg.service_node, cfg.service_cluster) == ("node-1", "front")
    off = load_data(bootstrap([], add_user_agent=False))
    assert off.listeners[0].http is not None and not off.listeners[0].http.add_user_agent
    assert (off.service_node, off.service_cluster) == ("", "")


def test_service_flags_win_over_the_bootstrap_node() -> None:
    set_node_overrides("cli-node", "cli-cluster")
    try:
        cfg = load_data({**bootstrap([], add_user_agent=True), "node": {"id": "node-1", "cluster": "front"}})
    finally:
        set_node_overrides()
    assert (cfg.service_node, cfg.service_cluster) == ("cli-node", "cli-cluster")


def test_user_agent_headers() -> None:
    got = with_user_agent([(b"user-agent", b"curl/8"), (b"x-envoy-downstream-service-cluster", b"spoof")],
                          b"front", b"node-1")
    assert sorted(got) == [(b"user-agent", b"curl/8"), (b"x-envoy-downstream-service-cluster", b"front"),
                           (b"x-envoy-downstream-service-node", b"node-1")]
    got = with_user_agent([(b"user-agent", b""), (b"x-envoy-downstream-service-node", b"spoof")], b"", b"")
    # No node: the client's node header stays; an empty user-agent takes the (empty) cluster.
    assert sorted(got) == [(b"user-agent", b""), (b"x-envoy-downstream-service-cluster", b""),
                           (b"x-envoy-downstream-service-node", b"spoof")]
    assert (b"user-agent", b"front") in with_user_agent([], b"front", b"")
