"""Envoy's Lua filter's config through the translator, and the Lua states meshpy runs scripts in: a
script that does not load is an error at its field (in Envoy's words), per-route configs merge,
route metadata reaches the model, and a script cannot reach Python."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from meshpy.errors import ConfigError
from meshpy.extensions.lua import Lua
from meshpy.extensions.lua_runtime import Script, ScriptError, check_source
from meshpy.xds.translate import load_bootstrap

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
LUA = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
FILTER0 = ("static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0]"
           ".typed_config")
ROUTE0 = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config" \
         ".virtual_hosts[0].routes[0]"
SCRIPT = "function envoy_on_request(h) h:headers():add('x-lua', '1') end\n"


def bootstrap(lua: dict[str, Any], route: dict[str, Any] | None = None) -> Any:
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "app"}, **(route or {})}]
    hcm = {"@type": HCM, "stat_prefix": "web",
           "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes,
                                               "metadata": {"filter_metadata": {"lua": {"vh": "yes"}}}}]},
           "http_filters": [{"name": "lua", "typed_config": {"@type": LUA, **lua}},
                            {"name": "router", "typed_config": {"@type": ROUTER}}]}
    return load_bootstrap({"static_resources": {
        "listeners": [{"name": "web",
                       "address": {"socket_address": {"address": "127.0.0.1", "port_value": 8000}},
                       "filter_chains": [{"filters": [{"name": "hcm", "typed_config": hcm}]}]}],
        "clusters": [{"name": "app", "load_assignment": {"cluster_name": "app", "endpoints": [
            {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": "127.0.0.1", "port_value": 9000}}}}]}]}}]}})


def issues(lua: dict[str, Any], route: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        bootstrap(lua, route)
    return [(i.path, i.reason) for i in caught.value.issues]


def test_the_filter_becomes_a_python_filter_with_envoys_config() -> None:
    cfg = bootstrap({"default_source_code": {"inline_string": SCRIPT}, "stat_prefix": "s"})
    spec = cfg.listeners[0].http.filters[0]
    assert spec.kind == "python" and spec.name == "lua" and spec.python_class == "meshpy.extensions.lua:Lua"
    assert json.loads(spec.config) == {"default_source_code": {"inline_string": SCRIPT}, "stat_prefix": "s"}


def test_route_and_virtual_host_metadata_are_kept_for_the_script() -> None:
    metadata = {"metadata": {"filter_metadata": {"lua": {"foo": "bar", "n": 1}}}}
    cfg = bootstrap({"inline_code": SCRIPT}, metadata)
    vhost = cfg.listeners[0].http.route_config.virtual_hosts[0]
    assert vhost.metadata == (("lua", '{"vh": "yes"}'),)
    assert vhost.routes[0].metadata == (("lua", '{"foo": "bar", "n": 1.0}'),)


@pytest.mark.parametrize("lua, path, words", [
    ({"default_source_code": {"inline_string": "function envoy_on_request(h)\n  local x =\nend"}},
     f"{FILTER0}.default_source_code",
     "the script does not load: [string \"function envoy_on_request(h)...\"]:3: unexpected symbol "
     "near 'end'"),
    ({"inline_code": "error('at the top')"}, f"{FILTER0}.inline_code",
     "the script does not load: [string \"error('at the top')\"]:1: at the top"),
    ({"inline_code": SCRIPT, "default_source_code": {"inline_string": SCRIPT}}, FILTER0,
     "only one of inline_code or default_source_code can be set"),
    ({"source_codes": {"named": {"inline_string": "x = = 1"}}}, f"{FILTER0}.source_codes['named']",
     "the script does not load: [string \"x = = 1\"]:1: unexpected symbol near '='"),
    ({"default_source_code": {"filename": "/nonexistent/script.lua"}}, f"{FILTER0}.default_source_code",
     "cannot read the script: No such file or directory"),
    ({"default_source_code": {"environment_variable": "SCRIPT"}},
     f"{FILTER0}.default_source_code.environment_variable", "not supported by meshpy"),
    ({"default_source_code": {"inline_string": "function envoy_on_response(h)\n"
                                               "  h:headers():setHttp1ReasonPhrase('Fine') end"}},
     f"{FILTER0}.default_source_code",
     "the script does not load: the script calls setHttp1ReasonPhrase(), which meshpy does not support "
     "(meshpy's HTTP/1.1 writer sends the standard reason phrase)"),
])
def test_what_does_not_load_is_an_error_at_its_field(lua: dict[str, Any], path: str, words: str) -> None:
    assert (path, words) in issues(lua)


def test_a_per_route_script_that_does_not_load_is_an_error_at_its_field() -> None:
    per_route = {"typed_per_filter_config": {"lua": {"@type": PER_ROUTE,
                                                     "source_code": {"inline_string": "nope("}}}}
    found = issues({"inline_code": SCRIPT}, per_route)
    assert found == [(f"{ROUTE0}.typed_per_filter_config[lua].source_code",
                      "the script does not load: [string \"nope(\"]:1: unexpected symbol near '<eof>'")]


def test_a_refused_call_in_a_comment_is_no_call() -> None:
    code = "-- h:headers():setHttp1ReasonPhrase('x')\n--[[ h:clearRouteCache() ]]\n" + SCRIPT
    assert check_source(code) is None


def test_a_file_script_is_read_as_the_config_loads(tmp_path: Path) -> None:
    script = tmp_path / "filter.lua"
    script.write_text(SCRIPT)
    cfg = bootstrap({"default_source_code": {"filename": str(script)}})
    flt = Lua(json.loads(cfg.listeners[0].http.filters[0].config))
    assert flt.on_request_fn is not None and flt.on_response_fn is None


def test_per_route_configs_choose_the_script() -> None:
    listener = {"default_source_code": {"inline_string": SCRIPT},
                "source_codes": {"other": {"inline_string": "function envoy_on_response(h) end"}}}
    named = Lua(Lua.route_config(listener, {"name": "other"}))
    assert named.on_request_fn is None and named.on_response_fn is not None
    missing = Lua(Lua.route_config(listener, {"name": "nosuch"}))  # as Envoy: nothing runs
    assert missing.on_request_fn is None and missing.on_response_fn is None
    own = Lua(Lua.route_config(listener, {
        "source_code": {"inline_string": "function envoy_on_response(h) end"}, "filter_context": {"k": "v"}}))
    assert own.on_request_fn is None and own.on_response_fn is not None and own.context == '{"k": "v"}'
    assert Lua(listener).on_request_fn is not None


def test_a_disabled_route_turns_the_filter_off() -> None:
    per_route = {"typed_per_filter_config": {"lua": {"@type": PER_ROUTE, "disabled": True}}}
    cfg = bootstrap({"inline_code": SCRIPT}, per_route)
    route = cfg.listeners[0].http.route_config.virtual_hosts[0].routes[0]
    assert [(o.name, o.disabled) for o in route.filters] == [("lua", True)]


def test_a_script_cannot_reach_python() -> None:
    script = Script("function f(o) return o.__class__ end\n"
                    "function g() return python end", {})
    with pytest.raises(AttributeError, match="cannot reach Python attributes"):
        script.runtime.eval("f")(object())
    assert script.runtime.eval("g")() is None


def test_pairs_honours_a_pairs_metamethod_as_envoys_luajit_does() -> None:
    script = Script("function count()\n"
                    "  local t = setmetatable({}, {__pairs = function(t)\n"
                    "    local i = 0\n"
                    "    return function() i = i + 1; if i <= 3 then return i, i end end, t, nil end})\n"
                    "  local n = 0\n"
                    "  for _ in pairs(t) do n = n + 1 end\n"
                    "  for _ in pairs({a = 1}) do n = n + 10 end\n"
                    "  return n\n"
                    "end", {})
    assert script.runtime.eval("count")() == 13


def test_each_script_has_its_own_state() -> None:
    one = Script("n = 1\nfunction get() return n end", {})
    two = Script("function get() return n end", {})
    assert one.runtime.eval("get")() == 1 and two.runtime.eval("get")() is None


def test_script_error_words() -> None:
    with pytest.raises(ScriptError, match=r'^\[string "x = \("\]:1: unexpected symbol near'):
        Script("x = (", {})


class _Filter:
    """What a script's run needs of its filter: the Lua state and the counters."""

    def __init__(self, code: str) -> None:
        from meshpy.extensions.lua_bridge import BRIDGE

        self.script = Script(code, BRIDGE)
        self.executions = self.errors = 0


def test_signatures_verify_with_imported_keys(caplog: pytest.LogCaptureFixture) -> None:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    from meshpy.extensions.lua_stream import Stream

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    signature = key.sign(b"hello", padding.PKCS1v15(), hashes.SHA256())
    flt = _Filter("function envoy_on_request(h)\n"
                  "  local pub = h:importPublicKey(KEY, #KEY):get()\n"
                  "  local ok, err = h:verifySignature('sha256', pub, SIG, #SIG, 'hello', 5)\n"
                  "  local bad, why = h:verifySignature('sha256', pub, SIG, #SIG, 'other', 5)\n"
                  "  local odd, what = h:verifySignature('md4', pub, SIG, #SIG, 'hello', 5)\n"
                  "  h:logErr(tostring(ok) .. tostring(err) .. '|' .. tostring(bad) .. why .. '|' .. what)\n"
                  "end\n"
                  "function envoy_on_response(h) h:logErr(tostring(h:importPublicKey('junk', 4):get())) end")
    flt.script.runtime.globals()[b"KEY"] = der
    flt.script.runtime.globals()[b"SIG"] = signature
    stream = Stream(flt, None, None, True)  # type: ignore[arg-type]  # (no request: none is read)
    stream.start(flt.script.function("envoy_on_request"))
    Stream(flt, None, None, True).start(flt.script.function("envoy_on_response"))  # type: ignore[arg-type]
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["script log: truenil|falseFailed to verify digest. Error code: 0|md4 is not supported.",
                     "script log: nil"], lines
